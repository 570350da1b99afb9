//! Legacy MCP sessions: the gateway's own session ids, sealed so that any replica can open them.
//!
//! On a legacy `initialize` the gateway mints the `Mcp-Session-Id` the agent will use. It is
//! not the upstream's: it is an AEAD box (ChaCha20-Poly1305, `ring`) holding the agent it was
//! issued to, the MCP server, the upstream's own session id (if the upstream gave one) and an
//! expiry. So:
//!
//! * an agent cannot use another agent's session, nor a session for another server: the box
//!   names both, and opening checks them against the verified principal and the route;
//! * a guessed, altered, expired or foreign id opens to nothing — `404`, as the protocol
//!   prescribes for a session the server no longer knows — and never says which check failed;
//! * the upstream's session id never reaches the agent;
//! * **replicas need no shared store**: every replica configured with the same session key
//!   (`[mcp] session_key_file`) opens every replica's sessions, so a session keeps working
//!   when the next request lands elsewhere. The cost: a session cannot be revoked before its
//!   expiry except by ending it at the upstream (`DELETE`), after which the upstream answers
//!   `404` for it. A shared store (a later step) would add revocation.
//!
//! Nonces are 96 random bits per session; with one key, the chance of a nonce repeating stays
//! below 2⁻³² up to 2³² sessions — rotate the key long before that (the docs say how).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The prefix of every session id this gateway mints (and the version of its contents).
const PREFIX: &str = "lap1.";
/// Bound to the box, so a box made for another purpose with the same key never opens here.
const AAD: &[u8] = b"lap-gateway mcp-session v1";
/// Longest session id accepted before any decoding (ours are ~200 bytes).
const MAX_ID_LEN: usize = 1024;

/// What a session id carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The agent it was issued to.
    pub agent: String,
    /// The MCP server it belongs to.
    pub server: String,
    /// The upstream's `Mcp-Session-Id`, when it assigned one.
    pub upstream: Option<String>,
    /// Issued and expires, Unix seconds.
    pub iat: u64,
    pub exp: u64,
}

/// Why no session was opened. Deliberately one answer for every reason (see the module docs);
/// the variants are for the gateway's own log and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("not a session id of this gateway")]
    Malformed,
    #[error("the session id does not open with this gateway's key")]
    Sealed,
    #[error("the session belongs to another agent or server")]
    NotYours,
    #[error("the session has expired")]
    Expired,
}

/// Why the session key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SessionKeyError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: lap_keys::PrivateFileError,
    },
    #[error("{path}: the session key must be 64 hex characters (32 bytes)")]
    Format { path: PathBuf },
    #[error("cannot create the session key {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: lap_keys::SeedFileError,
    },
    #[error("{dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The key that seals and opens session ids.
pub struct SessionKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// Why no session id could be minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("no system randomness for the nonce")]
    Random,
    #[error("the session could not be sealed")]
    Seal,
}

