//! Decide: the call's arguments, then Cedar.
//!
//! A JSON body (`application/json` or `application/*+json`) is always checked strictly —
//! duplicate keys, excessive nesting and invalid syntax are refused — whether or not a policy
//! reads the arguments: a body the tool could read differently from the policy must never
//! pass. The parsed value is only built when something reads it (receipts, or a policy on
//! `context.args`); otherwise the same checks run without building it.
//!
//! The decision itself is `lap-policy`'s (deny by default; a forbid wins; an evaluation error
//! denies). The body digest identifies the arguments in the engine's decision cache.
//!
//! How the principal authenticated reaches policy as `context.auth` ([`auth_context`]):
//! borrowed from the principal, which is built once per key, token or certificate, so it costs
//! no allocation per request; only its non-secret facts, never a key, token or hash.

use super::error::ApiError;
use crate::metrics::{Metrics, ToolMetrics};
use crate::tools::Tool;
use http::header;
use lap_auth::{Credential, Principal};
use lap_policy::{parse_json_args, validate_json_args, ArgsError, Decision, DecisionRequest};
use lap_policy::{AuthContext, PolicyEngine};
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A request body's arguments, as policy and receipts need them.
pub struct Arguments {
    /// The parsed JSON body, built only when `wanted` (see [`Arguments::read`]).
    pub value: Option<serde_json::Value>,
    /// SHA-256 of the body bytes (of nothing, when there is no body), computed when wanted.
    pub body_digest: Option<[u8; 32]>,
}

impl Arguments {
    /// Checks a JSON body strictly; parses it and digests the body only when `wanted`.
    pub fn read(req: &RequestHeader, body: Option<&[u8]>, wanted: bool) -> Result<Self, ArgsError> {
        let value = match body {
            Some(b) if is_json(req) => {
                if wanted {
                    Some(parse_json_args(b)?)
                } else {
                    validate_json_args(b)?;
                    None
                }
            }
            _ => None,
        };
        let body_digest = wanted.then(|| Sha256::digest(body.unwrap_or_default()).into());
        Ok(Self { value, body_digest })
    }

    /// The arguments policy sees: the body when it is a JSON object.
    fn for_policy(&self) -> Option<&serde_json::Value> {
        self.value.as_ref().filter(|v| v.is_object())
    }
}

/// What the policy is asked about one call.
pub struct Question<'a> {
    pub principal: &'a Principal,
    pub method: &'a str,
    pub tool: &'a Tool,
    /// The normalised path below the tool.
    pub path: &'a str,
    pub query: &'a str,
    pub body_size: u64,
    pub args: &'a Arguments,
}

/// Decides and counts the decision.
pub fn decide(
    engine: &PolicyEngine,
    q: Question<'_>,
    metrics: &Metrics,
    tool_metrics: Option<&ToolMetrics>,
) -> Arc<Decision> {
    let args = q.args.for_policy();
    // The digest keys the decision cache only when a policy reads the arguments.
    let args_digest = if engine.uses_args() && args.is_some() {
        q.args.body_digest
    } else {
        None
    };
    let decision = engine.decide(DecisionRequest {
        agent_id: q.principal.agent_id.as_str(),
        groups: &q.principal.groups,
        method: q.method,
        tool: &q.tool.name,
        path: q.path,
        query: q.query,
        body_size: q.body_size,
        args,
        args_digest,
        auth: auth_context(q.principal),
    });
    match tool_metrics {
        Some(m) if decision.outcome.is_allow() => m.policy_allowed.inc(),
        _ => metrics
            .policy_decisions
            .with_label_values(&[&q.tool.name, decision.outcome.code()])
            .inc(),
    }
    decision
}

/// What the policy is asked about one MCP request.
pub struct McpQuestion<'a> {
    pub principal: &'a Principal,
    pub server: &'a str,
    /// The JSON-RPC method (or `mcp:stream` / `mcp:end` for a legacy GET / DELETE).
    pub method: &'a str,
    pub target: lap_policy::mcp::McpTarget<'a>,
    pub generation: lap_policy::mcp::McpGeneration,
    pub protocol_version: &'a str,
    /// `params.arguments`, when a JSON object.
    pub args: Option<&'a serde_json::Value>,
    /// Their canonical digest (keys the decision cache).
    pub args_digest: Option<[u8; 32]>,
}

/// Decides an MCP request and counts the decision (label `<server>` as the tool).
pub fn decide_mcp(engine: &PolicyEngine, q: McpQuestion<'_>, metrics: &Metrics) -> Arc<Decision> {
    let decision = engine.decide_mcp(lap_policy::mcp::McpRequest {
        agent_id: q.principal.agent_id.as_str(),
        groups: &q.principal.groups,
        server: q.server,
        method: q.method,
        target: q.target,
        generation: q.generation,
        protocol_version: q.protocol_version,
        auth: auth_context(q.principal),
        args: q.args,
        args_digest: q.args_digest,
    });
    metrics
        .policy_decisions
        .with_label_values(&[q.server, decision.outcome.code()])
        .inc();
    decision
}

