//! The rules a saved checkpoint imposes on the log it was saved next to.
//!
//! A checkpoint that was saved was also published (served, handed to auditors), so the log
//! must go on extending it: a restart that found a shorter or different log would silently
//! rewrite history. Before the log is trusted, its saved checkpoint must
//!
//! 1. be a `tlog-checkpoint` signed by the log key (a note that is not cannot be relied on:
//!    it is refused, not ignored);
//! 2. name the configured origin;
//! 3. cover no more entries than the log holds intact;
//! 4. have as its root the root of the log's first `size` entries.
//!
//! [`Ledger::open`](crate::Ledger::open) applies them at start-up and `lap-gateway
//! check-config` applies them to a log read without changing it; both go through
//! [`SavedCheckpoint`], so they cannot drift apart.

use lap_tlog::merkle::{Nodes, Tree};
use lap_tlog::note::{self, Checkpoint, NoteError, NoteVerifier};

/// Why a saved checkpoint and its log do not go together. The messages are the ones start-up
/// refuses with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Rule 1: the note is not signed by the log key, or not a checkpoint.
    #[error("saved checkpoint is unreadable or not signed by the log key: {0}")]
    Unverified(#[source] NoteError),
    /// Rules 2–4: the log does not continue what was published.
    #[error("the log does not continue the published checkpoint: {0}; refusing to start (restore the log or move it aside deliberately)")]
    Fork(#[source] Fork),
}

/// How a log fails to continue its saved checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fork {
    #[error("checkpoint origin {found:?} differs from the configured origin {configured:?}")]
    Origin { found: String, configured: String },
    #[error("the log holds {intact} intact entries but the checkpoint covers {covered}")]
    Truncated { intact: u64, covered: u64 },
    #[error("the first {size} entries no longer hash to the checkpoint root")]
    Root { size: u64 },
}

impl From<Fork> for CheckpointError {
    fn from(f: Fork) -> Self {
        CheckpointError::Fork(f)
    }
}

/// A saved checkpoint note that passed rules 1–2: signed by the log key, for this origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedCheckpoint {
    pub checkpoint: Checkpoint,
    /// The note exactly as saved.
    pub note: String,
}

impl SavedCheckpoint {
    /// Rules 1–2, which need only the note: the log itself is checked by
    /// [`SavedCheckpoint::check_log`]. Start-up needs the checkpoint's size before it opens the
    /// log (so that recovery never truncates entries the checkpoint covers), hence two steps.
    pub fn open(
        note: String,
        log_key: &NoteVerifier,
        origin: &str,
    ) -> Result<Self, CheckpointError> {
        let body = note::open(&note, log_key).map_err(CheckpointError::Unverified)?;
        let checkpoint = Checkpoint::parse(body).map_err(CheckpointError::Unverified)?;
        if checkpoint.origin != origin {
            return Err(Fork::Origin {
                found: checkpoint.origin,
                configured: origin.to_string(),
            }
            .into());
        }
        Ok(Self { checkpoint, note })
    }

    /// Rules 3–4: `log` (the tree of the log's intact entries) holds at least the checkpoint's
    /// entries, and the first of them hash to its root. The outer error is a failure to read
    /// the tree (the live log reads its older nodes from disk), the inner one the verdict.
    pub fn check_log<N: Nodes>(&self, log: &N) -> Result<Result<(), Fork>, N::Error> {
        let cp = &self.checkpoint;
        if log.size() < cp.size {
            return Ok(Err(Fork::Truncated {
                intact: log.size(),
                covered: cp.size,
            }));
        }
        let root = log.root(cp.size)?;
        Ok(if root == cp.root {
            Ok(())
        } else {
            Err(Fork::Root { size: cp.size })
        })
    }

    /// [`SavedCheckpoint::check_log`] for a tree held in memory (a log read whole), which
    /// cannot fail to be read.
    pub fn check_tree(&self, log: &Tree) -> Result<(), Fork> {
        // An in-memory tree fails only on a size it does not hold, which `check_log` rules
        // out before asking for a root.
        self.check_log(log).unwrap_or(Err(Fork::Root {
            size: self.checkpoint.size,
        }))
    }
}

/// The checkpoint a restart must continue: the saved `checkpoint` (which must pass rules
/// 1–2, or start-up is refused), or the last one of the history when that one is signed by
/// the log key for this origin and larger. The history is appended and synced *before*
/// `checkpoint` is replaced, so a crash between the two leaves the newer checkpoint only in
/// the history; it was signed over durable entries and must not be contradicted by a later
/// checkpoint of the same size (that would put a fork, signed by the log key, in the history).
pub fn durable_checkpoint(
    saved: Option<String>,
    history: &[String],
    log_key: &NoteVerifier,
    origin: &str,
) -> Result<Option<SavedCheckpoint>, CheckpointError> {
    let saved = saved
        .map(|text| SavedCheckpoint::open(text, log_key, origin))
        .transpose()?;
    let newer = history
        .last()
        .and_then(|text| SavedCheckpoint::open(text.clone(), log_key, origin).ok())
        .filter(|h| {
            saved
                .as_ref()
                .is_none_or(|s| h.checkpoint.size > s.checkpoint.size)
        });
    Ok(newer.or(saved))
}

