//! A hostile guest or a hostile image must never crash or hang the VMM:
//! each case ends with a clean, reported outcome.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Run, guest, run_command, run_vmm, run_vmm_with_limit, scratch_file};

#[test]
fn guest_touching_every_port_with_every_width() {
    require_kvm!();
    let run = run_vmm_with_limit(
        &["--kernel", guest("port_sweep.elf").to_str().unwrap()],
        Duration::from_secs(120),
    );
    run.assert_status(33);
    assert!(
        run.stdout.ends_with("\nsweep done\n"),
        "{:?}",
        &run.stdout[run.stdout.len().saturating_sub(40)..]
    );
}

#[test]
fn guest_hammering_the_uart_and_i8042_and_flooding_the_console() {
    require_kvm!();
    let out = scratch_file("hammer.out");
    let serial = format!("file:{}", out.display());
    let run = run_vmm_with_limit(
        &["--kernel", guest("device_hammer.elf").to_str().unwrap(), "--serial", &serial],
        Duration::from_secs(120),
    );
    run.assert_status(35);
    let output = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    let flood = b"x".repeat(65536);
    let tail = [flood.as_slice(), b"\nhammer done\n"].concat();
    assert!(
        output.ends_with(&tail),
        "the flood did not arrive whole ({} bytes written)",
        output.len()
    );
}

#[test]
fn guest_reading_and_writing_random_addresses_past_ram() {
    require_kvm!();
    let run = run_vmm_with_limit(
        &["--kernel", guest("mmio_random.elf").to_str().unwrap(), "--memory", "64"],
        Duration::from_secs(120),
    );
    // 37: every read of an address without RAM or device returned all-ones.
    run.assert_status(37);
}

/// Starts the spinning guest, waits for it to say so, sends `signal` and
/// returns the run with how long the VMM took to stop.
fn stop_spinning_guest(signal: i32) -> (Run, Duration) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["--kernel", guest("spin.elf").to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8];
    while !seen.ends_with(b"spinning\n") {
        assert_eq!(stdout.read(&mut byte).unwrap(), 1, "the guest ended before spinning");
        seen.push(byte[0]);
    }
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: kill has no memory arguments; the pid is our live child's.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let sent = Instant::now();
    let deadline = sent + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the VMM ignored the signal");
        std::thread::sleep(Duration::from_millis(5));
    };
    let stopped_after = sent.elapsed();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let run = Run {
        status: status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&status),
        stdout: String::from_utf8_lossy(&seen).into_owned(),
        stderr,
    };
    (run, stopped_after)
}

