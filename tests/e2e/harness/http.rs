//! A raw HTTP/1.1 client that controls every byte on the wire.
//!
//! The gateway is tested on exactly what an agent can send: spoofed identity headers, header
//! floods, chunked bodies, a body that stalls half-way. A general-purpose client would
//! normalise or refuse much of that, so requests are written as bytes and responses parsed here.
//!
//! - [`Request`] builds a well-formed request (`Host`, `Connection: close`, the caller's
//!   headers in order, then `Content-Length` or chunked framing) and sends it on a fresh
//!   connection: `Request::get(addr, "/v1/health").send().await`, or from a gateway,
//!   `gw.post("/tools/echo/x").api_key(KEY).json(br#"{"a":1}"#).send().await`.
//! - [`send_raw`] sends bytes as given, for requests the builder cannot make (malformed or
//!   stalled framing, hop-by-hop headers listed in `Connection`).
//!
//! Every send is bounded by [`RESPONSE_TIMEOUT`] (or the caller's limit for the `try_` forms).

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long [`Request::send`] and [`send_raw`] wait for a complete response.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

/// A response as read off the wire. Header names are lowercase.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// 0 when the server closed the connection before a complete status line.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

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

/// How a [`Request`] frames its body.
#[derive(Debug, Clone)]
enum Body {
    None,
    /// Sent after a `Content-Length`.
    Sized(Vec<u8>),
    /// Already chunk-encoded, sent after `Transfer-Encoding: chunked`.
    Chunked(Vec<u8>),
}

/// One HTTP/1.1 request on its own connection, built step by step and then sent:
///
/// ```no_run
/// # async fn demo(addr: std::net::SocketAddr) {
/// use lap_e2e::Request;
/// let r = Request::post(addr, "/tools/echo/x")
///     .api_key("key-1")
///     .header("X-Agent-Id", "agent-b")
///     .json(br#"{"amount": 5}"#)
///     .send()
///     .await;
/// assert_eq!(r.status, 403);
/// # }
/// ```
///
/// On the wire: the request line, `Host: ADDR`, `Connection: close`, the headers in the order
/// they were added (sent verbatim, repeats kept), then the body's framing and the body.
#[derive(Debug, Clone)]
#[must_use = "a request is sent only by `send` or `try_send`"]
pub struct Request {
    addr: SocketAddr,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Body,
}

impl Request {
    /// `method target` (path and query, sent as given: no normalisation, no escaping).
    pub fn new(addr: SocketAddr, method: &str, target: &str) -> Request {
        Request {
            addr,
            method: method.into(),
            target: target.into(),
            headers: Vec::new(),
            body: Body::None,
        }
    }

    pub fn get(addr: SocketAddr, target: &str) -> Request {
        Request::new(addr, "GET", target)
    }

    pub fn post(addr: SocketAddr, target: &str) -> Request {
        Request::new(addr, "POST", target)
    }

    /// One more header line, `name: value`, verbatim.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Several header lines, in order.
    pub fn headers(self, headers: &[(&str, &str)]) -> Request {
        headers
            .iter()
            .fold(self, |req, (name, value)| req.header(name, value))
    }

    /// `X-Api-Key: key`.
    pub fn api_key(self, key: &str) -> Request {
        self.header("X-Api-Key", key)
    }

