//! Signature algorithms and an issuer's key set (a parsed JWKS).
//!
//! A key is usable for exactly the algorithms its JWK allows: its `kty`/`crv` fix the family
//! (RSA → RS*/PS*, EC P-256 → ES256, EC P-384 → ES384, OKP Ed25519 → EdDSA), its `alg`, when
//! present, narrows that to one algorithm, `use` must be `sig` when present and `key_ops` must
//! include `verify` when present. Symmetric keys (`kty: oct`) never enter a key set, so no
//! token can be checked with HMAC — in particular not with a public key's bytes as the secret
//! (the classic RS256 → HS256 confusion). Entries that are not usable are skipped, not fatal:
//! an issuer's JWKS commonly also lists encryption keys.

use crate::error::{JwksError, PolicyError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::DecodingKey;
use serde_json::Value;

/// Largest JWKS document accepted (bytes).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys kept from one JWKS.
pub const MAX_KEYS: usize = 64;

/// An asymmetric JWS algorithm the gateway can verify. `none` and `HS*` have no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// The algorithms an issuer allows unless configured otherwise.
pub const DEFAULT_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// The key family an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Algorithm {
    /// A configured algorithm name; `none` and HMAC are refused outright.
    pub fn parse(name: &str) -> Result<Self, PolicyError> {
        Ok(match name {
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "PS256" => Algorithm::PS256,
            "PS384" => Algorithm::PS384,
            "PS512" => Algorithm::PS512,
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "EdDSA" => Algorithm::EdDSA,
            n if n.eq_ignore_ascii_case("none") || n.to_ascii_uppercase().starts_with("HS") => {
                return Err(PolicyError::AlgForbidden(n.to_string()))
            }
            n => return Err(PolicyError::AlgUnknown(n.to_string())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    fn family(self) -> Family {
        match self {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => Family::Rsa,
            Algorithm::ES256 => Family::P256,
            Algorithm::ES384 => Family::P384,
            Algorithm::EdDSA => Family::Ed25519,
        }
    }

    pub(crate) fn to_jws(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as J;
        match self {
            Algorithm::RS256 => J::RS256,
            Algorithm::RS384 => J::RS384,
            Algorithm::RS512 => J::RS512,
            Algorithm::PS256 => J::PS256,
            Algorithm::PS384 => J::PS384,
            Algorithm::PS512 => J::PS512,
            Algorithm::ES256 => J::ES256,
            Algorithm::ES384 => J::ES384,
            Algorithm::EdDSA => J::EdDSA,
        }
    }
}

/// One verification key of an issuer.
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    family: Family,
    /// The JWK's `alg`, when it names one.
    alg: Option<Algorithm>,
    pub(crate) decoding: DecodingKey,
}

impl Key {
    pub(crate) fn fits(&self, alg: Algorithm) -> bool {
        self.family == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The usable keys of one JWKS document. Immutable; a refresh builds a new one.
#[derive(Debug)]
pub struct KeySet {
    pub(crate) keys: Vec<Key>,
    /// SHA-256 of the document, to tell a changed JWKS from the same one fetched again.
    digest: [u8; 32],
}

impl KeySet {
    /// Parses a JWKS document, keeping the keys usable for signature verification.
    pub fn from_json(doc: &[u8]) -> Result<Self, JwksError> {
        use sha2::Digest;
        if doc.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge(MAX_JWKS_BYTES));
        }
        let value: Value =
            serde_json::from_slice(doc).map_err(|e| JwksError::Malformed(Some(e)))?;
        let entries = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::Malformed(None))?;
        let keys: Vec<Key> = entries
            .iter()
            .filter_map(usable_key)
            .take(MAX_KEYS)
            .collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(KeySet {
            keys,
            digest: sha2::Sha256::digest(doc).into(),
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `other` was parsed from the same document.
    pub fn same_as(&self, other: &KeySet) -> bool {
        self.digest == other.digest
    }

    /// The key for a token's header: by `kid` when it names one; without a `kid` only when
    /// exactly one key of the set fits the algorithm (otherwise the choice would be a guess).
    pub(crate) fn select(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Key> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid) && k.fits(alg)),
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                let first = fitting.next()?;
                fitting.next().is_none().then_some(first)
            }
        }
    }
}

/// The JWK as a verification key, or `None` when it is not one we may use.
fn usable_key(jwk: &Value) -> Option<Key> {
    let s = |name: &str| jwk.get(name).and_then(Value::as_str);
    if jwk.get("use").is_some() && s("use") != Some("sig") {
        return None;
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verify = ops.as_array()?.iter().any(|o| o.as_str() == Some("verify"));
        if !verify {
            return None;
        }
    }
    let alg = match jwk.get("alg") {
        None => None,
        Some(a) => Some(Algorithm::parse(a.as_str()?).ok()?),
    };
    let b64_len = |name: &str| {
        s(name)
            .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
            .map(|b| b.len())
    };
    let (family, decoding) = match (s("kty")?, s("crv")) {
        ("RSA", _) => {
            // ring verifies RSA signatures from 2048-bit moduli up.
            if b64_len("n")? < 256 || b64_len("e")? == 0 {
                return None;
            }
            (
                Family::Rsa,
                DecodingKey::from_rsa_components(s("n")?, s("e")?).ok()?,
            )
        }
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let size = if crv == "P-256" { 32 } else { 48 };
            if b64_len("x")? != size || b64_len("y")? != size {
                return None;
            }
            let family = if crv == "P-256" {
                Family::P256
            } else {
                Family::P384
            };
            (
                family,
                DecodingKey::from_ec_components(s("x")?, s("y")?).ok()?,
            )
        }
        ("OKP", Some("Ed25519")) => {
            if b64_len("x")? != 32 {
                return None;
            }
            (
                Family::Ed25519,
                DecodingKey::from_ed_components(s("x")?).ok()?,
            )
        }
        _ => return None,
    };
    if alg.is_some_and(|a| a.family() != family) {
        return None;
    }
    Some(Key {
        kid: s("kid").map(str::to_string),
        family,
        alg,
        decoding,
    })
}
