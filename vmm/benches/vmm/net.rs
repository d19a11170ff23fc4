//! The virtio-net and virtio-vsock rows: the test Linux boots from its root
//! disk inside a network namespace made here, on a tap made here, and runs
//! `resources/bench/netbench.c`; this side (a thread that entered the
//! namespace) times every transfer. QEMU microvm runs the same kernel, root
//! image, command line and tap (`-netdev tap -device virtio-net-device`).
//! QEMU has no vsock peer on a host without /dev/vhost-vsock: the vsock
//! rows are ours alone, next to the TCP rows.
//!
//! Traffic stays inside the namespace, between link-local addresses.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{
    Bench, Cell, LINUX_MIB, Linux, Options, Row, RunOptions, Sample, Status, TEST_STATUS, Target,
    Vmm, build_guest_program, check_cmdline, execute, measure, root_image,
};

/// Bytes of each timed transfer (one per direction and transport).
const TRANSFER: u64 = 2 << 20;
/// Round trips of the 1-byte echo.
const ROUNDS: u64 = 100;
/// ICMP echo requests of the ping row.
const PINGS: &str = "10";
const HOST: &str = "169.254.20.1";
const GUEST: &str = "169.254.20.2";
const TAP: &str = "vmmbt0";
/// netbench's ports (resources/bench/netbench.c and the guest script).
const TCP_TO_GUEST: u16 = 5001;
const TCP_TO_HOST: u16 = 5000;
const TCP_ECHO: u16 = 5002;
const TCP_DONE: u16 = 5003;
const VSOCK_TO_GUEST: u32 = 6001;
const VSOCK_TO_HOST: u32 = 6000;
const VSOCK_ECHO: u32 = 6002;
/// How long the guest may take to boot and reach a step.
const STEP_LIMIT: Duration = Duration::from_secs(400);

/// The guest's /test.sh: its steps in the order the host drives them; the
/// sizes come from the kernel command line (init's environment).
const SCRIPT: &str = r#"#!/bin/sh
# vmm/benches/vmm/net.rs: the virtio-net and virtio-vsock rows
set -e
ip addr add 169.254.20.2/30 dev eth0
ip link set eth0 up
/netbench tcp-recv 5001 "$NETBENCH_BYTES"
/netbench tcp-send 169.254.20.1 5000 "$NETBENCH_BYTES"
/netbench tcp-echo 5002 "$NETBENCH_ROUNDS"
if [ "$NETBENCH_VSOCK" = 1 ]; then
    /netbench vsock-recv 6001 "$NETBENCH_BYTES"
    /netbench vsock-send 6000 "$NETBENCH_BYTES"
    /netbench vsock-echo 6002 "$NETBENCH_ROUNDS"
fi
/netbench tcp-wait 5003
"#;

/// The namespace with its tap (host side at `HOST`), deleted when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Result<Netns, String> {
        let netns = Netns { name: format!("vmmbench-{}", std::process::id()) };
        let ip = |args: &[&str]| -> Result<(), String> {
            let status = Command::new("ip")
                .args(args)
                .status()
                .map_err(|e| format!("cannot run ip (install iproute2): {e}"))?;
            if status.success() { Ok(()) } else { Err(format!("ip {} failed", args.join(" "))) }
        };
        ip(&["netns", "add", &netns.name])?;
        let ns = netns.name.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr"])?;
        ip(&["-n", ns, "addr", "add", &format!("{HOST}/30"), "dev", TAP])?;
        ip(&["-n", ns, "link", "set", TAP, "up"])?;
        Ok(netns)
    }

    /// Runs `f` on a thread that entered the namespace (and so do the
    /// processes it starts).
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T, String>> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            // SAFETY: setns takes a descriptor we own and a flag; it moves
            // only this thread into the namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
            }
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).status();
    }
}

/// The host side's figures of one boot.
#[derive(Debug)]
struct Figures {
    /// MiB/s host -> guest and guest -> host, TCP.
    tcp: [f64; 2],
    /// Mean round trip of the 1-byte TCP echo, us.
    tcp_rtt_us: f64,
    /// Mean ICMP round trip, ms (busybox ping's avg).
    ping_ms: f64,
    /// The same as `tcp` and `tcp_rtt_us` over vsock (boots of ours).
    vsock: Option<([f64; 2], f64)>,
    /// The VMM's exits to userspace while the two TCP transfers ran, or
    /// why they could not be counted.
    tcp_exits: Result<u64, String>,
}

