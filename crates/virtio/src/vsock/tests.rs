//! The device through the testing driver: a guest that speaks the vsock
//! protocol on the queues (kicking only when the device asks, as a driver
//! with EVENT_IDX does), host programs on Unix sockets, and an event loop
//! that watches the device's descriptors edge-triggered, as the VMM does.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::tempdir::TempDir;

use super::muxer::Timeouts;
use super::*;
use crate::mmio::NoInterrupt;
use crate::testing::*;
use crate::{Memory, MmioTransport, QueueNotify, VirtioDevice};

const GUEST_CID: u64 = 3;
const FEATURES: u64 = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX;
const HDR: usize = 44;
const MEM_SIZE: usize = 16 << 20;
const RX_RING: u64 = 0x1_0000;
const TX_RING: u64 = 0x2_0000;
const EV_RING: u64 = 0x3_0000;
/// Receive buffers: 8 KiB per descriptor index.
const RX_AT: u64 = 0x10_0000;
const RX_SLOT: u64 = 0x2000;
/// What each receive buffer has for data.
const RX_DATA: u32 = 4096;
/// Transmit slots: a header and up to 64 KiB of data each.
const TX_AT: u64 = 0x40_0000;
const TX_SLOT: u64 = 0x1_1000;
const TX_SLOTS: u64 = 64;
/// A guest's receive buffer for each connection, unless a test says.
const GUEST_BUF: u32 = 64 * 1024;

/// A packet as the guest sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Pkt {
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
    data: Vec<u8>,
}

impl Pkt {
    fn encode(&self) -> Vec<u8> {
        let mut header = Vec::with_capacity(HDR);
        header.extend(self.src_cid.to_le_bytes());
        header.extend(self.dst_cid.to_le_bytes());
        header.extend(self.src_port.to_le_bytes());
        header.extend(self.dst_port.to_le_bytes());
        header.extend(self.len.to_le_bytes());
        header.extend(self.type_.to_le_bytes());
        header.extend(self.op.to_le_bytes());
        header.extend(self.flags.to_le_bytes());
        header.extend(self.buf_alloc.to_le_bytes());
        header.extend(self.fwd_cnt.to_le_bytes());
        header
    }

    fn decode(header: &[u8], data: Vec<u8>) -> Pkt {
        let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
        let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
        let u16_at = |at: usize| u16::from_le_bytes(header[at..at + 2].try_into().unwrap());
        Pkt {
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
            data,
        }
    }

    fn with_data(mut self, data: &[u8]) -> Pkt {
        self.len = data.len() as u32;
        self.data = data.to_vec();
        self
    }
}

/// A packet from the guest's `guest_port` to the host's `host_port`.
fn guest_pkt(op: u16, guest_port: u32, host_port: u32) -> Pkt {
    Pkt {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: guest_port,
        dst_port: host_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: GUEST_BUF,
        ..Pkt::default()
    }
}

/// FNV-1a, to compare what went in and what came out.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
    })
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

/// The guest's side of one connection.
#[derive(Debug)]
struct GuestConn {
    guest_port: u32,
    host_port: u32,
    buf_alloc: u32,
    /// Bytes the guest's application consumed (its fwd_cnt).
    consumed: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    sent: u32,
    received: Vec<u8>,
}

impl GuestConn {
    fn new(guest_port: u32, host_port: u32) -> GuestConn {
        GuestConn {
            guest_port,
            host_port,
            buf_alloc: GUEST_BUF,
            consumed: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            sent: 0,
            received: Vec::new(),
        }
    }

    fn pkt(&self, op: u16) -> Pkt {
        Pkt {
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.consumed,
            ..guest_pkt(op, self.guest_port, self.host_port)
        }
    }

    fn saw(&mut self, pkt: &Pkt) {
        assert_eq!((pkt.src_port, pkt.dst_port), (self.host_port, self.guest_port));
        self.peer_buf_alloc = pkt.buf_alloc;
        self.peer_fwd_cnt = pkt.fwd_cnt;
    }

    /// What the device has room for.
    fn credit(&self) -> u32 {
        let in_flight = self.sent.wrapping_sub(self.peer_fwd_cnt);
        assert!(in_flight <= self.peer_buf_alloc, "the device's fwd_cnt runs ahead");
        self.peer_buf_alloc - in_flight
    }

    /// Bytes received and not consumed: never more than the buffer.
    fn unread(&self) -> u32 {
        self.received.len() as u32 - self.consumed
    }
}

struct Rig {
    transport: MmioTransport<Vsock>,
    mem: Memory,
    rx: TestQueue,
    tx: TestQueue,
    /// The VMM's event loop: the device's descriptors, edge-triggered.
    outer: Epoll,
    /// Receive buffers to keep posted, and how many are.
    rx_target: usize,
    rx_out: usize,
    /// The next free descriptor of the receive queue (the driver hands
    /// them out in order), and whether buffers come as a header and a data
    /// descriptor (Linux before 6.2) rather than one.
    rx_desc: u16,
    rx_split: bool,
    inbox: VecDeque<Pkt>,
    tx_slot: u64,
    path: PathBuf,
    _dir: TempDir,
}

impl Rig {
    fn new() -> Rig {
        Rig::with(FEATURES, 64)
    }

    fn with(features: u64, rx_buffers: usize) -> Rig {
        Rig::build(features, rx_buffers, None)
    }

    /// A rig whose device times out after `timeout` (all its timeouts).
    fn with_timeouts(timeout: Duration) -> Rig {
        Rig::build(FEATURES, 64, Some(timeout))
    }

