//! Bounded memo tables for answers that are a pure function of their inputs.
//!
//! A decision depends only on the request and the engine (no clock, no external data), so the
//! engine memoises decisions — and, for MCP discovery, listing answers — in tables that live and
//! die with it: a reload builds a new engine and so starts empty.
//!
//! Invariants:
//! * an entry is found by a keyed hash of the inputs (random per table, so request data cannot be
//!   crafted to pile into one bucket) and then **confirmed by comparing every input**: two
//!   requests that differ in anything never share an entry, whatever their hashes;
//! * the table never holds more than its bound of buckets: it is cleared when full (simple, and
//!   no sequence of requests can pin stale entries in it).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::RwLock;

/// Entries whose inputs share one hash.
type Bucket<K, V> = Vec<(K, V)>;

pub(crate) struct Memo<K, V> {
    table: RwLock<HashMap<u64, Bucket<K, V>>>,
    max_buckets: usize,
    hasher: RandomState,
}

impl<K, V: Clone> Memo<K, V> {
    pub(crate) fn new(max_buckets: usize) -> Self {
        Self {
            table: RwLock::new(HashMap::new()),
            max_buckets,
            hasher: RandomState::new(),
        }
    }

    /// The hash under which an entry for `inputs` is stored (this table's keyed hasher).
    pub(crate) fn hash<T: Hash>(&self, inputs: T) -> u64 {
        self.hasher.hash_one(inputs)
    }

    /// The value stored under `hash` whose key `is` accepts (it must compare every input).
    pub(crate) fn get(&self, hash: u64, is: impl Fn(&K) -> bool) -> Option<V> {
        let table = self.table.read().ok()?;
        table
            .get(&hash)?
            .iter()
            .find(|(k, _)| is(k))
            .map(|(_, v)| v.clone())
    }

    /// Stores `value` for `key` under `hash`; clears the table first when it is full. A
    /// poisoned lock only loses the entry (the answer is recomputed next time).
    pub(crate) fn insert(&self, hash: u64, key: K, value: V) {
        if let Ok(mut table) = self.table.write() {
            if table.len() >= self.max_buckets {
                table.clear();
            }
            table.entry(hash).or_default().push((key, value));
        }
    }

    /// Entries held (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table
            .read()
            .map_or(0, |t| t.values().map(Vec::len).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colliding_hashes_keep_entries_apart_and_the_bound_holds() {
        let m: Memo<String, u32> = Memo::new(2);
        // Same hash on purpose: the key comparison alone tells the entries apart.
        m.insert(7, "a".into(), 1);
        m.insert(7, "b".into(), 2);
        assert_eq!(m.get(7, |k| k == "a"), Some(1));
        assert_eq!(m.get(7, |k| k == "b"), Some(2));
        assert_eq!(m.get(7, |k| k == "c"), None);
        assert_eq!(m.get(8, |k| k == "a"), None);
        m.insert(8, "c".into(), 3);
        assert_eq!(m.len(), 3);
        // A third bucket clears the table first.
        m.insert(9, "d".into(), 4);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get(7, |k| k == "a"), None);
        assert_eq!(m.get(9, |k| k == "d"), Some(4));
    }
}
