//! How the principal authenticated, as policy sees it: `context.auth`.
//!
//! The principal (`Agent` in its `Group`s) says *who* is calling; `context.auth` says *how* that
//! was established, so that a policy can ask for a particular kind of credential ("payments only
//! with a JWT that grants `pay`", "only workloads of this SPIFFE trust domain"):
//!
//! ```text
//! context.auth = {
//!   method: "api_key" | "jwt" | "mtls",
//!   key_id?: String,        // api_key: the key's id, when the key file gives it one
//!   issuer?: String,        // jwt: `iss`
//!   subject?: String,       // jwt: `sub`
//!   scopes?: Set<String>,   // jwt: the scopes granted (`scope` or `scp`; empty when none)
//!   spiffe_id?: String,     // mtls with a SPIFFE ID
//!   trust_domain?: String,  // mtls with a SPIFFE ID: its trust domain
//! }
//! ```
//!
//! Every attribute but `method` is optional in the schema and present exactly when the method
//! has it, so a policy must test `context.auth has scopes` before reading the scopes: an absent
//! value can never be mistaken for an empty one (strict validation refuses an unguarded read).
//!
//! Only non-secret facts are here: never a token, a key, or a key's or token's hash.
//!
//! The record is borrowed from the gateway's principal, which is built once per key and per
//! verified token, so putting it into a request allocates nothing; it is converted into Cedar
//! values only when a policy can read it (see [`crate::PolicyEngine::uses_auth`]), and is then part
//! of the decision-cache key (an owned [`AuthKey`], made on a cache miss only).

use cedar_policy::RestrictedExpression;

/// How the principal authenticated (`context.auth`), borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthContext<'a> {
    /// An API key: the id the key file gives it, if any (never the key, and never the hash
    /// prefix that stands in for a missing id).
    ApiKey { key_id: Option<&'a str> },
    /// A verified bearer JWT: `iss`, `sub` and the scopes it grants. The gateway passes the
    /// scopes sorted and without duplicates (any order is correct; sorted ones share cache
    /// entries).
    Jwt {
        issuer: &'a str,
        subject: &'a str,
        scopes: &'a [String],
    },
    /// A verified client certificate: its SPIFFE ID (`spiffe://<trust domain>/<path>`), when it
    /// has one.
    Mtls { spiffe_id: Option<&'a str> },
}

impl<'a> AuthContext<'a> {
    /// `context.auth.method`: `api_key`, `jwt` or `mtls`.
    pub fn method(&self) -> &'static str {
        match self {
            AuthContext::ApiKey { .. } => "api_key",
            AuthContext::Jwt { .. } => "jwt",
            AuthContext::Mtls { .. } => "mtls",
        }
    }

    /// The trust domain of the SPIFFE ID (`spiffe://<trust domain>/…`), when there is one and it
    /// is well formed.
    pub fn trust_domain(&self) -> Option<&'a str> {
        let AuthContext::Mtls {
            spiffe_id: Some(id),
        } = *self
        else {
            return None;
        };
        let rest = id.strip_prefix("spiffe://")?;
        let domain = rest.split('/').next()?;
        (!domain.is_empty()).then_some(domain)
    }

    /// The Cedar record of `context.auth`.
    pub(crate) fn to_cedar(self) -> Result<RestrictedExpression, AuthRecordError> {
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        let mut pairs = vec![("method".to_string(), s(self.method()))];
        match self {
            AuthContext::ApiKey { key_id } => {
                if let Some(id) = key_id {
                    pairs.push(("key_id".to_string(), s(id)));
                }
            }
            AuthContext::Jwt {
                issuer,
                subject,
                scopes,
            } => {
                pairs.push(("issuer".to_string(), s(issuer)));
                pairs.push(("subject".to_string(), s(subject)));
                pairs.push((
                    "scopes".to_string(),
                    RestrictedExpression::new_set(scopes.iter().map(|v| s(v))),
                ));
            }
            AuthContext::Mtls { spiffe_id } => {
                if let Some(id) = spiffe_id {
                    pairs.push(("spiffe_id".to_string(), s(id)));
                }
                if let Some(domain) = self.trust_domain() {
                    pairs.push(("trust_domain".to_string(), s(domain)));
                }
            }
        }
        RestrictedExpression::new_record(pairs)
            .map_err(|e| AuthRecordError::Construction(Box::new(e)))
    }
}

/// Why the `context.auth` record could not be built. It cannot happen with the fixed attribute
/// names above; it is an error rather than a panic so that the decision fails closed (an
/// evaluation error for REST, `MCP_REQUEST_INVALID` for MCP).
#[derive(Debug, thiserror::Error)]
pub enum AuthRecordError {
    #[error("context.auth: {0}")]
    Construction(#[source] Box<cedar_policy::ExpressionConstructionError>),
}

impl AuthRecordError {
    /// Stable code for logs.
    pub fn code(&self) -> &'static str {
        match self {
            AuthRecordError::Construction(_) => "POLICY_AUTH_RECORD_INVALID",
        }
    }
}

/// [`AuthContext`], owned: the stored half of a decision-cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum AuthKey {
    ApiKey(Option<String>),
    Jwt {
        issuer: String,
        subject: String,
        scopes: Vec<String>,
    },
    Mtls(Option<String>),
}

impl AuthKey {
    pub(crate) fn new(a: &AuthContext<'_>) -> Self {
        match *a {
            AuthContext::ApiKey { key_id } => AuthKey::ApiKey(key_id.map(str::to_string)),
            AuthContext::Jwt {
                issuer,
                subject,
                scopes,
            } => AuthKey::Jwt {
                issuer: issuer.to_string(),
                subject: subject.to_string(),
                scopes: scopes.to_vec(),
            },
            AuthContext::Mtls { spiffe_id } => AuthKey::Mtls(spiffe_id.map(str::to_string)),
        }
    }

    /// Every attribute compared (the trust domain is a function of the SPIFFE ID).
    pub(crate) fn is(&self, a: &AuthContext<'_>) -> bool {
        match (self, *a) {
            (AuthKey::ApiKey(k), AuthContext::ApiKey { key_id }) => k.as_deref() == key_id,
            (
                AuthKey::Jwt {
                    issuer: i,
                    subject: s,
                    scopes: sc,
                },
                AuthContext::Jwt {
                    issuer,
                    subject,
                    scopes,
                },
            ) => i == issuer && s == subject && sc.as_slice() == scopes,
            (AuthKey::Mtls(id), AuthContext::Mtls { spiffe_id }) => id.as_deref() == spiffe_id,
            _ => false,
        }
    }
}

/// Both optional forms agree: absent on both sides (no policy reads `context.auth`), or equal.
pub(crate) fn same(stored: &Option<AuthKey>, asked: &Option<AuthContext<'_>>) -> bool {
    match (stored, asked) {
        (None, None) => true,
        (Some(k), Some(a)) => k.is(a),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