    fn build(features: u64, rx_buffers: usize, timeout: Option<Duration>) -> Rig {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("v.sock");
        let mut device = Vsock::new(GUEST_CID, &path).unwrap();
        if let Some(timeout) = timeout {
            device.set_timeouts(Timeouts { connect: timeout, shutdown: timeout, hello: timeout });
        }
        let mem = memory(MEM_SIZE);
        let mut transport = MmioTransport::new(device, mem.clone(), Box::new(NoInterrupt)).unwrap();
        let outer = Epoll::new().unwrap();
        for (index, fd) in transport.host_fds().into_iter().enumerate() {
            let watch = EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, index as u64);
            outer.ctl(ControlOperation::Add, fd, watch).unwrap();
        }
        assert!(negotiate(&mut transport, features));
        let rx = TestQueue::new(QUEUE_SIZE, RX_RING);
        rx.install(&mut transport, RX_QUEUE as u32);
        let tx = TestQueue::new(QUEUE_SIZE, TX_RING);
        tx.install(&mut transport, TX_QUEUE as u32);
        let mut ev = TestQueue::new(QUEUE_SIZE, EV_RING);
        ev.install(&mut transport, EVENT_QUEUE as u32);
        driver_ok(&mut transport);
        // Event buffers, as Linux posts them: held, never used.
        for i in 0..8 {
            ev.add_chain(&mem, &[(0x3_8000 + 8 * i, 8, true)]);
        }
        transport.queue_notify(EVENT_QUEUE);
        assert_eq!(ev.take_used(&mem), vec![]);
        let mut rig = Rig {
            transport,
            mem,
            rx,
            tx,
            outer,
            rx_target: rx_buffers,
            rx_out: 0,
            rx_desc: 0,
            rx_split: false,
            inbox: VecDeque::new(),
            tx_slot: 0,
            path,
            _dir: dir,
        };
        rig.refill();
        rig.pump();
        rig
    }

    fn device(&self) -> &Vsock {
        self.transport.device()
    }

    fn counters(&self) -> VsockCounters {
        self.device().counters()
    }

    fn event_idx(&self) -> bool {
        self.transport.acked_features() & 1 << VIRTIO_RING_F_EVENT_IDX != 0
    }

    /// Notifies `queue` if the device wants to know that the avail index
    /// went from `old` on, as a driver does.
    fn kick(&mut self, queue: usize, old: u16) {
        let ring = if queue == RX_QUEUE { &self.rx } else { &self.tx };
        let new: u16 = self.mem.read_obj(GuestAddress(ring.avail + 2)).unwrap();
        let wanted = if self.event_idx() {
            let at = ring.used + 4 + 8 * u64::from(ring.size);
            let avail_event: u16 = self.mem.read_obj(GuestAddress(at)).unwrap();
            new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.mem.read_obj::<u16>(GuestAddress(ring.used)).unwrap() & 1 == 0
        };
        if wanted {
            self.transport.queue_notify(queue);
        }
    }

    fn avail_idx(&self, queue: usize) -> u16 {
        let ring = if queue == RX_QUEUE { &self.rx } else { &self.tx };
        self.mem.read_obj(GuestAddress(ring.avail + 2)).unwrap()
    }

    /// Posts receive buffers up to the target: one descriptor each, header
    /// and data together, as Linux 6.2 and later do.
    fn refill(&mut self) {
        if self.rx_out >= self.rx_target {
            return;
        }
        let old = self.avail_idx(RX_QUEUE);
        while self.rx_out < self.rx_target {
            let addr = self.next_rx_addr();
            if self.rx_split {
                self.add_rx(&[(addr, HDR as u32, true), (addr + HDR as u64, RX_DATA, true)]);
            } else {
                self.add_rx(&[(addr, HDR as u32 + RX_DATA, true)]);
            }
            self.rx_out += 1;
        }
        self.kick(RX_QUEUE, old);
    }

    /// Where the buffer of the next receive chain goes (by its head).
    fn next_rx_addr(&self) -> u64 {
        RX_AT + RX_SLOT * u64::from(self.rx_desc)
    }

    fn add_rx(&mut self, buffers: &[(u64, u32, bool)]) {
        let head = self.rx.add_chain(&self.mem, buffers);
        assert_eq!(head, self.rx_desc);
        self.rx_desc = (self.rx_desc + buffers.len() as u16) % QUEUE_SIZE;
    }

    /// Takes the packets the device put in receive buffers.
    fn collect(&mut self) -> bool {
        let used = self.rx.take_used(&self.mem);
        let got = !used.is_empty();
        for (head, len) in used {
            self.rx_out -= 1;
            if len == 0 {
                continue;
            }
            let addr = RX_AT + RX_SLOT * u64::from(head);
            let mut header = [0u8; HDR];
            self.mem.read_slice(&mut header, GuestAddress(addr)).unwrap();
            let mut data = vec![0u8; len as usize - HDR];
            self.mem.read_slice(&mut data, GuestAddress(addr + HDR as u64)).unwrap();
            let pkt = Pkt::decode(&header, data);
            assert_eq!(pkt.len as usize, pkt.data.len(), "{pkt:?}");
            assert_eq!((pkt.src_cid, pkt.dst_cid, pkt.type_), (HOST_CID, GUEST_CID, TYPE_STREAM));
            self.inbox.push_back(pkt);
        }
        got
    }

    /// Runs the event loop until the device has nothing more to do.
    fn pump(&mut self) {
        self.pump_waiting(0);
    }

    /// Like `pump`, waiting up to `ms` for the first event (timeouts).
    fn pump_waiting(&mut self, ms: i32) {
        let mut timeout = ms;
        for _ in 0..100_000 {
            while self.collect() {
                self.refill();
            }
            self.refill();
            let mut events = [EpollEvent::default(); 4];
            let count = self.outer.wait(timeout, &mut events).unwrap();
            if count == 0 {
                return;
            }
            timeout = 0;
            for event in &events[..count] {
                self.transport.host_event(event.data() as usize);
            }
        }
        panic!("the device never went quiet");
    }

    /// Pumps until a packet comes.
    fn recv(&mut self) -> Pkt {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.pump();
            if let Some(pkt) = self.inbox.pop_front() {
                return pkt;
            }
            assert!(Instant::now() < deadline, "no packet came");
            self.pump_waiting(10);
        }
    }

    fn nothing(&mut self) {
        self.pump();
        assert_eq!(self.inbox.pop_front(), None);
    }

    /// Sends a packet from the guest: the header, and the data in a
    /// descriptor of its own. Returns the used entries of the transmit
    /// queue.
    fn send(&mut self, pkt: &Pkt) -> Vec<(u32, u32)> {
        let at = TX_AT + TX_SLOT * (self.tx_slot % TX_SLOTS);
        self.tx_slot += 1;
        self.mem.write_slice(&pkt.encode(), GuestAddress(at)).unwrap();
        let mut chain = vec![(at, HDR as u32, false)];
        if !pkt.data.is_empty() {
            self.mem.write_slice(&pkt.data, GuestAddress(at + 0x100)).unwrap();
            chain.push((at + 0x100, pkt.data.len() as u32, false));
        }
        self.send_chain(&chain)
    }

    fn send_chain(&mut self, chain: &[(u64, u32, bool)]) -> Vec<(u32, u32)> {
        let old = self.avail_idx(TX_QUEUE);
        self.tx.add_chain(&self.mem, chain);
        self.kick(TX_QUEUE, old);
        let used = self.tx.take_used(&self.mem);
        assert_eq!(used.len(), 1, "the transmit chain was served at once");
        used
    }

    /// The guest's half of a connection to `host_port` on the host, which
    /// `listener` (at `PATH_<host_port>`) accepts.
    fn guest_connect(
        &mut self,
        guest_port: u32,
        host_port: u32,
        listener: &UnixListener,
    ) -> (GuestConn, UnixStream) {
        let mut conn = GuestConn::new(guest_port, host_port);
        self.send(&conn.pkt(OP_REQUEST));
        let answer = self.recv();
        assert_eq!(answer.op, OP_RESPONSE, "{answer:?}");
        conn.saw(&answer);
        assert_eq!(answer.buf_alloc, CONN_BUF_SIZE);
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (conn, stream)
    }

    /// A host program's connection to the guest's `guest_port`, accepted by
    /// the guest.
    fn host_connect(&mut self, guest_port: u32) -> (GuestConn, UnixStream) {
        let mut host = UnixStream::connect(&self.path).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(format!("CONNECT {guest_port}\n").as_bytes()).unwrap();
        let request = self.recv();
        assert_eq!(request.op, OP_REQUEST, "{request:?}");
        assert_eq!(request.dst_port, guest_port);
        assert!(request.src_port >= 1 << 30, "a port of the device's: {}", request.src_port);
        let mut conn = GuestConn::new(guest_port, request.src_port);
        conn.saw(&request);
        self.send(&conn.pkt(OP_RESPONSE));
        assert_eq!(read_line(&mut host), format!("OK {}\n", request.src_port));
        (conn, host)
    }

    /// Sends `data` on the guest's connection, within the device's credit,
    /// packets of `chunk` bytes. Returns how much went.
    fn guest_write(&mut self, conn: &mut GuestConn, data: &[u8], chunk: usize) -> usize {
        let mut offset = 0;
        while offset < data.len() {
            let len = (data.len() - offset).min(chunk).min(conn.credit() as usize);
            if len == 0 {
                break;
            }
            self.send(&conn.pkt(OP_RW).with_data(&data[offset..offset + len]));
            conn.sent += len as u32;
            offset += len;
        }
        offset
    }

    /// Sends on `conn` (whose host reader reads nothing) until the device
    /// has no room left, asking it for its credit each time. Returns what
    /// was sent.
    fn fill_device(&mut self, conn: &mut GuestConn) -> Vec<u8> {
        let mut sent = Vec::new();
        for round in 0..1000u32 {
            let data = pattern(MAX_PKT_DATA as usize, round);
            let now = self.guest_write(conn, &data, MAX_PKT_DATA as usize);
            sent.extend(&data[..now]);
            self.send(&conn.pkt(OP_CREDIT_REQUEST));
            self.pump();
            while let Some(pkt) = self.inbox.pop_front() {
                conn.saw(&pkt);
            }
            if now == 0 && conn.credit() == 0 {
                assert_eq!(self.device().pending_bytes(), CONN_BUF_SIZE as usize);
                return sent;
            }
        }
        panic!("the device's buffer never filled");
    }

    /// Serves the packets in the inbox for `conn`: data is received (and
    /// consumed, with a credit update every 16 KiB, if `consume`), credit
    /// fields taken, credit requests answered. Panics at anything else.
    fn guest_read(&mut self, conn: &mut GuestConn, consume: bool) {
        self.pump();
        while let Some(pkt) = self.inbox.pop_front() {
            conn.saw(&pkt);
            match pkt.op {
                OP_RW => {
                    conn.received.extend(&pkt.data);
                    assert!(conn.unread() <= conn.buf_alloc, "more than the guest's credit");
                }
                OP_CREDIT_UPDATE => {}
                OP_CREDIT_REQUEST => {
                    self.send(&conn.pkt(OP_CREDIT_UPDATE));
                }
                _ => panic!("unexpected {pkt:?}"),
            }
            if consume && conn.unread() >= 16 * 1024 {
                conn.consumed = conn.received.len() as u32;
                self.send(&conn.pkt(OP_CREDIT_UPDATE));
            }
            self.pump();
        }
        if consume && conn.unread() > 0 {
            conn.consumed = conn.received.len() as u32;
            self.send(&conn.pkt(OP_CREDIT_UPDATE));
            self.guest_read(conn, consume);
        }
    }
}

