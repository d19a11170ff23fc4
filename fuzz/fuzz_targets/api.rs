//! The control API's protocol (`vmm_api`): one request read from a client
//! stream, routed, and answered, as the VMM's API thread does.
//!
//! Byte 0 says how the stream ends once the input is used up (bits 0-1:
//! end of file, a read that would block, one that timed out, a broken
//! connection) and whether reads are interrupted now and then (bit 2); byte
//! 1 seeds the sizes the stream hands out per read (1 byte to 4 KiB, the
//! sizes a slow or chunking client produces); the rest is what the client
//! sends.
//!
//! Invariants (besides: nothing panics):
//! - nothing is read past `MAX_REQUEST` + 1 bytes;
//! - a request read is exactly what the client sent up to the end of its
//!   body: its method and path are httparse's, its body the
//!   `Content-Length` bytes after the head, and nothing after it was read;
//! - the only thing written back while reading is `100 Continue`, and only
//!   to a request with `Expect: 100-continue`;
//! - "the client is gone" only after the stream ended or broke; an error
//!   to answer has one of the framing statuses (400, 408, 411, 413, 431),
//!   408 only after a read that would block or timed out;
//! - routing gives an endpoint or 400/404/405; a snapshot endpoint only
//!   for a body that is a JSON object with `destination_url` alone;
//! - every answer is a complete HTTP/1.1 response (httparse) with its
//!   status, `Connection: close`, and a `Content-Length` that is its body's
//!   length; an error's body is `{"error": "..."}`.
#![no_main]

use std::io::{ErrorKind, Read, Write};

use libfuzzer_sys::fuzz_target;
use vmm_api::{ApiError, Endpoint, MAX_REQUEST, ReadError, read_request, response_bytes};

/// A client: hands out `data` in pseudo-random sizes, then ends as told.
struct Client<'a> {
    data: &'a [u8],
    at: usize,
    seed: u32,
    end: u8,
    interrupts: bool,
    ended: Option<ErrorKind>,
    written: Vec<u8>,
}

impl Client<'_> {
    fn next_size(&mut self) -> usize {
        // xorshift: cheap, deterministic per input.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 17;
        self.seed ^= self.seed << 5;
        match self.seed % 4 {
            0 => 1 + (self.seed >> 8) as usize % 16,
            1 => 1 + (self.seed >> 8) as usize % 4096,
            _ => 4096,
        }
    }
}

impl Read for Client<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        assert!(self.ended.is_none(), "read again after the stream ended ({:?})", self.ended);
        if self.interrupts && self.seed & 0x700 == 0x700 {
            self.seed = self.seed.wrapping_add(0x100);
            return Err(ErrorKind::Interrupted.into());
        }
        if self.at == self.data.len() {
            let kind = match self.end & 3 {
                0 => return Ok(0),
                1 => ErrorKind::WouldBlock,
                2 => ErrorKind::TimedOut,
                _ => ErrorKind::ConnectionReset,
            };
            self.ended = Some(kind);
            return Err(kind.into());
        }
        let n = self.next_size().min(buf.len()).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for Client<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Checks `bytes` as the VMM writes an answer with `status`.
fn check_response(bytes: &[u8], status: u16) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = response.parse(bytes) else {
        panic!("not a complete response: {:?}", String::from_utf8_lossy(bytes));
    };
    assert_eq!(response.version, Some(1));
    assert_eq!(response.code, Some(status));
    let header = |name: &str| {
        response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    };
    assert_eq!(header("connection"), Some(&b"close"[..]));
    let body = &bytes[head_len..];
    match header("content-length") {
        Some(length) => {
            assert_eq!(
                std::str::from_utf8(length).ok().and_then(|l| l.parse().ok()),
                Some(body.len())
            );
            let value: serde_json::Value = serde_json::from_slice(body).expect("a JSON body");
            if status >= 400 {
                assert!(value["error"].is_string(), "error body {value}");
            }
        }
        None => assert!(body.is_empty() && status == 204, "a body without a length"),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let mut client = Client {
        data: &data[2..],
        at: 0,
        seed: 0x9e37_79b9 ^ u32::from(data[1]) << 3 | 1,
        end: data[0],
        interrupts: data[0] & 4 != 0,
        ended: None,
        written: Vec::new(),
    };
    let sent = &data[2..];
    let result = read_request(&mut client);
    assert!(client.at <= MAX_REQUEST + 1, "read {} bytes", client.at);
    let continued = client.written == b"HTTP/1.1 100 Continue\r\n\r\n";
    assert!(client.written.is_empty() || continued, "wrote {:?}", client.written);
    let request = match result {
        Ok(request) => request,
        Err(ReadError::Gone) => {
            let broke = client.at == sent.len() && matches!(client.end & 3, 0 | 3);
            assert!(
                broke,
                "gone after {} of {} bytes (end {})",
                client.at,
                sent.len(),
                client.end & 3
            );
            return;
        }
        Err(ReadError::Answer(error)) => {
            assert!([400, 408, 411, 413, 431].contains(&error.status), "{error:?}");
            if error.status == 408 {
                assert!(matches!(client.ended, Some(ErrorKind::WouldBlock | ErrorKind::TimedOut)));
            }
            check_response(&response_bytes(&Err(error.clone())), error.status);
            return;
        }
    };
    // Exactly the head and Content-Length bytes were read.
    let consumed = &sent[..client.at];
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = head.parse(consumed) else {
        panic!("accepted a request whose head httparse does not complete");
    };
    assert_eq!(head.method, Some(request.method.as_str()));
    assert_eq!(head.path, Some(request.path.as_str()));
    assert_eq!(
        &consumed[head_len..],
        &request.body[..],
        "the body is not the bytes after the head"
    );
    let expects = head.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("expect") && h.value.eq_ignore_ascii_case(b"100-continue")
    });
    assert!(!continued || expects, "100 Continue without Expect");

    let reply = match Endpoint::route(&request) {
        Ok(Endpoint::Snapshot(config)) => {
            let value: serde_json::Value = serde_json::from_slice(&request.body).expect("JSON");
            let object = value.as_object().expect("an object");
            assert_eq!(object.len(), 1);
            assert_eq!(object["destination_url"].as_str(), Some(config.destination_url.as_str()));
            Ok(None)
        }
        Ok(Endpoint::Ping | Endpoint::Info | Endpoint::Counters) => {
            Ok(Some(serde_json::json!({ "path": request.path })))
        }
        Ok(_) => Ok(None),
        Err(error) => {
            assert!([400, 404, 405].contains(&error.status), "{error:?}");
            Err::<Option<serde_json::Value>, ApiError>(error)
        }
    };
    let status = match &reply {
        Ok(None) => 204,
        Ok(Some(_)) => 200,
        Err(error) => error.status,
    };
    check_response(&response_bytes(&reply), status);
});
