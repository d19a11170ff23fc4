//! The host side of the device: the Unix listener, every connection's
//! stream, the device's own epoll over them, and what each connection owes
//! the guest.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{Connection, HostRead, State};
use super::{
    CONN_BUF_SIZE, CONNECT_TIMEOUT, EVENT_BUDGET, Error, HELLO_TIMEOUT, HOST_CID, MAX_CONNECTIONS,
    MAX_HELLO_LEN, MAX_PATH_LEN, MAX_PKT_DATA, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST,
    OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND,
    SHUTDOWN_TIMEOUT, TYPE_STREAM, VsockCounters, sys,
};

/// Epoll tokens of the listener and the timer; streams get the others.
const LISTENER: u64 = 0;
const TIMER: u64 = 1;
const FIRST_STREAM: u64 = 2;
/// Where the device's own ports (for host programs' connections) start,
/// as in Firecracker: far from the ports guests listen on.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Host programs accepted per listener event.
const ACCEPT_BUDGET: usize = 16;
/// RSTs waiting for receive buffers at most; more are dropped (counted).
const MAX_RSTS: usize = 2 * MAX_CONNECTIONS;

/// A connection, as the guest names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct ConnKey {
    /// The host side's port (the destination of the guest's packets).
    pub(super) host_port: u32,
    /// The guest's port.
    pub(super) guest_port: u32,
}

/// The device's timeouts (shorter in tests).
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    pub(super) connect: Duration,
    pub(super) shutdown: Duration,
    pub(super) hello: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts { connect: CONNECT_TIMEOUT, shutdown: SHUTDOWN_TIMEOUT, hello: HELLO_TIMEOUT }
    }
}

impl Timeouts {
    /// How often the timer looks for expired deadlines.
    fn tick(&self) -> Duration {
        (self.connect.min(self.shutdown).min(self.hello) / 4).max(Duration::from_millis(10))
    }
}

