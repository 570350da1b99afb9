//! The admin plane: a separate listener (loopback by default) for operators and scrapers.
//!
//! `/healthz` says the process serves; `/readyz` says the data listener is this process's and
//! answers (it asks the data port's `/v1/health` for this process's instance id) and reports
//! what is in force (keys and policy are always loaded by then: start-up fails otherwise);
//! `/metrics` is the Prometheus exposition. The evidence endpoints:
//!
//! | route | answer |
//! |---|---|
//! | `/v1/receipts/{id}` | the receipt's DSSE envelope (header `x-lap-log-index`) |
//! | `/v1/log/entries/{index}` | the log entry (a receipt envelope) |
//! | `/v1/log/checkpoint` | the latest signed checkpoint (C2SP signed note, text) |
//! | `/v1/log/vkey` | the checkpoint verifier key (Go `note` format, text) |
//! | `/v1/log/proof/inclusion?index=I[&size=N]` | RFC 6962 audit path (JSON, base64 hashes) |
//! | `/v1/log/proof/consistency?old=M[&new=N]` | RFC 6962 consistency proof (JSON) |
//! | `/v1/audit-pack?from&to&since&until&agent&tool&since_size` | an audit pack (tar; see `auditpack`) |
//!
//! Without `size`/`new`, proofs are made against the latest checkpoint's tree size, so they
//! verify against a signed root.

use crate::auditpack::{
    prepare, sign_and_write, ExportError, LiveLog, PackRequest, ADMIN_MAX_ENTRIES,
};
use crate::evidence::Evidence;
use crate::metrics::Metrics;
use crate::state::LiveState;
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    pub live: Arc<LiveState>,
    pub gateway_id: String,
    pub evidence: Option<Arc<Evidence>>,
    pub readiness: Readiness,
}

/// Whether the data listener has been seen serving this process. Checked by a request to the
/// data port's health route until it succeeds once; after that the answer is cached (a data
/// listener does not go away while the process lives).
pub struct Readiness {
    probe: SocketAddr,
    instance: &'static str,
    confirmed: AtomicBool,
}

impl Readiness {
    pub fn new(data_listen: SocketAddr, instance: &'static str) -> Self {
        // A wildcard listen address is probed on loopback of the same family.
        let ip = match data_listen.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Readiness {
            probe: SocketAddr::new(ip, data_listen.port()),
            instance,
            confirmed: AtomicBool::new(false),
        }
    }

    async fn data_plane_ready(&self) -> bool {
        if self.confirmed.load(Ordering::Relaxed) {
            return true;
        }
        let seen = tokio::time::timeout(PROBE_TIMEOUT, self.ask_data_port())
            .await
            .unwrap_or(false);
        if seen {
            self.confirmed.store(true, Ordering::Relaxed);
        }
        seen
    }