/// How `principal` authenticated, as policy reads it (`context.auth`): the key id, the JWT's
/// issuer, subject and scopes, or the certificate's SPIFFE ID. The key's and token's hash
/// prefixes and the certificate's digest stay out (they identify a credential, not a caller):
/// a key the key file gives no `id` has its hash prefix as id, and then no `key_id` here.
pub fn auth_context(principal: &Principal) -> AuthContext<'_> {
    match &principal.credential {
        Credential::ApiKey {
            key_id,
            key_hash_prefix,
        } => AuthContext::ApiKey {
            key_id: (key_id != key_hash_prefix).then_some(key_id.as_str()),
        },
        Credential::Jwt {
            issuer,
            subject,
            scopes,
            ..
        } => AuthContext::Jwt {
            issuer,
            subject,
            scopes,
        },
        Credential::Mtls { spiffe_id, .. } => AuthContext::Mtls {
            spiffe_id: spiffe_id.as_deref(),
        },
    }
}

/// The refusal for a decision that is not an allow (policy errors are logged, not shown).
pub fn refusal(decision: &Decision, request_id: &str, tool: &str) -> ApiError {
    if !decision.errors.is_empty() {
        tracing::warn!(
            request_id = %request_id,
            tool = %tool,
            errors = ?decision.errors,
            "policy evaluation error; denied"
        );
    }
    ApiError::policy(&decision.outcome, &decision.policy_ids)
}

/// `application/json` or `application/*+json`, parameters ignored.
fn is_json(req: &RequestHeader) -> bool {
    let Some(ct) = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(content_type: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/tools/t", None).unwrap();
        if let Some(ct) = content_type {
            r.insert_header("content-type", ct).unwrap();
        }
        r
    }

    #[test]
    fn json_media_types() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.api+json",
        ] {
            assert!(is_json(&req(Some(ct))), "{ct}");
        }
        for ct in ["text/plain", "application/jsonx", "text/json"] {
            assert!(!is_json(&req(Some(ct))), "{ct}");
        }
        assert!(!is_json(&req(None)));
    }

    #[test]
    fn json_bodies_are_checked_strictly_even_when_nothing_reads_them() {
        let json = req(Some("application/json"));
        for wanted in [false, true] {
            let e = Arguments::read(&json, Some(br#"{"a":1,"a":2}"#), wanted)
                .err()
                .unwrap();
            assert_eq!(e.code(), "JSON_DUPLICATE_KEY");
            assert!(Arguments::read(&json, Some(b"{"), wanted).is_err());
        }
        // Not declared as JSON: not parsed, whatever it holds.
        let text = req(Some("text/plain"));
        let a = Arguments::read(&text, Some(b"{"), true).unwrap();
        assert!(a.value.is_none());
        assert_eq!(a.body_digest, Some(Sha256::digest(b"{").into()));
    }

    #[test]
    fn values_and_digests_only_when_wanted() {
        let json = req(Some("application/json"));
        let a = Arguments::read(&json, Some(br#"{"amount":5}"#), false).unwrap();
        assert!(a.value.is_none() && a.body_digest.is_none());
        let a = Arguments::read(&json, Some(br#"{"amount":5}"#), true).unwrap();
        assert_eq!(a.for_policy().unwrap()["amount"], 5);
        // A JSON array is checked and recorded, but policy sees only objects.
        let a = Arguments::read(&json, Some(b"[1]"), true).unwrap();
        assert!(a.value.is_some() && a.for_policy().is_none());
        let a = Arguments::read(&json, None, true).unwrap();
        assert_eq!(a.body_digest, Some(Sha256::digest(b"").into()));
    }

    #[test]
    fn auth_context_of_each_credential_without_secrets() {
        let principal = |credential| Principal {
            agent_id: lap_auth::AgentId::parse("a").unwrap(),
            groups: Vec::new(),
            credential,
        };
        let key = principal(Credential::ApiKey {
            key_id: "k1".into(),
            key_hash_prefix: "sha256:0123456789ab".into(),
        });
        assert_eq!(
            auth_context(&key),
            AuthContext::ApiKey { key_id: Some("k1") }
        );
        // No `id` in the key file: the id is the hash prefix, which policy never sees.
        let unnamed = principal(Credential::ApiKey {
            key_id: "sha256:0123456789ab".into(),
            key_hash_prefix: "sha256:0123456789ab".into(),
        });
        assert_eq!(auth_context(&unnamed), AuthContext::ApiKey { key_id: None });
        let jwt = principal(Credential::Jwt {
            issuer: "https://idp".into(),
            subject: "svc".into(),
            kid: Some("r1".into()),
            token_hash_prefix: "sha256:0123456789ab".into(),
            scopes: vec!["a".into(), "b".into()],
        });
        let scopes = ["a".to_string(), "b".to_string()];
        assert_eq!(
            auth_context(&jwt),
            AuthContext::Jwt {
                issuer: "https://idp",
                subject: "svc",
                scopes: &scopes,
            }
        );
        let cert = |spiffe_id: Option<&str>| {
            principal(Credential::Mtls {
                spiffe_id: spiffe_id.map(str::to_string),
                cert_subject: Some("CN=w".into()),
                cert_sha256: "ab".repeat(32),
            })
        };
        let svid = cert(Some("spiffe://lap.test/w"));
        assert_eq!(
            auth_context(&svid),
            AuthContext::Mtls {
                spiffe_id: Some("spiffe://lap.test/w")
            }
        );
        assert_eq!(auth_context(&svid).trust_domain(), Some("lap.test"));
        assert_eq!(
            auth_context(&cert(None)),
            AuthContext::Mtls { spiffe_id: None }
        );
        // Nothing that identifies the credential itself reaches policy.
        for p in [&key, &unnamed, &jwt, &svid] {
            let shown = format!("{:?}", auth_context(p));
            assert!(
                !shown.contains("sha256:") && !shown.contains("abab"),
                "{shown}"
            );
        }
    }
}
