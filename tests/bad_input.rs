//! Bad input from the user: each case ends with one clear error line on
//! stderr and exit status 2, never a panic or a hang.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::{Run, assert_vmm_error, guest, run_command, run_vmm, scratch_file, skip_without_kvm};

fn write_scratch(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = scratch_file(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn missing_image() {
    let run = run_vmm(&["--kernel", "/nonexistent/guest.bin"]);
    assert_vmm_error(&run, "cannot open image /nonexistent/guest.bin: No such file or directory");
}

#[test]
fn image_that_is_a_directory() {
    let run = run_vmm(&["--kernel", "/"]);
    assert_vmm_error(&run, "image / is not a regular file");
}

#[test]
fn empty_image() {
    let path = write_scratch("empty.bin", b"");
    let run = run_vmm(&["--kernel", path.to_str().unwrap()]);
    assert_vmm_error(&run, "is empty");
}

#[test]
fn image_larger_than_ram() {
    let path = write_scratch("big.bin", &vec![0xf4; 2 << 20]);
    let run = run_vmm(&["--kernel", path.to_str().unwrap(), "--memory", "1"]);
    assert_vmm_error(&run, "is larger than guest RAM (1048576 bytes)");
}

#[test]
fn truncated_elf() {
    let elf = std::fs::read(guest("hello_long.elf")).unwrap();
    let path = write_scratch("truncated.elf", &elf[..100]);
    let run = run_vmm(&["--kernel", path.to_str().unwrap()]);
    assert_vmm_error(&run, "invalid ELF image: truncated");
}

#[test]
fn elf_with_a_segment_past_the_end_of_the_file() {
    let elf = std::fs::read(guest("hello_long.elf")).unwrap();
    let path = write_scratch("cut.elf", &elf[..0x1008]);
    let run = run_vmm(&["--kernel", path.to_str().unwrap()]);
    assert_vmm_error(&run, "past the end of the file");
}

#[test]
fn non_x86_64_elf() {
    let mut elf = std::fs::read(guest("hello_long.elf")).unwrap();
    elf[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    let path = write_scratch("arm.elf", &elf);
    let run = run_vmm(&["--kernel", path.to_str().unwrap()]);
    assert_vmm_error(&run, "machine 183 is not x86-64");
}

#[test]
fn zero_memory() {
    let run = run_vmm(&["--kernel", guest("hello_real.bin").to_str().unwrap(), "--memory", "0"]);
    assert_vmm_error(&run, "guest memory size must be at least 1 MiB");
}

#[test]
fn memory_too_large_to_map() {
    // 2^40 MiB = 1 EiB: no host can map that much address space.
    let run = run_vmm(&[
        "--kernel",
        guest("hello_real.bin").to_str().unwrap(),
        "--memory",
        "1099511627776",
    ]);
    assert_vmm_error(&run, "cannot map 1099511627776 MiB of guest RAM");
}

#[test]
fn memory_that_is_not_a_number() {
    let run = run_vmm(&["--kernel", guest("hello_real.bin").to_str().unwrap(), "--memory", "lots"]);
    run.assert_status(2);
    assert!(run.stderr.contains("invalid value 'lots' for '--memory <MIB>'"), "{}", run.stderr);
}

#[test]
fn load_address_outside_ram() {
    let run = run_vmm(&[
        "--kernel",
        guest("hello_real.bin").to_str().unwrap(),
        "--memory",
        "1",
        "--load-addr",
        "0xfffe0",
    ]);
    assert_vmm_error(&run, "does not fit in guest RAM");
}

#[test]
fn load_address_real_mode_cannot_reach() {
    let run = run_vmm(&[
        "--kernel",
        guest("hello_real.bin").to_str().unwrap(),
        "--load-addr",
        "0x200000",
    ]);
    assert_vmm_error(
        &run,
        "load address 0x200000 is unusable: a real-mode image must be loaded below 1 MiB",
    );
}

#[test]
fn entry_outside_ram() {
    let run =
        run_vmm(&["--kernel", guest("hello_long.elf").to_str().unwrap(), "--entry", "0x40000000"]);
    assert_vmm_error(&run, "entry point 0x40000000 is unusable: it is outside guest RAM");
}

#[test]
fn elf_segment_outside_ram() {
    let run = run_vmm(&["--kernel", guest("hello_long.elf").to_str().unwrap(), "--memory", "1"]);
    assert_vmm_error(&run, "ELF segment 0");
}

#[test]
fn missing_kvm_device() {
    let run = run_vmm(&[
        "--kernel",
        guest("hello_real.bin").to_str().unwrap(),
        "--kvm-device",
        "/nonexistent/kvm",
    ]);
    assert_vmm_error(&run, "cannot open /nonexistent/kvm: No such file or directory");
    assert!(run.stderr.contains("KVM is not available"));
}

#[test]
fn a_device_that_is_not_kvm() {
    let run = run_vmm(&[
        "--kernel",
        guest("hello_real.bin").to_str().unwrap(),
        "--kvm-device",
        "/dev/null",
    ]);
    assert_vmm_error(&run, "/dev/null is not a KVM device");
}

/// Runs the VMM as the unprivileged user `nobody` (through util-linux's
/// setpriv), or returns None (and says so) where that is impossible.
fn run_vmm_as_nobody(args: &[&str]) -> Option<Run> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED: this test drops privileges and must run as root");
        return None;
    }
    let binary = env!("CARGO_BIN_EXE_vmm");
    let mut command = Command::new("setpriv");
    command.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(binary).args(args);
    Some(run_command(&mut command, Duration::from_secs(30)))
}

/// A copy of a guest in a directory `nobody` can read.
fn world_readable_copy(name: &str, mode: u32) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join(name);
    std::fs::copy(guest("hello_real.bin"), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn unreadable_image() {
    let path = world_readable_copy("unreadable.bin", 0o000);
    let Some(run) = run_vmm_as_nobody(&["--kernel", path.to_str().unwrap()]) else {
        return;
    };
    if run.stderr.contains("Permission denied") && run.stderr.contains("setpriv") {
        panic!("setpriv could not run the binary: {}", run.stderr);
    }
    assert_vmm_error(&run, "cannot read image");
    assert!(run.stderr.contains("Permission denied"), "{}", run.stderr);
}

#[test]
fn kvm_not_permitted() {
    let meta = match std::fs::metadata("/dev/kvm") {
        Ok(meta) => meta,
        Err(err) => {
            skip_without_kvm("kvm_not_permitted", &format!("/dev/kvm is missing here ({err})"));
            return;
        }
    };
    if meta.permissions().mode() & 0o006 == 0o006 {
        eprintln!("SKIPPED kvm_not_permitted: /dev/kvm is open to everyone here");
        return;
    }
    let path = world_readable_copy("readable.bin", 0o644);
    let Some(run) = run_vmm_as_nobody(&["--kernel", path.to_str().unwrap()]) else {
        return;
    };
    assert_vmm_error(&run, "cannot open /dev/kvm: Permission denied");
    assert!(run.stderr.contains("add the user to the group"), "{}", run.stderr);
}

#[test]
fn cpu_count_out_of_range() {
    for cpus in ["0", "255"] {
        let run = run_vmm(&["--kernel", guest("hello_real.bin").to_str().unwrap(), "--cpus", cpus]);
        run.assert_status(2);
        assert!(
            run.stderr.contains(&format!("invalid value '{cpus}' for '--cpus <N>'")),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("1..=254"), "{}", run.stderr);
    }
}

#[test]
fn several_cpus_without_an_interrupt_controller() {
    let run = run_vmm(&["--kernel", guest("hello_long.elf").to_str().unwrap(), "--cpus", "2"]);
    assert_vmm_error(&run, "--cpus 2 needs the in-kernel irqchip");
}

#[test]
fn linux_options_for_a_bare_image() {
    let run =
        run_vmm(&["--kernel", guest("hello_long.elf").to_str().unwrap(), "--cmdline", "quiet"]);
    assert_vmm_error(&run, "--cmdline does not apply to bare ELF images");
    let run = run_vmm(&["--kernel", guest("hello_real.bin").to_str().unwrap(), "--boot", "pvh"]);
    assert_vmm_error(&run, "cannot boot this image through PVH: raw images run in real mode");
}

#[test]
fn exit_stats_file_that_cannot_be_created() {
    let run = run_vmm(&[
        "--kernel",
        guest("hello_real.bin").to_str().unwrap(),
        "--exit-stats=/nonexistent/dir/stats.json",
    ]);
    assert_vmm_error(&run, "cannot create the exit statistics file /nonexistent/dir/stats.json");
}
