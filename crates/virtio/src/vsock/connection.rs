//! One vsock connection: its Unix stream, where it stands in the protocol,
//! and the credit both ways.

use std::collections::VecDeque;
use std::io;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};
use vmm_sys_util::epoll::EventSet;

use super::{CONN_BUF_SIZE, MAX_HELLO_LEN, MAX_PKT_DATA, SHUTDOWN_RCV, sys};

/// Forwarded guest bytes the guest has not been told of that make the
/// device send a credit update. Below the buffer size, so a guest that
/// used its whole credit always gets one once the host has read enough.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 2;

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// A host program's connection: the guest has been (or is to be) asked
    /// with a REQUEST and has not answered.
    LocalInit,
    /// The guest's connection, accepted by the host's listener: the RESPONSE
    /// is to be sent.
    PeerInit,
    /// Bytes flow.
    Established,
}

/// What a read from the host stream gave.
pub(super) enum HostRead {
    /// This many bytes, now in the guest's buffer.
    Data(usize),
    /// The host will send nothing more.
    Eof,
    /// Nothing now.
    WouldBlock,
    /// The stream broke (e.g. the host program died with bytes unread).
    Failed(io::Error),
}

/// A connection between a guest port and a Unix stream.
#[derive(Debug)]
pub(super) struct Connection {
    pub(super) stream: UnixStream,
    /// Its token in the device's epoll.
    pub(super) token: u64,
    pub(super) state: State,
    /// Owed to the guest: the REQUEST of a host program's connection.
    pub(super) need_request: bool,
    /// Owed to the guest: the RESPONSE to its REQUEST.
    pub(super) need_response: bool,
    /// Owed to the guest: a CREDIT_UPDATE (asked for, or enough consumed).
    pub(super) need_credit_update: bool,
    /// Owed to the guest: a CREDIT_REQUEST (the host has data, the guest no
    /// room for it).
    pub(super) need_credit_request: bool,
    /// A CREDIT_REQUEST went out since the guest last changed its credit.
    pub(super) credit_requested: bool,
    /// The stream may have bytes (or its end) to read: it said so and no
    /// read has come back empty since. Its read interest is off meanwhile.
    pub(super) host_readable: bool,
    /// The host stream ended (read gave 0): the guest was told SEND.
    pub(super) host_eof: bool,
    /// The stream hung up (both directions closed, or an error): it is out
    /// of the epoll, nothing can be written to it, what is left is read.
    pub(super) host_gone: bool,
    /// The stream's write side was shut (the guest sends no more).
    pub(super) write_shut: bool,
    /// SHUTDOWN flags the guest sent.
    pub(super) guest_shut: u32,
    /// SHUTDOWN flags the guest is to know of, and those it was sent.
    pub(super) shut_want: u32,
    pub(super) shut_sent: u32,
    /// In the device's queue of connections with packets for the guest.
    pub(super) queued: bool,
    /// When the connection is reset if it has not moved on (no answer to
    /// the REQUEST, a close that does not complete).
    pub(super) deadline: Option<Instant>,
    /// What the epoll watches on the stream (None: not in the epoll).
    pub(super) interest: Option<EventSet>,
    /// Bytes for the host stream it did not take yet: the `OK` line first
    /// (`hello_len` bytes), then the guest's data, never more than the
    /// credit the guest was given.
    tx_buf: VecDeque<u8>,
    hello_len: usize,
    /// Guest bytes written to the stream, and the count the guest last saw.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt: Wrapping<u32>,
    /// The guest's buffer and its count of bytes consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
}

impl Connection {
    fn new(stream: UnixStream, token: u64, state: State) -> Connection {
        Connection {
            stream,
            token,
            state,
            need_request: false,
            need_response: false,
            need_credit_update: false,
            need_credit_request: false,
            credit_requested: false,
            host_readable: false,
            host_eof: false,
            host_gone: false,
            write_shut: false,
            guest_shut: 0,
            shut_want: 0,
            shut_sent: 0,
            queued: false,
            deadline: None,
            interest: None,
            tx_buf: VecDeque::new(),
            hello_len: 0,
            fwd_cnt: Wrapping(0),
            last_fwd_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
        }
    }

    /// A host program's connection to guest port, to be requested.
    pub(super) fn local(stream: UnixStream, token: u64, deadline: Instant) -> Connection {
        let mut conn = Connection::new(stream, token, State::LocalInit);
        conn.need_request = true;
        conn.deadline = Some(deadline);
        conn
    }

    /// The guest's connection, accepted on the host.
    pub(super) fn peer(stream: UnixStream, token: u64, buf_alloc: u32, fwd_cnt: u32) -> Connection {
        let mut conn = Connection::new(stream, token, State::PeerInit);
        conn.need_response = true;
        conn.set_peer_credit(buf_alloc, fwd_cnt);
        conn
    }

