//! The admin plane: a separate listener (loopback by default) for operators and scrapers.
//!
//! | route | answer |
//! |---|---|
//! | `/healthz` | the process serves |
//! | `/readyz` | the data listener answers for this process ([`readiness`]), and what is in force |
//! | `/metrics` | the Prometheus exposition |
//! | `/v1/receipts/{id}` | the receipt's log entry: batched leaf or DSSE envelope (header `x-lap-log-index`) |
//! | `/v1/log/entries/{index}` | the log entry (a batched leaf or a receipt envelope) |
//! | `/v1/log/checkpoint` | the latest signed checkpoint (C2SP signed note, text) |
//! | `/v1/log/vkey` | the checkpoint verifier key (Go `note` format, text) |
//! | `/v1/log/proof/inclusion?index=I[&size=N]` | RFC 6962 audit path (JSON, base64 hashes) |
//! | `/v1/log/proof/consistency?old=M[&new=N]` | RFC 6962 consistency proof (JSON) |
//! | `/v1/audit-pack?from&to&since&until&agent&tool&since_size` | an audit pack (tar; see `auditpack`) |
//! | `POST /v1/sessions/{id}/revoke` | ends a session (`docs/limits.md`); the only POST |
//!
//! Keys and policy are always loaded by the time `/readyz` can answer (start-up fails
//! otherwise). Every refusal is `{"error":{"code","message"}}` with a stable code.

mod log;
pub mod readiness;

use crate::documents::{Alive, ErrorBody, Ready};
use crate::evidence::Evidence;
use crate::export::{prepare, sign_and_write, ExportError, LiveLog, PackRequest};
use crate::live::LiveState;
use crate::metrics::Metrics;
use crate::state::StateService;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
pub use readiness::Readiness;
use std::sync::Arc;

/// Most entries one admin request may export (the CLI has no limit): a pack is built in
/// memory before it is sent (~1.3 KB per receipt, so ~130 MB at most) in a process that is
/// also serving agents.
pub const MAX_PACK_ENTRIES: u64 = 100_000;

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    pub live: Arc<LiveState>,
    pub gateway_id: String,
    pub evidence: Option<Arc<Evidence>>,
    pub readiness: Readiness,
    pub state: Arc<StateService>,
}

/// An admin answer other than the one asked for: status, stable code, message.
#[derive(Debug)]
pub struct Refusal {
    status: u16,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn not_found() -> Self {
        Self::new(404, "ROUTE_NOT_FOUND", "no such admin route")
    }

    fn response(&self) -> Response<Vec<u8>> {
        let body = ErrorBody::new(self.code, &self.message, None).to_vec();
        text(self.status, "application/json", body)
    }
}

impl From<ExportError> for Refusal {
    fn from(e: ExportError) -> Self {
        if e.status() >= 500 {
            tracing::error!(code = e.code(), error = %e, "audit-pack export failed");
        }
        Refusal::new(e.status(), e.code(), e.to_string())
    }
}

type Answer = Result<Response<Vec<u8>>, Refusal>;

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        self.route(session)
            .await
            .unwrap_or_else(|refusal| refusal.response())
    }
}

impl AdminApp {
    async fn route(&self, session: &ServerSession) -> Answer {
        let req = session.req_header();
        if let Some(id) = req
            .uri
            .path()
            .strip_prefix("/v1/sessions/")
            .and_then(|rest| rest.strip_suffix("/revoke"))
        {
            if req.method != http::Method::POST {
                return Err(Refusal::new(
                    405,
                    "METHOD_NOT_ALLOWED",
                    "revoke a session with POST",
                ));
            }
            return self.revoke_session(id).await;
        }
        if req.method != http::Method::GET {
            return Err(Refusal::new(
                405,
                "METHOD_NOT_ALLOWED",
                "admin endpoints are GET only (but POST /v1/sessions/{id}/revoke)",
            ));
        }
        let query = req.uri.query().unwrap_or("");
        match req.uri.path() {
            "/healthz" => Ok(json(200, &Alive { status: "ok" })),
            "/readyz" => self.ready().await,
            "/metrics" => Ok(text(
                200,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            )),
            "/v1/audit-pack" => self.audit_pack(self.evidence()?, query).await,
            path if path.starts_with("/v1/") => log::route(self.evidence()?, path, query),
            _ => Err(Refusal::not_found()),
        }
    }

    fn evidence(&self) -> Result<&Arc<Evidence>, Refusal> {
        self.evidence.as_ref().ok_or_else(|| {
            Refusal::new(
                404,
                "EVIDENCE_DISABLED",
                "evidence is disabled on this gateway",
            )
        })
    }

    /// `POST /v1/sessions/{id}/revoke`: ends a session now, on every replica sharing the
    /// store; its nonces and counter go with it. The answer names the session by digest.
    async fn revoke_session(&self, id: &str) -> Answer {
        lap_state::validate_session_id(id)
            .map_err(|e| Refusal::new(400, e.code(), e.to_string()))?;
        let owned = id.to_string();
        let revoked = self
            .state
            .run(
                move |s| async move { s.revoke_session(&owned, lap_state::Timestamp::now()).await },
            )
            .await
            .map_err(|e| {
                let status = if e.is_store_failure() { 503 } else { 400 };
                Refusal::new(status, e.code(), "the session could not be revoked")
            })?;
        if !revoked {
            return Err(Refusal::new(
                404,
                "SESSION_NOT_FOUND",
                "no live session has this id (expired, revoked or never issued)",
            ));
        }
        tracing::info!(session = %crate::pipeline::limits::session_digest(id), "session revoked");
        Ok(json(
            200,
            &serde_json::json!({
                "revoked": true,
                "session": crate::pipeline::limits::session_digest(id),
            }),
        ))
    }

    /// `GET /readyz`.
    async fn ready(&self) -> Answer {
        if !self.readiness.data_plane_ready().await {
            return Err(Refusal::new(
                503,
                "DATA_PLANE_NOT_READY",
                "the data listener does not answer for this process yet",
            ));
        }
        let keys = self.live.keys.load();
        let policy = self.live.policy.load();
        Ok(json(
            200,
            &Ready {
                status: "ready",
                gateway_id: &self.gateway_id,
                api_keys: keys.len(),
                policies: policy.policy_count(),
                policy_digest: policy.digest_hex(),
                log_size: self.evidence.as_ref().map(|e| e.ledger().served_size()),
            },
        ))
    }

    /// `GET /v1/audit-pack?…`: an audit pack (tar) of the selected entries.
    async fn audit_pack(&self, ev: &Arc<Evidence>, query: &str) -> Answer {
        let req = PackRequest::from_query(query)?;
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
                    Some(MAX_PACK_ENTRIES),
                )
            })
        };
        let prepared = job
            .await
            .map_err(|e| ExportError::Internal(e.to_string()))??;
        let mut body = Vec::new();
        sign_and_write(
            prepared,
            ev.log_signer().as_ref(),
            &ev.ledger().log_vkey(),
            &mut body,
        )
        .await?;
        let mut r = text(200, "application/x-tar", body);
        r.headers_mut().insert(
            "content-disposition",
            http::HeaderValue::from_static("attachment; filename=\"lap-audit-pack.tar\""),
        );
        Ok(r)
    }
}

/// A JSON answer.
fn json(status: u16, doc: &impl serde::Serialize) -> Response<Vec<u8>> {
    // Serialising the gateway's own document types into a Vec cannot fail.
    let body = serde_json::to_vec(doc).unwrap_or_default();
    text(status, "application/json", body)
}

/// An answer with the given content type, never cached.
fn text(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}