/// A host program that connected and has not sent its whole `CONNECT`
/// line yet.
#[derive(Debug)]
struct Hello {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// What a connection gave for a receive buffer.
enum Produced {
    /// A packet with this many payload bytes.
    Packet(u32),
    /// Nothing after all.
    Nothing,
}

/// The host side of a vsock device.
#[derive(Debug)]
pub(super) struct Muxer {
    path: PathBuf,
    listener: UnixListener,
    /// The listener's socket file (device, inode), removed at drop if it is
    /// still that file.
    listener_file: (u64, u64),
    epoll: Epoll,
    timer: TimerFd,
    timer_armed: bool,
    guest_cid: u64,
    conns: HashMap<ConnKey, Connection>,
    hellos: HashMap<u64, Hello>,
    /// Stream tokens of the connections.
    tokens: HashMap<u64, ConnKey>,
    next_token: u64,
    next_port: u32,
    /// Connections with packets for the guest, each at most once.
    rxq: VecDeque<ConnKey>,
    /// RSTs for connections that do not exist (any more).
    rsts: VecDeque<ConnKey>,
    /// The guest's payload on its way to a stream.
    scratch: Vec<u8>,
    events: Vec<EpollEvent>,
    pub(super) counters: VsockCounters,
    pub(super) timeouts: Timeouts,
}

impl Muxer {
    /// Listens at `path` for the guest `guest_cid`.
    pub(super) fn new(guest_cid: u64, path: &Path) -> Result<Muxer, Error> {
        let len = path.as_os_str().len();
        if len > MAX_PATH_LEN {
            return Err(Error::PathTooLong { path: path.into(), len, max: MAX_PATH_LEN });
        }
        if path.symlink_metadata().is_ok() {
            return Err(Error::PathExists { path: path.into() });
        }
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(Error::NoDirectory { path: path.into(), dir: dir.into() });
        }
        let listener = UnixListener::bind(path).map_err(|source| match source.kind() {
            io::ErrorKind::AddrInUse => Error::PathExists { path: path.into() },
            _ => Error::Listen { path: path.into(), source },
        })?;
        let listen_error = |source| Error::Listen { path: path.into(), source };
        listener.set_nonblocking(true).map_err(listen_error)?;
        let meta = path.symlink_metadata().map_err(listen_error)?;
        let epoll = Epoll::new().map_err(setup_error("epoll"))?;
        let timer = TimerFd::new().map_err(|err| setup_error("timer")(err.into()))?;
        sys::set_nonblocking(timer.as_raw_fd()).map_err(setup_error("timer"))?;
        let muxer = Muxer {
            path: path.into(),
            listener,
            listener_file: (meta.dev(), meta.ino()),
            epoll,
            timer,
            timer_armed: false,
            guest_cid,
            conns: HashMap::new(),
            hellos: HashMap::new(),
            tokens: HashMap::new(),
            next_token: FIRST_STREAM,
            next_port: FIRST_LOCAL_PORT,
            rxq: VecDeque::new(),
            rsts: VecDeque::new(),
            scratch: vec![0; MAX_PKT_DATA as usize],
            events: vec![EpollEvent::default(); EVENT_BUDGET],
            counters: VsockCounters::default(),
            timeouts: Timeouts::default(),
        };
        for (fd, token) in
            [(muxer.listener.as_raw_fd(), LISTENER), (muxer.timer.as_raw_fd(), TIMER)]
        {
            muxer
                .epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))
                .map_err(setup_error("epoll"))?;
        }
        Ok(muxer)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Open connections (host programs still sending their line included).
    pub(super) fn connections(&self) -> usize {
        self.conns.len() + self.hellos.len()
    }

    /// Guest bytes held for a host reader, over all connections.
    pub(super) fn pending_bytes(&self) -> usize {
        self.conns.values().map(Connection::pending_data).sum()
    }

    /// Forgets every connection (their streams are closed); the listener
    /// stays.
    pub(super) fn reset(&mut self) {
        self.conns.clear();
        self.hellos.clear();
        self.tokens.clear();
        self.rxq.clear();
        self.rsts.clear();
        // The timer stays armed: it fires once more and finds nothing to
        // time out. (A reset runs where the driver wrote the status
        // register, a vCPU thread in a VMM, whose sandbox need not allow
        // timer calls.)
    }

    /// Whether there are packets for the guest.
    pub(super) fn has_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rxq.is_empty()
    }

    fn arm_timer(&mut self) {
        if self.timer_armed {
            return;
        }
        let tick = self.timeouts.tick();
        match self.timer.reset(tick, Some(tick)) {
            Ok(()) => self.timer_armed = true,
            Err(err) => log::warn!("virtio-vsock: cannot arm its timer: {err}"),
        }
    }

    fn push_rst(&mut self, key: ConnKey) {
        if self.rsts.len() >= MAX_RSTS {
            self.counters.rst_dropped += 1;
        } else {
            self.rsts.push_back(key);
        }
    }

    /// Drops a connection (closing its stream), with a RST for the guest.
    fn kill(&mut self, key: ConnKey, rst: bool) {
        if let Some(conn) = self.conns.remove(&key) {
            self.tokens.remove(&conn.token);
            if conn.queued {
                self.rxq.retain(|queued| *queued != key);
            }
        }
        if rst {
            self.push_rst(key);
        }
    }

    /// Puts a connection with packets for the guest in the queue (at the
    /// back: connections take turns).
    fn schedule(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else { return };
        if conn.host_readable
            && conn.can_read()
            && conn.peer_credit() == 0
            && !conn.credit_requested
        {
            conn.need_credit_request = true;
            conn.credit_requested = true;
        }
        if !conn.queued && conn.has_rx_work() {
            conn.queued = true;
            self.rxq.push_back(key);
        }
    }

    /// Makes the epoll watch what the connection needs.
    fn sync_interest(epoll: &Epoll, conn: &mut Connection) {
        if conn.host_gone {
            return;
        }
        let wanted = conn.wanted_interest();
        if conn.interest == Some(wanted) {
            return;
        }
        let operation =
            if conn.interest.is_some() { ControlOperation::Modify } else { ControlOperation::Add };
        let fd = conn.stream.as_raw_fd();
        match epoll.ctl(operation, fd, EpollEvent::new(wanted, conn.token)) {
            Ok(()) => conn.interest = Some(wanted),
            Err(err) => log::warn!("virtio-vsock: cannot watch a connection's stream: {err}"),
        }
    }

    /// Moves a connection on after anything happened to it: passes the
    /// guest's end of data to the host, closes it when nothing can flow any
    /// more, asks for a credit update, watches its stream, queues its
    /// packets.
    fn progress(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else { return };
        if conn.guest_shut & SHUTDOWN_SEND != 0
            && !conn.tx_pending()
            && !conn.write_shut
            && !conn.host_gone
        {
            // The host reader sees the end once it has read everything.
            let _ = conn.stream.shutdown(Shutdown::Write);
            conn.write_shut = true;
        }
        let guest_to_host_done = conn.guest_shut & SHUTDOWN_SEND != 0 || conn.host_gone;
        let host_to_guest_done = conn.guest_shut & SHUTDOWN_RCV != 0 || conn.host_eof;
        if conn.state == State::Established && guest_to_host_done && host_to_guest_done {
            if !conn.tx_pending() {
                if conn.guest_shut == SHUTDOWN_BOTH {
                    // The guest closed and everything reached the host:
                    // the RST that completes a clean close.
                    self.kill(key, true);
                    return;
                }
                // Tell the guest both directions are over; it answers RST.
                conn.shut_want = SHUTDOWN_BOTH;
            }
            if conn.deadline.is_none() {
                conn.deadline = Some(Instant::now() + self.timeouts.shutdown);
                self.arm_timer();
            }
        }
        let Some(conn) = self.conns.get_mut(&key) else { return };
        conn.check_credit_update();
        Self::sync_interest(&self.epoll, conn);
        self.schedule(key);
    }

    /// Serves the epoll's ready events (at most [`EVENT_BUDGET`]). Returns
    /// whether there may be more.
    pub(super) fn host_events(&mut self) -> bool {
        let count = match self.epoll.wait(0, &mut self.events) {
            Ok(count) => count,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return true,
            Err(err) => {
                log::warn!("virtio-vsock: waiting on its epoll failed: {err}");
                return false;
            }
        };
        let mut more = count == self.events.len();
        for i in 0..count {
            let (token, events) = (self.events[i].data(), self.events[i].event_set());
            match token {
                LISTENER => more |= self.accept(),
                TIMER => self.expire(),
                _ if self.hellos.contains_key(&token) => self.read_hello(token),
                _ => {
                    if let Some(&key) = self.tokens.get(&token) {
                        self.stream_event(key, events);
                    }
                }
            }
        }
        more
    }

    /// Accepts host programs; returns whether more may be waiting.
    fn accept(&mut self) -> bool {
        for _ in 0..ACCEPT_BUDGET {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    log::warn!("virtio-vsock: accepting on {} failed: {err}", self.path.display());
                    return false;
                }
            };
            if self.connections() >= MAX_CONNECTIONS {
                log::debug!("virtio-vsock: {MAX_CONNECTIONS} connections open, one refused");
                self.counters.refused += 1;
                continue;
            }
            if let Err(err) = stream.set_nonblocking(true) {
                log::warn!("virtio-vsock: cannot make a host stream non-blocking: {err}");
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            let watch = EpollEvent::new(EventSet::IN, token);
            if let Err(err) = self.epoll.ctl(ControlOperation::Add, stream.as_raw_fd(), watch) {
                log::warn!("virtio-vsock: cannot watch a host stream: {err}");
                continue;
            }
            let deadline = Instant::now() + self.timeouts.hello;
            self.hellos.insert(token, Hello { stream, line: Vec::new(), deadline });
            self.arm_timer();
        }
        true
    }

    /// Reads a host program's `CONNECT <port>\n`, a byte at a time so that
    /// what follows the line stays in the stream for the guest.
    fn read_hello(&mut self, token: u64) {
        let Some(hello) = self.hellos.get_mut(&token) else { return };
        let complete = loop {
            let mut byte = [0u8];
            match (&hello.stream).read(&mut byte) {
                Ok(1) => {
                    hello.line.push(byte[0]);
                    if byte[0] == b'\n' {
                        break true;
                    }
                    if hello.line.len() >= MAX_HELLO_LEN {
                        break false;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // The end of the stream, or an error.
                _ => break false,
            }
        };
        let Some(hello) = self.hellos.remove(&token) else { return };
        let port = complete.then(|| parse_connect(&hello.line)).flatten();
        let Some(guest_port) = port else {
            log::debug!(
                "virtio-vsock: a host program sent {:?}, not `CONNECT <port>\\n`; closed",
                String::from_utf8_lossy(&hello.line)
            );
            self.counters.refused += 1;
            return;
        };
        let host_port = self.allocate_port();
        let key = ConnKey { host_port, guest_port };
        let deadline = Instant::now() + self.timeouts.connect;
        let mut conn = Connection::local(hello.stream, token, deadline);
        // Still watched for reading, as the hello was.
        conn.interest = Some(EventSet::IN);
        self.conns.insert(key, conn);
        self.tokens.insert(token, key);
        self.arm_timer();
        self.progress(key);
    }

    /// A port of the device's for a host program's connection, used by no
    /// other connection.
    fn allocate_port(&mut self) -> u32 {
        loop {
            let port = self.next_port;
            self.next_port = if port >= u32::MAX - 1 { FIRST_LOCAL_PORT } else { port + 1 };
            // At most MAX_CONNECTIONS ports are taken: this ends.
            if !self.conns.keys().any(|key| key.host_port == port) {
                return port;
            }
        }
    }

    /// The timer ticked: resets connections and drops host programs past
    /// their deadline.
    fn expire(&mut self) {
        let _ = self.timer.wait();
        let now = Instant::now();
        let before = self.hellos.len();
        self.hellos.retain(|_, hello| hello.deadline > now);
        let mut expired = (before - self.hellos.len()) as u64;
        let late: Vec<(ConnKey, bool)> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.deadline.is_some_and(|deadline| deadline <= now))
            .map(|(key, conn)| (*key, !conn.need_request))
            .collect();
        for (key, rst) in late {
            log::debug!("virtio-vsock: connection {key:?} timed out; reset");
            expired += 1;
            self.kill(key, rst);
        }
        self.counters.timeouts += expired;
        if self.hellos.is_empty() && self.conns.values().all(|conn| conn.deadline.is_none()) {
            let _ = self.timer.clear();
            self.timer_armed = false;
        }
    }

    /// The epoll's events for a connection's stream.
    fn stream_event(&mut self, key: ConnKey, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else { return };
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            // Reported whatever the interest: out of the epoll it goes.
            conn.host_gone = true;
            conn.host_readable = true;
            let fd = conn.stream.as_raw_fd();
            let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
            conn.interest = None;
            if conn.state == State::LocalInit {
                let rst = !conn.need_request;
                self.kill(key, rst);
                return;
            }
        }
        if events.contains(EventSet::IN) {
            conn.host_readable = true;
        }
        if conn.tx_pending() {
            let flushed = if conn.host_gone {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            } else {
                conn.flush()
            };
            if let Err(err) = flushed {
                log::debug!("virtio-vsock: connection {key:?}: the host stream broke: {err}");
                self.kill(key, true);
                return;
            }
        }
        self.progress(key);
    }

    /// A guest's connection request: connects to `PATH_<port>`.
    fn connect_to_host(&mut self, key: ConnKey, buf_alloc: u32, fwd_cnt: u32) {
        if self.connections() >= MAX_CONNECTIONS {
            log::debug!("virtio-vsock: {MAX_CONNECTIONS} connections open, the guest's refused");
            self.counters.refused += 1;
            self.push_rst(key);
            return;
        }
        let mut path = OsString::from(self.path.as_os_str());
        path.push(format!("_{}", key.host_port));
        let stream = match sys::connect(Path::new(&path)) {
            Ok(stream) => stream,
            Err(err) => {
                log::debug!(
                    "virtio-vsock: the guest's connection to port {}: {}: {err}",
                    key.host_port,
                    Path::new(&path).display()
                );
                self.counters.refused += 1;
                self.push_rst(key);
                return;
            }
        };
        let token = self.next_token;
        self.next_token += 1;
        self.conns.insert(key, Connection::peer(stream, token, buf_alloc, fwd_cnt));
        self.tokens.insert(token, key);
        self.progress(key);
    }

    /// Serves a packet from the guest.
    pub(super) fn handle_tx<B: BitmapSlice>(&mut self, pkt: &VsockPacket<'_, B>) {
        self.counters.tx_packets += 1;
        if pkt.src_cid() != self.guest_cid || pkt.dst_cid() != HOST_CID {
            log::debug!(
                "virtio-vsock: dropped a packet from CID {} to CID {} (the guest is {})",
                pkt.src_cid(),
                pkt.dst_cid(),
                self.guest_cid
            );
            self.counters.bad_cid += 1;
            return;
        }
        let key = ConnKey { host_port: pkt.dst_port(), guest_port: pkt.src_port() };
        let op = pkt.op();
        let known = self.conns.contains_key(&key);
        if pkt.type_() != TYPE_STREAM || (op != OP_RW && !pkt.is_empty()) {
            // Datagrams and seqpackets were not offered; only data has a length.
            self.counters.bad_op += 1;
            if op != OP_RST {
                self.kill(key, true);
            }
            return;
        }
        if !known {
            match op {
                OP_REQUEST => self.connect_to_host(key, pkt.buf_alloc(), pkt.fwd_cnt()),
                OP_RST => {}
                _ => {
                    self.counters.unknown_connection += 1;
                    self.push_rst(key);
                }
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else { return };
        conn.set_peer_credit(pkt.buf_alloc(), pkt.fwd_cnt());
        let established = conn.state == State::Established;
        match op {
            OP_RST => return self.kill(key, false),
            OP_RW => {
                if !established || conn.guest_shut & SHUTDOWN_SEND != 0 {
                    self.counters.bad_op += 1;
                    return self.kill(key, true);
                }
                let len = pkt.len() as usize;
                if conn.pending_data() + len > CONN_BUF_SIZE as usize {
                    log::debug!(
                        "virtio-vsock: connection {key:?}: the guest sent {len} bytes with {} of \
                         its {CONN_BUF_SIZE} bytes of credit in use; reset",
                        conn.pending_data()
                    );
                    self.counters.credit_overflow += 1;
                    return self.kill(key, true);
                }
                if len > 0 {
                    let data = &mut self.scratch[..len];
                    let copied = pkt.data_slice().map_or(0, |slice| slice.copy_to(data));
                    if copied != len {
                        self.counters.malformed += 1;
                        return self.kill(key, true);
                    }
                    let written = if conn.host_gone {
                        Err(io::ErrorKind::BrokenPipe.into())
                    } else {
                        conn.write(data)
                    };
                    if let Err(err) = written {
                        log::debug!(
                            "virtio-vsock: connection {key:?}: the host stream broke: {err}"
                        );
                        return self.kill(key, true);
                    }
                    self.counters.tx_bytes += len as u64;
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => conn.need_credit_update = true,
            OP_SHUTDOWN if established => conn.guest_shut |= pkt.flags() & SHUTDOWN_BOTH,
            OP_RESPONSE if conn.state == State::LocalInit && !conn.need_request => {
                conn.state = State::Established;
                conn.deadline = None;
                self.counters.connections += 1;
                if let Err(err) = conn.push_hello(key.host_port) {
                    log::debug!("virtio-vsock: connection {key:?}: the host stream broke: {err}");
                    return self.kill(key, true);
                }
            }
            _ => {
                // A REQUEST for a connection that exists, an answer out of
                // turn, an unknown operation.
                log::debug!("virtio-vsock: connection {key:?}: unexpected operation {op}; reset");
                self.counters.bad_op += 1;
                return self.kill(key, true);
            }
        }
        self.progress(key);
    }

    /// Writes the next packet for the guest into `pkt` (a receive buffer
    /// with room for data); returns its payload length, or None when there
    /// is nothing to send.
    pub(super) fn fill_rx<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> Option<u32> {
        // Each queued connection is asked once per call.
        let mut turns = self.rxq.len();
        loop {
            if let Some(key) = self.rsts.pop_front() {
                self.header(pkt, key, OP_RST, 0, 0, (0, 0));
                self.counters.rst_sent += 1;
                return Some(0);
            }
            if turns == 0 {
                return None;
            }
            turns -= 1;
            let key = self.rxq.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else { continue };
            conn.queued = false;
            let produced = self.produce(key, pkt);
            self.progress(key);
            if let Produced::Packet(len) = produced {
                return Some(len);
            }
        }
    }

    /// The next packet of one connection.
    fn produce<B: BitmapSlice>(&mut self, key: ConnKey, pkt: &mut VsockPacket<'_, B>) -> Produced {
        let Some(conn) = self.conns.get_mut(&key) else { return Produced::Nothing };
        let (op, len, flags) = if conn.need_response {
            conn.need_response = false;
            conn.state = State::Established;
            self.counters.connections += 1;
            (OP_RESPONSE, 0, 0)
        } else if conn.need_request {
            conn.need_request = false;
            (OP_REQUEST, 0, 0)
        } else {
            let read = if conn.can_send_data() {
                pkt.data_slice().map(|data| conn.read_host(data))
            } else {
                None
            };
            match read {
                Some(HostRead::Data(read)) => {
                    conn.sent_to_guest(read);
                    self.counters.rx_bytes += read as u64;
                    (OP_RW, read as u32, 0)
                }
                Some(HostRead::Eof) => {
                    conn.host_eof = true;
                    conn.host_readable = false;
                    conn.shut_want |= SHUTDOWN_SEND;
                    if conn.host_gone {
                        conn.shut_want |= SHUTDOWN_RCV;
                    }
                    conn.shut_sent = conn.shut_want;
                    (OP_SHUTDOWN, 0, conn.shut_want)
                }
                Some(HostRead::Failed(err)) => {
                    log::debug!("virtio-vsock: connection {key:?}: reading the host failed: {err}");
                    self.kill(key, false);
                    self.header(pkt, key, OP_RST, 0, 0, (0, 0));
                    self.counters.rst_sent += 1;
                    return Produced::Packet(0);
                }
                Some(HostRead::WouldBlock) | None => {
                    if read.is_some() {
                        // It said it was readable and has nothing after all.
                        conn.host_readable = false;
                    }
                    if conn.shut_want & !conn.shut_sent != 0 {
                        conn.shut_sent = conn.shut_want;
                        (OP_SHUTDOWN, 0, conn.shut_want)
                    } else if conn.need_credit_request {
                        conn.need_credit_request = false;
                        (OP_CREDIT_REQUEST, 0, 0)
                    } else if conn.need_credit_update {
                        (OP_CREDIT_UPDATE, 0, 0)
                    } else {
                        return Produced::Nothing;
                    }
                }
            }
        };
        let credit = conn.credit_fields();
        self.header(pkt, key, op, len, flags, credit);
        Produced::Packet(len)
    }

    /// Writes a packet header from the host side of `key`.
    fn header<B: BitmapSlice>(
        &mut self,
        pkt: &mut VsockPacket<'_, B>,
        key: ConnKey,
        op: u16,
        len: u32,
        flags: u32,
        (buf_alloc, fwd_cnt): (u32, u32),
    ) {
        pkt.set_src_cid(HOST_CID)
            .set_dst_cid(self.guest_cid)
            .set_src_port(key.host_port)
            .set_dst_port(key.guest_port)
            .set_len(len)
            .set_type(TYPE_STREAM)
            .set_op(op)
            .set_flags(flags)
            .set_buf_alloc(buf_alloc)
            .set_fwd_cnt(fwd_cnt);
        self.counters.rx_packets += 1;
    }
}

fn setup_error(what: &'static str) -> impl Fn(io::Error) -> Error {
    move |source| Error::Setup { what, source }
}

/// The port of a `CONNECT <port>\n` line (the word in any case, as
/// Firecracker takes it).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    let keyword = words.next()?;
    let port = words.next()?.parse().ok()?;
    (keyword.eq_ignore_ascii_case("connect") && words.next().is_none()).then_some(port)
}

impl Drop for Muxer {
    fn drop(&mut self) {
        // The socket file goes, unless something else took its place.
        if let Ok(meta) = self.path.symlink_metadata()
            && (meta.dev(), meta.ino()) == self.listener_file
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_connect;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52\n"), Some(52));
        assert_eq!(parse_connect(b"connect 4294967295\r\n"), Some(u32::MAX));
        for bad in [&b"CONNECT\n"[..], b"CONNECT 52 53\n", b"CONNECT -1\n", b"OPEN 52\n", b"\xff\n"]
        {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }
}
