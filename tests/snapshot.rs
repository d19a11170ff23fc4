//! Snapshot and restore (`vm.snapshot`, `--restore`) with the counter
//! guest (resources/guests/counter.S, `tick N` about every 200 ms): a
//! restored guest continues from the tick where it was paused, without a
//! second boot, from the same snapshot any number of times; a snapshot
//! missing, truncated or corrupted file by file is refused with one error
//! line and status 2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::api_vmm::{Answer, ApiVmm};
use common::rootfs::{put_file, root_disk_copy};
use common::{assert_vmm_error, guest, linux_guest, run_vmm, scratch_file};

// This file's own helpers on the shared `ApiVmm` (tests/common/api_vmm.rs).
impl ApiVmm {
    /// The counter guest, booted.
    fn boot(name: &str) -> ApiVmm {
        let kernel = guest("counter.elf");
        ApiVmm::spawn(name, &["--kernel", kernel.to_str().unwrap()])
    }

    fn put(&self, path: &str, body: Option<&str>) -> Answer {
        self.ask("PUT", path, body)
    }

    /// Pauses the guest and returns the ticks it printed.
    fn pause(&self) -> Vec<u64> {
        let answer = self.put("/api/v1/vm.pause", None);
        assert_eq!(answer.status, 204, "{answer:?}");
        // The last tick's line may still be on its way to the file.
        std::thread::sleep(Duration::from_millis(100));
        self.ticks()
    }
}

/// A fresh, empty scratch directory.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = scratch_file(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Boots the counter guest, lets it tick, pauses it and snapshots it into
/// `dir`; returns the last tick before the pause.
fn counter_snapshot(name: &str, dir: &Path) -> u64 {
    let vmm = ApiVmm::boot(name);
    vmm.wait_for_ticks(3, Duration::from_secs(30));
    let ticks = vmm.pause();
    vmm.snapshot(dir);
    // Paused, nothing more printed; the snapshot changed nothing.
    assert_eq!(vmm.ticks(), ticks);
    vmm.shutdown();
    *ticks.last().unwrap()
}

fn restore_arg(dir: &Path, resume: &str) -> String {
    format!("source_url=file://{},resume={resume}", dir.display())
}