fn read_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while line.last() != Some(&b'\n') {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "the line ended early: {line:?}");
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Reads what the stream has now (it is non-blocking).
fn read_available(stream: &mut UnixStream, into: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(len) => into.extend(&buf[..len]),
            Err(err) if err.kind() == ErrorKind::WouldBlock => return false,
            Err(err) => panic!("host read: {err}"),
        }
    }
}

fn assert_closed(stream: &mut UnixStream) {
    let mut byte = [0u8];
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the stream is still open: {other:?}"),
    }
}

fn listen(rig: &Rig, port: u32) -> UnixListener {
    let mut path = rig.path.clone().into_os_string();
    path.push(format!("_{port}"));
    UnixListener::bind(path).unwrap()
}

#[test]
fn identity_features_and_config() {
    let mut rig = Rig::new();
    let t = &mut rig.transport;
    assert_eq!(read_reg(t, 0x008), VIRTIO_ID_VSOCK);
    for queue in 0..3 {
        write_reg(t, 0x030, queue);
        assert_eq!(read_reg(t, 0x034), u32::from(QUEUE_SIZE));
    }
    write_reg(t, 0x030, 3);
    assert_eq!(read_reg(t, 0x034), 0);
    let features = t.device().features();
    assert_ne!(features & 1 << VIRTIO_F_VERSION_1, 0);
    assert_ne!(features & 1 << VIRTIO_RING_F_EVENT_IDX, 0);
    assert_eq!(read_config(t, 0, 8), GUEST_CID.to_le_bytes());
    assert_eq!(read_config(t, 4, 4), [0; 4]);
    assert_eq!(t.device().guest_cid(), GUEST_CID);
    assert_eq!(t.device().path(), rig.path);
    assert_eq!(t.host_fds().len(), 2);
}

