//! The admin plane: a separate listener (loopback by default) for operators and scrapers.
//!
//! | route | role | answer |
//! |---|---|---|
//! | `/healthz` | viewer (open with `open_probes`) | the process serves |
//! | `/readyz` | viewer (open with `open_probes`) | the data listener answers for this process ([`readiness`]), and what is in force |
//! | `/metrics` | viewer | the Prometheus exposition |
//! | `/v1/receipts/{id}` | auditor | the receipt's log entry: batched leaf or DSSE envelope (header `x-lap-log-index`) |
//! | `/v1/log/entries/{index}` | auditor | the log entry (a batched leaf or a receipt envelope) |
//! | `/v1/log/checkpoint` | auditor | the latest signed checkpoint (C2SP signed note, text) |
//! | `/v1/log/vkey` | auditor | the checkpoint verifier key (Go `note` format, text) |
//! | `/v1/log/proof/inclusion?index=I[&size=N]` | auditor | RFC 6962 audit path (JSON, base64 hashes) |
//! | `/v1/log/proof/consistency?old=M[&new=N]` | auditor | RFC 6962 consistency proof (JSON) |
//! | `/v1/audit-pack?from&to&since&until&agent&tool&since_size` | auditor | an audit pack (tar; see `auditpack`) |
//! | `POST /v1/sessions/{id}/revoke` | operator | ends a session (`docs/limits.md`) |
//! | `POST /v1/reload` | operator | re-reads API keys, policy, keyset and admin tokens now |
//! | `/v1/api-keys` | admin | the API keys in force (ids, agents, groups, expiry; never hashes) |
//!
//! Every request is authenticated first ([`auth`]: bearer tokens with roles, or explicitly
//! none on loopback). Keys and policy are always loaded by the time `/readyz` can answer
//! (start-up fails otherwise). Every refusal is `{"error":{"code","message"}}` with a stable
//! code.

pub mod auth;
mod log;
pub mod readiness;
mod record;
pub mod watch;

use crate::config::Config;
use crate::documents::{Alive, ErrorBody, Ready};
use crate::evidence::Evidence;
use crate::export::{prepare, sign_and_write, ExportError, LiveLog, PackRequest};
use crate::live::{KeysetHook, LiveState};
use crate::metrics::Metrics;
use crate::state::StateService;
use async_trait::async_trait;
use auth::{AdminAuth, AdminRefusal, Caller};
use http::Response;
use lap_auth::Role;
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
    pub auth: Arc<AdminAuth>,
    pub config: Arc<Config>,
    /// Applies a reloaded keyset (`POST /v1/reload`).
    pub on_keyset: KeysetHook,
    /// The TLS certificate, key and CA bundles (`POST /v1/reload` re-reads them too).
    pub tls: Arc<crate::tls::reload::TlsMaterial>,
}

/// An admin answer other than the one asked for: status, stable code, message.
#[derive(Debug)]
pub struct Refusal {
    status: u16,
    code: &'static str,
    message: String,
    /// 401: the `WWW-Authenticate` challenge.
    challenge: Option<&'static str>,
    /// 403 `ADMIN_ROLE_INSUFFICIENT`: the role the route needs (in the body).
    required_role: Option<Role>,
}

impl Refusal {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            challenge: None,
            required_role: None,
        }
    }

    fn not_found() -> Self {
        Self::new(404, "ROUTE_NOT_FOUND", "no such admin route")
    }

    fn response(&self) -> Response<Vec<u8>> {
        let body = match self.required_role {
            None => ErrorBody::new(self.code, &self.message, None).to_vec(),
            Some(role) => serde_json::to_vec(&serde_json::json!({"error": {
                "code": self.code, "message": self.message, "required_role": role.as_str(),
            }}))
            .unwrap_or_default(),
        };
        let mut r = text(self.status, "application/json", body);
        if let Some(challenge) = self.challenge {
            r.headers_mut().insert(
                "www-authenticate",
                http::HeaderValue::from_static(challenge),
            );
        }
        r
    }
}

