//! The LAP transparency log.
//!
//! * [`merkle`]: RFC 6962 hashing, roots, inclusion and consistency proofs (pure).
//! * [`note`]: C2SP `signed-note` and `tlog-checkpoint` text formats with Ed25519 keys (pure).
//! * [`json`]: the JSON forms of inclusion and consistency proofs (admin plane, auditors).
//! * [`proof`]: C2SP `tlog-proof@v1`, an entry's self-contained inclusion proof (pure).
//! * [`store`]: durable append-only storage with group commit and crash recovery; the tree's
//!   node hashes and the entries' offsets are derived data on disk (`derived`), so an open
//!   log's memory does not grow with the log.

mod derived;
pub mod json;
pub mod merkle;
pub mod note;
pub mod proof;
pub mod store;
