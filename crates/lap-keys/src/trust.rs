//! The trust document: the gateway's public keys, as it publishes them.
//!
//! Served at `/v1/keys` and packed as `trust.json` in every audit pack; auditors keep a copy
//! (the "trust file") and give it to `lap-verify`. One JSON object, compact, fields in this
//! order:
//!
//! ```json
//! {"active_kid": "k2",
//!  "keys": [{"key_id": "k1", "alg": "Ed25519", "public_key_hex": "<64 hex>",
//!            "status": "retired", "not_before": null, "not_after": null,
//!            "retired_at": "2026-01-01T00:00:00Z", "revoked_at": null}, …],
//!  "log": {"origin": "lap-gateway/gw-1", "vkey": "<note verifier key>"}}
//! ```
//!
//! * `keys`: every receipt key of the keyset, active or not, because receipts signed by a
//!   retired key must stay verifiable. `status` is `active` (the key signing now), `valid`,
//!   `retired` (stopped signing; earlier signatures stay valid) or `revoked` (compromised:
//!   signatures from `revoked_at` on are invalid). The times are the keyset's, RFC 3339, or
//!   `null`.
//! * `log`: the transparency log's origin and its checkpoint key in Go `note` verifier
//!   format (`origin+<8 hex>+base64(0x01 ‖ key)`); `null` when the gateway runs without
//!   evidence.
//!
//! The gateway writes it with [`TrustDocument::new`]; `lap-verify` reads it with serde into
//! the same types, so both agree on every field. Reading requires every field above (the
//! times and `log` may be `null`) and refuses values of the wrong type; fields it does not know
//! are ignored, so a trust file from a newer gateway still reads.

use crate::{KeyStatus, Keyset};
use serde::{Deserialize, Serialize};

/// The `/v1/keys` document; see the module docs for the format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustDocument {
    pub active_kid: String,
    pub keys: Vec<PublishedKey>,
    pub log: Option<LogKey>,
}

/// One receipt key, public part and lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedKey {
    pub key_id: String,
    pub alg: Alg,
    pub public_key_hex: String,
    pub status: KeyStatus,
    pub not_before: Option<String>,
    pub not_after: Option<String>,
    pub retired_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// Signature algorithm of a published key: Ed25519 is the only one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Alg {
    Ed25519,
}

/// The transparency log a gateway appends to, and the key its checkpoints are signed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogKey {
    pub origin: String,
    /// The checkpoint verifier key, in Go `note` format.
    pub vkey: String,
}

impl TrustDocument {
    /// The document for `keyset`: every key with its lifecycle, the active one marked
    /// `active`, and the log when there is one.
    pub fn new(keyset: &Keyset, log: Option<LogKey>) -> Self {
        let keys = keyset
            .keys()
            .map(|k| {
                let l = &k.lifecycle;
                PublishedKey {
                    key_id: k.kid.clone(),
                    alg: Alg::Ed25519,
                    public_key_hex: k.public_key_hex(),
                    status: if k.kid == keyset.active_kid() {
                        KeyStatus::Active
                    } else {
                        l.status()
                    },
                    not_before: l.not_before.clone(),
                    not_after: l.not_after.clone(),
                    retired_at: l.retired_at.clone(),
                    revoked_at: l.revoked_at.clone(),
                }
            })
            .collect();
        TrustDocument {
            active_kid: keyset.active_kid().to_string(),
            keys,
            log,
        }
    }

    /// Reads a document (types and required fields; what the keys are worth is the
    /// verifier's business).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The document as served: compact JSON.
    pub fn to_json(&self) -> String {
        // Serialising strings, vectors and unit enums cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_keyset, KeySource};

    const SEED: &str = "2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f";

    fn keyset() -> Keyset {
        let p = hex::encode(
            crate::parse_seed_hex(&"11".repeat(32))
                .unwrap()
                .verifying_key()
                .as_bytes(),
        );
        parse_keyset(
            &format!(
                r#"{{"active_kid":"k2","keys":{{
                    "k1":{{"public_key_hex":"{p}","retired_at":"2026-01-01T00:00:00Z"}},
                    "k2":{{"seed_hex":"{SEED}","not_before":"2020-01-01T00:00:00Z"}}}}}}"#
            ),
            KeySource::KeysetJson,
        )
        .unwrap()
    }

    /// The field names and their order are the documented format (`docs/api.md`).
    #[test]
    fn writes_the_documented_shape() {
        let ks = keyset();
        let log = LogKey {
            origin: "lap.test/gw".into(),
            vkey: "lap.test/gw+01234567+AQ==".into(),
        };
        let json = TrustDocument::new(&ks, Some(log)).to_json();
        let k1 = hex::encode(ks.get("k1").unwrap().public_key.as_bytes());
        let k2 = ks.active().public_key_hex();
        assert_eq!(
            json,
            format!(
                concat!(
                    r#"{{"active_kid":"k2","keys":["#,
                    r#"{{"key_id":"k1","alg":"Ed25519","public_key_hex":"{k1}","status":"retired","#,
                    r#""not_before":null,"not_after":null,"retired_at":"2026-01-01T00:00:00Z","revoked_at":null}},"#,
                    r#"{{"key_id":"k2","alg":"Ed25519","public_key_hex":"{k2}","status":"active","#,
                    r#""not_before":"2020-01-01T00:00:00Z","not_after":null,"retired_at":null,"revoked_at":null}}],"#,
                    r#""log":{{"origin":"lap.test/gw","vkey":"lap.test/gw+01234567+AQ=="}}}}"#
                ),
                k1 = k1,
                k2 = k2
            )
        );
        assert!(!json.contains(SEED));
        let without_log = TrustDocument::new(&ks, None).to_json();
        assert!(without_log.ends_with(r#""log":null}"#), "{without_log}");
    }

    #[test]
    fn reads_what_it_writes_and_refuses_wrong_types() {
        let doc = TrustDocument::new(
            &keyset(),
            Some(LogKey {
                origin: "o".into(),
                vkey: "v".into(),
            }),
        );
        assert_eq!(TrustDocument::parse(&doc.to_json()).unwrap(), doc);
        let mut v: serde_json::Value = serde_json::from_str(&doc.to_json()).unwrap();
        v["future_field"] = 1.into();
        assert_eq!(TrustDocument::parse(&v.to_string()).unwrap(), doc);
        for (path, bad) in [
            ("/keys/0/not_after", serde_json::json!(5)),
            ("/keys/0/alg", serde_json::json!("RSA")),
            ("/keys/0/status", serde_json::json!("unknown")),
            ("/keys/0/key_id", serde_json::Value::Null),
            ("/keys", serde_json::json!({})),
            ("/log/vkey", serde_json::json!(["v"])),
        ] {
            let mut w = v.clone();
            *w.pointer_mut(path).unwrap() = bad;
            assert!(TrustDocument::parse(&w.to_string()).is_err(), "{path}");
        }
        let mut w = v.clone();
        w["keys"][0]
            .as_object_mut()
            .unwrap()
            .remove("public_key_hex");
        assert!(TrustDocument::parse(&w.to_string()).is_err());
    }
}
