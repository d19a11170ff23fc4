//! The virtio side of the device: queues, features, configuration space,
//! and the receive buffers it holds until it has packets for them.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{PKT_HEADER_SIZE, VsockPacket};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::muxer::Muxer;
use super::{
    EVENT_QUEUE, Error, F_STREAM, HOST_CID, MAX_PKT_DATA, QUEUE_SIZE, RX_BUDGET, RX_QUEUE, TX_QUEUE,
};
use crate::{Memory, VirtioDevice, drain_queue, queue_pending};

/// Counters of what the device did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockCounters {
    /// Packets put in the receive queue.
    pub rx_packets: u64,
    /// Their payload bytes.
    pub rx_bytes: u64,
    /// Packets taken from the transmit queue (well-formed chains).
    pub tx_packets: u64,
    /// Their payload bytes that went to a host stream.
    pub tx_bytes: u64,
    /// Connections established, both ways.
    pub connections: u64,
    /// RSTs sent to the guest.
    pub rst_sent: u64,
    /// RSTs that found the queue of RSTs full (a guest posting no receive
    /// buffers) and were dropped.
    pub rst_dropped: u64,
    /// Connections refused: no listener at `PATH_<port>`, too many
    /// connections, a host program's bad `CONNECT` line.
    pub refused: u64,
    /// Chains used without serving them: device-writable transmit buffers,
    /// a header-only chain with a length, a length over [`MAX_PKT_DATA`],
    /// buffers outside guest RAM, receive chains without room for a header
    /// and data.
    pub malformed: u64,
    /// Packets from a CID other than the guest's, or not to the host.
    pub bad_cid: u64,
    /// Unknown operations or socket types, lengths on packets that carry
    /// none, operations out of turn (each resets its connection).
    pub bad_op: u64,
    /// Packets for connections that do not exist (answered with RST).
    pub unknown_connection: u64,
    /// Data past the credit the device gave (the connection is reset).
    pub credit_overflow: u64,
    /// Connections reset, and host programs dropped, past a deadline.
    pub timeouts: u64,
}

/// The event id of a transport reset (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET).
const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;

/// A virtio vsock device whose host side is Unix sockets (Firecracker's
/// hybrid vsock).
#[derive(Debug)]
pub struct Vsock {
    config: [u8; 8],
    muxer: Muxer,
    /// Receive chains taken off the ring, waiting for packets.
    rx_chains: VecDeque<DescriptorChain<Arc<Memory>>>,
    /// Event-queue buffers, held (they are for transport resets, which
    /// only a restored snapshot has).
    event_heads: Vec<u16>,
    /// Restored from a snapshot: the guest's connections are gone, and the
    /// next event buffer tells it so (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET).
    transport_reset: bool,
    /// Signalled when the device stopped with work left.
    resume: EventFd,
}

/// Whether a receive chain is one the device can fill: writable, in guest
/// RAM, room for a header and some data.
fn rx_chain_ok(chain: &DescriptorChain<Arc<Memory>>, mem: &Memory) -> bool {
    let mut walk = chain.clone();
    VsockPacket::from_rx_virtq_chain(mem, &mut walk, MAX_PKT_DATA)
        .is_ok_and(|pkt| pkt.data_slice().is_some_and(|data| !data.is_empty()))
}