#[test]
fn the_constructor_names_what_is_wrong() {
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("v.sock");
    let device = Vsock::new(42, &path).unwrap();
    let err = Vsock::new(43, &path).unwrap_err();
    assert!(matches!(err, Error::PathExists { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    drop(device);
    assert!(!path.exists(), "the socket goes with the device");
    let device = Vsock::new(42, &path).unwrap();
    drop(device);

    let file = dir.as_path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(Vsock::new(3, &file), Err(Error::PathExists { .. })));
    assert!(file.exists(), "a file that is not the device's stays");

    let nowhere = dir.as_path().join("missing").join("v.sock");
    let err = Vsock::new(3, &nowhere).unwrap_err();
    assert!(matches!(err, Error::NoDirectory { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&nowhere.display().to_string()), "{message}");
    assert!(message.contains("missing does not exist"), "{message}");

    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 32] {
        let err = Vsock::new(cid, dir.as_path().join("c.sock")).unwrap_err();
        assert!(matches!(err, Error::InvalidCid { cid: got } if got == cid), "{err:?}");
        assert!(err.to_string().contains(&cid.to_string()), "{err}");
    }

    let long = dir.as_path().join("x".repeat(MAX_PATH_LEN));
    let err = Vsock::new(3, &long).unwrap_err();
    assert!(matches!(err, Error::PathTooLong { max: MAX_PATH_LEN, .. }), "{err:?}");
    assert!(err.to_string().contains(&long.as_os_str().len().to_string()), "{err}");
}

#[test]
fn a_host_program_connects_and_bytes_flow_both_ways() {
    let mut rig = Rig::new();
    let mut host = UnixStream::connect(&rig.path).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Bytes right after the line wait for the connection.
    host.write_all(b"CONNECT 52\nearly").unwrap();
    let request = rig.recv();
    assert_eq!(
        (request.op, request.dst_port, request.len, request.buf_alloc, request.fwd_cnt),
        (OP_REQUEST, 52, 0, CONN_BUF_SIZE, 0)
    );
    let local_port = request.src_port;
    assert!(local_port >= 1 << 30);
    let mut conn = GuestConn::new(52, local_port);
    conn.saw(&request);
    rig.nothing();
    rig.send(&conn.pkt(OP_RESPONSE));
    assert_eq!(read_line(&mut host), format!("OK {local_port}\n"));
    assert_eq!(rig.counters().connections, 1);

    // Host to guest: more than the guest's buffer, so credit updates count.
    let down = pattern(200_000, 1);
    let writer = {
        let mut host = host.try_clone().unwrap();
        let down = down.clone();
        std::thread::spawn(move || host.write_all(&down).unwrap())
    };
    while conn.received.len() < 5 + down.len() {
        rig.guest_read(&mut conn, true);
    }
    writer.join().unwrap();
    assert_eq!(&conn.received[..5], b"early");
    assert_eq!(checksum(&conn.received[5..]), checksum(&down));

    // Guest to host, in packets of every size up to the largest.
    let up = pattern(300_000, 2);
    let mut got = Vec::new();
    host.set_nonblocking(true).unwrap();
    let mut offset = 0;
    let mut chunk = 1;
    while got.len() < up.len() {
        let end = (offset + chunk).min(up.len());
        offset += rig.guest_write(&mut conn, &up[offset..end], chunk);
        chunk = (chunk * 3).min(MAX_PKT_DATA as usize);
        read_available(&mut host, &mut got);
        rig.pump();
        while let Some(pkt) = rig.inbox.pop_front() {
            assert_eq!(pkt.op, OP_CREDIT_UPDATE, "{pkt:?}");
            conn.saw(&pkt);
        }
    }
    assert_eq!(checksum(&got), checksum(&up));
    let counters = rig.counters();
    assert_eq!((counters.rx_bytes, counters.tx_bytes), (5 + down.len() as u64, up.len() as u64));
    assert_eq!(counters.malformed + counters.bad_op + counters.bad_cid, 0);
}

#[test]
fn the_guest_connects_to_path_port() {
    let mut rig = Rig::new();
    let listener = listen(&rig, 52);
    let (mut conn, mut host) = rig.guest_connect(1234, 52, &listener);
    assert_eq!(rig.device().connections(), 1);
    rig.guest_write(&mut conn, b"ping from the guest", 64);
    let mut got = [0u8; 19];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping from the guest");
    let reply = pattern(10_000, 3);
    host.write_all(&reply).unwrap();
    while conn.received.len() < reply.len() {
        rig.guest_read(&mut conn, true);
    }
    assert_eq!(checksum(&conn.received), checksum(&reply));

    // A second connection to the same port, from another guest port.
    let (mut second, mut host2) = rig.guest_connect(1235, 52, &listener);
    rig.guest_write(&mut second, b"two", 64);
    let mut got = [0u8; 3];
    host2.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"two");
    assert_eq!(rig.device().connections(), 2);
    assert_eq!(rig.counters().connections, 2);
}

#[test]
fn unknown_ports_and_connections_get_a_rst() {
    let mut rig = Rig::new();
    // No listener at PATH_99.
    rig.send(&guest_pkt(OP_REQUEST, 1000, 99));
    let rst = rig.recv();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 99, 1000));
    assert_eq!(rig.counters().refused, 1);
    // Data, credit, shutdown for no connection.
    for op in [OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST, OP_SHUTDOWN, OP_RESPONSE] {
        let pkt = guest_pkt(op, 1001, 52);
        let pkt = if op == OP_RW { pkt.with_data(b"lost") } else { pkt };
        rig.send(&pkt);
        let rst = rig.recv();
        assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 52, 1001), "after op {op}");
    }
    assert_eq!(rig.counters().unknown_connection, 5);
    // A RST for no connection is not answered.
    rig.send(&guest_pkt(OP_RST, 1002, 52));
    rig.nothing();

    // The guest refuses a host program's connection: its stream closes.
    let mut host = UnixStream::connect(&rig.path).unwrap();
    host.write_all(b"CONNECT 77\n").unwrap();
    let request = rig.recv();
    assert_eq!(request.op, OP_REQUEST);
    rig.send(&guest_pkt(OP_RST, 77, request.src_port));
    assert_closed(&mut host);
    rig.nothing();
    assert_eq!(rig.device().connections(), 0);
}

#[test]
fn credit_is_respected_both_ways() {
    let mut rig = Rig::new();
    let listener = listen(&rig, 52);
    let mut conn = GuestConn::new(1234, 52);
    conn.buf_alloc = 1000;
    rig.send(&conn.pkt(OP_REQUEST));
    let response = rig.recv();
    assert_eq!(response.op, OP_RESPONSE);
    conn.saw(&response);
    let (mut host, _) = listener.accept().unwrap();

    // The host sends 5000 bytes; the guest has room for 1000.
    let data = pattern(5000, 4);
    host.write_all(&data).unwrap();
    rig.pump();
    let mut got = 0;
    let mut requests = 0;
    while let Some(pkt) = rig.inbox.pop_front() {
        match pkt.op {
            OP_RW => got += pkt.data.len(),
            OP_CREDIT_REQUEST => requests += 1,
            _ => panic!("{pkt:?}"),
        }
        conn.received.extend(&pkt.data);
    }
    assert_eq!((got, requests), (1000, 1), "exactly the credit, then a credit request");
    rig.nothing();
    // The guest consumes and says so; the rest comes 1000 bytes at a time.
    while conn.received.len() < data.len() {
        conn.consumed = conn.received.len() as u32;
        rig.send(&conn.pkt(OP_CREDIT_UPDATE));
        rig.pump();
        let before = conn.received.len();
        while let Some(pkt) = rig.inbox.pop_front() {
            conn.saw(&pkt);
            conn.received.extend(&pkt.data);
        }
        assert!(conn.received.len() - before <= 1000);
        assert!(conn.unread() <= 1000);
    }
    assert_eq!(conn.received, data);
    // A larger buffer later on is used at once.
    conn.consumed = conn.received.len() as u32;
    conn.buf_alloc = 8000;
    host.write_all(&data).unwrap();
    rig.send(&conn.pkt(OP_CREDIT_UPDATE));
    rig.guest_read(&mut conn, false);
    assert_eq!(conn.received.len(), 2 * data.len());

    // The other way: the device advertises its buffer and tells the guest
    // what the host consumed.
    assert_eq!(conn.peer_buf_alloc, CONN_BUF_SIZE);
    let before = conn.peer_fwd_cnt;
    let up = pattern(CONN_BUF_SIZE as usize / 2, 5);
    for piece in up.chunks(4096) {
        rig.guest_write(&mut conn, piece, 4096);
    }
    let update = rig.recv();
    assert_eq!(update.op, OP_CREDIT_UPDATE, "{update:?}");
    assert_eq!(update.fwd_cnt.wrapping_sub(before), up.len() as u32);
    conn.saw(&update);
    let mut got = vec![0u8; up.len()];
    host.read_exact(&mut got).unwrap();
    assert_eq!(got, up);
    // A credit request is answered.
    rig.guest_write(&mut conn, b"tail", 4096);
    rig.send(&conn.pkt(OP_CREDIT_REQUEST));
    let update = rig.recv();
    assert_eq!(
        (update.op, update.fwd_cnt.wrapping_sub(before)),
        (OP_CREDIT_UPDATE, up.len() as u32 + 4)
    );
}

