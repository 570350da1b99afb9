//! Issuing evidence: every receipt gets its log index, becomes durable, and is covered by a
//! signature, in order — before the call it describes may go on.
//!
//! [`Ledger`] owns the transparency log. A request hands it a [`Draft`] (a receipt without
//! id, signer and log position) and waits for an [`Issued`] receipt. Two modes
//! ([`Mode`]), chosen at start-up; a log may hold entries of both kinds:
//!
//! * **batched** (default, [`batched`]): signs *log states*, not receipts. The sequencer takes
//!   every draft waiting (up to [`MAX_BATCH`]), numbers them, names them after their position,
//!   adds a random blinder, computes the tree with the batch appended and has its checkpoint
//!   signed — by the log key and, through the same fail-closed seam as ever, by the receipt
//!   signer: one note, two signature lines, one external signature per batch. Only then are
//!   the entries written and synced, then the checkpoint saved and synced, then the calls
//!   released, each with a C2SP `tlog-proof` to that checkpoint.
//! * **per_receipt** ([`per_receipt`]): today's DSSE envelope per receipt, signed by the
//!   sequencer thread while a writer thread appends the previous batch; checkpoints (log key
//!   only) every `checkpoint_every` entries or `checkpoint_interval`.
//!
//! Invariants (both modes unless said; tested in `tests/ledger.rs` and `tests/crash.rs`):
//!
//! 1. An [`Issued`] is returned only once its entry is durable — and, batched, once a durable
//!    checkpoint signed by both keys covers it. No call is forwarded before that.
//! 2. No checkpoint is served ([`Ledger::checkpoint`]) or returned before its entries and
//!    itself are durable: signatures exist only in memory until then.
//! 3. Batched: a signer failure (timeout, crash, garbage, another key) drops the whole batch
//!    before anything is written — every call of it is refused with the signer's code, the
//!    in-memory tree never held it, and the next batch takes the same indices. The log never
//!    claims those calls were allowed. (Per receipt: that receipt is refused and the rest of
//!    its batch renumbered.)
//! 4. After a crash at any point, [`Ledger::open`] finds a log that extends its durable
//!    checkpoint ([`checkpoint`]), keeps the verified envelopes after it and discards the
//!    never-acknowledged batched tail ([`tail`]); no acknowledged index is ever reused.
//!
//! A failed append or checkpoint save stops issuing until restart (the file state after an
//! I/O error is not worth trusting); the calls concerned are refused.

mod batched;
mod checkpoint;
mod per_receipt;
mod tail;

pub use checkpoint::{
    durable_checkpoint, verify_saved_checkpoint, CheckpointError, Fork, SavedCheckpoint,
};
pub use tail::{plan_tail, TailError, TailPlan};

use arc_swap::ArcSwap;
use ed25519_dalek::VerifyingKey;
use lap_receipt::{Receipt, ReceiptIds};
use lap_signing::{SignError, Signer};
use lap_tlog::merkle::Hash;
use lap_tlog::note::{Checkpoint, NoteError, NoteVerifier};
use lap_tlog::store::{LogStore, Recovery, StoreError};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Most drafts taken into one batch. A slow signer makes batches grow up to this size, so one
/// signature covers more calls the slower it is.
pub const MAX_BATCH: usize = 4096;

/// A receipt waiting for its id, signer and log position.
pub type Draft = Receipt;

/// How receipts are made authentic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One checkpoint per batch, signed by the log key and the receipt signer; receipts are
    /// bare leaves (version 2) with a `tlog-proof` each.
    Batched,
    /// One DSSE envelope per receipt (version 1), signed by the receipt signer.
    PerReceipt,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Batched => "batched",
            Mode::PerReceipt => "per_receipt",
        }
    }
}

/// A durable, covered receipt.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Derived from the index ([`ReceiptIds`]).
    pub receipt_id: String,
    pub index: u64,
    /// The log entry exactly as logged: a DSSE envelope (per receipt) or the compact
    /// version 2 payload (batched).
    pub entry: Arc<str>,
    /// RFC 6962 leaf hash of `entry`.
    pub leaf_hash: Hash,
    /// Batched only: the C2SP `tlog-proof@v1` text proving `entry` at `index` under the
    /// checkpoint of its batch (signed by the log key and the receipt key).
    pub proof: Option<Arc<str>>,
}