impl Vsock {
    /// A device for the guest `guest_cid` (3 to 4294967294), listening on a
    /// new Unix socket at `path` (whose directory must exist, and nothing be
    /// at the path; the socket is removed when the device is dropped).
    /// Guest connections to host port P go to `path` + `_P`.
    pub fn new(guest_cid: u64, path: impl AsRef<Path>) -> Result<Vsock, Error> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(Error::InvalidCid { cid: guest_cid });
        }
        let muxer = Muxer::new(guest_cid, path.as_ref())?;
        let resume = EventFd::new(EFD_NONBLOCK)
            .map_err(|source| Error::Setup { what: "eventfd", source })?;
        Ok(Vsock {
            config: guest_cid.to_le_bytes(),
            muxer,
            rx_chains: VecDeque::new(),
            event_heads: Vec::new(),
            transport_reset: false,
            resume,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        u64::from_le_bytes(self.config)
    }

    /// The Unix socket the device listens on.
    pub fn path(&self) -> &Path {
        self.muxer.path()
    }

    /// What the device has done so far.
    pub fn counters(&self) -> VsockCounters {
        self.muxer.counters
    }

    /// Open connections (host programs still sending their `CONNECT` line
    /// included).
    pub fn connections(&self) -> usize {
        self.muxer.connections()
    }

    /// Guest bytes the device holds for host readers that did not take them
    /// yet, over all connections.
    pub fn pending_bytes(&self) -> usize {
        self.muxer.pending_bytes()
    }

    #[cfg(test)]
    pub(super) fn set_timeouts(&mut self, timeouts: super::muxer::Timeouts) {
        self.muxer.timeouts = timeouts;
    }

    fn resume_later(&self) {
        if let Err(err) = self.resume.write(1) {
            log::warn!("virtio-vsock: cannot signal its own eventfd: {err}");
        }
    }

    /// Takes the receive queue's available chains (at most `*budget`),
    /// keeping those it can fill; the others are used at once, empty.
    fn take_rx_chains(
        &mut self,
        queue: &mut Queue,
        mem: &Memory,
        budget: &mut usize,
    ) -> Result<bool, virtio_queue::Error> {
        if !queue_pending(queue, mem)? {
            return Ok(false);
        }
        let shared = Arc::new(mem.clone());
        let mut used = false;
        while *budget > 0 {
            let Some(chain) = queue.iter(shared.clone())?.next() else { break };
            *budget -= 1;
            // A driver never has more chains out than the ring holds.
            let room = self.rx_chains.len() < usize::from(queue.size());
            if room && rx_chain_ok(&chain, mem) {
                self.rx_chains.push_back(chain);
            } else {
                self.muxer.counters.malformed += 1;
                queue.add_used(mem, chain.head_index(), 0)?;
                used = true;
            }
        }
        Ok(used)
    }

    /// Moves packets for the guest into receive buffers until there are no
    /// more packets or no more buffers, at most [`RX_BUDGET`] of them.
    /// Returns whether it used any chain.
    fn receive(&mut self, queue: &mut Queue, mem: &Memory) -> Result<bool, virtio_queue::Error> {
        if !queue.ready() {
            return Ok(false);
        }
        let mut used = false;
        let mut packets = 0;
        let mut chains = 2 * usize::from(queue.size());
        queue.disable_notification(mem)?;
        loop {
            used |= self.take_rx_chains(queue, mem, &mut chains)?;
            while self.muxer.has_rx() {
                let Some(chain) = self.rx_chains.pop_front() else { break };
                if packets == RX_BUDGET {
                    self.rx_chains.push_front(chain);
                    self.resume_later();
                    return Ok(used);
                }
                let head = chain.head_index();
                let mut walk = chain.clone();
                let filled = match VsockPacket::from_rx_virtq_chain(mem, &mut walk, MAX_PKT_DATA) {
                    // The driver may have changed the chain since it was taken.
                    Ok(mut pkt) if pkt.data_slice().is_some_and(|data| !data.is_empty()) => {
                        match self.muxer.fill_rx(&mut pkt) {
                            Some(len) => Some(PKT_HEADER_SIZE as u32 + len),
                            None => {
                                // What was queued had nothing to say.
                                self.rx_chains.push_front(chain);
                                return Ok(used);
                            }
                        }
                    }
                    _ => {
                        self.muxer.counters.malformed += 1;
                        None
                    }
                };
                if filled.is_some() {
                    packets += 1;
                }
                queue.add_used(mem, head, filled.unwrap_or(0))?;
                used = true;
            }
            if !self.muxer.has_rx() {
                // Buffers left over wait for the next packets.
                return Ok(used);
            }
            if chains == 0 {
                // The ring may hold more than this call takes.
                self.resume_later();
                return Ok(used);
            }
            if !queue.enable_notification(mem)? {
                // The driver notifies the queue when it adds buffers.
                return Ok(used);
            }
            queue.disable_notification(mem)?;
        }
    }

    /// Serves one chain of the transmit queue.
    fn transmit(&mut self, mut chain: DescriptorChain<&Memory>, mem: &Memory) {
        match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
            Ok(pkt) => self.muxer.handle_tx(&pkt),
            Err(err) => {
                log::debug!("virtio-vsock: dropped a malformed transmit chain: {err}");
                self.muxer.counters.malformed += 1;
            }
        }
    }

    /// Holds the event queue's buffers (off the ring, so that they are no
    /// pending work).
    fn take_event_buffers(
        &mut self,
        queue: &mut Queue,
        mem: &Memory,
    ) -> Result<bool, virtio_queue::Error> {
        let mut used = false;
        for _ in 0..queue.size() {
            let Some(chain) = queue.iter(mem)?.next() else { break };
            if self.transport_reset {
                // struct virtio_vsock_event { le32 id; }, id 0: the
                // transport was reset (virtio 1.2, 5.10.6.5).
                let head = chain.head_index();
                let written = chain
                    .clone()
                    .find(|desc| desc.is_write_only() && desc.len() >= 4)
                    .is_some_and(|desc| {
                        vm_memory::Bytes::write_obj(
                            mem,
                            VIRTIO_VSOCK_EVENT_TRANSPORT_RESET,
                            desc.addr(),
                        )
                        .is_ok()
                    });
                if written {
                    self.transport_reset = false;
                }
                queue.add_used(mem, head, if written { 4 } else { 0 })?;
                used = true;
                continue;
            }
            if self.event_heads.len() < usize::from(queue.size()) {
                self.event_heads.push(chain.head_index());
            } else {
                // More than the ring holds: a driver's bug.
                self.muxer.counters.malformed += 1;
                queue.add_used(mem, chain.head_index(), 0)?;
                used = true;
            }
        }
        Ok(used)
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << F_STREAM
    }

    /// The guest's CID, a little-endian u64.
    fn config(&self) -> &[u8] {
        &self.config
    }

    fn activate(&mut self, _features: u64) {
        // Host programs may have connected before: serve them now.
        self.resume_later();
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &Memory,
    ) -> Result<bool, virtio_queue::Error> {
        match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => {
                let used = drain_queue(queue, mem, |chain| {
                    self.transmit(chain, mem);
                    0
                })?;
                if self.muxer.has_rx() {
                    // Answers go to the receive queue, served from the
                    // device's own event.
                    self.resume_later();
                }
                Ok(used)
            }
            EVENT_QUEUE => self.take_event_buffers(queue, mem),
            _ => Ok(false),
        }
    }

    fn held_chains(&self, index: usize) -> u16 {
        // Receive chains are taken and filled in ring order (one that
        // cannot be filled yet goes back to the front); event buffers are
        // held in ring order.
        let held = match index {
            RX_QUEUE => self.rx_chains.len(),
            EVENT_QUEUE => self.event_heads.len(),
            _ => 0,
        };
        u16::try_from(held).unwrap_or(u16::MAX)
    }

    fn restored(&mut self) {
        // A restored device has no connections (the host side's sockets
        // did not survive): the guest resets its own at the next event
        // buffer, as Firecracker does.
        self.transport_reset = true;
    }

    fn reset(&mut self) {
        self.transport_reset = false;
        self.muxer.reset();
        self.rx_chains.clear();
        self.event_heads.clear();
        // A pending resume event is left as it is: served after the reset,
        // it finds nothing to do. (A reset runs on the thread that wrote
        // the status register, which need not be allowed to read.)
    }

    /// The device's epoll (its listener, its streams, its timer), then its
    /// eventfd, signalled when it has work left.
    fn host_fds(&self) -> Vec<RawFd> {
        vec![self.muxer.epoll_fd(), self.resume.as_raw_fd()]
    }

    fn host_event(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &Memory,
    ) -> Result<u64, virtio_queue::Error> {
        if index == 1 {
            let _ = self.resume.read();
        }
        if self.muxer.host_events() {
            self.resume_later();
        }
        let Some(queue) = queues.get_mut(RX_QUEUE) else { return Ok(0) };
        Ok(u64::from(self.receive(queue, mem)?) << RX_QUEUE)
    }
}