#[test]
fn a_restored_counter_continues_where_it_was_paused_every_time() {
    require_kvm!();
    let dir = scratch_dir("snap-continue");
    let last = counter_snapshot("continue-source", &dir);

    // The snapshot: three files, guest memory sparse (128 MiB of RAM, of
    // which the guest touched a few pages).
    let memory = std::fs::metadata(dir.join("memory")).unwrap();
    assert_eq!(memory.len(), 128 << 20);
    assert!(memory.blocks() * 512 < 4 << 20, "memory takes {} KiB", memory.blocks() / 2);
    assert!(dir.join("state").is_file() && dir.join("config.json").is_file());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["memory"], 128);

    // Restored and resumed at once: the next tick is the one after the
    // last before the pause, the guest did not boot again.
    let restore = restore_arg(&dir, "on");
    let vmm = ApiVmm::spawn("continue-first", &["--restore", &restore]);
    let ticks = vmm.wait_for_ticks(3, Duration::from_secs(30));
    let expected: Vec<u64> = (last + 1..).take(ticks.len()).collect();
    assert_eq!(ticks, expected, "restored after tick {last}");
    vmm.shutdown();

    // The same snapshot again, paused by default until vm.resume.
    let restore = format!("source_url=file://{}", dir.display());
    let vmm = ApiVmm::spawn("continue-second", &["--restore", &restore]);
    let info = vmm.ask("GET", "/api/v1/vm.info", None);
    assert_eq!(info.status, 200, "{info:?}");
    assert!(info.body.contains(r#""state":"Paused""#), "{info:?}");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(vmm.ticks(), Vec::<u64>::new(), "a paused restore ran");
    let answer = vmm.put("/api/v1/vm.resume", None);
    assert_eq!(answer.status, 204, "{answer:?}");
    let ticks = vmm.wait_for_ticks(2, Duration::from_secs(30));
    assert_eq!(ticks[..2], [last + 1, last + 2]);
    // A restored machine snapshots again.
    vmm.pause();
    let again = scratch_dir("snap-continue-again");
    vmm.snapshot(&again);
    vmm.shutdown();
    assert!(again.join("state").is_file());
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(again).unwrap();
}

#[test]
fn snapshot_requests_are_checked() {
    require_kvm!();
    let vmm = ApiVmm::boot("snapshot-requests");
    vmm.wait_for_ticks(1, Duration::from_secs(30));
    let dir = scratch_dir("snap-requests");
    let body = format!(r#"{{"destination_url": "file://{}"}}"#, dir.display());
    let answer = vmm.put("/api/v1/vm.snapshot", Some(&body));
    assert_eq!(answer.status, 409, "{answer:?}");
    assert!(answer.body.contains("paused first"), "{answer:?}");
    vmm.pause();
    for url in ["/tmp/x", "file://relative", "http://host/x"] {
        let body = format!(r#"{{"destination_url": "{url}"}}"#);
        let answer = vmm.put("/api/v1/vm.snapshot", Some(&body));
        assert_eq!(answer.status, 400, "{url}: {answer:?}");
        assert!(answer.body.contains("file:///DIR"), "{answer:?}");
    }
    // A directory that cannot be made: an error, and nothing claimed.
    let body = r#"{"destination_url": "file:///nonexistent/deeper/snap"}"#;
    let answer = vmm.put("/api/v1/vm.snapshot", Some(body));
    assert_eq!(answer.status, 500, "{answer:?}");
    assert!(answer.body.contains("cannot create"), "{answer:?}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    vmm.shutdown();
    std::fs::remove_dir_all(dir).unwrap();
}

/// Copies the snapshot in `from` to a fresh directory named `name`.
fn copy_snapshot(from: &Path, name: &str) -> PathBuf {
    let to = scratch_dir(name);
    for file in ["config.json", "state", "memory"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
    to
}

fn refused(dir: &Path, problem: &str) {
    let restore = restore_arg(dir, "on");
    let run = run_vmm(&["--restore", &restore, "--serial", "stdout"]);
    assert_vmm_error(&run, problem);
}

#[test]
fn a_missing_truncated_or_corrupted_snapshot_is_refused() {
    require_kvm!();
    let good = scratch_dir("snap-corrupt");
    counter_snapshot("corrupt-source", &good);

    refused(&good.join("nowhere"), "cannot read");
    for file in ["config.json", "state", "memory"] {
        // Missing.
        let dir = copy_snapshot(&good, &format!("snap-missing-{file}"));
        std::fs::remove_file(dir.join(file)).unwrap();
        refused(&dir, file);
        // Truncated: to nothing, and by half.
        for keep in [0, 2] {
            let dir = copy_snapshot(&good, &format!("snap-truncated-{file}-{keep}"));
            let len = std::fs::metadata(dir.join(file)).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(dir.join(file)).unwrap();
            f.set_len(if keep == 0 { 0 } else { len / 2 }).unwrap();
            refused(&dir, file);
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
    let state = std::fs::read(good.join("state")).unwrap();
    let corrupt = |name: &str, problem: &str, change: &dyn Fn(&mut Vec<u8>)| {
        let dir = copy_snapshot(&good, name);
        let mut bytes = state.clone();
        change(&mut bytes);
        std::fs::write(dir.join("state"), bytes).unwrap();
        refused(&dir, problem);
        std::fs::remove_dir_all(dir).unwrap();
    };
    corrupt("snap-bad-payload", "checksum mismatch", &|b| {
        let at = b.len() / 2;
        b[at] ^= 0x01;
    });
    corrupt("snap-bad-magic", "bad magic", &|b| b[0] = b'X');
    corrupt("snap-bad-version", "format version 99 is not supported (this build reads 1)", &|b| {
        b[8..12].copy_from_slice(&99u32.to_le_bytes())
    });
    corrupt("snap-trailing", "unexpected bytes", &|b| b.extend_from_slice(b"more"));
    // A sound blob holding no machine state.
    corrupt("snap-not-a-machine", "cannot decode the state", &|b| {
        let payload = br#"{"machine": 1}"#;
        b.truncate(24);
        b[12..20].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        b[20..24].copy_from_slice(&crc32(payload).to_le_bytes());
        b.extend_from_slice(payload);
    });
    // A configuration that is not one.
    let dir = copy_snapshot(&good, "snap-bad-config");
    std::fs::write(dir.join("config.json"), b"{\"memory\": \"lots\"}").unwrap();
    refused(&dir, "config.json is not a usable configuration");
    std::fs::remove_dir_all(dir).unwrap();
    // Guest memory of another size than the configuration's.
    let dir = copy_snapshot(&good, "snap-bad-memory");
    let f = std::fs::OpenOptions::new().write(true).open(dir.join("memory")).unwrap();
    f.set_len((128 << 20) + 4096).unwrap();
    refused(&dir, "memory holds 134221824 bytes");
    std::fs::remove_dir_all(dir).unwrap();
    // Options that describe a machine do not go with --restore.
    let restore = restore_arg(&good, "on");
    let run = run_vmm(&["--restore", &restore, "--memory", "256"]);
    run.assert_status(2);
    assert!(run.stderr.contains("cannot be used with"), "{}", run.stderr);
    std::fs::remove_dir_all(good).unwrap();
}

/// A busybox shell on the test Linux's root disk, a shell variable set at
/// its prompt and a counter in the background: after pause, snapshot,
/// shutdown and a restore in a new process, the counter goes on from its
/// next number, and the shell still knows the variable and does arithmetic;
/// nothing boots again. The guest has two vCPUs: the second runs a program
/// after the restore too. Once its disk is gone, the snapshot is refused.
#[test]
fn linux_restored_from_a_snapshot_keeps_its_shell_and_counter() {
    require_kvm!();
    let guest = linux_guest();
    let root = root_disk_copy("snapshot-root.img");
    let kernel = guest.file("vmlinux");
    let cmdline = format!("{} root=/dev/vda rw", guest.cmdline);
    let disk = format!("path={}", root.display());
    let mut vmm = ApiVmm::spawn(
        "linux-source",
        &[
            "--kernel",
            &kernel,
            "--cmdline",
            &cmdline,
            "--memory",
            "256",
            "--cpus",
            "2",
            "--disk",
            &disk,
        ],
    );
    let boot = Duration::from_secs(600);
    // Bytes sent before the guest's serial driver is up are lost: wait for
    // the shell's prompt.
    vmm.wait_for("# ", 1, boot);
    vmm.type_in(
        b"SNAPVAR=kept-across; (i=0; while :; do i=$((i+1)); echo count-$i; sleep 1; done) &\n",
    );
    vmm.wait_for("count-3\r\n", 1, Duration::from_secs(120));
    let answer = vmm.put("/api/v1/vm.pause", None);
    assert_eq!(answer.status, 204, "{answer:?}");
    std::thread::sleep(Duration::from_millis(300));
    let at_pause = vmm.console();
    let last = counts(&at_pause).last().copied().unwrap();
    let dir = scratch_dir("snap-linux");
    vmm.snapshot(&dir);
    vmm.shutdown();
    let memory = std::fs::metadata(dir.join("memory")).unwrap();
    eprintln!(
        "Linux snapshot: {} MiB of RAM in {} MiB on disk, state {} bytes",
        memory.len() >> 20,
        (memory.blocks() * 512) >> 20,
        std::fs::metadata(dir.join("state")).unwrap().len()
    );

    let restore = restore_arg(&dir, "on");
    let mut vmm = ApiVmm::spawn("linux-restored", &["--restore", &restore]);
    let started = Instant::now();
    while counts(&vmm.console()).len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "no count: {}", vmm.console());
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = counts(&vmm.console());
    assert_eq!(after[..2], [last + 1, last + 2], "paused after count-{last}");
    // vm.info reports the machine as it was booted, virtio entries and all.
    let info = vmm.ask("GET", "/api/v1/vm.info", None);
    assert_eq!(info.status, 200, "{info:?}");
    let info = info.json();
    assert_eq!(info["config"]["disks"][0]["path"], root.to_str().unwrap());
    let cmdline_seen = info["config"]["payload"]["cmdline"].as_str().unwrap();
    assert!(cmdline_seen.contains("virtio_mmio.device=4K@0xd0000000:5"), "{cmdline_seen}");
    vmm.type_in(b"echo var=$SNAPVAR answer=$((6*7))\n");
    vmm.wait_for("var=kept-across answer=42", 1, Duration::from_secs(60));
    // Field 39 of /proc/self/stat: the CPU the process runs on, pinned to 1.
    vmm.type_in(b"echo cpus=$(nproc) on=$(taskset -c 1 cut -d' ' -f39 /proc/self/stat)\n");
    vmm.wait_for("cpus=2 on=1\r\n", 1, Duration::from_secs(60));
    let console = vmm.console();
    assert!(!console.contains("Linux version"), "the guest booted again: {console}");
    vmm.shutdown();
    // Without its disk the snapshot is refused, before anything runs.
    std::fs::remove_file(&root).unwrap();
    refused(&dir, &format!("cannot open {}", root.display()));
    std::fs::remove_dir_all(dir).unwrap();
}

/// The guest's vsock echo server (the root disk's vsock-helper), kept
/// running.
const VSOCK_SCRIPT: &str = "vsock-helper serve 1234 1235 &\necho VMM-VSOCK-SERVING\nwait\n";

/// A hybrid-vsock connection to guest port `port` (`CONNECT`, `OK n`).
fn vsock_connect(socket: &Path, port: u32) -> Result<UnixStream, String> {
    let mut stream = UnixStream::connect(socket).map_err(|err| err.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.write_all(format!("CONNECT {port}\n").as_bytes()).map_err(|err| err.to_string())?;
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap()).read_line(&mut line).map_err(|e| e.to_string())?;
    if line.starts_with("OK ") { Ok(stream) } else { Err(line) }
}

/// Sends `data` to the guest's echo server and reads the echo to its end.
fn vsock_echo(socket: &Path, data: &[u8], limit: Duration) -> Vec<u8> {
    let started = Instant::now();
    let mut stream = loop {
        match vsock_connect(socket, 1234) {
            Ok(stream) => break stream,
            Err(err) if started.elapsed() > limit => panic!("no echo server: {err}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    stream.write_all(data).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).unwrap();
    echoed
}

/// Linux with a vsock device: an echo server in the guest answers before
/// the snapshot and, in the restored VMM (its vsock transport reset, its
/// host socket made again), after it.
#[test]
fn linux_restored_with_vsock_serves_new_connections() {
    require_kvm!();
    let guest = linux_guest();
    let root = root_disk_copy("snapshot-vsock-root.img");
    put_file(&root, "/test.sh", VSOCK_SCRIPT.as_bytes(), 0o755);
    let socket = scratch_file("snapshot-vsock.sock");
    let _ = std::fs::remove_file(&socket);
    let kernel = guest.file("vmlinux");
    let cmdline = format!("{} root=/dev/vda rw", guest.cmdline);
    let disk = format!("path={}", root.display());
    let vsock = format!("cid=3,socket={}", socket.display());
    let args = ["--kernel", &kernel, "--cmdline", &cmdline, "--memory", "256", "--disk", &disk];
    let mut with_vsock = args.to_vec();
    with_vsock.extend_from_slice(&["--vsock", &vsock]);
    let vmm = ApiVmm::spawn("vsock-source", &with_vsock);
    vmm.wait_for("VMM-VSOCK-SERVING", 1, Duration::from_secs(600));
    assert_eq!(vsock_echo(&socket, b"before", Duration::from_secs(120)), b"before");
    // A connection open when the snapshot is taken.
    let open = vsock_connect(&socket, 1234).unwrap();
    let answer = vmm.put("/api/v1/vm.pause", None);
    assert_eq!(answer.status, 204, "{answer:?}");
    let dir = scratch_dir("snap-vsock");
    vmm.snapshot(&dir);
    vmm.shutdown();
    drop(open);
    assert!(!socket.exists());

    let restore = restore_arg(&dir, "on");
    let vmm = ApiVmm::spawn("vsock-restored", &["--restore", &restore]);
    // A connection made in the instant after the restore may be reset by
    // the guest handling the transport reset event after it: once more then.
    let mut echoed = vsock_echo(&socket, b"after", Duration::from_secs(60));
    if echoed.is_empty() {
        eprintln!("the first connection after the restore was reset; again");
        echoed = vsock_echo(&socket, b"after", Duration::from_secs(60));
    }
    assert_eq!(echoed, b"after");
    let counters = vmm.ask("GET", "/api/v1/vm.counters", None);
    assert_eq!(counters.status, 200, "{counters:?}");
    assert!(!vmm.console().contains("Linux version"), "booted again: {}", vmm.console());
    // The guest read its CID again (the vsock's configuration space, at
    // 0x100 of its window, the second slot): Linux does that on the
    // transport reset event, and only then.
    let counters = counters.json();
    let reads = counters["vcpus"][0]["top_mmio"].as_array().unwrap();
    assert!(
        reads.iter().any(|read| read["address"] == 0xd000_1100u64),
        "no CID read after restore: {counters}"
    );
    vmm.shutdown();
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_file(root).unwrap();
}

/// A network namespace of the test's own, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let name = format!("{name}-{}", std::process::id());
        let ip = |args: &[&str]| {
            assert!(Command::new("ip").args(args).status().expect("run ip").success(), "{args:?}")
        };
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

/// Linux with virtio-net on a tap (in a namespace of the test's own): its
/// pings to the host side are answered before the snapshot and, restored
/// in a new process that made the tap again by its name, after it.
#[test]
fn linux_restored_with_a_tap_answers_on_the_network_again() {
    require_kvm!();
    let guest = linux_guest();
    let root = root_disk_copy("snapshot-net-root.img");
    // The guest pings the host side of the tap every second.
    let script = "ip addr add 169.254.11.2/30 dev eth0 && ip link set eth0 up && echo VMM-NET-UP\n\
        i=0; while :; do i=$((i+1)); if ping -c 1 -W 1 169.254.11.1 >/dev/null 2>&1; \
        then echo net-ok-$i; else echo net-lost-$i; fi; sleep 1; done\n";
    put_file(&root, "/test.sh", script.as_bytes(), 0o755);
    let netns = Netns::new("vmm-snapshot");
    let kernel = guest.file("vmlinux");
    let cmdline = format!("{} root=/dev/vda rw", guest.cmdline);
    let disk = format!("path={}", root.display());
    let net = "tap=snaptap0,mac=06:00:a9:fe:0b:02,ip=169.254.11.1,mask=255.255.255.252";
    let args = [
        "--kernel",
        &kernel,
        "--cmdline",
        &cmdline,
        "--memory",
        "256",
        "--disk",
        &disk,
        "--net",
        net,
    ];
    let vmm = ApiVmm::spawn_in(Some(&netns.0), "net-source", &args);
    vmm.wait_for("VMM-NET-UP", 1, Duration::from_secs(600));
    vmm.wait_for("net-ok-", 2, Duration::from_secs(120));
    // The host side's MAC comes from the configuration, so the restore's
    // new tap has it too.
    let host_mac = || {
        let out = Command::new("ip").args(["-n", &netns.0, "link", "show", "snaptap0"]).output();
        String::from_utf8_lossy(&out.unwrap().stdout).into_owned()
    };
    assert!(host_mac().contains("link/ether 06:80:a9:fe:0b:02"), "{}", host_mac());
    let answer = vmm.put("/api/v1/vm.pause", None);
    assert_eq!(answer.status, 204, "{answer:?}");
    let dir = scratch_dir("snap-net");
    vmm.snapshot(&dir);
    vmm.shutdown();

    let restore = restore_arg(&dir, "on");
    let vmm = ApiVmm::spawn_in(Some(&netns.0), "net-restored", &["--restore", &restore]);
    // The restored console starts empty: new answers come through the tap
    // the restored VMM made again, with the same MAC address.
    vmm.wait_for("net-ok-", 2, Duration::from_secs(240));
    assert!(host_mac().contains("link/ether 06:80:a9:fe:0b:02"), "{}", host_mac());
    assert!(!vmm.console().contains("net-lost-"), "{}", vmm.console());
    let counters = vmm.ask("GET", "/api/v1/vm.counters", None);
    assert_eq!(counters.status, 200, "{counters:?}");
    let counters = counters.json();
    let net0 = &counters["devices"]["net0"];
    assert!(net0["rx_frames"].as_u64().unwrap() > 0 && net0["tx_frames"].as_u64().unwrap() > 0);
    assert!(!vmm.console().contains("Linux version"), "booted again: {}", vmm.console());
    vmm.shutdown();
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_file(root).unwrap();
}

/// The numbers of the guest's complete `count-N` lines.
fn counts(console: &str) -> Vec<u64> {
    console
        .split('\n')
        .filter_map(|line| line.trim_end_matches('\r').strip_prefix("count-"))
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// CRC32 (IEEE), bitwise: the state's checksum, for a hand-made blob.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
