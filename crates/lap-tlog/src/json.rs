//! The JSON forms of proofs, as the gateway's admin plane serves them and auditors read them.
//!
//! One definition for writer and reader: the gateway answers `/v1/log/proof/inclusion` with an
//! [`InclusionProofJson`] and `/v1/log/proof/consistency` with a [`ConsistencyProofJson`];
//! `lap-verify receipt --proof` reads the former. Hashes are standard base64 (with padding) of
//! the 32-byte SHA-256 values, in the order RFC 6962 defines for the proof. Unknown fields are
//! refused when reading, so a proof cannot carry something a reader would silently ignore.

use crate::merkle::Hash;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// An RFC 6962 audit path for the leaf at `index` in the tree of `tree_size` leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProofJson {
    pub index: u64,
    pub tree_size: u64,
    /// The root the path leads to (informative: a verifier takes the root from a checkpoint).
    pub root_hash: String,
    /// The leaf hash at `index` (informative), `null` when the leaf is beyond the tree.
    pub leaf_hash: Option<String>,
    pub hashes: Vec<String>,
}

/// An RFC 6962 consistency proof between the trees of `old_size` and `new_size` leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProofJson {
    pub old_size: u64,
    pub new_size: u64,
    pub old_root: String,
    pub new_root: String,
    pub hashes: Vec<String>,
}

/// One hash as it is written in JSON.
pub fn encode_hash(hash: &Hash) -> String {
    B64.encode(hash)
}

/// Hashes as they are written in JSON.
pub fn encode_hashes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(encode_hash).collect()
}

/// Hashes read from JSON; `None` if any is not base64 of exactly 32 bytes.
pub fn decode_hashes(hashes: &[String]) -> Option<Vec<Hash>> {
    hashes
        .iter()
        .map(|h| B64.decode(h).ok()?.try_into().ok())
        .collect()
}

impl InclusionProofJson {
    /// The audit path, decoded; `None` if a hash is malformed.
    pub fn path(&self) -> Option<Vec<Hash>> {
        decode_hashes(&self.hashes)
    }
}

impl ConsistencyProofJson {
    /// The proof, decoded; `None` if a hash is malformed.
    pub fn path(&self) -> Option<Vec<Hash>> {
        decode_hashes(&self.hashes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{leaf_hash, verify_inclusion, Tree};

    #[test]
    fn an_inclusion_proof_survives_its_json_form() {
        let mut tree = Tree::new();
        for i in 0u8..7 {
            tree.push(leaf_hash(&[i]));
        }
        let path = tree.inclusion_proof(3, 7).unwrap();
        let root = tree.root(7).unwrap();
        let doc = InclusionProofJson {
            index: 3,
            tree_size: 7,
            root_hash: encode_hash(&root),
            leaf_hash: tree.leaf(3).map(|l| encode_hash(&l)),
            hashes: encode_hashes(&path),
        };
        let text = serde_json::to_string(&doc).unwrap();
        let back: InclusionProofJson = serde_json::from_str(&text).unwrap();
        assert_eq!(back, doc);
        let path = back.path().unwrap();
        assert!(verify_inclusion(3, 7, &leaf_hash(&[3]), &path, &root));
    }

    #[test]
    fn malformed_proofs_are_refused() {
        let extra =
            r#"{"index":0,"tree_size":1,"root_hash":"","leaf_hash":null,"hashes":[],"x":1}"#;
        assert!(serde_json::from_str::<InclusionProofJson>(extra).is_err());
        assert_eq!(decode_hashes(&["AAAA".into()]), None);
        assert_eq!(decode_hashes(&["not base64!".into()]), None);
        assert_eq!(
            decode_hashes(&[encode_hash(&[7u8; 32])]),
            Some(vec![[7u8; 32]])
        );
    }
}
