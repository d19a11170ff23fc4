//! virtio-blk (`--disk`) and virtio-rng (`--rng`) under the test Linux, which
//! boots from the root disk image of resources/linux (rootfs.ext4, whose
//! /sbin/init runs a /test.sh the host put there with debugfs, prints
//! `VMM-TEST-STATUS <n>`, remounts / read-only and reboots), and the VMM's
//! refusals of bad disk options.
//!
//! A boot costs 30-75 s on the nested hosts this runs on (guest kernel code
//! is emulated), so each boot checks many things: the guest script prints
//! one `VMM-CHECK [<uptime>] <key>: <value>` line per check, the host judges
//! them all, and reads the disks after the VM exited (debugfs, e2fsck). Every
//! test works on copies of rootfs.ext4 in scratch space, never on the cached
//! original.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Run, assert_vmm_error, guest, linux_guest, run_vmm, run_vmm_with_limit, scratch_file,
};

/// A Linux boot to the root disk's marker, the checks and the guest's
/// reboot: 50-70 s on an idle two-core AMD host that emulates guest kernel
/// code, over 300 s with the machine loaded three times over (measured).
const BOOT_LIMIT: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------
// Host-side tools: the images are read and written with e2fsprogs
// ---------------------------------------------------------------------------

/// Runs `program args`, panicking if it cannot start; returns (status,
/// stdout, stderr).
fn tool(program: &str, args: &[&str]) -> (Option<i32>, Vec<u8>, String) {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program} (is e2fsprogs installed?): {err}"));
    (output.status.code(), output.stdout, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// One debugfs request on `image` (`-w` for writes). Err carries what
/// debugfs said on stderr besides its banner (it exits 0 even when a request
/// fails, e.g. "File not found by ext2_lookup").
fn debugfs(image: &Path, write: bool, request: &str) -> Result<Vec<u8>, String> {
    let image = image.to_str().unwrap();
    let mut args = vec!["-R", request, image];
    if write {
        args.insert(0, "-w");
    }
    let (status, stdout, stderr) = tool("debugfs", &args);
    let complaints: Vec<&str> =
        stderr.lines().filter(|line| !line.starts_with("debugfs ")).collect();
    if status != Some(0) || !complaints.is_empty() {
        return Err(format!(
            "debugfs {request:?} on {image}: {status:?} {}",
            complaints.join("; ")
        ));
    }
    Ok(stdout)
}

/// Puts `bytes` at `path` (a new file in the root directory) on `image`,
/// with `mode`, and reads it back.
fn put_file(image: &Path, path: &str, bytes: &[u8], mode: u32) {
    let image_name = image.file_name().unwrap().to_str().unwrap();
    let host = scratch_file(&format!("{image_name}{}", path.replace('/', "-")));
    std::fs::write(&host, bytes).unwrap();
    debugfs(image, true, &format!("write {} {path}", host.to_str().unwrap())).unwrap();
    debugfs(image, true, &format!("set_inode_field {path} mode 0{:o}", 0o100000 | mode)).unwrap();
    std::fs::remove_file(&host).unwrap();
    assert_eq!(get_file(image, path).unwrap(), bytes, "debugfs did not store {path}");
}

/// The contents of `path` on `image`.
fn get_file(image: &Path, path: &str) -> Result<Vec<u8>, String> {
    debugfs(image, false, &format!("cat {path}"))
}

/// Whether `path` exists on `image`.
fn file_exists(image: &Path, path: &str) -> bool {
    match debugfs(image, false, &format!("stat {path}")) {
        Ok(_) => true,
        Err(err) if err.contains("File not found") => false,
        Err(err) => panic!("{err}"),
    }
}

/// Why `image` is not a cleanly unmounted, consistent ext4 file system
/// (`e2fsck -fn` finds nothing to fix and the superblock says clean), or
/// None if it is.
fn unclean(image: &Path) -> Option<String> {
    let image = image.to_str().unwrap();
    let (status, stdout, stderr) = tool("e2fsck", &["-fn", image]);
    let stdout = String::from_utf8_lossy(&stdout);
    if status != Some(0) || stdout.contains("Fix?") || stdout.contains("Clear?") {
        return Some(format!("e2fsck -fn {image}: status {status:?}\n{stdout}{stderr}"));
    }
    let (_, header, _) = tool("dumpe2fs", &["-h", image]);
    let header = String::from_utf8_lossy(&header);
    let state = header.lines().find(|line| line.starts_with("Filesystem state:"));
    match state.map(|line| line.split_whitespace().skip(2).collect::<Vec<_>>().join(" ")) {
        Some(state) if state == "clean" => None,
        state => Some(format!("{image} was not unmounted cleanly (state {state:?})")),
    }
}

/// The SHA-256 of `bytes` in hex, by the host's sha256sum.
fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

/// `len` random bytes.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    bytes
}

