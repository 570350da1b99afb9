//! The admin plane: a separate listener (loopback by default) for operators and scrapers.
//!
//! `/healthz` says the process serves; `/readyz` says keys and policy are loaded (they always are
//! once the listener is up, since start-up fails otherwise) and reports what is in force;
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
//!
//! Without `size`/`new`, proofs are made against the latest checkpoint's tree size, so they
//! verify against a signed root.

use crate::evidence::Evidence;
use crate::metrics::Metrics;
use crate::state::LiveState;
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    pub live: Arc<LiveState>,
    pub gateway_id: String,
    pub evidence: Option<Arc<Evidence>>,
}

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

/// The tree size proofs default to: the latest checkpoint's.
fn checkpoint_size(ev: &Evidence) -> Option<u64> {
    let note = ev.ledger().checkpoint()?;
    let (text, _) = lap_tlog::note::split(&note).ok()?;
    lap_tlog::note::Checkpoint::parse(text).ok().map(|c| c.size)
}

/// A tree-size parameter, defaulting to the latest checkpoint's size.
fn size_or_checkpoint(
    ev: &Evidence,
    query: &str,
    name: &str,
) -> Result<u64, Box<Response<Vec<u8>>>> {
    match query_u64(query, name) {
        Ok(Some(n)) => Ok(n),
        Ok(None) => checkpoint_size(ev).ok_or_else(|| {
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
            Err(_) => error(404, "ENTRY_NOT_FOUND", "no entry at this index"),
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
