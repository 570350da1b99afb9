//! Admin-plane tokens and roles.
//!
//! The admin plane serves evidence (receipts, proofs, audit packs) and acts on the gateway
//! (revokes sessions, reloads keys and policy), so who may do what there must be as verified
//! as an agent's identity. An admin token is handled like an agent API key — kept only as its
//! SHA-256 digest, looked up by digest and confirmed in constant time — but it lives in a file
//! of its own and carries a [`Role`] instead of an agent id and groups: an admin token never
//! authenticates an agent, and an agent key never reaches the admin plane.
//!
//! ```json
//! {"version": 1, "tokens": [{"id": "ops-1", "hash": "sha256:…", "role": "operator",
//!                            "expires_at": "2027-01-01T00:00:00Z", "disabled": false}]}
//! ```
//!
//! The result of authentication is an [`AdminPrincipal`] whose [`AdminCredential`] says how it
//! was proved: a token from this file, or an OIDC token whose role comes from a claim
//! ([`AdminCredential::Jwt`], verified by the gateway), with the role table and everything
//! downstream unchanged.

use crate::{ApiKeyHash, KeyFileError};
use base64::Engine;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Prefix of minted admin tokens: tells them apart from agent keys (`lap_`) in a leak scan.
pub const ADMIN_TOKEN_PREFIX: &str = "lapadm_";

/// Longest token accepted from a request; anything longer is refused before hashing.
pub const MAX_PRESENTED_TOKEN_LEN: usize = 512;

/// What an admin may do. Roles are ordered: each one may do everything the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Health, readiness and metrics.
    Viewer,
    /// And receipts, log entries, proofs, checkpoints and audit packs.
    Auditor,
    /// And actions on the running gateway: session revocation, reload.
    Operator,
    /// And everything touching agent keys.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Auditor, Role::Operator, Role::Admin];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configured admin token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTokenEntry {
    /// Non-secret label, safe for logs and receipts.
    pub id: String,
    pub hash: ApiKeyHash,
    pub role: Role,
    pub expires_at: Option<OffsetDateTime>,
    pub disabled: bool,
}

/// A verified admin: who, with which role, and how it proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPrincipal {
    /// The token's id (or, for other credentials, the id they map to).
    pub id: String,
    pub role: Role,
    pub credential: AdminCredential,
}

/// How an admin authenticated, with the non-secret facts evidence records about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCredential {
    /// A bearer token from the admin tokens file: its id and `sha256:` + 12 hex digits of its
    /// digest.
    Token {
        key_id: String,
        key_hash_prefix: String,
    },
    /// An OIDC access token for the admin plane, its role taken from a claim: the issuer,
    /// subject and key id, and `sha256:` + 12 hex digits of the token's digest (never the
    /// token).
    Jwt {
        issuer: String,
        subject: String,
        kid: Option<String>,
        token_hash_prefix: String,
    },
}

/// Why a presented admin token was refused. Each variant has a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminAuthError {
    #[error("the admin plane requires a token (Authorization: Bearer <token>)")]
    Missing,
    #[error("the admin token is not valid")]
    Invalid,
    #[error("the admin token has expired")]
    Expired,
    #[error("the admin token is disabled")]
    Disabled,
}

impl AdminAuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AdminAuthError::Missing => "ADMIN_AUTH_REQUIRED",
            AdminAuthError::Invalid => "ADMIN_TOKEN_INVALID",
            AdminAuthError::Expired => "ADMIN_TOKEN_EXPIRED",
            AdminAuthError::Disabled => "ADMIN_TOKEN_DISABLED",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    version: u32,
    tokens: Vec<TokenEntryFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntryFile {
    id: String,
    hash: String,
    role: String,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    #[allow(dead_code)] // free text for operators; parsed so typos elsewhere are still caught
    note: Option<String>,
}