    /// `Authorization: Bearer token`.
    pub fn bearer(self, token: &str) -> Request {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    /// A body sent with its `Content-Length`.
    pub fn body(mut self, bytes: impl AsRef<[u8]>) -> Request {
        self.body = Body::Sized(bytes.as_ref().to_vec());
        self
    }

    /// `Content-Type: application/json` and this body, sent byte for byte (valid JSON or not:
    /// tests send duplicate keys and broken JSON on purpose).
    pub fn json(self, bytes: impl AsRef<[u8]>) -> Request {
        self.header("Content-Type", "application/json").body(bytes)
    }

    /// `Transfer-Encoding: chunked` and `data` in chunks of at most `chunk` bytes (see
    /// [`chunk_bytes`]).
    pub fn chunked(mut self, data: &[u8], chunk: usize) -> Request {
        self.body = Body::Chunked(chunk_bytes(data, chunk));
        self
    }

    /// The request as it goes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.method, self.target, self.addr
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = match &self.body {
            Body::None => &[][..],
            Body::Sized(b) => {
                head.push_str(&format!("Content-Length: {}\r\n", b.len()));
                b
            }
            Body::Chunked(b) => {
                head.push_str("Transfer-Encoding: chunked\r\n");
                b
            }
        };
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// Sends the request and reads the response. Panics if the connection is refused or no
    /// complete response arrives within [`RESPONSE_TIMEOUT`].
    pub async fn send(self) -> HttpResponse {
        let what = format!("{} {}", self.method, self.target);
        let bytes = self.to_bytes();
        exchange(self.addr, &bytes, RESPONSE_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{what} to {}: {e}", self.addr))
    }

    /// Like [`Request::send`], but `None` when the connection is refused or no complete
    /// response arrives within `limit` (for probing a server that may not be up).
    pub async fn try_send(self, limit: Duration) -> Option<HttpResponse> {
        exchange(self.addr, &self.to_bytes(), limit)
            .await
            .ok()
            .filter(|r| r.status != 0)
    }
}

/// Sends raw bytes and reads one response (the connection is then dropped). Honors
/// Content-Length and chunked framing, and reads to EOF otherwise; a server that closes early
/// ends the read. Panics if the connection is refused or no complete response arrives within
/// [`RESPONSE_TIMEOUT`].
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> HttpResponse {
    exchange(addr, bytes, RESPONSE_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("raw request to {addr}: {e}"))
}

/// Connects, writes `bytes` and reads one response, all within `limit`.
async fn exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Result<HttpResponse, String> {
    tokio::time::timeout(limit, async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // The server may answer (e.g. 413) and close before reading everything we send.
        let _ = s.write_all(bytes).await;
        Ok(read_response(&mut s).await)
    })
    .await
    .unwrap_or_else(|_| Err(format!("no complete response within {limit:?}")))
}

/// Reads one final response (interim 1xx responses are skipped); status 0 when the peer
/// closed before a complete one. For connections a test drives itself (stalled or idle).
pub async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> HttpResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
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
    // No body by definition (HEAD answers are read to EOF: requests carry Connection: close).
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

/// `data` as a chunked body in pieces of at most `size` bytes, then the last chunk.
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
    use crate::{Behavior, Upstream};

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }

    async fn parse(wire: &[u8]) -> HttpResponse {
        read_response(&mut &wire[..]).await
    }

    #[test]
    fn chunking_round_trips() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        assert_eq!(dechunk(&chunk_bytes(&data, 77)), Some(data));
        assert_eq!(
            chunk_bytes(&[b'q'; 15], 5),
            b"5\r\nqqqqq\r\n5\r\nqqqqq\r\n5\r\nqqqqq\r\n0\r\n\r\n"
        );
        assert_eq!(dechunk(b"5\r\nab"), None);
        assert_eq!(
            dechunk(b"3;ext=1\r\nabc\r\n0\r\n\r\n"),
            Some(b"abc".to_vec())
        );
    }

    #[test]
    fn the_builder_writes_what_it_was_given_in_order() {
        let r = Request::new(addr(), "PATCH", "/tools/echo/a%2Fb?x=1")
            .api_key("k")
            .headers(&[("X-One", "1"), ("X-One", "2")])
            .bearer("t")
            .json(br#"{"a":1}"#);
        assert_eq!(
            String::from_utf8(r.to_bytes()).unwrap(),
            "PATCH /tools/echo/a%2Fb?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\
             X-Api-Key: k\r\nX-One: 1\r\nX-One: 2\r\nAuthorization: Bearer t\r\n\
             Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
        );
        let get = Request::get(addr(), "/v1/health").to_bytes();
        assert_eq!(
            get,
            b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n"
        );
        let chunked = Request::post(addr(), "/x").chunked(b"abcdef", 4).to_bytes();
        assert!(chunked
            .ends_with(b"Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n"));
        // An empty body is still a body: it is announced.
        let empty = Request::post(addr(), "/x").body(b"").to_bytes();
        assert!(empty.ends_with(b"Content-Length: 0\r\n\r\n"));
    }

    #[tokio::test]
    async fn responses_are_framed_by_length_chunks_or_eof() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhiEXTRA").await;
        assert_eq!((r.status, r.text().as_str()), (200, "hi"));
        assert_eq!(r.header("X-A"), Some("b"));
        let r = parse(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!((r.status, r.text().as_str()), (201, "hi"));
        let r = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\n\r\nto eof").await;
        assert_eq!((r.status, r.text().as_str()), (404, "to eof"));
        let r = parse(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nnope!").await;
        assert_eq!((r.status, r.body.len()), (204, 0));
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Le").await;
        assert_eq!(r.status, 0, "closed before a complete head");
        let body = r#"{"error":{"code":"API_KEY_REQUIRED"}}"#;
        let wire = format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = parse(wire.as_bytes()).await;
        r.assert_error(401, "API_KEY_REQUIRED");
    }

    #[tokio::test]
    async fn requests_arrive_as_built() {
        let up = Upstream::start(Behavior::Echo).await;
        let r = Request::post(up.addr(), "/p?q=1")
            .api_key("k")
            .json(b"{}")
            .send()
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = up.last().expect("recorded");
        assert_eq!(
            (seen.method.as_str(), seen.target.as_str()),
            ("POST", "/p?q=1")
        );
        assert_eq!((seen.path(), seen.query()), ("/p", Some("q=1")));
        assert_eq!(seen.header("x-api-key"), Some("k"));
        assert_eq!(seen.header("content-type"), Some("application/json"));
        assert_eq!(seen.body, b"{}");
        assert_eq!(r.json()["body_len"], 2);
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let r = Request::post(up.addr(), "/c")
            .chunked(&data, 999)
            .send()
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(up.last().expect("recorded").body, data);
        // Nothing listens on a leased port that was never given to a server.
        let closed = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        let none = Request::get(closed, "/").try_send(Duration::from_secs(2));
        assert!(none.await.is_none());
    }
}
