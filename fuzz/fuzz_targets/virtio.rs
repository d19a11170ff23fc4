//! The virtio-mmio transport and every virtio device behind it (virtio-blk,
//! read-write and read-only, virtio-rng, virtio-net and virtio-vsock),
//! driven by a fuzzed guest and, for virtio-net, a fuzzed network, for
//! virtio-vsock, a fuzzed host side.
//!
//! The first input byte picks the device (bits 0-1: 0 read-write disk, 1
//! read-only disk, 2 rng, or vsock when bit 6 is set too, 3 net;
//! `VMM_FUZZ_DEVICE=block|block-ro|rng|net|vsock` forces one), whether
//! queue notifications go through eventfds (bit 2; as in the VMM) or are
//! served on the register write, the guest memory layout (bit 3: two 32
//! KiB regions of RAM with a gap between them, or back to back) and how
//! the entropy source reads (bits 4-5). The rest is a
//! sequence of at most `MAX_OPS` operations: MMIO reads and writes at any
//! offset of the 4 KiB window and any width (1, 2, 4, 8), feature
//! negotiation, queue setup with arbitrary sizes and ring addresses, raw
//! descriptors (any address, in RAM, across its end or the gap, or
//! anywhere; any length and flags, NEXT loops, INDIRECT), whole chains
//! (block requests with a header, data segments and a status byte, direct
//! or through an indirect table), available-ring entries and indices, raw
//! guest memory writes, notifications (`QueueNotify::queue_notify` and
//! writes to QueueNotify, 0x50, served from the eventfds when the VMM's
//! event loop would), interrupt acknowledgements and resets; for
//! virtio-net, frames from the network (any length from 0 to one byte past
//! `MAX_FRAME_LEN`, any header flags and GSO type, up to 65 at once: more
//! than `RX_BUDGET`) and host events (`QueueNotify::host_event`, and the
//! readable host descriptors served as the event loop serves them). Driver
//! operations work on the queue QueueSel selects.
//!
//! For virtio-vsock (guest CID 3, its socket at a fresh `PATH` in a
//! directory made once per process, listeners at `PATH_<port>` for the
//! ports of `LISTEN_PORTS` and none for the others) the block-request
//! operation becomes a vsock one: a packet on the transmit queue (any CIDs,
//! ports from tables, those of the last packet received or any, any
//! operation (REQUEST to CREDIT_REQUEST or unknown), type, length, flags,
//! buf_alloc and fwd_cnt, the payload after the header or in a second
//! descriptor, direct or indirect), or batches of receive buffers (header
//! and data in one descriptor or two) or event-queue buffers; and the
//! host side acts: host programs connect to `PATH` and send `CONNECT
//! <port>\n` (good, in other forms, raw bytes, overlong), any stream (a
//! host program's or a peer the listeners accepted) gets data or raw bytes,
//! is read, shut down or closed, and the event loop serves the device.
//! The device's timeouts (seconds) never expire within an input: no input
//! waits.
//!
//! The block devices work on a 64 KiB image (plus a 300-byte partial
//! sector, which is not part of the disk) in a temporary file made once
//! per process and restored after each input; the read-only device gets a
//! writable descriptor, so only the device keeps it unchanged. The entropy
//! device reads `RNG_BYTE` from a source that may return short reads,
//! EINTR, EOF or errors. virtio-net works on a `tap::SocketTap`, whose
//! other end is the network.
//!
//! Invariants (besides: nothing panics):
//! - register reads match the transport's specification: magic, version,
//!   device and vendor id, device features by select, QueueNumMax and
//!   QueueReady of the selected queue (a model of the queue registers kept
//!   from the writes), status, interrupt status (bits 0-1 only), a config
//!   generation of 0, 0 for write-only or unknown registers and for any
//!   register access that is not 32-bit; the configuration space is the
//!   device's (`capacity`, `seg_max`, `blk_size` for the disk, the MAC
//!   for net, empty for rng), zero where a read does not lie entirely in
//!   it;
//! - FEATURES_OK stays set exactly when the driver's features are a subset
//!   of the device's including VERSION_1; DRIVER_OK is never set without
//!   ACKNOWLEDGE, DRIVER and FEATURES_OK; status 0 resets every queue;
//! - a queue the transport accepts (QueueReady reads 1) has a power-of-two
//!   size up to its maximum and aligned rings lying entirely in RAM, and it
//!   is never unready until a reset;
//! - the device writes guest memory only while live (DRIVER_OK and a
//!   queue ready), only in used rings and in buffers of device-writable
//!   descriptors (of a descriptor table or of an indirect table it names),
//!   unless the driver made them overlap the rings or tables; the entropy
//!   device writes nothing but `RNG_BYTE` outside its used ring;
//! - the used index never runs ahead of the available index nor falls more
//!   than the queue size behind it (unless the device stopped with
//!   DEVICE_NEEDS_RESET, having taken a chain it could not use), nor adds
//!   more than one queue's worth (the queue size) per notification (two
//!   for virtio-net's receive queue, which also fills chains it took
//!   earlier); every used entry names a descriptor below the queue size and
//!   a length the device could write (at most the disk's size plus the
//!   status byte, 64 KiB for rng, `MAX_FRAME_LEN` for net);
//! - an interrupt is raised whenever the interrupt status gains a bit;
//! - the image file never changes size and its partial last sector never
//!   changes; the read-only disk's file never changes at all, and it counts
//!   no written bytes;
//! - virtio-vsock, for every packet the device puts in the receive queue
//!   (when the target can read it back: buffers that overlap each other
//!   or a ring are not): a used length of the 44-byte header plus the
//!   header's length, which fits the buffer; CIDs 2 to 3, the stream type,
//!   a known operation, a length only for data, and never empty data; a
//!   REQUEST only for a guest port some host program sent `CONNECT` for; a
//!   RESPONSE only from a listened port; data, SHUTDOWN and credit
//!   packets only on connections that opened (the device's REQUEST or
//!   RESPONSE) and were not reset since (RST either way); data never past
//!   the credit the guest last gave the connection (buf_alloc - (bytes
//!   sent - fwd_cnt), from the transmit packets the target parsed), and
//!   always the next bytes of a host stream the connection can be (what the
//!   host wrote on it, after the `CONNECT` line for a host program, in
//!   order and unmodified); the device counts exactly the receive packets
//!   and bytes and the well-formed transmit chains the guest saw used;
//!   transmit chains are used with length 0; a host program reads `OK
//!   <port>\n` first, naming a connection the guest was asked for; never
//!   more connections than `MAX_CONNECTIONS` nor more guest bytes held
//!   than `CONN_BUF_SIZE` each; the socket file is gone once the device is
//!   dropped;
//! - no input leaves a descriptor open (the process's count of open
//!   descriptors is the same after each input as before);
//! - virtio-net: every frame that reaches the network has a header and at
//!   most `MAX_FRAME_LEN` bytes and asks only for offloads the guest
//!   negotiated (checksum, TSO4/TSO6, ECN); the device counts exactly the
//!   frames the network got, and never more frames received or dropped
//!   than the network sent; the tap's offloads are `tap_offloads` of the
//!   accepted features while the device is live, none otherwise, and only
//!   combinations the kernel takes (TSO needs checksum, ECN needs TSO).
#![no_main]

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vm_device::MutDeviceMmio;
use vm_device::bus::MmioAddress;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_fuzz::Input;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::tempdir::TempDir;
use vmm_sys_util::tempfile::TempFile;
use vmm_virtio::block::{Block, SECTOR_SIZE, SEG_MAX};
use vmm_virtio::mmio::{CONFIG_SPACE, MAGIC, QUEUE_NOTIFY, VENDOR_ID, VERSION};
use vmm_virtio::net::{MAX_FRAME_LEN, Net, tap_offloads};
use vmm_virtio::tap::{SocketTap, TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_LEN};
use vmm_virtio::rng::{MAX_BYTES_PER_REQUEST, Rng};
use vmm_virtio::testing::{CountingInterrupt, TestQueue};
use vmm_virtio::vsock::{
    CONN_BUF_SIZE, EVENT_QUEUE, MAX_CONNECTIONS, MAX_PKT_DATA, RX_QUEUE, TX_QUEUE, Vsock,
    VsockCounters,
};
use vmm_virtio::{MMIO_WINDOW_SIZE, Memory, MmioTransport, QueueNotify, VirtioDevice};

/// Each RAM region's size.
const REGION: u64 = 0x8000;
/// The disk's size in sectors, and the partial sector after them.
const IMAGE_SECTORS: u64 = 128;
const IMAGE_TAIL: u64 = 300;
const IMAGE_LEN: u64 = IMAGE_SECTORS * SECTOR_SIZE + IMAGE_TAIL;
/// What the entropy source gives.
const RNG_BYTE: u8 = 0x5a;
/// Operations per input, to keep each run short.
const MAX_OPS: usize = 96;
/// Indirect-table entries examined per check before giving up on it.
const INDIRECT_BUDGET: usize = 16 * 1024;
const BASE: MmioAddress = MmioAddress(0xd000_0000);

const ACKNOWLEDGE: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;
const NEEDS_RESET: u32 = 64;
const VERSION_1: u64 = 1 << 32;
const EVENT_IDX: u64 = 1 << 29;
const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;
const DESC_INDIRECT: u16 = 4;
const BLK_T_IN: u32 = 0;
const BLK_T_OUT: u32 = 1;
const BLK_T_FLUSH: u32 = 4;
const BLK_T_GET_ID: u32 = 8;
const NET_F_CSUM: u64 = 1 << 0;
const NET_F_HOST_TSO4: u64 = 1 << 11;
const NET_F_HOST_TSO6: u64 = 1 << 12;
const NET_F_HOST_ECN: u64 = 1 << 13;
const NET_HDR_F_NEEDS_CSUM: u8 = 1;
const NET_HDR_GSO_TCPV4: u8 = 1;
const NET_HDR_GSO_TCPV6: u8 = 4;
const NET_HDR_GSO_ECN: u8 = 0x80;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// The image's contents when an input starts.
fn pristine() -> Vec<u8> {
    (0..IMAGE_LEN).map(|i| (i / SECTOR_SIZE) as u8 ^ (i as u8).wrapping_mul(7)).collect()
}

struct Images {
    /// The read-write disk's image.
    rw: File,
    /// The read-only disk's image, opened for writing too.
    ro: File,
    pristine: Vec<u8>,
}

/// The two images, made once per process in a tmpfs when there is one
/// (flushes are cheap there) and unlinked at once: only the descriptors
/// remain, so nothing is left behind however the process ends.
fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let pristine = pristine();
        let make = |tag: &str| {
            let prefix = format!("/dev/shm/vmm-fuzz-virtio-{tag}-{}-", std::process::id());
            let file = TempFile::new_with_prefix(prefix)
                .or_else(|_| TempFile::new())
                .expect("temporary image")
                .into_file();
            file.write_all_at(&pristine, 0).expect("write the image");
            file
        };
        Images { rw: make("rw"), ro: make("ro"), pristine }
    })
}

/// Checks an image after an input and puts its contents back.
fn check_and_restore_image(file: &File, read_only: bool) {
    let images = images();
    let len = file.metadata().expect("image metadata").len();
    assert_eq!(len, IMAGE_LEN, "the image changed size");
    let mut now = vec![0u8; IMAGE_LEN as usize];
    file.read_exact_at(&mut now, 0).expect("read the image");
    let disk = (IMAGE_SECTORS * SECTOR_SIZE) as usize;
    assert!(now[disk..] == images.pristine[disk..], "the partial last sector changed");
    if read_only {
        assert!(now == images.pristine, "the read-only disk's image changed");
    } else if now != images.pristine {
        file.write_all_at(&images.pristine, 0).expect("restore the image");
    }
}

/// The entropy source: `RNG_BYTE`s, read whole, in short reads, with EINTR
/// now and then, or running dry (EOF, then errors).
struct Source {
    mode: u8,
    calls: u32,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        let len = match self.mode {
            0 => buf.len(),
            1 => buf.len().min(1 + (self.calls as usize % 7) * 97),
            2 if self.calls % 3 == 0 => return Err(ErrorKind::Interrupted.into()),
            2 => buf.len().min(4096),
            _ if self.calls > 6 && self.calls % 2 == 0 => return Err(ErrorKind::Other.into()),
            _ if self.calls > 6 => 0,
            _ => buf.len().min(1000),
        };
        buf[..len].fill(RNG_BYTE);
        Ok(len)
    }
}