impl Default for Figures {
    fn default() -> Self {
        Figures {
            tcp: [0.0; 2],
            tcp_rtt_us: 0.0,
            ping_ms: 0.0,
            vsock: None,
            tcp_exits: Err("not counted".into()),
        }
    }
}

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / f64::from(1 << 20) / took.as_secs_f64().max(1e-9)
}

/// Retries `attempt` every 200 ms until it succeeds or the step's time is
/// up.
fn retry<T>(
    what: &str,
    deadline: Instant,
    mut attempt: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    loop {
        if let Some(value) = attempt() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: gave up after {} s", STEP_LIMIT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn connect_guest(port: u16, deadline: Instant) -> Result<TcpStream, String> {
    let address: SocketAddr = format!("{GUEST}:{port}").parse().unwrap();
    let stream = retry(&format!("connect to the guest's port {port}"), deadline, || {
        TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    Ok(stream)
}

/// A vsock connection to the guest's `port` through the VMM's socket
/// (Firecracker's `CONNECT <port>\n`, answered `OK <port>\n`).
fn connect_vsock(socket: &Path, port: u32, deadline: Instant) -> Result<UnixStream, String> {
    retry(&format!("vsock CONNECT {port}"), deadline, || {
        let mut stream = UnixStream::connect(socket).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
        stream.write_all(format!("CONNECT {port}\n").as_bytes()).ok()?;
        let mut reader = BufReader::new(stream.try_clone().ok()?);
        let mut line = String::new();
        // The guest not listening yet: the VMM closes the connection.
        reader.read_line(&mut line).ok()?;
        line.starts_with("OK ").then_some(stream)
    })
}

/// Writes `bytes` to the guest and waits for its 1-byte answer; MiB/s.
fn send(stream: &mut (impl Read + Write), bytes: u64) -> Result<f64, String> {
    let chunk = vec![0x5au8; 64 * 1024];
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n]).map_err(|e| format!("send: {e}"))?;
        left -= n as u64;
    }
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).map_err(|e| format!("waiting for the guest's answer: {e}"))?;
    Ok(mib_per_s(bytes, started.elapsed()))
}

/// Reads `bytes` from the guest, timed from the connection; MiB/s.
fn receive(stream: &mut impl Read, bytes: u64) -> Result<f64, String> {
    let mut buffer = vec![0u8; 64 * 1024];
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let want = left.min(buffer.len() as u64) as usize;
        let n = stream.read(&mut buffer[..want]).map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return Err(format!("the guest closed with {left} bytes to go"));
        }
        left -= n as u64;
    }
    Ok(mib_per_s(bytes, started.elapsed()))
}

/// `rounds` 1-byte round trips; the mean, us.
fn echo(stream: &mut (impl Read + Write), rounds: u64) -> Result<f64, String> {
    if rounds == 0 {
        return Ok(0.0);
    }
    let started = Instant::now();
    let mut byte = [0u8; 1];
    for _ in 0..rounds {
        stream.write_all(&byte).map_err(|e| format!("echo: {e}"))?;
        stream.read_exact(&mut byte).map_err(|e| format!("echo: {e}"))?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / rounds as f64)
}

fn accept_tcp(listener: &TcpListener, deadline: Instant) -> Result<TcpStream, String> {
    let stream = retry("the guest's connection", deadline, || listener.accept().ok())?.0;
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    Ok(stream)
}

fn accept_unix(listener: &UnixListener, deadline: Instant) -> Result<UnixStream, String> {
    let stream = retry("the guest's vsock connection", deadline, || listener.accept().ok())?.0;
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    Ok(stream)
}

