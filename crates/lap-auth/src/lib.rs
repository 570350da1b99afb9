//! Agent API keys for the LAP gateway.
//!
//! An agent proves who it is with an API key. The gateway never keeps the key itself: every key
//! is reduced to its SHA-256 digest when the key file is loaded, and a presented key is hashed
//! and looked up by digest. The digest of a high-entropy random key reveals nothing usable, so
//! the lookup may be a hash map; the final comparison is still done in constant time.
//!
//! Two key-file formats are accepted (see `docs/configuration.md`):
//!
//! * the LAP seed's legacy map `{"<plaintext key>": "<agent id>"}`, kept for compatibility
//!   (the plaintext is hashed at load time and dropped);
//! * the richer format with hashed keys, groups, expiry and a `disabled` flag:
//!
//! ```json
//! {"keys": [{"id": "ci-bot-1", "hash": "sha256:…", "agent_id": "ci-bot",
//!            "groups": ["readers"], "expires_at": "2027-01-01T00:00:00Z", "disabled": false}]}
//! ```
//!
//! Admin-plane tokens with roles are in [`admin`]: the same hashing and constant-time
//! comparison, a file and a store of their own.

pub mod admin;
mod file;
mod key;
mod lookup;

pub use admin::{
    generate_admin_token, parse_admin_token_file, AdminAuthError, AdminCredential, AdminPrincipal,
    AdminTokenEntry, AdminTokenStore, Role,
};
pub use file::{parse_key_file, KeyFileError};
pub use key::{generate_api_key, ApiKeyHash, KEY_PREFIX};

use std::collections::HashMap;
use std::sync::Arc;
use time::OffsetDateTime;

/// Longest key accepted from a request; anything longer is rejected before hashing.
pub const MAX_PRESENTED_KEY_LEN: usize = 512;

/// One configured key: who it belongs to and whether it may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// Non-secret label of the key, safe for logs and receipts.
    pub key_id: String,
    pub hash: ApiKeyHash,
    pub agent_id: AgentId,
    pub groups: Vec<String>,
    pub expires_at: Option<OffsetDateTime>,
    pub disabled: bool,
}

/// An agent identifier: 1–128 characters from `[A-Za-z0-9._:@/-]`.
///
/// The restricted alphabet keeps ids safe to put in headers, log lines and Cedar entity ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(String);

impl AgentId {
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:@/-".contains(&b));
        ok.then(|| Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AgentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A verified identity: who the caller is, the groups it is in, and how it proved it.
///
/// Built only from a verified credential (an API key here; a JWT or a client certificate in
/// the gateway's identity stage), never from anything the caller merely claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub agent_id: AgentId,
    pub groups: Vec<String>,
    pub credential: Credential,
}

/// How a principal authenticated, with the non-secret facts evidence records about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An agent API key: the key file's `id` and `sha256:` + 12 hex digits of its digest.
    ApiKey {
        key_id: String,
        key_hash_prefix: String,
    },
    /// A bearer JWT: issuer, subject, the verifying key's `kid` when the token named one,
    /// `sha256:` + 12 hex digits of the token's SHA-256 (never the token), and the scopes the
    /// token grants, sorted and without duplicates (for policy: `context.auth.scopes`).
    Jwt {
        issuer: String,
        subject: String,
        kid: Option<String>,
        token_hash_prefix: String,
        scopes: Vec<String>,
    },
    /// A verified client certificate: its SPIFFE ID (or, without one, its subject) and the
    /// hex SHA-256 of the leaf's DER.
    Mtls {
        spiffe_id: Option<String>,
        cert_subject: Option<String>,
        cert_sha256: String,
    },
}

impl Credential {
    /// `api_key`, `jwt` or `mtls`: the receipt's `auth` member and a metrics label.
    pub fn method(&self) -> &'static str {
        match self {
            Credential::ApiKey { .. } => "api_key",
            Credential::Jwt { .. } => "jwt",
            Credential::Mtls { .. } => "mtls",
        }
    }

    /// A non-secret label of the credential for log lines: the key id, the JWT's `iss`/`sub`,
    /// the SPIFFE ID or the certificate subject.
    pub fn label(&self) -> String {
        match self {
            Credential::ApiKey { key_id, .. } => key_id.clone(),
            Credential::Jwt {
                issuer, subject, ..
            } => format!("{issuer}#{subject}"),
            Credential::Mtls {
                spiffe_id,
                cert_subject,
                cert_sha256,
            } => spiffe_id
                .clone()
                .or_else(|| cert_subject.clone())
                .unwrap_or_else(|| cert_sha256.clone()),
        }
    }
}

/// Why a presented key was refused. Each variant has a stable code for error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an API key is required (X-Api-Key or Authorization: Bearer)")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
    #[error("the API key has expired")]
    Expired,
    #[error("the API key is disabled")]
    Disabled,
    #[error("X-Agent-Id does not match the agent of the API key")]
    AgentIdMismatch,
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "API_KEY_REQUIRED",
            AuthError::Invalid => "API_KEY_INVALID",
            AuthError::Expired => "API_KEY_EXPIRED",
            AuthError::Disabled => "API_KEY_DISABLED",
            AuthError::AgentIdMismatch => "AGENT_ID_MISMATCH",
        }
    }
}

/// The set of keys in force. Immutable; a reload builds a new store and swaps it in.
#[derive(Debug, Default)]
pub struct ApiKeyStore {
    /// Each entry with the principal it authenticates, built once at load time so a request
    /// only clones an `Arc`.
    by_hash: HashMap<[u8; 32], (KeyEntry, Arc<Principal>)>,
}

