//! Identifiers the state layer makes, and the strict checks on those it is handed.
//!
//! Everything an agent controls (session ids, nonces) is checked for length and alphabet
//! before it reaches a store: a bad value costs no store round trip, cannot grow storage, and
//! cannot smuggle separators into a key.

use crate::error::{BackendError, StateError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Session ids: this prefix and 32 URL-safe base64 characters (24 random bytes, 192 bits),
/// the seed system's format.
pub const SESSION_ID_PREFIX: &str = "sess_";
const SESSION_RANDOM_BYTES: usize = 24;
const SESSION_RANDOM_CHARS: usize = 32;
/// The length of every session id.
pub const SESSION_ID_LEN: usize = SESSION_ID_PREFIX.len() + SESSION_RANDOM_CHARS;

/// Reservation ids: this prefix and 22 URL-safe base64 characters (128 random bits).
const RESERVATION_ID_PREFIX: &str = "rsv_";
const RESERVATION_RANDOM_BYTES: usize = 16;

/// The longest nonce accepted.
pub const MAX_NONCE_LEN: usize = 128;
/// The longest rate-limit or budget key.
pub const MAX_KEY_LEN: usize = 512;
/// The longest principal.
pub const MAX_PRINCIPAL_LEN: usize = 256;
/// The longest key prefix.
pub const MAX_PREFIX_LEN: usize = 64;

fn random_b64(n: usize) -> Result<String, StateError> {
    let mut buf = vec![0u8; n];
    getrandom::getrandom(&mut buf).map_err(|e| {
        StateError::Unavailable(BackendError::Other(format!("no randomness for an id: {e}")))
    })?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

pub(crate) fn new_session_id() -> Result<String, StateError> {
    Ok(format!(
        "{SESSION_ID_PREFIX}{}",
        random_b64(SESSION_RANDOM_BYTES)?
    ))
}

pub(crate) fn new_reservation_id() -> Result<String, StateError> {
    Ok(format!(
        "{RESERVATION_ID_PREFIX}{}",
        random_b64(RESERVATION_RANDOM_BYTES)?
    ))
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// A session id is exactly `sess_` and 32 characters of `[A-Za-z0-9_-]`.
pub fn validate_session_id(id: &str) -> Result<(), StateError> {
    let ok = id.len() == SESSION_ID_LEN
        && id.starts_with(SESSION_ID_PREFIX)
        && id.as_bytes()[SESSION_ID_PREFIX.len()..]
            .iter()
            .all(|&b| is_b64url(b));
    if ok {
        Ok(())
    } else {
        Err(StateError::SessionIdMalformed)
    }
}

/// A nonce is 1 to [`MAX_NONCE_LEN`] characters of `[A-Za-z0-9._~-]` (URL-unreserved).
pub fn validate_nonce(nonce: &str) -> Result<(), StateError> {
    let ok = !nonce.is_empty()
        && nonce.len() <= MAX_NONCE_LEN
        && nonce
            .bytes()
            .all(|b| is_b64url(b) || b == b'.' || b == b'~');
    if ok {
        Ok(())
    } else {
        Err(StateError::NonceMalformed)
    }
}

/// Keys and principals the gateway builds: non-empty, bounded, no control characters.
pub(crate) fn validate_text(what: &'static str, s: &str, max: usize) -> Result<(), StateError> {
    if s.is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err(StateError::KeyInvalid(what));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_session_ids_pass_their_own_check_and_differ() {
        let a = new_session_id().unwrap();
        let b = new_session_id().unwrap();
        assert_eq!(a.len(), SESSION_ID_LEN);
        validate_session_id(&a).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn session_ids_are_checked_strictly() {
        let good = new_session_id().unwrap();
        for bad in [
            String::new(),
            "sess_".into(),
            format!("{good}A"),
            good[..good.len() - 1].to_string(),
            good.replace("sess_", "sesx_"),
            format!("sess_{}", "a".repeat(31) + "/"),
            format!("sess_{}", "a".repeat(31) + "é")
                .chars()
                .take(37)
                .collect(),
            format!("sess_{}:", "a".repeat(31)),
        ] {
            assert!(
                matches!(
                    validate_session_id(&bad),
                    Err(StateError::SessionIdMalformed)
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn nonces_are_bounded() {
        validate_nonce("a").unwrap();
        validate_nonce(&"n".repeat(MAX_NONCE_LEN)).unwrap();
        validate_nonce("A-z_0.9~").unwrap();
        for bad in [
            String::new(),
            "n".repeat(MAX_NONCE_LEN + 1),
            "a b".into(),
            "a:b".into(),
            "a\nb".into(),
            "é".into(),
        ] {
            assert_eq!(
                validate_nonce(&bad).unwrap_err().code(),
                "NONCE_MALFORMED",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reservation_ids_have_128_bits() {
        let id = new_reservation_id().unwrap();
        assert_eq!(id.len(), 4 + 22);
    }
}
