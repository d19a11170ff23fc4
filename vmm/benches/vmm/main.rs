//! The VMM benchmark (project issue 6): `cargo bench -p vmm --bench vmm`
//! [`-- --quick`] [`-- --linux`] [`-- --only disk,net`].
//!
//! Builds the floor (a minimal C VMM, `resources/bench/floor.c`) and the
//! bench guests (`resources/bench/guests`) into `target/bench`, then runs
//! every metric several times, alternating our VMM, the floor and QEMU
//! microvm in this one process tree, and prints one table: min / median /
//! max per VMM, the ratio of the medians ours/floor (ours/QEMU for the Linux
//! boot, ACPI, virtio-blk and virtio-net rows, whose guest programs are
//! `resources/bench/blkbench.c` and `netbench.c`; modules `acpi` and `net`;
//! snapshot and restore in module `restore`) and the target. It exits 1 if a
//! measurement could not be taken (a build failed, a run failed or ended
//! with the wrong status), 0 otherwise, whether or not the targets are met.
//! `resources/bench/README.md` describes each metric.
// A benchmark driver: a poisoned lock or a failed thread join is a bug that
// should stop it loudly, so unwrap/expect are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod acpi;
mod net;
mod restore;

/// Exits of the fast loops (real mode and CPL0, ~8 us an exit on the test
/// host): the small and the large image.
const FAST_EXITS: (u64, u64) = (10_000, 100_000);
/// Exits of the ring-3 loops (~60 us an exit on the test host).
const USER_EXITS: (u64, u64) = (2_000, 20_000);
/// Default size of the serial guest's output, in KiB (see the README: the
/// issue's 1 MiB takes ~20 s a run here, `--serial-kib 1024` runs it).
const SERIAL_KIB: u64 = 128;
/// Guest RAM of the bench guests (MiB) and of the Linux boot.
const GUEST_MIB: u64 = 128;
const LINUX_MIB: u64 = 256;

/// Exit statuses of the bench guests: (value << 1) | 1 for the value each
/// writes to the debug-exit port (resources/bench/guests/exits.inc).
const STATUS_PIO: i32 = (0x11 << 1) | 1;
const STATUS_MMIO: i32 = (0x12 << 1) | 1;
const STATUS_SERIAL: i32 = (0x13 << 1) | 1;
const STATUS_MEMORY: i32 = (0x14 << 1) | 1;
const STATUS_HELLO: i32 = (0x15 << 1) | 1;
const HELLO_LINE: &str = "Hello from the bench guest\n";

/// Start-up and peak RSS runs take milliseconds and scatter most under load:
/// they get this many times the repetitions.
const CHEAP_FACTOR: usize = 3;

const QEMU: &str = "qemu-system-x86_64";

fn main() {
    // `cargo bench` passes --bench; without it this is `cargo test
    // --all-targets` building and running every target: don't take minutes.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("bench: not run (start it with `cargo bench -p vmm --bench vmm`)");
        return;
    }
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("bench: {message}");
            eprintln!(
                "usage: cargo bench -p vmm --bench vmm [-- [--quick] [--linux] [--reps N] \
                 [--linux-reps N] [--serial-kib N] [--only GROUP,...]]"
            );
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let code = match run(&options) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(message) => {
            eprintln!("bench: {message}");
            1
        }
    };
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    std::process::exit(code);
}

/// Command-line options (after `--`).
#[derive(Debug)]
struct Options {
    reps: usize,
    linux: bool,
    linux_reps: usize,
    serial_kib: u64,
    /// Metric groups to run (all when empty): those of [`GROUPS`].
    only: Vec<String>,
}

/// The metric groups `--only` can pick.
const GROUPS: [&str; 9] =
    ["exits", "startup", "rss", "serial", "linux", "acpi", "disk", "net", "restore"];

/// The groups that boot Linux (minutes each): run with `--linux` or when
/// `--only` names them.
const LINUX_GROUPS: [&str; 5] = ["linux", "acpi", "disk", "net", "restore"];

impl Options {
    /// Whether `group` runs (`linux` and `disk` only when asked for).
    fn runs(&self, group: &str) -> bool {
        let picked = self.only.is_empty() || self.only.iter().any(|g| g == group);
        picked && (!LINUX_GROUPS.contains(&group) || self.linux || !self.only.is_empty())
    }

    fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut options = Options {
            reps: 7,
            linux: false,
            linux_reps: 3,
            serial_kib: SERIAL_KIB,
            only: Vec::new(),
        };
        let mut args = args.peekable();
        let number = |value: Option<String>, name: &str| -> Result<u64, String> {
            value
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} takes a positive number"))
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                // cargo bench passes --bench to harness = false targets.
                "--bench" => {}
                "--quick" => {
                    options.reps = 3;
                    options.linux_reps = 2;
                }
                "--linux" => options.linux = true,
                "--reps" => options.reps = number(args.next(), "--reps")? as usize,
                "--linux-reps" => {
                    options.linux_reps = number(args.next(), "--linux-reps")? as usize
                }
                "--serial-kib" => options.serial_kib = number(args.next(), "--serial-kib")?,
                "--only" => {
                    let groups = args.next().ok_or("--only takes a list of metric groups")?;
                    for group in groups.split(',') {
                        if !GROUPS.contains(&group) {
                            return Err(format!("--only: '{group}' is not one of {GROUPS:?}"));
                        }
                        options.only.push(group.to_owned());
                    }
                }
                other => return Err(format!("unknown argument '{other}'")),
            }
        }
        Ok(options)
    }
}

// ---------------------------------------------------------------------------
// The VMMs and how each runs a guest
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vmm {
    Ours,
    Floor,
    Qemu,
}

const VMMS: [Vmm; 3] = [Vmm::Ours, Vmm::Floor, Vmm::Qemu];

impl Vmm {
    fn index(self) -> usize {
        self as usize
    }
}

/// Where the guest's serial console goes.
#[derive(Clone, Copy, Debug)]
enum Console<'a> {
    Stdout,
    File(&'a Path),
}

/// Paths and tools of this run.
#[derive(Debug)]
struct Bench {
    root: PathBuf,
    out: PathBuf,
    scratch: PathBuf,
    ours: PathBuf,
    floor: PathBuf,
    /// `Err(reason)` when QEMU cannot be used.
    qemu: Result<PathBuf, String>,
    /// QEMU's `-cpu` for Linux guests: `qemu64,+xsaveerptr` on an AMD host,
    /// QEMU's default model elsewhere (see [`qemu_linux_cpu`]).
    qemu_linux_cpu: Option<&'static str>,
}

impl Bench {
    /// The command that runs a bench guest `image` under `vmm`, or why that
    /// VMM cannot run it.
    fn guest_command(&self, vmm: Vmm, image: &Path, console: Console) -> Result<Command, String> {
        let elf = image.extension().is_some_and(|e| e == "elf");
        match vmm {
            Vmm::Ours => {
                let mut cmd = Command::new(&self.ours);
                cmd.arg("--kernel").arg(image).args(["--memory", &GUEST_MIB.to_string()]);
                if elf {
                    // The bench ELF guests carry a PVH note for QEMU; ours
                    // must enter them in long mode like the floor.
                    cmd.args(["--boot", "bare"]);
                }
                if let Console::File(path) = console {
                    cmd.arg(format!("--serial=file:{}", path.display()));
                }
                Ok(cmd)
            }
            Vmm::Floor => {
                let mut cmd = Command::new(&self.floor);
                cmd.arg("--kernel").arg(image).args(["--memory", &GUEST_MIB.to_string()]);
                if let Console::File(path) = console {
                    cmd.arg("--serial").arg(format!("file:{}", path.display()));
                }
                Ok(cmd)
            }
            Vmm::Qemu => {
                if !elf {
                    return Err("n/a (QEMU does not load raw images)".into());
                }
                let mut cmd = self.qemu_command(GUEST_MIB, console, "")?;
                cmd.arg("-kernel").arg(image);
                Ok(cmd)
            }
        }
    }

    /// QEMU microvm with `mib` of RAM, the console and the debug-exit port;
    /// `machine` adds properties to `-M microvm,accel=kvm` (or is empty).
    fn qemu_command(&self, mib: u64, console: Console, machine: &str) -> Result<Command, String> {
        let qemu = self.qemu.as_ref().map_err(Clone::clone)?;
        let mut cmd = Command::new(qemu);
        let machine = if machine.is_empty() {
            "microvm,accel=kvm".to_owned()
        } else {
            format!("microvm,accel=kvm,{machine}")
        };
        cmd.args(["-M", &machine, "-m", &mib.to_string()]);
        cmd.args(["-nodefaults", "-no-user-config", "-nographic", "-display", "none"]);
        cmd.args(["-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-serial"]);
        match console {
            Console::Stdout => cmd.arg("stdio"),
            Console::File(path) => cmd.arg(format!("file:{}", path.display())),
        };
        Ok(cmd)
    }