impl SessionKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, ring::error::Unspecified> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes)?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Reads the key file (64 hex characters, mode 0600), creating it with a fresh random key
    /// when it does not exist and `create` is set (single-replica default).
    pub fn load(path: &Path, create: bool) -> Result<Self, SessionKeyError> {
        if create && !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| SessionKeyError::Dir {
                    dir: dir.to_path_buf(),
                    source,
                })?;
            }
            let key =
                lap_keys::create_seed_file(path).map_err(|source| SessionKeyError::Create {
                    path: path.to_path_buf(),
                    source,
                })?;
            tracing::info!(path = %path.display(), "created the MCP session key");
            return Self::from_bytes(&key.to_bytes()).map_err(|_| SessionKeyError::Format {
                path: path.to_path_buf(),
            });
        }
        let text = lap_keys::read_private_file(path).map_err(|source| SessionKeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|bytes| Self::from_bytes(&bytes).ok())
            .ok_or_else(|| SessionKeyError::Format {
                path: path.to_path_buf(),
            })
    }

    /// A new session id for `session`.
    pub fn seal(&self, session: &Session) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|_| SealError::Random)?;
        // Serialising a struct of strings and integers cannot fail.
        let mut boxed = serde_json::to_vec(session).unwrap_or_default();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut boxed,
            )
            .map_err(|_| SealError::Seal)?;
        let mut raw = Vec::with_capacity(NONCE_LEN + boxed.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&boxed);
        Ok(format!("{PREFIX}{}", B64URL.encode(raw)))
    }

    /// Opens a session id presented by `agent` on `server` at `now` (Unix seconds).
    pub fn open(
        &self,
        id: &str,
        agent: &str,
        server: &str,
        now: u64,
    ) -> Result<Session, SessionError> {
        if id.len() > MAX_ID_LEN {
            return Err(SessionError::Malformed);
        }
        let raw = id
            .strip_prefix(PREFIX)
            .and_then(|b| B64URL.decode(b).ok())
            .filter(|raw| raw.len() > NONCE_LEN)
            .ok_or(SessionError::Malformed)?;
        let (nonce, boxed) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SessionError::Malformed)?;
        let mut boxed = boxed.to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut boxed,
            )
            .map_err(|_| SessionError::Sealed)?;
        let session: Session = serde_json::from_slice(plain).map_err(|_| SessionError::Sealed)?;
        if session.agent != agent || session.server != server {
            return Err(SessionError::NotYours);
        }
        if now >= session.exp {
            return Err(SessionError::Expired);
        }
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(exp: u64) -> Session {
        Session {
            agent: "bot".into(),
            server: "demo".into(),
            upstream: Some("up-123".into()),
            iat: 100,
            exp,
        }
    }

    #[test]
    fn a_session_opens_only_for_its_agent_server_and_time() {
        let key = SessionKey::from_bytes(&[7u8; 32]).unwrap();
        let id = key.seal(&session(200)).unwrap();
        assert!(id.starts_with(PREFIX));
        assert!(
            id.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "visible ASCII"
        );
        assert!(!id.contains("up-123"), "the upstream's id stays inside");
        assert_eq!(key.open(&id, "bot", "demo", 150).unwrap(), session(200));
        assert_eq!(
            key.open(&id, "eve", "demo", 150),
            Err(SessionError::NotYours)
        );
        assert_eq!(
            key.open(&id, "bot", "other", 150),
            Err(SessionError::NotYours)
        );
        assert_eq!(
            key.open(&id, "bot", "demo", 200),
            Err(SessionError::Expired)
        );
        // Another replica with the same key opens it; a different key does not.
        assert!(SessionKey::from_bytes(&[7u8; 32])
            .unwrap()
            .open(&id, "bot", "demo", 150)
            .is_ok());
        assert_eq!(
            SessionKey::from_bytes(&[8u8; 32])
                .unwrap()
                .open(&id, "bot", "demo", 150),
            Err(SessionError::Sealed)
        );
        // Two seals of the same session differ (fresh nonces).
        assert_ne!(id, key.seal(&session(200)).unwrap());
    }

    #[test]
    fn tampered_or_foreign_ids_do_not_open() {
        let key = SessionKey::from_bytes(&[1u8; 32]).unwrap();
        let id = key.seal(&session(200)).unwrap();
        let mut bytes = id.clone().into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert_eq!(
            key.open(&flipped, "bot", "demo", 150),
            Err(SessionError::Sealed)
        );
        for bad in ["", "lap1.", "lap1.AAAA", "upstream-session", "lap1.!!!"] {
            assert_eq!(
                key.open(bad, "bot", "demo", 150),
                Err(SessionError::Malformed),
                "{bad}"
            );
        }
        let long = format!("{PREFIX}{}", "A".repeat(MAX_ID_LEN));
        assert_eq!(
            key.open(&long, "bot", "demo", 150),
            Err(SessionError::Malformed)
        );
    }

    #[test]
    fn keys_are_files_of_64_hex_characters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/mcp-session.key");
        let a = SessionKey::load(&path, true).unwrap();
        let id = a.seal(&session(200)).unwrap();
        let b = SessionKey::load(&path, false).unwrap();
        assert!(
            b.open(&id, "bot", "demo", 150).is_ok(),
            "the same key is read back"
        );
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(
            SessionKey::load(&path, false),
            Err(SessionKeyError::Format { .. })
        ));
        assert!(SessionKey::load(&dir.path().join("missing"), false).is_err());
    }
}
