//! The virtio-mmio transport and every virtio device behind it (virtio-blk,
//! read-write and read-only, virtio-rng and virtio-net), driven by a fuzzed
//! guest and, for virtio-net, a fuzzed network.
//!
//! The first input byte picks the device, whether queue notifications go
//! through eventfds (as in the VMM) or are served on the register write,
//! the guest memory layout (two 32 KiB regions of RAM with a gap between
//! them, or back to back) and how the entropy source reads. The rest is a
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
//! - virtio-net: every frame that reaches the network has a header and at
//!   most `MAX_FRAME_LEN` bytes and asks only for offloads the guest
//!   negotiated (checksum, TSO4/TSO6, ECN); the device counts exactly the
//!   frames the network got, and never more frames received or dropped
//!   than the network sent; the tap's offloads are `tap_offloads` of the
//!   accepted features while the device is live, none otherwise, and only
//!   combinations the kernel takes (TSO needs checksum, ECN needs TSO).
#![no_main]

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vm_device::MutDeviceMmio;
use vm_device::bus::MmioAddress;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_fuzz::Input;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::tempfile::TempFile;
use vmm_virtio::block::{Block, SECTOR_SIZE, SEG_MAX};
use vmm_virtio::mmio::{CONFIG_SPACE, MAGIC, QUEUE_NOTIFY, VENDOR_ID, VERSION};
use vmm_virtio::net::{MAX_FRAME_LEN, Net, tap_offloads};
use vmm_virtio::tap::{SocketTap, TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_LEN};
use vmm_virtio::rng::{MAX_BYTES_PER_REQUEST, Rng};
use vmm_virtio::testing::{CountingInterrupt, TestQueue};
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
}

impl DeviceChecks for Block {}
impl DeviceChecks for Rng<Source> {}

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
        if self.t.status() & DRIVER_OK != 0 {
            self.check_memory();
        }
        self.t.device().check(self.t.status(), self.t.acked_features());
        self.receive_frames();
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
        let used_rings: Vec<(u64, u64)> =
            live.iter().map(|&i| (self.queues[i].used, self.queues[i].used_len())).collect();
        let checks: Vec<_> = found
            .into_iter()
            .map(|(i, (_, tables, mut aliased))| {
                let q = self.queues[i];
                let used = (q.used, q.used_len());
                aliased |= tables.iter().chain([&used]).any(|&t| overlaps_any(&writable, t));
                aliased |= tables.iter().any(|&t| used_rings.iter().any(|&u| overlaps(t, u)));
                aliased |= used_rings.iter().filter(|&&u| u != used).any(|&u| overlaps(u, used));
                (i, q, aliased)
            })
            .collect();
        let any_aliased = checks.iter().any(|c| c.2);
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
    let header = input.u8();
    let notify_by_eventfd = header & 4 != 0;
    let gap = header & 8 == 0;
    let images = images();
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
});