/// What the target expects of the device behind the transport.
struct Expect {
    device_type: u32,
    config: Vec<u8>,
    /// The longest used length the device may report.
    max_used_len: u32,
    /// The only byte the device writes into buffers (rng).
    fill: Option<u8>,
    /// Used entries one notification may add, in queue sizes: 1 for
    /// devices that serve what is available (`drain_queue`), 2 for
    /// virtio-net's receive queue, which also fills the chains it took off
    /// the ring earlier (at most a queue's worth).
    used_per_call: u32,
    /// The device keeps chains it took off the ring and fills them later
    /// (virtio-net's receive queue): a buffer stays writable for it after
    /// the driver rewrote the descriptor that named it.
    holds_chains: bool,
}

/// What only some devices can be checked for, after every operation.
trait DeviceChecks: VirtioDevice {
    fn check(&self, _status: u32, _acked: u64) {}

    /// virtio-vsock's counters.
    fn vsock_counters(&self) -> Option<VsockCounters> {
        None
    }
}

impl DeviceChecks for Block {}
impl DeviceChecks for Rng<Source> {}

impl DeviceChecks for Vsock {
    /// Never more connections than the device takes, nor more guest bytes
    /// held for host readers than the credit it gave them.
    fn check(&self, _status: u32, _acked: u64) {
        let connections = self.connections();
        assert!(connections <= MAX_CONNECTIONS, "{connections} connections");
        assert!(
            self.pending_bytes() <= connections * CONN_BUF_SIZE as usize,
            "{} bytes held for {connections} connections",
            self.pending_bytes()
        );
    }

    fn vsock_counters(&self) -> Option<VsockCounters> {
        Some(self.counters())
    }
}

impl DeviceChecks for Net<SocketTap> {
    /// The tap gets exactly the offloads the guest accepted while it is
    /// live, none otherwise, and only combinations the kernel takes.
    fn check(&self, status: u32, acked: u64) {
        let offloads = self.tap().offloads();
        let expected = if status & DRIVER_OK != 0 { tap_offloads(acked) } else { 0 };
        assert_eq!(offloads, expected, "tap offloads with features {acked:#x}, status {status:#x}");
        let segments = TUN_F_TSO4 | TUN_F_TSO6;
        assert!(offloads & segments == 0 || offloads & TUN_F_CSUM != 0, "TSO without CSUM");
        assert!(offloads & TUN_F_TSO_ECN == 0 || offloads & segments != 0, "ECN without TSO");
    }
}

/// The transport's queue registers as the target wrote them, and the
/// driver's side of the queue.
#[derive(Clone, Copy, Debug)]
struct QueueModel {
    max: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    ready: bool,
    /// The driver's next available index and free descriptor.
    avail_idx: u16,
    next_desc: u16,
    /// The used index the device last wrote, when known for sure.
    dev_used: Option<u16>,
}

impl QueueModel {
    fn new(max: u16) -> QueueModel {
        QueueModel {
            max,
            size: max,
            desc: 0,
            avail: 0,
            used: 0,
            ready: false,
            avail_idx: 0,
            next_desc: 0,
            dev_used: None,
        }
    }