    /// QEMU microvm for a Linux guest: `qemu_command` with `machine`
    /// appended to `-M microvm,accel=kvm` and the CPU model this host needs.
    fn qemu_linux_command(&self, machine: &str) -> Result<Command, String> {
        let mut cmd = self.qemu_command(LINUX_MIB, Console::Stdout, machine)?;
        if let Some(cpu) = self.qemu_linux_cpu {
            cmd.args(["-cpu", cpu]);
        }
        Ok(cmd)
    }

    fn scratch_file(&self, name: &str) -> PathBuf {
        self.scratch.join(name)
    }
}

// ---------------------------------------------------------------------------
// Running one process
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Exited(i32),
    Signalled(i32),
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Exited(code) => write!(f, "exit status {code}"),
            Status::Signalled(signal) => write!(f, "killed by signal {signal}"),
        }
    }
}

fn decode_status(raw: libc::c_int) -> Status {
    if libc::WIFSIGNALED(raw) {
        Status::Signalled(libc::WTERMSIG(raw))
    } else {
        Status::Exited(libc::WEXITSTATUS(raw))
    }
}

/// What one run of a process gave.
#[derive(Debug)]
struct Outcome {
    status: Status,
    /// From just before spawning to the process's end (waitpid returned).
    to_exit: Duration,
    /// From just before spawning to the first byte on its stdout.
    to_first_byte: Option<Duration>,
    /// From just before spawning to each marker's first appearance on stdout.
    to_marker: Vec<Option<Duration>>,
    /// The same for the stderr markers.
    to_stderr_marker: Vec<Option<Duration>>,
    stdout: Vec<u8>,
    stderr_path: PathBuf,
    /// VmHWM (peak RSS) in KiB, read just before the process ended.
    peak_rss_kib: Option<u64>,
}

impl Outcome {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// An error unless the process exited with `expected`.
    fn expect_status(&self, expected: i32) -> Result<(), String> {
        if self.status == Status::Exited(expected) {
            return Ok(());
        }
        let stderr = self.stderr();
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!("{} (expected {expected}); stderr: {}", self.status, tail.join(" / ")))
    }
}

#[derive(Debug, Default)]
struct RunOptions<'a> {
    markers: &'a [&'a str],
    /// Markers timestamped on stderr as it arrives (stderr still goes to
    /// its file); none: stderr goes to the file directly.
    stderr_markers: &'a [&'a str],
    peak_rss: bool,
    limit: Option<Duration>,
    /// Sent the index of each marker as it first appears, while the
    /// process runs: stdout markers 0.., then stderr markers after them.
    notify: Option<mpsc::Sender<usize>>,
}

/// What a timed reader gave: every byte, when the first arrived, when each
/// marker first appeared.
type Timed = (Vec<u8>, Option<Duration>, Vec<Option<Duration>>);

/// Reads `stream` to its end, timestamping (from `start`) the first byte
/// and each marker's first appearance, telling `notify` the marker's index
/// plus `first_index`, and copying every byte to `copy` if given.
fn read_timed(
    mut stream: impl Read,
    markers: Vec<Vec<u8>>,
    start: Instant,
    notify: Option<mpsc::Sender<usize>>,
    first_index: usize,
    mut copy: Option<File>,
) -> Timed {
    let mut all = Vec::new();
    let mut first = None;
    let mut found: Vec<Option<Duration>> = vec![None; markers.len()];
    let mut buf = [0u8; 65536];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let now = start.elapsed();
        first.get_or_insert(now);
        let from = all.len();
        all.extend_from_slice(&buf[..n]);
        for (index, (marker, when)) in markers.iter().zip(found.iter_mut()).enumerate() {
            if when.is_none() {
                let window = &all[from.saturating_sub(marker.len())..];
                if window.windows(marker.len()).any(|w| w == marker.as_slice()) {
                    *when = Some(now);
                    if let Some(notify) = &notify {
                        let _ = notify.send(first_index + index);
                    }
                }
            }
        }
        if let Some(file) = copy.as_mut() {
            let _ = std::io::Write::write_all(file, &buf[..n]);
        }
    }
    (all, first, found)
}

/// Runs `cmd` with stdin empty, stdout read here (timestamping its first
/// byte and the markers), stderr to a file (read here first when it has
/// markers); kills it after the time limit.
fn execute(mut cmd: Command, stderr_path: &Path, options: &RunOptions) -> Result<Outcome, String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let stderr =
        File::create(stderr_path).map_err(|e| format!("{}: {e}", stderr_path.display()))?;
    let stderr_copy = if options.stderr_markers.is_empty() {
        cmd.stderr(stderr);
        None
    } else {
        cmd.stderr(Stdio::piped());
        Some(stderr)
    };
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    if options.peak_rss {
        // SAFETY: the closure runs in the forked child before exec and only
        // makes one system call (async-signal-safe), touching no memory of
        // the parent.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                let null = std::ptr::null_mut::<libc::c_void>();
                if libc::ptrace(libc::PTRACE_TRACEME, 0, null, null) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {program}: {e}"))?;
    let pid = child.id() as libc::pid_t;

    let stdout = child.stdout.take().expect("stdout is piped");
    let bytes = |markers: &[&str]| markers.iter().map(|m| m.as_bytes().to_vec()).collect();
    let (markers, notify) = (bytes(options.markers), options.notify.clone());
    let reader = std::thread::spawn(move || read_timed(stdout, markers, start, notify, 0, None));
    let stderr_reader = child.stderr.take().map(|stderr| {
        let (markers, notify) = (bytes(options.stderr_markers), options.notify.clone());
        let first_index = options.markers.len();
        std::thread::spawn(move || {
            read_timed(stderr, markers, start, notify, first_index, stderr_copy)
        })
    });

    let (cancel, cancelled) = mpsc::channel::<()>();
    let limit = options.limit.unwrap_or(Duration::from_secs(120));
    let watchdog = std::thread::spawn(move || {
        if cancelled.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: kill(2) on the child we spawned and have not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
        false
    });

    let waited =
        if options.peak_rss { wait_traced(pid) } else { wait_plain(pid).map(|s| (s, None)) };
    let to_exit = start.elapsed();
    let _ = cancel.send(());
    let timed_out = watchdog.join().unwrap();
    let (stdout, to_first_byte, to_marker) = reader.join().unwrap();
    let to_stderr_marker = match stderr_reader {
        Some(reader) => reader.join().unwrap().2,
        None => Vec::new(),
    };
    drop(child);
    let (status, peak_rss_kib) = waited?;
    if timed_out {
        return Err(format!("{program} did not finish within {} s", limit.as_secs()));
    }
    Ok(Outcome {
        status,
        to_exit,
        to_first_byte,
        to_marker,
        to_stderr_marker,
        stdout,
        stderr_path: stderr_path.to_path_buf(),
        peak_rss_kib,
    })
}

fn waitpid(pid: libc::pid_t) -> Result<libc::c_int, String> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid pointer to a c_int.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret == pid {
            return Ok(status);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("waitpid: {err}"));
        }
    }
}

fn wait_plain(pid: libc::pid_t) -> Result<Status, String> {
    waitpid(pid).map(decode_status)
}

/// Waits for a child that called PTRACE_TRACEME, reading its VmHWM when it
/// stops at its exit (PTRACE_EVENT_EXIT: the address space is still there).
/// A zombie has no VmHWM any more, and wait4's ru_maxrss would include the
/// address space of the forked harness before the exec.
fn wait_traced(pid: libc::pid_t) -> Result<(Status, Option<u64>), String> {
    let mut peak = None;
    let mut options_set = false;
    loop {
        let raw = waitpid(pid)?;
        if !libc::WIFSTOPPED(raw) {
            return Ok((decode_status(raw), peak));
        }
        let mut signal = libc::WSTOPSIG(raw);
        if !options_set && signal == libc::SIGTRAP {
            // The stop after exec.
            let opts = libc::c_long::from(libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_EXITKILL);
            // SAFETY: PTRACE_SETOPTIONS on our stopped tracee; the variadic
            // arguments are pointer-sized as the system call expects.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_SETOPTIONS,
                    pid,
                    std::ptr::null_mut::<libc::c_void>(),
                    opts,
                )
            };
            options_set = true;
            signal = 0;
        } else if raw >> 8 == libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8) {
            peak = read_vm_hwm(pid);
            signal = 0;
        }
        let null = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: resumes our stopped tracee, passing on its signal; the
        // variadic arguments are pointer-sized.
        unsafe { libc::ptrace(libc::PTRACE_CONT, pid, null, libc::c_long::from(signal)) };
    }
}

