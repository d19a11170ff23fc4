#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::io::{Read, Write};

use serde::Deserialize;
use serde_json::json;

/// The largest request (head and body) [`read_request`] reads.
pub const MAX_REQUEST: usize = 64 * 1024;
/// The most headers a request may have.
pub const MAX_HEADERS: usize = 64;

/// The API's paths (Cloud Hypervisor's), each with its method.
pub const ROUTES: &[(&str, &str)] = &[
    ("/api/v1/vmm.ping", "GET"),
    ("/api/v1/vm.info", "GET"),
    ("/api/v1/vm.pause", "PUT"),
    ("/api/v1/vm.resume", "PUT"),
    ("/api/v1/vm.snapshot", "PUT"),
    ("/api/v1/vm.counters", "GET"),
    ("/api/v1/vmm.shutdown", "PUT"),
];

/// A request, read and framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent.
    pub method: String,
    /// The path, as sent.
    pub path: String,
    /// Exactly `Content-Length` bytes.
    pub body: Vec<u8>,
}

/// An answer that is not a success: an HTTP status and a message for the
/// `{"error": "..."}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for the operator.
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
}

/// Why no request could be read: an answer to give, or none (the client
/// is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// Answer this and close the connection.
    Answer(ApiError),
    /// The client closed the connection (or it failed): answer nothing.
    Gone,
}

fn answer(status: u16, message: &str) -> ReadError {
    ReadError::Answer(ApiError::new(status, message))
}

/// `vm.snapshot`'s body, Cloud Hypervisor's `VmSnapshotConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Where the snapshot goes, `file:///DIR`.
    pub destination_url: String,
}

/// What a request asks for, once routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET vmm.ping`.
    Ping,
    /// `GET vm.info`: state and configuration.
    Info,
    /// `PUT vm.pause`.
    Pause,
    /// `PUT vm.resume`.
    Resume,
    /// `PUT vm.snapshot` with its body.
    Snapshot(SnapshotConfig),
    /// `GET vm.counters`.
    Counters,
    /// `PUT vmm.shutdown`.
    Shutdown,
}

impl Endpoint {
    /// The endpoint `request` names: 404 for an unknown path, 405 for the
    /// wrong method, 400 for a body that is not the endpoint's JSON.
    pub fn route(request: &Request) -> Result<Endpoint, ApiError> {
        let Some(&(path, method)) = ROUTES.iter().find(|(path, _)| *path == request.path) else {
            return Err(ApiError::new(404, format!("no such path: {}", request.path)));
        };
        if request.method != method {
            return Err(ApiError::new(
                405,
                format!("{path} takes {method}, not {}", request.method),
            ));
        }
        Ok(match path {
            "/api/v1/vmm.ping" => Endpoint::Ping,
            "/api/v1/vm.info" => Endpoint::Info,
            "/api/v1/vm.pause" => Endpoint::Pause,
            "/api/v1/vm.resume" => Endpoint::Resume,
            "/api/v1/vm.snapshot" => {
                Endpoint::Snapshot(serde_json::from_slice(&request.body).map_err(|err| {
                    ApiError::new(
                        400,
                        format!("the body must be {{\"destination_url\": \"file:///DIR\"}}: {err}"),
                    )
                })?)
            }
            "/api/v1/vm.counters" => Endpoint::Counters,
            _ => Endpoint::Shutdown,
        })
    }
}

/// Reads one request from `stream`: its head (httparse), then its body.
/// A read that times out or would block is answered 408.
pub fn read_request(stream: &mut (impl Read + Write)) -> Result<Request, ReadError> {
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

/// The answer to a request: a JSON body (200), nothing (204), or an error.
pub type Reply = Result<Option<serde_json::Value>, ApiError>;

/// The reason phrase of the statuses the API uses.
pub fn reason(status: u16) -> &'static str {
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
pub fn response_bytes(reply: &Reply) -> Vec<u8> {
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
    fn routes_check_path_method_and_body() {
        let request = |method: &str, path: &str, body: &str| Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
        };
        let status = |r: Request| Endpoint::route(&r).map_err(|e| e.status);
        assert_eq!(status(request("GET", "/api/v1/vmm.ping", "")), Ok(Endpoint::Ping));
        assert_eq!(status(request("PUT", "/api/v1/vmm.shutdown", "")), Ok(Endpoint::Shutdown));
        assert_eq!(status(request("PUT", "/api/v1/vmm.ping", "")), Err(405));
        assert_eq!(status(request("GET", "/api/v1/vm.nothing", "")), Err(404));
        let snapshot = r#"{"destination_url": "file:///tmp/s"}"#;
        assert_eq!(
            status(request("PUT", "/api/v1/vm.snapshot", snapshot)),
            Ok(Endpoint::Snapshot(SnapshotConfig { destination_url: "file:///tmp/s".into() }))
        );
        for bad in ["", "{", r#"{"destination": "x"}"#, r#"{"destination_url": "x", "y": 1}"#] {
            assert_eq!(status(request("PUT", "/api/v1/vm.snapshot", bad)), Err(400), "{bad}");
        }
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