/// Parses an admin tokens file. Messages never contain token material.
pub fn parse_admin_token_file(text: &str) -> Result<Vec<AdminTokenEntry>, KeyFileError> {
    let file: TokenFile = serde_json::from_str(text).map_err(|e| KeyFileError::Syntax {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    if file.version != 1 {
        return Err(KeyFileError::Invalid(format!(
            "unsupported admin tokens file version {} (expected 1)",
            file.version
        )));
    }
    file.tokens
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let at = format!("token #{}", i + 1);
            if crate::AgentId::parse(&e.id).is_none() {
                return Err(KeyFileError::Invalid(format!(
                    "{at}: id {:?} must be 1-128 characters from [A-Za-z0-9._:@/-]",
                    e.id
                )));
            }
            let at = format!("token {:?}", e.id);
            let hash = ApiKeyHash::parse(&e.hash).ok_or_else(|| {
                KeyFileError::Invalid(format!("{at}: hash must be sha256:<64 hex digits>"))
            })?;
            let role = Role::parse(&e.role).ok_or_else(|| {
                KeyFileError::Invalid(format!(
                    "{at}: role {:?} is not one of viewer, auditor, operator, admin",
                    e.role
                ))
            })?;
            let expires_at = e
                .expires_at
                .map(|t| {
                    OffsetDateTime::parse(&t, &Rfc3339).map_err(|_| {
                        KeyFileError::Invalid(format!(
                            "{at}: expires_at {t:?} is not an RFC 3339 time"
                        ))
                    })
                })
                .transpose()?;
            Ok(AdminTokenEntry {
                id: e.id,
                hash,
                role,
                expires_at,
                disabled: e.disabled,
            })
        })
        .collect()
}

/// The admin tokens in force. Immutable; a reload builds a new store and swaps it in.
#[derive(Debug, Default)]
pub struct AdminTokenStore {
    by_hash: HashMap<[u8; 32], (AdminTokenEntry, Arc<AdminPrincipal>)>,
}

