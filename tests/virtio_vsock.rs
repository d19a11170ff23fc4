//! virtio-vsock with Firecracker's hybrid Unix-socket protocol, end to end:
//! the guest (booted from the root disk) runs the project's vsock-helper,
//! and the test talks to it through the VMM's Unix socket.
//!
//! One boot checks: a guest connection to the host's `PATH_P` listener (the
//! guest closing its side), 32 parallel host connections of 64 KiB echoed
//! back with equal checksums (the host closing its side first), and a host
//! connection to a port nobody listens on, which is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::rootfs::{put_file, root_disk_copy};
use common::{linux_guest, pattern, run_vmm_with_limit, scratch_file};

const BOOT_LIMIT: Duration = Duration::from_secs(400);
const ECHO_PORT: u32 = 1234;
const QUIT_PORT: u32 = 1235;
const HOST_PORT: u32 = 5000;
const CONNECTIONS: usize = 32;
const PER_CONNECTION: usize = 64 * 1024;

const SCRIPT: &str = r#"
vsock-helper serve 1234 1235 &
server=$!
echo "VMM-VSOCK-GUEST: $(vsock-helper connect 2 5000 hello-from-the-guest)"
wait $server
echo "VMM-VSOCK-SERVER: $?"
"#;

/// Opens a hybrid-vsock connection to guest port `port`: Ok(stream) after
/// `OK <n>`, Err(what came instead) if the VMM closed it.
fn connect(socket: &Path, port: u32) -> Result<UnixStream, String> {
    let mut stream = UnixStream::connect(socket).map_err(|err| err.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.write_all(format!("CONNECT {port}\n").as_bytes()).map_err(|err| err.to_string())?;
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap()).read_line(&mut line).map_err(|e| e.to_string())?;
    if line.starts_with("OK ") && line.ends_with('\n') { Ok(stream) } else { Err(line) }
}

/// Connects until the guest listens (a refused CONNECT is closed at once).
fn connect_when_listening(socket: &Path, port: u32) -> UnixStream {
    let started = Instant::now();
    loop {
        match connect(socket, port) {
            Ok(stream) => return stream,
            Err(_) if started.elapsed() < BOOT_LIMIT => {
                std::thread::sleep(Duration::from_millis(500))
            }
            Err(err) => panic!("the guest never listened on port {port}: {err}"),
        }
    }
}

/// Sends `data` and reads the echo to its end (the host closes its writing
/// side first; the guest then closes).
fn echo(mut stream: UnixStream, data: &[u8]) -> Vec<u8> {
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            stream.write_all(&data).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).unwrap();
    writer.join().unwrap();
    echoed
}

#[test]
fn hybrid_vsock_both_ways_many_connections_and_a_refusal() {
    require_kvm!();
    let guest = linux_guest();
    let disk = root_disk_copy("vsock-root.img");
    put_file(&disk, "/test.sh", SCRIPT.as_bytes(), 0o755);
    let socket: PathBuf = scratch_file("v.sock");
    let _ = std::fs::remove_file(&socket);
    let host_listener_path = PathBuf::from(format!("{}_{HOST_PORT}", socket.display()));
    let _ = std::fs::remove_file(&host_listener_path);
    let host_listener = UnixListener::bind(&host_listener_path).unwrap();

    // The guest's connection to the host's port 5000.
    let from_guest = std::thread::spawn(move || {
        let (mut stream, _) = host_listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut message = Vec::new();
        stream.read_to_end(&mut message).unwrap();
        stream.write_all(b"hello-from-the-host").unwrap();
        drop(stream);
        message
    });

    // The host side of the test: runs while the guest does.
    let host = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let first = connect_when_listening(&socket, ECHO_PORT);
            let refused = connect(&socket, 4321);
            let data: Vec<Vec<u8>> =
                (0..CONNECTIONS).map(|i| pattern(i as u64 + 1, PER_CONNECTION)).collect();
            let mut streams = vec![first];
            for _ in 1..CONNECTIONS {
                streams.push(connect(&socket, ECHO_PORT).expect("connect to the echo port"));
            }
            let workers: Vec<_> = streams
                .into_iter()
                .zip(data.clone())
                .map(|(stream, data)| std::thread::spawn(move || echo(stream, &data)))
                .collect();
            let echoed: Vec<Vec<u8>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
            // Done: let the guest's server end.
            let _ = connect(&socket, QUIT_PORT);
            (refused, data, echoed)
        })
    };

    let vsock = format!("cid=3,socket={}", socket.display());
    let disk_arg = format!("path={}", disk.display());
    let cmdline = format!("{} root=/dev/vda rw", guest.cmdline);
    let run = run_vmm_with_limit(
        &[
            "--kernel",
            &guest.file("vmlinux"),
            "--memory",
            "256",
            "--disk",
            &disk_arg,
            "--vsock",
            &vsock,
            "--cmdline",
            &cmdline,
        ],
        BOOT_LIMIT,
    );
    run.assert_status(0);
    let out = &run.stdout;
    for expected in [
        "VMM-VSOCK-LISTENING",
        "VMM-VSOCK-GUEST: reply: hello-from-the-host",
        "VMM-VSOCK-SERVER: 0",
        "VMM-TEST-STATUS 0",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert_eq!(from_guest.join().unwrap(), b"hello-from-the-guest");
    let (refused, data, echoed) = host.join().unwrap();
    assert!(refused.is_err(), "a CONNECT to a port nobody listens on was accepted");
    for (i, (sent, got)) in data.iter().zip(&echoed).enumerate() {
        assert_eq!(got.len(), sent.len(), "connection {i}: echo length");
        assert!(got == sent, "connection {i}: the echo differs");
    }
    assert!(!socket.exists(), "the VMM leaves its socket behind");
    std::fs::remove_file(&host_listener_path).ok();
    std::fs::remove_file(&disk).ok();
}
