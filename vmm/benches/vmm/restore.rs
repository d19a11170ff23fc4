//! The snapshot and restore rows (project issue 13): the test Linux boots
//! from a copy of its root disk (256 MiB) into a /test.sh that prints a
//! counter line continuously. Cold boots are timed to the root's ready
//! marker and to the first counter line; the warm-up boot is paused and
//! snapshotted through the API socket (the request timed, the snapshot's
//! files measured on disk); then each round restores that snapshot with
//! `--restore source_url=file:///DIR,resume=on` twice: once timed to the
//! restored guest's first KVM_RUN (the VMM's info line on stderr) and to
//! its first console output, once under ptrace for its peak RSS after it
//! ran for a second. Every run ends with `vmm.shutdown` (status 0).
//!
//! The API client is a hand-written HTTP/1.1 request over a Unix stream.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{
    Bench, CHEAP_FACTOR, Cell, LINUX_MIB, Linux, Options, Row, RunOptions, Sample, Target, Vmm,
    execute, measure, root_image,
};

/// The guest's counter line (`VMM-TICK n`).
const TICK: &str = "VMM-TICK ";
/// The root disk's init prints this before it runs /test.sh.
const READY: &str = "VMM-ROOTFS-READY";
/// Our VMM's info line just before vCPU 0 enters its KVM_RUN loop.
const FIRST_RUN: &str = "vCPU 0: first KVM_RUN";
/// RUST_LOG for our runs: the default level, and that one line.
const LOG_FILTER: &str = "warn,vmm_dispatch=info";
const BOOT_LIMIT: Duration = Duration::from_secs(300);
const RESTORE_LIMIT: Duration = Duration::from_secs(60);
/// How long the snapshot's guest ticks before the pause, and how long a
/// restored guest runs before its peak RSS is taken.
const RUN_FOR: Duration = Duration::from_secs(1);
/// How long a timed restore runs on after its first tick's marker.
const LINE_END: Duration = Duration::from_millis(100);

const SCRIPT: &str = "#!/bin/sh\n# vmm/benches/vmm/restore.rs: a counter line, continuously\n\
                      i=0\nwhile :; do echo \"VMM-TICK $i\"; i=$((i+1)); done\n";

/// The snapshot taken in the warm-up boot.
#[derive(Debug)]
struct Snapshot {
    dir: PathBuf,
    /// The root disk the snapshot names, and a copy of it as it was then
    /// (put back before each restore: every restore starts from the same
    /// disk).
    disk: PathBuf,
    pristine: PathBuf,
    /// The vm.snapshot request, from connecting to its answer.
    took: Duration,
    /// The last complete counter line before the pause.
    last_tick: u64,
}

/// A snapshot taken, or why not.
type Taken = Result<Snapshot, String>;

/// One API request over a new connection, `Connection: close`; the status.
fn request(socket: &Path, method: &str, path: &str, body: &str) -> Result<u16, String> {
    let what = format!("{method} {path}");
    let mut stream =
        UnixStream::connect(socket).map_err(|e| format!("{what}: {}: {e}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).map_err(|e| format!("{what}: {e}"))?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| format!("{what}: no answer: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{what}: not an HTTP answer: {answer:?}"))
}

/// A request that must answer 204 No Content.
fn put(socket: &Path, path: &str, body: &str) -> Result<(), String> {
    match request(socket, "PUT", path, body)? {
        204 => Ok(()),
        status => Err(format!("PUT {path} answered {status}")),
    }
}

/// Runs `steps` on a thread once marker `index` (of the run's `notify`
/// numbering) appeared, within `limit`; if they fail, it asks the VMM to
/// shut down. The sender goes into the run's RunOptions.
fn after_marker<T: Send + 'static>(
    index: usize,
    limit: Duration,
    socket: PathBuf,
    steps: impl FnOnce(&Path) -> Result<T, String> + Send + 'static,
) -> (mpsc::Sender<usize>, JoinHandle<Result<T, String>>) {
    let (notify, seen) = mpsc::channel();
    let driver = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        loop {
            match seen.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(i) if i == index => break,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("no {TICK:?} line within {} s", limit.as_secs()));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("the VMM ended before a {TICK:?} line"));
                }
            }
        }
        let result = steps(&socket);
        if result.is_err() {
            let _ = put(&socket, "/api/v1/vmm.shutdown", "");
        }
        result
    });
    (notify, driver)
}

/// The counter values of the complete `VMM-TICK n` lines of `console`.
fn ticks(console: &[u8]) -> Vec<u64> {
    let text = String::from_utf8_lossy(console);
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .split('\n')
        .filter_map(|line| line.trim_end_matches('\r').strip_prefix(TICK)?.parse().ok())
        .collect()
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))
}