fn read_vm_hwm(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// Samples, cells and the table
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Cell {
    Samples(Vec<f64>),
    NotApplicable(String),
    Failed(String),
}

impl Cell {
    fn median(&self) -> Option<f64> {
        match self {
            Cell::Samples(v) if !v.is_empty() => Some(stats(v).1),
            _ => None,
        }
    }
}

/// Min, median, max.
fn stats(samples: &[f64]) -> (f64, f64, f64) {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    (v[0], median, v[n - 1])
}

#[derive(Clone, Copy, Debug)]
enum Target {
    /// ours <= factor x base.
    MaxTimes(f64),
    /// ours >= factor x base.
    MinTimes(f64),
    /// ours <= base + amount (in the metric's unit).
    MaxPlus(f64, &'static str),
    /// ours < base.
    Below,
    /// ours <= a fixed amount (in the metric's unit), whatever the base.
    AtMost(f64, &'static str),
    /// ours x factor <= a figure from another row (its median, named): "N
    /// times sooner than"; NaN when that row has none.
    SoonerThan(f64, &'static str, f64),
    /// No target: the row shows a figure (and the ratio, if there is a
    /// baseline).
    Info,
}

#[derive(Debug)]
struct Row {
    metric: String,
    unit: &'static str,
    decimals: usize,
    cells: [Cell; 3],
    /// The baseline the target compares against.
    base: Vmm,
    target: Target,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        if let Target::SoonerThan(_, _, other) = self.target {
            return Some(self.cells[0].median()? / other).filter(|r| r.is_finite());
        }
        Some(self.cells[0].median()? / self.cells[self.base.index()].median()?)
    }

    fn met(&self) -> Option<bool> {
        let ours = self.cells[0].median()?;
        match self.target {
            Target::AtMost(limit, _) => return Some(ours <= limit),
            Target::SoonerThan(factor, _, other) => {
                return other.is_finite().then_some(ours * factor <= other);
            }
            _ => {}
        }
        let base = self.cells[self.base.index()].median()?;
        Some(match self.target {
            Target::MaxTimes(f) => ours <= f * base,
            Target::MinTimes(f) => ours >= f * base,
            Target::MaxPlus(d, _) => ours <= base + d,
            Target::Below => ours < base,
            Target::Info | Target::AtMost(..) | Target::SoonerThan(..) => return None,
        })
    }

    fn target_text(&self) -> String {
        let base = if self.base == Vmm::Qemu { "QEMU" } else { "floor" };
        match self.target {
            Target::MaxTimes(f) => format!("<= {f:.2}x {base}"),
            Target::MinTimes(f) => format!(">= {f:.2}x {base}"),
            Target::MaxPlus(d, unit) => format!("<= {base} + {d} {unit}"),
            Target::Below => format!("< {base}"),
            Target::AtMost(limit, unit) => format!("<= {limit} {unit}"),
            Target::SoonerThan(factor, other, _) => format!(">= {factor}x sooner than {other}"),
            Target::Info => "-".into(),
        }
    }

    fn cell_text(&self, cell: &Cell) -> String {
        match cell {
            Cell::Samples(v) if !v.is_empty() => {
                let (min, med, max) = stats(v);
                let d = self.decimals;
                format!("{min:.d$} / {med:.d$} / {max:.d$}")
            }
            Cell::Samples(_) => "no samples".into(),
            Cell::NotApplicable(why) => why.clone(),
            Cell::Failed(_) => "FAILED".into(),
        }
    }
}

fn render_table(rows: &[Row], reps: usize, linux_reps: usize) -> String {
    let header = [
        "metric".to_owned(),
        "ours min / median / max".into(),
        "floor min / median / max".into(),
        "QEMU min / median / max".into(),
        "ours/base".into(),
        "target".into(),
        "met?".into(),
    ];
    let mut lines = vec![header.to_vec()];
    for row in rows {
        lines.push(vec![
            format!("{} ({})", row.metric, row.unit),
            row.cell_text(&row.cells[0]),
            row.cell_text(&row.cells[1]),
            row.cell_text(&row.cells[2]),
            row.ratio().map_or("-".into(), |r| format!("{r:.3}")),
            row.target_text(),
            row.met().map_or("-".into(), |m| if m { "yes".into() } else { "NO".into() }),
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let cells: Vec<String> =
            line.iter().zip(&widths).map(|(text, w)| format!("{text:<w$}")).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(out, "|-{}-|", rule.join("-|-"));
        }
    }
    let _ = writeln!(
        out,
        "\n{reps} repetitions after a warm-up run ({} for start-up and peak RSS, {linux_reps} for \
         the Linux boot and the virtio-blk rows); ours/base = median ours / median baseline \
         (floor; QEMU for the Linux boot and virtio-blk).",
        reps * CHEAP_FACTOR
    );
    let mut notes = Vec::new();
    for row in rows {
        for (vmm, cell) in VMMS.iter().zip(&row.cells) {
            if let Cell::Failed(why) = cell {
                notes.push(format!("FAILED: {} under {vmm:?}: {why}", row.metric));
            }
        }
    }
    for note in notes {
        let _ = writeln!(out, "{note}");
    }
    out
}

/// Runs `sample` for each VMM in `1 + reps` rounds (the first is a warm-up
/// that is not counted), rotating which VMM goes first each round. Each call
/// gives one value per metric (`count` of them). A VMM whose command cannot
/// be made is n/a; a VMM whose run fails is FAILED and not run again.
fn measure(
    label: &str,
    count: usize,
    reps: usize,
    vmms: &[Vmm],
    mut sample: impl FnMut(Vmm, usize) -> Result<Vec<f64>, Sample>,
) -> Vec<[Cell; 3]> {
    let mut cells: Vec<[Cell; 3]> = (0..count)
        .map(|_| {
            [
                Cell::NotApplicable("not run".into()),
                Cell::NotApplicable("not run".into()),
                Cell::NotApplicable("not run".into()),
            ]
        })
        .collect();
    for metric in cells.iter_mut() {
        for vmm in vmms {
            metric[vmm.index()] = Cell::Samples(Vec::new());
        }
    }
    eprint!("bench: {label} ");
    for round in 0..=reps {
        for offset in 0..vmms.len() {
            let vmm = vmms[(round + offset) % vmms.len()];
            if !matches!(cells[0][vmm.index()], Cell::Samples(_)) {
                continue;
            }
            match sample(vmm, round) {
                Ok(values) => {
                    assert_eq!(values.len(), count, "{label}: wrong number of values");
                    if round > 0 {
                        for (metric, value) in cells.iter_mut().zip(values) {
                            if let Cell::Samples(v) = &mut metric[vmm.index()] {
                                v.push(value);
                            }
                        }
                    }
                }
                Err(Sample::NotApplicable(why)) => {
                    for metric in cells.iter_mut() {
                        metric[vmm.index()] = Cell::NotApplicable(why.clone());
                    }
                }
                Err(Sample::Failed(why)) => {
                    eprint!("[{vmm:?} FAILED: {why}] ");
                    for metric in cells.iter_mut() {
                        metric[vmm.index()] = Cell::Failed(why.clone());
                    }
                }
            }
        }
        eprint!(".");
    }
    eprintln!();
    cells
}

/// Why a sample was not taken.
#[derive(Debug)]
enum Sample {
    NotApplicable(String),
    Failed(String),
}

impl From<String> for Sample {
    fn from(message: String) -> Self {
        Sample::Failed(message)
    }
}

impl From<&str> for Sample {
    fn from(message: &str) -> Self {
        Sample::Failed(message.into())
    }
}

// ---------------------------------------------------------------------------
// The metrics
// ---------------------------------------------------------------------------

/// Runs image under vmm once; `Sample::NotApplicable` if vmm cannot run it.
fn run_guest(
    bench: &Bench,
    vmm: Vmm,
    image: &Path,
    console: Console,
    options: &RunOptions,
) -> Result<Outcome, Sample> {
    let cmd = bench.guest_command(vmm, image, console).map_err(Sample::NotApplicable)?;
    let stderr = bench.scratch_file(&format!("{vmm:?}.stderr"));
    Ok(execute(cmd, &stderr, options)?)
}

/// ns per exit of a loop guest: (T_large - T_small) / (N_large - N_small),
/// which cancels start-up and tear-down.
fn exit_cost(
    bench: &Bench,
    vmm: Vmm,
    images: (&Path, &Path),
    exits: (u64, u64),
    status: i32,
) -> Result<Vec<f64>, Sample> {
    let options = RunOptions::default();
    let small = run_guest(bench, vmm, images.0, Console::Stdout, &options)?;
    small.expect_status(status)?;
    let large = run_guest(bench, vmm, images.1, Console::Stdout, &options)?;
    large.expect_status(status)?;
    let delta = large.to_exit.as_secs_f64() - small.to_exit.as_secs_f64();
    Ok(vec![delta * 1e9 / (exits.1 - exits.0) as f64])
}

fn exit_rows(bench: &Bench, options: &Options) -> Vec<Row> {
    let cases = [
        ("PIO exit, real mode", "pio_real", "bin", FAST_EXITS, STATUS_PIO),
        ("PIO exit, CPL0", "pio_cpl0", "elf", FAST_EXITS, STATUS_PIO),
        ("PIO exit, CPL3", "pio_cpl3", "elf", USER_EXITS, STATUS_PIO),
        ("MMIO exit, CPL0", "mmio_cpl0", "elf", FAST_EXITS, STATUS_MMIO),
        ("MMIO exit, CPL3", "mmio_cpl3", "elf", USER_EXITS, STATUS_MMIO),
    ];
    let mut rows = Vec::new();
    for (metric, name, ext, exits, status) in cases {
        let small = bench.out.join(format!("{name}_{}.{ext}", exits.0));
        let large = bench.out.join(format!("{name}_{}.{ext}", exits.1));
        let cells = measure(metric, 1, options.reps, &VMMS, |vmm, _| {
            exit_cost(bench, vmm, (&small, &large), exits, status)
        });
        let [cells] = <[[Cell; 3]; 1]>::try_from(cells).unwrap();
        rows.push(Row {
            metric: metric.into(),
            unit: "ns",
            decimals: 0,
            cells,
            base: Vmm::Floor,
            target: Target::MaxTimes(1.10),
        });
    }
    rows
}

fn startup_rows(bench: &Bench, options: &Options) -> Vec<Row> {
    let image = bench.out.join("hello.elf");
    let cells = measure("start-up", 2, options.reps * CHEAP_FACTOR, &VMMS, |vmm, _| {
        let run = run_guest(bench, vmm, &image, Console::Stdout, &RunOptions::default())?;
        run.expect_status(STATUS_HELLO)?;
        if run.stdout != HELLO_LINE.as_bytes() {
            return Err(Sample::Failed(format!(
                "unexpected output {:?}",
                String::from_utf8_lossy(&run.stdout)
            )));
        }
        let first = run.to_first_byte.ok_or("no output")?;
        Ok(vec![first.as_secs_f64() * 1e3, run.to_exit.as_secs_f64() * 1e3])
    });
    let [first, exit] = <[[Cell; 3]; 2]>::try_from(cells).unwrap();
    // Issue 6 asked for floor + 1 ms; issue 13 for floor + 0.5 ms to exit.
    let row = |metric: &str, cells, limit| Row {
        metric: metric.into(),
        unit: "ms",
        decimals: 2,
        cells,
        base: Vmm::Floor,
        target: Target::MaxPlus(limit, "ms"),
    };
    vec![
        row("start-up: exec to first serial byte", first, 1.0),
        row("start-up: exec to exit", exit, 0.5),
    ]
}

fn rss_rows(bench: &Bench, options: &Options) -> Vec<Row> {
    let image = bench.out.join("memory.elf");
    let run_options = RunOptions { peak_rss: true, ..Default::default() };
    let cells = measure("peak RSS", 1, options.reps * CHEAP_FACTOR, &VMMS, |vmm, _| {
        let run = run_guest(bench, vmm, &image, Console::Stdout, &run_options)?;
        run.expect_status(STATUS_MEMORY)?;
        let kib = run.peak_rss_kib.ok_or("VmHWM could not be read at exit")?;
        Ok(vec![kib as f64 / 1024.0])
    });
    let [cells] = <[[Cell; 3]; 1]>::try_from(cells).unwrap();
    vec![Row {
        metric: format!("peak RSS, {GUEST_MIB} MiB guest touching one page"),
        unit: "MiB",
        decimals: 2,
        cells,
        base: Vmm::Floor,
        target: Target::MaxPlus(2.0, "MiB"),
    }]
}

fn serial_rows(bench: &Bench, options: &Options) -> Vec<Row> {
    let bytes = options.serial_kib * 1024;
    let image = bench.out.join(format!("serial_{bytes}.elf"));
    let cells = measure("serial", 1, options.reps, &VMMS, |vmm, _| {
        let path = bench.scratch_file(&format!("serial-{vmm:?}.out"));
        let _ = std::fs::remove_file(&path);
        let run = run_guest(
            bench,
            vmm,
            &image,
            Console::File(&path),
            &RunOptions { limit: Some(Duration::from_secs(600)), ..Default::default() },
        )?;
        run.expect_status(STATUS_SERIAL)?;
        let written = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let line = b"abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk\n";
        if written.len() as u64 != bytes || !written.starts_with(line) {
            return Err(Sample::Failed(format!(
                "the output file has {} bytes, expected {bytes} in 64-byte lines",
                written.len()
            )));
        }
        let _ = std::fs::remove_file(&path);
        Ok(vec![bytes as f64 / (1024.0 * 1024.0) / run.to_exit.as_secs_f64()])
    });
    let [cells] = <[[Cell; 3]; 1]>::try_from(cells).unwrap();
    vec![Row {
        metric: format!("serial throughput, {} KiB to a file", options.serial_kib),
        unit: "MiB/s",
        decimals: 4,
        cells,
        base: Vmm::Floor,
        target: Target::MinTimes(0.9),
    }]
}

/// The test Linux: kernel images, initrd, command line.
#[derive(Debug)]
struct Linux {
    dir: PathBuf,
    cmdline: String,
}

fn build_linux(bench: &Bench) -> Result<Linux, String> {
    eprintln!("bench: building (or finding) the test Linux: bash resources/linux/build.sh");
    let output = Command::new("bash")
        .arg(bench.root.join("resources/linux/build.sh"))
        .current_dir(&bench.root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run resources/linux/build.sh: {e}"))?;
    if !output.status.success() {
        return Err(format!("resources/linux/build.sh failed ({})", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    for file in ["vmlinux", "bzImage", "initrd-tiny.cpio"] {
        if !dir.join(file).is_file() {
            return Err(format!("build.sh printed {}, which has no {file}", dir.display()));
        }
    }
    let cmdline = std::fs::read_to_string(bench.root.join("resources/linux/cmdline.txt"))
        .map_err(|e| format!("resources/linux/cmdline.txt: {e}"))?
        .trim()
        .to_owned();
    Ok(Linux { dir, cmdline })
}

const RUN_INIT: &str = "Run /init";
const INIT_MARKER: &str = "VMM-TEST-INIT";

/// Exit counts by reason seen in the instrumented (warm-up) boots.
#[derive(Debug, Default)]
struct ExitCounts {
    lines: Vec<String>,
}

fn linux_rows(
    bench: &Bench,
    options: &Options,
    linux: &Result<Linux, String>,
    counts: &mut ExitCounts,
) -> Vec<Row> {
    let linux = match linux {
        Ok(linux) => linux,
        Err(why) => {
            let failed = || {
                [
                    Cell::Failed(why.clone()),
                    Cell::NotApplicable("n/a".into()),
                    Cell::Failed(why.clone()),
                ]
            };
            return ["vmlinux (PVH)", "bzImage", "bzImage, ours --unpack-bzimage"]
                .iter()
                .flat_map(|k| {
                    [format!("Linux {k}: exec to {RUN_INIT}"), format!("Linux {k}: exec to init")]
                })
                .map(|metric| Row {
                    metric,
                    unit: "s",
                    decimals: 2,
                    cells: failed(),
                    base: Vmm::Qemu,
                    target: Target::MaxTimes(0.9),
                })
                .collect();
        }
    };
    let mut rows = Vec::new();
    // The last variant boots the same bzImage with its kernel unpacked on
    // the host (our --unpack-bzimage); QEMU boots it as it is.
    let variants: [(&str, &str, &[&str]); 3] = [
        ("vmlinux", "vmlinux (PVH)", &[]),
        ("bzImage", "bzImage", &[]),
        ("bzImage", "bzImage, ours --unpack-bzimage", &["--unpack-bzimage"]),
    ];
    for (kernel, label, our_args) in variants {
        let image = linux.dir.join(kernel);
        let initrd = linux.dir.join("initrd-tiny.cpio");
        let stats_path =
            bench.scratch_file(&format!("exit-stats-{kernel}-{}.json", our_args.len()));
        let mut stats_flag = true;
        let cells = measure(
            &format!("Linux {label}"),
            2,
            options.linux_reps,
            &[Vmm::Ours, Vmm::Qemu],
            |vmm, round| {
                // The warm-up round (0) is the instrumented one: our
                // --exit-stats, QEMU's kvm_run_exit trace.
                let instrumented = round == 0;
                let cmd = match vmm {
                    Vmm::Ours => {
                        let mut cmd = Command::new(&bench.ours);
                        cmd.arg("--kernel").arg(&image).arg("--initrd").arg(&initrd);
                        cmd.args(["--cmdline", &linux.cmdline, "--memory", &LINUX_MIB.to_string()]);
                        cmd.args(our_args);
                        if instrumented && stats_flag {
                            cmd.arg(format!("--exit-stats={}", stats_path.display()));
                        }
                        cmd
                    }
                    _ => {
                        let mut cmd =
                            bench.qemu_linux_command("").map_err(Sample::NotApplicable)?;
                        cmd.arg("-kernel").arg(&image).arg("-initrd").arg(&initrd);
                        cmd.args(["-append", &linux.cmdline]);
                        if instrumented {
                            cmd.args(["-trace", "kvm_run_exit"]);
                        }
                        cmd
                    }
                };
                let run_options = RunOptions {
                    markers: &[RUN_INIT, INIT_MARKER],
                    limit: Some(Duration::from_secs(300)),
                    ..Default::default()
                };
                let stderr = bench.scratch_file(&format!("linux-{vmm:?}.stderr"));
                let mut run = execute(cmd, &stderr, &run_options)?;
                if vmm == Vmm::Ours && instrumented && run.status == Status::Exited(2) {
                    let text = run.stderr();
                    if text.contains("exit-stats") || text.contains("unexpected argument") {
                        counts.lines.push(format!(
                            "ours, {label}: this vmm has no --exit-stats=PATH ({}); no exit counts",
                            text.lines().next().unwrap_or("").trim()
                        ));
                        stats_flag = false;
                        let mut cmd = Command::new(&bench.ours);
                        cmd.arg("--kernel").arg(&image).arg("--initrd").arg(&initrd);
                        cmd.args(["--cmdline", &linux.cmdline, "--memory", &LINUX_MIB.to_string()]);
                        run = execute(cmd, &stderr, &run_options)?;
                    }
                }
                run.expect_status(0)?;
                check_cmdline(&run.stdout, &linux.cmdline)?;
                let (Some(to_init), Some(to_marker)) = (run.to_marker[0], run.to_marker[1]) else {
                    let tail = String::from_utf8_lossy(&run.stdout);
                    let tail: Vec<&str> = tail.lines().rev().take(3).collect();
                    return Err(Sample::Failed(format!(
                        "the console never showed {RUN_INIT:?} and {INIT_MARKER:?}; last lines: {}",
                        tail.join(" / ")
                    )));
                };
                if instrumented {
                    let line = match vmm {
                        Vmm::Ours if stats_flag => match std::fs::read_to_string(&stats_path) {
                            Ok(json) => {
                                format!("ours, {label}: {}", format_counts(&ours_counts(&json)))
                            }
                            Err(e) => format!("ours, {label}: no exit statistics ({e})"),
                        },
                        Vmm::Ours => String::new(),
                        _ => {
                            format!("QEMU, {label}: {}", format_counts(&qemu_counts(&run.stderr())))
                        }
                    };
                    if !line.is_empty() {
                        counts.lines.push(line);
                    }
                }
                Ok(vec![to_init.as_secs_f64(), to_marker.as_secs_f64()])
            },
        );
        let [to_init, to_marker] = <[[Cell; 3]; 2]>::try_from(cells).unwrap();
        for (metric, mut cells) in [
            (format!("Linux {label}: exec to \"{RUN_INIT}\""), to_init),
            (format!("Linux {label}: exec to {INIT_MARKER}"), to_marker),
        ] {
            cells[1] = Cell::NotApplicable("n/a (boots no Linux)".into());
            rows.push(Row {
                metric,
                unit: "s",
                decimals: 2,
                cells,
                base: Vmm::Qemu,
                target: Target::MaxTimes(0.9),
            });
        }
    }
    rows
}

/// The kernel's `Command line:` (its first console line) without the
/// `virtio_mmio.device=` entries each VMM appends for its own devices.
fn kernel_cmdline(console: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(console);
    let at = text.find("Command line: ")?;
    let line = text[at + "Command line: ".len()..].lines().next()?;
    let words: Vec<&str> =
        line.split_whitespace().filter(|w| !w.starts_with("virtio_mmio.device=")).collect();
    Some(words.join(" "))
}

/// An error unless the guest kernel got `expected` (plus its devices).
fn check_cmdline(console: &[u8], expected: &str) -> Result<(), Sample> {
    let expected = expected.split_whitespace().collect::<Vec<_>>().join(" ");
    match kernel_cmdline(console) {
        Some(got) if got == expected => Ok(()),
        Some(got) => Err(Sample::Failed(format!(
            "the kernel got the command line {got:?}, not {expected:?}"
        ))),
        None => Err(Sample::Failed("the console never showed the kernel's command line".into())),
    }
}

// ---------------------------------------------------------------------------
// virtio-blk: the test Linux on its root disk runs blkbench on a second disk
// ---------------------------------------------------------------------------

/// The region blkbench reads sequentially (and then writes, right after
/// it), MiB.
const DISK_REGION_MIB: u64 = 16;
/// Size of each sequential O_DIRECT request, KiB.
const DISK_SEQ_KIB: u64 = 512;
/// Number of 4 KiB O_DIRECT reads at random offsets in the region.
const DISK_RAND_READS: u64 = 1000;
/// blkbench's phases, in its order; it prints `BLKBENCH-BEGIN <phase>` and
/// `BLKBENCH-END <phase>` around each.
const DISK_PHASES: [&str; 3] = ["seqread", "seqwrite", "randread"];
/// The data disk's blocks and their headers (resources/bench/blkbench.c).
const DISK_BLOCK: usize = 4096;
const READ_MAGIC: u64 = 0x4b4c_424e_4542_4c42;
const WRITE_MAGIC: u64 = 0x5752_424e_4542_4c42;
/// glibc tunables that keep blkbench (static glibc) off AVX: guest user
/// code sees the host's AVX in CPUID, but the kernel (noxsave) does not
/// save that state.
const GLIBC_NO_AVX: &str = "glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,\
                            -AVX512CD,-FMA,-FMA4,-AVX_VNNI,-AVX_Fast_Unaligned_Load";
/// The root disk's init prints this and /test.sh's status.
const TEST_STATUS: &str = "VMM-TEST-STATUS";

/// What blkbench does in a boot: the transfers, or only its console lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DiskMode {
    Full,
    Idle,
}

impl DiskMode {
    fn arg(self) -> &'static str {
        match self {
            DiskMode::Full => "all",
            DiskMode::Idle => "idle",
        }
    }
}

/// The images and command line of the virtio-blk rows.
#[derive(Debug)]
struct DiskSetup {
    kernel: PathBuf,
    /// The test command line plus `root=/dev/vda rw`.
    cmdline: String,
    /// rootfs.ext4 with /blkbench and a /test.sh that runs it (full, idle).
    roots: [PathBuf; 2],
    /// The data disk (/dev/vdb): two regions of 4 KiB blocks with headers.
    data: PathBuf,
}

/// What one boot gave.
#[derive(Debug)]
struct DiskRun {
    /// Seconds from each phase's BEGIN marker to its END marker on the
    /// console, as they arrived here.
    phase_secs: [f64; 3],
    /// Requests the guest's block layer completed on /dev/vdb in each phase.
    requests: [u64; 3],
    /// Exits by reason over the whole boot (instrumented boots only).
    exits: Option<Vec<(String, u64)>>,
}

/// Runs debugfs on `image`; its stdout.
fn debugfs(image: &Path, request: &str, write: bool) -> Result<Vec<u8>, String> {
    let mut cmd = Command::new("debugfs");
    if write {
        cmd.arg("-w");
    }
    let output = cmd
        .arg("-R")
        .arg(request)
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run debugfs (e2fsprogs): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "debugfs -R '{request}' {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(output.stdout)
}

/// Compiles `resources/bench/NAME.c` into a static guest program
/// `target/bench/NAME`; its bytes.
fn build_guest_program(bench: &Bench, name: &str) -> Result<(PathBuf, Vec<u8>), String> {
    let program = bench.out.join(name);
    let source = bench.root.join(format!("resources/bench/{name}.c"));
    let output = Command::new("gcc")
        .args(["-static", "-O2", "-s", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&program)
        .arg(&source)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run gcc: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "gcc -static {} failed: {}",
            source.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let bytes = std::fs::read(&program).map_err(|e| format!("{}: {e}", program.display()))?;
    Ok((program, bytes))
}

/// A copy of the test Linux's rootfs.ext4 in the scratch directory named
/// `image`, with `files` (host path, name in /, contents) put there as
/// executables with debugfs and read back.
fn root_image(
    bench: &Bench,
    linux: &Linux,
    image: &str,
    files: &[(&Path, &str, &[u8])],
) -> Result<PathBuf, String> {
    let rootfs = linux.dir.join("rootfs.ext4");
    if !rootfs.is_file() {
        return Err(format!("{} has no rootfs.ext4", linux.dir.display()));
    }
    let image = bench.scratch_file(image);
    std::fs::copy(&rootfs, &image).map_err(|e| format!("{}: {e}", image.display()))?;
    for (host, guest, _) in files {
        let host = host
            .to_str()
            .filter(|p| !p.contains(char::is_whitespace))
            .ok_or_else(|| format!("debugfs cannot take the path {} (spaces)", host.display()))?;
        debugfs(&image, &format!("write {host} {guest}"), true)?;
        debugfs(&image, &format!("sif {guest} mode 0100755"), true)?;
    }
    // debugfs reports most failures on stderr with status 0: read back.
    for (_, guest, want) in files {
        if debugfs(&image, &format!("cat {guest}"), false)? != *want {
            return Err(format!("debugfs did not put /{guest} into {}", image.display()));
        }
    }
    Ok(image)
}

/// Builds blkbench, makes the two root images (rootfs.ext4 with blkbench
/// and a /test.sh for each mode, put there with debugfs) and the data disk.
fn prepare_disk(bench: &Bench, linux: &Linux) -> Result<DiskSetup, String> {
    let (blkbench, program) = build_guest_program(bench, "blkbench")?;
    let mut roots = Vec::new();
    for mode in [DiskMode::Full, DiskMode::Idle] {
        // The kernel runs with noxsave (it saves only x87/SSE state), so
        // glibc is kept off its AVX string functions.
        let script = format!(
            "#!/bin/sh\n# vmm/benches/vmm/main.rs, the virtio-blk rows ({} boot)\n\
             export GLIBC_TUNABLES={GLIBC_NO_AVX}\n\
             exec /blkbench /dev/vdb {DISK_REGION_MIB} {DISK_SEQ_KIB} {DISK_RAND_READS} {}\n",
            mode.arg(),
            mode.arg()
        );
        let script_path = bench.scratch_file(&format!("disk-test-{}.sh", mode.arg()));
        std::fs::write(&script_path, &script)
            .map_err(|e| format!("{}: {e}", script_path.display()))?;
        let files: [(&Path, &str, &[u8]); 2] =
            [(&script_path, "test.sh", script.as_bytes()), (&blkbench, "blkbench", &program)];
        roots.push(root_image(bench, linux, &format!("disk-root-{}.ext4", mode.arg()), &files)?);
    }
    let data = bench.scratch_file("disk-data.img");
    std::fs::write(&data, data_disk()).map_err(|e| format!("{}: {e}", data.display()))?;
    Ok(DiskSetup {
        kernel: linux.dir.join("vmlinux"),
        cmdline: format!("{} root=/dev/vda rw", linux.cmdline),
        roots: roots.try_into().unwrap(),
        data,
    })
}

/// Two regions of 4 KiB blocks, each starting with READ_MAGIC and its index
/// (the rest a pattern, so that no block is all zeros).
fn data_disk() -> Vec<u8> {
    let len = ((2 * DISK_REGION_MIB) << 20) as usize;
    let mut bytes = vec![0u8; len];
    for (index, block) in bytes.chunks_exact_mut(DISK_BLOCK).enumerate() {
        block[..8].copy_from_slice(&READ_MAGIC.to_le_bytes());
        block[8..16].copy_from_slice(&(index as u64).to_le_bytes());
        for (at, byte) in block.iter_mut().enumerate().skip(16) {
            *byte = (index * 7 + at) as u8;
        }
    }
    bytes
}

/// An error unless every block of the second region holds blkbench's
/// WRITE_MAGIC and its index.
fn check_written(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 != (2 * DISK_REGION_MIB) << 20 {
        return Err(format!("the data disk is now {} bytes long", bytes.len()));
    }
    let first = ((DISK_REGION_MIB << 20) as usize) / DISK_BLOCK;
    for (index, block) in bytes.chunks_exact(DISK_BLOCK).enumerate().skip(first) {
        if block[..8] != WRITE_MAGIC.to_le_bytes() || block[8..16] != (index as u64).to_le_bytes() {
            return Err(format!("block {index} of the data disk is not what blkbench wrote"));
        }
    }
    Ok(())
}

/// Boots the test Linux from a fresh copy of the root image for `mode`
/// with a fresh copy of the data disk under `vmm`, and reads blkbench's
/// phases off the console. Instrumented: ours with --exit-stats, QEMU with
/// the kvm_run_exit trace.
fn disk_boot(
    bench: &Bench,
    setup: &DiskSetup,
    vmm: Vmm,
    mode: DiskMode,
    instrumented: bool,
) -> Result<DiskRun, Sample> {
    let root = bench.scratch_file(&format!("disk-root-{vmm:?}.ext4"));
    let data = bench.scratch_file(&format!("disk-data-{vmm:?}.img"));
    let master = &setup.roots[if mode == DiskMode::Full { 0 } else { 1 }];
    for (from, to) in [(master, &root), (&setup.data, &data)] {
        std::fs::copy(from, to).map_err(|e| format!("{}: {e}", to.display()))?;
    }
    let stats_path = bench.scratch_file(&format!("disk-exit-stats-{}.json", mode.arg()));
    let _ = std::fs::remove_file(&stats_path);
    let command = |stats: bool| -> Result<Command, Sample> {
        if vmm == Vmm::Ours {
            let mut cmd = Command::new(&bench.ours);
            cmd.arg("--kernel").arg(&setup.kernel).args(["--memory", &LINUX_MIB.to_string()]);
            for disk in [&root, &data] {
                cmd.arg("--disk").arg(format!("path={}", disk.display()));
            }
            cmd.args(["--cmdline", &setup.cmdline]);
            if stats {
                cmd.arg(format!("--exit-stats={}", stats_path.display()));
            }
            return Ok(cmd);
        }
        // acpi=off: with ACPI, QEMU 7.2 describes its virtio-mmio devices
        // only in the DSDT, which this kernel (no ACPI) never reads; without
        // it QEMU appends their virtio_mmio.device= entries to the command
        // line, as ours does.
        let mut cmd = bench.qemu_linux_command("acpi=off").map_err(Sample::NotApplicable)?;
        cmd.arg("-kernel").arg(&setup.kernel).args(["-append", &setup.cmdline]);
        for (id, disk) in [("d0", &root), ("d1", &data)] {
            cmd.args(["-device", &format!("virtio-blk-device,drive={id}")]);
            cmd.args(["-drive", &format!("id={id},file={},format=raw,if=none", disk.display())]);
        }
        if stats {
            cmd.args(["-trace", "kvm_run_exit"]);
        }
        Ok(cmd)
    };
    let markers: Vec<String> = DISK_PHASES
        .iter()
        .flat_map(|p| [format!("BLKBENCH-BEGIN {p}"), format!("BLKBENCH-END {p}")])
        .collect();
    let markers: Vec<&str> = markers.iter().map(String::as_str).collect();
    let run_options = RunOptions {
        markers: &markers,
        limit: Some(Duration::from_secs(600)),
        ..Default::default()
    };
    let stderr = bench.scratch_file(&format!("disk-{vmm:?}.stderr"));
    let mut run = execute(command(instrumented)?, &stderr, &run_options)?;
    let mut counted = instrumented;
    if vmm == Vmm::Ours && instrumented && run.status == Status::Exited(2) {
        let text = run.stderr();
        if text.contains("exit-stats") || text.contains("unexpected argument") {
            // This vmm has no --exit-stats=PATH: it stopped at its command
            // line, before the guest touched the images.
            counted = false;
            run = execute(command(false)?, &stderr, &run_options)?;
        }
    }
    run.expect_status(0)?;
    check_cmdline(&run.stdout, &setup.cmdline)?;
    let console = String::from_utf8_lossy(&run.stdout).into_owned();
    let last_lines = || {
        let tail: Vec<&str> = console.lines().rev().take(3).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
    };
    if let Some(line) = console.lines().find(|l| l.contains("BLKBENCH-ERROR")) {
        return Err(Sample::Failed(format!("blkbench: {}", line.trim())));
    }
    let status = console
        .lines()
        .find_map(|l| l.find(TEST_STATUS).map(|at| l[at + TEST_STATUS.len()..].trim().to_owned()));
    if status.as_deref() != Some("0") {
        return Err(Sample::Failed(format!(
            "/test.sh status {status:?} (want 0); last lines: {}",
            last_lines()
        )));
    }
    let mut phase_secs = [0.0; 3];
    let mut requests = [0; 3];
    for (i, phase) in DISK_PHASES.iter().enumerate() {
        let (Some(begin), Some(end)) = (run.to_marker[2 * i], run.to_marker[2 * i + 1]) else {
            return Err(Sample::Failed(format!(
                "the console never showed blkbench's {phase} markers; last lines: {}",
                last_lines()
            )));
        };
        phase_secs[i] = end.saturating_sub(begin).as_secs_f64();
        if phase_secs[i] <= 0.0 {
            return Err(Sample::Failed(format!("the {phase} markers arrived together")));
        }
        let stat = format!("BLKBENCH-STAT {phase} ios");
        requests[i] = console
            .lines()
            .find_map(|l| l.find(&stat).map(|at| &l[at + stat.len()..]))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("blkbench printed no request count for {phase}"))?;
    }
    if mode == DiskMode::Full {
        check_written(&data)?;
    }
    let exits = match (counted, vmm) {
        (false, _) => None,
        (true, Vmm::Ours) => Some(ours_counts(
            &std::fs::read_to_string(&stats_path)
                .map_err(|e| format!("{}: {e}", stats_path.display()))?,
        )),
        (true, _) => Some(qemu_counts(&run.stderr())),
    };
    Ok(DiskRun { phase_secs, requests, exits })
}

/// The throughput rows' values of one boot: MiB/s, MiB/s, IOPS.
fn disk_values(run: &DiskRun) -> Vec<f64> {
    let mib = DISK_REGION_MIB as f64;
    vec![
        mib / run.phase_secs[0],
        mib / run.phase_secs[1],
        DISK_RAND_READS as f64 / run.phase_secs[2],
    ]
}

/// Exits per /dev/vdb request: the instrumented boot with the transfers
/// minus the idle one (same boot, same console lines, no transfers), by
/// reason, divided by the requests the guest completed in between. `None`
/// without exit counts.
fn exits_per_request(idle: &DiskRun, full: &DiskRun) -> Option<(f64, String)> {
    let (idle_exits, full_exits) = (idle.exits.as_ref()?, full.exits.as_ref()?);
    let requests = full.requests.iter().sum::<u64>().saturating_sub(idle.requests.iter().sum());
    if requests == 0 {
        return None;
    }
    let count = |counts: &[(String, u64)], key: &str| {
        counts.iter().find(|(k, _)| k == key).map_or(0, |(_, n)| *n) as f64
    };
    let mut keys: Vec<&str> = full_exits.iter().map(|(k, _)| k.as_str()).collect();
    for (key, _) in idle_exits {
        if !keys.contains(&key.as_str()) {
            keys.push(key);
        }
    }
    let mut parts = Vec::new();
    let mut total = 0.0;
    for key in keys {
        let delta = count(full_exits, key) - count(idle_exits, key);
        total += delta;
        if delta != 0.0 {
            parts.push(format!("{key} {:.3} ({delta:+})", delta / requests as f64));
        }
    }
    let sum = |counts: &[(String, u64)]| counts.iter().map(|(_, n)| n).sum::<u64>();
    let text = format!(
        "{:.3} per request: {} ({requests} requests; {} exits in the boot with the transfers, {} \
         in the idle boot)",
        total / requests as f64,
        parts.join(", "),
        sum(full_exits),
        sum(idle_exits)
    );
    Some((total / requests as f64, text))
}

fn disk_rows(
    bench: &Bench,
    options: &Options,
    linux: &Result<Linux, String>,
    notes: &mut Vec<String>,
) -> Vec<Row> {
    let region = format!("{DISK_REGION_MIB} MiB O_DIRECT in {DISK_SEQ_KIB} KiB requests");
    let metrics = [
        (format!("virtio-blk sequential read, {region}"), "MiB/s", 2),
        (format!("virtio-blk sequential write, {region}"), "MiB/s", 2),
        (format!("virtio-blk random read, {DISK_RAND_READS} x 4 KiB O_DIRECT"), "IOPS", 1),
        ("virtio-blk exits to userspace".to_owned(), "per request", 2),
    ];
    let row = |(metric, unit, decimals): &(String, &'static str, usize), mut cells: [Cell; 3]| {
        cells[1] = Cell::NotApplicable("n/a (boots no Linux)".into());
        let target = if *unit == "per request" { Target::Below } else { Target::MinTimes(1.0) };
        Row { metric: metric.clone(), unit, decimals: *decimals, cells, base: Vmm::Qemu, target }
    };
    let setup = match linux.as_ref().map_err(Clone::clone).and_then(|l| prepare_disk(bench, l)) {
        Ok(setup) => setup,
        Err(why) => {
            eprintln!("bench: virtio-blk: {why}");
            let failed = [Cell::Failed(why.clone()), Cell::Failed(why.clone()), Cell::Failed(why)];
            return metrics.iter().map(|m| row(m, failed.clone())).collect();
        }
    };
    // The warm-up round boots each VMM twice, both instrumented: idle
    // (blkbench prints its lines but transfers nothing), then full.
    let mut instrumented: [Option<(DiskRun, DiskRun)>; 3] = [None, None, None];
    let vmms = [Vmm::Ours, Vmm::Qemu];
    let cells = measure("virtio-blk", 3, options.linux_reps, &vmms, |vmm, round| {
        if round > 0 {
            return Ok(disk_values(&disk_boot(bench, &setup, vmm, DiskMode::Full, false)?));
        }
        let idle = disk_boot(bench, &setup, vmm, DiskMode::Idle, true)?;
        let full = disk_boot(bench, &setup, vmm, DiskMode::Full, true)?;
        let values = disk_values(&full);
        instrumented[vmm.index()] = Some((idle, full));
        Ok(values)
    });
    let mut exit_cells = [
        Cell::NotApplicable("not run".into()),
        Cell::NotApplicable("n/a".into()),
        Cell::NotApplicable("not run".into()),
    ];
    for vmm in vmms {
        let who = if vmm == Vmm::Ours { "ours" } else { "QEMU" };
        exit_cells[vmm.index()] = match &instrumented[vmm.index()] {
            Some((idle, full)) => {
                notes.push(format!(
                    "{who}: guest requests per phase ({}): {}",
                    DISK_PHASES.join(", "),
                    full.requests.map(|n| n.to_string()).join(", ")
                ));
                match exits_per_request(idle, full) {
                    Some((per_request, text)) => {
                        notes.push(format!("{who}: {text}"));
                        Cell::Samples(vec![per_request])
                    }
                    None => Cell::NotApplicable("n/a (no exit counts)".into()),
                }
            }
            // Not run, n/a or failed: as the throughput rows.
            None => cells[0][vmm.index()].clone(),
        };
    }
    let mut rows: Vec<Row> = metrics.iter().zip(cells).map(|(m, cells)| row(m, cells)).collect();
    rows.push(row(&metrics[3], exit_cells));
    rows
}

/// Sums the per-vCPU `"exits": {...}` objects of our --exit-stats JSON.
fn ours_counts(json: &str) -> Vec<(String, u64)> {
    let mut totals: Vec<(String, u64)> = Vec::new();
    let mut rest = json;
    while let Some(at) = rest.find("\"exits\"") {
        rest = &rest[at + "\"exits\"".len()..];
        let Some(open) = rest.find('{') else { break };
        let Some(close) = rest[open..].find('}') else { break };
        for pair in rest[open + 1..open + close].split(',') {
            let mut parts = pair.splitn(2, ':');
            let key = parts.next().unwrap_or("").trim().trim_matches('"');
            let value = parts.next().and_then(|v| v.trim().parse::<u64>().ok());
            if let (false, Some(value)) = (key.is_empty(), value) {
                add_count(&mut totals, key, value);
            }
        }
        rest = &rest[open + close..];
    }
    totals
}

/// Counts QEMU's `kvm_run_exit cpu_index N, reason R` trace lines by reason.
fn qemu_counts(trace: &str) -> Vec<(String, u64)> {
    let mut totals = Vec::new();
    for line in trace.lines().filter(|l| l.contains("kvm_run_exit")) {
        let Some(reason) = line.rsplit("reason ").next().and_then(|r| r.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let name = match reason {
            2 => "io".to_owned(),
            5 => "hlt".into(),
            6 => "mmio".into(),
            7 => "irq_window_open".into(),
            8 => "shutdown".into(),
            9 => "fail_entry".into(),
            10 => "intr".into(),
            17 => "internal_error".into(),
            24 => "system_event".into(),
            other => format!("reason_{other}"),
        };
        add_count(&mut totals, &name, 1);
    }
    totals
}

fn add_count(totals: &mut Vec<(String, u64)>, key: &str, value: u64) {
    match totals.iter_mut().find(|(k, _)| k == key) {
        Some((_, total)) => *total += value,
        None => totals.push((key.to_owned(), value)),
    }
}

fn format_counts(counts: &[(String, u64)]) -> String {
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let parts: Vec<String> =
        counts.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k} {n}")).collect();
    format!("{total} exits: {}", parts.join(", "))
}

// ---------------------------------------------------------------------------
// Set-up: building, finding QEMU
// ---------------------------------------------------------------------------

fn build(bench: &Bench, options: &Options) -> Result<(), String> {
    let mut targets = vec!["floor".to_owned(), "hello.elf".into(), "memory.elf".into()];
    for (name, ext, exits) in [
        ("pio_real", "bin", FAST_EXITS),
        ("pio_cpl0", "elf", FAST_EXITS),
        ("mmio_cpl0", "elf", FAST_EXITS),
        ("pio_cpl3", "elf", USER_EXITS),
        ("mmio_cpl3", "elf", USER_EXITS),
    ] {
        targets.push(format!("{name}_{}.{ext}", exits.0));
        targets.push(format!("{name}_{}.{ext}", exits.1));
    }
    targets.push(format!("serial_{}.elf", options.serial_kib * 1024));
    let output = Command::new("make")
        .arg("-C")
        .arg(bench.root.join("resources/bench"))
        .arg(format!("OUT={}", bench.out.display()))
        .args(targets.iter().map(|t| bench.out.join(t)))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run make (is it installed?): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the floor and the bench guests failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

fn qemu_works() -> Result<PathBuf, String> {
    match Command::new(QEMU).arg("--version").stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(PathBuf::from(QEMU)),
        Ok(out) => Err(format!("n/a ({QEMU} --version failed: {})", out.status)),
        Err(_) => Err(format!("n/a ({QEMU} not installed)")),
    }
}

/// QEMU's `-cpu` for Linux guests on this host. On AMD, QEMU's default
/// model lacks XSAVEERPTR (CPUID 0x80000008 EBX bit 2): Linux then sets
/// X86_BUG_FXSAVE_LEAK and its FPU restore runs `fnclex` at CPL0, which the
/// development host (nested PVM KVM, AMD EPYC) cannot emulate, and the first
/// user process dies; `-cpu host` and `max` abort there (QEMU 7.2 cannot set
/// MSR 0x10a). `qemu64,+xsaveerptr` boots (/work/shared/guest-notes.md).
/// Ours passes the host's CPUID through (Zen has XSAVEERPTR).
fn qemu_linux_cpu() -> Option<&'static str> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let amd = cpuinfo.lines().any(|line| {
        (line.starts_with("vendor_id") && line.contains("AuthenticAMD"))
            || (line.starts_with("model name") && line.contains("AMD"))
    });
    amd.then_some("qemu64,+xsaveerptr")
}

/// QEMU if it is installed; as root, installs Debian's qemu-system-x86 first.
fn find_qemu() -> Result<PathBuf, String> {
    if let Ok(path) = qemu_works() {
        return Ok(path);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "bench: {QEMU} is not installed and this is not root: its columns are n/a \
             (apt-get install qemu-system-x86 to add them)"
        );
        return qemu_works();
    }
    eprintln!("bench: installing qemu-system-x86 (apt-get) for the QEMU columns");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "qemu-system-x86"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").args(["update", "-q"]).stdout(Stdio::null()).status();
        install();
    }
    qemu_works()
}

fn run(options: &Options) -> Result<bool, String> {
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_vmm"));
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or("no workspace root")?.to_owned();
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().ok_or("no target dir")?.to_owned();
    let out = target.join("bench");
    let scratch = out.join("scratch");
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm is not usable here ({e}): nothing can be measured"))?;
    let bench = Bench {
        floor: out.join("floor"),
        root,
        out,
        scratch,
        ours,
        qemu: find_qemu(),
        qemu_linux_cpu: qemu_linux_cpu(),
    };
    build(&bench, options)?;
    eprintln!(
        "bench: ours = {}, floor = {}, QEMU = {}{}",
        bench.ours.display(),
        bench.floor.display(),
        match &bench.qemu {
            Ok(path) => path.display().to_string(),
            Err(why) => why.clone(),
        },
        match bench.qemu_linux_cpu {
            Some(cpu) => format!(" (Linux guests: -cpu {cpu}, an AMD host)"),
            None => String::new(),
        }
    );

    let mut rows = Vec::new();
    if options.runs("exits") {
        rows.extend(exit_rows(&bench, options));
    }
    if options.runs("startup") {
        rows.extend(startup_rows(&bench, options));
    }
    if options.runs("rss") {
        rows.extend(rss_rows(&bench, options));
    }
    if options.runs("serial") {
        rows.extend(serial_rows(&bench, options));
    }
    let mut counts = ExitCounts::default();
    let mut disk_notes = Vec::new();
    let mut acpi_notes = Vec::new();
    let mut net_notes = Vec::new();
    let mut restore_notes = Vec::new();
    if LINUX_GROUPS.iter().any(|group| options.runs(group)) {
        // Once for all groups: the recipe may change while this runs.
        let linux = build_linux(&bench);
        if options.runs("linux") {
            rows.extend(linux_rows(&bench, options, &linux, &mut counts));
        }
        if options.runs("acpi") {
            rows.extend(acpi::rows(&bench, options, &linux, &mut acpi_notes));
        }
        if options.runs("disk") {
            rows.extend(disk_rows(&bench, options, &linux, &mut disk_notes));
        }
        if options.runs("net") {
            rows.extend(net::rows(&bench, options, &linux, &mut net_notes));
        }
        if options.runs("restore") {
            rows.extend(restore::rows(&bench, options, &linux, &mut restore_notes));
        }
    }

    println!();
    print!("{}", render_table(&rows, options.reps, options.linux_reps));
    if !counts.lines.is_empty() {
        println!("\nExits by reason during one Linux boot (the warm-up run):");
        for line in &counts.lines {
            println!("  {line}");
        }
    }
    if !disk_notes.is_empty() {
        println!(
            "\nvirtio-blk requests and exits to userspace per request (the instrumented boots: the \
             one with the transfers minus the idle one):"
        );
        for line in &disk_notes {
            println!("  {line}");
        }
    }
    for (title, lines) in [
        ("The ACPI kernel", &acpi_notes),
        ("virtio-net and virtio-vsock", &net_notes),
        ("Snapshot and restore of the busybox guest", &restore_notes),
    ] {
        if !lines.is_empty() {
            println!("\n{title}:");
            for line in lines {
                println!("  {line}");
            }
        }
    }
    let failed = rows.iter().any(|row| row.cells.iter().any(|c| matches!(c, Cell::Failed(_))));
    Ok(!failed)
}