#[test]
fn a_guest_past_its_credit_is_reset() {
    let mut rig = Rig::new();
    let listener = listen(&rig, 52);
    let (mut conn, host) = rig.guest_connect(1234, 52, &listener);
    // The host never reads: the kernel's buffer fills, then the device's.
    let sent = rig.fill_device(&mut conn);
    assert!(sent.len() > CONN_BUF_SIZE as usize, "the kernel took some");
    // One byte more is one too many.
    rig.send(&conn.pkt(OP_RW).with_data(b"x"));
    let rst = rig.recv();
    assert_eq!((rst.op, rst.dst_port), (OP_RST, 1234));
    assert_eq!(rig.counters().credit_overflow, 1);
    assert_eq!(rig.device().connections(), 0);
    assert_eq!(rig.device().pending_bytes(), 0);
    drop(host);
}

#[test]
fn the_guest_shuts_down_sending_then_closes() {
    let mut rig = Rig::new();
    let listener = listen(&rig, 52);
    let (mut conn, mut host) = rig.guest_connect(1234, 52, &listener);
    rig.guest_write(&mut conn, b"last words", 64);
    let mut shutdown = conn.pkt(OP_SHUTDOWN);
    shutdown.flags = SHUTDOWN_SEND;
    rig.send(&shutdown);
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words", "then the end of the stream");
    // The guest still receives.
    host.write_all(b"answer").unwrap();
    rig.guest_read(&mut conn, true);
    assert_eq!(conn.received, b"answer");
    // Data after SHUTDOWN(SEND) is a protocol error.
    // The host closes: the guest hears both directions are over.
    drop(host);
    let end = rig.recv();
    assert_eq!((end.op, end.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH), "{end:?}");
    rig.send(&conn.pkt(OP_RST));
    rig.nothing();
    assert_eq!(rig.device().connections(), 0);
}

#[test]
fn the_guest_closes_and_the_device_completes_with_rst() {
    let mut rig = Rig::new();
    let listener = listen(&rig, 52);
    let (mut conn, mut host) = rig.guest_connect(1234, 52, &listener);
    let data = pattern(100_000, 6);
    rig.guest_write(&mut conn, &data, 4096);
    let mut close = conn.pkt(OP_SHUTDOWN);
    close.flags = SHUTDOWN_BOTH;
    rig.send(&close);
    let rst = rig.recv();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 52, 1234));
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(checksum(&got), checksum(&data), "everything reached the host first");
    assert_eq!(rig.device().connections(), 0);
}

#[test]
fn a_close_that_waits_for_a_slow_host_reader_is_flushed_or_times_out() {
    let mut rig = Rig::with_timeouts(Duration::from_secs(1));
    let listener = listen(&rig, 52);
    let (mut conn, mut host) = rig.guest_connect(1234, 52, &listener);
    // More than the kernel takes: the device holds the rest.
    let data = rig.fill_device(&mut conn);
    let mut close = conn.pkt(OP_SHUTDOWN);
    close.flags = SHUTDOWN_BOTH;
    rig.send(&close);
    rig.nothing();
    assert_eq!(rig.device().connections(), 1, "waiting for the host to read");
    // The host reads: the device flushes, then completes the close.
    host.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !read_available(&mut host, &mut got) {
        rig.pump();
        assert!(Instant::now() < deadline);
    }
    assert_eq!(checksum(&got), checksum(&data));
    assert_eq!(rig.recv().op, OP_RST);

    // This time the host never reads: the device gives up.
    let (mut conn, host) = rig.guest_connect(1235, 52, &listener);
    rig.fill_device(&mut conn);
    let mut close = conn.pkt(OP_SHUTDOWN);
    close.flags = SHUTDOWN_BOTH;
    rig.send(&close);
    let rst = rig.recv();
    assert_eq!((rst.op, rst.dst_port), (OP_RST, 1235));
    assert_eq!(rig.counters().timeouts, 1);
    assert_eq!(rig.device().connections(), 0);
    drop(host);
}

#[test]
fn the_host_shuts_down_sending_and_the_guest_still_sends() {
    let mut rig = Rig::new();
    let (mut conn, mut host) = rig.host_connect(52);
    host.write_all(b"request").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    rig.pump();
    let data = rig.inbox.pop_front().unwrap();
    assert_eq!((data.op, &data.data[..]), (OP_RW, &b"request"[..]));
    let end = rig.inbox.pop_front().unwrap();
    assert_eq!((end.op, end.flags), (OP_SHUTDOWN, SHUTDOWN_SEND), "the host still receives");
    conn.saw(&end);
    rig.guest_write(&mut conn, b"response", 64);
    let mut shutdown = conn.pkt(OP_SHUTDOWN);
    shutdown.flags = SHUTDOWN_SEND;
    rig.send(&shutdown);
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"response");
    // Nothing can flow any more: the device says so and the guest resets.
    let end = rig.recv();
    assert_eq!((end.op, end.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    rig.send(&conn.pkt(OP_RST));
    rig.nothing();
    assert_eq!(rig.device().connections(), 0);
}

#[test]
fn a_host_peer_that_disappears_gets_the_guest_a_rst() {
    let mut rig = Rig::new();
    // With bytes it never read: the device sees the stream reset.
    let (mut conn, host) = rig.host_connect(52);
    rig.guest_write(&mut conn, b"never read", 64);
    drop(host);
    let rst = rig.recv();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, conn.host_port, 52));
    assert_eq!(rig.device().connections(), 0);

    // Cleanly: SHUTDOWN both ways; data sent after that is reset.
    let (mut conn, host) = rig.host_connect(53);
    drop(host);
    let end = rig.recv();
    assert_eq!((end.op, end.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    conn.saw(&end);
    rig.send(&conn.pkt(OP_RW).with_data(b"too late"));
    assert_eq!(rig.recv().op, OP_RST);
    assert_eq!(rig.device().connections(), 0);

    // Before the guest answered its request.
    let mut host = UnixStream::connect(&rig.path).unwrap();
    host.write_all(b"CONNECT 54\n").unwrap();
    let request = rig.recv();
    assert_eq!(request.op, OP_REQUEST);
    drop(host);
    let rst = rig.recv();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, request.src_port, 54));
    // The guest's late answer finds no connection.
    rig.send(&guest_pkt(OP_RESPONSE, 54, request.src_port));
    assert_eq!(rig.recv().op, OP_RST);

    // A guest peer that disappears (a device reset) closes the streams.
    let (_conn, mut host) = rig.host_connect(55);
    write_reg(&mut rig.transport, 0x70, 0);
    assert_closed(&mut host);
    assert_eq!(rig.device().connections(), 0);
}

