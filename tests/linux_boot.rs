//! The project's test Linux kernel booted under real KVM, through each boot
//! protocol, with one and two vCPUs, and driven through its console.
//!
//! Kernel code is emulated on some nested hosts, so a boot takes 10-30 s
//! there; the limits below are generous.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Run, linux_guest, run_vmm_with_limit, scratch_file};

const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// Boots `kernel` with the tiny initrd, which prints its markers and reboots.
fn boot_tiny(kernel: &str, extra: &[&str], cpus: u8) -> Run {
    let guest = linux_guest();
    let kernel = guest.file(kernel);
    let initrd = guest.file("initrd-tiny.cpio");
    let cpus = cpus.to_string();
    let mut args = vec![
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--cmdline",
        &guest.cmdline,
        "--memory",
        "256",
        "--cpus",
        &cpus,
        "--log-level",
        "info",
    ];
    args.extend_from_slice(extra);
    run_vmm_with_limit(&args, BOOT_LIMIT)
}

/// Asserts a boot reached init, saw the right command line and CPUs, and
/// ended with the guest's reboot as a clean exit.
fn assert_booted(run: &Run, protocol: &str, cpus: u8) {
    run.assert_status(0);
    let cmdline = &linux_guest().cmdline;
    for expected in [
        "Linux version 6.1".to_owned(),
        format!("Command line: {cmdline}"),
        "Run /init as init process".to_owned(),
        "VMM-TEST-INIT: hello from init".to_owned(),
        format!("VMM-TEST-CMDLINE: {cmdline}"),
        format!("VMM-TEST-CPUS: {cpus}"),
        format!("smp: Brought up 1 node, {cpus} CPU"),
        "reboot: Restarting system".to_owned(),
    ] {
        assert!(
            run.stdout.contains(&expected),
            "missing {expected:?} in the console output:\n{}",
            run.stdout
        );
    }
    assert!(run.stderr.contains(&format!("boot protocol: {protocol}")), "{}", run.stderr);
    assert!(run.stderr.contains("guest reset by a triple fault"), "{}", run.stderr);
}

#[test]
fn vmlinux_boots_through_pvh_with_one_cpu() {
    require_kvm!();
    assert_booted(&boot_tiny("vmlinux", &[], 1), "PVH", 1);
}

#[test]
fn vmlinux_boots_through_pvh_with_two_cpus() {
    require_kvm!();
    assert_booted(&boot_tiny("vmlinux", &[], 2), "PVH", 2);
}

#[test]
fn vmlinux_boots_through_the_64_bit_protocol_with_one_cpu() {
    require_kvm!();
    let run = boot_tiny("vmlinux", &["--boot", "linux64"], 1);
    assert_booted(&run, "the Linux 64-bit boot protocol", 1);
}

#[test]
fn vmlinux_boots_through_the_64_bit_protocol_with_two_cpus() {
    require_kvm!();
    let run = boot_tiny("vmlinux", &["--boot", "linux64"], 2);
    assert_booted(&run, "the Linux 64-bit boot protocol", 2);
}

#[test]
fn bzimage_boots_with_one_cpu() {
    require_kvm!();
    assert_booted(&boot_tiny("bzImage", &[], 1), "the Linux 64-bit boot protocol", 1);
}

#[test]
fn bzimage_boots_with_two_cpus() {
    require_kvm!();
    assert_booted(&boot_tiny("bzImage", &[], 2), "the Linux 64-bit boot protocol", 2);
}

/// Reads a child's output line by line on a thread, so the test can wait
/// for a line with a deadline.
fn lines_of(output: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(output);
        let mut line = Vec::new();
        // Split on '\n' and on the shell prompt's "# ", which ends no line.
        let mut byte = [0u8];
        while reader.read(&mut byte).is_ok_and(|n| n == 1) {
            line.push(byte[0]);
            if byte[0] == b'\n' || line.ends_with(b"# ") {
                if send.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                    return;
                }
                line.clear();
            }
        }
        if !line.is_empty() {
            send.send(String::from_utf8_lossy(&line).into_owned()).ok();
        }
    });
    receive
}

/// Waits for a line for which `wanted` holds, keeping everything seen.
fn wait_for(
    lines: &mpsc::Receiver<String>,
    seen: &mut String,
    deadline: Instant,
    wanted: impl Fn(&str) -> bool,
) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                if wanted(&line) {
                    return;
                }
            }
            Err(_) => panic!("the expected console line did not come; console so far:\n{seen}"),
        }
    }
}