    async fn ask_data_port(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(self.probe).await else {
            return false;
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            crate::pipeline::route::HEALTH_PATH,
            self.probe
        );
        if conn.write_all(request.as_bytes()).await.is_err() {
            return false;
        }
        // The health body is small; a bounded read keeps a hostile squatter from feeding us.
        let mut answer = Vec::with_capacity(1024);
        let mut limited = conn.take(16 * 1024);
        if limited.read_to_end(&mut answer).await.is_err() {
            return false;
        }
        let quoted = format!("\"instance\":\"{}\"", self.instance);
        answer.starts_with(b"HTTP/1.1 200")
            && answer.windows(quoted.len()).any(|w| w == quoted.as_bytes())
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

fn json(status: u16, v: serde_json::Value) -> Response<Vec<u8>> {
    let body = v.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::GET {
            return json(
                405,
                serde_json::json!({"error": {"code": "METHOD_NOT_ALLOWED", "message": "admin endpoints are GET only"}}),
            );
        }
        match req.uri.path() {
            "/healthz" => json(200, serde_json::json!({"status": "ok"})),
            "/readyz" => {
                if !self.readiness.data_plane_ready().await {
                    return error(
                        503,
                        "DATA_PLANE_NOT_READY",
                        "the data listener does not answer for this process yet",
                    );
                }
                let keys = self.live.keys.load();
                let policy = self.live.policy.load();
                json(
                    200,
                    serde_json::json!({
                        "status": "ready",
                        "gateway_id": self.gateway_id,
                        "api_keys": keys.len(),
                        "policies": policy.policy_count(),
                        "policy_digest": policy.digest_hex(),
                        "log_size": self.evidence.as_ref().map(|e| e.ledger().store().size()),
                    }),
                )
            }
            "/metrics" => {
                let body = self.metrics.render();
                Response::builder()
                    .status(200)
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("content-length", body.len())
                    .body(body)
                    .unwrap_or_default()
            }
            "/v1/audit-pack" => match &self.evidence {
                Some(ev) => self.audit_pack(ev, req.uri.query().unwrap_or("")).await,
                None => error(
                    404,
                    "EVIDENCE_DISABLED",
                    "evidence is disabled on this gateway",
                ),
            },
            path if path.starts_with("/v1/") => match &self.evidence {
                Some(ev) => evidence_route(ev, path, req.uri.query().unwrap_or("")),
                None => error(
                    404,
                    "EVIDENCE_DISABLED",
                    "evidence is disabled on this gateway",
                ),
            },
            _ => error(404, "ROUTE_NOT_FOUND", "no such admin route"),
        }
    }
}

impl AdminApp {
    /// `GET /v1/audit-pack?…`: an audit pack (tar) of the selected entries.
    async fn audit_pack(&self, ev: &Arc<Evidence>, query: &str) -> Response<Vec<u8>> {
        let fail = |e: ExportError| {
            if e.status() >= 500 {
                tracing::error!(code = e.code(), error = %e, "audit-pack export failed");
            }
            error(e.status(), e.code(), &e.to_string())
        };
        let req = match PackRequest::from_query(query) {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        let trust = self.live.published.load().keys.clone();
        let origin = ev.ledger().origin().to_string();
        // Reading and hashing many entries is blocking work: keep it off the admin runtime.
        let job = {
            let ev = ev.clone();
            tokio::task::spawn_blocking(move || {
                prepare(
                    &LiveLog(ev.ledger()),
                    &origin,
                    &trust,
                    &req,
                    Some(ADMIN_MAX_ENTRIES),
                )
            })
        };
        let prepared = match job.await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return fail(e),
            Err(e) => return fail(ExportError::Internal(e.to_string())),
        };
        let mut body = Vec::new();
        if let Err(e) = sign_and_write(
            prepared,
            ev.log_signer().as_ref(),
            &ev.ledger().log_vkey(),
            &mut body,
        )
        .await
        {
            return fail(e);
        }
        let mut r = text(200, "application/x-tar", body);
        r.headers_mut().insert(
            "content-disposition",
            http::HeaderValue::from_static("attachment; filename=\"lap-audit-pack.tar\""),
        );
        r
    }
}

fn error(status: u16, code: &str, message: &str) -> Response<Vec<u8>> {
    json(
        status,
        serde_json::json!({"error": {"code": code, "message": message}}),
    )
}

fn text(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

/// A numeric query parameter; `Err` carries the message for a 400.
fn query_u64(query: &str, name: &str) -> Result<Option<u64>, String> {
    for pair in query.split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            if k == name {
                return v
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{name} must be a number"));
            }
        }
    }
    Ok(None)
}

/// A tree-size parameter, defaulting to the latest checkpoint's size.
fn size_or_checkpoint(
    ev: &Evidence,
    query: &str,
    name: &str,
) -> Result<u64, Box<Response<Vec<u8>>>> {
    match query_u64(query, name) {
        Ok(Some(n)) => Ok(n),
        Ok(None) => ev.checkpoint_size().ok_or_else(|| {
            Box::new(error(
                404,
                "NO_CHECKPOINT",
                &format!("no checkpoint yet; pass {name}"),
            ))
        }),
        Err(m) => Err(Box::new(error(400, "BAD_QUERY", &m))),
    }
}

