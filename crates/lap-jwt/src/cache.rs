//! The verified-token cache: a token seen before and still valid costs a hash, not a
//! signature check.
//!
//! Keyed by the token's SHA-256, never the token itself, so the cache holds nothing an attacker
//! could replay from a memory dump. An entry is good until the token's `exp` and only under
//! the key-set generation it was verified with: when an issuer's JWKS changes (rotation, a
//! revoked key) its entries are dropped and every token is checked against the new keys.
//! Bounded: when full, expired entries go first (swept at most once a second, so a cache full
//! of live tokens does not make every new token scan it under the lock), then an arbitrary one.

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
    /// When expired entries were last swept out (Unix seconds; written under `entries`' lock).
    swept_at: std::sync::atomic::AtomicI64,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        TokenCache {
            entries: Mutex::new(HashMap::with_capacity(capacity.min(4096))),
            capacity,
            swept_at: std::sync::atomic::AtomicI64::new(i64::MIN),
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
            use std::sync::atomic::Ordering;
            if self.swept_at.load(Ordering::Relaxed) < now {
                self.swept_at.store(now, Ordering::Relaxed);
                entries.retain(|_, e| e.verified.expires_at > now);
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