#[test]
fn host_programs_that_do_not_say_connect_are_dropped() {
    let mut rig = Rig::with_timeouts(Duration::from_millis(250));
    for line in [&b"HELLO 52\n"[..], b"CONNECT\n", b"CONNECT 52 53\n", &[b'9'; 40]] {
        let mut host = UnixStream::connect(&rig.path).unwrap();
        host.write_all(line).unwrap();
        rig.pump();
        assert_closed(&mut host);
    }
    // One that says nothing, until its deadline.
    let mut silent = UnixStream::connect(&rig.path).unwrap();
    rig.pump();
    assert_eq!(rig.device().connections(), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while rig.device().connections() > 0 {
        assert!(Instant::now() < deadline, "the silent program was never dropped");
        rig.pump_waiting(20);
    }
    assert_closed(&mut silent);
    // One whose request the guest never answers.
    let mut host = UnixStream::connect(&rig.path).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    let request = rig.recv();
    assert_eq!(request.op, OP_REQUEST);
    let rst = rig.recv();
    assert_eq!((rst.op, rst.src_port), (OP_RST, request.src_port));
    assert_closed(&mut host);
    let counters = rig.counters();
    assert_eq!((counters.refused, counters.timeouts), (4, 2));
    rig.inbox.clear();
    rig.nothing();
}

#[test]
fn many_connections_and_one_stalled_reader_stall_nothing_else() {
    const CONNS: u32 = 64;
    let mut rig = Rig::with(FEATURES, 128);
    let mut conns = Vec::new();
    let mut hosts = Vec::new();
    // All host programs connect at once.
    for i in 0..CONNS {
        let mut host = UnixStream::connect(&rig.path).unwrap();
        host.write_all(format!("CONNECT {}\n", 5000 + i).as_bytes()).unwrap();
        hosts.push(host);
    }
    rig.pump();
    let requests: Vec<Pkt> = rig.inbox.drain(..).collect();
    assert_eq!(requests.len(), CONNS as usize);
    for request in &requests {
        assert_eq!(request.op, OP_REQUEST);
        let mut conn = GuestConn::new(request.dst_port, request.src_port);
        conn.saw(request);
        rig.send(&conn.pkt(OP_RESPONSE));
        conns.push(conn);
    }
    conns.sort_by_key(|conn| conn.guest_port);
    for (host, conn) in hosts.iter_mut().zip(&conns) {
        assert_eq!(read_line(host), format!("OK {}\n", conn.host_port));
        host.set_nonblocking(true).unwrap();
    }
    let index: HashMap<(u32, u32), usize> =
        conns.iter().enumerate().map(|(i, c)| ((c.host_port, c.guest_port), i)).collect();

    // Every connection moves 512 KiB up and 32 KiB down (96 KiB on the
    // one whose guest reader stalls); host reader 0 never reads, guest
    // reader 1 never consumes.
    let up_len = 512 * 1024;
    let ups: Vec<Vec<u8>> = (0..CONNS).map(|i| pattern(up_len, 100 + i)).collect();
    let downs: Vec<Vec<u8>> =
        (0..CONNS).map(|i| pattern(if i == 1 { 96 * 1024 } else { 32 * 1024 }, 200 + i)).collect();
    for (host, down) in hosts.iter_mut().zip(&downs) {
        host.write_all(down).unwrap();
    }
    let mut up_sent = vec![0usize; CONNS as usize];
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); CONNS as usize];
    let done = |got: &[Vec<u8>], conns: &[GuestConn]| {
        (2..CONNS as usize).all(|i| got[i].len() == up_len && conns[i].received.len() == 32 * 1024)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&got, &conns) {
        assert!(Instant::now() < deadline, "the connections did not complete");
        for i in 0..CONNS as usize {
            let (offset, conn) = (up_sent[i], &mut conns[i]);
            let end = (offset + 16 * 1024).min(up_len);
            up_sent[i] += rig.guest_write(conn, &ups[i][offset..end], 16 * 1024);
            if i != 0 {
                read_available(&mut hosts[i], &mut got[i]);
            }
        }
        rig.pump();
        while let Some(pkt) = rig.inbox.pop_front() {
            let i = index[&(pkt.src_port, pkt.dst_port)];
            let conn = &mut conns[i];
            conn.saw(&pkt);
            match pkt.op {
                OP_RW => {
                    conn.received.extend(&pkt.data);
                    assert!(conn.unread() <= conn.buf_alloc, "past the guest's credit");
                    if i != 1 {
                        conn.consumed = conn.received.len() as u32;
                        rig.send(&conn.pkt(OP_CREDIT_UPDATE));
                    }
                }
                OP_CREDIT_UPDATE => {}
                OP_CREDIT_REQUEST => {
                    rig.send(&conn.pkt(OP_CREDIT_UPDATE));
                }
                _ => panic!("unexpected {pkt:?}"),
            }
        }
    }
    for i in 2..CONNS as usize {
        assert_eq!(checksum(&got[i]), checksum(&ups[i]), "connection {i} up");
        assert_eq!(checksum(&conns[i].received), checksum(&downs[i]), "connection {i} down");
    }
    // The stalled ones: the guest never had more than it allowed, the device
    // never holds more than it allowed.
    assert_eq!(conns[1].received.len(), GUEST_BUF as usize);
    assert!(up_sent[0] < up_len, "host reader 0 holds its connection back");
    assert!(rig.device().pending_bytes() <= CONN_BUF_SIZE as usize);
    assert_eq!(rig.device().connections(), CONNS as usize);

    // Once they read, they complete too.
    conns[1].consumed = conns[1].received.len() as u32;
    let update = conns[1].pkt(OP_CREDIT_UPDATE);
    rig.send(&update);
    while got[0].len() < up_len || conns[1].received.len() < downs[1].len() {
        assert!(Instant::now() < deadline, "the stalled connections did not complete");
        let offset = up_sent[0];
        let end = (offset + 64 * 1024).min(up_len);
        up_sent[0] += rig.guest_write(&mut conns[0], &ups[0][offset..end], 16 * 1024);
        read_available(&mut hosts[0], &mut got[0]);
        read_available(&mut hosts[1], &mut got[1]);
        rig.pump();
        while let Some(pkt) = rig.inbox.pop_front() {
            let i = index[&(pkt.src_port, pkt.dst_port)];
            conns[i].saw(&pkt);
            conns[i].received.extend(&pkt.data);
        }
    }
    assert_eq!(checksum(&got[0]), checksum(&ups[0]));
    assert_eq!(checksum(&conns[1].received), checksum(&downs[1]));
    let counters = rig.counters();
    assert_eq!(counters.connections, u64::from(CONNS));
    assert_eq!(counters.rst_sent + counters.malformed + counters.bad_op, 0);
}

