//! C2SP `tlog-proof@v1`: an entry's inclusion proof and the checkpoint it leads to, as one
//! self-contained text that anyone holding the log's public key can check offline.
//!
//! This is what a call gets with its receipt when the gateway signs log states rather than
//! each receipt: the receipt (the leaf), its index, the audit path, and the signed checkpoint
//! of the batch that carried it. One definition serves the writer (the sequencer), the
//! readers (`lap-verify receipt`, the end-to-end tests) and the documentation
//! (`docs/receipts.md`):
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! [extra <base64>]                       (optional, never trusted; the gateway writes none)
//! index <decimal, no leading zeros>
//! <base64 hash>                          zero or more: the RFC 6962 audit path, leaf's
//! …                                      sibling first, the root's child last
//!
//! <the checkpoint, a C2SP signed note, verbatim>
//! ```
//!
//! The proof is only as good as the checkpoint's signature: [`TlogProof::verify`] opens the
//! note with the trusted log key before it looks at the path, and checks that the path leads
//! from the given leaf hash at `index` to that checkpoint's root.

use crate::merkle::{verify_inclusion, Hash};
use crate::note::{self, Checkpoint, NoteError, NoteVerifier};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// The first line of every proof.
pub const HEADER: &str = "c2sp.org/tlog-proof@v1";

/// Largest proof accepted when parsing: a 64-level path and a checkpoint with many
/// signatures fit well below it.
pub const MAX_PROOF_BYTES: usize = 64 * 1024;

/// Most audit-path hashes a proof can need (a tree of at most 2^64 leaves).
const MAX_PATH: usize = 64;

/// A parsed or freshly built proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogProof {
    /// Opaque, unauthenticated extra data (`extra` line); `None` when absent.
    pub extra: Option<Vec<u8>>,
    /// The entry's zero-based index in the log.
    pub index: u64,
    /// The RFC 6962 audit path for `index` in the checkpoint's tree, leaf's sibling first.
    pub path: Vec<Hash>,
    /// The signed checkpoint note, byte for byte.
    pub checkpoint: String,
}

/// Why a proof is not acceptable. Codes are stable ([`ProofError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("malformed tlog-proof: {0}")]
    Malformed(&'static str),
    #[error("the proof's checkpoint: {0}")]
    Checkpoint(#[source] NoteError),
    #[error("the audit path does not lead from the entry at index {index} to the root of the checkpoint (tree size {size})")]
    NotIncluded { index: u64, size: u64 },
}

impl ProofError {
    pub fn code(&self) -> &'static str {
        match self {
            ProofError::Malformed(_) => "PROOF_MALFORMED",
            ProofError::Checkpoint(NoteError::Unverified(_)) => "CHECKPOINT_SIGNATURE",
            ProofError::Checkpoint(_) => "CHECKPOINT_MALFORMED",
            ProofError::NotIncluded { .. } => "INCLUSION_PROOF_FAILED",
        }
    }
}

