//! virtio-net (virtio 1.2, section 5.1) on a tap device: one receive and
//! one transmit queue, a MAC address, mergeable receive buffers, and the
//! checksum and TCP segmentation offloads the guest accepts, which the tap
//! is then told to use (and no others).
//!
//! Receiving is driven from two sides: the tap has frames (the VMM watches
//! [`VirtioDevice::host_fds`] edge-triggered and calls
//! [`VirtioDevice::host_event`]) and the driver posted buffers (the receive
//! queue's notification). Either way the device moves frames until the tap
//! would block or the guest has no buffer for the next frame; a frame read
//! but not placed is kept and goes first when buffers come. The receive
//! queue's available buffers are taken off the ring as soon as the device
//! sees them and kept until frames fill them, so a ring full of empty
//! buffers never looks like work still to do.

use std::collections::VecDeque;
use std::io;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, virtio_net_hdr_v1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::tap::{TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6, Tap, TapIo, VNET_HDR_LEN};
use crate::{Memory, VirtioDevice, drain_queue};

/// The receive queue's index.
pub const RX_QUEUE: usize = 0;
/// The transmit queue's index.
pub const TX_QUEUE: usize = 1;
/// The size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The largest frame, virtio-net header included: 65550 bytes of
/// Ethernet frame (a 64 KiB TCP segment and its headers) and the 12-byte
/// header; what a driver without mergeable buffers posts for big packets.
pub const MAX_FRAME_LEN: usize = 65562;
/// Frames read from the tap per call at most; when this many were read
/// the device signals its own event descriptor (the second of
/// [`VirtioDevice::host_fds`]) to be called again.
pub const RX_BUDGET: usize = 64;

const _: () = assert!(size_of::<virtio_net_hdr_v1>() == VNET_HDR_LEN);
/// Where `num_buffers` lies in the header.
const NUM_BUFFERS_AT: usize = 10;

/// Counters of what the device did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames given to the guest.
    pub rx_frames: u64,
    /// Their bytes (virtio-net headers not counted).
    pub rx_bytes: u64,
    /// Frames from the tap the guest could not take: larger than its
    /// buffer (or its whole ring), or with offloads it did not accept.
    pub rx_dropped: u64,
    /// Frames the guest sent that reached the tap.
    pub tx_frames: u64,
    /// Their bytes (virtio-net headers not counted).
    pub tx_bytes: u64,
    /// Frames the tap refused.
    pub tx_dropped: u64,
    /// Chains used without serving them: device-writable transmit buffers,
    /// device-readable receive buffers, no room for a full header,
    /// buffers outside guest RAM, transmit frames larger than
    /// [`MAX_FRAME_LEN`] or with offloads that were not negotiated.
    pub malformed: u64,
}

/// The offloads (`TUN_F_*`) a tap may use for a guest that accepted
/// `features`: exactly what the guest can take, and only combinations the
/// kernel accepts (segmentation needs checksum offload; ECN needs
/// segmentation).
pub fn tap_offloads(features: u64) -> u32 {
    let has = |bit: u32| features & (1 << bit) != 0;
    let mut flags = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        flags |= TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= TUN_F_TSO6;
        }
        if has(VIRTIO_NET_F_GUEST_ECN) && flags & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
            flags |= TUN_F_TSO_ECN;
        }
    }
    flags
}

/// A receive chain taken off the ring: its head and its device-writable
/// buffers, all in guest RAM.
#[derive(Debug)]
struct RxChain {
    head: u16,
    buffers: Vec<(GuestAddress, usize)>,
    capacity: usize,
}

impl RxChain {
    /// The chain's buffers, or None when one is device-readable or
    /// outside guest RAM, or they cannot hold a header.
    fn parse(chain: DescriptorChain<&Memory>, mem: &Memory) -> Option<RxChain> {
        let head = chain.head_index();
        let mut buffers = Vec::new();
        let mut capacity = 0usize;
        for desc in chain {
            let len = desc.len() as usize;
            if !desc.is_write_only() || !mem.check_range(desc.addr(), len) {
                return None;
            }
            if len > 0 {
                buffers.push((desc.addr(), len));
                capacity = capacity.checked_add(len)?;
            }
        }
        (capacity >= VNET_HDR_LEN).then_some(RxChain { head, buffers, capacity })
    }

    /// Writes `data` at the start of the chain.
    fn write(&self, mem: &Memory, mut data: &[u8]) -> Result<(), virtio_queue::Error> {
        for &(addr, len) in &self.buffers {
            if data.is_empty() {
                break;
            }
            let (now, rest) = data.split_at(len.min(data.len()));
            mem.write_slice(now, addr).map_err(virtio_queue::Error::GuestMemory)?;
            data = rest;
        }
        Ok(())
    }
}

/// What became of the frame waiting to be placed.
enum Placement {
    Placed,
    Dropped,
    NoRoom,
}

/// What a read from the tap gave.
enum TapRead {
    Frame,
    Skipped,
    Empty,
}

