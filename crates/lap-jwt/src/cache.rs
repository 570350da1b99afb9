//! The verified-token cache: a token seen before and still valid costs a hash, not a
//! signature check.
//!
//! Keyed by the token's SHA-256, never the token itself, so the cache holds nothing an attacker
//! could replay from a memory dump. An entry is good until the token's `exp` and only under
//! the key-set generation it was verified with: when an issuer's JWKS changes (rotation, a
//! revoked key) its entries are dropped and every token is checked against the new keys.
//! Bounded: when full, expired entries go first, then an arbitrary one.

use crate::verify::Verified;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
struct Entry {
    verified: Arc<Verified>,
    issuer: usize,
    generation: u64,
}

#[derive(Debug)]
pub(crate) struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    capacity: usize,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        TokenCache {
            entries: Mutex::new(HashMap::with_capacity(capacity.min(4096))),
            capacity,
        }
    }

    /// The cached verification of a token, if still valid at `now` under the issuer's current
    /// key generation (`generation_of`).
    pub(crate) fn get(
        &self,
        digest: &[u8; 32],
        now: i64,
        generation_of: impl Fn(usize) -> Option<u64>,
    ) -> Option<Arc<Verified>> {
        if self.capacity == 0 {
            return None;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(digest)?;
        if now < entry.verified.expires_at && generation_of(entry.issuer) == Some(entry.generation)
        {
            return Some(entry.verified.clone());
        }
        entries.remove(digest);
        None
    }

    pub(crate) fn put(
        &self,
        digest: [u8; 32],
        verified: Arc<Verified>,
        issuer: usize,
        generation: u64,
        now: i64,
    ) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&digest) {
            let expired: Vec<[u8; 32]> = entries
                .iter()
                .filter(|(_, e)| e.verified.expires_at <= now)
                .map(|(k, _)| *k)
                .collect();
            for k in expired {
                entries.remove(&k);
            }
            if entries.len() >= self.capacity {
                if let Some(k) = entries.keys().next().copied() {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(
            digest,
            Entry {
                verified,
                issuer,
                generation,
            },
        );
    }

    /// Drops every entry of an issuer (its key set changed).
    pub(crate) fn evict_issuer(&self, issuer: usize) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, e| e.issuer != issuer);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
