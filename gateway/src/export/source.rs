//! What an export reads: a log, live (the running gateway's ledger) or on disk (read-only, so
//! `lap-gateway audit-pack` works while the gateway runs or after it stopped).

use lap_tlog::merkle::{Hash, Nodes, RangeError, Tree};
use lap_tlog::store::StoreError;
use std::borrow::Cow;

/// Why the log could not be read for an export.
#[derive(Debug, thiserror::Error)]
pub enum LogReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("record {index} at byte {offset} is damaged; verify the log with lap-verify")]
    Damaged { index: u64, offset: u64 },
    #[error("no entry {0}")]
    NoEntry(u64),
    #[error("entry {index} is not a receipt: {source}")]
    NotAReceipt {
        index: u64,
        #[source]
        source: lap_receipt::ReceiptError,
    },
    #[error("entry {index}: issued_at is not RFC 3339")]
    BadTime { index: u64 },
    #[error("entry {index}: {source}")]
    Entry {
        index: u64,
        #[source]
        source: lap_pack::PackError,
    },
    #[error(transparent)]
    Range(#[from] RangeError),
}

/// Read access to a log, live or on disk.
pub trait LogSource {
    /// The entry at `index` (a batched leaf or a receipt envelope).
    fn entry(&self, index: u64) -> Result<Cow<'_, [u8]>, LogReadError>;
    /// Every checkpoint note known (history and latest; order and duplicates do not matter).
    fn checkpoints(&self) -> Result<Vec<String>, LogReadError>;
    /// The multi-leaf inclusion proof of `indices` in the tree of the first `size` entries,
    /// and the consistency proof of each `(old, new)` step.
    fn proofs(
        &self,
        indices: &[u64],
        size: u64,
        steps: &[(u64, u64)],
    ) -> Result<Proofs, LogReadError>;
}

/// An inclusion proof and consistency proofs ([`LogSource::proofs`]).
pub type Proofs = (Vec<Hash>, Vec<Vec<Hash>>);

/// [`LogSource::proofs`] from any tree: the live log's (older nodes read from disk) or one
/// held in memory.
fn proofs_of<N: Nodes>(
    tree: &N,
    indices: &[u64],
    size: u64,
    steps: &[(u64, u64)],
) -> Result<Proofs, N::Error> {
    let inclusion = tree.multi_proof(indices, size)?;
    let consistency = steps
        .iter()
        .map(|&(old, new)| tree.consistency_proof(old, new))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((inclusion, consistency))
}

/// The running gateway's log.
pub struct LiveLog<'a>(pub &'a lap_evidence::Ledger);

impl LogSource for LiveLog<'_> {
    fn entry(&self, index: u64) -> Result<Cow<'_, [u8]>, LogReadError> {
        Ok(Cow::Owned(self.0.store().read(index)?))
    }
    fn checkpoints(&self) -> Result<Vec<String>, LogReadError> {
        let mut all = self.0.store().checkpoint_history()?;
        all.extend(self.0.checkpoint());
        Ok(all)
    }
    fn proofs(
        &self,
        indices: &[u64],
        size: u64,
        steps: &[(u64, u64)],
    ) -> Result<Proofs, LogReadError> {
        Ok(self
            .0
            .store()
            .with_tree(|t| proofs_of(t, indices, size, steps))?)
    }
}

/// A log directory read from disk, unchanged.
pub struct OfflineLog {
    log: lap_tlog::store::ReadOnlyLog,
    tree: Tree,
}

impl OfflineLog {
    pub fn open(dir: &std::path::Path) -> Result<Self, LogReadError> {
        let log = lap_tlog::store::read_only(dir)?;
        if let Some((index, offset)) = log.corrupt_at {
            return Err(LogReadError::Damaged { index, offset });
        }
        let tree = Tree::from_entries(&log.entries);
        Ok(Self { log, tree })
    }
}

impl LogSource for OfflineLog {
    fn entry(&self, index: u64) -> Result<Cow<'_, [u8]>, LogReadError> {
        self.log
            .entries
            .get(index as usize)
            .map(|e| Cow::Borrowed(e.as_slice()))
            .ok_or(LogReadError::NoEntry(index))
    }
    fn checkpoints(&self) -> Result<Vec<String>, LogReadError> {
        let mut all = self.log.checkpoints.clone();
        all.extend(self.log.checkpoint.clone());
        Ok(all)
    }
    fn proofs(
        &self,
        indices: &[u64],
        size: u64,
        steps: &[(u64, u64)],
    ) -> Result<Proofs, LogReadError> {
        Ok(proofs_of(&self.tree, indices, size, steps)?)
    }
}
