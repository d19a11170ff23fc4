//! The control API (`--api-socket`) against a real guest: every endpoint
//! and every error, pause and resume, shutdown, hostile clients, bad socket
//! paths. The guest (resources/guests/counter.S) prints `tick N` about
//! every 200 ms, so what it printed tells whether it ran.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::api_vmm::{ApiVmm, parse_answer};
use common::rootfs::{put_file, root_disk_copy};
use common::{assert_vmm_error, guest, linux_guest, run_command, scratch_file};

// This file's own helpers on the shared `ApiVmm` (tests/common/api_vmm.rs).
impl ApiVmm {
    /// The counter guest, once it printed its first tick.
    fn start(name: &str, extra: &[&str]) -> ApiVmm {
        let kernel = guest("counter.elf");
        let mut args = vec!["--kernel", kernel.to_str().unwrap()];
        args.extend_from_slice(extra);
        let vmm = ApiVmm::spawn(name, &args);
        vmm.wait_for_ticks(1, Duration::from_secs(30));
        vmm
    }
}

/// Asserts the guest printed consecutive ticks from 1, none twice, none
/// left out.
fn assert_consecutive(ticks: &[u64]) {
    let expected: Vec<u64> = (1..=ticks.len() as u64).collect();
    assert_eq!(ticks, expected.as_slice());
}

