//! The API thread: HTTP/1.1 on the API socket, one connection at a time,
//! one request per connection (answered with `Connection: close`).
//!
//! The request is read, framed and routed by `vmm_api` (its head parsed
//! with `httparse`, then `Content-Length` bytes of body, never more than
//! `vmm_api::MAX_REQUEST` in all: a larger request gets 413 and the
//! connection is closed unread); this module gives up on a client whose
//! request is not all there within [`READ_TIMEOUT`] of connecting (408):
//! connections are served one after another, so a silent or slow client
//! holds the API (never the guest or the event loop) for at most that
//! long. A client that disconnects mid-request is simply dropped. Nothing
//! a client sends reaches the event loop but a parsed [`Endpoint`].

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use vmm_api::{Endpoint, ReadError, Request, read_request, response_bytes};

use super::{ApiError, Message, Reply};

/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a request waits for the event loop's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The event loop, as the API thread reaches it: a channel, and an eventfd
/// that wakes the loop to look at it.
pub struct VmmLink {
    requests: Sender<Message>,
    wake: EventFd,
}

impl VmmLink {
    /// A link over `requests`, waking the loop through `wake`.
    pub fn new(requests: Sender<Message>, wake: EventFd) -> VmmLink {
        VmmLink { requests, wake }
    }

    /// Sends `endpoint` and waits for the answer.
    fn ask(&self, endpoint: Endpoint) -> Reply {
        let (reply, answer) = mpsc::sync_channel(1);
        let gone = || ApiError::new(503, "the VM is not running any more");
        self.requests.send((endpoint, reply)).map_err(|_| gone())?;
        self.wake.write(1).map_err(|_| gone())?;
        match answer.recv_timeout(REPLY_TIMEOUT) {
            Ok(reply) => reply,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(ApiError::new(503, "the VMM did not answer in time"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(gone()),
        }
    }

    /// Sends `endpoint` without waiting for an answer.
    fn tell(&self, endpoint: Endpoint) {
        let (reply, _) = mpsc::sync_channel(1);
        if self.requests.send((endpoint, reply)).is_ok() {
            let _ = self.wake.write(1);
        }
    }
}

/// Serves connections on `listener` until the process ends.
pub fn serve(listener: &UnixListener, vmm: &VmmLink) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => serve_connection(stream, vmm),
            // A client that went away before it was accepted, or a
            // descriptor shortage: the next one may do better.
            Err(err) => {
                log::warn!("API socket: cannot accept a connection: {err}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A connection whose reads all end by one deadline.
struct Deadlined<'a> {
    stream: &'a mut UnixStream,
    deadline: Instant,
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl Write for Deadlined<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

fn serve_connection(mut stream: UnixStream, vmm: &VmmLink) {
    // A client that does not read its answer cannot hold the API either.
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    let deadline = Instant::now() + READ_TIMEOUT;
    let request = match read_request(&mut Deadlined { stream: &mut stream, deadline }) {
        Ok(request) => request,
        Err(ReadError::Gone) => return,
        Err(ReadError::Answer(error)) => {
            write_reply(&mut stream, &Err(error));
            return;
        }
    };
    log::debug!("API: {} {}", request.method, request.path);
    let reply = route(&request, vmm);
    write_reply(&mut stream, &reply);
    if reply.is_ok() && request.path == "/api/v1/vmm.shutdown" {
        // After the 204 is written, so the client gets it.
        let _ = stream.flush();
        vmm.tell(Endpoint::Shutdown);
    }
}

/// Answers `request`: routing and bodies by `vmm_api`, the VM's work on
/// the event loop.
fn route(request: &Request, vmm: &VmmLink) -> Reply {
    match Endpoint::route(request)? {
        // The VMM is told once the 204 is written (serve_connection).
        Endpoint::Shutdown => Ok(None),
        endpoint => vmm.ask(endpoint),
    }
}

fn write_reply(stream: &mut UnixStream, reply: &Reply) {
    if let Err(err) = stream.write_all(&response_bytes(reply)) {
        log::debug!("API socket: cannot write the answer: {err}");
    }
}
