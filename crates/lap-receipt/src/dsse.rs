//! DSSE envelopes (Dead Simple Signing Envelope, secure-systems-lab/dsse v1).
//!
//! The signature covers `PAE(payloadType, payload)`:
//!
//! ```text
//! "DSSEv1" SP LEN(payloadType) SP payloadType SP LEN(payload) SP payload
//! ```
//!
//! where `LEN` is the byte length in ASCII decimal and `SP` one space. Because the exact payload
//! bytes are signed, no JSON canonicalisation is involved anywhere.
//!
//! The envelope JSON is written compactly with the members in the order `payload`,
//! `payloadType`, `signatures` and each signature as `{"keyid", "sig"}`; base64 is the standard
//! alphabet with padding. Readers accept any member order.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Largest envelope accepted when parsing (receipts are far smaller).
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// Pre-authentication encoding of DSSE v1.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// One signature of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeSignature {
    pub keyid: String,
    pub sig: [u8; 64],
}

/// A parsed or freshly built envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub payload_type: String,
    pub payload: Vec<u8>,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    payload: std::borrow::Cow<'a, str>,
    #[serde(rename = "payloadType")]
    payload_type: std::borrow::Cow<'a, str>,
    signatures: Vec<WireSig<'a>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSig<'a> {
    keyid: std::borrow::Cow<'a, str>,
    sig: std::borrow::Cow<'a, str>,
}

/// Why an envelope is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope larger than {MAX_ENVELOPE_BYTES} bytes")]
    TooLarge,
    #[error("envelope is not valid JSON of the DSSE shape: {0}")]
    Malformed(String),
    #[error("envelope payload is not valid base64")]
    PayloadEncoding,
    #[error("signature {0} is not 64 bytes of valid base64")]
    SignatureEncoding(usize),
    #[error("envelope has no signature")]
    Unsigned,
    #[error("payloadType is {found:?}, expected {expected:?}")]
    PayloadType { found: String, expected: String },
    #[error("no signature by key {0:?}")]
    NoSignatureByKey(String),
    #[error("the signature by key {0:?} does not verify")]
    BadSignature(String),
}

impl Envelope {
    /// The bytes a signer signs for this envelope.
    pub fn pae(&self) -> Vec<u8> {
        pae(&self.payload_type, &self.payload)
    }

    /// Compact JSON in the canonical member order (see the module docs).
    pub fn to_json(&self) -> String {
        let payload = STANDARD.encode(&self.payload);
        let sigs: Vec<WireSig> = self
            .signatures
            .iter()
            .map(|s| WireSig {
                keyid: s.keyid.as_str().into(),
                sig: STANDARD.encode(s.sig).into(),
            })
            .collect();
        let wire = Wire {
            payload: payload.into(),
            payload_type: self.payload_type.as_str().into(),
            signatures: sigs,
        };
        // Serialising strings and vectors cannot fail.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    pub fn from_json(text: &[u8]) -> Result<Self, EnvelopeError> {
        if text.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge);
        }
        let wire: Wire =
            serde_json::from_slice(text).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        let payload = STANDARD
            .decode(wire.payload.as_bytes())
            .map_err(|_| EnvelopeError::PayloadEncoding)?;
        let mut signatures = Vec::with_capacity(wire.signatures.len());
        for (i, s) in wire.signatures.iter().enumerate() {
            let raw = STANDARD
                .decode(s.sig.as_bytes())
                .map_err(|_| EnvelopeError::SignatureEncoding(i))?;
            let sig: [u8; 64] = raw
                .try_into()
                .map_err(|_| EnvelopeError::SignatureEncoding(i))?;
            signatures.push(EnvelopeSignature {
                keyid: s.keyid.to_string(),
                sig,
            });
        }
        if signatures.is_empty() {
            return Err(EnvelopeError::Unsigned);
        }
        Ok(Self {
            payload_type: wire.payload_type.into_owned(),
            payload,
            signatures,
        })
    }

    /// Checks the signature made by `keyid` with `key` (strict Ed25519 verification).
    pub fn verify(&self, keyid: &str, key: &VerifyingKey) -> Result<(), EnvelopeError> {
        let s = self
            .signatures
            .iter()
            .find(|s| s.keyid == keyid)
            .ok_or_else(|| EnvelopeError::NoSignatureByKey(keyid.to_string()))?;
        key.verify_strict(&self.pae(), &Signature::from_bytes(&s.sig))
            .map_err(|_| EnvelopeError::BadSignature(keyid.to_string()))
    }
}

/// Plain verification helper used by the verifier when only raw bytes are at hand.
pub fn verify_raw(key: &VerifyingKey, message: &[u8], sig: &[u8; 64]) -> bool {
    key.verify(message, &Signature::from_bytes(sig)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn pae_matches_the_spec_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn roundtrip_and_tamper() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let mut env = Envelope {
            payload_type: "application/vnd.lap.receipt.v1+json".into(),
            payload: br#"{"a":1}"#.to_vec(),
            signatures: vec![],
        };
        let sig = key.sign(&env.pae()).to_bytes();
        env.signatures.push(EnvelopeSignature {
            keyid: "k1".into(),
            sig,
        });
        let json = env.to_json();
        assert!(json.starts_with(r#"{"payload":"eyJhIjoxfQ==","payloadType":"#));
        let back = Envelope::from_json(json.as_bytes()).unwrap();
        assert_eq!(back, env);
        back.verify("k1", &key.verifying_key()).unwrap();
        assert_eq!(
            back.verify("k2", &key.verifying_key()),
            Err(EnvelopeError::NoSignatureByKey("k2".into()))
        );
        let mut bad = back.clone();
        bad.payload[2] ^= 1;
        assert!(matches!(
            bad.verify("k1", &key.verifying_key()),
            Err(EnvelopeError::BadSignature(_))
        ));
        assert!(Envelope::from_json(b"{}").is_err());
        assert!(
            Envelope::from_json(br#"{"payload":"","payloadType":"x","signatures":[]}"#).is_err()
        );
        assert!(Envelope::from_json(
            br#"{"payload":"","payloadType":"x","signatures":[{"keyid":"a","sig":"AAAA"}]}"#
        )
        .is_err());
    }
}
