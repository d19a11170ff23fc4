//! virtio-net on a tap, end to end: the VMM runs inside a network
//! namespace the test creates (`ip netns add`), creates its tap there and
//! gives the host side a link-local address; the guest, booted from the
//! root disk, configures its side and talks to the test, whose threads
//! enter the same namespace. No traffic leaves the namespace.
//!
//! One boot checks everything: the MAC, ping both ways, 256 KiB each way over TCP
//! with equal checksums, and a guest flooding the tap while it still writes
//! its console and its disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use common::rootfs::{get_file, put_file, root_disk_copy};
use common::{linux_guest, pattern, run_command};

const BOOT_LIMIT: Duration = Duration::from_secs(400);
const HOST: &str = "169.254.10.1";
const GUEST: &str = "169.254.10.2";
const MAC: &str = "06:00:a9:fe:0a:02";
const TRANSFER: usize = 256 * 1024;
const TO_HOST_PORT: u16 = 5000;
const TO_GUEST_PORT: u16 = 5001;

/// A network namespace of the test's own, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let name = format!("{name}-{}", std::process::id());
        let status = Command::new("ip").args(["netns", "add", &name]).status().expect("run ip");
        assert!(status.success(), "ip netns add {name}");
        let status = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status()
            .expect("run ip");
        assert!(status.success());
        Netns(name)
    }

    /// Runs `f` on a thread that entered the namespace.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: setns takes a descriptor we own and a flag; it moves
            // only this thread into the namespace.
            let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

/// Listens on the host side's `port` (binding as soon as the VMM has given
/// its tap the address) and accepts one connection, within the boot limit.
fn accept(port: u16) -> Option<TcpStream> {
    let started = Instant::now();
    let listener = loop {
        match TcpListener::bind((HOST, port)) {
            Ok(listener) => break listener,
            Err(_) if started.elapsed() < BOOT_LIMIT => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(_) => return None,
        }
    };
    listener.set_nonblocking(true).ok()?;
    while started.elapsed() < BOOT_LIMIT {
        if let Ok((stream, _)) = listener.accept() {
            stream.set_nonblocking(false).ok()?;
            // A guest that stops sending (or a VMM that exited) must not
            // hold the test forever.
            stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
            return Some(stream);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn sha256(bytes: &[u8]) -> String {
    let path = common::scratch_file("net-sha256");
    std::fs::write(&path, bytes).unwrap();
    let output = Command::new("sha256sum").arg(&path).output().unwrap();
    std::fs::remove_file(&path).unwrap();
    String::from_utf8(output.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

const SCRIPT: &str = r#"
ip addr add 169.254.10.2/30 dev eth0 && ip link set eth0 up && echo VMM-NET-UP
echo "VMM-NET-MAC: $(cat /sys/class/net/eth0/address)"
echo "VMM-NET-PING: $(ping -c 3 -W 10 169.254.10.1 | grep -c 'bytes from')"
# Host -> guest first: the test connects until this listener is up.
nc -l -p 5001 > /tmp/in &
listener=$!
# Guest -> host: 256 KiB of the busybox binary (the host has the same file).
head -c 262144 /bin/busybox | nc 169.254.10.1 5000
echo VMM-NET-SENT
wait $listener
echo "VMM-NET-RECEIVED: $(wc -c < /tmp/in) $(sha256sum < /tmp/in)"
# A flood of frames while the console and the disk go on.
( while :; do cat /bin/busybox; done | nc 169.254.10.1 5002 ) > /dev/null 2>&1 &
flood=$!
i=0
while [ $i -lt 20 ]; do echo "VMM-NET-CONSOLE $i"; i=$((i + 1)); done
dd if=/bin/busybox of=/root/written bs=64k count=8 2>/dev/null && sync && echo VMM-NET-DISK-OK
kill $flood
"#;

#[test]
fn net_mac_ping_tcp_both_ways_and_a_flood() {
    require_kvm!();
    let ns = Netns::new("vmmnet");
    let guest = linux_guest();
    let disk = root_disk_copy("net-root.img");
    put_file(&disk, "/test.sh", SCRIPT.as_bytes(), 0o755);

    // Guest -> host: read exactly TRANSFER bytes, then the flood's port
    // drains whatever comes.
    let to_host = ns.run(|| {
        let mut stream = accept(TO_HOST_PORT)?;
        let mut got = vec![0; TRANSFER];
        stream.read_exact(&mut got).ok()?;
        Some(got)
    });
    let flood = ns.run(|| {
        let mut stream = accept(5002)?;
        let mut total = 0usize;
        let mut buffer = vec![0; 65536];
        while let Ok(n) = stream.read(&mut buffer) {
            if n == 0 {
                break;
            }
            total += n;
        }
        Some(total)
    });
    let sent = pattern(1, TRANSFER);
    let to_guest = {
        let sent = sent.clone();
        ns.run(move || {
            let started = Instant::now();
            let address: SocketAddr = format!("{GUEST}:{TO_GUEST_PORT}").parse().unwrap();
            loop {
                match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
                    Ok(mut stream) => {
                        // The guest is up and waits for these bytes, so it
                        // answers pings now.
                        let ping = Command::new("busybox")
                            .args(["ping", "-c", "3", "-i", "0.2", "-W", "10", GUEST])
                            .output()
                            .expect("run ping");
                        stream.write_all(&sent).unwrap();
                        return Some(String::from_utf8_lossy(&ping.stdout).into_owned());
                    }
                    Err(_) if started.elapsed() < BOOT_LIMIT => {
                        std::thread::sleep(Duration::from_millis(500))
                    }
                    Err(_) => return None,
                }
            }
        })
    };

    let net = format!("tap=vmmtap0,mac={MAC},ip={HOST},mask=255.255.255.252");
    let disk_arg = format!("path={}", disk.display());
    let cmdline = format!("{} root=/dev/vda rw", guest.cmdline);
    let run = run_command(
        Command::new("ip").args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_vmm")]).args([
            "--kernel",
            &guest.file("vmlinux"),
            "--memory",
            "256",
            "--disk",
            &disk_arg,
            "--net",
            &net,
            "--cmdline",
            &cmdline,
        ]),
        BOOT_LIMIT,
    );
    run.assert_status(0);
    let out = &run.stdout;
    for expected in [
        "VMM-NET-UP".to_owned(),
        format!("VMM-NET-MAC: {MAC}"),
        "VMM-NET-PING: 3".to_owned(),
        "VMM-NET-SENT".to_owned(),
        format!("VMM-NET-RECEIVED: {TRANSFER} {}", sha256(&sent)),
        "VMM-NET-CONSOLE 19".to_owned(),
        "VMM-NET-DISK-OK".to_owned(),
        "VMM-TEST-STATUS 0".to_owned(),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let got = to_host.join().unwrap().expect("listen on the host side");
    assert_eq!(sha256(&got), sha256(&busybox[..TRANSFER]), "guest -> host bytes");
    let ping = to_guest.join().unwrap().expect("the guest never listened");
    assert!(
        ping.contains("3 packets transmitted, 3 packets received"),
        "host -> guest ping:\n{ping}"
    );
    let flooded = flood.join().unwrap().unwrap_or(0);
    assert!(flooded > 0, "the flood never reached the host");
    let written = get_file(&disk, "/root/written").unwrap();
    assert_eq!(written, busybox[..8 * 65536], "the disk write during the flood");
    std::fs::remove_file(&disk).ok();
}