    /// Takes the credit fields of a packet from the guest.
    pub(super) fn set_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        if buf_alloc != self.peer_buf_alloc || Wrapping(fwd_cnt) != self.peer_fwd_cnt {
            self.credit_requested = false;
        }
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes the guest has room for. A guest that claims to have consumed
    /// more than it was sent, or shrank its buffer below what is in
    /// flight, has none.
    pub(super) fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The guest's bytes waiting for the host stream.
    pub(super) fn pending_data(&self) -> usize {
        self.tx_buf.len() - self.hello_len
    }

    /// Whether anything waits for the host stream.
    pub(super) fn tx_pending(&self) -> bool {
        !self.tx_buf.is_empty()
    }

    /// Whether host bytes may go to the guest.
    pub(super) fn can_read(&self) -> bool {
        self.state == State::Established && self.guest_shut & SHUTDOWN_RCV == 0 && !self.host_eof
    }

    /// Whether a read from the host could make a packet now.
    pub(super) fn can_send_data(&self) -> bool {
        self.host_readable && self.can_read() && self.peer_credit() > 0
    }

    /// Whether the connection has a packet for the guest.
    pub(super) fn has_rx_work(&self) -> bool {
        self.need_request
            || self.need_response
            || self.shut_want & !self.shut_sent != 0
            || self.need_credit_request
            || self.need_credit_update
            || self.can_send_data()
    }

    /// What the epoll is to watch: readable when the stream may be read
    /// and is not known to be readable already, writable while bytes wait.
    pub(super) fn wanted_interest(&self) -> EventSet {
        let mut events = EventSet::empty();
        if !self.host_readable && self.can_read() {
            events |= EventSet::IN;
        }
        if self.tx_pending() {
            events |= EventSet::OUT;
        }
        events
    }

    /// Asks for a credit update once enough was consumed since the guest
    /// last heard.
    pub(super) fn check_credit_update(&mut self) {
        if (self.fwd_cnt - self.last_fwd_cnt).0 >= CREDIT_UPDATE_THRESHOLD {
            self.need_credit_update = true;
        }
    }

    /// The credit fields of a packet for the guest; the guest then knows of
    /// everything consumed so far.
    pub(super) fn credit_fields(&mut self) -> (u32, u32) {
        self.last_fwd_cnt = self.fwd_cnt;
        self.need_credit_update = false;
        (CONN_BUF_SIZE, self.fwd_cnt.0)
    }

    /// Counts `len` bytes sent to the guest.
    pub(super) fn sent_to_guest(&mut self, len: usize) {
        self.rx_cnt += Wrapping(len as u32);
    }

    fn buffer(&mut self, data: &[u8]) {
        if self.tx_buf.capacity() == 0 {
            // Exactly what may ever wait: the credit given and the OK line.
            self.tx_buf = VecDeque::with_capacity(CONN_BUF_SIZE as usize + MAX_HELLO_LEN);
        }
        self.tx_buf.extend(data);
    }

    /// Queues the `OK <port>\n` line for the host program.
    pub(super) fn push_hello(&mut self, port: u32) -> io::Result<()> {
        let line = format!("OK {port}\n");
        self.hello_len += line.len();
        self.buffer(line.as_bytes());
        self.flush()
    }

    /// Writes the guest's `data` (within its credit, checked by the caller)
    /// to the stream, keeping what it does not take now.
    pub(super) fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut sent = 0;
        if self.tx_buf.is_empty() {
            sent = match sys::send(&self.stream, data) {
                Ok(sent) => sent,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
                Err(err) => return Err(err),
            };
            self.fwd_cnt += Wrapping(sent as u32);
        }
        if sent < data.len() {
            self.buffer(&data[sent..]);
        }
        Ok(())
    }

    /// Writes what waits until the stream takes no more.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let sent = match sys::send(&self.stream, front) {
                Ok(0) => break,
                Ok(sent) => sent,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(err),
            };
            self.tx_buf.drain(..sent);
            let hello = sent.min(self.hello_len);
            self.hello_len -= hello;
            self.fwd_cnt += Wrapping((sent - hello) as u32);
        }
        if self.tx_buf.is_empty() {
            // Idle connections hold no buffer.
            self.tx_buf = VecDeque::new();
        }
        Ok(())
    }

    /// Reads host bytes into `data` (a guest receive buffer), at most what
    /// the guest has room for and [`MAX_PKT_DATA`].
    pub(super) fn read_host<B: BitmapSlice>(&self, data: &VolatileSlice<'_, B>) -> HostRead {
        let room = data.len().min(MAX_PKT_DATA as usize).min(self.peer_credit() as usize);
        let mut slice = match data.subslice(0, room) {
            Ok(slice) if room > 0 => slice,
            _ => return HostRead::WouldBlock,
        };
        let mut stream = &self.stream;
        loop {
            match stream.read_volatile(&mut slice) {
                Ok(0) => return HostRead::Eof,
                Ok(read) => return HostRead::Data(read),
                Err(VolatileMemoryError::IOError(err)) => match err.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => return HostRead::WouldBlock,
                    _ => return HostRead::Failed(err),
                },
                Err(err) => return HostRead::Failed(io::Error::other(err.to_string())),
            }
        }
    }
}
