//! Multiboot v1 kernels as `qemu -kernel` runs them: the test kernel checks
//! what the loader handed over (registers, information structure, module),
//! reads fw_cfg, starts the other CPUs with INIT/SIPI and reports through
//! the serial port and the debug-exit port; bad images end with one clear
//! error line and status 2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Run, assert_vmm_error, guest, run_vmm, scratch_file};

/// Status of the kernel's debug-exit write 0x21: every CPU came up.
const ALL_UP: i32 = 67;
const MODULE_TEXT: &str = "contents of module 0";

fn module_file() -> String {
    let path = scratch_file("module0.txt");
    std::fs::write(&path, MODULE_TEXT).unwrap();
    path.to_str().unwrap().to_owned()
}

fn run_kernel(cpus: &str) -> Run {
    let kernel = guest("multiboot.elf");
    run_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cpus",
        cpus,
        "--cmdline",
        "hello multiboot",
        "--initrd",
        &module_file(),
    ])
}

/// What the kernel prints before it starts the other CPUs.
fn expected_start(cpus: u32) -> String {
    format!(
        "eax ok\n\
         flags 0000024d\n\
         mem_upper 130048 KiB\n\
         cmdline hello multiboot\n\
         module {MODULE_TEXT}\n\
         fw_cfg QEMU: {cpus} cpus, 128 MiB\n"
    )
}

#[test]
fn one_cpu_kernel_gets_magic_info_cmdline_module_and_fw_cfg() {
    require_kvm!();
    let run = run_kernel("1");
    run.assert_status(ALL_UP);
    assert_eq!(run.stdout, format!("{}all 1 cpus up\n", expected_start(1)));
}

/// Runs the kernel on `cpus` CPUs and checks every AP printed its line.
fn assert_all_cpus_come_up(cpus: u32) {
    let run = run_kernel(&cpus.to_string());
    run.assert_status(ALL_UP);
    let start = expected_start(cpus);
    assert!(run.stdout.starts_with(&start), "{run:#?}");
    let rest: Vec<&str> = run.stdout[start.len()..].lines().collect();
    // The APs print in whatever order they take the lock.
    let (last, aps) = rest.split_last().expect("lines after the start");
    let mut aps = aps.to_vec();
    aps.sort_unstable();
    let expected: Vec<String> = (1..cpus).map(|id| format!("cpu {id} up")).collect();
    assert_eq!(aps, expected, "{run:#?}");
    assert_eq!(*last, format!("all {cpus} cpus up"));
    assert!(run.stdout.ends_with('\n'));
}

#[test]
fn three_cpus_all_come_up_through_init_and_sipi() {
    require_kvm!();
    assert_all_cpus_come_up(3);
}

/// The kernel sends INIT/SIPI within milliseconds of starting: every vCPU
/// must exist by then (they once were created while the first one ran).
#[test]
fn eight_cpus_all_come_up_although_the_kernel_starts_them_at_once() {
    require_kvm!();
    assert_all_cpus_come_up(8);
}

/// The test kernel with the multiboot header's checksum broken.
#[test]
fn bad_header_checksum() {
    let mut image = std::fs::read(guest("multiboot.elf")).unwrap();
    let magic = 0x1bad_b002u32.to_le_bytes();
    let offset = (0..8192).step_by(4).find(|&at| image[at..at + 4] == magic).unwrap();
    image[offset + 8] ^= 0x01;
    let path = scratch_file("bad-checksum.elf");
    std::fs::write(&path, &image).unwrap();
    let run = run_vmm(&["--kernel", path.to_str().unwrap()]);
    assert_vmm_error(&run, &format!("bad multiboot header checksum at offset {offset:#x}"));
}

#[test]
fn load_address_outside_ram() {
    let kernel = guest("multiboot.elf");
    let run = run_vmm(&["--kernel", kernel.to_str().unwrap(), "--memory", "1"]);
    assert_vmm_error(&run, "ELF segment 0");
    assert!(run.stderr.contains("at physical 0x100000) lies outside guest RAM (1048576 bytes"));
}

#[test]
fn module_that_does_not_fit() {
    let module = scratch_file("big-module.bin");
    std::fs::write(&module, vec![0u8; 1 << 20]).unwrap();
    let kernel = guest("multiboot.elf");
    let run = run_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "2",
        "--initrd",
        module.to_str().unwrap(),
    ]);
    assert_vmm_error(
        &run,
        &format!("multiboot module {} (1048576 bytes) does not fit in guest RAM", module.display()),
    );
    assert!(run.stderr.contains("and 0x200000; give more --memory"), "{}", run.stderr);
}

#[test]
fn boot_multiboot_needs_a_multiboot_header() {
    let run =
        run_vmm(&["--kernel", guest("hello_real.bin").to_str().unwrap(), "--boot", "multiboot"]);
    assert_vmm_error(
        &run,
        "cannot boot this image through multiboot: the image has no multiboot header",
    );
}