#[test]
fn malformed_packets_are_counted_and_dropped() {
    let mut rig = Rig::new();
    let listener = listen(&rig, 52);
    let at = TX_AT + TX_SLOT * 100;
    let request = guest_pkt(OP_REQUEST, 1234, 52);
    rig.mem.write_slice(&request.encode(), GuestAddress(at)).unwrap();
    // A device-writable header; a header too short; outside guest RAM.
    rig.send_chain(&[(at, HDR as u32, true)]);
    rig.send_chain(&[(at, HDR as u32 - 1, false)]);
    rig.send_chain(&[(MEM_SIZE as u64 - 20, HDR as u32, false)]);
    // A length with no data; with a device-writable data buffer; longer
    // than the largest packet.
    let mut rw = guest_pkt(OP_RW, 1234, 52);
    rw.len = 100;
    rig.mem.write_slice(&rw.encode(), GuestAddress(at)).unwrap();
    rig.send_chain(&[(at, HDR as u32, false)]);
    rig.send_chain(&[(at, HDR as u32, false), (at + 0x100, 100, true)]);
    rig.send_chain(&[(at, HDR as u32, false), (at + 0x100, 50, false)]);
    rw.len = MAX_PKT_DATA + 1;
    rig.mem.write_slice(&rw.encode(), GuestAddress(at)).unwrap();
    rig.send_chain(&[(at, HDR as u32, false), (at + 0x100, MAX_PKT_DATA + 1, false)]);
    rig.nothing();
    assert_eq!(rig.counters().malformed, 7);

    // The wrong CIDs: dropped without an answer.
    let mut foreign = guest_pkt(OP_REQUEST, 1234, 52);
    foreign.src_cid = 4;
    rig.send(&foreign);
    let mut elsewhere = guest_pkt(OP_REQUEST, 1234, 52);
    elsewhere.dst_cid = 5;
    rig.send(&elsewhere);
    rig.nothing();
    assert_eq!(rig.counters().bad_cid, 2);

    // A seqpacket request, an unknown operation, a control packet with a
    // length: RST.
    let mut seqpacket = guest_pkt(OP_REQUEST, 1234, 52);
    seqpacket.type_ = 2;
    rig.send(&seqpacket);
    assert_eq!(rig.recv().op, OP_RST);
    rig.send(&guest_pkt(99, 1234, 52));
    assert_eq!(rig.recv().op, OP_RST);
    rig.send(&guest_pkt(OP_REQUEST, 1234, 52).with_data(b"data"));
    assert_eq!(rig.recv().op, OP_RST);
    assert_eq!(rig.counters().bad_op, 2);
    assert!(listener.set_nonblocking(true).is_ok());
    assert!(listener.accept().is_err(), "none of them connected");

    // On a connection, an unknown operation, a second request, or data
    // from the guest before it is established reset it.
    for bad in [99, OP_REQUEST, OP_RESPONSE] {
        listener.set_nonblocking(false).unwrap();
        let (conn, _host) = rig.guest_connect(2000 + u32::from(bad), 52, &listener);
        rig.send(&conn.pkt(bad));
        let rst = rig.recv();
        assert_eq!((rst.op, rst.dst_port), (OP_RST, conn.guest_port), "after op {bad}");
        assert_eq!(rig.device().connections(), 0);
    }
    let mut host = UnixStream::connect(&rig.path).unwrap();
    host.write_all(b"CONNECT 60\n").unwrap();
    let request = rig.recv();
    rig.send(&guest_pkt(OP_RW, 60, request.src_port).with_data(b"early"));
    assert_eq!(rig.recv().op, OP_RST);
    assert_closed(&mut host);

    // Receive buffers it cannot fill: used empty, counted.
    let before = rig.counters().malformed;
    let old = rig.avail_idx(RX_QUEUE);
    rig.add_rx(&[(RX_AT, 4096, false)]);
    rig.add_rx(&[(RX_AT, HDR as u32, true)]);
    rig.add_rx(&[(MEM_SIZE as u64 - 100, 4096, true)]);
    rig.kick(RX_QUEUE, old);
    // The device, holding buffers, did not ask to hear of more: tell it.
    rig.transport.queue_notify(RX_QUEUE);
    rig.rx_out += 3;
    rig.pump();
    assert_eq!(rig.counters().malformed - before, 3);
    assert_eq!(rig.inbox.pop_front(), None);

    // It still works.
    listener.set_nonblocking(false).unwrap();
    let (mut conn, mut host) = rig.guest_connect(3000, 52, &listener);
    rig.guest_write(&mut conn, b"fine", 64);
    let mut got = [0u8; 4];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"fine");
}

#[test]
fn a_guest_posting_no_buffers_has_its_rsts_bounded() {
    let mut rig = Rig::with(FEATURES, 0);
    for i in 0..3000u32 {
        rig.send(&guest_pkt(OP_RW, i, 52).with_data(b"x"));
    }
    rig.pump();
    let counters = rig.counters();
    assert_eq!(counters.unknown_connection, 3000);
    assert_eq!(counters.rst_dropped, 3000 - 2 * MAX_CONNECTIONS as u64);
    // Buffers come: the RSTs that were kept go, a budget at a time.
    rig.rx_target = 128;
    rig.refill();
    let resume = rig.transport.host_fds()[1];
    let mut poll = libc::pollfd { fd: resume, events: libc::POLLIN, revents: 0 };
    // SAFETY: poll reads and writes one pollfd, a live local.
    assert_eq!(unsafe { libc::poll(&mut poll, 1, 0) }, 1, "the device comes back for the rest");
    assert_eq!(rig.rx.used_idx(&rig.mem), RX_BUDGET as u16);
    let mut rsts = 0;
    while rsts < 2 * MAX_CONNECTIONS {
        rig.pump();
        while let Some(pkt) = rig.inbox.pop_front() {
            assert_eq!(pkt.op, OP_RST);
            rsts += 1;
        }
    }
    rig.nothing();
}

#[test]
fn works_without_event_idx_and_with_split_receive_buffers() {
    let mut rig = Rig::with(1 << VIRTIO_F_VERSION_1, 0);
    // Linux before 6.2: a header buffer and a data buffer.
    rig.rx_split = true;
    rig.rx_target = 32;
    rig.refill();
    let listener = listen(&rig, 52);
    let (mut conn, mut host) = rig.guest_connect(1234, 52, &listener);
    let data = pattern(100_000, 9);
    let writer = {
        let mut host = host.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || host.write_all(&data).unwrap())
    };
    while conn.received.len() < data.len() {
        rig.guest_read(&mut conn, true);
    }
    writer.join().unwrap();
    assert_eq!(checksum(&conn.received), checksum(&data));
    rig.guest_write(&mut conn, b"and back", 64);
    let mut got = [0u8; 8];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"and back");
}

