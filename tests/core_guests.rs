//! Small guests from resources/guests run under real KVM: what they print on
//! the serial console and how the VMM ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{guest, run_vmm, scratch_file};

#[test]
fn real_mode_guest_prints_hello_and_halts_with_status_0() {
    require_kvm!();
    let run = run_vmm(&["--kernel", guest("hello_real.bin").to_str().unwrap()]);
    run.assert_status(0);
    assert_eq!(run.stdout, "Hello from real mode\n");
}

#[test]
fn long_mode_elf_guest_prints_and_exits_through_debug_port_with_11() {
    require_kvm!();
    let run = run_vmm(&["--kernel", guest("hello_long.elf").to_str().unwrap()]);
    run.assert_status(11);
    assert_eq!(run.stdout, "Hello from long mode\n");
}

#[test]
fn triple_fault_is_reported_as_a_reset_with_status_0() {
    require_kvm!();
    let run =
        run_vmm(&["--kernel", guest("triple_fault.elf").to_str().unwrap(), "--log-level", "info"]);
    run.assert_status(0);
    assert_eq!(run.stdout, "about to triple fault\n");
    assert!(
        run.stderr.contains("guest reset by a triple fault (KVM_EXIT_SHUTDOWN)"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_bare_guest_triple_fault_is_a_warning_with_its_rip() {
    require_kvm!();
    // At the default log level (warn): one line, with the faulting RIP.
    let run = run_vmm(&["--kernel", guest("triple_fault.elf").to_str().unwrap()]);
    run.assert_status(0);
    let warnings: Vec<&str> = run.stderr.lines().filter(|l| l.contains("triple fault")).collect();
    assert_eq!(warnings.len(), 1, "{}", run.stderr);
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("triple fault at RIP 0x"),
        "{}",
        run.stderr
    );
}

#[test]
fn unclaimed_ports_and_mmio_read_all_ones_and_are_logged() {
    require_kvm!();
    let run =
        run_vmm(&["--kernel", guest("unclaimed.elf").to_str().unwrap(), "--log-level", "debug"]);
    run.assert_status(0);
    assert_eq!(
        run.stdout,
        "in8=ff\nin16=ffff\nin32=ffffffff\n\
         mmio8=ff\nmmio16=ffff\nmmio32=ffffffff\nmmio64=ffffffffffffffff\n\
         past-ram32=ffffffff\ndone\n"
    );
    for line in [
        "unclaimed 1-byte port read from 0x200",
        "unclaimed 4-byte port write to 0x200",
        "unclaimed 8-byte MMIO read from 0xd0000000",
        "unclaimed 8-byte MMIO write to 0xd0000008",
        "unclaimed 4-byte MMIO write to 0x20000000",
        "unclaimed accesses: 6 port, 10 MMIO",
    ] {
        assert!(run.stderr.contains(line), "missing {line:?} in:\n{}", run.stderr);
    }
}

#[test]
fn fetching_code_from_mmio_is_an_internal_error_with_status_4() {
    require_kvm!();
    let run = run_vmm(&["--kernel", guest("exec_mmio.elf").to_str().unwrap()]);
    run.assert_status(4);
    assert_eq!(run.stdout, "jumping into the MMIO hole\n");
    assert!(
        run.stderr.contains("KVM internal error on vCPU 0: suberror 1 (emulation failure")
            && run.stderr.contains("RIP 0xd0000000, CS 0x0008, RIP is not in guest RAM"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_instruction_kvm_cannot_emulate_is_reported_with_its_bytes() {
    require_kvm!();
    let run = run_vmm(&["--kernel", guest("emulation.elf").to_str().unwrap()]);
    if run.status == Some(0) {
        // An ordinary host runs CPL0 code natively: popcnt just works.
        assert_eq!(run.stdout, "about to execute popcnt\npopcnt ran natively\n");
        return;
    }
    run.assert_status(4);
    assert_eq!(run.stdout, "about to execute popcnt\n");
    assert!(
        run.stderr.contains("suberror 1 (emulation failure")
            && run.stderr.contains("CS 0x0008, bytes at RIP: f3 0f b8 c0"),
        "{}",
        run.stderr
    );
}

#[test]
fn serial_output_can_go_to_a_file() {
    require_kvm!();
    let log = scratch_file("serial.log");
    let target = format!("file:{}", log.display());
    let run =
        run_vmm(&["--kernel", guest("hello_real.bin").to_str().unwrap(), "--serial", &target]);
    run.assert_status(0);
    assert_eq!(run.stdout, "");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "Hello from real mode\n");
    std::fs::remove_file(log).unwrap();
}

#[test]
fn raw_image_runs_where_it_is_loaded() {
    require_kvm!();
    // The image addresses its message relative to CS, so it only prints
    // correctly if CS.base equals the load address.
    let run =
        run_vmm(&["--kernel", guest("hello_real.bin").to_str().unwrap(), "--load-addr", "0x7c00"]);
    run.assert_status(0);
    assert_eq!(run.stdout, "Hello from real mode\n");
}

#[test]
fn bare_guest_runs_with_the_in_kernel_irqchip_when_asked() {
    require_kvm!();
    let run = run_vmm(&["--kernel", guest("hello_long.elf").to_str().unwrap(), "--irqchip"]);
    run.assert_status(11);
    assert_eq!(run.stdout, "Hello from long mode\n");
}

#[test]
fn exit_stats_count_a_guest_with_known_exits() {
    require_kvm!();
    let run = run_vmm(&["--kernel", guest("exit_counts.elf").to_str().unwrap(), "--exit-stats"]);
    run.assert_status(0);
    for line in [
        "vCPU 0: 26 exits, ",
        "  io_in           7\n",
        "  io_out          10\n",
        "  mmio_read       3\n",
        "  mmio_write      5\n",
        "  hlt             1\n",
        "  top ports: 0x2f0 (17)\n",
        "  top MMIO:  0xd0000000 (8)\n",
    ] {
        assert!(run.stderr.contains(line), "missing {line:?} in:\n{}", run.stderr);
    }
}

#[test]
fn exit_stats_as_json_to_a_file() {
    require_kvm!();
    let path = scratch_file("exit-stats.json");
    let arg = format!("--exit-stats={}", path.display());
    let run = run_vmm(&["--kernel", guest("exit_counts.elf").to_str().unwrap(), &arg]);
    run.assert_status(0);
    let json = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    for part in [
        "{\"vcpus\": [{\"vcpu\": 0, \"total\": 26, \"exits\": {\"io_in\": 7, \"io_out\": 10, \
         \"mmio_read\": 3, \"mmio_write\": 5, \"hlt\": 1,",
        "\"top_ports\": [{\"port\": 752, \"count\": 17}]",
        "\"top_mmio\": [{\"address\": 3489660928, \"count\": 8}]",
        "\"run_ns\": ",
    ] {
        assert!(json.contains(part), "missing {part:?} in {json}");
    }
}

#[test]
fn without_exit_stats_nothing_is_reported() {
    require_kvm!();
    let run = run_vmm(&["--kernel", guest("exit_counts.elf").to_str().unwrap()]);
    run.assert_status(0);
    assert_eq!(run.stderr, "");
}
