//! LAP receipts: the evidence of every tool call.
//!
//! A receipt is a JSON payload ([`Receipt`]). How it is made authentic depends on the
//! gateway's evidence mode, and a log may hold both kinds ([`Entry`], told apart by content):
//!
//! * `per_receipt` — version 1, signed on its own in a DSSE envelope ([`dsse::Envelope`])
//!   whose `payloadType` is [`RECEIPT_PAYLOAD_TYPE`]; the envelope is the log entry;
//! * `batched` — version 2, the compact payload *is* the log entry, with a random `blinder`;
//!   it is proven by its inclusion under a checkpoint that the log key (and the receipt key,
//!   under [`batch_key_name`]) signed for the whole batch.
//!
//! Receipt ids are derived from log positions ([`ReceiptIds`]). Five kinds exist:
//!
//! * **decision** — durable and signed *before* the call is forwarded (no evidence, no call);
//! * **completion** — after the response: status, response digest, sizes, duration, and the id
//!   index (and, in version 2, the leaf hash) of the decision receipt it completes;
//! * **denial** — for every refusal (authentication, routing, limits, policy, signer or log
//!   failure where a signature is still possible);
//! * **denial_aggregate** — the refusals of one client address without a verified identity
//!   that got no receipt of their own (beyond the address's allowance, or while the queue of such
//!   receipts was full), counted per code over an interval ([`Aggregate`]): a flood costs the
//!   log one entry per address and interval, not one per request;
//! * **admin** — an admin-plane request that changes something (session revocation,
//!   reload), durable before it acts, and every refused attempt at one; its principal is the
//!   admin (`auth: "admin_token"`, or `auth: "jwt"` when signed in with an OIDC token) or
//!   `null`.
//!
//! Receipts hold digests, never raw bodies or secrets. `docs/receipts.md` specifies the format
//! byte for byte. This crate is pure: no clocks, no I/O, no randomness.

pub mod dsse;
mod receipt;

pub use receipt::*;

/// DSSE `payloadType` of receipt envelopes, versioned.
pub const RECEIPT_PAYLOAD_TYPE: &str = "application/vnd.lap.receipt.v1+json";