/// Puts `used` (head, length) entries in the used ring so the driver sees
/// them all at once: one store of the used index. (A driver that took the
/// first buffer of a frame spanning several and found the others missing
/// would drop the frame.)
fn add_used_together(
    queue: &mut Queue,
    mem: &Memory,
    used: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    let Some((&(last_head, last_len), rest)) = used.split_last() else { return Ok(()) };
    let size = queue.size();
    let start = Wrapping(queue.next_used());
    for (i, &(head, len)) in rest.iter().enumerate() {
        if head >= size {
            return Err(virtio_queue::Error::InvalidDescriptorIndex);
        }
        let slot = (start + Wrapping(i as u16)).0 % size;
        let addr = GuestAddress(queue.used_ring())
            .checked_add(4 + 8 * u64::from(slot))
            .ok_or(virtio_queue::Error::AddressOverflow)?;
        let mut element = [0u8; 8];
        element[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        element[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&element, addr).map_err(virtio_queue::Error::GuestMemory)?;
    }
    // The last entry publishes them all (add_used's store of the index
    // releases the writes above).
    let last = (start + Wrapping(rest.len() as u16)).0;
    queue.set_next_used(last);
    queue.add_used(mem, last_head, last_len)?;
    // The queue counts the entries added through add_used to decide on an
    // interrupt (EVENT_IDX). Count the others by adding the last entry
    // again in place: the same bytes in the same slot and the same index,
    // nothing the driver can tell apart.
    for _ in rest {
        queue.set_next_used(last);
        queue.add_used(mem, last_head, last_len)?;
    }
    Ok(())
}

/// A virtio network device on a tap (or anything else that is [`TapIo`]).
#[derive(Debug)]
pub struct Net<T = Tap> {
    tap: T,
    config: [u8; 6],
    features: u64,
    /// The frame read from the tap and not placed yet: `rx_frame[..rx_len]`.
    rx_frame: Vec<u8>,
    rx_len: usize,
    /// Receive chains taken off the ring, in order.
    rx_chains: VecDeque<RxChain>,
    rx_used: Vec<(u16, u32)>,
    tx_frame: Vec<u8>,
    /// Signalled when receiving stopped with work left (see [`RX_BUDGET`]).
    resume: EventFd,
    counters: NetCounters,
}

impl<T: TapIo> Net<T> {
    /// A device with MAC address `mac` on `tap` (opened by the caller, e.g.
    /// with [`Tap::open`], before a sandbox). Its offloads are turned off
    /// until a driver accepts some. Fails when they cannot be or when no
    /// eventfd can be made.
    pub fn new(mut tap: T, mac: [u8; 6]) -> io::Result<Net<T>> {
        tap.set_offload(0)?;
        Ok(Net {
            tap,
            config: mac,
            features: 0,
            rx_frame: vec![0; MAX_FRAME_LEN],
            rx_len: 0,
            rx_chains: VecDeque::new(),
            rx_used: Vec::new(),
            tx_frame: vec![0; MAX_FRAME_LEN],
            resume: EventFd::new(EFD_NONBLOCK)?,
            counters: NetCounters::default(),
        })
    }

    /// The tap.
    pub fn tap(&self) -> &T {
        &self.tap
    }

    /// The MAC address the guest sees.
    pub fn mac(&self) -> [u8; 6] {
        self.config
    }

    /// What the device has done so far.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    fn has(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    /// Takes the receive queue's available chains (at most `*budget`),
    /// keeping the good ones; malformed ones are used at once, empty.
    /// Returns whether any was used.
    fn take_rx_chains(
        &mut self,
        queue: &mut Queue,
        mem: &Memory,
        budget: &mut usize,
    ) -> Result<bool, virtio_queue::Error> {
        let mut used = false;
        while *budget > 0 {
            let Some(chain) = queue.iter(mem)?.next() else { break };
            *budget -= 1;
            let head = chain.head_index();
            // A driver never has more chains out than the ring holds.
            let room = self.rx_chains.len() < usize::from(queue.size());
            match RxChain::parse(chain, mem) {
                Some(chain) if room => self.rx_chains.push_back(chain),
                _ => {
                    self.counters.malformed += 1;
                    queue.add_used(mem, head, 0)?;
                    used = true;
                }
            }
        }
        Ok(used)
    }

    /// Whether the header of the frame from the tap asks for nothing the
    /// guest did not accept; clears DATA_VALID for a guest without
    /// checksum offload (its flags must be zero).
    fn rx_header_ok(&mut self) -> bool {
        let guest_csum = self.has(VIRTIO_NET_F_GUEST_CSUM);
        let flags = u32::from(self.rx_frame[0]);
        if guest_csum {
            self.rx_frame[0] =
                (flags & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID)) as u8;
        } else {
            if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
                return false;
            }
            self.rx_frame[0] = 0;
        }
        let gso = u32::from(self.rx_frame[1]);
        let segmented = match gso & !VIRTIO_NET_HDR_GSO_ECN {
            VIRTIO_NET_HDR_GSO_NONE => return gso == VIRTIO_NET_HDR_GSO_NONE,
            VIRTIO_NET_HDR_GSO_TCPV4 => self.has(VIRTIO_NET_F_GUEST_TSO4),
            VIRTIO_NET_HDR_GSO_TCPV6 => self.has(VIRTIO_NET_F_GUEST_TSO6),
            _ => false,
        };
        segmented
            && guest_csum
            && (gso & VIRTIO_NET_HDR_GSO_ECN == 0 || self.has(VIRTIO_NET_F_GUEST_ECN))
    }

    /// Reads the next frame from the tap into `rx_frame`.
    fn read_frame(&mut self) -> TapRead {
        match self.tap.read(&mut self.rx_frame) {
            Ok(0) => TapRead::Empty,
            Ok(len) if len < VNET_HDR_LEN => {
                self.counters.rx_dropped += 1;
                TapRead::Skipped
            }
            Ok(len) => {
                if self.rx_header_ok() {
                    self.rx_len = len;
                    TapRead::Frame
                } else {
                    log::debug!(
                        "virtio-net: dropped a frame from the tap with offloads the guest did not \
                         accept (flags {:#x}, gso type {:#x})",
                        self.rx_frame[0],
                        self.rx_frame[1]
                    );
                    self.counters.rx_dropped += 1;
                    TapRead::Skipped
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => TapRead::Empty,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => TapRead::Skipped,
            Err(err) => {
                log::warn!("virtio-net: reading from the tap failed: {err}");
                TapRead::Empty
            }
        }
    }

    /// Puts the waiting frame in the chains taken off the ring.
    fn place(&mut self, queue: &mut Queue, mem: &Memory) -> Result<Placement, virtio_queue::Error> {
        let len = self.rx_len;
        let count = if self.has(VIRTIO_NET_F_MRG_RXBUF) {
            let (mut room, mut count) = (0, 0);
            for chain in &self.rx_chains {
                if room >= len {
                    break;
                }
                room += chain.capacity;
                count += 1;
            }
            if room < len {
                // Wait for more buffers, unless the whole ring is too small.
                if self.rx_chains.len() < usize::from(queue.size()) {
                    return Ok(Placement::NoRoom);
                }
                self.drop_rx_frame();
                return Ok(Placement::Dropped);
            }
            count
        } else {
            match self.rx_chains.front() {
                None => return Ok(Placement::NoRoom),
                Some(chain) if chain.capacity < len => {
                    // The buffer stays for the next frame.
                    self.drop_rx_frame();
                    return Ok(Placement::Dropped);
                }
                Some(_) => 1,
            }
        };
        let num_buffers = u16::try_from(count).unwrap_or(u16::MAX);
        self.rx_frame[NUM_BUFFERS_AT..VNET_HDR_LEN].copy_from_slice(&num_buffers.to_le_bytes());
        self.rx_used.clear();
        let mut offset = 0;
        for chain in self.rx_chains.drain(..count) {
            let part = (len - offset).min(chain.capacity);
            chain.write(mem, &self.rx_frame[offset..offset + part])?;
            self.rx_used.push((chain.head, part as u32));
            offset += part;
        }
        add_used_together(queue, mem, &self.rx_used)?;
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += (len - VNET_HDR_LEN) as u64;
        self.rx_len = 0;
        Ok(Placement::Placed)
    }

    fn drop_rx_frame(&mut self) {
        log::debug!(
            "virtio-net: dropped a {}-byte frame: the guest's buffers are smaller",
            self.rx_len
        );
        self.counters.rx_dropped += 1;
        self.rx_len = 0;
    }

    /// Moves frames from the tap to the receive queue until the tap would
    /// block or the guest has no buffer for the next frame, reading at most
    /// [`RX_BUDGET`] frames. Returns whether it used any chain.
    fn receive(&mut self, queue: &mut Queue, mem: &Memory) -> Result<bool, virtio_queue::Error> {
        if !queue.ready() {
            return Ok(false);
        }
        let mut used = false;
        let mut frames = 0;
        let mut chains = 2 * usize::from(queue.size());
        let mut rechecked = false;
        // Notifications are only wanted while waiting for buffers.
        queue.disable_notification(mem)?;
        loop {
            let left = chains;
            used |= self.take_rx_chains(queue, mem, &mut chains)?;
            if rechecked && chains == left {
                // The ring said it had more and gave nothing.
                return Ok(used);
            }
            rechecked = false;
            if self.rx_len == 0 && !self.rx_chains.is_empty() {
                if frames == RX_BUDGET {
                    self.resume_later();
                    return Ok(used);
                }
                frames += 1;
                match self.read_frame() {
                    TapRead::Frame => {}
                    TapRead::Skipped => continue,
                    // The tap signals (edge) when the next frame comes.
                    TapRead::Empty => return Ok(used),
                }
            }
            if self.rx_len > 0 {
                match self.place(queue, mem)? {
                    Placement::Placed => {
                        used = true;
                        continue;
                    }
                    Placement::Dropped => continue,
                    Placement::NoRoom => {}
                }
            }
            // No buffer for the next frame.
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
            rechecked = true;
        }
    }

    fn resume_later(&self) {
        if let Err(err) = self.resume.write(1) {
            log::warn!("virtio-net: cannot signal its own eventfd: {err}");
        }
    }

    /// Whether the header of a frame from the guest asks only for
    /// negotiated offloads; clears flags the tap must not see.
    fn tx_header_ok(&mut self) -> bool {
        let flags = u32::from(self.tx_frame[0]) & VIRTIO_NET_HDR_F_NEEDS_CSUM;
        if flags != 0 && !self.has(VIRTIO_NET_F_CSUM) {
            return false;
        }
        // Other flags (DATA_VALID, RSC_INFO) mean nothing on transmit.
        self.tx_frame[0] = flags as u8;
        let gso = u32::from(self.tx_frame[1]);
        let allowed = match gso & !VIRTIO_NET_HDR_GSO_ECN {
            VIRTIO_NET_HDR_GSO_NONE => return gso == VIRTIO_NET_HDR_GSO_NONE,
            VIRTIO_NET_HDR_GSO_TCPV4 => self.has(VIRTIO_NET_F_HOST_TSO4),
            VIRTIO_NET_HDR_GSO_TCPV6 => self.has(VIRTIO_NET_F_HOST_TSO6),
            _ => false,
        };
        allowed && (gso & VIRTIO_NET_HDR_GSO_ECN == 0 || self.has(VIRTIO_NET_F_HOST_ECN))
    }

    /// Sends the frame of one transmit chain to the tap.
    fn transmit(&mut self, chain: DescriptorChain<&Memory>, mem: &Memory) {
        if chain.clone().any(|desc| desc.is_write_only()) {
            self.counters.malformed += 1;
            return;
        }
        let Ok(mut reader) = chain.reader(mem) else {
            self.counters.malformed += 1;
            return;
        };
        let len = reader.available_bytes();
        if !(VNET_HDR_LEN..=MAX_FRAME_LEN).contains(&len)
            || io::Read::read_exact(&mut reader, &mut self.tx_frame[..len]).is_err()
            || !self.tx_header_ok()
        {
            self.counters.malformed += 1;
            return;
        }
        match self.tap.write(&self.tx_frame[..len]) {
            Ok(_) => {
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += (len - VNET_HDR_LEN) as u64;
            }
            Err(err) => {
                log::debug!("virtio-net: the tap refused a {len}-byte frame: {err}");
                self.counters.tx_dropped += 1;
            }
        }
    }
}

impl<T: TapIo> VirtioDevice for Net<T> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        [
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_ECN,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_ECN,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_F_VERSION_1,
        ]
        .iter()
        .fold(0, |features, bit| features | 1 << bit)
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn activate(&mut self, features: u64) {
        self.features = features;
        let offloads = tap_offloads(features);
        if let Err(err) = self.tap.set_offload(offloads) {
            // The tap keeps its offloads off (set so at creation and reset);
            // frames with others would be dropped anyway.
            log::error!(
                "virtio-net: the guest accepted offloads {offloads:#x} ({}), the tap keeps \
                 them off: {err}",
                crate::tap::offload_names(offloads)
            );
        }
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &Memory,
    ) -> Result<bool, virtio_queue::Error> {
        match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => drain_queue(queue, mem, |chain| {
                self.transmit(chain, mem);
                0
            }),
            _ => Ok(false),
        }
    }

    fn held_chains(&self, index: usize) -> u16 {
        // Receive chains are taken and filled in ring order.
        if index == RX_QUEUE { u16::try_from(self.rx_chains.len()).unwrap_or(u16::MAX) } else { 0 }
    }

    fn reset(&mut self) {
        self.features = 0;
        if self.rx_len > 0 {
            self.counters.rx_dropped += 1;
            self.rx_len = 0;
        }
        self.rx_chains.clear();
        // A pending resume event stays: served after the reset it finds
        // nothing to do. (A reset runs on the thread that wrote the status
        // register, a vCPU thread in a VMM, whose sandbox allows no reads.)
        if let Err(err) = self.tap.set_offload(0) {
            log::error!("virtio-net: cannot turn the tap's offloads off: {err}");
        }
    }

    /// The tap, then the device's own eventfd, signalled when receiving
    /// stopped with frames perhaps left (after [`RX_BUDGET`] frames).
    fn host_fds(&self) -> Vec<RawFd> {
        vec![self.tap.as_raw_fd(), self.resume.as_raw_fd()]
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
        let Some(queue) = queues.get_mut(RX_QUEUE) else { return Ok(0) };
        Ok(u64::from(self.receive(queue, mem)?) << RX_QUEUE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::SocketTap;
    use crate::testing::*;
    use crate::{MmioTransport, QueueNotify};
    use std::os::unix::net::UnixDatagram;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const BASE: u64 =
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_NET_F_MAC;
    const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
    const GUEST_CSUM: u64 = 1 << VIRTIO_NET_F_GUEST_CSUM;
    const GUEST_TSO4: u64 = 1 << VIRTIO_NET_F_GUEST_TSO4;
    const GUEST_TSO6: u64 = 1 << VIRTIO_NET_F_GUEST_TSO6;
    const GUEST_ECN: u64 = 1 << VIRTIO_NET_F_GUEST_ECN;
    const CSUM: u64 = 1 << VIRTIO_NET_F_CSUM;
    const HOST_TSO4: u64 = 1 << VIRTIO_NET_F_HOST_TSO4;
    /// Receive buffers, 64 KiB apart.
    const RX_AT: u64 = 0x10_0000;
    /// Transmit buffers.
    const TX_AT: u64 = 0x50_0000;
    const MEM_SIZE: usize = 8 << 20;
    const RX_RING: u64 = 0x1000;
    const TX_RING: u64 = 0x8000;

    struct Rig<T: TapIo> {
        transport: MmioTransport<Net<T>>,
        rx: TestQueue,
        tx: TestQueue,
        mem: Memory,
        irq: CountingInterrupt,
    }

    fn rig_on<T: TapIo>(tap: T, features: u64) -> Rig<T> {
        let mem = memory(MEM_SIZE);
        let irq = CountingInterrupt::default();
        let device = Net::new(tap, MAC).unwrap();
        let mut transport = MmioTransport::new(device, mem.clone(), Box::new(irq.clone())).unwrap();
        assert!(negotiate(&mut transport, features));
        let rx = TestQueue::new(QUEUE_SIZE, RX_RING);
        rx.install(&mut transport, RX_QUEUE as u32);
        let tx = TestQueue::new(QUEUE_SIZE, TX_RING);
        tx.install(&mut transport, TX_QUEUE as u32);
        driver_ok(&mut transport);
        Rig { transport, rx, tx, mem, irq }
    }

    fn socket_rig(features: u64) -> (Rig<SocketTap>, UnixDatagram) {
        let (tap, network) = SocketTap::pair().unwrap();
        (rig_on(tap, features), network)
    }

    /// A frame with its virtio-net header (`flags`, `gso_type`, the rest
    /// zero) and `len` bytes of Ethernet frame.
    fn frame(len: usize, flags: u8, gso_type: u8, seed: u8) -> Vec<u8> {
        let mut frame = vec![0u8; VNET_HDR_LEN + len];
        frame[0] = flags;
        frame[1] = gso_type;
        let ethernet = &mut frame[VNET_HDR_LEN..];
        for (i, byte) in ethernet.iter_mut().enumerate() {
            *byte = seed.wrapping_add(i as u8);
        }
        if len >= 14 {
            ethernet[..6].fill(0xff);
            ethernet[6..12].copy_from_slice(&MAC);
            ethernet[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        }
        frame
    }

    /// `frame` as the guest must see it: with `num_buffers`.
    fn received(frame: &[u8], num_buffers: u16) -> Vec<u8> {
        let mut frame = frame.to_vec();
        frame[NUM_BUFFERS_AT..VNET_HDR_LEN].copy_from_slice(&num_buffers.to_le_bytes());
        frame
    }

    impl<T: TapIo> Rig<T> {
        fn net(&self) -> &Net<T> {
            self.transport.device()
        }

        /// Posts a receive chain of one buffer of `len` bytes in slot `slot`
        /// (64 KiB each).
        fn post(&mut self, slot: u64, len: u32) -> u16 {
            self.rx.add_chain(&self.mem, &[(RX_AT + slot * 0x1_0000, len, true)])
        }

        fn guest(&self, slot: u64, len: usize) -> Vec<u8> {
            let mut data = vec![0u8; len];
            self.mem.read_slice(&mut data, GuestAddress(RX_AT + slot * 0x1_0000)).unwrap();
            data
        }

        /// Sends `frame` from the guest, header and data in separate
        /// buffers, and returns the used entries.
        fn send(&mut self, frame: &[u8]) -> Vec<(u32, u32)> {
            let (header, data) = frame.split_at(VNET_HDR_LEN.min(frame.len()));
            self.mem.write_slice(header, GuestAddress(TX_AT)).unwrap();
            self.mem.write_slice(data, GuestAddress(TX_AT + 0x1000)).unwrap();
            let mut chain = vec![(TX_AT, header.len() as u32, false)];
            if !data.is_empty() {
                chain.push((TX_AT + 0x1000, data.len() as u32, false));
            }
            self.tx.add_chain(&self.mem, &chain);
            self.transport.queue_notify(TX_QUEUE);
            self.tx.take_used(&self.mem)
        }
    }

    fn nothing_from(network: &UnixDatagram) {
        let mut buf = [0u8; 16];
        assert_eq!(network.recv(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn identity_features_and_mac() {
        let (mut rig, _network) = socket_rig(BASE);
        let t = &mut rig.transport;
        assert_eq!(read_reg(t, 0x008), VIRTIO_ID_NET);
        for queue in [0, 1] {
            write_reg(t, 0x030, queue);
            assert_eq!(read_reg(t, 0x034), u32::from(QUEUE_SIZE));
        }
        write_reg(t, 0x030, 2);
        assert_eq!(read_reg(t, 0x034), 0, "no control queue");
        let features = t.device().features();
        for bit in [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
        ] {
            assert_ne!(features & 1 << bit, 0, "feature {bit}");
        }
        assert_eq!(features & 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_CTRL_VQ, 0);
        assert_eq!(read_config(t, 0, 6), MAC);
        assert_eq!(t.device().mac(), MAC);
        assert_eq!(t.device().host_fds().len(), 2);
    }

    #[test]
    fn tap_offloads_are_exactly_what_the_guest_takes() {
        let csum = TUN_F_CSUM;
        let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        for (features, offloads) in [
            (BASE, 0),
            (BASE | MRG | CSUM | HOST_TSO4, 0),
            (BASE | GUEST_CSUM, csum),
            (BASE | GUEST_CSUM | GUEST_TSO4, csum | TUN_F_TSO4),
            (BASE | GUEST_CSUM | GUEST_TSO6, csum | TUN_F_TSO6),
            (BASE | GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6, tso),
            (BASE | GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6 | GUEST_ECN, tso | TUN_F_TSO_ECN),
            // Dependencies the driver broke: the tap does less, not more.
            (BASE | GUEST_TSO4 | GUEST_TSO6, 0),
            (BASE | GUEST_CSUM | GUEST_ECN, csum),
        ] {
            assert_eq!(tap_offloads(features), offloads, "features {features:#x}");
            let (mut rig, _network) = socket_rig(features);
            assert_eq!(rig.net().tap().offloads(), offloads, "features {features:#x}");
            write_reg(&mut rig.transport, 0x70, 0);
            assert_eq!(rig.net().tap().offloads(), 0, "reset turns them off");
        }
    }

    #[test]
    fn a_transmitted_frame_reaches_the_tap() {
        let (mut rig, network) = socket_rig(BASE);
        let sent = frame(100, 0, 0, 1);
        assert_eq!(rig.send(&sent), vec![(0, 0)]);
        let mut got = vec![0u8; MAX_FRAME_LEN];
        let len = network.recv(&mut got).unwrap();
        assert_eq!(&got[..len], &sent[..]);
        // The largest frame passes too.
        let big = frame(MAX_FRAME_LEN - VNET_HDR_LEN, 0, 0, 2);
        assert_eq!(rig.send(&big), vec![(2, 0)]);
        let len = network.recv(&mut got).unwrap();
        assert_eq!(&got[..len], &big[..]);
        let counters = rig.net().counters();
        assert_eq!(
            (counters.tx_frames, counters.tx_bytes, counters.malformed),
            (2, 100 + (MAX_FRAME_LEN - VNET_HDR_LEN) as u64, 0)
        );
        assert!(rig.irq.count() >= 1);
    }

    #[test]
    fn transmit_offloads_must_have_been_negotiated() {
        let (mut rig, network) = socket_rig(BASE);
        // Checksum offload and TSO without CSUM / HOST_TSO4.
        rig.send(&frame(60, VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 0, 0));
        rig.send(&frame(60, 0, VIRTIO_NET_HDR_GSO_TCPV4 as u8, 0));
        nothing_from(&network);
        assert_eq!(rig.net().counters().malformed, 2);
        // DATA_VALID means nothing on transmit and is not passed on.
        rig.send(&frame(60, VIRTIO_NET_HDR_F_DATA_VALID as u8, 0, 0));
        let mut got = [0u8; 128];
        assert_eq!(network.recv(&mut got).unwrap(), 72);
        assert_eq!(got[0], 0);

        let (mut rig, network) = socket_rig(BASE | CSUM | HOST_TSO4);
        let tso = frame(60, VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, VIRTIO_NET_HDR_GSO_TCPV4 as u8, 0);
        rig.send(&tso);
        assert_eq!(network.recv(&mut got).unwrap(), 72);
        assert_eq!(&got[..72], &tso[..]);
        // TCPv6 and ECN were not negotiated.
        rig.send(&frame(60, 1, VIRTIO_NET_HDR_GSO_TCPV6 as u8, 0));
        rig.send(&frame(60, 1, (VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN) as u8, 0));
        nothing_from(&network);
        assert_eq!(rig.net().counters().malformed, 2);
    }

    #[test]
    fn malformed_transmit_chains_are_used_and_dropped() {
        let (mut rig, network) = socket_rig(BASE);
        let mem = rig.mem.clone();
        // A device-writable buffer.
        rig.tx.add_chain(&mem, &[(TX_AT, 12, false), (TX_AT + 0x1000, 60, true)]);
        // No full header.
        rig.tx.add_chain(&mem, &[(TX_AT, 11, false)]);
        // Larger than the largest frame.
        rig.tx.add_chain(&mem, &[(TX_AT, 40_000, false), (TX_AT + 40_000, 40_000, false)]);
        // Outside guest RAM, and across its end.
        rig.tx.add_chain(&mem, &[(TX_AT, 12, false), (0x1000_0000, 60, false)]);
        rig.tx.add_chain(&mem, &[(TX_AT, 12, false), (MEM_SIZE as u64 - 30, 60, false)]);
        rig.transport.queue_notify(TX_QUEUE);
        assert_eq!(rig.tx.take_used(&mem), vec![(0, 0), (2, 0), (3, 0), (5, 0), (7, 0)]);
        nothing_from(&network);
        assert_eq!(rig.net().counters().malformed, 5);
        assert_eq!(rig.net().counters().tx_frames, 0);
        // A flood of frames too short to be one: a queue's worth per call.
        let heads: Vec<u16> =
            (0..QUEUE_SIZE).map(|_| rig.tx.add_chain(&mem, &[(TX_AT, 4, false)])).collect();
        rig.transport.queue_notify(TX_QUEUE);
        assert_eq!(rig.tx.take_used(&mem).len(), heads.len());
        assert_eq!(rig.net().counters().malformed, 5 + u64::from(QUEUE_SIZE));
        nothing_from(&network);
        // The device still works.
        assert_eq!(rig.send(&frame(60, 0, 0, 0)).len(), 1);
        assert_eq!(rig.net().counters().tx_frames, 1);
    }

    #[test]
    fn a_frame_fills_one_buffer() {
        let (mut rig, network) = socket_rig(BASE);
        // Header and frame in buffers of their own.
        let mem = rig.mem.clone();
        rig.rx.add_chain(&mem, &[(RX_AT, 12, true), (RX_AT + 0x1000, 1514, true)]);
        rig.transport.queue_notify(RX_QUEUE);
        assert_eq!(rig.rx.take_used(&mem), vec![], "no frame yet");
        let sent = frame(60, 0, 0, 7);
        network.send(&sent).unwrap();
        rig.transport.host_event(0);
        assert_eq!(rig.rx.take_used(&mem), vec![(0, 72)]);
        let mut header = [0u8; 12];
        mem.read_slice(&mut header, GuestAddress(RX_AT)).unwrap();
        let mut data = [0u8; 60];
        mem.read_slice(&mut data, GuestAddress(RX_AT + 0x1000)).unwrap();
        assert_eq!([&header[..], &data[..]].concat(), received(&sent, 1));
        assert_eq!(rig.irq.count(), 1);
        let counters = rig.net().counters();
        assert_eq!((counters.rx_frames, counters.rx_bytes, counters.rx_dropped), (1, 60, 0));
    }

    #[test]
    fn receive_buffers_held_at_a_snapshot_are_taken_again_after_restore() {
        use crate::TransportPersist;
        let (mut rig, _network) = socket_rig(BASE);
        rig.post(0, 1600);
        rig.post(1, 1600);
        rig.transport.queue_notify(RX_QUEUE);
        assert_eq!(rig.net().held_chains(RX_QUEUE), 2);
        let state = rig.transport.save_state();
        assert_eq!(state.queues[RX_QUEUE].next_avail, 0, "held chains go back to the ring");
        // A new device on a new tap (the restored VMM reopens it by name).
        let (tap, network) = SocketTap::pair().unwrap();
        let irq = CountingInterrupt::default();
        let device = Net::new(tap, MAC).unwrap();
        let mut restored =
            MmioTransport::new(device, rig.mem.clone(), Box::new(irq.clone())).unwrap();
        restored.restore_state(&state).unwrap();
        assert_eq!(restored.device().held_chains(RX_QUEUE), 2);
        let sent = frame(60, 0, 0, 3);
        network.send(&sent).unwrap();
        restored.host_event(0);
        assert_eq!(rig.rx.take_used(&rig.mem), vec![(0, 72)]);
        assert_eq!(rig.guest(0, 72), received(&sent, 1));
    }

    #[test]
    fn mergeable_buffers_take_a_frame_across_chains_at_once() {
        let (mut rig, network) = socket_rig(BASE | MRG);
        let mem = rig.mem.clone();
        rig.post(0, 1000);
        // A chain of two buffers.
        rig.rx.add_chain(&mem, &[(RX_AT + 0x1_0000, 600, true), (RX_AT + 0x1_1000, 400, true)]);
        rig.post(2, 1000);
        rig.post(3, 1000);
        let sent = frame(2488, 0, 0, 3);
        network.send(&sent).unwrap();
        rig.transport.host_event(0);
        assert_eq!(rig.rx.take_used(&mem), vec![(0, 1000), (1, 1000), (3, 500)]);
        assert_eq!(rig.rx.used_idx(&mem), 3);
        let mut got = rig.guest(0, 1000);
        got.extend(rig.guest(1, 600));
        let mut part = vec![0u8; 400];
        mem.read_slice(&mut part, GuestAddress(RX_AT + 0x1_1000)).unwrap();
        got.extend(part);
        got.extend(rig.guest(2, 500));
        assert_eq!(got, received(&sent, 3));
        // One interrupt for the three entries (used_event 0 lies among them).
        assert_eq!(rig.irq.count(), 1);
        // The last chain takes the next frame.
        let small = frame(60, 0, 0, 9);
        network.send(&small).unwrap();
        rig.transport.host_event(0);
        assert_eq!(rig.rx.take_used(&mem), vec![(4, 72)]);
        assert_eq!(rig.guest(3, 72), received(&small, 1));
    }

    #[test]
    fn interrupts_follow_used_event_across_merged_entries() {
        let (mut rig, network) = socket_rig(BASE | MRG);
        let mem = rig.mem.clone();
        for slot in 0..3 {
            rig.post(slot, 100);
        }
        // The driver wants an interrupt once entry 1 is used.
        let used_event = RX_RING + 16 * u64::from(QUEUE_SIZE) + 4 + 2 * u64::from(QUEUE_SIZE);
        mem.write_obj(1u16, GuestAddress(used_event)).unwrap();
        network.send(&frame(250, 0, 0, 0)).unwrap();
        rig.transport.host_event(0);
        assert_eq!(rig.rx.take_used(&mem).len(), 3);
        assert_eq!(rig.irq.count(), 1);
    }

    #[test]
    fn without_buffers_frames_wait() {
        let (mut rig, network) = socket_rig(BASE);
        let mem = rig.mem.clone();
        let first = frame(60, 0, 0, 1);
        let second = frame(70, 0, 0, 2);
        network.send(&first).unwrap();
        network.send(&second).unwrap();
        rig.transport.host_event(0);
        assert_eq!(rig.rx.take_used(&mem), vec![]);
        rig.post(0, 1526);
        rig.transport.queue_notify(RX_QUEUE);
        assert_eq!(rig.rx.take_used(&mem), vec![(0, 72)]);
        assert_eq!(rig.guest(0, 72), received(&first, 1));
        rig.post(1, 1526);
        rig.transport.queue_notify(RX_QUEUE);
        assert_eq!(rig.rx.take_used(&mem), vec![(1, 82)]);
        assert_eq!(rig.guest(1, 82), received(&second, 1));
        assert_eq!(rig.net().counters().rx_dropped, 0);
    }

    #[test]
    fn a_frame_read_but_not_placed_is_kept() {
        let (mut rig, network) = socket_rig(BASE | MRG);
        let mem = rig.mem.clone();
        rig.post(0, 1000);
        rig.post(1, 1000);
        let sent = frame(2488, 0, 0, 5);
        network.send(&sent).unwrap();
        rig.transport.host_event(0);
        assert_eq!(rig.rx.take_used(&mem), vec![], "two buffers are not enough");
        // The device asked to be notified when the next buffer comes.
        let avail_event = rig.rx.used + 4 + 8 * u64::from(QUEUE_SIZE);
        assert_eq!(mem.read_obj::<u16>(GuestAddress(avail_event)).unwrap(), 2);
        // A later frame stays behind it.
        network.send(&frame(60, 0, 0, 6)).unwrap();
        rig.transport.host_event(0);
        assert_eq!(rig.rx.take_used(&mem), vec![]);
        rig.post(2, 1000);
        rig.transport.queue_notify(RX_QUEUE);
        assert_eq!(rig.rx.take_used(&mem), vec![(0, 1000), (1, 1000), (2, 500)]);
        let mut got = rig.guest(0, 1000);
        got.extend(rig.guest(1, 1000));
        got.extend(rig.guest(2, 500));
        assert_eq!(got, received(&sent, 3));
        rig.post(3, 1000);
        rig.transport.queue_notify(RX_QUEUE);
        assert_eq!(rig.rx.take_used(&mem), vec![(3, 72)]);
        assert_eq!(rig.net().counters().rx_frames, 2);
        // A reset drops a frame that waits.
        rig.post(4, 100);
        network.send(&sent).unwrap();
        rig.transport.host_event(0);
        write_reg(&mut rig.transport, 0x70, 0);
        assert_eq!(rig.net().counters().rx_dropped, 1);
    }

    #[test]
    fn frames_too_large_for_the_buffers_are_dropped() {
        let (mut rig, network) = socket_rig(BASE);
        let mem = rig.mem.clone();
        rig.post(0, 100);
        network.send(&frame(200, 0, 0, 0)).unwrap();
        let small = frame(50, 0, 0, 1);
        network.send(&small).unwrap();
        rig.transport.host_event(0);
        // The buffer stays for the next frame, which fits.
        assert_eq!(rig.rx.take_used(&mem), vec![(0, 62)]);
        assert_eq!(rig.guest(0, 62), received(&small, 1));
        assert_eq!(rig.net().counters().rx_dropped, 1);

        // With mergeable buffers, a frame larger than the whole ring.
        let (mut rig, network) = socket_rig(BASE | MRG);
        let mem = rig.mem.clone();
        for slot in 0..u64::from(QUEUE_SIZE) {
            rig.rx.add_chain(&mem, &[(RX_AT + 16 * slot, 12, true)]);
        }
        network.send(&frame(4000, 0, 0, 0)).unwrap();
        network.send(&small).unwrap();
        rig.transport.host_event(0);
        assert_eq!(
            rig.rx.take_used(&mem),
            vec![(0, 12), (1, 12), (2, 12), (3, 12), (4, 12), (5, 2)]
        );
        let got: Vec<u8> =
            (0..6).flat_map(|slot| rig.guest(0, 16 * 6)[16 * slot..][..12].to_vec()).collect();
        assert_eq!(got[..62], received(&small, 6)[..]);
        assert_eq!(rig.net().counters().rx_dropped, 1);
    }

    #[test]
    fn malformed_receive_chains_are_used_empty() {
        let (mut rig, network) = socket_rig(BASE);
        let mem = rig.mem.clone();
        // Device-readable, too small for a header, outside guest RAM.
        rig.rx.add_chain(&mem, &[(RX_AT, 1526, false)]);
        rig.rx.add_chain(&mem, &[(RX_AT, 11, true)]);
        rig.rx.add_chain(&mem, &[(0x1000_0000, 1526, true)]);
        rig.rx.add_chain(&mem, &[(RX_AT, 12, true), (MEM_SIZE as u64 - 8, 100, true)]);
        rig.post(1, 1526);
        let sent = frame(60, 0, 0, 4);
        network.send(&sent).unwrap();
        rig.transport.host_event(0);
        assert_eq!(rig.rx.take_used(&mem), vec![(0, 0), (1, 0), (2, 0), (3, 0), (5, 72)]);
        assert_eq!(rig.guest(1, 72), received(&sent, 1));
        let counters = rig.net().counters();
        assert_eq!((counters.malformed, counters.rx_frames), (4, 1));
    }

    #[test]
    fn received_offloads_must_have_been_accepted() {
        let (mut rig, network) = socket_rig(BASE);
        let mem = rig.mem.clone();
        rig.post(0, 1526);
        network.send(&frame(60, VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 0, 0)).unwrap();
        network.send(&frame(60, 0, VIRTIO_NET_HDR_GSO_TCPV4 as u8, 0)).unwrap();
        let valid = frame(60, VIRTIO_NET_HDR_F_DATA_VALID as u8, 0, 0);
        network.send(&valid).unwrap();
        rig.transport.host_event(0);
        assert_eq!(rig.rx.take_used(&mem), vec![(0, 72)]);
        // A guest without checksum offload sees flags zero.
        assert_eq!(rig.guest(0, 72), received(&frame(60, 0, 0, 0), 1));
        assert_eq!(rig.net().counters().rx_dropped, 2);

        let (mut rig, network) = socket_rig(BASE | GUEST_CSUM | GUEST_TSO4);
        let mem = rig.mem.clone();
        for slot in 0..3 {
            rig.post(slot, 1526);
        }
        network.send(&valid).unwrap();
        let tso = frame(60, 1, VIRTIO_NET_HDR_GSO_TCPV4 as u8, 0);
        network.send(&tso).unwrap();
        network.send(&frame(60, 1, VIRTIO_NET_HDR_GSO_TCPV6 as u8, 0)).unwrap();
        network
            .send(&frame(60, 1, (VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN) as u8, 0))
            .unwrap();
        rig.transport.host_event(0);
        assert_eq!(rig.rx.take_used(&mem), vec![(0, 72), (1, 72)]);
        assert_eq!(rig.guest(0, 72), received(&valid, 1));
        assert_eq!(rig.guest(1, 72), received(&tso, 1));
        assert_eq!(rig.net().counters().rx_dropped, 2);
    }

    #[test]
    fn receiving_stops_after_a_budget_and_resumes_by_its_own_event() {
        let (mut rig, network) = socket_rig(BASE);
        let mem = rig.mem.clone();
        for slot in 0..100 {
            rig.post(slot, 128);
        }
        for i in 0..RX_BUDGET + 6 {
            network.send(&frame(60, 0, 0, i as u8)).unwrap();
        }
        rig.transport.host_event(0);
        assert_eq!(rig.rx.take_used(&mem).len(), RX_BUDGET);
        let resume = rig.transport.host_fds()[1];
        assert!(crate::tap::test_host::wait_readable(resume));
        rig.transport.host_event(1);
        assert_eq!(rig.rx.take_used(&mem).len(), 6);
        let mut poll = libc::pollfd { fd: resume, events: libc::POLLIN, revents: 0 };
        // SAFETY: poll reads and writes one pollfd, a live local.
        assert_eq!(unsafe { libc::poll(&mut poll, 1, 0) }, 0, "nothing left to resume");
        assert_eq!(rig.net().counters().rx_frames, RX_BUDGET as u64 + 6);
    }

    #[test]
    fn frames_cross_a_real_tap_both_ways() {
        use crate::tap::test_host::{self, PacketSocket};
        let ran = test_host::in_new_netns(|| {
            let tap = Tap::open("vmmtest0").unwrap();
            let name = tap.name().to_string();
            // No IPv6 chatter on the link.
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
            tap.set_up().unwrap();
            let packet = PacketSocket::bind(test_host::ifindex(&name));
            assert_eq!(test_host::ethtool(&name, test_host::ETHTOOL_GTXCSUM), 0);
            let mut rig = rig_on(tap, BASE | MRG | GUEST_CSUM | GUEST_TSO4);
            // What the guest accepted is what the kernel may send it.
            assert_eq!(test_host::ethtool(&name, test_host::ETHTOOL_GTXCSUM), 1);
            assert_eq!(test_host::ethtool(&name, test_host::ETHTOOL_GTSO), 1);

            // Transmit: the frame comes out of the interface.
            let mut sent = frame(100, 0, 0, 0);
            sent[VNET_HDR_LEN + 14..VNET_HDR_LEN + 27].copy_from_slice(b"guest to host");
            assert_eq!(rig.send(&sent), vec![(0, 0)]);
            let mut got = vec![0u8; 2048];
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            loop {
                if let Some(len) = packet.recv(&mut got)
                    && got[..len] == sent[VNET_HDR_LEN..]
                {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "the frame never came out");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }

            // Receive: a frame sent on the interface reaches the guest.
            for slot in 0..8 {
                rig.post(slot, 2048);
            }
            let mut ethernet = frame(100, 0, 0, 0).split_off(VNET_HDR_LEN);
            ethernet[..6].copy_from_slice(&MAC);
            ethernet[14..27].copy_from_slice(b"host to guest");
            packet.send(&ethernet);
            let tap_fd = rig.transport.host_fds()[0];
            let mut found = false;
            while !found {
                assert!(test_host::wait_readable(tap_fd), "the frame never reached the tap");
                rig.transport.host_event(0);
                for (head, len) in rig.rx.take_used(&rig.mem) {
                    let data = rig.guest(u64::from(head), len as usize);
                    found |= data[VNET_HDR_LEN..] == ethernet[..];
                }
            }
            assert_eq!(rig.net().counters().tx_frames, 1);
            // A reset turns the offloads off again.
            write_reg(&mut rig.transport, 0x70, 0);
            assert_eq!(test_host::ethtool(&name, test_host::ETHTOOL_GTXCSUM), 0);
            assert_eq!(test_host::ethtool(&name, test_host::ETHTOOL_GTSO), 0);
        });
        if ran.is_none() {
            eprintln!("skipped: no network namespace for a real tap");
        }
    }
}
