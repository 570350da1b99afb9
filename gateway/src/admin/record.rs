//! Admin actions are evidence: an admin request that changes something is written to the
//! receipt log (kind `admin`) before it acts, and so is every refused attempt at one.
//!
//! The same rule as for agent calls — no evidence, no action: when the receipt cannot be made
//! durable the action is refused (503 with the evidence error's code) and nothing changes. A
//! refused attempt whose receipt cannot be written is still refused (with its own code) and
//! logged.
//!
//! The receipt names the admin (`auth: "admin_token"`, the token's id and hash prefix; or
//! `auth: "jwt"`, the OIDC token's issuer, subject, kid and hash prefix) or no one (`null`: no verified token, or an admin plane explicitly without authentication), the
//! method and the route as a template (`/v1/sessions/{id}/revoke`), and the parameters only as
//! digests: a session is named by its `sha256:` prefix digest, as in call receipts, never by
//! its id (a bearer secret).

use super::auth::Caller;
use super::Refusal;
use crate::evidence::Evidence;
use crate::live::LiveState;
use lap_auth::{AdminCredential, AdminPrincipal};
use lap_receipt::{sha256_hex, Call, Credential, Decision, Kind, Outcome, Principal};

/// A mutating admin request, as its receipt describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub method: String,
    /// The route template: no parameter values.
    pub route: &'static str,
    /// The session a revocation names, as its digest.
    pub session: Option<String>,
    /// SHA-256 of the raw query string, when there is one.
    pub query_sha256: Option<String>,
}

impl Action {
    /// The action a mutating request asks for (its parameters reduced to digests).
    pub fn of(method: &http::Method, path: &str, query: Option<&str>) -> Self {
        let (route, session) = match path
            .strip_prefix("/v1/sessions/")
            .and_then(|rest| rest.strip_suffix("/revoke"))
        {
            Some(id) => (
                "/v1/sessions/{id}/revoke",
                Some(crate::pipeline::limits::session_digest(id)),
            ),
            None if path == "/v1/reload" => ("/v1/reload", None),
            None => ("/v1/…", None),
        };
        Action {
            method: method.as_str().to_string(),
            route,
            session,
            query_sha256: query.map(|q| sha256_hex(q.as_bytes())),
        }
    }

    /// The digest of the parameters: compact JSON of the named session (the only parameter
    /// an admin action has today), `null` without one.
    fn args_sha256(&self) -> Option<String> {
        self.session.as_ref().map(|s| {
            let doc = serde_json::json!({ "session": s });
            sha256_hex(doc.to_string().as_bytes())
        })
    }
}

/// Who the receipt names.
pub enum Actor<'a> {
    Caller(&'a Caller),
    /// Refused for its role: the admin was verified.
    Admin(&'a AdminPrincipal),
    /// Refused for its role: an admin verified by an OIDC token that maps to no role.
    Identified {
        id: &'a str,
        credential: &'a AdminCredential,
    },
    /// Refused before any admin was verified.
    Nobody,
}

fn principal(admin: &AdminPrincipal) -> Principal {
    principal_of(&admin.id, &admin.credential)
}

fn principal_of(id: &str, credential: &AdminCredential) -> Principal {
    let credential = match credential {
        AdminCredential::Token {
            key_id,
            key_hash_prefix,
        } => Credential::AdminToken {
            key_id: key_id.clone(),
            key_hash_prefix: key_hash_prefix.clone(),
        },
        AdminCredential::Jwt {
            issuer,
            subject,
            kid,
            token_hash_prefix,
        } => Credential::Jwt {
            issuer: issuer.clone(),
            subject: subject.clone(),
            kid: kid.clone(),
            token_hash_prefix: token_hash_prefix.clone(),
        },
    };
    Principal {
        agent_id: id.to_string(),
        credential,
    }
}

/// A fresh id for an admin request: `adm_` and 16 random hex digits.
fn request_id() -> String {
    let mut raw = [0u8; 8];
    match getrandom::getrandom(&mut raw) {
        Ok(()) => format!("adm_{}", hex::encode(raw)),
        // The receipt's own id (from its log position) still names it uniquely.
        Err(_) => "adm_unknown".to_string(),
    }
}

/// Writes the admin receipt for `action` by `actor` with outcome `code` (`ALLOWED` or the
/// refusal's code) and waits until it is durable. `Err` is the 503 to answer instead of
/// acting.
pub async fn record(
    ev: &Evidence,
    live: &LiveState,
    action: &Action,
    actor: Actor<'_>,
    code: &str,
) -> Result<(), Refusal> {
    let principal = match actor {
        Actor::Caller(Caller::Admin(p)) => Some(principal(p)),
        Actor::Admin(p) => Some(principal(p)),
        Actor::Identified { id, credential } => Some(principal_of(id, credential)),
        Actor::Caller(Caller::Unauthenticated) | Actor::Nobody => None,
    };
    let call = Call {
        tool: None,
        method: action.method.clone(),
        path: action.route.to_string(),
        query_sha256: action.query_sha256.clone(),
        body_sha256: None,
        body_bytes: 0,
        args_sha256: action.args_sha256(),
        session: action.session.clone(),
    };
    let decision = Decision {
        outcome: if code == "ALLOWED" {
            Outcome::Allow
        } else {
            Outcome::Deny
        },
        code: code.to_string(),
        policy_ids: Vec::new(),
        policy_digest: live.policy.load().digest_hex().to_string(),
    };
    let request_id = request_id();
    let mut draft = ev.draft(Kind::Admin, &request_id, None, call, decision);
    draft.principal = principal;
    ev.issue(draft).await.map(|_| ()).map_err(|e| {
        tracing::error!(code = e.code(), error = %e, request_id = %request_id,
            route = action.route, "no admin receipt: the admin action is refused");
        Refusal::new(
            503,
            e.code(),
            "the admin receipt could not be written; nothing was changed",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_name_routes_and_digests_never_session_ids() {
        let a = Action::of(
            &http::Method::POST,
            "/v1/sessions/sess-secret-1/revoke",
            None,
        );
        assert_eq!(a.route, "/v1/sessions/{id}/revoke");
        let digest = a.session.clone().unwrap();
        assert!(
            digest.starts_with("sha256:") && digest.len() == 23,
            "{digest}"
        );
        assert!(!format!("{a:?}").contains("sess-secret-1"));
        assert_eq!(
            a.args_sha256().unwrap(),
            sha256_hex(format!("{{\"session\":\"{digest}\"}}").as_bytes())
        );
        let r = Action::of(&http::Method::POST, "/v1/reload", Some("x=1"));
        assert_eq!((r.route, r.session.as_deref()), ("/v1/reload", None));
        assert_eq!(r.query_sha256, Some(sha256_hex(b"x=1")));
        assert_eq!(r.args_sha256(), None);
    }
}
