//! Identity: who is calling, from a verified credential and nothing else.
//!
//! Today the credential is an API key, presented as `X-Api-Key: <key>` or
//! `Authorization: Bearer <key>` (the seed gateway's two forms). The rules, each a refusal
//! with a stable code:
//!
//! * a credential header sent twice is `AUTH_INVALID` — two values could be read differently
//!   by us and by whatever sits behind us;
//! * both headers may be sent only with the same key;
//! * `Authorization` with a scheme other than `Bearer` is `AUTH_INVALID`;
//! * an `X-Agent-Id` the agent sends must name the key's own agent (`AGENT_ID_MISMATCH`): the
//!   principal comes from the key, and a claim that disagrees is a confused or hostile agent.
//!
//! The other credentials, each in its own module, come first (`Gateway::identify`): a
//! verified client certificate when `[mtls] identity` is on (`mtls`), then a bearer value
//! shaped like a JWT when JWT issuers are configured (`jwt`); a request carries exactly one
//! credential (`AUTH_AMBIGUOUS` otherwise).
//!
//! Key look-up (hashed storage, constant-time comparison, expiry, disabled keys) is
//! `lap-auth`'s. Identity headers are stripped before forwarding (see `forward`), so a tool
//! learns the agent only from the gateway's own header.

pub mod jwt;
pub mod mtls;

use http::header::{self, HeaderName};
use lap_auth::{ApiKeyStore, AuthError, Principal};
use pingora::http::RequestHeader;
use std::sync::Arc;

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const X_AGENT_ID: HeaderName = HeaderName::from_static("x-agent-id");

/// Verifies the request's API key against `keys` at time `now`.
pub fn authenticate(
    req: &RequestHeader,
    keys: &ApiKeyStore,
    now: time::OffsetDateTime,
) -> Result<Arc<Principal>, AuthError> {
    let key = presented_key(req)?;
    let principal = keys.authenticate(key, now)?;
    if let Some(claimed) = single_header(req, &X_AGENT_ID)? {
        if claimed != principal.agent_id.as_str() {
            return Err(AuthError::AgentIdMismatch);
        }
    }
    Ok(principal)
}

/// The one API key the request presents.
fn presented_key(req: &RequestHeader) -> Result<&str, AuthError> {
    let x_api_key = single_header(req, &X_API_KEY)?;
    let bearer = match single_header(req, &header::AUTHORIZATION)? {
        None => None,
        Some(v) => {
            let (scheme, token) = v.split_once(' ').ok_or(AuthError::Invalid)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(AuthError::Invalid);
            }
            Some(token.trim())
        }
    };
    match (x_api_key, bearer) {
        (Some(a), Some(b)) if a != b => Err(AuthError::Invalid),
        (Some(k), _) | (None, Some(k)) => Ok(k),
        (None, None) => Err(AuthError::Missing),
    }
}

/// The only value of a header that must not repeat; repeated or not text → invalid.
fn single_header<'a>(
    req: &'a RequestHeader,
    name: &HeaderName,
) -> Result<Option<&'a str>, AuthError> {
    let mut values = req.headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::Invalid);
    }
    let s = first.to_str().map_err(|_| AuthError::Invalid)?;
    Ok(Some(s.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (ApiKeyStore, String) {
        let (key, hash) = lap_auth::generate_api_key().unwrap();
        let file = serde_json::json!({
            "version": 1,
            "keys": [{"id": "k1", "hash": hash.to_string(), "agent_id": "bot", "groups": ["g"]}]
        });
        let keys = lap_auth::parse_key_file(&file.to_string()).unwrap();
        (ApiKeyStore::new(keys).unwrap(), key)
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/tools/t", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn auth(headers: &[(&str, &str)], keys: &ApiKeyStore) -> Result<String, AuthError> {
        authenticate(&req(headers), keys, time::OffsetDateTime::now_utc())
            .map(|p| p.agent_id.to_string())
    }

    #[test]
    fn both_credential_forms_identify_the_agent() {
        let (keys, key) = store();
        assert_eq!(auth(&[("x-api-key", &key)], &keys).unwrap(), "bot");
        let bearer = format!("Bearer {key}");
        assert_eq!(auth(&[("authorization", &bearer)], &keys).unwrap(), "bot");
        let lower = format!("bearer  {key}");
        assert_eq!(auth(&[("authorization", &lower)], &keys).unwrap(), "bot");
        assert_eq!(
            auth(&[("x-api-key", &key), ("authorization", &bearer)], &keys).unwrap(),
            "bot"
        );
        assert_eq!(
            auth(&[("x-api-key", &key), ("x-agent-id", "bot")], &keys).unwrap(),
            "bot"
        );
    }

    #[test]
    fn ambiguous_or_wrong_credentials_are_refused() {
        let (keys, key) = store();
        let bearer = format!("Bearer {key}");
        let basic = format!("Basic {key}");
        let cases: [(&[(&str, &str)], AuthError); 7] = [
            (&[], AuthError::Missing),
            (
                &[("x-api-key", &key), ("x-api-key", &key)],
                AuthError::Invalid,
            ),
            (&[("authorization", &basic)], AuthError::Invalid),
            (&[("authorization", "Bearer")], AuthError::Invalid),
            (
                &[("x-api-key", "lap_other"), ("authorization", &bearer)],
                AuthError::Invalid,
            ),
            (
                &[("x-api-key", &key), ("x-agent-id", "someone-else")],
                AuthError::AgentIdMismatch,
            ),
            (
                &[
                    ("x-api-key", &key),
                    ("x-agent-id", "bot"),
                    ("x-agent-id", "bot"),
                ],
                AuthError::Invalid,
            ),
        ];
        for (headers, expected) in cases {
            assert_eq!(auth(headers, &keys), Err(expected), "{headers:?}");
        }
        assert!(auth(&[("x-api-key", "lap_not_a_key")], &keys).is_err());
    }
}
