//! Bearer JWT verification for the LAP gateway.
//!
//! Agents may authenticate with an access token (a JWT) issued by a trusted OpenID provider
//! instead of an API key. This crate decides whether such a token is good and what principal
//! it establishes; it does no I/O. Fetching each issuer's JWKS (discovery, TTLs, the
//! rate-limited refresh on an unknown `kid`) is the gateway's, which installs the parsed key
//! sets here ([`Verifier::install_keys`]).
//!
//! The rules, each a refusal with a stable code ([`JwtError::code`]):
//!
//! * at most [`MAX_TOKEN_LEN`] bytes, three base64url segments, JSON header and payload;
//! * the header `alg` is an asymmetric algorithm the token's issuer allows (default RS256,
//!   ES256, EdDSA); `none` and `HS*` are always refused — no key set ever holds a symmetric
//!   key, so a token "signed" with HMAC over a public key cannot verify; a `crit` header is
//!   refused (we implement no extensions);
//! * `iss` selects the issuer by exact match; an unknown issuer is refused before any key
//!   look-up;
//! * the key is the issuer's JWK with the header's `kid` whose type/curve/`alg`/`use` fit the
//!   header's `alg`; a token without `kid` only when exactly one key fits;
//! * after the signature holds: `exp` required, `nbf` and `iat` checked, each with the
//!   issuer's leeway; `aud` contains a configured audience (the gateway's canonical resource
//!   URL, RFC 8707); `sub` and the configured required claims are present;
//! * the agent id comes from the configured claim and must pass [`lap_auth::AgentId::parse`];
//!   groups come from a configured claim path (string or array of strings), with an optional
//!   prefix; scopes from `scope` (space-separated) or `scp` (array).
//!
//! Why `jsonwebtoken` 9 for the JWK → public key conversion and the signature check: it is
//! widely used, and its 9.x line verifies with `ring`, the crypto backend the workspace already
//! builds for rustls (its 10.x line wants `aws-lc-rs` or the RustCrypto crates, a second
//! crypto stack). Only its low-level `crypto::verify` is used; the header and claim rules are
//! ours so that each refusal has its own code and no claim is read from an unverified token.
//!
//! A token verified once is cached by its SHA-256 until its `exp` (see `cache`), so repeated
//! calls with the same token cost no second signature check.

mod cache;
mod error;
mod keys;
mod policy;
mod verify;

pub use error::{JwksError, JwtError, PolicyError};
pub use keys::{Algorithm, KeySet, DEFAULT_ALGORITHMS, MAX_JWKS_BYTES, MAX_KEYS};
pub use policy::{ClaimPath, IssuerPolicy, DEFAULT_LEEWAY_SECS, MAX_LEEWAY_SECS};
pub use verify::{looks_like_jwt, Outcome, Verified, Verifier, MAX_TOKEN_LEN};

#[cfg(test)]
mod tests;