    fn used_len(&self) -> u64 {
        6 + 8 * u64::from(self.size)
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    let (a0, a1) = (u128::from(a.0), u128::from(a.0) + u128::from(a.1));
    let (b0, b1) = (u128::from(b.0), u128::from(b.0) + u128::from(b.1));
    a.1 > 0 && b.1 > 0 && a0 < b1 && b0 < a1
}

fn contains(range: (u64, u64), addr: u64) -> bool {
    addr >= range.0 && addr - range.0 < range.1
}

/// Sorted, disjoint, non-empty ranges covering the same bytes (as
/// half-open u128 bounds, so that no end overflows).
fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u128, u128)> {
    ranges.retain(|r| r.1 > 0);
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (start, len) in ranges {
        let (start, end) = (u128::from(start), u128::from(start) + u128::from(len));
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// The merged range holding `addr`, if any.
fn in_merged(merged: &[(u128, u128)], addr: u64) -> bool {
    let addr = u128::from(addr);
    let i = merged.partition_point(|r| r.1 <= addr);
    merged.get(i).is_some_and(|r| r.0 <= addr)
}

fn overlaps_any(merged: &[(u128, u128)], range: (u64, u64)) -> bool {
    let (start, end) = (u128::from(range.0), u128::from(range.0) + u128::from(range.1));
    let i = merged.partition_point(|r| r.1 <= start);
    range.1 > 0 && merged.get(i).is_some_and(|r| r.0 < end)
}

struct Rig<D: DeviceChecks> {
    t: MmioTransport<D>,
    mem: Memory,
    regions: [u64; 2],
    /// Guest memory as the target last saw it (the device may only
    /// change it where the invariants allow).
    shadow: [Vec<u8>; 2],
    scratch: [Vec<u8>; 2],
    notifiers: Vec<EventFd>,
    irq: CountingInterrupt,
    expect: Expect,
    queue_select: u32,
    features_select: u32,
    queues: Vec<QueueModel>,
    /// virtio-net: the network's end of the tap, and the frames sent to
    /// the device and received from it.
    network: Option<UnixDatagram>,
    /// Per queue: device-writable buffers of descriptors the driver has
    /// since rewritten (see `Expect::holds_chains`), until a reset.
    held: Vec<Vec<(u64, u64)>>,
    /// Whether `held` has the buffers of the last device operation.
    held_recorded: bool,
    frames_sent: u64,
    frames_received: u64,
    frame: Vec<u8>,
    /// virtio-vsock: the host side and the guest's view of connections.
    vsock: Option<VsockSide>,
}

impl<D: DeviceChecks> Rig<D> {
    fn new(device: D, expect: Expect, gap: bool, notify_by_eventfd: bool) -> Rig<D> {
        let regions = [0, if gap { 2 * REGION } else { REGION }];
        // Mapped once per process for each layout (mapping and unmapping
        // RAM for every input cost more than the input), zeroed here.
        static MEMORIES: OnceLock<[Memory; 2]> = OnceLock::new();
        let memories = MEMORIES.get_or_init(|| {
            [0, 1].map(|gapped| {
                let second = if gapped == 1 { 2 * REGION } else { REGION };
                Memory::from_ranges(&[
                    (GuestAddress(0), REGION as usize),
                    (GuestAddress(second), REGION as usize),
                ])
                .expect("guest memory")
            })
        });
        let mem = memories[usize::from(gap)].clone();
        for &start in &regions {
            let host = mem.get_host_address(GuestAddress(start)).expect("RAM");
            // SAFETY: `host` starts a mapping of REGION bytes that `mem`
            // keeps alive; no device or other thread uses it now.
            unsafe { std::ptr::write_bytes(host, 0, REGION as usize) };
        }
        let irq = CountingInterrupt::default();
        let queues: Vec<QueueModel> =
            device.queue_max_sizes().iter().map(|&max| QueueModel::new(max)).collect();
        let queue_count = queues.len();
        let mut t =
            MmioTransport::new(device, mem.clone(), Box::new(irq.clone())).expect("transport");
        let mut notifiers = Vec::new();
        if notify_by_eventfd {
            notifiers = (0..queues.len()).map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd")).collect();
            t.set_notifiers(notifiers.iter().map(|n| n.try_clone().expect("eventfd")).collect());
        }
        let zero = || vec![0u8; REGION as usize];
        Rig {
            t,
            mem,
            regions,
            shadow: [zero(), zero()],
            scratch: [zero(), zero()],
            notifiers,
            irq,
            expect,
            queue_select: 0,
            features_select: 0,
            queues,
            network: None,
            held: vec![Vec::new(); queue_count],
            held_recorded: true,
            frames_sent: 0,
            frames_received: 0,
            frame: Vec::new(),
            vsock: None,
        }
    }

    // ---- guest memory, as the driver and the target see it ----

    fn locate(&self, addr: u64) -> Option<(usize, usize)> {
        self.regions
            .iter()
            .position(|&start| contains((start, REGION), addr))
            .map(|r| (r, (addr - self.regions[r]) as usize))
    }

    /// RAM region `r` as the host maps it (a plain comparison is much
    /// faster than copying it out through vm-memory's volatile accessors).
    fn ram(&self, r: usize) -> &[u8] {
        let host = self.mem.get_host_address(GuestAddress(self.regions[r])).expect("RAM");
        // SAFETY: the region is a mapping of REGION bytes that lives as
        // long as `self.mem`, which this borrow of `self` outlives; nothing
        // writes it while the slice is used: the device runs only inside
        // transport calls, on this thread, and the target writes RAM only
        // through `poke`, which needs `&mut self`.
        unsafe { std::slice::from_raw_parts(host, REGION as usize) }
    }

    fn in_ram(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else { return false };
        let mut at = addr;
        while at < end {
            let Some((r, _)) = self.locate(at) else { return false };
            at = self.regions[r] + REGION;
        }
        true
    }

    /// Reads `buf.len()` bytes at `addr` from a snapshot; false if not all
    /// of them are in RAM.
    fn snap_read(&self, snap: &[Vec<u8>; 2], addr: u64, buf: &mut [u8]) -> bool {
        if let Some((r, at)) = self.locate(addr)
            && let Some(bytes) = snap[r].get(at..at + buf.len())
        {
            buf.copy_from_slice(bytes);
            return true;
        }
        for (i, byte) in buf.iter_mut().enumerate() {
            let Some((r, at)) = addr.checked_add(i as u64).and_then(|a| self.locate(a)) else {
                return false;
            };
            *byte = snap[r][at];
        }
        true
    }

    fn snap_u16(&self, snap: &[Vec<u8>; 2], addr: u64) -> Option<u16> {
        let mut b = [0u8; 2];
        self.snap_read(snap, addr, &mut b).then(|| u16::from_le_bytes(b))
    }

    fn snap_u32(&self, snap: &[Vec<u8>; 2], addr: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.snap_read(snap, addr, &mut b).then(|| u32::from_le_bytes(b))
    }

    fn snap_desc(&self, snap: &[Vec<u8>; 2], addr: u64) -> Option<(u64, u32, u16, u16)> {
        let mut b = [0u8; 16];
        self.snap_read(snap, addr, &mut b).then(|| {
            (
                u64::from_le_bytes(b[..8].try_into().unwrap_or_default()),
                u32::from_le_bytes(b[8..12].try_into().unwrap_or_default()),
                u16::from_le_bytes([b[12], b[13]]),
                u16::from_le_bytes([b[14], b[15]]),
            )
        })
    }

    /// The driver writes guest memory: what lies in RAM is written, the
    /// rest is dropped.
    fn poke(&mut self, addr: u64, bytes: &[u8]) {
        let written = (addr, bytes.len() as u64);
        // The chains a device holds were taken during device operations,
        // from the descriptors as they were then, which the first driver
        // write after the operation still sees.
        if self.expect.holds_chains && !std::mem::replace(&mut self.held_recorded, true) {
            for index in 0..self.queues.len() {
                let q = self.queues[index];
                if q.ready {
                    let (writable, _, _) = self.writable_ranges(&q);
                    let held = &mut self.held[index];
                    held.extend(writable);
                    *held = merge(std::mem::take(held))
                        .into_iter()
                        .map(|(start, end)| (start as u64, (end - start).min(u128::from(u64::MAX)) as u64))
                        .collect();
                }
            }
        }
        let end = u128::from(addr) + bytes.len() as u128;
        for r in 0..2 {
            let start = u128::from(self.regions[r]);
            let (from, to) = (u128::from(addr).max(start), end.min(start + u128::from(REGION)));
            if from >= to {
                continue;
            }
            let piece = &bytes[(from - u128::from(addr)) as usize..(to - u128::from(addr)) as usize];
            self.mem.write_slice(piece, GuestAddress(from as u64)).expect("write RAM");
            let at = (from - start) as usize;
            self.shadow[r][at..at + piece.len()].copy_from_slice(piece);
        }
        // The used index the device wrote may now be overwritten: the
        // target cannot tell the device's next write from it.
        for q in &mut self.queues {
            if q.ready && overlaps(written, (q.used + 2, 2)) {
                q.dev_used = None;
            }
        }
    }

    // ---- the transport's registers ----

    fn configurable(&self, status: u32) -> Option<usize> {
        let index = usize::try_from(self.queue_select).ok()?;
        (status & DRIVER_OK == 0 && self.queues.get(index).is_some_and(|q| !q.ready))
            .then_some(index)
    }

    fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        let status = self.t.status();
        let isr = self.read_raw(0x60);
        let irqs = self.irq.count();
        self.t.mmio_write(BASE, offset, data);
        if let (true, Ok(word)) = (offset < CONFIG_SPACE, <[u8; 4]>::try_from(data)) {
            self.model_write(offset, u32::from_le_bytes(word), status);
        }
        self.after_device_op(isr, irqs);
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        self.mmio_write(offset, &value.to_le_bytes());
    }

    fn read_raw(&mut self, offset: u64) -> u32 {
        let mut word = [0u8; 4];
        self.t.mmio_read(BASE, offset, &mut word);
        u32::from_le_bytes(word)
    }

    fn model_write(&mut self, offset: u64, value: u32, status_before: u32) {
        let configurable = self.configurable(status_before);
        match offset {
            0x14 => self.features_select = value,
            0x30 => self.queue_select = value,
            0x38 => {
                if let Some(i) = configurable {
                    self.queues[i].size = u16::try_from(value).unwrap_or(0);
                }
            }
            0x80..=0xa4 if offset & 0xb == 0 => {
                if let Some(i) = configurable {
                    let q = &mut self.queues[i];
                    let field = match offset & !4 {
                        0x80 => &mut q.desc,
                        0x90 => &mut q.avail,
                        _ => &mut q.used,
                    };
                    *field = if offset & 4 != 0 {
                        (*field & 0xffff_ffff) | u64::from(value) << 32
                    } else {
                        (*field & !0xffff_ffff) | u64::from(value)
                    };
                }
            }
            0x44 => {
                let index = usize::try_from(self.queue_select).unwrap_or(usize::MAX);
                let Some(&q) = self.queues.get(index) else { return };
                let ready = self.read_raw(0x44) == 1;
                match configurable {
                    None => assert_eq!(ready, q.ready, "QueueReady changed on a queue not configurable"),
                    Some(i) => {
                        assert!(!ready || value == 1, "QueueReady {value} made the queue ready");
                        if ready {
                            self.accepted(i);
                        }
                        self.queues[i].ready = ready;
                    }
                }
            }
            0x70 => {
                let now = self.t.status();
                if value == 0 {
                    assert_eq!(now, 0, "status 0 does not reset");
                    assert_eq!(self.read_raw(0x60), 0, "reset keeps the interrupt status");
                    assert_eq!(self.t.acked_features(), 0, "reset keeps the features");
                    self.queue_select = 0;
                    self.features_select = 0;
                    for q in &mut self.queues {
                        *q = QueueModel::new(q.max);
                    }
                    for held in &mut self.held {
                        held.clear();
                    }
                    if let Some(side) = &mut self.vsock {
                        side.reset();
                    }
                    for index in 0..self.queues.len() {
                        self.write_reg(0x30, index as u32);
                        assert_eq!(self.read_raw(0x44), 0, "queue {index} ready after a reset");
                        assert_eq!(self.read_raw(0x34), u32::from(self.queues[index].max));
                    }
                    self.write_reg(0x30, 0);
                }
            }
            _ => {}
        }
        let status = self.t.status();
        let needed = ACKNOWLEDGE | DRIVER | FEATURES_OK;
        assert!(status & DRIVER_OK == 0 || status & needed == needed, "status {status:#x}");
        if status & FEATURES_OK != 0 {
            let acked = self.t.acked_features();
            let offered = self.t.device().features();
            assert!(acked & !offered == 0 && acked & VERSION_1 != 0, "accepted {acked:#x}");
        }
    }

    /// The transport accepted queue `index` as the model describes it.
    fn accepted(&mut self, index: usize) {
        let q = self.queues[index];
        let size = u64::from(q.size);
        assert!(q.size.is_power_of_two() && q.size <= q.max, "accepted queue size {}", q.size);
        assert!(q.desc % 16 == 0 && q.avail % 2 == 0 && q.used % 4 == 0, "misaligned rings {q:?}");
        assert!(self.in_ram(q.desc, 16 * size), "descriptor table outside RAM: {q:?}");
        assert!(self.in_ram(q.avail, 6 + 2 * size), "available ring outside RAM: {q:?}");
        assert!(self.in_ram(q.used, q.used_len()), "used ring outside RAM: {q:?}");
        let used_idx = self.snap_u16(&self.shadow, q.used + 2);
        self.queues[index].dev_used = (used_idx == Some(0)).then_some(0);
    }

    /// A register or configuration read at any offset and width, checked.
    fn mmio_read(&mut self, offset: u64, width: usize, fill: u8) {
        let mut buffer = [fill; 8];
        let data = &mut buffer[..width];
        self.t.mmio_read(BASE, offset, data);
        let mut expected = [0u8; 8];
        if offset >= CONFIG_SPACE {
            let config = &self.expect.config;
            let start = usize::try_from(offset - CONFIG_SPACE).unwrap_or(usize::MAX);
            if let Some(bytes) = config.get(start..).and_then(|rest| rest.get(..width)) {
                expected[..width].copy_from_slice(bytes);
            }
        } else if width == 4 {
            let selected = usize::try_from(self.queue_select).ok().and_then(|i| self.queues.get(i));
            let features = self.t.device().features();
            let value = match offset {
                0x00 => MAGIC,
                0x04 => VERSION,
                0x08 => self.expect.device_type,
                0x0c => VENDOR_ID,
                0x10 => match self.features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                },
                0x34 => selected.map_or(0, |q| u32::from(q.max)),
                0x44 => selected.map_or(0, |q| u32::from(q.ready)),
                0x60 => {
                    let isr = u32::from_le_bytes(data[..4].try_into().unwrap_or_default());
                    assert_eq!(isr & !3, 0, "interrupt status {isr:#x}");
                    isr
                }
                0x70 => self.t.status(),
                _ => 0,
            };
            expected[..4].copy_from_slice(&value.to_le_bytes());
        }
        assert_eq!(data, &expected[..width], "{width}-byte read at {offset:#x}");
    }

    // ---- the device's side effects ----

    /// After anything that may have let the device work: interrupts and
    /// guest memory.
    fn after_device_op(&mut self, isr_before: u32, irqs_before: usize) {
        self.held_recorded = false;
        let isr = self.read_raw(0x60);
        assert_eq!(isr & !3, 0, "interrupt status {isr:#x}");
        if isr & !isr_before != 0 {
            assert!(self.irq.count() > irqs_before, "interrupt status {isr:#x} raised no interrupt");
        }
        self.vsock_before_check();
        if self.t.status() & DRIVER_OK != 0 {
            self.check_memory();
        }
        self.t.device().check(self.t.status(), self.t.acked_features());
        self.receive_frames();
        self.vsock_after_op();
    }

    /// virtio-net: takes what the device sent to the network; each frame
    /// has a header and asks only for offloads the guest negotiated.
    fn receive_frames(&mut self) {
        let Some(network) = &self.network else { return };
        let acked = self.t.acked_features();
        let mut buf = std::mem::take(&mut self.frame);
        buf.resize(MAX_FRAME_LEN + 1, 0);
        while let Ok(len) = network.recv(&mut buf) {
            self.frames_received += 1;
            assert!((VNET_HDR_LEN..=MAX_FRAME_LEN).contains(&len), "a {len}-byte frame reached the tap");
            let (flags, gso) = (buf[0], buf[1]);
            assert!(
                flags == 0 || flags == NET_HDR_F_NEEDS_CSUM && acked & NET_F_CSUM != 0,
                "frame flags {flags:#x} with features {acked:#x}"
            );
            let allowed = match gso & !NET_HDR_GSO_ECN {
                0 => gso == 0,
                NET_HDR_GSO_TCPV4 => acked & NET_F_HOST_TSO4 != 0,
                NET_HDR_GSO_TCPV6 => acked & NET_F_HOST_TSO6 != 0,
                _ => false,
            } && (gso & NET_HDR_GSO_ECN == 0 || acked & NET_F_HOST_ECN != 0);
            assert!(allowed, "frame gso type {gso:#x} with features {acked:#x}");
        }
        self.frame = buf;
    }

    /// virtio-net: the network sends `count` frames (virtio-net header
    /// first) to the device's tap.
    fn send_frames(&mut self, input: &mut Input, count: usize) {
        let b = input.u8();
        let len = match b >> 6 {
            0 => usize::from(b & 0x3f),
            1 => VNET_HDR_LEN + 64 * usize::from(b & 0x3f),
            2 => VNET_HDR_LEN + 1514 - usize::from(b & 0x3f),
            _ => MAX_FRAME_LEN + 1 - usize::from(b & 0x3f),
        };
        let (flags, gso) = (input.u8(), input.u8());
        let Some(network) = &self.network else { return };
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        frame.resize(len, 0xc3);
        for (i, byte) in [flags, gso].into_iter().chain([0; VNET_HDR_LEN - 2]).enumerate().take(len) {
            frame[i] = byte;
        }
        for _ in 0..count {
            if network.send(&frame).is_ok() {
                self.frames_sent += 1;
            }
        }
        self.frame = frame;
    }

    /// What the VMM's event loop does when a device's host descriptor is
    /// readable.
    fn host_event(&mut self, index: usize) {
        let (isr, irqs) = (self.read_raw(0x60), self.irq.count());
        self.t.host_event(index);
        self.after_device_op(isr, irqs);
    }

    /// The device's host descriptors that are readable now.
    fn readable_host_fds(&self) -> Vec<usize> {
        let mut polls: Vec<libc::pollfd> = self
            .t
            .host_fds()
            .iter()
            .map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: `polls` is a valid array of `polls.len()` pollfds; a zero
        // timeout never blocks.
        let ready = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 0) };
        if ready <= 0 {
            return Vec::new();
        }
        (0..polls.len()).filter(|&i| polls[i].revents & libc::POLLIN != 0).collect()
    }

    fn notify(&mut self, index: usize) {
        let (isr, irqs) = (self.read_raw(0x60), self.irq.count());
        self.t.queue_notify(index);
        self.after_device_op(isr, irqs);
    }

    /// What the VMM's event loop does when a queue's eventfd fires.
    fn serve_notifiers(&mut self) {
        for index in 0..self.notifiers.len() {
            if self.notifiers[index].read().is_ok() {
                self.notify(index);
            }
        }
        for index in self.readable_host_fds() {
            self.host_event(index);
        }
    }

    /// Where the device may write for queue `q`, from the memory the
    /// driver left: every device-writable descriptor of its table and of
    /// the indirect tables it names; what the device reads of the queue
    /// while it works (its rings and tables); and whether there were too
    /// many indirect entries to look at.
    fn writable_ranges(&self, q: &QueueModel) -> (Vec<(u64, u64)>, Vec<(u64, u64)>, bool) {
        let mut writable = Vec::new();
        let mut tables = vec![(q.desc, 16 * u64::from(q.size)), (q.avail, 6 + 2 * u64::from(q.size))];
        let mut budget = INDIRECT_BUDGET;
        let mut aliased = false;
        for i in 0..u64::from(q.size) {
            let Some((addr, len, flags, _)) = self.snap_desc(&self.shadow, q.desc + 16 * i) else {
                continue;
            };
            if flags & DESC_WRITE != 0 {
                writable.push((addr, u64::from(len)));
            }
            if flags & DESC_INDIRECT != 0 && len % 16 == 0 {
                let table = (addr, u64::from(len));
                if tables.contains(&table) {
                    continue;
                }
                tables.push(table);
                for j in 0..u64::from(len / 16) {
                    if budget == 0 {
                        aliased = true;
                        break;
                    }
                    budget -= 1;
                    let Some(entry_at) = addr.checked_add(16 * j) else { break };
                    let Some((a, l, f, _)) = self.snap_desc(&self.shadow, entry_at) else { break };
                    if f & DESC_WRITE != 0 {
                        writable.push((a, u64::from(l)));
                    }
                }
            }
        }
        (writable, tables, aliased)
    }

    fn check_memory(&mut self) {
        let mut changed = false;
        for r in 0..2 {
            changed |= self.ram(r) != &self.shadow[r][..];
        }
        if !changed {
            return;
        }
        for r in 0..2 {
            let mut copy = std::mem::take(&mut self.scratch[r]);
            copy.copy_from_slice(self.ram(r));
            self.scratch[r] = copy;
        }
        let live: Vec<usize> = (0..self.queues.len()).filter(|&i| self.queues[i].ready).collect();
        assert!(!live.is_empty(), "guest memory changed with no queue ready");
        // Every device here has one queue; with more, a byte may be any
        // live queue's.
        let found: Vec<_> = live.iter().map(|&i| (i, self.writable_ranges(&self.queues[i]))).collect();
        // A queue is aliased when any buffer the device may write, or any
        // used ring, overlaps what the device reads of it or its used ring
        // (another queue's data may land there): what the device reads can
        // change while it works, or its used index be overwritten.
        let writable = merge(
            found
                .iter()
                .flat_map(|(i, (w, _, _))| w.iter().chain(&self.held[*i]).copied())
                .collect(),
        );
        if self.expect.holds_chains {
            // What the device wrote may have rewritten descriptors of
            // chains it holds: their buffers stay writable for it.
            for (i, (w, _, _)) in &found {
                let held = &mut self.held[*i];
                held.extend(w);
                *held = merge(std::mem::take(held))
                    .into_iter()
                    .map(|(start, end)| (start as u64, (end - start).min(u128::from(u64::MAX)) as u64))
                    .collect();
            }
        }
        let used_rings: Vec<(usize, (u64, u64))> =
            live.iter().map(|&i| (i, (self.queues[i].used, self.queues[i].used_len()))).collect();
        let checks: Vec<_> = found
            .into_iter()
            .map(|(i, (_, tables, mut aliased))| {
                let q = self.queues[i];
                let used = (q.used, q.used_len());
                aliased |= tables.iter().chain([&used]).any(|&t| overlaps_any(&writable, t));
                aliased |= tables.iter().any(|&t| used_rings.iter().any(|&(_, u)| overlaps(t, u)));
                // Another queue's used ring, even at the very same address
                // (the driver may give two queues one ring), is aliasing.
                aliased |= used_rings.iter().filter(|&&(j, _)| j != i).any(|&(_, u)| overlaps(u, used));
                (i, q, aliased)
            })
            .collect();
        let any_aliased = checks.iter().any(|c| c.2);
        let batch = checks.clone();
        const BLOCK: usize = 64;
        for r in 0..2 {
            if self.scratch[r] == self.shadow[r] {
                continue;
            }
            let differing = (0..REGION as usize / BLOCK)
                .filter(|&b| self.shadow[r][b * BLOCK..][..BLOCK] != self.scratch[r][b * BLOCK..][..BLOCK])
                .flat_map(|b| b * BLOCK..(b + 1) * BLOCK);
            for at in differing {
                let (old, new) = (self.shadow[r][at], self.scratch[r][at]);
                if old == new {
                    continue;
                }
                let addr = self.regions[r] + at as u64;
                if checks.iter().any(|(_, q, _)| contains((q.used, q.used_len()), addr)) {
                    continue;
                }
                if let Some(fill) = self.expect.fill {
                    assert_eq!(new, fill, "the device wrote {new:#x} at {addr:#x}");
                }
                if !any_aliased {
                    assert!(
                        in_merged(&writable, addr),
                        "the device wrote {addr:#x} ({old:#x} -> {new:#x}), outside its used ring \
                         and every device-writable buffer"
                    );
                }
            }
        }
        for (index, q, aliased) in checks {
            if aliased {
                // What the device wrote may have been overwritten by what
                // it wrote next: its used index is unknown from here.
                self.queues[index].dev_used = None;
                continue;
            }
            let (Some(old_used), Some(new_used), Some(avail)) = (
                self.snap_u16(&self.shadow, q.used + 2),
                self.snap_u16(&self.scratch, q.used + 2),
                self.snap_u16(&self.scratch, q.avail + 2),
            ) else {
                unreachable!("an accepted queue's rings are in RAM");
            };
            if old_used == new_used {
                continue;
            }
            // A device that stopped (DEVICE_NEEDS_RESET) may have taken a
            // chain it could not use: then only a looser bound holds.
            let stopped = self.t.status() & NEEDS_RESET != 0;
            let behind = if stopped { u32::from(q.size) * self.expect.used_per_call + 1 } else { u32::from(q.size) };
            assert!(
                u32::from(avail.wrapping_sub(new_used)) <= behind,
                "used index {new_used}, available index {avail}: the used index is ahead, or more \
                 than the queue size ({}) behind; status {:#x}",
                q.size,
                self.t.status()
            );
            if let Some(previous) = q.dev_used {
                let added = new_used.wrapping_sub(previous);
                let most = u32::from(q.size) * self.expect.used_per_call;
                assert!(
                    u32::from(added) <= most,
                    "{added} used entries in one notification of queue {index}, queue size {}",
                    q.size
                );
                for k in 0..added {
                    let slot = u64::from(previous.wrapping_add(k) % q.size);
                    let at = q.used + 4 + 8 * slot;
                    let id = self.snap_u32(&self.scratch, at).unwrap_or_default();
                    let len = self.snap_u32(&self.scratch, at + 4).unwrap_or_default();
                    assert!(id < u32::from(q.size), "used entry names descriptor {id}");
                    assert!(len <= self.expect.max_used_len, "used entry of {len} bytes");
                }
            }
            self.queues[index].dev_used = Some(new_used);
        }
        self.vsock_observe(&batch, &writable);
        std::mem::swap(&mut self.shadow, &mut self.scratch);
    }

    // ---- the driver ----

    fn negotiate(&mut self, features: u64) {
        self.write_reg(0x70, 0);
        self.write_reg(0x70, ACKNOWLEDGE);
        self.write_reg(0x70, ACKNOWLEDGE | DRIVER);
        self.write_reg(0x24, 0);
        self.write_reg(0x20, features as u32);
        self.write_reg(0x24, 1);
        self.write_reg(0x20, (features >> 32) as u32);
        self.write_reg(0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        let offered = self.t.device().features();
        let ok = self.t.status() & FEATURES_OK != 0;
        assert_eq!(ok, features & !offered == 0 && features & VERSION_1 != 0, "features {features:#x}");
        if ok {
            assert_eq!(self.t.acked_features(), features);
        }
    }

    fn install(&mut self, index: u32, queue: &TestQueue, ready: u32) {
        self.write_reg(0x30, index);
        self.write_reg(0x38, u32::from(queue.size));
        for (offset, value) in [(0x80, queue.desc), (0x90, queue.avail), (0xa0, queue.used)] {
            self.write_reg(offset, value as u32);
            self.write_reg(offset + 4, (value >> 32) as u32);
        }
        self.write_reg(0x44, ready);
    }

    fn driver_ok(&mut self) {
        let status = self.t.status();
        self.write_reg(0x70, status | ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    }

    /// The queue the driver helpers work on: the selected one (QueueSel),
    /// or queue 0 when none is.
    fn driver_index(&self) -> usize {
        usize::try_from(self.queue_select).ok().filter(|&i| i < self.queues.len()).unwrap_or(0)
    }

    /// The driver's queue, with a size usable as a modulus.
    fn driver_queue(&self) -> (QueueModel, u16) {
        let q = self.queues[self.driver_index()];
        (q, q.size.max(1))
    }

    fn write_desc(&mut self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        self.poke(table.wrapping_add(16 * u64::from(index)), &raw);
    }

    fn publish(&mut self, head: u16) {
        let (q, size) = self.driver_queue();
        let slot = u64::from(q.avail_idx % size);
        self.poke(q.avail.wrapping_add(4 + 2 * slot), &head.to_le_bytes());
        let idx = q.avail_idx.wrapping_add(1);
        let index = self.driver_index();
        self.queues[index].avail_idx = idx;
        self.poke(q.avail.wrapping_add(2), &idx.to_le_bytes());
    }

    /// Writes a chain of buffers (into the table, or into an indirect table
    /// at `indirect` that one descriptor of the table names) and makes it
    /// available.
    fn add_chain(&mut self, buffers: &[(u64, u32, bool)], indirect: Option<u64>) {
        let (q, size) = self.driver_queue();
        let head = q.next_desc % size;
        let count = buffers.len() as u32;
        let (table, first, modulus) = match indirect {
            Some(at) => (at, 0, u32::from(u16::MAX)),
            None => (q.desc, u32::from(head), u32::from(size)),
        };
        for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
            let index = (first + i as u32) % modulus;
            let last = i + 1 == buffers.len();
            let flags = if last { 0 } else { DESC_NEXT } | if writable { DESC_WRITE } else { 0 };
            let next = (index + 1) % modulus;
            self.write_desc(table, index as u16, addr, len, flags, next as u16);
        }
        let used_descs = match indirect {
            Some(at) => {
                self.write_desc(q.desc, head, at, 16 * count, DESC_INDIRECT, 0);
                1
            }
            None => count,
        };
        let index = self.driver_index();
        self.queues[index].next_desc = ((u32::from(head) + used_descs) % u32::from(size)) as u16;
        self.publish(head);
    }

    // ---- decoding the input ----

    fn pick_addr(&self, input: &mut Input) -> u64 {
        let b = input.u8();
        match b >> 6 {
            0 => self.regions[0] + u64::from(input.u16()) % REGION,
            1 => self.regions[1] + u64::from(input.u16()) % REGION,
            // The last bytes of a region, or its end.
            2 => self.regions[usize::from(b & 1)] + REGION - u64::from(b >> 1 & 0x1f),
            _ => input.u64(),
        }
    }

    /// Like `pick_addr`, 16-byte aligned unless fully arbitrary.
    fn pick_ring(&self, input: &mut Input) -> u64 {
        let b = input.u8();
        match b >> 6 {
            0 => self.regions[0] + (u64::from(input.u16()) % REGION & !0xf),
            1 => self.regions[1] + (u64::from(input.u16()) % REGION & !0xf),
            2 => self.regions[usize::from(b & 1)] + REGION - 16 * u64::from(b >> 1 & 0x1f),
            _ => input.u64(),
        }
    }

    /// A queue of `size` laid out from `base` as `TestQueue::new` does, but
    /// wrapping (any base, e.g. near 2^64: the transport must refuse it).
    fn layout(size: u16, base: u64) -> TestQueue {
        let mut queue = TestQueue::new(size, 0);
        queue.desc = base;
        queue.avail = base.wrapping_add(16 * u64::from(size));
        queue.used = queue.avail.wrapping_add(6 + 2 * u64::from(size) + 3) & !3;
        queue
    }

    fn pick_len(input: &mut Input) -> u32 {
        let b = input.u8();
        match b {
            0..=0x3f => u32::from(b),
            0x40..=0x7f => 512 * u32::from(b & 0x3f),
            0x80..=0xbf => u32::from(input.u16()),
            0xc0..=0xfe => 0x8000 * u32::from(b - 0xbf),
            0xff => input.u32(),
        }
    }

    fn pick_size(&self, input: &mut Input) -> u16 {
        let b = input.u8();
        match b {
            0..=0x9f => 1 << (b % 10),
            0xa0..=0xef => self.queues[0].max,
            _ => input.u16(),
        }
    }

    fn pick_offset(input: &mut Input) -> u64 {
        let b = input.u8();
        if b < 0xc0 { u64::from(b) * 4 } else { u64::from(input.u16()) % MMIO_WINDOW_SIZE }
    }

    fn step(&mut self, input: &mut Input) {
        let op = input.u8();
        let p = op >> 4;
        if vmm_fuzz::verbose() {
            let q = self.queues[0];
            eprintln!(
                "op {:2} param {p:#x}: status {:#x}, queue 0 {} size {} rings {:#x}/{:#x}/{:#x}, \
                 driver avail {}, device used {:?}",
                op & 0xf,
                self.t.status(),
                if q.ready { "ready" } else { "not ready" },
                q.size,
                q.desc,
                q.avail,
                q.used,
                q.avail_idx,
                q.dev_used
            );
            for (i, q) in self.queues.iter().enumerate().skip(1).filter(|(_, q)| q.ready) {
                eprintln!(
                    "       queue {i} size {} rings {:#x}/{:#x}/{:#x}, driver avail {}, device used {:?}",
                    q.size, q.desc, q.avail, q.used, q.avail_idx, q.dev_used
                );
            }
        }
        match op & 0x0f {
            0 => {
                let offset = Self::pick_offset(input);
                let width = [4, 4, 1, 2, 8, 4, 4, 4][usize::from(p & 7)];
                let mut data = [0u8; 8];
                let bytes = input.bytes(width);
                data[..bytes.len()].copy_from_slice(bytes);
                self.mmio_write(offset, &data[..width]);
            }
            1 => {
                let offset = Self::pick_offset(input);
                let width = [4, 4, 1, 2, 8, 4, 4, 4][usize::from(p & 7)];
                let fill = input.u8();
                self.mmio_read(offset, width, fill);
            }
            2 => {
                let offered = self.t.device().features();
                let mut features = if p & 1 != 0 { offered & input.u64() } else { input.u64() };
                if p & 2 != 0 {
                    features |= VERSION_1;
                }
                self.negotiate(features);
            }
            3 => {
                let index = if p & 1 != 0 { input.u32() } else { 0 };
                let size = self.pick_size(input);
                let mut queue = Self::layout(size, self.pick_ring(input));
                if p & 2 != 0 {
                    queue.avail = self.pick_addr(input);
                    queue.used = self.pick_addr(input);
                }
                let ready = if p & 4 != 0 { input.u32() } else { 1 };
                self.install(index, &queue, ready);
            }
            4 => self.driver_ok(),
            5 => {
                let (q, size) = self.driver_queue();
                let index = if p & 1 != 0 { input.u16() } else { input.u16() % size };
                let addr = self.pick_addr(input);
                let len = Self::pick_len(input);
                let b = input.u8();
                let flags = if b & 0xf8 == 0xf8 { input.u16() } else { u16::from(b & 7) };
                let next = if p & 2 != 0 { input.u16() } else { input.u16() % size };
                self.write_desc(q.desc, index, addr, len, flags, next);
            }
            6 => {
                let count = usize::from(p & 7) + 1;
                let writable = input.u8();
                let buffers: Vec<_> = (0..count)
                    .map(|i| (self.pick_addr(input), Self::pick_len(input), writable >> i & 1 != 0))
                    .collect();
                let indirect = (p & 8 != 0).then(|| self.pick_ring(input));
                self.add_chain(&buffers, indirect);
            }
            7 if self.vsock.is_some() && p & 8 != 0 => self.vsock_buffers(p, input),
            7 if self.vsock.is_some() => self.vsock_packet(p, input),
            7 => {
                let kind = match input.u8() {
                    0..=0x3f => BLK_T_IN,
                    0x40..=0x7f => BLK_T_OUT,
                    0x80..=0x9f => BLK_T_FLUSH,
                    0xa0..=0xbf => BLK_T_GET_ID,
                    _ => input.u32(),
                };
                let sector = match input.u8() {
                    0xff => input.u64(),
                    b => u64::from(b),
                };
                let header = self.pick_addr(input);
                let mut raw = [0u8; 16];
                raw[..4].copy_from_slice(&kind.to_le_bytes());
                raw[8..].copy_from_slice(&sector.to_le_bytes());
                self.poke(header, &raw);
                let device_writes = kind == BLK_T_IN || kind == BLK_T_GET_ID;
                let mut buffers = vec![(header, 16, false)];
                for _ in 0..p & 3 {
                    let (addr, len) = (self.pick_addr(input), Self::pick_len(input));
                    buffers.push((addr, len, device_writes ^ (p & 4 != 0)));
                }
                buffers.push((self.pick_addr(input), 1, true));
                let indirect = (p & 8 != 0).then(|| self.pick_ring(input));
                self.add_chain(&buffers, indirect);
            }
            8 => {
                if p & 1 != 0 {
                    let idx = input.u16();
                    let index = self.driver_index();
                    self.queues[index].avail_idx = idx;
                    let avail = self.queues[index].avail;
                    self.poke(avail.wrapping_add(2), &idx.to_le_bytes());
                } else {
                    let (_, size) = self.driver_queue();
                    let head = if p & 2 != 0 { input.u16() } else { input.u16() % size };
                    self.publish(head);
                }
            }
            9 => {
                let addr = self.pick_addr(input);
                let len = usize::from(input.u8() % 65);
                let bytes = input.bytes(len);
                self.poke(addr, bytes);
            }
            10 => {
                let index = if p & 1 != 0 { input.u64() as usize } else { usize::from(p >> 1) };
                self.notify(index);
            }
            11 => {
                let value = if p & 1 != 0 { input.u32() } else { u32::from(p >> 1) };
                self.write_reg(QUEUE_NOTIFY, value);
            }
            12 => match p {
                _ if p & 8 != 0 && self.vsock.is_some() => self.vsock_host(p, input),
                _ if p & 8 != 0 => self.send_frames(input, [1, 2, 3, 4, 8, 16, 64, 65][usize::from(p & 7)]),
                _ if p & 1 != 0 => self.host_event(usize::from(p >> 1 & 3)),
                _ => self.serve_notifiers(),
            },
            13 => {
                let value = if p & 1 != 0 { u32::from(input.u8()) } else { 0 };
                self.write_reg(0x70, value);
            }
            14 => {
                let isr = self.read_raw(0x60);
                let value = if p & 1 != 0 { input.u32() } else { isr };
                self.write_reg(0x64, value);
                assert_eq!(self.read_raw(0x60), isr & !value, "acknowledged {value:#x} of {isr:#x}");
            }
            _ => {
                let offered = self.t.device().features();
                let features = offered & !if p & 1 != 0 { EVENT_IDX } else { 0 };
                self.negotiate(features);
                let size = self.pick_size(input);
                let mut base = self.pick_ring(input);
                for index in 0..self.queues.len() {
                    let queue = Self::layout(size, base);
                    self.install(index as u32, &queue, 1);
                    base = queue.used.wrapping_add(6 + 8 * u64::from(size) + 15) & !15;
                }
                self.write_reg(0x30, 0);
                self.driver_ok();
            }
        }
    }

    // ---- virtio-vsock ----

    /// The descriptors (address, length, flags) a chain yields, at most
    /// `want`, walked the way virtio-queue walks it (an indirect table
    /// anywhere in the chain but not in another, a time to live of the
    /// table's size, lengths whose sum fits in 32 bits).
    fn walk_chain(&self, snap: &[Vec<u8>; 2], q: &QueueModel, head: u16, want: usize) -> Vec<(u64, u32, u16)> {
        let (mut table, mut size, mut next, mut ttl) = (q.desc, q.size, head, q.size);
        let (mut indirect, mut yielded) = (false, 0u32);
        let mut descs = Vec::new();
        while descs.len() < want && ttl > 0 && next < size {
            let Some(at) = table.checked_add(16 * u64::from(next)) else { break };
            let Some((addr, len, flags, following)) = self.snap_desc(snap, at) else { break };
            if flags & DESC_INDIRECT != 0 {
                if indirect || len % 16 != 0 || len / 16 > u32::from(u16::MAX) {
                    break;
                }
                (table, size, next, ttl, indirect) = (addr, (len / 16) as u16, 0, (len / 16) as u16, true);
                continue;
            }
            let Some(total) = yielded.checked_add(len) else { break };
            yielded = total;
            if flags & DESC_NEXT != 0 {
                next = following;
                ttl -= 1;
            } else {
                ttl = 0;
            }
            descs.push((addr, len, flags));
        }
        descs
    }

    /// Whether `len` bytes at `addr` lie in one RAM region (what a packet's
    /// header or data must do).
    fn single_region(&self, addr: u64, len: u64) -> bool {
        self.locate(addr).is_some_and(|(_, at)| (at as u64).checked_add(len).is_some_and(|end| end <= REGION))
    }

    /// Where a receive chain takes a packet, as virtio-vsock reads it: the
    /// header's buffer (the first descriptor's first 44 bytes) and the
    /// data's (the rest of a lone descriptor, or the second descriptor).
    fn rx_slices(&self, q: &QueueModel, head: u16) -> Option<((u64, u64), (u64, u64))> {
        let descs = self.walk_chain(&self.shadow, q, head, 2);
        let &(addr, len, flags) = descs.first()?;
        let header = VSOCK_HDR as u64;
        if flags & DESC_WRITE == 0 || u64::from(len) < header || !self.single_region(addr, header) {
            return None;
        }
        if flags & DESC_NEXT == 0 && u64::from(len) > header {
            let data = addr.checked_add(header)?;
            let data_len = u64::from(len) - header;
            return self.single_region(data, data_len).then_some(((addr, header), (data, data_len)));
        }
        let &(data, data_len, data_flags) = descs.get(1)?;
        let ok = data_flags & DESC_WRITE != 0
            && data_len > 0
            && data_len <= MAX_PKT_DATA
            && self.single_region(data, data_len.into());
        ok.then_some(((addr, header), (data, data_len.into())))
    }

    /// The packet a transmit chain holds, as virtio-vsock reads it, and the
    /// buffers it reads (header, data); None for a malformed chain.
    fn tx_packet(&self, q: &QueueModel, head: u16) -> Option<(VsockHdr, Vec<(u64, u64)>)> {
        let descs = self.walk_chain(&self.shadow, q, head, 2);
        let &(addr, len, flags) = descs.first()?;
        let header = VSOCK_HDR as u64;
        if flags & DESC_WRITE != 0 || u64::from(len) < header || !self.single_region(addr, header) {
            return None;
        }
        let mut raw = [0u8; VSOCK_HDR];
        if !self.snap_read(&self.shadow, addr, &mut raw) {
            return None;
        }
        let hdr = VsockHdr::decode(&raw);
        let mut read = vec![(addr, header)];
        if hdr.len == 0 {
            return Some((hdr, read));
        }
        if hdr.len > MAX_PKT_DATA {
            return None;
        }
        let data = if flags & DESC_NEXT == 0 && u64::from(len) - header >= u64::from(hdr.len) {
            addr.checked_add(header)?
        } else {
            let &(data, data_len, data_flags) = descs.get(1)?;
            if data_flags & DESC_WRITE != 0 || data_len < hdr.len {
                return None;
            }
            data
        };
        if !self.single_region(data, hdr.len.into()) {
            return None;
        }
        read.push((data, hdr.len.into()));
        Some((hdr, read))
    }

    /// virtio-vsock: the packets the last device operation put in the
    /// receive queue and took from the transmit queue (`shadow` holds guest
    /// memory from before it, `scratch` from after).
    fn vsock_observe(&mut self, checks: &[(usize, QueueModel, bool)], writable: &[(u128, u128)]) {
        let Some(mut side) = self.vsock.take() else { return };
        let used_rings: Vec<(u64, u64)> = checks.iter().map(|(_, q, _)| (q.used, q.used_len())).collect();
        for &(index, q, aliased) in checks {
            if index != RX_QUEUE && index != TX_QUEUE {
                continue;
            }
            let (Some(old), Some(new)) =
                (self.snap_u16(&self.shadow, q.used + 2), self.snap_u16(&self.scratch, q.used + 2))
            else {
                continue;
            };
            if old == new && !aliased {
                continue;
            }
            // A used ring another queue shares: whose entries are they?
            let shared = used_rings.iter().filter(|&&u| overlaps(u, (q.used, q.used_len()))).count() > 1;
            // More entries than the ring holds: the first were overwritten.
            let wrapped = new.wrapping_sub(old) > q.size;
            if aliased || shared || wrapped || q.dev_used != Some(old) {
                // What the device added is not known.
                if index == RX_QUEUE {
                    side.rx_batch = None;
                    side.rx_lost();
                } else {
                    side.tx_batch = None;
                    side.tx_lost();
                }
                continue;
            }
            let entries: Vec<(u16, u32)> = (0..new.wrapping_sub(old))
                .map(|k| {
                    let at = q.used + 4 + 8 * u64::from(old.wrapping_add(k) % q.size);
                    let id = self.snap_u32(&self.scratch, at).unwrap_or_default();
                    (id as u16, self.snap_u32(&self.scratch, at + 4).unwrap_or_default())
                })
                .collect();
            if index == TX_QUEUE {
                let mut packets = 0;
                for &(head, len) in &entries {
                    assert_eq!(len, 0, "transmit chain {head} used with a length");
                    // The device may have read the chain's buffers after
                    // writing over them (a used ring, or a receive packet
                    // when one operation served several queues: DRIVER_OK).
                    let descs = self.walk_chain(&self.shadow, &q, head, 2);
                    let written = |r: (u64, u64)| {
                        overlaps_any(writable, r) || used_rings.iter().any(|&u| overlaps(r, u))
                    };
                    if descs.iter().any(|&(addr, len, _)| written((addr, len.into()))) {
                        side.tx_batch = None;
                        side.tx_lost();
                        continue;
                    }
                    let Some((hdr, _)) = self.tx_packet(&q, head) else { continue };
                    packets += 1;
                    side.parsed.1 += 1;
                    side.sent(&hdr);
                }
                if side.tx_batch.is_some() {
                    side.tx_batch = Some(packets);
                }
                continue;
            }
            let slices: Vec<Option<((u64, u64), (u64, u64))>> =
                entries.iter().map(|&(head, len)| if len == 0 { None } else { self.rx_slices(&q, head) }).collect();
            // Packets whose buffers overlap each other or a used ring cannot
            // be read back: a later write may have changed them.
            let mut ranges: Vec<(u64, u64)> =
                slices.iter().flatten().flat_map(|&(h, d)| [h, d]).chain(used_rings.iter().copied()).collect();
            ranges.sort_unstable();
            let mut end = 0u128;
            let mut overlap = false;
            for &(start, len) in &ranges {
                overlap |= u128::from(start) < end;
                end = end.max(u128::from(start) + u128::from(len));
            }
            let mut count = 0;
            let mut bytes = Some(0);
            for (&(head, used_len), slices) in entries.iter().zip(&slices) {
                if used_len == 0 {
                    continue;
                }
                count += 1;
                let packet = match slices {
                    Some((h, d)) if !overlap => {
                        let mut raw = [0u8; VSOCK_HDR];
                        self.snap_read(&self.scratch, h.0, &mut raw);
                        let hdr = VsockHdr::decode(&raw);
                        let mut data = vec![0u8; (u64::from(hdr.len)).min(d.1) as usize];
                        self.snap_read(&self.scratch, d.0, &mut data);
                        RxPacket::Packet(hdr, data, d.1)
                    }
                    _ => RxPacket::Unknown,
                };
                match packet {
                    RxPacket::Packet(hdr, data, room) => {
                        if vmm_fuzz::verbose() {
                            eprintln!("  vsock rx (chain {head}): {hdr:?}, {} bytes", data.len());
                        }
                        side.parsed.0 += 1;
                        side.received(&hdr, &data, used_len, room);
                        if hdr.op == VSOCK_OP_RW {
                            bytes = bytes.map(|b| b + u64::from(hdr.len));
                        }
                    }
                    RxPacket::Unknown => {
                        if vmm_fuzz::verbose() {
                            eprintln!("  vsock rx (chain {head}): {used_len} bytes, not parsed");
                        }
                        bytes = None;
                        side.rx_lost();
                    }
                }
            }
            if side.rx_batch.is_some() {
                side.rx_batch = Some((count, bytes));
            }
        }
        self.vsock = Some(side);
    }

    /// virtio-vsock, before the memory check of a device operation: what it
    /// added to the used rings is known (none, until the check finds some)
    /// where the target knows the used index the device last wrote.
    fn vsock_before_check(&mut self) {
        // A used ring another queue shares may show no change for an
        // entry the device added (the same bytes as the other queue's).
        let shared = |q: &QueueModel| {
            let used = (q.used, q.used_len());
            self.queues.iter().filter(|o| o.ready && overlaps((o.used, o.used_len()), used)).count() > 1
        };
        let known =
            |i: usize| self.queues.get(i).is_some_and(|q| !q.ready || q.dev_used.is_some() && !shared(q));
        let (rx_known, tx_known) = (known(RX_QUEUE), known(TX_QUEUE));
        let Some(side) = &mut self.vsock else { return };
        side.rx_batch = rx_known.then_some((0, Some(0)));
        side.tx_batch = tx_known.then_some(0);
    }

    /// virtio-vsock, after each device operation: the device counts exactly
    /// the packets the guest saw come and go.
    fn vsock_after_op(&mut self) {
        let Some(counters) = self.t.device().vsock_counters() else { return };
        let stopped = self.t.status() & NEEDS_RESET != 0;
        let Some(side) = &mut self.vsock else { return };
        let before = std::mem::replace(&mut side.counters, counters);
        let (rx, tx) = (side.rx_batch, side.tx_batch);
        if stopped {
            return;
        }
        if let Some((packets, bytes)) = rx {
            assert_eq!(counters.rx_packets - before.rx_packets, packets, "receive packets counted");
            if let Some(bytes) = bytes {
                assert_eq!(counters.rx_bytes - before.rx_bytes, bytes, "receive bytes counted");
            }
        }
        if let Some(packets) = tx {
            assert_eq!(
                counters.tx_packets - before.tx_packets,
                packets,
                "transmit packets counted; queues {:?}",
                self.queues
            );
        }
    }

    /// Runs `f` with QueueSel on `queue` (as a driver selects the queue it
    /// sets buffers up in), then selects the queue selected before.
    fn on_queue(&mut self, queue: usize, f: impl FnOnce(&mut Self)) {
        let previous = self.queue_select;
        self.write_reg(0x30, queue as u32);
        f(self);
        self.write_reg(0x30, previous);
    }

    /// A vsock packet on the transmit queue: any CIDs, ports (those of the
    /// last packet received, from the tables, any), operation, type,
    /// length, flags and credit; the payload after the header or in a
    /// second descriptor, direct or through an indirect table.
    fn vsock_packet(&mut self, p: u8, input: &mut Input) {
        let Some(side) = &self.vsock else { return };
        let sel = input.u8();
        let (src_cid, dst_cid) = if sel & 3 == 3 { (input.u64(), input.u64()) } else { (GUEST_CID, VSOCK_HOST_CID) };
        let op = match sel >> 2 & 7 {
            7 => input.u16(),
            n => u16::from(n) + 1,
        };
        let (src_port, dst_port) = match sel >> 5 & 3 {
            0 => (side.last_ports.1, side.last_ports.0),
            1 => {
                let b = usize::from(input.u8());
                (GUEST_PORTS[b & 3], HOST_PORTS[b >> 2 & 7])
            }
            2 => {
                let b = usize::from(input.u8());
                (input.u32(), HOST_PORTS[b & 7])
            }
            _ => (input.u32(), input.u32()),
        };
        let type_ = if sel & 0x80 != 0 { input.u16() } else { VSOCK_TYPE_STREAM };
        let b = input.u8();
        let payload = [0u32, 1, 7, 64, 500, 4096, 16384, 32768][usize::from(b & 7)];
        let len = if b & 8 != 0 { input.u32() } else { payload };
        let flags = match input.u8() {
            0xff => input.u32(),
            b => u32::from(b),
        };
        let b = input.u8();
        let buf_alloc = match b & 7 {
            0 => 256 * 1024,
            1 => 0,
            2 => 1,
            3 => 100,
            4 => 4096,
            5 => 65536,
            6 => u32::MAX,
            _ => input.u32(),
        };
        // What a guest that consumed everything it received says.
        let consumed = side.conns.get(&(dst_port, src_port)).map_or(0, |conn| conn.rx_cnt);
        let fwd_cnt = match b >> 3 & 3 {
            0 => consumed,
            1 => 0,
            2 => consumed.wrapping_sub(u32::from(input.u8())),
            _ => input.u32(),
        };
        let hdr =
            VsockHdr { src_cid, dst_cid, src_port, dst_port, len, type_, op, flags, buf_alloc, fwd_cnt };
        let header = self.pick_addr(input);
        let split = p & 1 != 0;
        let data = if split { self.pick_addr(input) } else { header.wrapping_add(VSOCK_HDR as u64) };
        let indirect = (p & 4 != 0).then(|| self.pick_ring(input));
        if vmm_fuzz::verbose() {
            eprintln!("  vsock tx at {header:#x}: {hdr:?}, {payload} payload bytes at {data:#x}");
        }
        self.poke(header, &hdr.encode());
        let bytes: Vec<u8> = (0..payload as usize).map(guest_byte).collect();
        self.poke(data, &bytes);
        let chain = if split {
            vec![(header, VSOCK_HDR as u32, false), (data, payload, false)]
        } else {
            vec![(header, VSOCK_HDR as u32 + payload, false)]
        };
        self.on_queue(TX_QUEUE, |rig| rig.add_chain(&chain, indirect));
        if p & 2 != 0 {
            self.notify(TX_QUEUE);
        }
    }

    /// Receive buffers (a header and 0 to 16 KiB of data, in one
    /// descriptor or two) or event-queue buffers, `count` of them one after
    /// another, optionally notified.
    fn vsock_buffers(&mut self, p: u8, input: &mut Input) {
        let count = 1u64 << (p & 7);
        let b = input.u8();
        let data = [1u32, 16, 64, 256, 1024, 4096, 0, 16384][usize::from(b & 7)];
        let (split, event, notify) = (b & 8 != 0, b & 16 != 0, b & 32 != 0);
        let at = self.pick_addr(input);
        let queue = if event { EVENT_QUEUE } else { RX_QUEUE };
        let len = if event { 8 } else { VSOCK_HDR as u32 + data };
        self.on_queue(queue, |rig| {
            for i in 0..count {
                let addr = at.wrapping_add(i * u64::from(len));
                if split && !event {
                    let data_at = addr.wrapping_add(VSOCK_HDR as u64);
                    rig.add_chain(&[(addr, VSOCK_HDR as u32, true), (data_at, data, true)], None);
                } else {
                    rig.add_chain(&[(addr, len, true)], None);
                }
            }
        });
        if notify {
            self.notify(queue);
        }
    }

    /// The host side acts: a host program connects, sends a `CONNECT` line
    /// (good, in another form, raw or overlong), data or raw bytes, reads,
    /// shuts down or closes a stream (a host program's or an accepted
    /// peer's); or the event loop serves the device a few times over.
    fn vsock_host(&mut self, p: u8, input: &mut Input) {
        if p & 7 == 7 {
            for _ in 0..4 {
                self.serve_notifiers();
            }
            return;
        }
        let Some(side) = &mut self.vsock else { return };
        side.accept_all();
        if p & 7 == 0 {
            side.connect();
            return;
        }
        let Some(h) = side.pick(input) else { return };
        let b = input.u8();
        match p & 7 {
            1 => {
                let line = match b >> 6 {
                    0 => format!("CONNECT {}\n", GUEST_PORTS[usize::from(b & 3)]).into_bytes(),
                    1 => {
                        let port = input.u32();
                        match b & 3 {
                            0 => format!("connect {port}\r\n"),
                            1 => format!("Connect  {port} \n"),
                            2 => format!("CONNECT {port}"),
                            _ => format!("CONNECT {port}\n"),
                        }
                        .into_bytes()
                    }
                    2 => input.bytes(usize::from(b & 0x3f)).to_vec(),
                    _ => format!("CONNECT {}52\n", "0".repeat(usize::from(b & 0x3f))).into_bytes(),
                };
                side.write(h, &line);
            }
            2 => {
                let len = match b & 7 {
                    7 => usize::from(input.u16()),
                    n => [1, 10, 100, 1000, 4096, 16384, 65536][usize::from(n)],
                };
                side.write_data(h, len);
            }
            3 => side.read(h, [1, 16, 100, 4096, 65536, 200_000, 14, 3][usize::from(b & 7)]),
            4 => {
                if let Some(stream) = &side.hosts[h].stream {
                    let how = [Shutdown::Write, Shutdown::Read, Shutdown::Both][usize::from(b % 3)];
                    let _ = stream.shutdown(how);
                }
            }
            5 => side.hosts[h].stream = None,
            _ => {
                let bytes = input.bytes(usize::from(b % 65)).to_vec();
                side.write(h, &bytes);
            }
        }
    }

    /// What the run did, for `VMM_FUZZ_VERBOSE`.
    fn summary(&self) -> String {
        let q = self.queues[0];
        format!(
            "status {:#x}, features {:#x}, queue 0 ready {} size {} used index {:?}, {} interrupts",
            self.t.status(),
            self.t.acked_features(),
            q.ready,
            q.size,
            q.dev_used,
            self.irq.count()
        )
    }

    fn run(&mut self, input: &mut Input) {
        let mut ops = 0;
        while !input.is_empty() && ops < MAX_OPS {
            self.step(input);
            ops += 1;
        }
        // Whatever the VMM would still serve, and nothing written behind
        // the target's back.
        self.serve_notifiers();
        let (isr, irqs) = (self.read_raw(0x60), self.irq.count());
        self.after_device_op(isr, irqs);
        if self.t.status() & DRIVER_OK == 0 {
            self.check_memory();
        }
    }
}

