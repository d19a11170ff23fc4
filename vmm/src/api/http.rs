//! The API thread: HTTP/1.1 on the API socket, one connection at a time,
//! one request per connection (answered with `Connection: close`).
//!
//! The request head is parsed with `httparse`; this module only frames
//! it: it reads until the head is complete, then `Content-Length` bytes of
//! body, never more than [`MAX_REQUEST`] in all (a larger request gets 413
//! and the connection is closed unread), and gives up on a client whose
//! request is not all there within [`READ_TIMEOUT`] of connecting (408):
//! connections are served one after another, so a silent or slow client
//! holds the API (never the guest or the event loop) for at most that long. A client that disconnects
//! mid-request is simply dropped. Nothing a client sends reaches the event
//! loop but a parsed [`Action`].

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use serde_json::json;
use vmm_sys_util::eventfd::EventFd;

use super::{Action, ApiError, Message, Reply, SnapshotConfig};

/// The largest request (head and body) the API reads.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a request waits for the event loop's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The most headers a request may have.
const MAX_HEADERS: usize = 64;

/// The API's paths (Cloud Hypervisor's), each with its method.
const ROUTES: &[(&str, &str)] = &[
    ("/api/v1/vmm.ping", "GET"),
    ("/api/v1/vm.info", "GET"),
    ("/api/v1/vm.pause", "PUT"),
    ("/api/v1/vm.resume", "PUT"),
    ("/api/v1/vm.snapshot", "PUT"),
    ("/api/v1/vm.counters", "GET"),
    ("/api/v1/vmm.shutdown", "PUT"),
];

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

    /// Sends `action` and waits for the answer.
    fn ask(&self, action: Action) -> Reply {
        let (reply, answer) = mpsc::sync_channel(1);
        let gone = || ApiError::new(503, "the VM is not running any more");
        self.requests.send((action, reply)).map_err(|_| gone())?;
        self.wake.write(1).map_err(|_| gone())?;
        match answer.recv_timeout(REPLY_TIMEOUT) {
            Ok(reply) => reply,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(ApiError::new(503, "the VMM did not answer in time"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(gone()),
        }
    }

    /// Sends `action` without waiting for an answer.
    fn tell(&self, action: Action) {
        let (reply, _) = mpsc::sync_channel(1);
        if self.requests.send((action, reply)).is_ok() {
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

/// A request, read and framed.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// Why no request could be read: an answer to give, or none (the client
/// is gone).
#[derive(Debug, PartialEq, Eq)]
enum ReadError {
    Answer(ApiError),
    Gone,
}

fn answer(status: u16, message: &str) -> ReadError {
    ReadError::Answer(ApiError::new(status, message))
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
        vmm.tell(Action::Shutdown);
    }
}

/// Reads one request from `stream`: its head (httparse), then its body.
fn read_request(stream: &mut (impl Read + Write)) -> Result<Request, ReadError> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buffer) {
            Ok(httparse::Status::Complete(head_len)) => {
                return read_body(stream, &parsed, buffer[head_len..].to_vec(), head_len);
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(answer(431, "too many headers"));
            }
            Err(err) => return Err(answer(400, &format!("malformed request: {err}"))),
        }
        if buffer.len() >= MAX_REQUEST {
            return Err(answer(413, "the request is larger than 64 KiB"));
        }
        let want = chunk.len().min(MAX_REQUEST + 1 - buffer.len());
        let read = read_some(stream, &mut chunk[..want])?;
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Reads into `chunk`: at least a byte, or the client is gone or too slow.
fn read_some(stream: &mut impl Read, chunk: &mut [u8]) -> Result<usize, ReadError> {
    loop {
        match stream.read(chunk) {
            Ok(0) => return Err(ReadError::Gone),
            Ok(read) => return Ok(read),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(answer(408, "the request did not arrive in time"));
            }
            Err(_) => return Err(ReadError::Gone),
        }
    }
}

/// The rest of a request whose head is parsed: `Content-Length` bytes of
/// body, of which `body` came with the head.
fn read_body(
    stream: &mut (impl Read + Write),
    head: &httparse::Request<'_, '_>,
    mut body: Vec<u8>,
    head_len: usize,
) -> Result<Request, ReadError> {
    let header = |name: &str| {
        head.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    if header("transfer-encoding").is_some() {
        return Err(answer(411, "a body needs a Content-Length (no chunked transfer)"));
    }
    let length = match header("content-length") {
        None => 0,
        Some(value) => value
            .parse::<usize>()
            .map_err(|_| answer(400, &format!("Content-Length {value:?} is not a number")))?,
    };
    if head_len.saturating_add(length) > MAX_REQUEST {
        return Err(answer(413, "the request is larger than 64 KiB"));
    }
    if body.len() > length {
        return Err(answer(400, "more bytes than Content-Length (one request per connection)"));
    }
    let expects_continue =
        header("expect").is_some_and(|value| value.eq_ignore_ascii_case("100-continue"));
    if expects_continue && body.len() < length {
        // curl waits for this (or a second) before it sends a larger body.
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").map_err(|_| ReadError::Gone)?;
    }
    let mut chunk = [0u8; 4096];
    while body.len() < length {
        let want = chunk.len().min(length - body.len());
        let read = read_some(stream, &mut chunk[..want])?;
        body.extend_from_slice(&chunk[..read]);
    }
    Ok(Request {
        method: head.method.unwrap_or_default().to_owned(),
        path: head.path.unwrap_or_default().to_owned(),
        body,
    })
}

/// The version, in Cloud Hypervisor's `VmmPingResponse` shape.
fn ping() -> serde_json::Value {
    let version = env!("CARGO_PKG_VERSION");
    json!({
        "build_version": version,
        "version": version,
        "pid": std::process::id(),
        "features": [],
    })
}

/// Answers `request`: routing and bodies here, the VM's work on the event
/// loop.
fn route(request: &Request, vmm: &VmmLink) -> Reply {
    let Some(&(path, method)) = ROUTES.iter().find(|(path, _)| *path == request.path) else {
        return Err(ApiError::new(404, format!("no such path: {}", request.path)));
    };
    if request.method != method {
        return Err(ApiError::new(405, format!("{path} takes {method}, not {}", request.method)));
    }
    match path {
        "/api/v1/vmm.ping" => Ok(Some(ping())),
        "/api/v1/vm.info" => vmm.ask(Action::Info),
        "/api/v1/vm.pause" => vmm.ask(Action::Pause),
        "/api/v1/vm.resume" => vmm.ask(Action::Resume),
        "/api/v1/vm.snapshot" => {
            let config: SnapshotConfig = serde_json::from_slice(&request.body).map_err(|err| {
                ApiError::new(
                    400,
                    format!("the body must be {{\"destination_url\": \"file:///DIR\"}}: {err}"),
                )
            })?;
            vmm.ask(Action::Snapshot(config))
        }
        "/api/v1/vm.counters" => vmm.ask(Action::Counters),
        // The VMM is told once the 204 is written (serve_connection).
        _ => Ok(None),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The bytes of `reply` as an HTTP/1.1 response that closes the connection.
fn response_bytes(reply: &Reply) -> Vec<u8> {
    let (status, body) = match reply {
        Ok(None) => (204, None),
        Ok(Some(value)) => (200, Some(value.to_string())),
        Err(error) => (error.status, Some(json!({ "error": error.message }).to_string())),
    };
    let mut out = format!("HTTP/1.1 {status} {}\r\nServer: vmm\r\n", reason(status));
    if let Some(body) = &body {
        out.push_str("Content-Type: application/json\r\n");
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("Connection: close\r\n\r\n");
    if let Some(body) = body {
        out.push_str(&body);
    }
    out.into_bytes()
}

fn write_reply(stream: &mut UnixStream, reply: &Reply) {
    if let Err(err) = stream.write_all(&response_bytes(reply)) {
        log::debug!("API socket: cannot write the answer: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<Request, ReadError> {
        read_request(&mut std::io::Cursor::new(bytes.to_vec()))
    }

    #[test]
    fn requests_are_framed_by_content_length() {
        let request =
            read(b"PUT /api/v1/vm.snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd")
                .unwrap();
        assert_eq!(request.method, "PUT");
        assert_eq!(request.path, "/api/v1/vm.snapshot");
        assert_eq!(request.body, b"abcd");
        let request = read(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n").unwrap();
        assert!(request.body.is_empty());
    }

    #[test]
    fn bad_and_large_requests_get_answers_and_cut_ones_none() {
        let status = |bytes: &[u8]| match read(bytes) {
            Err(ReadError::Answer(error)) => Some(error.status),
            Err(ReadError::Gone) => None,
            Ok(request) => panic!("accepted {request:?}"),
        };
        assert_eq!(status(b"GET /x HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"), Some(413));
        let mut huge = b"GET /x HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_REQUEST + 100, b'a');
        assert_eq!(status(&huge), Some(413));
        assert_eq!(status(b"GET /x HTTP/1.1\r\nContent-Length: ten\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), Some(411));
        assert_eq!(status(b"\x01\x02 nonsense\r\n\r\n"), Some(400));
        // Cut short: the client is gone, nothing to answer.
        assert_eq!(status(b"GET /api/v1/vm"), None);
        assert_eq!(status(b"PUT /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"), None);
    }

    #[test]
    fn responses_close_the_connection_and_errors_are_json() {
        let text = String::from_utf8(response_bytes(&Ok(None))).unwrap();
        assert_eq!(text, "HTTP/1.1 204 No Content\r\nServer: vmm\r\nConnection: close\r\n\r\n");
        let text = String::from_utf8(response_bytes(&Err(ApiError::new(409, "no")))).unwrap();
        assert!(text.starts_with("HTTP/1.1 409 Conflict\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"error\":\"no\"}"), "{text}");
        assert!(text.contains("Content-Length: 14\r\n"), "{text}");
    }
}