impl From<AdminRefusal> for Refusal {
    fn from(e: AdminRefusal) -> Self {
        let mut r = Refusal::new(e.status(), e.code(), e.to_string());
        match e {
            AdminRefusal::Auth(lap_auth::AdminAuthError::Missing) => {
                r.challenge = Some("Bearer realm=\"lap-admin\"");
            }
            AdminRefusal::Auth(_) => {
                r.challenge = Some("Bearer realm=\"lap-admin\", error=\"invalid_token\"");
            }
            // The issuer's keys were never loaded: 503, nothing the client can fix.
            AdminRefusal::Jwt(lap_jwt::JwtError::IssuerUnavailable { .. }) => {}
            AdminRefusal::Jwt(_) => {
                r.challenge = Some("Bearer realm=\"lap-admin\", error=\"invalid_token\"");
            }
            AdminRefusal::RoleInsufficient { needed, .. }
            | AdminRefusal::RoleUnmapped { needed, .. } => r.required_role = Some(needed),
        }
        r
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
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let admitted = self
            .auth
            .admit(
                &path,
                req.headers
                    .get_all(http::header::AUTHORIZATION)
                    .iter()
                    .map(|v| v.as_bytes()),
            )
            .await;
        // A request that would change something is evidence, allowed or not.
        let action = auth::rule(&path)
            .mutating
            .then(|| record::Action::of(&req.method, &path, req.uri.query()));
        let answer = match admitted {
            Ok(caller) => match &action {
                Some(action) => self.act(session, &caller, action).await,
                None => self.route(session, &caller).await,
            },
            Err(refusal) => {
                // A mutating route's path may hold a session id (a bearer secret): its
                // template is logged instead.
                let route = action.as_ref().map_or(path.as_str(), |a| a.route);
                tracing::info!(code = refusal.code(), route, "admin request refused");
                if let (Some(action), Some(ev)) = (&action, &self.evidence) {
                    let actor = match &refusal {
                        AdminRefusal::RoleInsufficient { .. }
                        | AdminRefusal::RoleUnmapped { .. }
                            if !self.auth.identified_refusal_receipt_allowed() =>
                        {
                            tracing::warn!(code = refusal.code(), route = action.route,
                                "refused admin attempts over their receipt allowance: refused without a receipt");
                            None
                        }
                        AdminRefusal::RoleInsufficient { admin, .. } => {
                            Some(record::Actor::Admin(admin))
                        }
                        AdminRefusal::RoleUnmapped { id, credential, .. } => {
                            Some(record::Actor::Identified { id, credential })
                        }
                        AdminRefusal::Auth(_) | AdminRefusal::Jwt(_)
                            if self.auth.anonymous_receipt_allowed() =>
                        {
                            Some(record::Actor::Nobody)
                        }
                        AdminRefusal::Auth(_) | AdminRefusal::Jwt(_) => {
                            tracing::warn!(code = refusal.code(), route = action.route,
                                "anonymous admin attempts over their receipt allowance: refused without a receipt");
                            None
                        }
                    };
                    if let Some(actor) = actor {
                        // Refused either way; a failed receipt is logged by `record`.
                        let _ = record::record(ev, &self.live, action, actor, refusal.code()).await;
                    }
                }
                Err(refusal.into())
            }
        };
        answer.unwrap_or_else(|refusal| refusal.response())
    }
}

impl AdminApp {
    /// A mutating request by an admin allowed to make it: checked (method, parameters), then
    /// written to the log, then carried out. A request refused by the checks gets a deny
    /// receipt with that code; without a durable receipt nothing is done.
    async fn act(
        &self,
        session: &ServerSession,
        caller: &Caller,
        action: &record::Action,
    ) -> Answer {
        let checked = self.check_action(session);
        let Some(ev) = &self.evidence else {
            // Evidence disabled (benchmarking only): no receipts at all.
            checked?;
            return self.route(session, caller).await;
        };
        let actor = record::Actor::Caller(caller);
        match checked {
            Ok(()) => {
                record::record(ev, &self.live, action, actor, "ALLOWED").await?;
                self.route(session, caller).await
            }
            Err(refusal) => {
                // Refused either way, with its own code; a failed receipt is logged by `record`.
                let _ = record::record(ev, &self.live, action, actor, refusal.code).await;
                Err(refusal)
            }
        }
    }

