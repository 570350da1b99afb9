//! LAP receipts: the signed evidence of every tool call.
//!
//! A receipt is a JSON payload ([`Receipt`]) in a DSSE envelope ([`dsse::Envelope`]) whose
//! `payloadType` is [`RECEIPT_PAYLOAD_TYPE`]. Three kinds exist:
//!
//! * **decision** — signed and logged *before* the call is forwarded (no receipt, no call);
//! * **completion** — after the response: status, response digest, sizes, duration, and the id
//!   of the decision receipt it completes;
//! * **denial** — for every refusal (authentication, routing, limits, policy, signer or log
//!   failure where a signature is still possible).
//!
//! Receipts hold digests, never raw bodies or secrets. `docs/receipts.md` specifies the format
//! byte for byte. This crate is pure: no clocks, no I/O, no randomness.

pub mod dsse;
mod receipt;

pub use receipt::*;

/// DSSE `payloadType` of receipt envelopes, versioned.
pub const RECEIPT_PAYLOAD_TYPE: &str = "application/vnd.lap.receipt.v1+json";