#[test]
fn console_input_reaches_a_busybox_shell() {
    require_kvm!();
    let guest = linux_guest();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["--kernel", &guest.file("vmlinux"), "--initrd", &guest.file("initrd-busybox.cpio")])
        .args(["--cmdline", &guest.cmdline, "--memory", "256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let deadline = Instant::now() + BOOT_LIMIT;
    let mut seen = String::new();
    // Bytes sent before the guest's serial driver is up are lost: wait for the prompt.
    wait_for(&lines, &mut seen, deadline, |line| line.contains("VMM-BUSYBOX-READY"));
    wait_for(&lines, &mut seen, deadline, |line| line.ends_with("# "));
    stdin.write_all(b"echo $((6*7))\n").unwrap();
    wait_for(&lines, &mut seen, deadline, |line| line.trim_end() == "42");
    stdin.write_all(b"reboot -f\n").unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("the guest did not reboot; console:\n{seen}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "console:\n{seen}\nstderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Runs the VMM on the test kernel with `args` and asserts a one-line VMM
/// error naming `problem`.
fn assert_refused(args: &[&str], problem: &str) {
    let run = run_vmm_with_limit(args, Duration::from_secs(60));
    run.assert_status(2);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains(problem), "expected {problem:?} in: {}", run.stderr);
}

#[test]
fn bzimage_with_a_too_old_boot_protocol_is_refused() {
    let guest = linux_guest();
    let mut image = std::fs::read(guest.file("bzImage")).unwrap();
    image[0x206..0x208].copy_from_slice(&0x0205u16.to_le_bytes());
    let path = scratch_file("old-bzImage");
    std::fs::write(&path, image).unwrap();
    assert_refused(&["--kernel", path.to_str().unwrap()], "boot protocol 2.05 is too old");
}

#[test]
fn bzimage_without_a_64_bit_entry_is_refused() {
    let guest = linux_guest();
    let mut image = std::fs::read(guest.file("bzImage")).unwrap();
    image[0x236] &= !1; // XLF_KERNEL_64
    let path = scratch_file("32-bit-bzImage");
    std::fs::write(&path, image).unwrap();
    assert_refused(&["--kernel", path.to_str().unwrap()], "no 64-bit entry point");
}

#[test]
fn kernel_that_does_not_fit_in_ram_is_refused() {
    let guest = linux_guest();
    assert_refused(
        &["--kernel", &guest.file("bzImage"), "--memory", "16"],
        "the kernel needs guest RAM up to",
    );
    // Larger than the ELF file (so the check is on its segments), smaller
    // than the kernel's RAM span.
    assert_refused(
        &["--kernel", &guest.file("vmlinux"), "--memory", "24"],
        "does not fit in guest RAM",
    );
}

#[test]
fn initrd_that_does_not_fit_is_refused() {
    let guest = linux_guest();
    let initrd = scratch_file("huge-initrd");
    let file = std::fs::File::create(&initrd).unwrap();
    file.set_len(100 << 20).unwrap();
    let initrd = initrd.to_str().unwrap();
    assert_refused(
        &["--kernel", &guest.file("vmlinux"), "--initrd", initrd, "--memory", "96"],
        "does not fit in guest RAM between",
    );
    assert_refused(
        &["--kernel", &guest.file("bzImage"), "--initrd", initrd, "--memory", "96"],
        "does not fit in guest RAM between",
    );
}

#[test]
fn cmdline_longer_than_the_kernel_accepts_is_refused() {
    let guest = linux_guest();
    let cmdline = "x".repeat(3000);
    for kernel in ["vmlinux", "bzImage"] {
        assert_refused(
            &["--kernel", &guest.file(kernel), "--cmdline", &cmdline],
            "the command line is 3000 bytes long, but the kernel accepts at most 2047",
        );
    }
}

#[test]
fn bzimage_with_absurd_setup_sects_is_refused() {
    let guest = linux_guest();
    let image = std::fs::read(guest.file("bzImage")).unwrap();
    // setup_sects = 255 still fits this image; cut the file so it does not.
    let mut cut = image[..200 * 512].to_vec();
    cut[0x1f1] = 255;
    let path = scratch_file("absurd-bzImage");
    std::fs::write(&path, cut).unwrap();
    assert_refused(
        &["--kernel", path.to_str().unwrap()],
        "setup_sects 255 puts the kernel past the end of the file",
    );
}

#[test]
fn reboot_through_the_i8042_ends_the_vmm_cleanly() {
    require_kvm!();
    let guest = linux_guest();
    let cmdline = guest.cmdline.replace("reboot=t", "reboot=k");
    assert_ne!(cmdline, guest.cmdline, "the recipe's command line no longer says reboot=t");
    let (kernel, initrd) = (guest.file("vmlinux"), guest.file("initrd-tiny.cpio"));
    let run = run_vmm_with_limit(
        &[
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--cmdline",
            &cmdline,
            "--memory",
            "256",
            "--log-level",
            "info",
        ],
        BOOT_LIMIT,
    );
    run.assert_status(0);
    assert!(run.stdout.contains("VMM-TEST-INIT: hello from init"), "{}", run.stdout);
    assert!(run.stderr.contains("guest reset through a device"), "{}", run.stderr);
}

#[test]
fn bzimage_unpacked_on_the_host_boots() {
    require_kvm!();
    let run = boot_tiny("bzImage", &["--unpack-bzimage"], 1);
    assert_booted(&run, "the Linux 64-bit boot protocol", 1);
    assert!(run.stderr.contains("bzImage: kernel unpacked on the host"), "{}", run.stderr);
}
