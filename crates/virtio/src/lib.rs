#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod block;
mod device;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod tap;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod vsock;

pub use device::{Interrupt, QueueNotify, VirtioDevice, drain_queue, queue_pending};
pub use mmio::{MmioTransport, MmioTransportState, QueueState, TransportPersist};
pub use virtio_queue::{DescriptorChain, Queue, QueueT};

/// The guest memory every device and the transport work on.
pub type Memory = vm_memory::GuestMemoryMmap;

/// Size of one virtio-mmio device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// Errors of this crate: opening a device's backing resource.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The backing file is neither a regular file nor a block device.
    #[error("{path} is not a regular file or a block device")]
    NotADisk {
        /// The file.
        path: String,
    },
    /// The disk image holds no complete 512-byte sector.
    #[error("{path} is empty ({size} bytes; a disk needs at least one 512-byte sector)")]
    EmptyDisk {
        /// The file.
        path: String,
        /// Its size in bytes.
        size: u64,
    },
    /// Another user (another VMM, or another disk of this one) holds the file.
    #[error("{path} is in use by another process or another disk (it is locked)")]
    Locked {
        /// The file.
        path: String,
    },
    /// The disk's serial is longer than the 20 bytes virtio-blk has for it.
    #[error("disk serial {id:?} is {len} bytes long; at most 20 fit")]
    SerialTooLong {
        /// The serial.
        id: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A queue could not be created.
    #[error("cannot create a virtio queue of size {size}: {source:?}")]
    Queue {
        /// The queue's maximum size.
        size: u16,
        /// What virtio-queue reported.
        source: virtio_queue::Error,
    },
    /// A saved transport state that does not fit the device.
    #[error("invalid saved state of virtio device {device}: {reason}")]
    InvalidState {
        /// The device type.
        device: u32,
        /// What is wrong.
        reason: String,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