    /// What a mutating request must be before it is recorded as allowed: a POST, and a well
    /// formed session id for a revocation.
    fn check_action(&self, session: &ServerSession) -> Result<(), Refusal> {
        let req = session.req_header();
        if req.method != http::Method::POST {
            return Err(Refusal::new(
                405,
                "METHOD_NOT_ALLOWED",
                "this admin route takes POST",
            ));
        }
        if let Some(id) = req
            .uri
            .path()
            .strip_prefix("/v1/sessions/")
            .and_then(|rest| rest.strip_suffix("/revoke"))
        {
            lap_state::validate_session_id(id)
                .map_err(|e| Refusal::new(400, e.code(), e.to_string()))?;
        } else if req.uri.path() != "/v1/reload" {
            return Err(Refusal::not_found());
        }
        Ok(())
    }

    async fn route(&self, session: &ServerSession, caller: &Caller) -> Answer {
        let req = session.req_header();
        if req.uri.path() == "/v1/reload" {
            if req.method != http::Method::POST {
                return Err(Refusal::new(405, "METHOD_NOT_ALLOWED", "reload with POST"));
            }
            return self.reload(caller).await;
        }
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
                "admin endpoints are GET only (but POST /v1/sessions/{id}/revoke and POST /v1/reload)",
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
            "/v1/api-keys" => Ok(self.api_keys()),
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

    /// `POST /v1/reload`: re-reads every hot-reloaded file now (API keys, policy, keyset,
    /// admin tokens, TLS certificate and key, client CA bundles). A file that fails keeps its previous version in force, as with the
    /// watcher; the answer lists each file's outcome and is 422 `RELOAD_FAILED` if any failed.
    async fn reload(&self, caller: &Caller) -> Answer {
        let (config, live, metrics, hook, auth, tls) = (
            self.config.clone(),
            self.live.clone(),
            self.metrics.clone(),
            self.on_keyset.clone(),
            self.auth.clone(),
            self.tls.clone(),
        );
        // Reading files and building a policy engine is blocking work.
        let outcomes = tokio::task::spawn_blocking(move || {
            let mut outcomes = crate::live::reload_now(&config, &live, &metrics, &hook);
            if auth.tokens_file().is_some() {
                let r = auth.reload().map(|_| ()).map_err(|e| e.to_string());
                outcomes.push(("admin_tokens", r));
            }
            outcomes.extend(tls.reload_now());
            outcomes
        })
        .await
        .map_err(|e| Refusal::new(500, "INTERNAL_ERROR", e.to_string()))?;
        let failed = outcomes.iter().any(|(_, r)| r.is_err());
        let files: Vec<_> = outcomes
            .iter()
            .map(|(file, r)| match r {
                Ok(()) => serde_json::json!({"file": file, "result": "ok"}),
                Err(e) => serde_json::json!({"file": file, "result": "error", "message": e}),
            })
            .collect();
        tracing::info!(
            admin = caller.label(),
            failed,
            "reload requested on the admin plane"
        );
        if failed {
            return Ok(json(
                422,
                &serde_json::json!({"error": {
                    "code": "RELOAD_FAILED",
                    "message": "a file failed to load; its previous version stays in force",
                    "files": files,
                }}),
            ));
        }
        Ok(json(200, &serde_json::json!({"reloaded": files})))
    }

    /// `GET /v1/api-keys`: the API keys in force, by id: agent, groups, expiry, disabled.
    /// Never a hash, not even a prefix: the listing is for managing keys, not matching them.
    fn api_keys(&self) -> Response<Vec<u8>> {
        let store = self.live.keys.load();
        let mut keys: Vec<_> = store.entries().collect();
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        let keys: Vec<_> = keys
            .into_iter()
            .map(|k| {
                serde_json::json!({
                    "id": k.key_id,
                    "agent_id": k.agent_id.as_str(),
                    "groups": k.groups,
                    "expires_at": k.expires_at.and_then(|t| t
                        .format(&time::format_description::well_known::Rfc3339).ok()),
                    "disabled": k.disabled,
                })
            })
            .collect();
        json(200, &serde_json::json!({ "keys": keys }))
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