// ---- virtio-vsock ----

/// The guest's CID.
const GUEST_CID: u64 = 3;
const VSOCK_HOST_CID: u64 = 2;
/// A vsock packet header's size.
const VSOCK_HDR: usize = 44;
const VSOCK_TYPE_STREAM: u16 = 1;
const VSOCK_OP_REQUEST: u16 = 1;
const VSOCK_OP_RESPONSE: u16 = 2;
const VSOCK_OP_RST: u16 = 3;
const VSOCK_OP_RW: u16 = 5;
const VSOCK_OP_CREDIT_REQUEST: u16 = 7;
/// Host ports with a listener at `PATH_<port>` during each input.
const LISTEN_PORTS: [u32; 3] = [1024, 1025, 5000];
/// Where the device's own ports (for host programs' connections) start:
/// only for the fuzzer's port table (the checks do not rely on it).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Host ports a guest packet may name: listened ones, an unlistened one,
/// the device's first local ports, the host CID's number.
const HOST_PORTS: [u32; 8] =
    [1024, 1025, 5000, 1026, FIRST_LOCAL_PORT, FIRST_LOCAL_PORT + 1, FIRST_LOCAL_PORT + 2, 2];
/// Guest ports a host program or a guest packet may name.
const GUEST_PORTS: [u32; 4] = [1000, 1001, 1002, 52];
/// The longest `CONNECT` line the device reads, `\n` included.
const MAX_HELLO_LEN: usize = 32;
/// Host programs connected per input at most (fewer than the listener's
/// backlog: a connect never waits).
const MAX_HOST_PROGRAMS: usize = 24;
/// Connections accepted on the listeners per input at most.
const MAX_ACCEPTED: usize = 128;