#[test]
fn sigterm_stops_a_spinning_guest_promptly() {
    require_kvm!();
    let (run, took) = stop_spinning_guest(libc::SIGTERM);
    run.assert_status(143);
    assert!(run.stderr.contains("vmm: stopped: received SIGTERM"), "{}", run.stderr);
    // The issue asks for one second; the bound leaves room for a loaded machine.
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn sigint_stops_a_spinning_guest_promptly() {
    require_kvm!();
    let (run, took) = stop_spinning_guest(libc::SIGINT);
    run.assert_status(130);
    assert!(run.stderr.contains("vmm: stopped: received SIGINT"), "{}", run.stderr);
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

fn run_with_violation(thread: &str, extra: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmm"));
    command
        .args(["--kernel", guest("hello_long.elf").to_str().unwrap()])
        .args(extra)
        .env("VMM_TEST_SECCOMP_VIOLATION", thread);
    run_command(&mut command, Duration::from_secs(60))
}

#[test]
fn seccomp_kills_a_vcpu_thread_making_a_forbidden_call() {
    require_kvm!();
    let run = run_with_violation("vcpu", &[]);
    assert_eq!((run.status, run.signal), (None, Some(libc::SIGSYS)), "{run:#?}");
    assert_eq!(run.stdout, "", "the guest must not have run");
}

#[test]
fn seccomp_kills_the_main_thread_making_a_forbidden_call() {
    require_kvm!();
    let run = run_with_violation("main", &[]);
    assert_eq!((run.status, run.signal), (None, Some(libc::SIGSYS)), "{run:#?}");
}

#[test]
fn without_seccomp_the_same_call_is_harmless() {
    require_kvm!();
    let run = run_with_violation("vcpu", &["--seccomp", "off"]);
    run.assert_status(11);
    assert_eq!(run.stdout, "Hello from long mode\n");
}

/// A hostile image: the bytes of `base` changed by `patch`.
struct HostileImage {
    name: &'static str,
    base: &'static str,
    patch: fn(&mut Vec<u8>),
    memory: &'static str,
    error: &'static str,
}

fn put(image: &mut [u8], at: usize, bytes: &[u8]) {
    image[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Offsets in an ELF64 file: e_phoff is 64, so program header 0 starts there.
const PH0: usize = 64;

const HOSTILE_IMAGES: &[HostileImage] = &[
    HostileImage {
        name: "ELF header cut short",
        base: "hello_long.elf",
        patch: |i| i.truncate(40),
        memory: "128",
        error: "invalid ELF image: truncated",
    },
    HostileImage {
        name: "program headers past the end of the file",
        base: "hello_long.elf",
        patch: |i| put(i, 32, &0xffff_ff00u64.to_le_bytes()),
        memory: "128",
        error: "the program header table",
    },
    HostileImage {
        name: "segment data past the end of the file",
        base: "hello_long.elf",
        patch: |i| put(i, PH0 + 8, &0x10_0000u64.to_le_bytes()),
        memory: "128",
        error: "past the end of the file",
    },
    HostileImage {
        name: "segment address outside RAM",
        base: "hello_long.elf",
        patch: |i| put(i, PH0 + 24, &0x7000_0000u64.to_le_bytes()),
        memory: "128",
        error: "does not fit in guest RAM",
    },
    HostileImage {
        name: "segment address + size overflowing u64",
        base: "hello_long.elf",
        patch: |i| {
            put(i, PH0 + 24, &(u64::MAX - 0x10).to_le_bytes());
            put(i, PH0 + 40, &0x1000u64.to_le_bytes());
        },
        memory: "128",
        error: "does not fit in guest RAM",
    },
    HostileImage {
        name: "huge segment memory size",
        base: "hello_long.elf",
        patch: |i| put(i, PH0 + 40, &(1u64 << 62).to_le_bytes()),
        memory: "128",
        error: "does not fit in guest RAM",
    },
    HostileImage {
        name: "file size larger than memory size",
        base: "hello_long.elf",
        patch: |i| put(i, PH0 + 40, &1u64.to_le_bytes()),
        memory: "128",
        error: "larger than its memory size",
    },
    HostileImage {
        name: "segment over the boot page tables",
        base: "hello_long.elf",
        patch: |i| put(i, PH0 + 24, &0x9000u64.to_le_bytes()),
        memory: "128",
        error: "overlaps the VMM's boot structures",
    },
    HostileImage {
        name: "segment over the kernel command line",
        base: "hello_long.elf",
        patch: |i| put(i, PH0 + 24, &0x2_0000u64.to_le_bytes()),
        memory: "128",
        error: "overlaps the kernel command line at 0x20000-0x30000",
    },
    HostileImage {
        name: "segment over the MP table",
        base: "hello_long.elf",
        patch: |i| put(i, PH0 + 24, &0x9_fc00u64.to_le_bytes()),
        memory: "128",
        error: "overlaps the EBDA and BIOS area (MP table)",
    },
    HostileImage {
        name: "two overlapping segments",
        base: "hello_long.elf",
        patch: |i| {
            // A second program header, a copy of the first, at the end.
            let ph: Vec<u8> = i[PH0..PH0 + 56].to_vec();
            let at = i.len() as u64;
            i.extend_from_slice(&ph);
            put(i, 32, &at.to_le_bytes());
            put(i, 56, &1u16.to_le_bytes());
            i.extend_from_slice(&ph);
            put(i, 56, &2u16.to_le_bytes());
        },
        memory: "128",
        error: "overlaps segment 0",
    },
    HostileImage {
        name: "no program headers",
        base: "hello_long.elf",
        patch: |i| put(i, 56, &0u16.to_le_bytes()),
        memory: "128",
        error: "no program headers",
    },
    HostileImage {
        name: "32-bit ELF",
        base: "hello_long.elf",
        patch: |i| i[4] = 1,
        memory: "128",
        error: "ELFCLASS64",
    },
];

#[test]
fn hostile_images_are_refused_with_a_clear_error() {
    for case in HOSTILE_IMAGES {
        let mut image = std::fs::read(guest(case.base)).unwrap();
        (case.patch)(&mut image);
        let path = scratch_file(&format!("hostile-{}", case.name.replace(' ', "-")));
        std::fs::write(&path, &image).unwrap();
        let run = run_vmm(&["--kernel", path.to_str().unwrap(), "--memory", case.memory]);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(run.status, Some(2), "{}: {run:#?}", case.name);
        assert!(!run.stderr.contains("panicked"), "{}: {}", case.name, run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}: {}", case.name, run.stderr);
        assert!(
            run.stderr.contains(case.error),
            "{}: expected {:?} in {}",
            case.name,
            case.error,
            run.stderr
        );
    }
}