impl TlogProof {
    /// The proof as text (see the module docs), ending with the checkpoint's final newline.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(64 + self.path.len() * 45 + self.checkpoint.len());
        out.push_str(HEADER);
        out.push('\n');
        if let Some(extra) = &self.extra {
            out.push_str("extra ");
            out.push_str(&STANDARD.encode(extra));
            out.push('\n');
        }
        out.push_str("index ");
        out.push_str(&self.index.to_string());
        out.push('\n');
        for h in &self.path {
            out.push_str(&STANDARD.encode(h));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint);
        out
    }

    /// Parses a proof. The checkpoint must be a well-formed signed note holding a
    /// `tlog-checkpoint`; its signatures are checked by [`TlogProof::verify`].
    pub fn parse(text: &str) -> Result<Self, ProofError> {
        if text.len() > MAX_PROOF_BYTES {
            return Err(ProofError::Malformed("larger than 64 KiB"));
        }
        let mut rest = text;
        let mut line = || -> Result<&str, ProofError> {
            let (l, r) = rest
                .split_once('\n')
                .ok_or(ProofError::Malformed("ends before the checkpoint"))?;
            rest = r;
            Ok(l)
        };
        if line()? != HEADER {
            return Err(ProofError::Malformed(
                "the first line must be c2sp.org/tlog-proof@v1",
            ));
        }
        let mut next = line()?;
        let mut extra = None;
        if let Some(b64) = next.strip_prefix("extra ") {
            extra = Some(
                STANDARD
                    .decode(b64)
                    .map_err(|_| ProofError::Malformed("extra is not base64"))?,
            );
            next = line()?;
        }
        let digits = next
            .strip_prefix("index ")
            .ok_or(ProofError::Malformed("expected the index line"))?;
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return Err(ProofError::Malformed(
                "the index must be a decimal without leading zeros",
            ));
        }
        let index = digits
            .parse()
            .map_err(|_| ProofError::Malformed("the index is out of range"))?;
        let mut path = Vec::new();
        loop {
            let l = line()?;
            if l.is_empty() {
                break;
            }
            if path.len() == MAX_PATH {
                return Err(ProofError::Malformed("more than 64 path hashes"));
            }
            let h: Hash = STANDARD
                .decode(l)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or(ProofError::Malformed(
                    "a path hash is not base64 of 32 bytes",
                ))?;
            path.push(h);
        }
        let checkpoint = rest.to_string();
        Checkpoint::from_note_unverified(&checkpoint).map_err(ProofError::Checkpoint)?;
        Ok(Self {
            extra,
            index,
            path,
            checkpoint,
        })
    }

    /// Checks the proof for the entry whose leaf hash is `leaf`: the checkpoint is signed by
    /// `log_key` (named after the log's origin, which the checkpoint must name too), and the
    /// path leads from `leaf` at `index` to its root. Returns the checkpoint.
    pub fn verify(&self, leaf: &Hash, log_key: &NoteVerifier) -> Result<Checkpoint, ProofError> {
        let body = note::open(&self.checkpoint, log_key).map_err(ProofError::Checkpoint)?;
        let cp = Checkpoint::parse(body).map_err(ProofError::Checkpoint)?;
        if cp.origin != log_key.name {
            return Err(ProofError::Checkpoint(NoteError::Checkpoint(
                "the origin is not the log key's name",
            )));
        }
        if !verify_inclusion(self.index, cp.size, leaf, &self.path, &cp.root) {
            return Err(ProofError::NotIncluded {
                index: self.index,
                size: cp.size,
            });
        }
        Ok(cp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{leaf_hash, Tree};
    use crate::note::NoteSignature;
    use ed25519_dalek::{Signer, SigningKey};

    const ORIGIN: &str = "example.com/fancylog";

    fn signed_checkpoint(tree: &Tree, size: u64, sk: &SigningKey) -> (String, NoteVerifier) {
        let v = NoteVerifier::new(ORIGIN, sk.verifying_key()).unwrap();
        let text = Checkpoint {
            origin: ORIGIN.into(),
            size,
            root: tree.root(size).unwrap(),
            extensions: vec![],
        }
        .to_text();
        let sig = NoteSignature {
            name: v.name.clone(),
            id: v.id,
            sig: sk.sign(text.as_bytes()).to_bytes().to_vec(),
        };
        (note::assemble(&text, &[sig]), v)
    }

    /// The example of the specification (c2sp.org/tlog-proof), with its elided witness
    /// signatures replaced by a real log signature: our reader takes it apart line by line
    /// and our writer puts it back together byte for byte.
    #[test]
    fn reads_and_writes_the_specification_example() {
        let sk = SigningKey::from_bytes(&[4; 32]);
        let tree = Tree::from_entries((0..3).map(|i| [i]));
        let (checkpoint, _) = signed_checkpoint(&tree, 3, &sk);
        let text = format!(
            "c2sp.org/tlog-proof@v1\n\
             extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6\n\
             index 73894\n\
             gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=\n\
             B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=\n\
             EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=\n\
             RoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=\n\
             AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=\n\
             \n\
             {checkpoint}"
        );
        let p = TlogProof::parse(&text).unwrap();
        assert_eq!(p.index, 73894);
        assert_eq!(p.path.len(), 5);
        assert_eq!(
            p.extra.as_deref(),
            Some(&b"age-v1.2.1-darwin-arm64.tar.gz"[..])
        );
        assert_eq!(p.checkpoint, checkpoint);
        assert_eq!(p.to_text(), text);
    }

    #[test]
    fn every_leaf_of_every_size_proves_and_nothing_else_does() {
        let sk = SigningKey::from_bytes(&[4; 32]);
        let entries: Vec<Vec<u8>> = (0u8..13).map(|i| vec![i; 3]).collect();
        let tree = Tree::from_entries(&entries);
        for size in 1..=13u64 {
            let (checkpoint, v) = signed_checkpoint(&tree, size, &sk);
            for index in 0..size {
                let proof = TlogProof {
                    extra: None,
                    index,
                    path: tree.inclusion_proof(index, size).unwrap(),
                    checkpoint: checkpoint.clone(),
                };
                let text = proof.to_text();
                let back = TlogProof::parse(&text).unwrap();
                assert_eq!(back, proof);
                let leaf = leaf_hash(&entries[index as usize]);
                assert_eq!(back.verify(&leaf, &v).unwrap().size, size);
                let other = leaf_hash(b"another entry");
                assert_eq!(
                    back.verify(&other, &v).unwrap_err().code(),
                    "INCLUSION_PROOF_FAILED"
                );
                if size > 1 {
                    let mut moved = back.clone();
                    moved.index = (index + 1) % size;
                    assert!(moved.verify(&leaf, &v).is_err(), "{index}/{size}");
                }
            }
        }
    }

    #[test]
    fn the_checkpoint_must_be_the_trusted_logs() {
        let sk = SigningKey::from_bytes(&[4; 32]);
        let tree = Tree::from_entries([b"a", b"b"]);
        let (checkpoint, v) = signed_checkpoint(&tree, 2, &sk);
        let proof = TlogProof {
            extra: None,
            index: 1,
            path: tree.inclusion_proof(1, 2).unwrap(),
            checkpoint,
        };
        let leaf = leaf_hash(b"b");
        let stranger =
            NoteVerifier::new(ORIGIN, SigningKey::from_bytes(&[5; 32]).verifying_key()).unwrap();
        assert_eq!(
            proof.verify(&leaf, &stranger).unwrap_err().code(),
            "CHECKPOINT_SIGNATURE"
        );
        // A root changed in the note breaks its signature.
        let mut forged = proof.clone();
        forged.checkpoint = forged.checkpoint.replacen("\n2\n", "\n3\n", 1);
        assert_eq!(
            forged.verify(&leaf, &v).unwrap_err().code(),
            "CHECKPOINT_SIGNATURE"
        );
        assert!(proof.verify(&leaf, &v).is_ok());
    }

    #[test]
    fn malformed_proofs_are_refused() {
        let sk = SigningKey::from_bytes(&[4; 32]);
        let tree = Tree::from_entries([b"a"]);
        let (cp, _) = signed_checkpoint(&tree, 1, &sk);
        let h = STANDARD.encode([1u8; 32]);
        for bad in [
            format!("c2sp.org/tlog-proof@v2\nindex 0\n\n{cp}"),
            format!("{HEADER}\nindex 01\n\n{cp}"),
            format!("{HEADER}\nindex -1\n\n{cp}"),
            format!("{HEADER}\nindex \n\n{cp}"),
            format!("{HEADER}\nindex 0\nAAAA\n\n{cp}"),
            format!("{HEADER}\nindex 0\n{h}\n"),
            format!("{HEADER}\nindex 0\n{h}\n\nnot a note\n"),
            format!("{HEADER}\nextra %%%\nindex 0\n\n{cp}"),
            format!("{HEADER}\n{h}\nindex 0\n\n{cp}"),
            format!("{HEADER}\nindex 0\n{}\n{cp}", format!("{h}\n").repeat(65)),
        ] {
            let err = TlogProof::parse(&bad).unwrap_err();
            assert!(
                matches!(err.code(), "PROOF_MALFORMED" | "CHECKPOINT_MALFORMED"),
                "{bad:?}: {err}"
            );
        }
        assert!(TlogProof::parse(&format!("{HEADER}\nindex 0\n\n{cp}")).is_ok());
    }
}