/// A vsock packet header (virtio 1.2, 5.10.6), little-endian.
#[derive(Clone, Copy, Debug, Default)]
struct VsockHdr {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl VsockHdr {
    fn decode(b: &[u8; VSOCK_HDR]) -> VsockHdr {
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        VsockHdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    fn encode(&self) -> [u8; VSOCK_HDR] {
        let mut b = [0u8; VSOCK_HDR];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// The bytes host program or peer `id` writes at `offset` of its stream:
/// different for every stream, so that data reaching the guest names the
/// stream it came from.
fn host_byte(id: u32, offset: usize) -> u8 {
    let x = (offset as u32).wrapping_mul(0x9e37_79b9) ^ id.wrapping_mul(0x85eb_ca6b);
    ((x ^ (x >> 15)).wrapping_mul(0x2c1b_3c6d) >> 24) as u8
}

/// The payload bytes of the guest's packets.
fn guest_byte(offset: usize) -> u8 {
    (offset as u8).wrapping_mul(31) ^ 0x5c
}

/// The port of a `CONNECT <port>\n` line, as the hybrid vsock protocol
/// (Firecracker's) reads it: the word in any case, one port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    let keyword = words.next()?;
    let port = words.next()?.parse().ok()?;
    (keyword.eq_ignore_ascii_case("connect") && words.next().is_none()).then_some(port)
}

/// A Unix stream of the host side: a host program connected to the
/// device's socket, or a peer the target's listener accepted.
struct HostStream {
    /// None once the target closed it.
    stream: Option<UnixStream>,
    id: u32,
    /// The listener's port for a peer; None for a host program.
    peer_of: Option<u32>,
    /// Every byte the kernel took, in order.
    written: Vec<u8>,
    /// Every byte read from it.
    read: Vec<u8>,
    /// A host program read its whole `OK <port>\n` line.
    ok_line: bool,
}

impl HostStream {
    /// A host program's `CONNECT` line: its length and port, once it is
    /// complete (a `\n` within `MAX_HELLO_LEN` bytes).
    fn hello(&self) -> Option<(usize, Option<u32>)> {
        let end = self.written.iter().take(MAX_HELLO_LEN).position(|&b| b == b'\n')? + 1;
        Some((end, parse_connect(&self.written[..end])))
    }

    /// The bytes that are the connection's data (after the `CONNECT` line
    /// for a host program).
    fn data(&self) -> &[u8] {
        match self.peer_of {
            Some(_) => &self.written,
            None => self.hello().map_or(&[], |(end, _)| &self.written[end..]),
        }
    }
}

/// What the guest has seen of one connection (host port, guest port).
#[derive(Debug)]
struct GuestConn {
    /// Between the device's REQUEST or RESPONSE and its RST.
    alive: bool,
    /// Every packet the device sent on it since it opened was seen.
    tracked: bool,
    /// Payload bytes received since it opened (the device's rx count).
    rx_cnt: u32,
    /// Host streams whose data it can be: those whose data starts with
    /// what the guest received on it.
    candidates: Vec<usize>,
}

/// virtio-vsock: the host side (the device's socket, listeners at
/// `PATH_<port>`, host programs and accepted peers) and the guest's view of
/// the connections.
struct VsockSide {
    path: PathBuf,
    listeners: Vec<(u32, UnixListener)>,
    hosts: Vec<HostStream>,
    host_programs: usize,
    accepted: usize,
    conns: HashMap<(u32, u32), GuestConn>,
    /// The credit the guest last gave each connection (buf_alloc,
    /// fwd_cnt), from the packets the target parsed; cleared when a
    /// transmit chain could not be parsed.
    credits: HashMap<(u32, u32), (u32, u32)>,
    /// Every receive packet since the last reset was parsed (a connection
    /// the target never saw open is then one that never opened).
    rx_complete: bool,
    /// Every receive packet of the input was parsed.
    rx_never_lost: bool,
    /// The connections (host port, guest port) the device asked the guest
    /// for (REQUEST), over the input.
    requests: Vec<(u32, u32)>,
    /// The ports of the last packet the guest received (host, guest).
    last_ports: (u32, u32),
    /// The device's counters as last checked.
    counters: VsockCounters,
    /// What the last device operation put in the rings, when known:
    /// (receive packets, their payload bytes when all parsed), transmit
    /// packets.
    rx_batch: Option<(u64, Option<u64>)>,
    tx_batch: Option<u64>,
    /// For `VMM_FUZZ_VERBOSE`: packets parsed and lost.
    parsed: (u64, u64),
    lost: (u64, u64),
}

/// A packet in a used receive chain as the target read it back.
enum RxPacket {
    /// The header, the payload, the room the buffer had for it.
    Packet(VsockHdr, Vec<u8>, u64),
    /// A packet the target could not read back (buffers overlapping each
    /// other, or a chain it reads differently).
    Unknown,
}

impl VsockSide {
    fn new(path: PathBuf) -> VsockSide {
        let listeners = LISTEN_PORTS
            .iter()
            .map(|&port| {
                let at = port_path(&path, port);
                let _ = std::fs::remove_file(&at);
                let listener = UnixListener::bind(&at).expect("listen at PATH_<port>");
                listener.set_nonblocking(true).expect("non-blocking listener");
                (port, listener)
            })
            .collect();
        VsockSide {
            path,
            listeners,
            hosts: Vec::new(),
            host_programs: 0,
            accepted: 0,
            conns: HashMap::new(),
            credits: HashMap::new(),
            rx_complete: true,
            rx_never_lost: true,
            requests: Vec::new(),
            last_ports: (LISTEN_PORTS[0], GUEST_PORTS[0]),
            counters: VsockCounters::default(),
            rx_batch: Some((0, Some(0))),
            tx_batch: Some(0),
            parsed: (0, 0),
            lost: (0, 0),
        }
    }

    /// The device was reset: every connection is gone.
    fn reset(&mut self) {
        self.conns.clear();
        self.rx_complete = true;
    }

    /// A receive packet could not be parsed: from here on, no connection
    /// open now is tracked.
    fn rx_lost(&mut self) {
        self.lost.0 += 1;
        self.rx_complete = false;
        self.rx_never_lost = false;
        for conn in self.conns.values_mut() {
            conn.tracked = false;
        }
    }

    /// A transmit packet could not be parsed: any connection's credit may
    /// have changed.
    fn tx_lost(&mut self) {
        self.lost.1 += 1;
        self.credits.clear();
    }

    /// Accepts the device's connections to the listeners.
    fn accept_all(&mut self) {
        for (port, listener) in &self.listeners {
            while self.accepted < MAX_ACCEPTED {
                let Ok((stream, _)) = listener.accept() else { break };
                stream.set_nonblocking(true).expect("non-blocking stream");
                self.accepted += 1;
                let id = self.hosts.len() as u32;
                self.hosts.push(HostStream {
                    stream: Some(stream),
                    id,
                    peer_of: Some(*port),
                    written: Vec::new(),
                    read: Vec::new(),
                    ok_line: false,
                });
            }
        }
    }

    /// A host program connects to the device's socket.
    fn connect(&mut self) {
        if self.host_programs >= MAX_HOST_PROGRAMS {
            return;
        }
        self.host_programs += 1;
        // The device's listener has a backlog of more than
        // MAX_HOST_PROGRAMS: the connect does not wait.
        let Ok(stream) = UnixStream::connect(&self.path) else { return };
        stream.set_nonblocking(true).expect("non-blocking stream");
        let id = self.hosts.len() as u32;
        self.hosts.push(HostStream {
            stream: Some(stream),
            id,
            peer_of: None,
            written: Vec::new(),
            read: Vec::new(),
            ok_line: false,
        });
    }

    fn pick(&self, input: &mut Input) -> Option<usize> {
        let b = usize::from(input.u8());
        (!self.hosts.is_empty()).then(|| b % self.hosts.len())
    }

    /// Writes what the stream takes now of `data` (no SIGPIPE, no wait).
    fn write(&mut self, index: usize, data: &[u8]) {
        let host = &mut self.hosts[index];
        let Some(stream) = &host.stream else { return };
        // SAFETY: send reads `data.len()` bytes of a live slice; the
        // descriptor belongs to `stream`.
        let sent = unsafe {
            libc::send(
                stream.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if let Ok(sent) = usize::try_from(sent) {
            host.written.extend_from_slice(&data[..sent]);
        }
    }

    /// Writes `len` bytes of the stream's own data.
    fn write_data(&mut self, index: usize, len: usize) {
        let host = &self.hosts[index];
        let at = host.written.len();
        let data: Vec<u8> = (at..at + len).map(|offset| host_byte(host.id, offset)).collect();
        self.write(index, &data);
    }

    /// Reads what the stream has, up to `most` bytes; a host program first
    /// reads `OK <port>\n`, naming a connection the guest was asked for.
    fn read(&mut self, index: usize, most: usize) {
        let host = &mut self.hosts[index];
        let Some(stream) = &host.stream else { return };
        let mut buf = vec![0u8; most];
        // SAFETY: recv writes at most `buf.len()` bytes into a live buffer;
        // the descriptor belongs to `stream`.
        let got = unsafe {
            libc::recv(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
        };
        let Ok(got) = usize::try_from(got) else { return };
        host.read.extend_from_slice(&buf[..got]);
        if host.peer_of.is_some() || host.ok_line || host.read.is_empty() {
            return;
        }
        let longest = "OK 4294967295\n".len();
        let Some(end) = host.read.iter().take(longest).position(|&b| b == b'\n') else {
            assert!(
                host.read.len() < longest,
                "a host program read {:?}, not an OK line",
                String::from_utf8_lossy(&host.read)
            );
            return;
        };
        let line = &host.read[..end];
        let port = line
            .strip_prefix(b"OK ")
            .filter(|digits| !digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
            .and_then(|digits| std::str::from_utf8(digits).ok()?.parse::<u32>().ok());
        let Some(port) = port else {
            panic!("a host program read {:?}, not an OK line", String::from_utf8_lossy(&host.read));
        };
        host.ok_line = true;
        let guest_port = host.hello().and_then(|(_, port)| port);
        if self.rx_never_lost {
            assert!(
                guest_port.is_some_and(|guest_port| self.requests.contains(&(port, guest_port))),
                "a host program that sent {:?} read OK {port}, a connection the guest was never \
                 asked for (requests {:?})",
                String::from_utf8_lossy(&self.hosts[index].written[..self.hosts[index].hello().map_or(0, |h| h.0)]),
                self.requests
            );
        }
    }

    /// A packet the device put in the receive queue, as the guest takes it.
    fn received(&mut self, hdr: &VsockHdr, data: &[u8], used_len: u32, room: u64) {
        let what = format!("{hdr:?} ({} payload bytes, used length {used_len})", data.len());
        assert_eq!(u64::from(used_len), VSOCK_HDR as u64 + u64::from(hdr.len), "{what}");
        assert!(u64::from(hdr.len) <= room, "{what}: longer than the buffer's {room} bytes");
        assert_eq!((hdr.src_cid, hdr.dst_cid), (VSOCK_HOST_CID, GUEST_CID), "{what}");
        assert_eq!(hdr.type_, VSOCK_TYPE_STREAM, "{what}");
        assert!((VSOCK_OP_REQUEST..=VSOCK_OP_CREDIT_REQUEST).contains(&hdr.op), "{what}");
        assert!(hdr.op == VSOCK_OP_RW || hdr.len == 0, "{what}: only data has a length");
        assert!(hdr.op != VSOCK_OP_RW || hdr.len > 0, "{what}: empty data");
        let key = (hdr.src_port, hdr.dst_port);
        self.last_ports = key;
        match hdr.op {
            VSOCK_OP_REQUEST => {
                // A host program asked for this guest port.
                let candidates: Vec<usize> = (0..self.hosts.len())
                    .filter(|&h| {
                        let host = &self.hosts[h];
                        host.peer_of.is_none()
                            && host.hello().is_some_and(|(_, port)| port == Some(hdr.dst_port))
                    })
                    .collect();
                assert!(!candidates.is_empty(), "{what}: no host program sent CONNECT {}", hdr.dst_port);
                self.requests.push(key);
                self.conns.insert(key, GuestConn { alive: true, tracked: true, rx_cnt: 0, candidates });
            }
            VSOCK_OP_RESPONSE => {
                // The device connected to PATH_<port>: a listener's.
                assert!(LISTEN_PORTS.contains(&hdr.src_port), "{what}: no listener at that port");
                self.accept_all();
                let candidates = (0..self.hosts.len())
                    .filter(|&h| self.hosts[h].peer_of == Some(hdr.src_port))
                    .collect();
                self.conns.insert(key, GuestConn { alive: true, tracked: true, rx_cnt: 0, candidates });
            }
            VSOCK_OP_RST => {
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.alive = false;
                }
            }
            _ => {
                match self.conns.get(&key) {
                    Some(conn) => assert!(
                        conn.alive || !conn.tracked,
                        "{what}: on a connection the device reset"
                    ),
                    None => assert!(!self.rx_complete, "{what}: on a connection never opened"),
                }
                if hdr.op == VSOCK_OP_RW {
                    self.received_data(key, data, &what);
                }
            }
        }
    }

    /// Data on a connection: within the guest's credit, and the next bytes
    /// of the host stream it comes from.
    fn received_data(&mut self, key: (u32, u32), data: &[u8], what: &str) {
        let credit = self.credits.get(&key).copied();
        let Some(conn) = self.conns.get_mut(&key) else { return };
        if !conn.tracked {
            return;
        }
        let len = data.len() as u32;
        if let Some((buf_alloc, fwd_cnt)) = credit {
            let in_flight = conn.rx_cnt.wrapping_sub(fwd_cnt);
            assert!(
                in_flight <= buf_alloc && len <= buf_alloc - in_flight,
                "{what}: past the guest's credit (buf_alloc {buf_alloc}, fwd_cnt {fwd_cnt}, \
                 {} bytes sent before)",
                conn.rx_cnt
            );
        }
        let at = conn.rx_cnt as usize;
        let hosts = &self.hosts;
        conn.candidates.retain(|&h| hosts[h].data().get(at..at + data.len()) == Some(data));
        assert!(
            !conn.candidates.is_empty(),
            "{what}: bytes {at}.. of the connection are not what any host stream wrote there"
        );
        conn.rx_cnt = conn.rx_cnt.wrapping_add(len);
    }

    /// A packet the device took from the transmit queue (well-formed):
    /// what it tells of the guest's credit.
    fn sent(&mut self, hdr: &VsockHdr) {
        if (hdr.src_cid, hdr.dst_cid) != (GUEST_CID, VSOCK_HOST_CID) {
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.type_ != VSOCK_TYPE_STREAM || (hdr.op != VSOCK_OP_RW && hdr.len != 0) {
            // Refused: the connection is reset (with a RST the guest sees)
            // or, for a RST, left alone.
            return;
        }
        self.credits.insert(key, (hdr.buf_alloc, hdr.fwd_cnt));
        if hdr.op == VSOCK_OP_RST
            && let Some(conn) = self.conns.get_mut(&key)
        {
            conn.alive = false;
        }
    }
}

/// `PATH_<port>`.
fn port_path(path: &Path, port: u32) -> PathBuf {
    let mut at = path.as_os_str().to_owned();
    at.push(format!("_{port}"));
    PathBuf::from(at)
}

/// The per-process directory of the vsock sockets (the device's, the
/// listeners'), made once and removed at exit.
fn vsock_dir() -> &'static Path {
    static DIR: OnceLock<TempDir> = OnceLock::new();
    extern "C" fn remove_dir() {
        if let Some(dir) = DIR.get() {
            let _ = std::fs::remove_dir_all(dir.as_path());
        }
    }
    DIR.get_or_init(|| {
        // In a tmpfs when there is one: binding a socket on ext4 costs more
        // than the rest of an input.
        let prefix = |at: &str| format!("{at}/vmm-fuzz-vsock-{}-", std::process::id());
        let dir = TempDir::new_with_prefix(prefix("/dev/shm"))
            .or_else(|_| TempDir::new_with_prefix(prefix("/tmp")))
            .expect("temporary directory");
        // SAFETY: `remove_dir` is a plain function that may run at exit.
        unsafe { libc::atexit(remove_dir) };
        dir
    })
    .as_path()
}

/// Open descriptors of the process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

/// Which device `VMM_FUZZ_DEVICE` forces, as header bits (bits 0-1 and 6).
fn forced_device() -> Option<u8> {
    static FORCED: OnceLock<Option<u8>> = OnceLock::new();
    *FORCED.get_or_init(|| {
        let name = std::env::var("VMM_FUZZ_DEVICE").ok()?;
        Some(match name.as_str() {
            "block" => 0,
            "block-ro" => 1,
            "rng" => 2,
            "net" => 3,
            "vsock" => 2 | 0x40,
            _ => panic!("VMM_FUZZ_DEVICE={name}: block, block-ro, rng, net or vsock"),
        })
    })
}

fn block_config() -> Vec<u8> {
    let mut config = Vec::new();
    config.extend_from_slice(&IMAGE_SECTORS.to_le_bytes());
    config.extend_from_slice(&0u32.to_le_bytes());
    config.extend_from_slice(&SEG_MAX.to_le_bytes());
    config.extend_from_slice(&0u32.to_le_bytes());
    config.extend_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
    config
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut header = input.u8();
    if let Some(device) = forced_device() {
        header = header & !0x43 | device;
    }
    let notify_by_eventfd = header & 4 != 0;
    let gap = header & 8 == 0;
    let images = images();
    let vsock_dir = vsock_dir();
    let fds = open_fds();
    match header & 3 {
        device @ (0 | 1) => {
            let read_only = device == 1;
            let file = if read_only { &images.ro } else { &images.rw };
            let disk = Block::new(file.try_clone().expect("dup"), IMAGE_LEN, read_only, b"fuzz-disk")
                .expect("block device");
            let expect = Expect {
                device_type: 2,
                config: block_config(),
                max_used_len: (IMAGE_SECTORS * SECTOR_SIZE) as u32 + 1,
                fill: None,
                used_per_call: 1,
                holds_chains: false,
            };
            let mut rig = Rig::new(disk, expect, gap, notify_by_eventfd);
            rig.run(&mut input);
            let counters = rig.t.device().counters();
            if vmm_fuzz::verbose() {
                eprintln!("{}: {counters:?}; {}", if read_only { "block ro" } else { "block" }, rig.summary());
            }
            assert!(counters.read_bytes <= counters.requests * IMAGE_SECTORS * SECTOR_SIZE);
            if read_only {
                assert_eq!(counters.written_bytes, 0, "the read-only disk wrote");
            }
            drop(rig);
            check_and_restore_image(file, read_only);
        }
        3 => {
            let (tap, network) = SocketTap::pair().expect("socket pair");
            let net = Net::new(tap, MAC).expect("virtio-net");
            let expect = Expect {
                device_type: 1,
                config: MAC.to_vec(),
                max_used_len: MAX_FRAME_LEN as u32,
                fill: None,
                used_per_call: 2,
                holds_chains: true,
            };
            let mut rig = Rig::new(net, expect, gap, notify_by_eventfd);
            rig.network = Some(network);
            rig.run(&mut input);
            let counters = rig.t.device().counters();
            if vmm_fuzz::verbose() {
                eprintln!(
                    "net: {counters:?}; {} frames sent, {} received; {}",
                    rig.frames_sent,
                    rig.frames_received,
                    rig.summary()
                );
            }
            assert!(
                counters.rx_frames + counters.rx_dropped <= rig.frames_sent,
                "{counters:?} from {} frames sent",
                rig.frames_sent
            );
            assert_eq!(counters.tx_frames, rig.frames_received, "frames sent to the tap");
        }
        2 if header & 0x40 != 0 => {
            let path = vsock_dir.join("v.sock");
            let _ = std::fs::remove_file(&path);
            let vsock = Vsock::new(GUEST_CID, &path).expect("virtio-vsock");
            let expect = Expect {
                device_type: 19,
                config: GUEST_CID.to_le_bytes().to_vec(),
                max_used_len: VSOCK_HDR as u32 + MAX_PKT_DATA,
                fill: None,
                // The receive queue also fills the chains it holds (at most
                // a queue's worth) besides the up to two queues' worth it
                // takes per call.
                used_per_call: 3,
                holds_chains: false,
            };
            let mut rig = Rig::new(vsock, expect, gap, notify_by_eventfd);
            rig.vsock = Some(VsockSide::new(path.clone()));
            rig.run(&mut input);
            if vmm_fuzz::verbose() {
                let side = rig.vsock.as_ref().map(|side| (side.parsed, side.lost, side.hosts.len()));
                eprintln!(
                    "vsock: {:?}; (rx, tx) packets parsed, lost, host streams: {side:?}; {}",
                    rig.t.device().counters(),
                    rig.summary()
                );
            }
            drop(rig);
            assert!(path.symlink_metadata().is_err(), "the device left its socket behind");
            for port in LISTEN_PORTS {
                let _ = std::fs::remove_file(port_path(&path, port));
            }
        }
        _ => {
            let source = Source { mode: header >> 4 & 3, calls: 0 };
            let expect = Expect {
                device_type: 4,
                config: Vec::new(),
                max_used_len: MAX_BYTES_PER_REQUEST as u32,
                fill: Some(RNG_BYTE),
                used_per_call: 1,
                holds_chains: false,
            };
            let mut rig = Rig::new(Rng::new(source), expect, gap, notify_by_eventfd);
            rig.run(&mut input);
            if vmm_fuzz::verbose() {
                eprintln!("rng: {} bytes; {}", rig.t.device().bytes(), rig.summary());
            }
        }
    }
    assert_eq!(open_fds(), fds, "descriptors left open after the input");
});