impl ApiKeyStore {
    /// Builds a store; duplicate digests or key ids are an error.
    pub fn new(entries: Vec<KeyEntry>) -> Result<Self, KeyFileError> {
        let mut by_hash = HashMap::with_capacity(entries.len());
        let mut ids = std::collections::HashSet::new();
        for entry in entries {
            if !ids.insert(entry.key_id.clone()) {
                return Err(KeyFileError::Invalid(format!(
                    "duplicate key id {:?}",
                    entry.key_id
                )));
            }
            let digest = *entry.hash.as_bytes();
            let principal = Arc::new(Principal {
                agent_id: entry.agent_id.clone(),
                groups: entry.groups.clone(),
                credential: Credential::ApiKey {
                    key_id: entry.key_id.clone(),
                    key_hash_prefix: entry.hash.short(),
                },
            });
            if by_hash.insert(digest, (entry, principal)).is_some() {
                return Err(KeyFileError::Invalid(
                    "the same key appears twice".to_string(),
                ));
            }
        }
        Ok(Self { by_hash })
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// All entries, for operator listings (no secrets are held).
    pub fn entries(&self) -> impl Iterator<Item = &KeyEntry> {
        self.by_hash.values().map(|(e, _)| e)
    }

    /// Verifies a presented key at time `now`.
    pub fn authenticate(
        &self,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Arc<Principal>, AuthError> {
        lookup::lookup(&self.by_hash, presented, MAX_PRESENTED_KEY_LEN, now).map_err(|r| match r {
            lookup::Refused::Missing => AuthError::Missing,
            lookup::Refused::Invalid => AuthError::Invalid,
            lookup::Refused::Disabled => AuthError::Disabled,
            lookup::Refused::Expired => AuthError::Expired,
        })
    }
}

impl lookup::Hashed for KeyEntry {
    fn hash(&self) -> &ApiKeyHash {
        &self.hash
    }
    fn disabled(&self) -> bool {
        self.disabled
    }
    fn expires_at(&self) -> Option<OffsetDateTime> {
        self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn store(json: &str) -> ApiKeyStore {
        ApiKeyStore::new(parse_key_file(json).unwrap()).unwrap()
    }

    const NOW: OffsetDateTime = datetime!(2026-06-01 00:00 UTC);

    #[test]
    fn legacy_map_authenticates_and_keeps_no_plaintext() {
        let s = store(r#"{"secret-key-1": "agent-a"}"#);
        let p = s.authenticate("secret-key-1", NOW).unwrap();
        assert_eq!(p.agent_id.as_str(), "agent-a");
        assert!(p.groups.is_empty());
        let dump = format!("{s:?}");
        assert!(!dump.contains("secret-key-1"));
        assert_eq!(s.authenticate("secret-key-2", NOW), Err(AuthError::Invalid));
    }

    #[test]
    fn rich_format_expiry_disabled_groups() {
        let k1 = ApiKeyHash::of_key("k-one");
        let k2 = ApiKeyHash::of_key("k-two");
        let k3 = ApiKeyHash::of_key("k-three");
        let json = format!(
            r#"{{"keys": [
              {{"id": "one", "hash": "{k1}", "agent_id": "a1", "groups": ["g1", "g2"]}},
              {{"id": "two", "hash": "{k2}", "agent_id": "a2", "expires_at": "2026-01-01T00:00:00Z"}},
              {{"id": "three", "hash": "{k3}", "agent_id": "a3", "disabled": true}}
            ]}}"#
        );
        let s = store(&json);
        let p = s.authenticate("k-one", NOW).unwrap();
        assert_eq!(p.groups, vec!["g1".to_string(), "g2".to_string()]);
        assert_eq!(p.credential.label(), "one");
        assert_eq!(s.authenticate("k-two", NOW), Err(AuthError::Expired));
        assert!(s
            .authenticate("k-two", datetime!(2025-12-31 23:59 UTC))
            .is_ok());
        assert_eq!(s.authenticate("k-three", NOW), Err(AuthError::Disabled));
        assert_eq!(s.authenticate("", NOW), Err(AuthError::Missing));
        let long = "x".repeat(MAX_PRESENTED_KEY_LEN + 1);
        assert_eq!(s.authenticate(&long, NOW), Err(AuthError::Invalid));
    }

    #[test]
    fn duplicates_are_rejected() {
        let k1 = ApiKeyHash::of_key("k-one");
        let json = format!(
            r#"{{"keys": [{{"id": "a", "hash": "{k1}", "agent_id": "a1"}},
                         {{"id": "b", "hash": "{k1}", "agent_id": "a2"}}]}}"#
        );
        assert!(ApiKeyStore::new(parse_key_file(&json).unwrap()).is_err());
        let k2 = ApiKeyHash::of_key("k-two");
        let json = format!(
            r#"{{"keys": [{{"id": "a", "hash": "{k1}", "agent_id": "a1"}},
                         {{"id": "a", "hash": "{k2}", "agent_id": "a2"}}]}}"#
        );
        assert!(ApiKeyStore::new(parse_key_file(&json).unwrap()).is_err());
    }

    #[test]
    fn agent_id_alphabet() {
        assert!(AgentId::parse("spiffe://td/agent-1").is_some());
        assert!(AgentId::parse("a b").is_none());
        assert!(AgentId::parse("").is_none());
        assert!(AgentId::parse("a\"b").is_none());
        assert!(AgentId::parse(&"a".repeat(129)).is_none());
    }
}
