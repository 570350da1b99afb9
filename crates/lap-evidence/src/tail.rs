//! What start-up does with the entries after the last durable checkpoint.
//!
//! Nothing beyond the last durable signed checkpoint may be trusted — or signed over by the
//! next checkpoint — without verification: otherwise a record appended to the log file by
//! someone with write access to the disk would be covered by the next signed checkpoint and
//! become evidence. The tail is read entry by entry and must be
//!
//! 1. zero or more **DSSE envelopes** (`per_receipt` receipts, acknowledged as soon as they
//!    were durable, possibly seen by a tool): each must verify under a trusted receipt key and
//!    name this log and its own index. They are kept;
//! 2. then zero or more **batched leaves** (version 2 receipts). A batched call is
//!    acknowledged only once a durable checkpoint covers its leaf, so these were never
//!    acknowledged: no tool saw their calls and no agent holds their proof. They are
//!    discarded, and their indices are used again.
//!
//! Anything else — an envelope that does not verify, an entry that is not a receipt, an
//! envelope after a leaf (no writer produces that order) — refuses start-up: the log was
//! changed by something other than the gateway, and an operator must look.
//!
//! [`Ledger::open`](crate::Ledger::open) applies the plan; `lap-gateway check-config` reports
//! it for a log read without changing it. Both call [`plan_tail`].

use ed25519_dalek::VerifyingKey;
use lap_receipt::{Entry, ReceiptError};
use std::collections::BTreeMap;

/// What to do with a log's tail (entries `[checkpointed, size)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailPlan {
    /// Envelopes that verified and stay, right after the checkpoint.
    pub kept: u64,
    /// The first index to discard (a batched leaf never acknowledged) and how many entries
    /// from there to the end; `None` when nothing is discarded.
    pub discard: Option<(u64, u64)>,
}

/// Why the tail cannot be trusted (start-up is refused).
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("entry {index} after the last checkpoint is not a receipt: {source}")]
    NotAReceipt {
        index: u64,
        #[source]
        source: ReceiptError,
    },
    #[error("entry {index} after the last checkpoint is an envelope that does not verify: {why}")]
    Unverified { index: u64, why: String },
    #[error("entry {index} after the last checkpoint is a signed envelope that follows an unacknowledged batched entry (no writer produces that order)")]
    EnvelopeAfterLeaf { index: u64 },
    #[error("entry {index} cannot be read: {source}")]
    Read {
        index: u64,
        #[source]
        source: lap_tlog::store::StoreError,
    },
}

/// Plans the tail: `entries` yields `(index, bytes)` for every entry after the last durable
/// checkpoint, in order; `keys` are the receipt keys trusted to have signed envelopes.
pub fn plan_tail<I, E>(
    entries: I,
    origin: &str,
    keys: &BTreeMap<String, VerifyingKey>,
) -> Result<TailPlan, TailError>
where
    I: IntoIterator<Item = Result<(u64, E), TailError>>,
    E: AsRef<[u8]>,
{
    let mut plan = TailPlan {
        kept: 0,
        discard: None,
    };
    for item in entries {
        let (index, bytes) = item?;
        let entry = lap_receipt::open_entry(bytes.as_ref())
            .map_err(|source| TailError::NotAReceipt { index, source })?;
        match entry {
            Entry::Leaf(_) => match &mut plan.discard {
                Some((_, n)) => *n += 1,
                None => plan.discard = Some((index, 1)),
            },
            Entry::Envelope { .. } if plan.discard.is_some() => {
                return Err(TailError::EnvelopeAfterLeaf { index })
            }
            Entry::Envelope { envelope, receipt } => {
                let unverified = |why: String| TailError::Unverified { index, why };
                let kid = &receipt.signer.key_id;
                let key = keys
                    .get(kid)
                    .ok_or_else(|| unverified(format!("signed by {kid:?}, not a trusted key")))?;
                if envelope.signatures.len() != 1 {
                    return Err(unverified("more than one signature".into()));
                }
                envelope
                    .verify(kid, key)
                    .map_err(|e| unverified(e.to_string()))?;
                if receipt.log.origin != origin || receipt.log.index != index {
                    return Err(unverified(format!(
                        "it was signed for {}#{}",
                        receipt.log.origin, receipt.log.index
                    )));
                }
                plan.kept += 1;
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use lap_receipt::*;

    const ORIGIN: &str = "lap.test/tail";

    fn receipt(index: u64, version: u32) -> Receipt {
        Receipt {
            version,
            receipt_id: ReceiptIds::new(ORIGIN).id(index),
            kind: Kind::Denial,
            issued_at: "2026-11-23T00:00:00.000000Z".into(),
            gateway_id: "gw".into(),
            request_id: format!("r{index}"),
            principal: None,
            call: Call {
                tool: None,
                method: "GET".into(),
                path: "/".into(),
                query_sha256: None,
                body_sha256: None,
                body_bytes: 0,
                args_sha256: None,
                session: None,
            },
            decision: Decision {
                outcome: Outcome::Deny,
                code: "API_KEY_REQUIRED".into(),
                policy_ids: vec![],
                policy_digest: "0".repeat(64),
            },
            completion: None,
            aggregate: None,
            signer: lap_receipt::Signer {
                key_id: "k".into(),
                mode: "in_process".into(),
                ephemeral: false,
            },
            log: LogPosition {
                origin: ORIGIN.into(),
                index,
            },
            blinder: (version == LEAF_VERSION).then(|| "ab".repeat(16)),
        }
    }

    fn envelope(index: u64, key: &SigningKey) -> Vec<u8> {
        let r = receipt(index, RECEIPT_VERSION);
        let sig = key.sign(&r.envelope().pae()).to_bytes();
        r.signed("k", sig).to_json().into_bytes()
    }

    fn leaf(index: u64) -> Vec<u8> {
        receipt(index, LEAF_VERSION).to_payload()
    }

    /// Entries after the checkpoint: (index, bytes).
    type Tail = Vec<(u64, Vec<u8>)>;

    fn plan(entries: Tail, keys: &BTreeMap<String, VerifyingKey>) -> Result<TailPlan, TailError> {
        plan_tail(entries.into_iter().map(Ok), ORIGIN, keys)
    }

    #[test]
    fn envelopes_that_verify_stay_and_leaves_go() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let keys = BTreeMap::from([("k".to_string(), key.verifying_key())]);
        let tail = vec![
            (5, envelope(5, &key)),
            (6, envelope(6, &key)),
            (7, leaf(7)),
            (8, leaf(8)),
        ];
        assert_eq!(
            plan(tail, &keys).unwrap(),
            TailPlan {
                kept: 2,
                discard: Some((7, 2))
            }
        );
        assert_eq!(
            plan(vec![], &keys).unwrap(),
            TailPlan {
                kept: 0,
                discard: None
            }
        );
    }

    #[test]
    fn anything_unverified_refuses() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let keys = BTreeMap::from([("k".to_string(), key.verifying_key())]);
        let stranger = SigningKey::from_bytes(&[4; 32]);
        let cases: Vec<(Tail, &str)> = vec![
            (vec![(5, envelope(5, &stranger))], "does not verify"),
            (vec![(5, envelope(6, &key))], "signed for"),
            (vec![(5, b"forged record".to_vec())], "not a receipt"),
            (vec![(5, leaf(5)), (6, envelope(6, &key))], "follows"),
        ];
        for (tail, why) in cases {
            let err = plan(tail, &keys).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        assert!(plan(vec![(5, envelope(5, &key))], &BTreeMap::new())
            .unwrap_err()
            .to_string()
            .contains("not a trusted key"));
    }
}