/// All four rules at once, for a log whose entries were read whole (e.g.
/// `lap_tlog::store::read_only`): the checkpoint in `note` is signed by `log_key`, names
/// `origin`, and `log` continues it.
pub fn verify_saved_checkpoint(
    note: String,
    log_key: &NoteVerifier,
    origin: &str,
    log: &Tree,
) -> Result<SavedCheckpoint, CheckpointError> {
    let saved = SavedCheckpoint::open(note, log_key, origin)?;
    saved.check_tree(log)?;
    Ok(saved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use lap_tlog::note::NoteSignature;

    const ORIGIN: &str = "lap.test/rules";

    fn key() -> (SigningKey, NoteVerifier) {
        let sk = SigningKey::from_bytes(&[5; 32]);
        let v = NoteVerifier::new(ORIGIN, sk.verifying_key()).unwrap();
        (sk, v)
    }

    fn signed(cp: &Checkpoint, sk: &SigningKey, v: &NoteVerifier) -> String {
        let text = cp.to_text();
        let sig = NoteSignature {
            name: v.name.clone(),
            id: v.id,
            sig: sk.sign(text.as_bytes()).to_bytes().to_vec(),
        };
        note::assemble(&text, &[sig])
    }

    fn log(n: usize) -> Tree {
        Tree::from_entries((0..n).map(|i| format!("entry {i}")))
    }

    fn checkpoint(origin: &str, tree: &Tree, size: u64) -> Checkpoint {
        Checkpoint {
            origin: origin.into(),
            size,
            root: tree.root(size).unwrap(),
            extensions: vec![],
        }
    }

    #[test]
    fn each_rule_is_enforced() {
        let (sk, v) = key();
        let tree = log(10);
        let good = signed(&checkpoint(ORIGIN, &tree, 7), &sk, &v);
        let saved = verify_saved_checkpoint(good.clone(), &v, ORIGIN, &tree).unwrap();
        assert_eq!(saved.checkpoint.size, 7);
        assert_eq!(saved.note, good);
        // The log may have grown past it, but not shrunk below it.
        assert!(verify_saved_checkpoint(good.clone(), &v, ORIGIN, &log(7)).is_ok());
        assert_eq!(
            verify_saved_checkpoint(good.clone(), &v, ORIGIN, &log(6)),
            Err(CheckpointError::Fork(Fork::Truncated {
                intact: 6,
                covered: 7
            }))
        );
        // Rule 1: another key's signature.
        let other = SigningKey::from_bytes(&[6; 32]);
        let forged = signed(&checkpoint(ORIGIN, &tree, 7), &other, &v);
        assert!(matches!(
            verify_saved_checkpoint(forged, &v, ORIGIN, &tree),
            Err(CheckpointError::Unverified(NoteError::Unverified(_)))
        ));
        // Rule 2: another origin (signed by the right key under that name).
        let elsewhere = NoteVerifier::new("lap.test/other", sk.verifying_key()).unwrap();
        let moved = signed(&checkpoint("lap.test/other", &tree, 7), &sk, &elsewhere);
        let err = SavedCheckpoint::open(moved, &elsewhere, ORIGIN).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the log does not continue the published checkpoint: checkpoint origin \
             \"lap.test/other\" differs from the configured origin \"lap.test/rules\"; \
             refusing to start (restore the log or move it aside deliberately)"
        );
        // Rule 4: a different history of the same length.
        let rewritten = Tree::from_entries((0..10).map(|i| format!("other {i}")));
        let err = verify_saved_checkpoint(good, &v, ORIGIN, &rewritten).unwrap_err();
        assert_eq!(err, CheckpointError::Fork(Fork::Root { size: 7 }));
        assert!(err
            .to_string()
            .contains("the first 7 entries no longer hash to the checkpoint root"));
    }

    #[test]
    fn a_newer_checkpoint_only_in_the_history_is_the_durable_one() {
        let (sk, v) = key();
        let tree = log(10);
        let at = |n| signed(&checkpoint(ORIGIN, &tree, n), &sk, &v);
        let size = |c: Option<SavedCheckpoint>| c.map(|c| c.checkpoint.size);
        let history = vec![at(3), at(7)];
        assert_eq!(
            size(durable_checkpoint(Some(at(3)), &history, &v, ORIGIN).unwrap()),
            Some(7)
        );
        assert_eq!(
            size(durable_checkpoint(Some(at(7)), &history, &v, ORIGIN).unwrap()),
            Some(7)
        );
        assert_eq!(
            size(durable_checkpoint(None, &history, &v, ORIGIN).unwrap()),
            Some(7)
        );
        assert_eq!(
            size(durable_checkpoint(None, &[], &v, ORIGIN).unwrap()),
            None
        );
        // A history note that does not verify is no reason to go further than `checkpoint`.
        let other = SigningKey::from_bytes(&[6; 32]);
        let forged = vec![signed(&checkpoint(ORIGIN, &tree, 9), &other, &v)];
        assert_eq!(
            size(durable_checkpoint(Some(at(3)), &forged, &v, ORIGIN).unwrap()),
            Some(3)
        );
        // The saved checkpoint itself must verify.
        let bad = signed(&checkpoint(ORIGIN, &tree, 3), &other, &v);
        assert!(durable_checkpoint(Some(bad), &history, &v, ORIGIN).is_err());
    }
}
