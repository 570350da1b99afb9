//! Real upstream HTTP(S) servers that record every request, standing in for the tools behind
//! the gateway.
//!
//! An [`Upstream`] listens on 127.0.0.1 only, on a port the kernel chooses (it is never handed
//! to a gateway as its own listener, so the port-lease rule of [`crate::ports`] does not
//! apply), and stops when dropped. It records each request exactly as it arrived (target,
//! headers in order with repeats, body), so tests can assert what the tool saw: which
//! credential was injected, which identity headers were stripped, that a refused call never
//! arrived.

use crate::tls::TestCa;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response as HyperResponse};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

/// Lowercase hex SHA-256, as the echo upstream reports a body (`body_sha256`).
pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// What an [`Upstream`] answers.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// 200 with a JSON description of the request:
    /// `{"method","path","query","target","headers":{name: value},"body_sha256","body_len"}`
    /// (header names lowercase; repeated headers joined with ", ").
    Echo,
    /// Echo after a delay.
    Delay(Duration),
    /// A fixed status and body (content-type application/json).
    Status(u16, &'static str),
    /// 200 with a body of this many bytes (`x`), with a Content-Length.
    Large(usize),
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query, exactly as received.
    pub target: String,
    /// Header names lowercase, in arrival order, repeated headers kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first value of a header (`name` lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header (`name` lowercase).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }
}

/// A real HTTP/1.1 server on 127.0.0.1 that records every request. Stopped on drop.
pub struct Upstream {
    addr: SocketAddr,
    scheme: &'static str,
    hits: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Acceptor = Option<tokio_rustls::TlsAcceptor>;

impl Upstream {
    /// A plain-HTTP upstream.
    pub async fn start(behavior: Behavior) -> Upstream {
        Self::serve(behavior, None).await
    }

    /// An HTTPS upstream whose certificate (for `localhost` and `127.0.0.1`) is issued by `ca`.
    /// Its [`Upstream::url`] is `https://127.0.0.1:PORT`.
    pub async fn start_tls(behavior: Behavior, ca: &TestCa) -> Upstream {
        Self::serve(behavior, Some(ca.acceptor())).await
    }

    async fn serve(behavior: Behavior, tls: Acceptor) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (h, l) = (hits.clone(), log.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (h, l, b, tls) = (h.clone(), l.clone(), behavior.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve_connection(stream, h, l, b).await,
                        Some(acceptor) => {
                            // A failed handshake (untrusted CA on the client side) is not a hit.
                            let accepted = tokio::time::timeout(
                                Duration::from_secs(10),
                                acceptor.accept(stream),
                            )
                            .await;
                            if let Ok(Ok(s)) = accepted {
                                serve_connection(s, h, l, b).await;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            scheme,
            hits,
            log,
            task,
        }
    }

    /// `http://127.0.0.1:PORT` (or `https://…` for [`Upstream::start_tls`]).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many HTTP requests arrived (each counted when its head arrives).
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Every completely received request, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().expect("log").clone()
    }

    pub fn last(&self) -> Option<Recorded> {
        self.log.lock().expect("log").last().cloned()
    }
}

async fn serve_connection<S>(
    stream: S,
    hits: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Recorded>>>,
    behavior: Behavior,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let (h, l, b) = (hits.clone(), log.clone(), behavior.clone());
        async move { Ok::<_, hyper::Error>(handle(req, h, l, b).await) }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

async fn handle(
    req: Request<Incoming>,
    hits: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Recorded>>>,
    behavior: Behavior,
) -> HyperResponse<Full<Bytes>> {
    hits.fetch_add(1, Ordering::SeqCst);
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let mut header_map = serde_json::Map::new();
    for (k, v) in &headers {
        let joined = match header_map.get(k).and_then(|p| p.as_str()) {
            Some(prev) => format!("{prev}, {v}"),
            None => v.clone(),
        };
        header_map.insert(k.clone(), joined.into());
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let echo = serde_json::json!({
        "method": method,
        "path": path,
        "query": query,
        "target": target,
        "headers": header_map,
        "body_sha256": sha256_hex(&body),
        "body_len": body.len(),
    });
    log.lock().expect("log").push(Recorded {
        method,
        target,
        headers,
        body,
    });
    let json = |status: u16, body: Vec<u8>| {
        HyperResponse::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("connection", "keep-alive")
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    };
    match behavior {
        Behavior::Echo => json(200, echo.to_string().into_bytes()),
        Behavior::Delay(d) => {
            tokio::time::sleep(d).await;
            json(200, echo.to_string().into_bytes())
        }
        Behavior::Status(code, body) => json(code, body.as_bytes().to_vec()),
        Behavior::Large(n) => json(200, vec![b'x'; n]),
    }
}
