//! The control API (`--api-socket`): Cloud Hypervisor's REST paths over
//! HTTP/1.1 on a Unix socket.
//!
//! Three parts, each on the thread it belongs to:
//! - [`ApiSocket`]: the socket, bound at start-up on the main thread (so a
//!   bad path is an error before the guest runs) and removed at exit;
//! - [`http`]: the API thread. It applies its own seccomp filter, then
//!   accepts one connection at a time, reads one request of at most 64 KiB
//!   (parsed with `httparse`), turns it into an [`Endpoint`] and sends it to
//!   the event loop over a channel, writing an eventfd to wake it; it waits
//!   for the [`Reply`] and writes it back as JSON (serde_json);
//! - [`control`]: the VMM side, run by the event loop on the main thread:
//!   pause and resume (vCPUs, devices, the guest's clock), the VM's state
//!   and configuration, counters, shutdown.
//!
//! With `--api-socket` absent none of this exists: no socket, no thread, no
//! channel, no filter compiled.

pub mod control;
pub mod http;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::mpsc::SyncSender;

use anyhow::{Context, bail};

pub use vmm_api::{ApiError, Endpoint, Reply, SnapshotConfig};

/// A request on its way to the event loop, with where its answer goes.
pub type Message = (Endpoint, SyncSender<Reply>);

/// The API's Unix socket: bound, listening, and removed when dropped.
#[derive(Debug)]
pub struct ApiSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
}

/// The path of `--api-socket PATH` or `--api-socket path=PATH`.
pub fn socket_path(option: &str) -> anyhow::Result<PathBuf> {
    let path = option.strip_prefix("path=").unwrap_or(option);
    if path.is_empty() {
        bail!("--api-socket {option}: the socket path is empty");
    }
    if path.contains(',') && option.starts_with("path=") {
        bail!("--api-socket {option}: only path= is known");
    }
    Ok(PathBuf::from(path))
}

impl ApiSocket {
    /// Binds and listens on the socket `--api-socket` names; an existing
    /// file there (another VMM's socket) is left alone and refused.
    pub fn bind(option: &str) -> anyhow::Result<ApiSocket> {
        let path = socket_path(option)?;
        let listener = UnixListener::bind(&path).with_context(|| {
            let why = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                    format!("the directory {} does not exist", dir.display())
                }
                _ if path.exists() => format!("{} already exists (in use?)", path.display()),
                _ => format!("cannot listen on {}", path.display()),
            };
            format!("--api-socket {option}: {why}")
        })?;
        Ok(ApiSocket { path, listener: Some(listener) })
    }

    /// The listener, for the API thread (once).
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_file(&self.path) {
            log::warn!("cannot remove the API socket {}: {err}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_takes_a_path_or_path_equals() {
        assert_eq!(socket_path("/tmp/a.sock").unwrap(), PathBuf::from("/tmp/a.sock"));
        assert_eq!(socket_path("path=/tmp/a.sock").unwrap(), PathBuf::from("/tmp/a.sock"));
        assert!(socket_path("").is_err());
        assert!(socket_path("path=").is_err());
        assert!(socket_path("path=/tmp/a,mode=1").is_err());
    }
}
