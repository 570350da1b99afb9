//! The receipt payload.

use crate::dsse::{Envelope, EnvelopeError, EnvelopeSignature};
use crate::RECEIPT_PAYLOAD_TYPE;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Receipt payload format version carried in every receipt.
pub const RECEIPT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Decision,
    Completion,
    Denial,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
}

/// How the principal proved its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    pub agent_id: String,
    /// `api_key` today; `jwt` and `mtls` later.
    pub auth: String,
    /// Non-secret id of the credential (the key file's `id`).
    pub key_id: String,
    /// `sha256:` and the first 12 hex digits of the key's digest; never the key.
    pub key_hash_prefix: String,
}

/// What was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// `null` when the request never reached a known tool.
    pub tool: Option<String>,
    pub method: String,
    /// Normalised path below the tool (or the raw request path when no tool matched).
    pub path: String,
    /// SHA-256 of the raw query string, `null` when there is none (queries may carry secrets).
    pub query_sha256: Option<String>,
    /// SHA-256 of the exact request body bytes; `null` when the body was never read (the
    /// request was refused before that point).
    pub body_sha256: Option<String>,
    pub body_bytes: u64,
    /// SHA-256 of the parsed JSON arguments re-serialised compactly with sorted keys, `null`
    /// for non-JSON bodies.
    pub args_sha256: Option<String>,
}

/// What the gateway decided and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub outcome: Outcome,
    /// Stable code: `ALLOWED`, or the error code returned to the agent.
    pub code: String,
    /// Policies that determined the decision.
    pub policy_ids: Vec<String>,
    /// Digest of the schema and policy text in force.
    pub policy_digest: String,
}

/// What happened after forwarding (completion receipts only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    pub decision_receipt_id: String,
    pub decision_log_index: u64,
    /// HTTP status returned to the agent; 0 if none could be sent.
    pub status: u16,
    /// SHA-256 of the response body bytes as relayed to the agent.
    pub response_sha256: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: u64,
    /// `null` on success; otherwise the stable code of what went wrong.
    pub error_code: Option<String>,
}

/// Which key signed, and how.
/// `Default` is the unassigned value a draft carries until the sequencer signs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signer {
    pub key_id: String,
    /// `in_process`, `external` (one process per signature) or `coprocess`.
    pub mode: String,
    /// True when the key is ephemeral (development only): such receipts prove little.
    pub ephemeral: bool,
}

/// Where the receipt sits in the gateway's transparency log.
/// `Default` is the unassigned value a draft carries until the sequencer numbers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogPosition {
    pub origin: String,
    pub index: u64,
}

/// A receipt payload. Member order on the wire is the declaration order below.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub version: u32,
    pub receipt_id: String,
    pub kind: Kind,
    /// RFC 3339, UTC, microseconds: `2026-11-23T06:00:00.123456Z`.
    pub issued_at: String,
    pub gateway_id: String,
    pub request_id: String,
    /// `null` when the agent was not authenticated (then `decision.code` says why).
    pub principal: Option<Principal>,
    pub call: Call,
    pub decision: Decision,
    pub completion: Option<Completion>,
    pub signer: Signer,
    pub log: LogPosition,
}

/// Why a payload is not a receipt.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("payload is not a receipt: {0}")]
    Payload(String),
    #[error("unsupported receipt version {0}")]
    Version(u32),
}

impl Receipt {
    /// The exact payload bytes that get signed (compact JSON, declaration order).
    pub fn to_payload(&self) -> Vec<u8> {
        // Serialising these plain structs cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_payload(bytes: &[u8]) -> Result<Self, ReceiptError> {
        let r: Receipt =
            serde_json::from_slice(bytes).map_err(|e| ReceiptError::Payload(e.to_string()))?;
        if r.version != RECEIPT_VERSION {
            return Err(ReceiptError::Version(r.version));
        }
        Ok(r)
    }

    /// An unsigned envelope around this receipt; sign `envelope.pae()` and push the signature.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            payload_type: RECEIPT_PAYLOAD_TYPE.to_string(),
            payload: self.to_payload(),
            signatures: Vec::new(),
        }
    }

    /// Wraps a signature made over [`Envelope::pae`].
    pub fn signed(&self, keyid: &str, sig: [u8; 64]) -> Envelope {
        let mut env = self.envelope();
        env.signatures.push(EnvelopeSignature {
            keyid: keyid.to_string(),
            sig,
        });
        env
    }
}

/// Parses a receipt envelope, checking the payload type (signatures are checked separately,
/// against a trust file).
pub fn open(envelope_json: &[u8]) -> Result<(Envelope, Receipt), ReceiptError> {
    let env = Envelope::from_json(envelope_json)?;
    if env.payload_type != RECEIPT_PAYLOAD_TYPE {
        return Err(EnvelopeError::PayloadType {
            found: env.payload_type.clone(),
            expected: RECEIPT_PAYLOAD_TYPE.to_string(),
        }
        .into());
    }
    let r = Receipt::from_payload(&env.payload)?;
    Ok((env, r))
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};

    pub fn sample() -> Receipt {
        Receipt {
            version: RECEIPT_VERSION,
            receipt_id: "rcpt_01".into(),
            kind: Kind::Decision,
            issued_at: "2026-11-23T06:00:00.000001Z".into(),
            gateway_id: "gw-1".into(),
            request_id: "req-1".into(),
            principal: Some(Principal {
                agent_id: "agent-a".into(),
                auth: "api_key".into(),
                key_id: "k1".into(),
                key_hash_prefix: "sha256:0123456789ab".into(),
            }),
            call: Call {
                tool: Some("pay".into()),
                method: "POST".into(),
                path: "/send".into(),
                query_sha256: None,
                body_sha256: Some(sha256_hex(b"{}")),
                body_bytes: 2,
                args_sha256: Some(sha256_hex(b"{}")),
            },
            decision: Decision {
                outcome: Outcome::Allow,
                code: "ALLOWED".into(),
                policy_ids: vec!["p1".into()],
                policy_digest: "00".repeat(32),
            },
            completion: None,
            signer: Signer {
                key_id: "gateway".into(),
                mode: "in_process".into(),
                ephemeral: false,
            },
            log: LogPosition {
                origin: "lap.example/gw-1".into(),
                index: 7,
            },
        }
    }

    #[test]
    fn payload_roundtrip_is_byte_exact() {
        let r = sample();
        let p = r.to_payload();
        assert!(p.starts_with(br#"{"version":1,"receipt_id":"rcpt_01","kind":"decision""#));
        assert_eq!(Receipt::from_payload(&p).unwrap(), r);
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let env = r.envelope();
        let signed = r.signed("gateway", key.sign(&env.pae()).to_bytes());
        let (env2, r2) = open(signed.to_json().as_bytes()).unwrap();
        assert_eq!(r2, r);
        env2.verify("gateway", &key.verifying_key()).unwrap();
    }

    #[test]
    fn rejects_unknown_fields_and_versions() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_payload()).unwrap();
        v["extra"] = 1.into();
        assert!(Receipt::from_payload(v.to_string().as_bytes()).is_err());
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_payload()).unwrap();
        v["version"] = 2.into();
        assert!(matches!(
            Receipt::from_payload(v.to_string().as_bytes()),
            Err(ReceiptError::Version(2))
        ));
    }
}
