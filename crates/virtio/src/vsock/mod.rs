//! virtio-vsock (virtio 1.2, section 5.10) with Firecracker's hybrid vsock
//! protocol: the guest's stream sockets reach host programs through Unix
//! sockets, no vhost-vsock needed.
//!
//! - The device listens on a Unix socket at a path the caller chooses. A
//!   host program connects to it and writes `CONNECT <port>\n`; the device
//!   asks the guest's listener on that port for a connection (a
//!   VSOCK_OP_REQUEST from host CID 2 and a local port of the device's), and
//!   once the guest accepts it writes `OK <local port>\n` to the Unix stream,
//!   which then carries the connection's bytes both ways. A guest that
//!   refuses (RST) or does not answer within [`CONNECT_TIMEOUT`] gets the
//!   Unix stream closed.
//! - A guest connecting to the host (CID 2) on port P makes the device
//!   connect to the Unix socket `PATH_P` (`/tmp/v.sock_52` for port 52); no
//!   listener there means a RST.
//!
//! Flow control is the protocol's: every connection advertises
//! [`CONN_BUF_SIZE`] bytes of buffer to the guest (what a host reader that
//! does not keep up may leave pending in the device, never more: a guest
//! sending past it gets a RST) and the device sends credit updates as the
//! host consumes; the device never sends the guest more than the guest's
//! own advertised credit, and stops reading a host socket while the guest
//! has none for it. Every host socket is non-blocking; one slow peer,
//! on either side, stalls only its own connection.
//!
//! The device's host sockets come and go, so it keeps an epoll of its own
//! (the listener, every Unix stream and a timer for the timeouts): the
//! first of [`VirtioDevice::host_fds`](crate::VirtioDevice::host_fds) is
//! that epoll's descriptor, the second an eventfd the device signals when
//! it stopped with work left (after [`EVENT_BUDGET`] host events or
//! [`RX_BUDGET`] packets to the guest) or when transmit-queue processing
//! left it packets for the receive queue. Watch both edge-triggered.
//!
//! Connections do not survive a device reset (nor, for now, a snapshot):
//! their Unix streams are closed.

mod connection;
mod device;
mod muxer;
mod sys;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use device::{Vsock, VsockCounters};

/// The receive queue's index (device to guest).
pub const RX_QUEUE: usize = 0;
/// The transmit queue's index (guest to device).
pub const TX_QUEUE: usize = 1;
/// The event queue's index (transport reset events; unused).
pub const EVENT_QUEUE: usize = 2;
/// The size of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// The host's context id.
pub const HOST_CID: u64 = 2;
/// The buffer space every connection advertises to the guest (`buf_alloc`):
/// how much of the guest's data the device may hold for a host reader that
/// does not keep up.
pub const CONN_BUF_SIZE: u32 = 128 * 1024;
/// The most connections (and host programs not done with their
/// `CONNECT` line) at once; more are refused (a RST to the guest, a closed
/// stream to a host program). With [`CONN_BUF_SIZE`] this bounds what the
/// device holds for slow host readers: 64 MiB.
pub const MAX_CONNECTIONS: usize = 512;
/// The most payload bytes in one packet, both ways.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// Packets put in the receive queue per call at most.
pub const RX_BUDGET: usize = 64;
/// Host events (from the device's own epoll) served per call at most.
pub const EVENT_BUDGET: usize = 64;
/// How long the guest has to answer a host program's connection request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a closing connection may take to flush its pending bytes to a
/// host reader, or the guest to acknowledge the end (RST), before the
/// device resets it.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a host program has to send its `CONNECT <port>\n` line.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest line a host program may send before its connection.
const MAX_HELLO_LEN: usize = 32;
/// `_4294967295`: what a guest port adds to the listener's path.
const PORT_SUFFIX_MAX: usize = 11;
/// Bytes of a Unix socket path, without the terminating NUL.
const SUN_PATH_MAX: usize = 107;
/// The longest listener path: its ports' paths must fit too.
pub const MAX_PATH_LEN: usize = SUN_PATH_MAX - PORT_SUFFIX_MAX;

// The protocol's values (virtio 1.2, 5.10.6); virtio-bindings has none.
const TYPE_STREAM: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
const SHUTDOWN_RCV: u32 = 1;
const SHUTDOWN_SEND: u32 = 2;
const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;
/// VIRTIO_VSOCK_F_STREAM: stream sockets (implied when not negotiated).
const F_STREAM: u32 = 0;

/// Errors creating a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// CIDs 0 to 2 and 0xffffffff are reserved; the upper 32 bits are zero.
    #[error("vsock guest CID {cid} is reserved or too large (a guest CID is 3 to 4294967294)")]
    InvalidCid {
        /// The CID asked for.
        cid: u64,
    },
    /// Something is at the socket path already (e.g. a socket left behind).
    #[error(
        "vsock socket path {} already exists (left by an earlier run? remove it first)",
        path.display()
    )]
    PathExists {
        /// The path.
        path: PathBuf,
    },
    /// The directory of the socket path does not exist.
    #[error("vsock socket path {}: directory {} does not exist", path.display(), dir.display())]
    NoDirectory {
        /// The path.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// The path is too long for a Unix socket once a guest port is added.
    #[error(
        "vsock socket path {} is {len} bytes long; at most {max} fit (`_<port>` is added for \
         guest connections)",
        path.display()
    )]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The longest path that fits.
        max: usize,
    },
    /// The socket could not be created.
    #[error("cannot listen on vsock socket {}: {source}", path.display())]
    Listen {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A descriptor of the device's own (epoll, timer, eventfd) could not
    /// be created.
    #[error("cannot create the vsock device's {what}: {source}")]
    Setup {
        /// Which one.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}