/// Why no receipt was issued. Codes are stable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EvidenceError {
    #[error(transparent)]
    Signer(#[from] SignError),
    /// This batch's append failed (shared by every receipt of the batch).
    #[error("the receipt log refused the append: {0}")]
    Log(#[source] Arc<StoreError>),
    /// The batch's entries are durable but its checkpoint could not be saved.
    #[error("the batch's checkpoint could not be saved: {0}")]
    Checkpoint(#[source] Arc<StoreError>),
    /// An earlier append failed: the indices handed out since then are void, so nothing more
    /// is appended until a restart.
    #[error("the receipt log refused the append: an earlier append failed; restart after fixing the log storage")]
    LogBroken,
    /// The receipt does not fit in a log entry.
    #[error("the receipt is {0} bytes, more than a log entry holds")]
    TooLarge(usize),
    /// No randomness for the blinders.
    #[error("no system randomness for the receipts' blinders: {0}")]
    Randomness(String),
    #[error("the evidence sequencer is not running")]
    Stopped,
}

impl EvidenceError {
    pub fn code(&self) -> &'static str {
        match self {
            EvidenceError::Signer(e) => e.code(),
            EvidenceError::Log(_)
            | EvidenceError::Checkpoint(_)
            | EvidenceError::LogBroken
            | EvidenceError::TooLarge(_) => "LOG_APPEND_FAILED",
            EvidenceError::Randomness(_) | EvidenceError::Stopped => "EVIDENCE_UNAVAILABLE",
        }
    }
}

/// Why the ledger could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The saved checkpoint is not the log key's, or the log does not continue it.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Something after the last checkpoint cannot be trusted.
    #[error("{0}; refusing to start: nothing beyond the last durable signed checkpoint may be trusted without verification")]
    Tail(#[from] TailError),
    /// The origin cannot name a note key.
    #[error("log key: {0}")]
    Key(#[source] NoteError),
}

/// Ledger settings.
#[derive(Clone)]
pub struct Settings {
    pub origin: String,
    pub mode: Mode,
    /// Per receipt only: a checkpoint every this many entries…
    pub checkpoint_every: u64,
    /// …or after this long, whichever comes first.
    pub checkpoint_interval: Duration,
    /// Receipt keys (key id → public key) trusted to have signed the envelopes found after
    /// the last checkpoint at start-up ([`tail`]).
    pub tail_keys: BTreeMap<String, VerifyingKey>,
}

struct Job {
    draft: Draft,
    reply: oneshot::Sender<Result<Issued, EvidenceError>>,
}

/// Hooks for metrics, so this crate stays free of a metrics library.
pub trait Observer: Send + Sync {
    /// One signature by the receipt signer (per receipt: per receipt; batched: per batch).
    fn signed(&self, mode: &'static str, ok: bool, code: &'static str);
    /// `entries` made durable with one sync taking `fsync`.
    fn batch(&self, entries: usize, fsync: Duration);
    /// A checkpoint of `size` entries saved.
    fn checkpoint(&self, size: u64);
}

/// The receipt signer in force and what receipts say about it.
pub struct SignerSlot {
    pub signer: Arc<dyn Signer>,
    pub ephemeral: bool,
}

/// What the sequencing threads share with the [`Ledger`] handle.
#[derive(Clone)]
pub(crate) struct Shared {
    pub store: Arc<LogStore>,
    pub signer: Arc<ArcSwap<SignerSlot>>,
    /// The latest durable checkpoint note.
    pub latest: Arc<ArcSwap<Option<String>>>,
    pub observer: Arc<dyn Observer>,
    pub origin: String,
    pub ids: ReceiptIds,
}

pub struct Ledger {
    store: Arc<LogStore>,
    tx: std_mpsc::Sender<Job>,
    signer: Arc<ArcSwap<SignerSlot>>,
    log_verifier: NoteVerifier,
    latest: Arc<ArcSwap<Option<String>>>,
    origin: String,
    mode: Mode,
    ids: ReceiptIds,
}

/// How [`Ledger::open`] found the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub recovery: Recovery,
    /// Size of the durable checkpoint the log continues (0 without one).
    pub checkpointed: u64,
    /// What was done with the entries after it.
    pub tail: TailPlan,
}

impl Ledger {
    /// Opens the log, checks it against its durable checkpoint (the rules of
    /// [`SavedCheckpoint`]), applies the tail rules ([`tail`]) and starts the sequencer.
    pub fn open(
        dir: &Path,
        settings: Settings,
        receipt_signer: SignerSlot,
        log_signer: Arc<dyn Signer>,
        observer: Arc<dyn Observer>,
    ) -> Result<(Self, Opened), OpenError> {
        let log_verifier = NoteVerifier::new(&settings.origin, *log_signer.public_key())
            .map_err(OpenError::Key)?;
        // The durable checkpoint is verified first: the entries it covers were acknowledged,
        // so recovery must never truncate them as if they were a torn tail.
        let saved = durable_checkpoint(
            lap_tlog::store::read_checkpoint(dir)?,
            &lap_tlog::store::read_history(dir)?,
            &log_verifier,
            &settings.origin,
        )?;
        let keep = saved.as_ref().map_or(0, |s| s.checkpoint.size);
        let (store, recovery) = match LogStore::open_keeping(dir, keep) {
            Err(StoreError::UnderCheckpoint {
                intact, covered, ..
            }) => return Err(CheckpointError::from(Fork::Truncated { intact, covered }).into()),
            other => other?,
        };
        if let Some(saved) = &saved {
            store
                .with_tree(|t| saved.check_log(t))?
                .map_err(CheckpointError::from)?;
        }
        let tail = plan_tail(
            (keep..store.size()).map(|index| {
                store
                    .read(index)
                    .map(|e| (index, e))
                    .map_err(|source| TailError::Read { index, source })
            }),
            &settings.origin,
            &settings.tail_keys,
        )?;
        if let Some((from, n)) = tail.discard {
            store.truncate_to(from)?;
            tracing::warn!(
                from,
                entries = n,
                "receipt log: discarded batched entries after the last checkpoint (never \
                 acknowledged: a crash came between writing them and saving their checkpoint)"
            );
        }
        let recovery = Recovery {
            size: store.size(),
            ..recovery
        };
        let store = Arc::new(store);
        let latest = Arc::new(ArcSwap::from_pointee(saved.map(|s| s.note)));
        let signer = Arc::new(ArcSwap::from_pointee(receipt_signer));
        let ids = ReceiptIds::new(&settings.origin);
        let shared = Shared {
            store: store.clone(),
            signer: signer.clone(),
            latest: latest.clone(),
            observer,
            origin: settings.origin.clone(),
            ids: ids.clone(),
        };
        let (tx, rx) = std_mpsc::channel();
        let spawned = match settings.mode {
            Mode::Batched => batched::start(shared, rx, log_signer, log_verifier.clone(), keep),
            Mode::PerReceipt => per_receipt::start(
                shared,
                rx,
                log_signer,
                log_verifier.clone(),
                &settings,
                keep,
            ),
        };
        spawned.map_err(|source| {
            OpenError::Store(StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })
        })?;
        Ok((
            Self {
                store,
                tx,
                signer,
                log_verifier,
                latest,
                origin: settings.origin,
                mode: settings.mode,
                ids,
            },
            Opened {
                recovery,
                checkpointed: keep,
                tail,
            },
        ))
    }

    /// Issues a receipt; resolves once it is durable and covered (see the invariants).
    pub async fn issue(&self, draft: Draft) -> Result<Issued, EvidenceError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { draft, reply })
            .map_err(|_| EvidenceError::Stopped)?;
        rx.await.map_err(|_| EvidenceError::Stopped)?
    }

    /// Replaces the receipt signer (keyset reload); receipts in flight finish with the old one.
    pub fn set_signer(&self, slot: SignerSlot) {
        self.signer.store(Arc::new(slot));
    }

    pub fn signer(&self) -> Arc<SignerSlot> {
        self.signer.load_full()
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The ids of this log's receipts.
    pub fn ids(&self) -> &ReceiptIds {
        &self.ids
    }

    pub fn log_vkey(&self) -> String {
        self.log_verifier.to_vkey()
    }

    pub fn store(&self) -> &LogStore {
        &self.store
    }

    /// The latest durable checkpoint note, if there is one.
    pub fn checkpoint(&self) -> Option<String> {
        self.latest.load().as_ref().clone()
    }

    /// How many entries may be shown to readers: per receipt, every durable entry (each is
    /// signed on its own); batched, only those under the latest durable checkpoint (an entry
    /// past it belongs to a batch not yet released, whose calls may still be refused).
    pub fn served_size(&self) -> u64 {
        match self.mode {
            Mode::PerReceipt => self.store.size(),
            Mode::Batched => self
                .latest
                .load()
                .as_ref()
                .as_deref()
                .and_then(|n| Checkpoint::from_note_unverified(n).ok())
                .map_or(0, |c| c.size)
                .min(self.store.size()),
        }
    }
}

/// A current-thread runtime for a sequencing thread, or `None` (logged) when none can start:
/// the thread then ends and every call is refused (`EVIDENCE_UNAVAILABLE`).
pub(crate) fn current_thread_runtime(what: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            tracing::error!(error = %e, "{what} cannot start; every call will be refused");
            None
        }
    }
}