#[test]
fn a_full_listener_backlog_is_a_rst_not_a_wait() {
    use std::os::fd::AsRawFd;
    let mut rig = Rig::new();
    let listener = listen(&rig, 52);
    // SAFETY: listen on a socket we own changes its backlog; no memory.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    rig.send(&guest_pkt(OP_REQUEST, 1, 52));
    assert_eq!(rig.recv().op, OP_RESPONSE);
    // The backlog holds one: a blocking connect would wait here.
    rig.send(&guest_pkt(OP_REQUEST, 2, 52));
    let rst = rig.recv();
    assert_eq!((rst.op, rst.dst_port), (OP_RST, 2));
    listener.accept().unwrap();
    rig.send(&guest_pkt(OP_REQUEST, 3, 52));
    assert_eq!(rig.recv().op, OP_RESPONSE);
}

#[test]
fn random_guest_traffic_is_survived() {
    let mut rig = Rig::new();
    let listener = listen(&rig, 52);
    listener.set_nonblocking(true).unwrap();
    let mut hosts: Vec<UnixStream> = Vec::new();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let at = TX_AT;
    let junk = pattern(MAX_PKT_DATA as usize + 100, 11);
    rig.mem.write_slice(&junk, GuestAddress(at + 0x100)).unwrap();
    for _ in 0..10_000 {
        let mut pkt =
            guest_pkt(next(9) as u16, next(6) as u32, [52, 53, 1 << 30][next(3) as usize]);
        if next(20) == 0 {
            pkt.src_cid = next(5);
        }
        if next(20) == 0 {
            pkt.dst_cid = next(5);
        }
        if next(20) == 0 {
            pkt.type_ = next(4) as u16;
        }
        pkt.flags = next(8) as u32;
        pkt.buf_alloc = [0, 1, 4096, GUEST_BUF, u32::MAX][next(5) as usize];
        pkt.fwd_cnt = [0, 100, u32::MAX, next(1 << 32) as u32][next(4) as usize];
        let data_len = [0, 1, 100, 4096, MAX_PKT_DATA, MAX_PKT_DATA + 1][next(6) as usize];
        pkt.len = if next(10) == 0 { next(1 << 32) as u32 } else { data_len };
        rig.mem.write_slice(&pkt.encode(), GuestAddress(at)).unwrap();
        let header_len = if next(20) == 0 { next(HDR as u64 + 1) as u32 } else { HDR as u32 };
        let mut chain = vec![(at, header_len, next(30) == 0)];
        if data_len > 0 && next(10) != 0 {
            chain.push((at + 0x100, data_len, next(30) == 0));
        }
        rig.send_chain(&chain);
        match next(10) {
            0 => {
                if let Ok((host, _)) = listener.accept() {
                    host.set_nonblocking(true).unwrap();
                    hosts.push(host);
                }
            }
            1 if !hosts.is_empty() => {
                let i = next(hosts.len() as u64) as usize;
                let _ = hosts[i].write(&junk[..next(10_000) as usize]);
            }
            2 if !hosts.is_empty() => {
                let i = next(hosts.len() as u64) as usize;
                hosts.swap_remove(i);
            }
            3 => {
                let mut host = UnixStream::connect(&rig.path).unwrap();
                host.set_nonblocking(true).unwrap();
                let _ = host.write_all(format!("CONNECT {}\n", next(6)).as_bytes());
                hosts.push(host);
            }
            4 => {
                // Streams the device reset may say so.
                let mut sink = [0u8; 65536];
                for host in &mut hosts {
                    while matches!(host.read(&mut sink), Ok(len) if len > 0) {}
                }
            }
            _ => {}
        }
        rig.pump();
        rig.inbox.clear();
        assert!(rig.device().connections() <= MAX_CONNECTIONS);
        assert!(
            rig.device().pending_bytes() <= rig.device().connections() * CONN_BUF_SIZE as usize
        );
    }
    let counters = rig.counters();
    assert!(counters.malformed > 0 && counters.bad_cid > 0 && counters.bad_op > 0, "{counters:?}");
    // Still a device: a fresh connection works.
    listener.set_nonblocking(false).unwrap();
    let (mut conn, mut host) = rig.guest_connect(777, 52, &listener);
    rig.guest_write(&mut conn, b"alive", 64);
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"alive");
}

#[test]
fn a_driver_posting_more_buffers_than_its_ring_holds_is_not_pending_work() {
    let mut rig = Rig::with(FEATURES, usize::from(QUEUE_SIZE));
    assert_eq!(rig.rx.take_used(&rig.mem), vec![], "all held, none used");
    // The same descriptors made available once more: more than a ring.
    for head in 0..QUEUE_SIZE {
        rig.rx.publish(&rig.mem, head);
    }
    rig.transport.queue_notify(RX_QUEUE);
    let used = rig.rx.take_used(&rig.mem);
    assert_eq!(used.len(), usize::from(QUEUE_SIZE));
    assert!(used.iter().all(|&(_, len)| len == 0));
    assert_eq!(rig.counters().malformed, u64::from(QUEUE_SIZE));
    // The held ones still carry packets.
    rig.send(&guest_pkt(OP_REQUEST, 1, 99));
    rig.pump();
    assert_eq!(rig.inbox.pop_front().map(|pkt| pkt.op), Some(OP_RST));
}

#[test]
fn a_restored_vsock_tells_the_guest_its_transport_was_reset() {
    use crate::TransportPersist;
    let rig = Rig::new();
    // The device holds the 8 event buffers and the receive buffers it took.
    let held_rx = rig.device().held_chains(RX_QUEUE);
    assert_eq!(rig.device().held_chains(EVENT_QUEUE), 8);
    assert!(held_rx > 0);
    let state = rig.transport.save_state();
    // Saved as not taken: the restored device takes them again.
    assert_eq!(state.queues[EVENT_QUEUE].next_avail, 0);
    assert_eq!(state.queues[RX_QUEUE].next_avail, rig.avail_idx(RX_QUEUE).wrapping_sub(held_rx));
    let mem = rig.mem.clone();
    mem.write_obj(0xffff_ffffu32, GuestAddress(0x3_8000)).unwrap();
    let dir = TempDir::new().unwrap();
    let device = Vsock::new(GUEST_CID, dir.as_path().join("restored.sock")).unwrap();
    let mut restored = MmioTransport::new(device, mem.clone(), Box::new(NoInterrupt)).unwrap();
    restored.restore_state(&state).unwrap();
    // The first event buffer carries VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
    // (id 0, 4 bytes); the other 7 are held again.
    let mut ev = TestQueue::new(QUEUE_SIZE, EV_RING);
    assert_eq!(ev.take_used(&mem), vec![(0, 4)]);
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x3_8000)).unwrap(), 0);
    assert_eq!(restored.device().held_chains(EVENT_QUEUE), 7);
    assert_eq!(restored.device().held_chains(RX_QUEUE), held_rx);
    assert_eq!(restored.device().connections(), 0);
}
