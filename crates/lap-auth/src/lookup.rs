//! The one lookup behind every hashed secret the gateway accepts (agent API keys, admin
//! tokens): length bound, SHA-256, map lookup by digest, a constant-time re-check, then the
//! entry's `disabled` flag and expiry. Written once so the two stores cannot drift apart.

use crate::ApiKeyHash;
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// What a stored entry must say about itself for [`lookup`].
pub(crate) trait Hashed {
    fn hash(&self) -> &ApiKeyHash;
    fn disabled(&self) -> bool;
    fn expires_at(&self) -> Option<OffsetDateTime>;
}

/// Why a presented secret was refused; each store maps it to its own error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Missing,
    Invalid,
    Disabled,
    Expired,
}

/// Verifies `presented` against `by_hash` at `now`: the principal the matching entry
/// authenticates, or why not.
pub(crate) fn lookup<E: Hashed, P>(
    by_hash: &HashMap<[u8; 32], (E, Arc<P>)>,
    presented: &str,
    max_len: usize,
    now: OffsetDateTime,
) -> Result<Arc<P>, Refused> {
    if presented.is_empty() {
        return Err(Refused::Missing);
    }
    if presented.len() > max_len {
        return Err(Refused::Invalid);
    }
    let digest = ApiKeyHash::of_key(presented);
    let (entry, principal) = by_hash.get(digest.as_bytes()).ok_or(Refused::Invalid)?;
    // The map lookup already matched the digest; re-check in constant time so the decision
    // never rests on a variable-time comparison.
    if !bool::from(entry.hash().as_bytes().ct_eq(digest.as_bytes())) {
        return Err(Refused::Invalid);
    }
    if entry.disabled() {
        return Err(Refused::Disabled);
    }
    if entry.expires_at().is_some_and(|exp| now >= exp) {
        return Err(Refused::Expired);
    }
    Ok(principal.clone())
}
