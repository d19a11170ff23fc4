//! A VMM under the control API (`--api-socket`), for tests/api.rs and
//! tests/snapshot.rs: the child process with its console in a file and its
//! stdin as the guest's console input, requests written and read by hand
//! over the socket (the test is the client), and a clean shutdown checked.
//! A test file adds its own helpers in an `impl ApiVmm` block of its own.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::scratch_file;

/// A running VMM with an API socket and its console in a file; killed if
/// the test ends without shutting it down.
#[derive(Debug)]
pub struct ApiVmm {
    child: Option<Child>,
    /// The VMM's stdin: the guest's console input.
    stdin: Option<ChildStdin>,
    /// The API socket.
    pub socket: PathBuf,
    /// The file the guest's console goes to.
    pub serial: PathBuf,
}

impl ApiVmm {
    /// The VMM with `args`, an API socket and its console to a file, once
    /// the socket exists.
    pub fn spawn(name: &str, args: &[&str]) -> ApiVmm {
        ApiVmm::spawn_in(None, name, args)
    }

    /// Like `spawn`, inside the network namespace `netns` if given
    /// (`ip netns exec NETNS vmm ...`).
    pub fn spawn_in(netns: Option<&str>, name: &str, args: &[&str]) -> ApiVmm {
        let socket = scratch_file(&format!("{name}.sock"));
        let serial = scratch_file(&format!("{name}.serial"));
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(&serial);
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_vmm")]);
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_vmm")),
        };
        let mut child = command
            .args(args)
            .arg("--api-socket")
            .arg(&socket)
            .arg(format!("--serial=file:{}", serial.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the vmm binary");
        let stdin = child.stdin.take();
        let vmm = ApiVmm { child: Some(child), stdin, socket, serial };
        // The VMM binds its socket at start-up, before the guest runs.
        let started = Instant::now();
        while !vmm.socket.exists() {
            assert!(started.elapsed() < Duration::from_secs(20), "no API socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        vmm
    }

    /// The VMM's process id (`ip netns exec` becomes the VMM).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the VMM is running").id()
    }

    /// What the guest printed so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits until the guest's console holds `text` `count` times.
    pub fn wait_for(&self, text: &str, count: usize, limit: Duration) {
        let started = Instant::now();
        while self.console().matches(text).count() < count {
            assert!(started.elapsed() < limit, "no {text:?} in {:?}", self.console());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `bytes` on the guest's console.
    pub fn type_in(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// The tick numbers the counter guest (resources/guests/counter.S)
    /// printed so far, whole lines only.
    pub fn ticks(&self) -> Vec<u64> {
        self.console()
            .lines()
            .filter_map(|line| line.strip_prefix("tick "))
            // The last line may be half written.
            .filter(|n| n.len() == 8)
            .map(|n| u64::from_str_radix(n, 16).expect("a hex tick"))
            .collect()
    }

    /// Waits until the counter guest printed `count` ticks; returns them.
    pub fn wait_for_ticks(&self, count: usize, limit: Duration) -> Vec<u64> {
        let started = Instant::now();
        loop {
            let ticks = self.ticks();
            if ticks.len() >= count {
                return ticks;
            }
            assert!(started.elapsed() < limit, "the guest printed {ticks:?} in {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One request to the API.
    pub fn ask(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        request(&self.socket, method, path, body)
    }

    /// Snapshots the paused guest into `dir` (`vm.snapshot`, which must
    /// succeed).
    pub fn snapshot(&self, dir: &Path) {
        let body = format!(r#"{{"destination_url": "file://{}"}}"#, dir.display());
        let answer = self.ask("PUT", "/api/v1/vm.snapshot", Some(&body));
        assert_eq!(answer.status, 204, "{answer:?}");
    }

    /// Waits for the VMM to exit (killing it and failing after 20 s);
    /// returns its status and stderr.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                child.kill().ok();
                child.wait().ok();
                panic!("the VMM did not exit after vmm.shutdown");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        (status, stderr)
    }

    /// Shuts the VMM down with `vmm.shutdown`: it must exit with 0, without
    /// a panic or a warning, and remove its API socket.
    pub fn shutdown(self) {
        let answer = self.ask("PUT", "/api/v1/vmm.shutdown", None);
        assert_eq!(answer.status, 204, "{answer:?}");
        let socket = self.socket.clone();
        let (status, stderr) = self.wait();
        assert_eq!(status.code(), Some(0), "stderr: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("WARN"), "{stderr}");
        assert!(!socket.exists(), "the API socket is left behind");
    }
}

impl Drop for ApiVmm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
        let _ = std::fs::remove_file(&self.serial);
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The status line and the headers.
    pub head: String,
    /// The body.
    pub body: String,
}

impl Answer {
    /// The body as JSON (it must be).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("not JSON ({err}): {self:?}"))
    }

    /// Asserts an error status with a JSON `{"error": ...}` body naming `what`.
    pub fn assert_error(&self, status: u16, what: &str) {
        assert_eq!(self.status, status, "{self:?}");
        let error = self.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(what), "expected {what:?} in {self:?}");
    }
}

/// Parses a whole HTTP/1.1 response (the server closes the connection).
pub fn parse_answer(bytes: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status: {text:?}"));
    Answer { status, head: head.to_owned(), body: body.to_owned() }
}

/// One request over a new connection, written and read by hand.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Answer {
    let mut stream = UnixStream::connect(socket).expect("connect to the API socket");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    parse_answer(&answer)
}