/// The host side of one boot, in the guest script's order (runs in the
/// namespace).
fn drive(marker: &str, socket: Option<PathBuf>) -> Result<Figures, String> {
    let deadline = Instant::now() + STEP_LIMIT;
    let (bytes, rounds) = (TRANSFER, ROUNDS);
    let to_host = TcpListener::bind((HOST, TCP_TO_HOST)).map_err(|e| format!("bind: {e}"))?;
    to_host.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut figures = Figures::default();
    // Connected, the guest has booted and waits for the bytes: the count
    // starts here and covers the two transfers alone.
    let mut to_guest = connect_guest(TCP_TO_GUEST, deadline)?;
    let counter = ExitCounter::start(marker);
    figures.tcp[0] = send(&mut to_guest, bytes)?;
    // The guest's next step waits for this close.
    drop(to_guest);
    figures.tcp[1] = receive(&mut accept_tcp(&to_host, deadline)?, bytes)?;
    figures.tcp_exits = counter.and_then(ExitCounter::stop);
    let mut stream = connect_guest(TCP_ECHO, deadline)?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    figures.tcp_rtt_us = echo(&mut stream, rounds)?;
    drop(stream);
    if let Some(socket) = socket {
        let listener_path = PathBuf::from(format!("{}_{VSOCK_TO_HOST}", socket.display()));
        let _ = std::fs::remove_file(&listener_path);
        let listener = UnixListener::bind(&listener_path)
            .map_err(|e| format!("{}: {e}", listener_path.display()))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let to_guest = send(&mut connect_vsock(&socket, VSOCK_TO_GUEST, deadline)?, bytes)?;
        let from_guest = receive(&mut accept_unix(&listener, deadline)?, bytes)?;
        let rtt = echo(&mut connect_vsock(&socket, VSOCK_ECHO, deadline)?, rounds)?;
        figures.vsock = Some(([to_guest, from_guest], rtt));
        let _ = std::fs::remove_file(&listener_path);
    }
    let ping = Command::new("busybox")
        .args(["ping", "-c", PINGS, "-i", "0.2", "-W", "10", GUEST])
        .output()
        .map_err(|e| format!("cannot run busybox ping: {e}"))?;
    let text = String::from_utf8_lossy(&ping.stdout);
    figures.ping_ms = text
        .lines()
        .find_map(|l| l.strip_prefix("round-trip min/avg/max = "))
        .and_then(|rest| rest.split('/').nth(1)?.parse().ok())
        .ok_or_else(|| format!("busybox ping gave no round-trip line: {}", text.trim()))?;
    // The guest's last step waits for this connection's close.
    drop(connect_guest(TCP_DONE, deadline)?);
    Ok(figures)
}

/// The root image, kernel and command line of the network boots.
struct NetSetup {
    root: PathBuf,
    kernel: PathBuf,
    cmdline: String,
}

fn prepare(bench: &Bench, linux: &Linux) -> Result<NetSetup, String> {
    let (netbench, program) = build_guest_program(bench, "netbench")?;
    let script_path = bench.scratch_file("net-test.sh");
    std::fs::write(&script_path, SCRIPT).map_err(|e| format!("{}: {e}", script_path.display()))?;
    let files: [(&Path, &str, &[u8]); 2] =
        [(&script_path, "test.sh", SCRIPT.as_bytes()), (&netbench, "netbench", &program)];
    Ok(NetSetup {
        root: root_image(bench, linux, "net-root.ext4", &files)?,
        kernel: linux.dir.join("vmlinux"),
        cmdline: format!("{} root=/dev/vda rw", linux.cmdline),
    })
}

/// Counts one process's exits to userspace, KVM's `kvm_userspace_exit`
/// tracepoint through `perf stat`: the kernel's count, the same for every
/// VMM, over a window the host side chooses.
struct ExitCounter {
    /// Taken by `stop`; killed if the window ends otherwise (an error).
    perf: Option<std::process::Child>,
}

impl ExitCounter {
    /// Attaches to the process whose command line holds `marker` (the
    /// boot's own root image path).
    fn start(marker: &str) -> Result<ExitCounter, String> {
        let pid = pid_with_argument(marker).ok_or("the VMM's process was not found")?;
        let perf = Command::new("perf")
            .args(["stat", "-x,", "-e", "kvm:kvm_userspace_exit", "-p", &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("n/a (cannot run perf: {e}; Debian: linux-perf)"))?;
        // perf attaches in well under this; the guest waits for the bytes.
        std::thread::sleep(Duration::from_millis(300));
        Ok(ExitCounter { perf: Some(perf) })
    }

    /// Stops the count (SIGINT: perf prints it) and returns it.
    fn stop(mut self) -> Result<u64, String> {
        let perf = self.perf.take().ok_or("perf is gone")?;
        // SAFETY: kill takes a process id and a signal; the child is ours
        // and not yet reaped.
        unsafe { libc::kill(perf.id() as libc::pid_t, libc::SIGINT) };
        let output = perf.wait_with_output().map_err(|e| format!("perf: {e}"))?;
        let text = String::from_utf8_lossy(&output.stderr);
        text.lines()
            .find(|line| line.contains("kvm:kvm_userspace_exit"))
            .and_then(|line| line.split(',').next()?.trim().parse().ok())
            .ok_or_else(|| format!("perf counted nothing: {}", text.trim()))
    }
}

impl Drop for ExitCounter {
    fn drop(&mut self) {
        if let Some(mut perf) = self.perf.take() {
            let _ = perf.kill();
            let _ = perf.wait();
        }
    }
}

/// The process (not `ip`, which execs it) one of whose arguments holds
/// `marker`.
fn pid_with_argument(marker: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let mut args = cmdline.split(|&b| b == 0).map(String::from_utf8_lossy);
        let program = args.next()?;
        let holds = args.any(|arg| arg.contains(marker));
        (holds && !program.ends_with("ip")).then_some(pid)
    })
}

