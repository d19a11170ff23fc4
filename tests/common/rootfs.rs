//! The recipe's busybox root disk (rootfs.ext4): private copies, and files
//! put on or read from them with e2fsprogs' debugfs, so no mount is needed.
//! Its /sbin/init runs /test.sh when there is one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{linux_guest, scratch_file};

/// One debugfs request on `image` (`-w` for writes). Err carries what
/// debugfs said on stderr besides its banner (it exits 0 even when a request
/// fails, e.g. "File not found by ext2_lookup").
pub fn debugfs(image: &Path, write: bool, request: &str) -> Result<Vec<u8>, String> {
    let image = image.to_str().expect("UTF-8 path");
    let mut command = Command::new("debugfs");
    if write {
        command.arg("-w");
    }
    let output = command
        .args(["-R", request, image])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run debugfs (is e2fsprogs installed?): {err}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaints: Vec<&str> =
        stderr.lines().filter(|line| !line.starts_with("debugfs ")).collect();
    if !output.status.success() || !complaints.is_empty() {
        return Err(format!(
            "debugfs {request:?} on {image}: {} {}",
            output.status,
            complaints.join("; ")
        ));
    }
    Ok(output.stdout)
}

/// Puts `bytes` at `path` (a new file in the root directory) on `image`,
/// with `mode`, and reads it back.
pub fn put_file(image: &Path, path: &str, bytes: &[u8], mode: u32) {
    // Named after the image too: tests of one process upload in parallel.
    let image_name = image.file_name().and_then(|n| n.to_str()).unwrap_or("image");
    let host = scratch_file(&format!("upload-{image_name}{}", path.replace('/', "-")));
    std::fs::write(&host, bytes).expect("write the file to upload");
    debugfs(image, true, &format!("write {} {path}", host.to_str().expect("UTF-8 path")))
        .expect("debugfs write");
    debugfs(image, true, &format!("set_inode_field {path} mode 0{:o}", 0o100000 | mode))
        .expect("debugfs set_inode_field");
    std::fs::remove_file(&host).expect("remove the uploaded file");
    assert_eq!(get_file(image, path).expect("read it back"), bytes, "debugfs did not store {path}");
}

/// The contents of `path` on `image`.
pub fn get_file(image: &Path, path: &str) -> Result<Vec<u8>, String> {
    debugfs(image, false, &format!("cat {path}"))
}

/// A private copy of the recipe's rootfs.ext4 in scratch space, named
/// `<pid>-<name>`.
pub fn root_disk_copy(name: &str) -> PathBuf {
    let copy = scratch_file(name);
    std::fs::copy(linux_guest().file("rootfs.ext4"), &copy).expect("copy rootfs.ext4");
    copy
}
