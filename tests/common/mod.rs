//! Shared helpers of the integration tests: building the test guests,
//! running the `vmm` binary with a time limit, and skipping (loudly) where
//! KVM is not usable, or failing there when `VMM_REQUIRE_KVM=1`.
#![allow(dead_code)]

pub mod api_vmm;
pub mod rootfs;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("vmm/ has a parent").to_path_buf()
}

/// Scratch space for tests, inside the target directory.
pub fn scratch_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// A fresh scratch file path unique to this test process and `name`.
pub fn scratch_file(name: &str) -> PathBuf {
    scratch_dir().join(format!("{}-{name}", std::process::id()))
}

/// Builds the guests of resources/guests (once per process; `flock` keeps
/// parallel test processes from building at the same time) and returns the
/// directory that holds them.
pub fn guests_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = scratch_dir().join("guests");
        std::fs::create_dir_all(&out).expect("create the guest output directory");
        let status = Command::new("flock")
            .arg(out.join(".lock"))
            .args(["make", "-s", "-C"])
            .arg(repo_root().join("resources/guests"))
            .arg(format!("OUT={}", out.display()))
            .status()
            .expect("run make (are flock and make installed?)");
        assert!(status.success(), "building the test guests failed");
        out
    })
}

/// The path of a built guest, e.g. `guest("hello_real.bin")`.
pub fn guest(name: &str) -> PathBuf {
    guests_dir().join(name)
}

/// True when CI asked (with `VMM_REQUIRE_KVM=1`, as .ci/run does) that
/// tests needing KVM fail rather than skip where it is unusable.
pub fn kvm_required() -> bool {
    std::env::var_os("VMM_REQUIRE_KVM").is_some_and(|value| value == "1")
}

/// Skips `test` for `reason` (a SKIPPED line on stderr, so that a skipped
/// test is visible in the test output), or fails it when KVM is required.
/// Only for reasons that come down to KVM being unusable here.
pub fn skip_without_kvm(test: &str, reason: &str) {
    if kvm_required() {
        panic!("{test}: {reason}; VMM_REQUIRE_KVM=1 makes that a failure, not a skip");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// True when /dev/kvm can be opened for reading and writing. Otherwise says
/// why on stderr (a SKIPPED line) and returns false, or panics when
/// `VMM_REQUIRE_KVM=1`.
pub fn kvm_usable(test: &str) -> bool {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(err) => {
            skip_without_kvm(test, &format!("/dev/kvm is not usable here ({err})"));
            false
        }
    }
}

/// Returns early from a test (with a SKIPPED line) where KVM is unusable;
/// fails the test instead when `VMM_REQUIRE_KVM=1`.
#[macro_export]
macro_rules! require_kvm {
    () => {
        if !$crate::common::kvm_usable(module_path!()) {
            return;
        }
    };
}

/// What a finished `vmm` run did.
#[derive(Debug)]
pub struct Run {
    /// Process exit status (None if killed by a signal).
    pub status: Option<i32>,
    /// The signal that killed the process, if one did.
    pub signal: Option<i32>,
    /// Everything the guest printed on the serial console (stdout).
    pub stdout: String,
    /// The VMM's own messages.
    pub stderr: String,
}

impl Run {
    /// Asserts nothing panicked and the VMM exited with `status`.
    pub fn assert_status(&self, status: i32) -> &Self {
        assert!(!self.stderr.contains("panicked"), "the VMM panicked: {self:#?}");
        assert_eq!(self.status, Some(status), "unexpected exit status: {self:#?}");
        self
    }
}

/// Asserts the run failed as a VMM error (status 2) with one line on
/// stderr naming `problem`, and the guest never printed anything.
pub fn assert_vmm_error(run: &Run, problem: &str) {
    run.assert_status(2);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {}", run.stderr);
    assert!(lines[0].starts_with("vmm: error: "), "{}", run.stderr);
    assert!(lines[0].contains(problem), "expected {problem:?} in: {}", run.stderr);
    assert_eq!(run.stdout, "");
}

/// Runs the `vmm` binary with `args`, killing it (and failing the test) if
/// it has not finished within `limit`.
pub fn run_vmm_with_limit(args: &[&str], limit: Duration) -> Run {
    run_command(Command::new(env!("CARGO_BIN_EXE_vmm")).args(args), limit)
}

/// Runs the `vmm` binary with `args` and a 60 s limit.
pub fn run_vmm(args: &[&str]) -> Run {
    run_vmm_with_limit(args, Duration::from_secs(60))
}

/// Reads a child's pipe to the end on its own thread, so a chatty child
/// never blocks on a full pipe while the test waits for it.
fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            pipe.read_to_end(&mut bytes).ok();
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs a prepared command with no stdin, killing it after `limit`.
pub fn run_command(command: &mut Command, limit: Duration) -> Run {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the vmm binary");
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the vmm process") {
            break status;
        }
        if started.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "vmm did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        status: status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&status),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// The test Linux kernel and initrds built by resources/linux/build.sh.
#[derive(Debug)]
pub struct LinuxGuest {
    /// The directory holding vmlinux, bzImage and the initrds.
    pub dir: PathBuf,
    /// The kernel command line of the recipe.
    pub cmdline: String,
}

impl LinuxGuest {
    /// A file of the build, as a string argument.
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("UTF-8 path").to_owned()
    }
}

/// Builds (or finds in its cache) the test kernel, once per process. The
/// script locks its cache itself, so parallel test processes wait for one
/// build. A failed build fails the test: it is part of what is tested.
pub fn linux_guest() -> &'static LinuxGuest {
    static GUEST: OnceLock<LinuxGuest> = OnceLock::new();
    GUEST.get_or_init(|| {
        let recipe = repo_root().join("resources/linux");
        let output = Command::new("bash")
            .arg(recipe.join("build.sh"))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run resources/linux/build.sh");
        assert!(output.status.success(), "building the test kernel failed");
        let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
        let dir =
            PathBuf::from(stdout.lines().last().expect("build.sh printed its output directory"));
        let cmdline =
            std::fs::read_to_string(recipe.join("cmdline.txt")).expect("read cmdline.txt");
        LinuxGuest { dir, cmdline: cmdline.trim().to_owned() }
    })
}

/// `len` bytes that differ from run to run of `seed` but are the same every
/// time: a xorshift stream (test data whose corruption a comparison sees).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
