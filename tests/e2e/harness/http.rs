//! A raw HTTP/1.1 client that controls every byte on the wire.
//!
//! The gateway is tested on exactly what an agent can send: spoofed identity headers, header
//! floods, chunked bodies, a body that stalls half-way. A general-purpose client would
//! normalise or refuse much of that, so requests are written as bytes and responses parsed
//! here. Every send is bounded by [`RESPONSE_TIMEOUT`] (or the caller's limit for the `try_`
//! forms).

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long [`send_raw`] (and so [`request`]) waits for a complete response.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

/// A response as read off the wire. Header names are lowercase.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// 0 when the server closed the connection before a complete status line.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The name used by the brief; the same type as [`HttpResponse`].
pub type Response = HttpResponse;

impl HttpResponse {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// `error.code` of a JSON error body.
    pub fn error_code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_string)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts a JSON error response with this status and stable code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.error_code().as_deref()),
            (status, Some(code)),
            "body: {}",
            self.text()
        );
    }
}

/// Sends raw bytes and reads one response (the connection is then dropped). Honors
/// Content-Length and chunked framing, and reads to EOF otherwise; a server that closes early
/// ends the read. Panics after [`RESPONSE_TIMEOUT`] without a complete response.
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> HttpResponse {
    tokio::time::timeout(RESPONSE_TIMEOUT, async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // The server may answer (e.g. 413) and close before reading everything we send.
        let _ = s.write_all(bytes).await;
        read_response(&mut s).await
    })
    .await
    .unwrap_or_else(|_| panic!("no complete response from {addr} within {RESPONSE_TIMEOUT:?}"))
}

/// Like [`send_raw`], but `None` when the connection is refused or no complete response
/// arrives within `limit` (for probing a server that may not be up).
pub async fn try_send_raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Option<HttpResponse> {
    tokio::time::timeout(limit, async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let _ = s.write_all(bytes).await;
        let r = read_response(&mut s).await;
        (r.status != 0).then_some(r)
    })
    .await
    .ok()
    .flatten()
}

/// Like [`request`] (no body), but `None` on refusal or timeout; see [`try_send_raw`].
pub async fn try_get(addr: SocketAddr, path: &str, limit: Duration) -> Option<HttpResponse> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    try_send_raw(addr, req.as_bytes(), limit).await
}

/// A request with `Host` and `Connection: close` and, when a body is given, its
/// `Content-Length`. `headers` are sent verbatim, in order, after those. Panics if the
/// connection is refused or no response arrives within [`RESPONSE_TIMEOUT`].
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    send_raw(addr, &bytes).await
}

pub(crate) async fn read_response(s: &mut TcpStream) -> HttpResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    // Interim (1xx) responses are skipped; the final response is returned.
    let (status, headers, mut rest) = loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return HttpResponse {
                    status: 0,
                    headers: Vec::new(),
                    body: buf,
                };
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let rest = buf[head_end + 4..].to_vec();
        if (100..200).contains(&status) && status != 101 {
            buf = rest;
            continue;
        }
        break (status, headers, rest);
    };
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length: Option<usize> = get("content-length").and_then(|v| v.parse().ok());
    // No body by definition (HEAD answers are read to EOF: `request` sends Connection: close).
    if matches!(status, 101 | 204 | 304) {
        rest.clear();
        return HttpResponse {
            status,
            headers,
            body: rest,
        };
    }
    loop {
        if chunked {
            if let Some(body) = dechunk(&rest) {
                rest = body;
                break;
            }
        } else if let Some(n) = length {
            if rest.len() >= n {
                rest.truncate(n);
                break;
            }
        }
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            if chunked {
                rest = dechunk(&rest).unwrap_or(rest);
            }
            break;
        }
        rest.extend_from_slice(&chunk[..n]);
    }
    HttpResponse {
        status,
        headers,
        body: rest,
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Decodes a complete chunked body; `None` if incomplete.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let i = find(b, b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..i]).ok()?.split(';').next()?.trim(),
            16,
        )
        .ok()?;
        b = &b[i + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A chunked request body made of `chunks` pieces of `size` bytes each, then the last chunk.
pub fn chunked_body(chunks: usize, size: usize, byte: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..chunks {
        out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(byte, size));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// `data` as a chunked body in pieces of at most `size` bytes.
pub fn chunk_bytes(data: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in data.chunks(size.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_round_trips() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        assert_eq!(dechunk(&chunk_bytes(&data, 77)), Some(data));
        assert_eq!(dechunk(&chunked_body(3, 5, b'q')), Some(vec![b'q'; 15]));
        assert_eq!(dechunk(b"5\r\nab"), None);
    }
}
