//! virtio-rng, the entropy device (virtio 1.2, section 5.4): fills the
//! driver's buffers from a host source such as /dev/urandom.

use std::io::{Read, Write};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, Queue};

use crate::{Memory, VirtioDevice, drain_queue};

/// The size of the one request queue.
pub const QUEUE_SIZE: u16 = 64;
/// Most bytes given for one buffer chain: a driver asking for more gets
/// this much and asks again.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

/// A virtio entropy device reading from `R`.
#[derive(Debug)]
pub struct Rng<R> {
    source: R,
    buffer: Vec<u8>,
    bytes: u64,
}

impl<R: Read + Send> Rng<R> {
    /// A device whose bytes come from `source` (opened by the caller, e.g.
    /// before a sandbox closes the file system).
    pub fn new(source: R) -> Rng<R> {
        Rng { source, buffer: vec![0; MAX_BYTES_PER_REQUEST], bytes: 0 }
    }

    /// Bytes given to the guest so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn serve(&mut self, chain: DescriptorChain<&Memory>, mem: &Memory) -> u32 {
        let Ok(mut writer) = chain.writer(mem) else { return 0 };
        let wanted = writer.available_bytes().min(MAX_BYTES_PER_REQUEST);
        let mut filled = 0;
        while filled < wanted {
            match self.source.read(&mut self.buffer[filled..wanted]) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    log::warn!("entropy source read failed: {err}");
                    break;
                }
            }
        }
        if writer.write_all(&self.buffer[..filled]).is_err() {
            return 0;
        }
        self.bytes += filled as u64;
        u32::try_from(filled).unwrap_or(0)
    }
}

impl<R: Read + Send> VirtioDevice for Rng<R> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX
    }

    fn config(&self) -> &[u8] {
        &[]
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &Memory,
    ) -> Result<bool, virtio_queue::Error> {
        drain_queue(queue, mem, |chain| self.serve(chain, mem))
    }
}