/// The test Linux from `disk` with an API socket (our VMM, logging its
/// first KVM_RUN).
fn boot_command(bench: &Bench, linux: &Linux, disk: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(&bench.ours);
    cmd.arg("--kernel").arg(linux.dir.join("vmlinux"));
    cmd.args(["--memory", &LINUX_MIB.to_string()]);
    cmd.arg("--disk").arg(format!("path={}", disk.display()));
    cmd.args(["--cmdline", &format!("{} root=/dev/vda rw", linux.cmdline)]);
    cmd.arg("--api-socket").arg(socket).env("RUST_LOG", LOG_FILTER);
    cmd
}

fn restore_command(bench: &Bench, snapshot: &Snapshot, socket: &Path) -> Command {
    let mut cmd = Command::new(&bench.ours);
    cmd.arg("--restore").arg(format!("source_url=file://{},resume=on", snapshot.dir.display()));
    cmd.arg("--api-socket").arg(socket).env("RUST_LOG", LOG_FILTER);
    cmd
}

/// One cold boot to the first counter line; in the warm-up round (with
/// `snapshot_into`) the guest then ticks for a while, is paused and
/// snapshotted. Seconds to first KVM_RUN, READY and the first tick, and
/// the snapshot if one was asked for (its own result: a failed snapshot
/// leaves the boot's figures).
fn cold_boot(
    bench: &Bench,
    linux: &Linux,
    master: &Path,
    snapshot_into: Option<&Path>,
) -> Result<(Vec<f64>, Option<Taken>), Sample> {
    let name = if snapshot_into.is_some() { "snapshot" } else { "cold" };
    let disk = bench.scratch_file(&format!("restore-root-{name}.ext4"));
    copy(master, &disk)?;
    let socket = bench.scratch_file(&format!("restore-{name}.sock"));
    let _ = std::fs::remove_file(&socket);
    let dir = snapshot_into.map(Path::to_path_buf);
    let (notify, driver) = after_marker(1, BOOT_LIMIT, socket.clone(), move |socket| {
        let Some(dir) = dir else {
            put(socket, "/api/v1/vmm.shutdown", "")?;
            return Ok(None);
        };
        std::thread::sleep(RUN_FOR);
        put(socket, "/api/v1/vm.pause", "")?;
        let body = format!(r#"{{"destination_url": "file://{}"}}"#, dir.display());
        let started = Instant::now();
        put(socket, "/api/v1/vm.snapshot", &body)?;
        let took = started.elapsed();
        put(socket, "/api/v1/vmm.shutdown", "")?;
        Ok(Some(took))
    });
    let stderr = bench.scratch_file(&format!("restore-{name}.stderr"));
    let run = execute(
        boot_command(bench, linux, &disk, &socket),
        &stderr,
        &RunOptions {
            markers: &[READY, TICK],
            stderr_markers: &[FIRST_RUN],
            limit: Some(BOOT_LIMIT),
            notify: Some(notify),
            ..Default::default()
        },
    )?;
    let driven = driver.join().unwrap();
    run.expect_status(0)?;
    let (Some(first_run), Some(ready), Some(tick)) =
        (run.to_stderr_marker[0], run.to_marker[0], run.to_marker[1])
    else {
        let console = String::from_utf8_lossy(&run.stdout);
        let tail: Vec<&str> = console.lines().rev().take(3).collect();
        return Err(Sample::Failed(format!(
            "no {FIRST_RUN:?} on stderr, {READY:?} or {TICK:?} on the console; last lines: {}",
            tail.join(" / ")
        )));
    };
    let figures = vec![first_run.as_secs_f64() * 1e3, ready.as_secs_f64(), tick.as_secs_f64()];
    let snapshot = match (snapshot_into, driven) {
        (None, Err(why)) => return Err(Sample::Failed(why)),
        (None, Ok(_)) => None,
        (Some(_), Err(why)) => Some(Err(why)),
        (Some(dir), Ok(took)) => Some((|| {
            let last_tick = *ticks(&run.stdout).last().ok_or("no complete tick line")?;
            let pristine = bench.scratch_file("restore-root-pristine.ext4");
            copy(&disk, &pristine)?;
            Ok(Snapshot {
                dir: dir.to_path_buf(),
                disk: disk.clone(),
                pristine,
                took: took.ok_or("no snapshot taken")?,
                last_tick,
            })
        })()),
    };
    Ok((figures, snapshot))
}

/// One restore of `snapshot`, ended with vmm.shutdown after its first
/// counter line (timed) or a second after it (`peak_rss`).
fn restore(bench: &Bench, snapshot: &Snapshot, peak_rss: bool) -> Result<super::Outcome, Sample> {
    copy(&snapshot.pristine, &snapshot.disk)?;
    let socket = bench.scratch_file("restore-restored.sock");
    let _ = std::fs::remove_file(&socket);
    let (notify, driver) = after_marker(0, RESTORE_LIMIT, socket.clone(), move |socket| {
        // Past the timestamps: a moment for the tick line to end, checked
        // below.
        std::thread::sleep(if peak_rss { RUN_FOR } else { LINE_END });
        put(socket, "/api/v1/vmm.shutdown", "")
    });
    let stderr = bench.scratch_file("restore-restored.stderr");
    let run = execute(
        restore_command(bench, snapshot, &socket),
        &stderr,
        &RunOptions {
            markers: &[TICK],
            stderr_markers: &[FIRST_RUN],
            peak_rss,
            limit: Some(RESTORE_LIMIT),
            notify: Some(notify),
        },
    )?;
    let driven = driver.join().unwrap();
    run.expect_status(0)?;
    driven?;
    let console = String::from_utf8_lossy(&run.stdout);
    if console.contains("Linux version") {
        return Err(Sample::Failed("the restored guest booted again".into()));
    }
    match ticks(&run.stdout).first() {
        Some(&first) if first > snapshot.last_tick => Ok(run),
        Some(first) => Err(Sample::Failed(format!(
            "the restored guest printed tick {first}, the snapshot was taken after tick {}",
            snapshot.last_tick
        ))),
        None => Err(Sample::Failed("the restored guest printed no complete tick line".into())),
    }
}

/// The snapshot's files: (name, apparent size, allocated bytes).
fn snapshot_files(dir: &Path) -> Result<Vec<(String, u64, u64)>, String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let meta = entry.metadata().map_err(|e| e.to_string())?;
        files.push((
            entry.file_name().to_string_lossy().into_owned(),
            meta.len(),
            meta.blocks() * 512,
        ));
    }
    files.sort();
    Ok(files)
}