fn evidence_route(ev: &Evidence, path: &str, query: &str) -> Response<Vec<u8>> {
    let store = ev.ledger().store();
    if let Some(id) = path.strip_prefix("/v1/receipts/") {
        return match ev.index_of(id).map(|i| (i, store.read(i))) {
            Some((index, Ok(entry))) => {
                let mut r = text(200, "application/json", entry);
                if let Ok(v) = http::HeaderValue::from_str(&index.to_string()) {
                    r.headers_mut().insert("x-lap-log-index", v);
                }
                r
            }
            Some((_, Err(e))) => {
                tracing::error!(error = %e, "cannot read a logged receipt");
                error(500, "LOG_READ_FAILED", "the receipt log could not be read")
            }
            None => error(
                404,
                "RECEIPT_NOT_FOUND",
                "no receipt with this id in this log",
            ),
        };
    }
    if let Some(index) = path.strip_prefix("/v1/log/entries/") {
        let Ok(index) = index.parse::<u64>() else {
            return error(400, "BAD_INDEX", "the index must be a number");
        };
        return match store.read(index) {
            Ok(entry) => text(200, "application/json", entry),
            Err(lap_tlog::store::StoreError::NoSuchEntry { .. }) => {
                error(404, "ENTRY_NOT_FOUND", "no entry at this index")
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read a log entry");
                error(500, "LOG_READ_FAILED", "the receipt log could not be read")
            }
        };
    }
    match path {
        "/v1/log/checkpoint" => match ev.ledger().checkpoint() {
            Some(note) => text(200, "text/plain; charset=utf-8", note.into_bytes()),
            None => error(404, "NO_CHECKPOINT", "no checkpoint has been issued yet"),
        },
        "/v1/log/vkey" => text(
            200,
            "text/plain; charset=utf-8",
            format!("{}\n", ev.ledger().log_vkey()).into_bytes(),
        ),
        "/v1/log/proof/inclusion" => {
            let index = match query_u64(query, "index") {
                Ok(Some(i)) => i,
                Ok(None) => return error(400, "BAD_QUERY", "index is required"),
                Err(m) => return error(400, "BAD_QUERY", &m),
            };
            let size = match size_or_checkpoint(ev, query, "size") {
                Ok(n) => n,
                Err(r) => return *r,
            };
            match store.with_tree(|t| {
                Ok::<_, lap_tlog::merkle::RangeError>((
                    t.inclusion_proof(index, size)?,
                    t.root(size)?,
                    t.leaf(index),
                ))
            }) {
                Ok((proof, root, leaf)) => json(
                    200,
                    serde_json::json!({
                        "index": index,
                        "tree_size": size,
                        "root_hash": B64.encode(root),
                        "leaf_hash": leaf.map(|l| B64.encode(l)),
                        "hashes": proof.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
                    }),
                ),
                Err(e) => error(400, "BAD_RANGE", &e.to_string()),
            }
        }
        "/v1/log/proof/consistency" => {
            let old = match query_u64(query, "old") {
                Ok(Some(n)) => n,
                Ok(None) => return error(400, "BAD_QUERY", "old is required"),
                Err(m) => return error(400, "BAD_QUERY", &m),
            };
            let new = match size_or_checkpoint(ev, query, "new") {
                Ok(n) => n,
                Err(r) => return *r,
            };
            match store.with_tree(|t| {
                Ok::<_, lap_tlog::merkle::RangeError>((
                    t.consistency_proof(old, new)?,
                    t.root(old)?,
                    t.root(new)?,
                ))
            }) {
                Ok((proof, old_root, new_root)) => json(
                    200,
                    serde_json::json!({
                        "old_size": old,
                        "new_size": new,
                        "old_root": B64.encode(old_root),
                        "new_root": B64.encode(new_root),
                        "hashes": proof.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
                    }),
                ),
                Err(e) => error(400, "BAD_RANGE", &e.to_string()),
            }
        }
        _ => error(404, "ROUTE_NOT_FOUND", "no such admin route"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A stand-in for whatever holds the data port: answers every connection with `body`.
    async fn squatter(body: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn ready_only_when_the_data_port_answers_with_our_instance() {
        let ours = squatter(r#"{"status":"healthy","instance":"abc123"}"#).await;
        let other = squatter(r#"{"status":"healthy","instance":"zzz999"}"#).await;
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();

        assert!(!Readiness::new(other, "abc123").data_plane_ready().await);
        assert!(!Readiness::new(closed, "abc123").data_plane_ready().await);
        let r = Readiness::new(ours, "abc123");
        assert!(r.data_plane_ready().await);
        assert!(r.confirmed.load(Ordering::Relaxed), "success is cached");
    }

    #[test]
    fn wildcard_listen_addresses_are_probed_on_loopback() {
        let r = Readiness::new("0.0.0.0:8080".parse().unwrap(), "x");
        assert_eq!(r.probe, "127.0.0.1:8080".parse().unwrap());
        let r = Readiness::new("[::]:8080".parse().unwrap(), "x");
        assert_eq!(r.probe, "[::1]:8080".parse().unwrap());
    }
}