/// One boot under `vmm`: the host side's figures.
fn boot(bench: &Bench, netns: &Netns, setup: &NetSetup, vmm: Vmm) -> Result<Figures, Sample> {
    let root = bench.scratch_file(&format!("net-root-{vmm:?}.ext4"));
    std::fs::copy(&setup.root, &root).map_err(|e| format!("{}: {e}", root.display()))?;
    let vsock = vmm == Vmm::Ours;
    let cmdline = format!(
        "{} NETBENCH_BYTES={TRANSFER} NETBENCH_ROUNDS={ROUNDS} NETBENCH_VSOCK={}",
        setup.cmdline,
        u8::from(vsock)
    );
    let socket = bench.scratch_file("net-vsock.sock");
    let _ = std::fs::remove_file(&socket);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &netns.name]);
    match vmm {
        Vmm::Ours => {
            cmd.arg(&bench.ours).arg("--kernel").arg(&setup.kernel);
            cmd.args(["--memory", &LINUX_MIB.to_string(), "--cmdline", &cmdline]);
            cmd.arg("--disk").arg(format!("path={}", root.display()));
            cmd.args(["--net", &format!("tap={TAP}")]);
            if vsock {
                cmd.arg("--vsock").arg(format!("cid=3,socket={}", socket.display()));
            }
        }
        _ => {
            // The QEMU command, run through `ip netns exec`.
            let qemu = bench.qemu_linux_command("acpi=off").map_err(Sample::NotApplicable)?;
            cmd.arg(qemu.get_program()).args(qemu.get_args());
            cmd.arg("-kernel").arg(&setup.kernel).args(["-append", &cmdline]);
            cmd.args(["-device", "virtio-blk-device,drive=d0"]);
            cmd.args(["-drive", &format!("id=d0,file={},format=raw,if=none", root.display())]);
            cmd.args(["-device", "virtio-net-device,netdev=n0"]);
            cmd.args(["-netdev", &format!("tap,id=n0,ifname={TAP},script=no,downscript=no")]);
        }
    }
    let host = netns.spawn({
        let socket = vsock.then(|| socket.clone());
        let marker = root.display().to_string();
        move || drive(&marker, socket)
    });
    // The host side gives up after STEP_LIMIT; the guest then waits for it.
    let limit = Some(STEP_LIMIT + Duration::from_secs(60));
    let run_options = RunOptions { limit, ..Default::default() };
    let stderr = bench.scratch_file(&format!("net-{vmm:?}.stderr"));
    let run = execute(cmd, &stderr, &run_options);
    let figures = host.join().unwrap();
    let run = run?;
    let console = String::from_utf8_lossy(&run.stdout).into_owned();
    let last_lines = || {
        let tail: Vec<&str> = console.lines().rev().take(3).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
    };
    if let Some(line) = console.lines().find(|l| l.contains("NETBENCH-ERROR")) {
        return Err(Sample::Failed(format!("netbench: {}", line.trim())));
    }
    let figures = figures.map_err(|e| format!("{e}; the guest's last lines: {}", last_lines()))?;
    if run.status != Status::Exited(0) {
        run.expect_status(0)?;
    }
    check_cmdline(&run.stdout, &cmdline)?;
    if !console.contains(&format!("{TEST_STATUS} 0")) {
        return Err(Sample::Failed(format!("/test.sh failed; last lines: {}", last_lines())));
    }
    Ok(figures)
}