#[test]
fn every_endpoint_answers_and_bad_requests_change_nothing() {
    require_kvm!();
    let vmm = ApiVmm::start("endpoints", &[]);

    let ping = vmm.ask("GET", "/api/v1/vmm.ping", None);
    assert_eq!(ping.status, 200, "{ping:?}");
    assert!(ping.head.contains("Content-Type: application/json"), "{ping:?}");
    assert_eq!(ping.json()["version"], env!("CARGO_PKG_VERSION"));

    let info = vmm.ask("GET", "/api/v1/vm.info", None);
    assert_eq!(info.status, 200, "{info:?}");
    let info = info.json();
    assert_eq!(info["state"], "Running");
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 1);
    assert_eq!(info["config"]["memory"]["size"], 128u64 << 20);
    assert_eq!(info["config"]["payload"]["kernel"], guest("counter.elf").to_str().unwrap());
    assert_eq!(info["config"]["disks"], serde_json::json!([]));
    assert_eq!(info["config"]["vsock"], serde_json::Value::Null);

    let counters = vmm.ask("GET", "/api/v1/vm.counters", None);
    assert_eq!(counters.status, 200, "{counters:?}");
    let counters = counters.json();
    // The guest's ticks are port writes to COM1 (0x3f8) and reads of its LSR.
    let vcpu = &counters["vcpus"][0];
    assert_eq!(vcpu["vcpu"], 0);
    assert!(vcpu["exits"]["io_out"].as_u64().unwrap() >= 6, "{counters}");
    assert!(vcpu["top_ports"].as_array().unwrap().iter().any(|p| p["port"] == 0x3f8));
    // A bare guest has no virtio devices.
    assert_eq!(counters["devices"], serde_json::json!({}), "{counters}");

    // Wrong state, path, method and body: an error, and nothing changes.
    vmm.ask("PUT", "/api/v1/vm.resume", None).assert_error(409, "not paused");
    let snapshot = r#"{"destination_url": "file:///tmp/snap"}"#;
    vmm.ask("PUT", "/api/v1/vm.snapshot", Some(snapshot)).assert_error(409, "paused first");
    vmm.ask("PUT", "/api/v1/vm.snapshot", Some("{\"destination_url\": ")).assert_error(400, "");
    vmm.ask("PUT", "/api/v1/vm.snapshot", Some(r#"{"url": "file:///x"}"#))
        .assert_error(400, "unknown field");
    vmm.ask("PUT", "/api/v1/vm.snapshot", None).assert_error(400, "destination_url");
    vmm.ask("GET", "/api/v1/vm.nothing", None).assert_error(404, "no such path");
    vmm.ask("GET", "/api/v2/vmm.ping", None).assert_error(404, "no such path");
    vmm.ask("GET", "/api/v1/vm.pause", None).assert_error(405, "takes PUT");
    vmm.ask("POST", "/api/v1/vm.info", None).assert_error(405, "takes GET");
    vmm.ask("DELETE", "/api/v1/vmm.shutdown", None).assert_error(405, "takes PUT");

    let before = vmm.ticks().len();
    vmm.wait_for_ticks(before + 2, Duration::from_secs(30));
    assert_eq!(vmm.ask("GET", "/api/v1/vm.info", None).json()["state"], "Running");
    assert_consecutive(&vmm.ticks());
    vmm.shutdown();
}

#[test]
fn a_paused_guest_prints_nothing_and_resumes_with_the_next_tick() {
    require_kvm!();
    let vmm = ApiVmm::start("pause", &[]);
    vmm.wait_for_ticks(3, Duration::from_secs(30));

    let pause = vmm.ask("PUT", "/api/v1/vm.pause", None);
    assert_eq!(pause.status, 204, "{pause:?}");
    assert_eq!(pause.body, "");
    // A tick being written when the vCPU stopped may still complete its
    // line; after that, nothing.
    std::thread::sleep(Duration::from_millis(300));
    let at_pause = std::fs::read_to_string(&vmm.serial).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let after_two_seconds = std::fs::read_to_string(&vmm.serial).unwrap();
    assert_eq!(after_two_seconds, at_pause, "the guest printed while paused");

    assert_eq!(vmm.ask("GET", "/api/v1/vm.info", None).json()["state"], "Paused");
    vmm.ask("PUT", "/api/v1/vm.pause", None).assert_error(409, "already paused");
    // A snapshot while paused changes nothing (tests/snapshot.rs restores them).
    let dir = scratch_file("pause-snapshot");
    vmm.snapshot(&dir);
    assert!(dir.join("state").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
    // The other endpoints answer while paused.
    assert_eq!(vmm.ask("GET", "/api/v1/vmm.ping", None).status, 200);
    assert_eq!(vmm.ask("GET", "/api/v1/vm.counters", None).status, 200);
    assert_eq!(std::fs::read_to_string(&vmm.serial).unwrap(), at_pause);

    let paused_ticks = vmm.ticks();
    let resume = vmm.ask("PUT", "/api/v1/vm.resume", None);
    assert_eq!(resume.status, 204, "{resume:?}");
    assert_eq!(vmm.ask("GET", "/api/v1/vm.info", None).json()["state"], "Running");
    let ticks = vmm.wait_for_ticks(paused_ticks.len() + 3, Duration::from_secs(30));
    // Continues from the next number: none repeated, none skipped.
    assert_consecutive(&ticks);

    // A second pause and resume works as the first.
    assert_eq!(vmm.ask("PUT", "/api/v1/vm.pause", None).status, 204);
    assert_eq!(vmm.ask("PUT", "/api/v1/vm.resume", None).status, 204);
    let ticks = vmm.wait_for_ticks(ticks.len() + 2, Duration::from_secs(30));
    assert_consecutive(&ticks);
    vmm.shutdown();
}

#[test]
fn every_vcpu_parks_even_one_waiting_for_its_startup_ipi() {
    require_kvm!();
    // vCPU 1 never gets INIT/SIPI: it waits inside KVM_RUN, and the kick
    // must still bring it out to park.
    let vmm = ApiVmm::start("two-vcpus", &["--cpus", "2", "--irqchip"]);
    assert_eq!(vmm.ask("PUT", "/api/v1/vm.pause", None).status, 204);
    std::thread::sleep(Duration::from_millis(300));
    let at_pause = vmm.console();
    let counters = vmm.ask("GET", "/api/v1/vm.counters", None).json();
    let vcpus = counters["vcpus"].as_array().unwrap();
    assert_eq!(vcpus.len(), 2, "{counters}");
    for vcpu in vcpus {
        // Each left KVM_RUN through the kick.
        assert!(vcpu["exits"]["interrupted"].as_u64().unwrap() >= 1, "{counters}");
    }
    assert_eq!(vcpus[1]["exits"]["io_out"], 0, "{counters}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(vmm.console(), at_pause, "the guest printed while paused");
    assert_eq!(vmm.ask("PUT", "/api/v1/vm.resume", None).status, 204);
    let ticks = vmm.wait_for_ticks(vmm.ticks().len() + 2, Duration::from_secs(30));
    assert_consecutive(&ticks);
    vmm.shutdown();
}

/// Console input typed while paused is neither lost nor reordered, and the
/// paused guest does nothing with it. (Where it waits, in the pipe rather
/// than in the UART's FIFO, is not visible to a guest that polls; that the
/// event loop stops reading stdin is what `EventLoop::pause_devices` does.)
#[test]
fn console_input_typed_while_paused_reaches_the_guest_after_resume() {
    require_kvm!();
    let kernel = guest("echo.elf");
    let mut vmm = ApiVmm::spawn("echo", &["--kernel", kernel.to_str().unwrap()]);
    vmm.wait_for("echo ready\n", 1, Duration::from_secs(30));
    vmm.type_in(b"x");
    vmm.wait_for("got x\n", 1, Duration::from_secs(30));

    assert_eq!(vmm.ask("PUT", "/api/v1/vm.pause", None).status, 204);
    vmm.type_in(b"yz");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(vmm.console(), "echo ready\ngot x\n", "input reached a paused guest");

    assert_eq!(vmm.ask("PUT", "/api/v1/vm.resume", None).status, 204);
    vmm.wait_for("got z\n", 1, Duration::from_secs(30));
    assert_eq!(vmm.console(), "echo ready\ngot x\ngot y\ngot z\n");
    vmm.shutdown();
}

#[test]
fn shutdown_while_paused_exits_with_status_0() {
    require_kvm!();
    let vmm = ApiVmm::start("shutdown-paused", &[]);
    assert_eq!(vmm.ask("PUT", "/api/v1/vm.pause", None).status, 204);
    vmm.shutdown();
}

#[test]
fn hostile_clients_never_stall_the_vmm_or_the_guest() {
    require_kvm!();
    let vmm = ApiVmm::start("hostile", &[]);

    // Several clients, one after another.
    for _ in 0..20 {
        assert_eq!(vmm.ask("GET", "/api/v1/vmm.ping", None).status, 200);
    }

    // A client that disconnects mid-request, in the head and in the body.
    for partial in [
        "GET /api/v1/vm.in".as_bytes(),
        b"PUT /api/v1/vm.snapshot HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"dest",
    ] {
        let mut stream = UnixStream::connect(&vmm.socket).unwrap();
        stream.write_all(partial).unwrap();
        drop(stream);
    }
    // A client that connects and never writes: the API gives up on it
    // (408) after its read timeout; the guest runs on meanwhile.
    let silent = UnixStream::connect(&vmm.socket).unwrap();
    let before = vmm.ticks().len();
    let started = Instant::now();
    assert_eq!(vmm.ask("GET", "/api/v1/vmm.ping", None).status, 200);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let mut silent_answer = Vec::new();
    let mut silent = silent;
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    silent.read_to_end(&mut silent_answer).unwrap();
    assert_eq!(parse_answer(&silent_answer).status, 408);
    assert!(vmm.ticks().len() > before, "the guest stopped while a client was silent");

    // Requests larger than 64 KiB: a head, and a body announced, each gets
    // 413 and the connection is closed.
    let mut huge_head = b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Filler: ".to_vec();
    huge_head.resize(100 * 1024, b'a');
    let announced = b"PUT /api/v1/vm.snapshot HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n";
    for request in [huge_head.as_slice(), announced.as_slice()] {
        let mut stream = UnixStream::connect(&vmm.socket).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The server may close before reading it all.
        let _ = stream.write_all(request);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = parse_answer(&answer);
        assert_eq!(answer.status, 413, "{answer:?}");
        assert!(answer.head.contains("Connection: close"), "{answer:?}");
    }
    // Not HTTP at all.
    let mut stream = UnixStream::connect(&vmm.socket).unwrap();
    stream.write_all(b"\x16\x03\x01 hello\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    assert_eq!(parse_answer(&answer).status, 400);

    // Still serving, and the guest still running, in order.
    assert_eq!(vmm.ask("GET", "/api/v1/vm.info", None).json()["state"], "Running");
    let count = vmm.ticks().len();
    assert_consecutive(&vmm.wait_for_ticks(count + 2, Duration::from_secs(30)));
    vmm.shutdown();
}

#[test]
fn curl_drives_the_api() {
    require_kvm!();
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIPPED curl_drives_the_api: curl is not installed");
        return;
    }
    let vmm = ApiVmm::start("curl", &[]);
    let curl = |method: &str, endpoint: &str| {
        let output = Command::new("curl")
            .args(["-sS", "-X", method, "-w", "\n%{http_code}", "--unix-socket"])
            .arg(&vmm.socket)
            .arg(format!("http://localhost/api/v1/{endpoint}"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_owned(), body.to_owned())
    };
    let (code, body) = curl("GET", "vmm.ping");
    assert_eq!(code, "200");
    assert!(body.contains(&format!("\"version\":\"{}\"", env!("CARGO_PKG_VERSION"))), "{body}");
    assert_eq!(curl("PUT", "vm.pause"), ("204".into(), String::new()));
    assert!(curl("GET", "vm.info").1.contains("\"state\":\"Paused\""));
    assert_eq!(curl("PUT", "vm.resume"), ("204".into(), String::new()));
    assert_eq!(curl("PUT", "vm.resume").0, "409");
    let socket = vmm.socket.clone();
    assert_eq!(curl("PUT", "vmm.shutdown"), ("204".into(), String::new()));
    let (status, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!socket.exists());
}

/// The names of process `pid`'s threads, sorted, leaving out KVM's own
/// (`kvm-nx-lpage-recovery`, which the kernel starts in a KVM user).
fn threads(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).unwrap())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.starts_with("kvm-"))
        .collect();
    names.sort();
    names
}

#[test]
fn the_api_is_one_thread_and_nothing_without_the_option() {
    require_kvm!();
    // With the API: main, vCPU 0, and the API thread.
    let vmm = ApiVmm::start("threads", &[]);
    let pid = vmm.pid();
    // A new thread names itself once it runs: give the API thread a moment.
    let started = Instant::now();
    while threads(pid) != ["api", "vcpu0", "vmm"] && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(threads(pid), ["api", "vcpu0", "vmm"]);
    // No more after serving clients.
    for _ in 0..5 {
        assert_eq!(vmm.ask("GET", "/api/v1/vmm.ping", None).status, 200);
    }
    assert_eq!(threads(pid), ["api", "vcpu0", "vmm"]);
    vmm.shutdown();

    // Without: main and vCPU 0 only.
    let serial = scratch_file("no-api.serial");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["--kernel", guest("counter.elf").to_str().unwrap()])
        .arg(format!("--serial=file:{}", serial.display()))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(&serial).unwrap_or_default().contains("tick 00000001\n") {
        assert!(started.elapsed() < Duration::from_secs(30), "the guest did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let names = threads(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_file(&serial).unwrap();
    assert_eq!(names, ["vcpu0", "vmm"]);
}

#[test]
fn seccomp_kills_the_api_thread_making_a_forbidden_call() {
    require_kvm!();
    let socket = scratch_file("violation.sock");
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmm"));
    command
        .args(["--kernel", guest("counter.elf").to_str().unwrap(), "--serial", "none"])
        .arg("--api-socket")
        .arg(&socket)
        .env("VMM_TEST_SECCOMP_VIOLATION", "api");
    let run = run_command(&mut command, Duration::from_secs(60));
    assert_eq!((run.status, run.signal), (None, Some(libc::SIGSYS)), "{run:#?}");
    let _ = std::fs::remove_file(&socket);
}

#[test]
fn bad_api_socket_paths_are_one_error_line_and_status_2() {
    let kernel = guest("counter.elf");
    let run_with = |socket: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vmm"));
        command.args(["--kernel", kernel.to_str().unwrap(), "--api-socket", socket]);
        run_command(&mut command, Duration::from_secs(60))
    };
    let run = run_with("/nonexistent/dir/api.sock");
    assert_vmm_error(
        &run,
        "--api-socket /nonexistent/dir/api.sock: the directory /nonexistent/dir does not exist",
    );
    let run = run_with("path=/nonexistent/dir/api.sock");
    assert_vmm_error(&run, "the directory /nonexistent/dir does not exist");

    // In use: the path exists (here a plain file, which stays untouched).
    let taken = scratch_file("taken.sock");
    std::fs::write(&taken, "not a socket").unwrap();
    let run = run_with(taken.to_str().unwrap());
    assert_vmm_error(&run, "already exists (in use?)");
    assert_eq!(std::fs::read_to_string(&taken).unwrap(), "not a socket");
    std::fs::remove_file(&taken).unwrap();

    assert_vmm_error(&run_with("path="), "the socket path is empty");
}

#[test]
fn a_socket_in_use_by_another_vmm_is_refused() {
    require_kvm!();
    let vmm = ApiVmm::start("in-use", &[]);
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmm"));
    command
        .args(["--kernel", guest("counter.elf").to_str().unwrap(), "--api-socket"])
        .arg(&vmm.socket);
    let run = run_command(&mut command, Duration::from_secs(60));
    assert_vmm_error(&run, "already exists (in use?)");
    // The first VMM's socket still works.
    assert_eq!(vmm.ask("GET", "/api/v1/vmm.ping", None).status, 200);
    vmm.shutdown();
}

/// The Linux guest's loop: a tick about every 500 ms with the guest's
/// uptime, shell builtins only (every fork costs seconds here); `read -t`
/// on the console (which gets no input) is the sleep.
const LINUX_TICKS: &str = r#"#!/bin/sh
dd if=/dev/vda of=/dev/null bs=64k count=16 2>/dev/null
read -r clocksource </sys/devices/system/clocksource/clocksource0/current_clocksource
echo "clocksource $clocksource"
i=0
while :; do
	i=$((i+1))
	read -r up _ </proc/uptime
	echo "linux-tick $i $up"
	read -t 0.5 _ </dev/console
done
"#;

/// `(tick, uptime)` of the Linux guest's complete tick lines.
fn linux_ticks(console: &str) -> Vec<(u64, f64)> {
    console
        .lines()
        .filter_map(|line| line.trim_end_matches('\r').strip_prefix("linux-tick "))
        .filter_map(|rest| {
            let (tick, up) = rest.split_once(' ')?;
            Some((tick.parse().ok()?, up.parse().ok()?))
        })
        .collect()
}

#[test]
fn linux_with_a_disk_pauses_its_devices_and_counts_them() {
    require_kvm!();
    let guest = linux_guest();
    let root = root_disk_copy("api-root.img");
    put_file(&root, "/test.sh", LINUX_TICKS.as_bytes(), 0o755);
    let kernel = guest.file("vmlinux");
    // kvmclock as the clocksource: the clock KVM_SET_CLOCK holds still over
    // a pause (with its default, the TSC, the guest's time goes on: the TSC
    // counts while paused).
    let cmdline = format!("{} root=/dev/vda rw clocksource=kvm-clock", guest.cmdline);
    let disk = format!("path={}", root.display());
    let vmm = ApiVmm::spawn(
        "linux",
        &["--kernel", &kernel, "--cmdline", &cmdline, "--memory", "256", "--disk", &disk],
    );
    let started = Instant::now();
    while linux_ticks(&vmm.console()).len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no ticks from Linux: {}",
            vmm.console()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    assert!(vmm.console().contains("clocksource kvm-clock\r\n"), "{}", vmm.console());
    let info = vmm.ask("GET", "/api/v1/vm.info", None).json();
    assert_eq!(info["config"]["disks"][0]["path"], root.to_str().unwrap());
    let cmdline_seen = info["config"]["payload"]["cmdline"].as_str().unwrap();
    assert!(cmdline_seen.contains("virtio_mmio.device=4K@0xd0000000:5"), "{cmdline_seen}");
    let counters = vmm.ask("GET", "/api/v1/vm.counters", None).json();
    let disk0 = &counters["devices"]["disk0"];
    // The root file system's reads and the script's 1 MiB from /dev/vda.
    assert!(disk0["read_bytes"].as_u64().unwrap() >= 1 << 20, "{counters}");
    assert!(disk0["requests"].as_u64().unwrap() > 0, "{counters}");
    assert_eq!(disk0["errors"], 0, "{counters}");

    assert_eq!(vmm.ask("PUT", "/api/v1/vm.pause", None).status, 204);
    std::thread::sleep(Duration::from_millis(300));
    let at_pause = vmm.console();
    let disk_at_pause = vmm.ask("GET", "/api/v1/vm.counters", None).json()["devices"].clone();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(vmm.console(), at_pause, "Linux printed while paused");
    let disk_later = vmm.ask("GET", "/api/v1/vm.counters", None).json()["devices"].clone();
    assert_eq!(disk_later, disk_at_pause, "a device served while paused");
    assert_eq!(vmm.ask("PUT", "/api/v1/vm.resume", None).status, 204);

    let before = linux_ticks(&at_pause);
    let started = Instant::now();
    let ticks = loop {
        let ticks = linux_ticks(&vmm.console());
        if ticks.len() >= before.len() + 3 {
            break ticks;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "Linux did not go on");
        std::thread::sleep(Duration::from_millis(100));
    };
    let numbers: Vec<u64> = ticks.iter().map(|(tick, _)| *tick).collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
    // The guest's uptime across the pause: what a tick interval takes,
    // not the 3 s of the pause on top (its clock was held still).
    let (last_before, first_after) = (before[before.len() - 1].1, ticks[before.len()].1);
    let gaps: Vec<f64> = ticks.windows(2).map(|w| w[1].1 - w[0].1).collect();
    eprintln!(
        "uptime gaps between ticks: {gaps:?}; across the pause {:.2} s",
        first_after - last_before
    );
    assert!(first_after - last_before < 2.5, "the guest's clock jumped: {gaps:?}");
    vmm.shutdown();
    std::fs::remove_file(&root).unwrap();
}
