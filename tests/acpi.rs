//! The ACPI variant of the test kernel under the VMM's ACPI tables: every
//! vCPU from the MADT, the disk and the entropy device from the DSDT, and
//! `poweroff` (S5) and an ACPI reset ending the VMM with status 0.
//!
//! An ACPI kernel boots slowly where kernel code is emulated (over a
//! minute on some hosts); each boot checks several things.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use common::rootfs::{put_file, root_disk_copy};
use common::{Run, linux_guest, run_vmm_with_limit};

const BOOT_LIMIT: Duration = Duration::from_secs(400);

/// One ACPI boot at a time: an ACPI kernel with 4 vCPUs, emulated on a
/// 2-core host next to other boots, starves into RCU stalls.
static ONE_BOOT_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The guest side: what the kernel found, then how the machine ends.
fn script(ending: &str) -> String {
    format!(
        r#"echo "VMM-ACPI-CPUS: $(grep -c ^processor /proc/cpuinfo)"
echo "VMM-ACPI-ONLINE: $(cat /sys/devices/system/cpu/online)"
for d in /sys/bus/platform/devices/LNRO0005:*; do echo "VMM-ACPI-VIRTIO: ${{d##*/}} $(cat $d/modalias 2>/dev/null)"; done
for b in /sys/block/vd*; do [ -e "$b" ] && echo "VMM-ACPI-DISK: ${{b##*/}}"; done
rng=$(cat /sys/class/misc/hw_random/rng_current)
[ "$rng" != none ] && echo "VMM-ACPI-RNG: $rng $(head -c 64 /dev/hwrng | wc -c)"
echo VMM-ACPI-ENDING
sync
{ending}
"#
    )
}

/// Boots the ACPI kernel from a copy of the root disk (and `rng` if
/// asked), with `cpus` vCPUs and the recipe's command line with `reboot`.
fn boot(name: &str, cpus: u8, rng: bool, reboot: &str, ending: &str) -> Run {
    let guest = linux_guest();
    let disk = root_disk_copy(name);
    put_file(&disk, "/test.sh", script(ending).as_bytes(), 0o755);
    let cmdline = format!("{} root=/dev/vda rw", guest.cmdline.replace("reboot=t", reboot));
    let kernel = guest.file("vmlinux-acpi");
    let disk_arg = format!("path={}", disk.display());
    let cpus = cpus.to_string();
    let mut args = vec![
        "--kernel",
        &kernel,
        "--memory",
        "256",
        "--cpus",
        &cpus,
        "--disk",
        &disk_arg,
        "--cmdline",
        &cmdline,
        "--log-level",
        "info",
    ];
    if rng {
        args.push("--rng");
    }
    let run = {
        let _alone = ONE_BOOT_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        run_vmm_with_limit(&args, BOOT_LIMIT)
    };
    std::fs::remove_file(&disk).ok();
    run
}

/// The values of the `VMM-ACPI-<key>:` lines.
fn values<'a>(run: &'a Run, key: &str) -> Vec<&'a str> {
    let prefix = format!("VMM-ACPI-{key}: ");
    run.stdout
        .lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .map(str::trim)
        .collect()
}

/// Asserts the kernel took the VMM's tables, found `cpus` CPUs, the disk
/// (and the rng) exactly once through the DSDT, and logged no error.
fn assert_found(run: &Run, cpus: u8, rng: bool) {
    for expected in [
        "ACPI: RSDP 0x00000000000E0000",
        "ACPI: Using ACPI (MADT) for SMP configuration",
        "VMM-ACPI-ENDING",
    ] {
        assert!(run.stdout.contains(expected), "missing {expected:?}:\n{}", run.stdout);
    }
    assert_eq!(values(run, "CPUS"), [cpus.to_string()], "{}", run.stdout);
    let online = if cpus == 1 { "0".to_owned() } else { format!("0-{}", cpus - 1) };
    assert_eq!(values(run, "ONLINE"), [online]);
    let virtio = values(run, "VIRTIO");
    assert_eq!(virtio.len(), 1 + usize::from(rng), "virtio-mmio devices from the DSDT: {virtio:?}");
    assert_eq!(values(run, "DISK"), ["vda"], "the disk, once");
    if rng {
        assert_eq!(values(run, "RNG"), ["virtio_rng.0 64"]);
    }
    let errors: Vec<&str> = run
        .stdout
        .lines()
        .filter(|line| {
            let lower = line.to_ascii_lowercase();
            lower.contains("error") || lower.contains("fatal") || lower.contains("bug:")
        })
        .collect();
    assert!(errors.is_empty(), "error lines in the guest's log: {errors:#?}");
}

#[test]
fn one_cpu_powers_off_through_s5() {
    require_kvm!();
    let run = boot("acpi-1.img", 1, false, "reboot=t", "poweroff -f");
    run.assert_status(0);
    assert_found(&run, 1, false);
    assert!(
        run.stdout.contains("ACPI: PM: Preparing to enter system sleep state S5"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("guest powered off (ACPI sleep state S5)"), "{}", run.stderr);
}

#[test]
fn two_cpus_disk_and_rng_from_the_dsdt_and_reset_through_the_fadt() {
    require_kvm!();
    // reboot=a: through the FADT's reset register.
    let run = boot("acpi-2.img", 2, true, "reboot=a", "reboot -f");
    run.assert_status(0);
    assert_found(&run, 2, true);
    assert!(run.stderr.contains("guest reset through a device"), "{}", run.stderr);
}

#[test]
fn four_cpus_power_off() {
    require_kvm!();
    let run = boot("acpi-4.img", 4, false, "reboot=t", "poweroff -f");
    run.assert_status(0);
    assert_found(&run, 4, false);
    assert!(run.stderr.contains("guest powered off (ACPI sleep state S5)"), "{}", run.stderr);
}