const MIB: f64 = (1 << 20) as f64;

pub(super) fn rows(
    bench: &Bench,
    options: &Options,
    linux: &Result<Linux, String>,
    notes: &mut Vec<String>,
) -> Vec<Row> {
    let guest = format!("{LINUX_MIB} MiB busybox");
    let labels: [(String, &'static str, usize); 10] = [
        (format!("cold boot ({guest}): exec to first KVM_RUN"), "ms", 2),
        (format!("cold boot ({guest}): exec to {READY}"), "s", 2),
        (format!("cold boot ({guest}): exec to first {}line", TICK), "s", 2),
        ("snapshot: vm.snapshot request (paused)".into(), "ms", 1),
        ("snapshot: size on disk (allocated, all files)".into(), "MiB", 1),
        ("snapshot: memory file, apparent size".into(), "MiB", 0),
        ("restore resume=on: exec to first KVM_RUN".into(), "ms", 2),
        ("restore resume=on: exec to first console byte".into(), "ms", 2),
        (format!("restore resume=on: exec to first {}line", TICK), "ms", 2),
        ("restore: peak RSS after ~1 s running".into(), "MiB", 2),
    ];
    let na = || Cell::NotApplicable("n/a (ours only)".into());
    let row = |index: usize, ours: Cell, target: Target| {
        let (metric, unit, decimals) = &labels[index];
        Row {
            metric: metric.clone(),
            unit,
            decimals: *decimals,
            cells: [ours, na(), na()],
            base: Vmm::Floor,
            target,
        }
    };
    let fail_all = |why: String| -> Vec<Row> {
        (0..labels.len()).map(|i| row(i, Cell::Failed(why.clone()), Target::Info)).collect()
    };
    let linux = match linux {
        Ok(linux) => linux,
        Err(why) => return fail_all(why.clone()),
    };
    let script_path = bench.scratch_file("restore-test.sh");
    let master = std::fs::write(&script_path, SCRIPT)
        .map_err(|e| format!("{}: {e}", script_path.display()))
        .and_then(|()| {
            let files: [(&Path, &str, &[u8]); 1] = [(&script_path, "test.sh", SCRIPT.as_bytes())];
            root_image(bench, linux, "restore-root.ext4", &files)
        });
    let master = match master {
        Ok(master) => master,
        Err(why) => return fail_all(why),
    };
    let dir = bench.scratch_file("restore-snapshot");
    let _ = std::fs::remove_dir_all(&dir);

    // Cold boots; the warm-up boot takes the snapshot.
    let mut snapshot = None;
    let cold = measure("restore: cold boot", 3, options.linux_reps, &[Vmm::Ours], |_, round| {
        let into = (round == 0).then_some(dir.as_path());
        let (figures, taken) = cold_boot(bench, linux, &master, into)?;
        if taken.is_some() {
            snapshot = taken;
        }
        Ok(figures)
    });
    let [cold_run, cold_ready, cold_tick] = <[[Cell; 3]; 3]>::try_from(cold).unwrap();
    let mut rows = vec![
        row(0, cold_run[0].clone(), Target::Info),
        row(1, cold_ready[0].clone(), Target::Info),
        row(2, cold_tick[0].clone(), Target::Info),
    ];
    let snapshot = match snapshot {
        Some(Ok(snapshot)) => snapshot,
        other => {
            let why = match other {
                Some(Err(why)) => format!("the snapshot failed: {why}"),
                _ => "the snapshot's boot failed".into(),
            };
            rows.extend((3..labels.len()).map(|i| row(i, Cell::Failed(why.clone()), Target::Info)));
            return rows;
        }
    };
    let files = match snapshot_files(&snapshot.dir) {
        Ok(files) => files,
        Err(why) => {
            let failed = |i| row(i, Cell::Failed(why.clone()), Target::Info);
            rows.extend((3..labels.len()).map(failed));
            return rows;
        }
    };
    let allocated: u64 = files.iter().map(|f| f.2).sum();
    let memory = files.iter().find(|f| f.0 == "memory").map_or(0, |f| f.1);
    rows.push(row(3, Cell::Samples(vec![snapshot.took.as_secs_f64() * 1e3]), Target::Info));
    rows.push(row(4, Cell::Samples(vec![allocated as f64 / MIB]), Target::Info));
    rows.push(row(5, Cell::Samples(vec![memory as f64 / MIB]), Target::Info));
    let size = |bytes: u64| {
        if bytes < 1 << 20 {
            format!("{:.1} KiB", bytes as f64 / 1024.0)
        } else {
            format!("{:.1} MiB", bytes as f64 / MIB)
        }
    };
    let listing: Vec<String> = files
        .iter()
        .map(|(name, len, blocks)| {
            format!("{name} {} apparent, {} allocated", size(*len), size(*blocks))
        })
        .collect();
    notes.push(format!(
        "snapshot after tick {} (the guest ticked {} s, paused): {}",
        snapshot.last_tick,
        RUN_FOR.as_secs(),
        listing.join("; ")
    ));

    // Restores: each round one timed run and one peak-RSS run.
    let reps = options.reps * CHEAP_FACTOR;
    let restored = measure("restore", 4, reps, &[Vmm::Ours], |_, _| {
        let timed = restore(bench, &snapshot, false)?;
        let first_run = timed.to_stderr_marker[0].ok_or(format!("no {FIRST_RUN:?} on stderr"))?;
        let first_byte = timed.to_first_byte.ok_or("no console output")?;
        let first_tick = timed.to_marker[0].ok_or("no tick line")?;
        let traced = restore(bench, &snapshot, true)?;
        let kib = traced.peak_rss_kib.ok_or("VmHWM could not be read at exit")?;
        Ok(vec![
            first_run.as_secs_f64() * 1e3,
            first_byte.as_secs_f64() * 1e3,
            first_tick.as_secs_f64() * 1e3,
            kib as f64 / 1024.0,
        ])
    });
    let [to_run, to_byte, to_tick, rss] = <[[Cell; 3]; 4]>::try_from(restored).unwrap();
    let cold_tick_ms = cold_tick[0].median().map_or(f64::NAN, |s| s * 1e3);
    let sooner = Target::SoonerThan(100.0, "cold boot's first tick", cold_tick_ms);
    rows.push(row(6, to_run[0].clone(), Target::AtMost(10.0, "ms")));
    rows.push(row(7, to_byte[0].clone(), sooner));
    rows.push(row(8, to_tick[0].clone(), sooner));
    rows.push(row(9, rss[0].clone(), Target::Info));
    if let (Some(byte), true) = (to_byte[0].median(), cold_tick_ms.is_finite()) {
        notes.push(format!(
            "first console output {:.0}x sooner than the cold boot's first tick (medians {byte:.2} \
             ms and {:.2} s); {reps} restores timed and {reps} under ptrace for the peak RSS, {} \
             cold boots",
            cold_tick_ms / byte,
            cold_tick_ms / 1e3,
            options.linux_reps
        ));
    }
    notes.push(format!(
        "first KVM_RUN = the VMM's info line {FIRST_RUN:?} (RUST_LOG={LOG_FILTER}), logged once \
         before vCPU 0's run loop and timestamped as it arrives on the stderr pipe"
    ));
    rows
}