impl AdminTokenStore {
    /// Builds a store; duplicate digests or ids are an error.
    pub fn new(entries: Vec<AdminTokenEntry>) -> Result<Self, KeyFileError> {
        let mut by_hash = HashMap::with_capacity(entries.len());
        let mut ids = HashSet::new();
        for entry in entries {
            if !ids.insert(entry.id.clone()) {
                return Err(KeyFileError::Invalid(format!(
                    "duplicate admin token id {:?}",
                    entry.id
                )));
            }
            let principal = Arc::new(AdminPrincipal {
                id: entry.id.clone(),
                role: entry.role,
                credential: AdminCredential::Token {
                    key_id: entry.id.clone(),
                    key_hash_prefix: entry.hash.short(),
                },
            });
            if by_hash
                .insert(*entry.hash.as_bytes(), (entry, principal))
                .is_some()
            {
                return Err(KeyFileError::Invalid(
                    "the same admin token appears twice".to_string(),
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

    /// Verifies a presented token at time `now`.
    pub fn authenticate(
        &self,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Arc<AdminPrincipal>, AdminAuthError> {
        crate::lookup::lookup(&self.by_hash, presented, MAX_PRESENTED_TOKEN_LEN, now).map_err(|r| {
            match r {
                crate::lookup::Refused::Missing => AdminAuthError::Missing,
                crate::lookup::Refused::Invalid => AdminAuthError::Invalid,
                crate::lookup::Refused::Disabled => AdminAuthError::Disabled,
                crate::lookup::Refused::Expired => AdminAuthError::Expired,
            }
        })
    }
}

impl crate::lookup::Hashed for AdminTokenEntry {
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

/// Mints an admin token: `lapadm_` + 32 random bytes in URL-safe base64 (256 bits).
pub fn generate_admin_token() -> Result<(String, ApiKeyHash), getrandom::Error> {
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw)?;
    let token = format!(
        "{ADMIN_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let hash = ApiKeyHash::of_key(&token);
    Ok((token, hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-06-01 00:00 UTC);

    fn file(entries: &str) -> String {
        format!(r#"{{"version": 1, "tokens": [{entries}]}}"#)
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Operator.allows(Role::Auditor));
        assert!(Role::Auditor.allows(Role::Viewer));
        assert!(Role::Viewer.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Auditor));
        assert!(!Role::Auditor.allows(Role::Operator));
        assert!(!Role::Operator.allows(Role::Admin));
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::parse("Admin"), None);
    }

    #[test]
    fn tokens_authenticate_with_their_role_and_refusals_have_codes() {
        let (t1, h1) = generate_admin_token().unwrap();
        assert!(t1.starts_with(ADMIN_TOKEN_PREFIX));
        let h2 = ApiKeyHash::of_key("t-two");
        let h3 = ApiKeyHash::of_key("t-three");
        let text = file(&format!(
            r#"{{"id": "ops-1", "hash": "{h1}", "role": "operator"}},
               {{"id": "old", "hash": "{h2}", "role": "admin", "expires_at": "2026-01-01T00:00:00Z"}},
               {{"id": "off", "hash": "{h3}", "role": "viewer", "disabled": true, "note": "left"}}"#
        ));
        let store = AdminTokenStore::new(parse_admin_token_file(&text).unwrap()).unwrap();
        assert_eq!(store.len(), 3);
        let p = store.authenticate(&t1, NOW).unwrap();
        assert_eq!(p.id, "ops-1");
        assert_eq!(p.role, Role::Operator);
        assert_eq!(
            p.credential,
            AdminCredential::Token {
                key_id: "ops-1".into(),
                key_hash_prefix: h1.short()
            }
        );
        let cases = [
            ("", AdminAuthError::Missing, "ADMIN_AUTH_REQUIRED"),
            ("nope", AdminAuthError::Invalid, "ADMIN_TOKEN_INVALID"),
            ("t-two", AdminAuthError::Expired, "ADMIN_TOKEN_EXPIRED"),
            ("t-three", AdminAuthError::Disabled, "ADMIN_TOKEN_DISABLED"),
        ];
        for (presented, err, code) in cases {
            assert_eq!(store.authenticate(presented, NOW), Err(err));
            assert_eq!(err.code(), code);
        }
        assert!(store
            .authenticate("t-two", datetime!(2025-12-31 23:59 UTC))
            .is_ok());
        let long = "x".repeat(MAX_PRESENTED_TOKEN_LEN + 1);
        assert_eq!(store.authenticate(&long, NOW), Err(AdminAuthError::Invalid));
        // The store keeps no token material.
        assert!(!format!("{store:?}").contains(&t1));
    }

    #[test]
    fn bad_files_are_refused_without_quoting_secrets() {
        let h = ApiKeyHash::of_key("t");
        let bad = [
            (
                file(&format!(r#"{{"id": "a", "hash": "{h}", "role": "root"}}"#)),
                "role",
            ),
            (
                file(r#"{"id": "a", "hash": "secret-token", "role": "admin"}"#),
                "hash must be",
            ),
            (
                file(&format!(
                    r#"{{"id": "a b", "hash": "{h}", "role": "admin"}}"#
                )),
                "id",
            ),
            (
                file(&format!(
                    r#"{{"id": "a", "hash": "{h}", "role": "admin", "expires_at": "soon"}}"#
                )),
                "expires_at",
            ),
            (
                file(&format!(
                    r#"{{"id": "a", "hash": "{h}", "role": "admin", "bogus": 1}}"#
                )),
                "bogus",
            ),
            (
                file(&format!(r#"{{"hash": "{h}", "role": "admin"}}"#)),
                "id",
            ),
            (r#"{"version": 2, "tokens": []}"#.to_string(), "version"),
            (r#"{"tokens": []}"#.to_string(), "version"),
            ("[]".to_string(), "not valid JSON"),
        ];
        for (text, needle) in bad {
            let e = parse_admin_token_file(&text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(!e.contains("secret-token"), "{e}");
        }
        let dup_id = file(&format!(
            r#"{{"id": "a", "hash": "{h}", "role": "admin"}}, {{"id": "a", "hash": "{}", "role": "admin"}}"#,
            ApiKeyHash::of_key("u")
        ));
        assert!(AdminTokenStore::new(parse_admin_token_file(&dup_id).unwrap()).is_err());
        let dup_hash = file(&format!(
            r#"{{"id": "a", "hash": "{h}", "role": "admin"}}, {{"id": "b", "hash": "{h}", "role": "viewer"}}"#
        ));
        assert!(AdminTokenStore::new(parse_admin_token_file(&dup_hash).unwrap()).is_err());
        let empty = parse_admin_token_file(&file("")).unwrap();
        assert!(AdminTokenStore::new(empty).unwrap().is_empty());
    }
}