/// A private copy of the recipe's rootfs.ext4 in scratch space, named
/// `<pid>-<name>`.
fn root_disk_copy(name: &str) -> PathBuf {
    let copy = scratch_file(name);
    std::fs::copy(linux_guest().file("rootfs.ext4"), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(unclean(&copy), None, "the recipe's rootfs.ext4 is not clean");
    copy
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// The first 20 bytes of a file's name: the serial a disk without `id=` has.
fn default_serial(path: &Path) -> String {
    let name = path.file_name().unwrap().to_str().unwrap();
    name.chars().take(20).collect()
}

// ---------------------------------------------------------------------------
// The guest side: scripts run by the root disk's init
// ---------------------------------------------------------------------------

/// Shared start of the guest scripts. Builtins (`read`, `echo`, `[`) where
/// possible: every fork and exec costs seconds of emulated kernel time.
const PRELUDE: &str = r#"#!/bin/sh
set -f
check() {
	read -r up _ </proc/uptime
	key=$1
	shift
	echo "VMM-CHECK [$up] $key: $*"
}
get() {
	v=missing
	[ -r "$1" ] && read -r v <"$1"
}

# The root file system: its device, type and options.
while read -r _ _ dev _ mnt opts rest; do
	[ "$mnt" = / ] && break
done </proc/self/mountinfo
check root-dev "$dev"
check root-type "${rest#*- }"
check root-options "$opts"
get /sys/block/vda/dev
check vda-dev "$v"
get /sys/devices/system/cpu/online
check cpus-online "$v"
"#;

/// The big boot: root disk vda (read-write, id=), a read-only data disk vdb
/// (no id=), and --rng.
const BIG_BOOT: &str = r#"
# Files the host put on the root disk.
get /host-note.txt
note=$v
check host-note "$note"
check host-data-sha256 "$(sha256sum /host-data.bin)"

# Files the guest writes or removes, for the host to check after the exit.
read -r nonce </proc/sys/kernel/random/uuid
echo "guest saw $note, nonce $nonce" >/guest-note.txt
check guest-note "guest saw $note, nonce $nonce"
cat /host-data.bin >/guest-copy.bin
check guest-copy-status "$?"
rm /host-delete-me.txt
[ -e /host-delete-me.txt ] && check host-delete-me present || check host-delete-me absent
sync
check sync-status "$?"

# Both disks as the guest sees them.
for d in vda vdb; do
	for attribute in size serial ro; do
		get /sys/block/$d/$attribute
		check $d-$attribute "$v"
	done
done

# The read-only data disk: readable in full, but writes fail.
check vdb-sha256 "$(sha256sum /dev/vdb)"
check vdb-write $(dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=notrunc,fsync 2>&1; echo "status $?")

# The entropy device.
get /sys/class/misc/hw_random/rng_current
check rng-current "$v"
check hwrng-bytes "$(head -c 4096 /dev/hwrng | wc -c)"
check hwrng-sample $(head -c 128 /dev/hwrng | od -An -v -tx1)
exit 0
"#;

/// The small boot: one root disk (readonly=off, no id=), no --rng, 2 vCPUs.
const SMALL_BOOT: &str = r#"
get /sys/block/vda/serial
check vda-serial "$v"
[ -e /sys/block/vdb ] && check vdb present || check vdb absent
get /sys/class/misc/hw_random/rng_current
check rng-current "$v"
read -r nonce </proc/sys/kernel/random/uuid
echo "small boot, nonce $nonce" >/guest-note.txt
check guest-note "small boot, nonce $nonce"
exit 0
"#;

/// Boots the test kernel from the root disk `disks[0]` (the caller's copy
/// holding /test.sh) with the `--disk` arguments `disks` and `extra`.
fn boot_root_disk(disks: &[String], extra: &[&str]) -> Run {
    let guest = linux_guest();
    let kernel = guest.file("vmlinux");
    let cmdline = format!("{} root=/dev/vda rw", guest.cmdline);
    let mut args = vec!["--kernel", &kernel, "--cmdline", &cmdline, "--memory", "256"];
    for disk in disks {
        args.extend(["--disk", disk]);
    }
    args.extend_from_slice(extra);
    run_vmm_with_limit(&args, BOOT_LIMIT)
}

/// The guest's `VMM-CHECK` values and the host's verdicts on them, all
/// reported together at the end (a boot is too dear to stop at the first).
struct Checks {
    values: BTreeMap<String, String>,
    failures: Vec<String>,
}

impl Checks {
    /// Parses the console output and checks how the boot went: the root
    /// disk mounted, the script ran to its end with status 0, the guest's
    /// reboot ended the VMM with 0, and the VMM put `devices` virtio-mmio
    /// devices on the command line.
    fn of(run: &Run, devices: usize) -> Self {
        let mut checks = Checks { values: BTreeMap::new(), failures: Vec::new() };
        for line in run.stdout.lines() {
            let Some(rest) = line.trim_end_matches('\r').strip_prefix("VMM-CHECK ") else {
                continue;
            };
            let rest = rest.split_once("] ").map_or(rest, |(_, after)| after);
            match rest.split_once(':') {
                Some((key, value)) => {
                    let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                    if checks.values.insert(key.to_owned(), value).is_some() {
                        checks.fail(format!("the guest reported {key} twice"));
                    }
                }
                None => checks.fail(format!("a malformed check line: {line:?}")),
            }
        }
        if run.status != Some(0) || run.stderr.contains("panicked") {
            checks.fail(format!("the VMM ended with {:?} (signal {:?})", run.status, run.signal));
        }
        for marker in
            ["VFS: Mounted root (ext4 filesystem)", "VMM-ROOTFS-READY", "VMM-TEST-STATUS 0"]
        {
            if !run.stdout.contains(marker) {
                checks.fail(format!("no {marker:?} on the console"));
            }
        }
        if run.stdout.contains("VMM-ROOTFS: cannot remount") {
            checks.fail("the guest could not remount / read-only before its reboot".to_owned());
        }
        match run.stdout.lines().find(|line| line.contains("Command line: ")) {
            Some(line) => {
                let announced = line.matches("virtio_mmio.device=").count();
                if announced != devices {
                    checks.fail(format!(
                        "{announced} virtio_mmio.device= on the kernel command line, \
                         expected {devices}: {line}"
                    ));
                }
            }
            None => checks.fail("the kernel printed no command line".to_owned()),
        }
        checks
    }

    fn fail(&mut self, failure: String) {
        self.failures.push(failure);
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The guest's `key` satisfies `ok`, described by `wanted`.
    fn expect(&mut self, key: &str, wanted: &str, ok: impl Fn(&str) -> bool) {
        match self.value(key) {
            Some(value) if ok(value) => {}
            Some(value) => {
                let failure = format!("{key}: expected {wanted}, the guest said {value:?}");
                self.fail(failure);
            }
            None => self.fail(format!("{key}: expected {wanted}, the guest did not say")),
        }
    }

    fn expect_eq(&mut self, key: &str, expected: &str) {
        self.expect(key, &format!("{expected:?}"), |value| value == expected);
    }

    /// The root file system is ext4 on /dev/vda, mounted read-write, and
    /// the guest has `cpus` CPUs online.
    fn expect_root_on_vda(&mut self, cpus: &str) {
        let vda = self.value("vda-dev").unwrap_or("no vda").to_owned();
        self.expect_eq("root-dev", &vda);
        self.expect("root-type", "ext4", |value| value.split_whitespace().next() == Some("ext4"));
        self.expect("root-options", "rw", |value| value.split(',').any(|option| option == "rw"));
        self.expect_eq("cpus-online", cpus);
    }

    /// Panics with every failure, the console output and the VMM's stderr.
    fn finish(self, run: &Run) {
        if !self.failures.is_empty() {
            panic!(
                "{} failed check(s):\n  {}\n--- console ---\n{}\n--- stderr ---\n{}",
                self.failures.len(),
                self.failures.join("\n  "),
                run.stdout,
                run.stderr
            );
        }
    }
}

/// One boot checks most of what the guest sees: the root file system on
/// /dev/vda; a file the host put there; files the guest writes (and one it
/// removes), synced before the reboot and found by the host after the exit
/// on a clean file system; a second, read-only disk that reads back in full
/// but refuses writes and is unchanged afterwards; both disks' sizes and
/// serials (id= and the file-name default); and the entropy device.
#[test]
fn root_disk_data_disk_and_rng_in_one_boot() {
    require_kvm!();
    let root = root_disk_copy("root.ext4");
    let note = format!("host note {}", sha256(&random_bytes(16)));
    // Not a whole number of blocks or sectors, and several requests long.
    let host_data = random_bytes((512 << 10) + 3);
    put_file(&root, "/test.sh", format!("{PRELUDE}{BIG_BOOT}").as_bytes(), 0o755);
    put_file(&root, "/host-note.txt", format!("{note}\n").as_bytes(), 0o644);
    put_file(&root, "/host-data.bin", &host_data, 0o644);
    put_file(&root, "/host-delete-me.txt", b"the guest removes this file\n", 0o644);
    // The read-only data disk: random sectors, an odd number of them.
    let data = scratch_file("ro.img");
    let data_bytes = random_bytes((1 << 20) + 7 * 512);
    std::fs::write(&data, &data_bytes).unwrap();

    let run = boot_root_disk(
        &[
            format!("path={},id=vmm-root-disk", path_str(&root)),
            format!("path={},readonly=on", path_str(&data)),
        ],
        &["--rng"],
    );
    let mut checks = Checks::of(&run, 3);
    checks.expect_root_on_vda("0");

    // Read: what the host put on the disk.
    checks.expect_eq("host-note", &note);
    let data_sha = sha256(&host_data);
    checks.expect("host-data-sha256", &data_sha, |value| value.starts_with(&data_sha));

    // Written in the guest, read on the host after the exit.
    checks.expect_eq("guest-copy-status", "0");
    checks.expect_eq("sync-status", "0");
    checks.expect_eq("host-delete-me", "absent");
    let guest_note = checks.value("guest-note").unwrap_or("(not reported)").to_owned();
    checks.expect("guest-note", "guest saw <the note>, nonce <uuid>", |value| {
        value.starts_with(&format!("guest saw {note}, nonce ")) && value.len() > note.len() + 40
    });
    match get_file(&root, "/guest-note.txt") {
        Ok(bytes) if bytes == format!("{guest_note}\n").as_bytes() => {}
        Ok(bytes) => checks.fail(format!(
            "/guest-note.txt on the disk after the exit is {:?}, the guest wrote {guest_note:?}",
            String::from_utf8_lossy(&bytes)
        )),
        Err(err) => checks.fail(format!("/guest-note.txt after the exit: {err}")),
    }
    match get_file(&root, "/guest-copy.bin") {
        Ok(bytes) if bytes == host_data => {}
        Ok(bytes) => checks.fail(format!(
            "/guest-copy.bin on the disk after the exit differs from /host-data.bin \
             ({} bytes, sha256 {}; expected {} bytes, sha256 {data_sha})",
            bytes.len(),
            sha256(&bytes),
            host_data.len()
        )),
        Err(err) => checks.fail(format!("/guest-copy.bin after the exit: {err}")),
    }
    if file_exists(&root, "/host-delete-me.txt") {
        checks.fail("/host-delete-me.txt, removed in the guest, is still on the disk".to_owned());
    }
    if let Some(why) = unclean(&root) {
        checks.fail(why);
    }

    // The disks as the guest saw them.
    let root_sectors = (std::fs::metadata(&root).unwrap().len() / 512).to_string();
    checks.expect_eq("vda-size", &root_sectors);
    checks.expect_eq("vdb-size", &(data_bytes.len() / 512).to_string());
    checks.expect_eq("vda-serial", "vmm-root-disk");
    checks.expect_eq("vdb-serial", &default_serial(&data));
    checks.expect_eq("vda-ro", "0");
    checks.expect_eq("vdb-ro", "1");

    // The read-only disk: all of it readable, no write accepted, unchanged.
    let disk_sha = sha256(&data_bytes);
    checks.expect("vdb-sha256", &disk_sha, |value| value.starts_with(&disk_sha));
    checks.expect("vdb-write", "a failed write (status other than 0)", |value| {
        value.rsplit_once("status ").is_some_and(|(_, status)| status.trim() != "0")
    });
    if std::fs::read(&data).unwrap() != data_bytes {
        checks.fail("the read-only disk's file changed".to_owned());
    }

    // The entropy device.
    checks.expect("rng-current", "virtio_rng", |value| value.contains("virtio_rng"));
    checks.expect_eq("hwrng-bytes", "4096");
    checks.expect("hwrng-sample", "128 bytes, more than 64 distinct values", |value| {
        let bytes: Vec<&str> = value.split_whitespace().collect();
        let distinct: std::collections::BTreeSet<&&str> = bytes.iter().collect();
        bytes.len() == 128 && distinct.len() > 64
    });

    checks.finish(&run);
    for file in [&root, &data] {
        std::fs::remove_file(file).ok();
    }
}

/// A second, smaller boot: one disk given with readonly=off and no id=
/// (its serial is the file name, cut to 20 bytes), two vCPUs, no --rng (so
/// no entropy device), and a file written in the guest found after the exit.
#[test]
fn one_writable_disk_without_rng_on_two_cpus() {
    require_kvm!();
    let root = root_disk_copy("root-disk-with-a-long-name.ext4");
    assert!(default_serial(&root).len() == 20, "the name must be longer than a serial");
    put_file(&root, "/test.sh", format!("{PRELUDE}{SMALL_BOOT}").as_bytes(), 0o755);

    let run = boot_root_disk(&[format!("path={},readonly=off", path_str(&root))], &["--cpus", "2"]);
    let mut checks = Checks::of(&run, 1);
    checks.expect_root_on_vda("0-1");
    checks.expect_eq("vda-serial", &default_serial(&root));
    checks.expect_eq("vdb", "absent");
    checks.expect_eq("rng-current", "none");
    let guest_note = checks.value("guest-note").unwrap_or("(not reported)").to_owned();
    checks.expect("guest-note", "small boot, nonce <uuid>", |value| {
        value.starts_with("small boot, nonce ") && value.len() > 40
    });
    match get_file(&root, "/guest-note.txt") {
        Ok(bytes) if bytes == format!("{guest_note}\n").as_bytes() => {}
        Ok(bytes) => checks.fail(format!(
            "/guest-note.txt on the disk after the exit is {:?}, the guest wrote {guest_note:?}",
            String::from_utf8_lossy(&bytes)
        )),
        Err(err) => checks.fail(format!("/guest-note.txt after the exit: {err}")),
    }
    if let Some(why) = unclean(&root) {
        checks.fail(why);
    }
    checks.finish(&run);
    std::fs::remove_file(&root).ok();
}

// ---------------------------------------------------------------------------
// Bad input: one `vmm: error:` line naming the file, status 2, no guest run
// ---------------------------------------------------------------------------

/// A tiny guest: the VMM must refuse the disks before it would run.
fn tiny_guest() -> String {
    path_str(&guest("hello_real.bin")).to_owned()
}

/// A scratch disk image of `len` bytes.
fn scratch_disk(name: &str, len: usize) -> PathBuf {
    let path = scratch_file(name);
    std::fs::write(&path, vec![0u8; len]).unwrap();
    path
}

/// Runs the tiny guest with `args` and asserts a one-line VMM error that
/// contains each of `wanted`.
fn assert_refused(args: &[&str], wanted: &[&str]) -> Run {
    let tiny = tiny_guest();
    let mut all = vec!["--kernel", &tiny];
    all.extend_from_slice(args);
    let run = run_vmm(&all);
    assert_vmm_error(&run, wanted[0]);
    for text in &wanted[1..] {
        assert!(run.stderr.contains(text), "expected {text:?} in: {}", run.stderr);
    }
    run
}

#[test]
fn disk_with_an_unknown_key() {
    let disk = scratch_disk("unknown-key.img", 1 << 20);
    let disk = path_str(&disk);
    assert_refused(&["--disk", &format!("path={disk},colour=blue")], &["colour", disk]);
}

#[test]
fn disk_with_a_bad_readonly_value() {
    let disk = scratch_disk("bad-readonly.img", 1 << 20);
    let disk = path_str(&disk);
    assert_refused(&["--disk", &format!("path={disk},readonly=maybe")], &["maybe", disk]);
}

#[test]
fn disk_without_a_path() {
    assert_refused(&["--disk", "readonly=on,id=nothing"], &["path"]);
}

#[test]
fn disk_that_does_not_exist() {
    assert_refused(
        &["--disk", "path=/nonexistent/disk.img"],
        &["/nonexistent/disk.img", "No such file or directory"],
    );
}

#[test]
fn disk_that_is_empty() {
    let disk = scratch_disk("empty.img", 0);
    let disk = path_str(&disk);
    assert_refused(&["--disk", &format!("path={disk}")], &[disk, "empty"]);
}

#[test]
fn disk_that_is_a_directory() {
    let dir = scratch_file("disk-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let dir = path_str(&dir);
    assert_refused(&["--disk", &format!("path={dir}")], &[dir]);
}

#[test]
fn disk_that_cannot_be_read() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        // Without root there is no other user to drop to; an unreadable
        // file of our own is unreadable to us.
        let disk = scratch_disk("unreadable.img", 1 << 20);
        std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o000)).unwrap();
        let disk = path_str(&disk);
        assert_refused(&["--disk", &format!("path={disk}")], &[disk, "Permission denied"]);
        return;
    }
    // Root reads everything: run the VMM as `nobody` on files it may read,
    // all but the disk.
    let dir = std::env::temp_dir().join(format!("vmm-test-{}-virtio", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kernel = dir.join("hello_real.bin");
    std::fs::copy(guest("hello_real.bin"), &kernel).unwrap();
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
    let disk = dir.join("unreadable.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o000)).unwrap();
    let disk = path_str(&disk);
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_vmm"))
        .args(["--kernel", path_str(&kernel), "--disk", &format!("path={disk}")]);
    let run = common::run_command(&mut command, Duration::from_secs(30));
    assert!(!run.stderr.contains("setpriv"), "setpriv could not run the VMM: {}", run.stderr);
    assert_vmm_error(&run, disk);
    assert!(run.stderr.contains("Permission denied"), "{}", run.stderr);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_same_disk_twice() {
    let disk = scratch_disk("twice.img", 1 << 20);
    let disk = path_str(&disk);
    let spec = format!("path={disk}");
    assert_refused(&["--disk", &spec, "--disk", &spec], &[disk]);
    // Both read-only is still the same disk twice.
    let spec = format!("path={disk},readonly=on");
    assert_refused(&["--disk", &spec, "--disk", &spec], &[disk]);
}

#[test]
fn the_same_disk_through_another_name() {
    let disk = scratch_disk("one-file.img", 1 << 20);
    let link = scratch_file("another-name.img");
    std::fs::remove_file(&link).ok();
    std::os::unix::fs::symlink(&disk, &link).unwrap();
    let (disk, link) = (path_str(&disk), path_str(&link));
    let tiny = tiny_guest();
    let run = run_vmm(&[
        "--kernel",
        &tiny,
        "--disk",
        &format!("path={disk}"),
        "--disk",
        &format!("path={link}"),
    ]);
    // Naming either name names the file.
    assert_vmm_error(&run, "");
    assert!(run.stderr.contains(link) || run.stderr.contains(disk), "{}", run.stderr);
}

/// A disk that a running VMM holds cannot be another VMM's disk, read-only
/// or not.
#[test]
fn a_disk_another_vmm_holds() {
    require_kvm!();
    let disk = scratch_disk("held.img", 1 << 20);
    let disk = path_str(&disk);
    let guest = linux_guest();
    // The holder: the test kernel with the tiny initrd, stopped once the
    // guest has started (the VMM has opened its disks by then).
    let mut holder = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["--kernel", &guest.file("vmlinux"), "--initrd", &guest.file("initrd-tiny.cpio")])
        .args(["--cmdline", &guest.cmdline, "--memory", "256"])
        .args(["--disk", &format!("path={disk}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut console = BufReader::new(holder.stdout.take().unwrap());
    let deadline = Instant::now() + BOOT_LIMIT;
    let mut line = String::new();
    let started = loop {
        line.clear();
        if console.read_line(&mut line).unwrap_or(0) == 0 || Instant::now() > deadline {
            break false;
        }
        if line.contains("Linux version") {
            break true;
        }
    };
    let attempts = if started {
        let tiny = tiny_guest();
        let attempts: Vec<Run> = [format!("path={disk}"), format!("path={disk},readonly=on")]
            .iter()
            .map(|spec| run_vmm(&["--kernel", &tiny, "--disk", spec]))
            .collect();
        Some(attempts)
    } else {
        None
    };
    // SAFETY: kill has no memory arguments; the pid is our live child's.
    unsafe { libc::kill(holder.id() as i32, libc::SIGTERM) };
    let status = holder.wait().unwrap();
    let mut stderr = String::new();
    holder.stderr.take().unwrap().read_to_string(&mut stderr).ok();
    let attempts = attempts
        .unwrap_or_else(|| panic!("the holding VMM's guest never started ({status:?}):\n{stderr}"));
    for run in &attempts {
        assert_vmm_error(run, disk);
    }
    std::fs::remove_file(disk).ok();
}

#[test]
fn rng_source_that_does_not_exist() {
    assert_refused(
        &["--rng", "src=/nonexistent/entropy"],
        &["/nonexistent/entropy", "No such file or directory"],
    );
}
