//! `POST /v1/session/new`: a session for the authenticated agent, in the state store.
//!
//! A session is what nonces and counters are kept in, and what a `session` budget window
//! counts over. Its id is unguessable (192 random bits) and bound to the agent that asked for
//! it: presented by another agent it is refused like an unknown one. Sessions live in the
//! shared store, so a session made on one replica is good on all of them; they end at their
//! expiry or when an operator revokes them (admin plane, `POST /v1/sessions/{id}/revoke`).
//!
//! The body is `{"ttl_seconds": N}` (optional; empty body or `{}` gives the default), checked
//! strictly: any other member, or a value out of `[sessions]` bounds, is refused with nothing
//! created.

use super::bounds;
use super::error::ApiError;
use super::identity::jwt::Target;
use super::request::Reached;
use super::Gateway;
use bytes::Bytes;
use lap_auth::Principal;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::Duration;

pub const SESSION_NEW_PATH: &str = "/v1/session/new";

/// The largest request body of `POST /v1/session/new`.
const MAX_BODY: u64 = 1024;

/// The answer to `POST /v1/session/new`.
#[derive(serde::Serialize)]
struct NewSession<'a> {
    session_id: &'a str,
    expires_at_utc: String,
}

impl Gateway {
    /// Creates a session for the caller: the JSON answer (201), or a refusal and how far the
    /// request got.
    pub(super) async fn session_new(
        &self,
        session: &mut Session,
    ) -> Result<Bytes, (ApiError, Reached)> {
        let req = session.req_header();
        if req.method != http::Method::POST {
            let mut e = ApiError::new(
                405,
                "METHOD_NOT_ALLOWED",
                "sessions are created with POST /v1/session/new",
            );
            e.allow = Some("POST");
            return Err((e, Reached::Arrival));
        }
        let principal = self
            .identify(session, Target::Gateway)
            .await
            .map_err(|r| (r.error.clone(), r.reached()))?;
        let identified = |e| {
            (
                e,
                Reached::Identified {
                    principal: principal.clone(),
                },
            )
        };
        let body = bounds::read_body(session, MAX_BODY, self.config.limits.body_read_timeout)
            .await
            .map_err(identified)?;
        let ttl = self.requested_ttl(body.as_deref()).map_err(identified)?;
        let created = self
            .create(&principal, ttl)
            .await
            .map_err(|e| identified(ApiError::state(&e)))?;
        let expires = time::OffsetDateTime::from_unix_timestamp(
            i64::try_from(created.expires_at.as_unix_micros() / 1_000_000).unwrap_or(i64::MAX),
        )
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
        let doc = NewSession {
            session_id: &created.id,
            expires_at_utc: expires,
        };
        Ok(Bytes::from(serde_json::to_vec(&doc).unwrap_or_default()))
    }

    async fn create(
        &self,
        principal: &Arc<Principal>,
        ttl: Duration,
    ) -> Result<lap_state::Session, lap_state::StateError> {
        let agent = principal.agent_id.as_str().to_string();
        let caps = self.limiter.sessions;
        self.limiter
            .state
            .run(move |s| async move {
                s.create_session(
                    &agent,
                    ttl,
                    caps.max_per_agent,
                    caps.max_total,
                    lap_state::Timestamp::now(),
                )
                .await
            })
            .await
    }

    /// The TTL asked for, within `[sessions]` bounds.
    fn requested_ttl(&self, body: Option<&[u8]>) -> Result<Duration, ApiError> {
        let cfg = self.limiter.sessions;
        let Some(body) = body.filter(|b| !b.is_empty()) else {
            return Ok(cfg.default_ttl);
        };
        let value = lap_policy::parse_json_args(body).map_err(ApiError::from)?;
        let obj = value.as_object().ok_or(ApiError::session_request_invalid(
            "the body must be a JSON object: {\"ttl_seconds\": N}",
        ))?;
        if obj.keys().any(|k| k != "ttl_seconds") {
            return Err(ApiError::session_request_invalid(
                "the only member of the body is ttl_seconds",
            ));
        }
        let (min, max) = (cfg.min_ttl.as_secs(), cfg.max_ttl.as_secs());
        match obj.get("ttl_seconds") {
            None => Ok(cfg.default_ttl),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Duration::from_secs(n)),
                _ => Err(ApiError::session_ttl_invalid(min, max)),
            },
        }
    }
}