/// The metrics of these rows, in the order of `values`.
fn metrics() -> [(String, &'static str, usize, Target); 8] {
    let mib = TRANSFER >> 20;
    [
        (format!("virtio-net TCP host -> guest, {mib} MiB"), "MiB/s", 2, Target::MinTimes(1.0)),
        (format!("virtio-net TCP guest -> host, {mib} MiB"), "MiB/s", 2, Target::MinTimes(1.0)),
        (format!("virtio-net TCP round trip, 1-byte echo x {ROUNDS}"), "us", 0, Target::Info),
        (format!("virtio-net ping round trip, {PINGS} x ICMP"), "ms", 3, Target::Info),
        (format!("virtio-vsock host -> guest, {mib} MiB"), "MiB/s", 2, Target::Info),
        (format!("virtio-vsock guest -> host, {mib} MiB"), "MiB/s", 2, Target::Info),
        (format!("virtio-vsock round trip, 1-byte echo x {ROUNDS}"), "us", 0, Target::Info),
        ("virtio-net exits to userspace".to_owned(), "per MiB", 1, Target::Below),
    ]
}

/// Both TCP transfers' bytes, in MiB.
const TCP_MIB: f64 = 2.0 * TRANSFER as f64 / (1 << 20) as f64;

fn values(figures: &Figures) -> Vec<f64> {
    let (vsock, vsock_rtt) = figures.vsock.unwrap_or(([f64::NAN; 2], f64::NAN));
    // NaN where the exits were not counted: the note says why.
    let exits = figures.tcp_exits.as_ref().map_or(f64::NAN, |&n| n as f64 / TCP_MIB);
    vec![
        figures.tcp[0],
        figures.tcp[1],
        figures.tcp_rtt_us,
        figures.ping_ms,
        vsock[0],
        vsock[1],
        vsock_rtt,
        exits,
    ]
}

pub(super) fn rows(
    bench: &Bench,
    options: &Options,
    linux: &Result<Linux, String>,
    notes: &mut Vec<String>,
) -> Vec<Row> {
    let metrics = metrics();
    let row = |i: usize, mut cells: [Cell; 3]| {
        let (metric, unit, decimals, target) = &metrics[i];
        cells[1] = Cell::NotApplicable("n/a (boots no Linux)".into());
        if (4..7).contains(&i) {
            cells[2] = Cell::NotApplicable("n/a (no vhost-vsock here)".into());
        }
        Row {
            metric: metric.clone(),
            unit,
            decimals: *decimals,
            cells,
            base: Vmm::Qemu,
            target: *target,
        }
    };
    let failed = |why: String| -> Vec<Row> {
        let cells = [Cell::Failed(why.clone()), Cell::Failed(why.clone()), Cell::Failed(why)];
        (0..metrics.len()).map(|i| row(i, cells.clone())).collect()
    };
    let setup = match linux.as_ref().map_err(Clone::clone).and_then(|l| prepare(bench, l)) {
        Ok(setup) => setup,
        Err(why) => return failed(why),
    };
    let netns = match Netns::new() {
        Ok(netns) => netns,
        Err(why) => return failed(format!("the network namespace: {why}")),
    };
    let vmms = [Vmm::Ours, Vmm::Qemu];
    let mut uncounted: Vec<String> = Vec::new();
    let cells = measure("virtio-net, virtio-vsock", 8, options.linux_reps, &vmms, |vmm, _| {
        let figures = boot(bench, &netns, &setup, vmm)?;
        if let Err(why) = &figures.tcp_exits {
            uncounted.push(format!("{vmm:?}: {why}"));
        }
        Ok(values(&figures))
    });
    if !uncounted.is_empty() {
        notes.push(format!("virtio-net exits not counted in some boots: {}", uncounted.join("; ")));
    }
    notes.push(format!(
        "exits to userspace per MiB: KVM's kvm_userspace_exit events of the VMM's process \
         (perf stat -p) from the guest's first TCP connection to the end of both transfers \
         ({TCP_MIB} MiB), in every timed boot"
    ));
    let mut cells = cells;
    for cell in &mut cells[7] {
        if let Cell::Samples(samples) = cell {
            samples.retain(|n| !n.is_nan());
            if samples.is_empty() {
                *cell = Cell::NotApplicable("n/a (not counted: see the notes)".into());
            }
        }
    }
    let rows: Vec<Row> = cells.into_iter().enumerate().map(|(i, c)| row(i, c)).collect();
    rows
}
