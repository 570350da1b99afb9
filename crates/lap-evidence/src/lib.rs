//! Issuing evidence: sign each receipt and append it durably to the log, in order.
//!
//! Two threads: the sequencer numbers and signs, the writer appends and fsyncs, so signing the
//! next batch overlaps making the previous one durable.
//!
//! [`Ledger`] owns the transparency log and runs a sequencer and a writer thread. A request hands it a
//! [`Draft`] (a receipt without signer and log position) and waits for an [`Issued`] receipt.
//! The sequencer takes every draft waiting at that moment as one batch: it gives each the next
//! log index, signs them (concurrently when the signer is external), appends the signed batch
//! with a single `fdatasync` (group commit) and only then answers. A receipt whose signature
//! fails is refused; the drafts behind it in the batch are renumbered and signed again, so the
//! log never has a hole and never holds an unsigned entry.
//!
//! Checkpoints (C2SP `tlog-checkpoint`, signed by the log key) are issued every
//! `checkpoint_every` entries or `checkpoint_interval`, whichever comes first, and saved next
//! to the log so that a restart can prove it continues the same tree.

mod checkpoint;

pub use checkpoint::{verify_saved_checkpoint, CheckpointError, Fork, SavedCheckpoint};

use arc_swap::ArcSwap;
use lap_receipt::{LogPosition, Receipt, Signer as SignerInfo};
use lap_signing::{SignError, Signer};
use lap_tlog::merkle::Hash;
use lap_tlog::note::{self, Checkpoint, NoteError, NoteSignature, NoteVerifier};
use lap_tlog::store::{LogStore, Recovery, StoreError};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most drafts signed and appended in one batch.
const MAX_BATCH: usize = 512;

/// A receipt waiting for its signer and log position.
pub type Draft = Receipt;

/// A signed, durably logged receipt.
#[derive(Debug, Clone)]
pub struct Issued {
    pub receipt_id: String,
    pub index: u64,
    /// The DSSE envelope exactly as logged.
    pub envelope: Arc<str>,
}

/// Why no receipt was issued. Codes are stable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EvidenceError {
    #[error(transparent)]
    Signer(#[from] SignError),
    /// This batch's append failed (shared by every receipt of the batch).
    #[error("the receipt log refused the append: {0}")]
    Log(#[source] Arc<StoreError>),
    /// An earlier append failed: the indices handed out since then are void, so nothing more
    /// is appended until a restart.
    #[error("the receipt log refused the append: an earlier append failed; restart after fixing the log storage")]
    LogBroken,
    #[error("the evidence sequencer is not running")]
    Stopped,
}

impl EvidenceError {
    pub fn code(&self) -> &'static str {
        match self {
            EvidenceError::Signer(e) => e.code(),
            EvidenceError::Log(_) | EvidenceError::LogBroken => "LOG_APPEND_FAILED",
            EvidenceError::Stopped => "EVIDENCE_UNAVAILABLE",
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
    /// The origin cannot name a note key.
    #[error("log key: {0}")]
    Key(#[source] NoteError),
}

/// Ledger settings.
#[derive(Clone)]
pub struct Settings {
    pub origin: String,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
}

struct Job {
    draft: Draft,
    reply: oneshot::Sender<Result<Issued, EvidenceError>>,
}

/// Hooks for metrics, so this crate stays free of a metrics library.
pub trait Observer: Send + Sync {
    fn signed(&self, mode: &'static str, ok: bool, code: &'static str);
    fn batch(&self, entries: usize, fsync: Duration);
    fn checkpoint(&self, size: u64);
}

pub struct Ledger {
    store: Arc<LogStore>,
    tx: std_mpsc::Sender<Job>,
    signer: Arc<ArcSwap<SignerSlot>>,
    log_verifier: NoteVerifier,
    latest: Arc<ArcSwap<Option<String>>>,
    origin: String,
}

/// The receipt signer in force and what receipts say about it.
pub struct SignerSlot {
    pub signer: Arc<dyn Signer>,
    pub ephemeral: bool,
}

impl Ledger {
    /// Opens the log, checks it against the saved checkpoint (the rules of
    /// [`SavedCheckpoint`]) and starts the sequencer.
    pub fn open(
        dir: &Path,
        settings: Settings,
        receipt_signer: SignerSlot,
        log_signer: Arc<dyn Signer>,
        observer: Arc<dyn Observer>,
    ) -> Result<(Self, Recovery), OpenError> {
        let log_verifier = NoteVerifier::new(&settings.origin, *log_signer.public_key())
            .map_err(OpenError::Key)?;
        // The saved checkpoint is verified first: the entries it covers were acknowledged, so
        // recovery must never truncate them as if they were a torn tail.
        let saved = lap_tlog::store::read_checkpoint(dir)?
            .map(|text| SavedCheckpoint::open(text, &log_verifier, &settings.origin))
            .transpose()?;
        let keep = saved.as_ref().map_or(0, |s| s.checkpoint.size);
        let (store, recovery) = match LogStore::open_keeping(dir, keep) {
            Err(StoreError::UnderCheckpoint {
                intact, covered, ..
            }) => return Err(CheckpointError::from(Fork::Truncated { intact, covered }).into()),
            other => other?,
        };
        let store = Arc::new(store);
        if let Some(saved) = &saved {
            store
                .with_tree(|t| saved.check_log(t))
                .map_err(CheckpointError::from)?;
        }
        let checkpointed = keep;
        let latest = saved.map(|s| s.note);
        let latest = Arc::new(ArcSwap::from_pointee(latest));
        let signer = Arc::new(ArcSwap::from_pointee(receipt_signer));
        let (tx, rx) = std_mpsc::channel();
        // A small queue between signing and writing: enough to overlap the two, not so much
        // that a stalled disk hides behind it.
        let (to_writer, from_sequencer) = std_mpsc::sync_channel(4);
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seq = Sequencer {
            rx,
            signer: signer.clone(),
            settings: settings.clone(),
            observer: observer.clone(),
            to_writer,
            broken: broken.clone(),
            next_index: store.size(),
        };
        let writer = Writer {
            store: store.clone(),
            rx: from_sequencer,
            log_signer,
            log_verifier: log_verifier.clone(),
            settings: settings.clone(),
            latest: latest.clone(),
            observer,
            broken,
            // Entries logged after the last checkpoint before a restart get one at the first
            // idle moment, not only once new traffic arrives.
            since_checkpoint: store.size() - checkpointed,
            last_checkpoint: Instant::now(),
        };
        let spawn_err = |e: std::io::Error| {
            OpenError::Store(StoreError::Io {
                path: dir.to_path_buf(),
                source: e,
            })
        };
        std::thread::Builder::new()
            .name("lap-evidence-writer".into())
            .spawn(move || writer.run())
            .map_err(spawn_err)?;
        std::thread::Builder::new()
            .name("lap-evidence".into())
            .spawn(move || seq.run())
            .map_err(spawn_err)?;
        Ok((
            Self {
                store,
                tx,
                signer,
                log_verifier,
                latest,
                origin: settings.origin,
            },
            recovery,
        ))
    }

    /// Signs and logs a receipt; resolves once it is durable.
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

    pub fn log_vkey(&self) -> String {
        self.log_verifier.to_vkey()
    }

    pub fn store(&self) -> &LogStore {
        &self.store
    }

    /// The latest signed checkpoint note, if one was issued.
    pub fn checkpoint(&self) -> Option<String> {
        self.latest.load().as_ref().clone()
    }
}

/// A signed batch on its way to the disk.
struct Signed {
    jobs: Vec<(Job, Arc<str>)>,
}

/// Numbers and signs receipts. Runs ahead of the writer: while one batch is being made
/// durable, the next is being signed.
struct Sequencer {
    rx: std_mpsc::Receiver<Job>,
    signer: Arc<ArcSwap<SignerSlot>>,
    settings: Settings,
    observer: Arc<dyn Observer>,
    to_writer: std_mpsc::SyncSender<Signed>,
    /// Set by the writer when an append failed: the indices handed out since are void, so
    /// everything is refused until restart (fail closed).
    broken: Arc<std::sync::atomic::AtomicBool>,
    next_index: u64,
}

/// Appends signed batches durably, answers the callers, issues checkpoints.
struct Writer {
    store: Arc<LogStore>,
    rx: std_mpsc::Receiver<Signed>,
    log_signer: Arc<dyn Signer>,
    log_verifier: NoteVerifier,
    settings: Settings,
    latest: Arc<ArcSwap<Option<String>>>,
    observer: Arc<dyn Observer>,
    broken: Arc<std::sync::atomic::AtomicBool>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
}

fn current_thread_runtime(what: &str) -> Option<tokio::runtime::Runtime> {
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

impl Sequencer {
    fn run(mut self) {
        let Some(rt) = current_thread_runtime("evidence sequencer") else {
            return;
        };
        let mut pending: Vec<Job> = Vec::new();
        loop {
            if pending.is_empty() {
                match self.rx.recv() {
                    Ok(job) => pending.push(job),
                    Err(_) => return,
                }
            }
            while pending.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(job) => pending.push(job),
                    Err(_) => break,
                }
            }
            if self.broken.load(Ordering::Acquire) {
                for job in pending.drain(..) {
                    let _ = job.reply.send(Err(EvidenceError::LogBroken));
                }
                continue;
            }
            pending = rt.block_on(self.process(pending));
        }
    }

    /// Signs as many jobs as possible and hands them to the writer; returns jobs to retry
    /// with new indices.
    async fn process(&mut self, mut jobs: Vec<Job>) -> Vec<Job> {
        let slot = self.signer.load_full();
        let signer = slot.signer.clone();
        let base = self.next_index;
        let mut envelopes = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.iter_mut().enumerate() {
            job.draft.signer = SignerInfo {
                key_id: signer.key_id().to_string(),
                mode: signer.mode().as_str().to_string(),
                ephemeral: slot.ephemeral,
            };
            job.draft.log = LogPosition {
                origin: self.settings.origin.clone(),
                index: base + i as u64,
            };
            envelopes.push(job.draft.envelope());
        }
        let mode = signer.mode().as_str();
        let results: Vec<Result<[u8; 64], SignError>> =
            if signer.mode() == lap_signing::Mode::InProcess {
                let mut out = Vec::with_capacity(envelopes.len());
                for env in &envelopes {
                    out.push(signer.sign(&env.pae()).await);
                }
                out
            } else {
                // External signers get the whole batch at once (pipelined / in parallel).
                futures::future::join_all(envelopes.iter().map(|env| {
                    let pae = env.pae();
                    let s = signer.clone();
                    async move { s.sign(&pae).await }
                }))
                .await
            };

        // Everything before the first failure goes to the log; the failure is refused; the
        // rest goes round again with fresh indices (their signatures covered the old ones).
        let mut signed: Vec<(Job, Arc<str>)> = Vec::with_capacity(jobs.len());
        let mut failed: Option<(Job, SignError)> = None;
        let mut retry: Vec<Job> = Vec::new();
        for ((job, mut env), result) in jobs.into_iter().zip(envelopes).zip(results) {
            if failed.is_some() {
                retry.push(job);
                continue;
            }
            match result {
                Ok(sig) => {
                    self.observer.signed(mode, true, "");
                    env.signatures.push(lap_receipt::dsse::EnvelopeSignature {
                        keyid: signer.key_id().to_string(),
                        sig,
                    });
                    signed.push((job, Arc::from(env.to_json())));
                }
                Err(e) => failed = Some((job, e)),
            }
        }
        if !signed.is_empty() {
            self.next_index += signed.len() as u64;
            if let Err(std_mpsc::SendError(batch)) = self.to_writer.send(Signed { jobs: signed }) {
                for (job, _) in batch.jobs {
                    let _ = job.reply.send(Err(EvidenceError::Stopped));
                }
            }
        }
        if let Some((job, e)) = failed {
            self.observer.signed(mode, false, e.code());
            tracing::error!(code = e.code(), error = %e, key_id = signer.key_id(),
                "receipt signing failed; call refused");
            let _ = job.reply.send(Err(EvidenceError::Signer(e)));
        }
        retry
    }
}

impl Writer {
    fn run(mut self) {
        let Some(rt) = current_thread_runtime("evidence writer") else {
            self.broken.store(true, Ordering::Release);
            return;
        };
        loop {
            let wait = self.checkpoint_wait();
            match self.rx.recv_timeout(wait) {
                Ok(first) => {
                    // Everything the sequencer has signed meanwhile shares one fsync.
                    let mut batch = first.jobs;
                    while batch.len() < MAX_BATCH * 4 {
                        match self.rx.try_recv() {
                            Ok(more) => batch.extend(more.jobs),
                            Err(_) => break,
                        }
                    }
                    self.append(batch);
                    rt.block_on(self.maybe_checkpoint(false));
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    rt.block_on(self.maybe_checkpoint(true));
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    rt.block_on(self.maybe_checkpoint(true));
                    return;
                }
            }
        }
    }

    fn append(&mut self, batch: Vec<(Job, Arc<str>)>) {
        if self.broken.load(Ordering::Acquire) {
            for (job, _) in batch {
                let _ = job.reply.send(Err(EvidenceError::LogBroken));
            }
            return;
        }
        let bytes: Vec<&[u8]> = batch.iter().map(|(_, t)| t.as_bytes()).collect();
        let started = Instant::now();
        match self.store.append(&bytes) {
            Ok(first) => {
                self.observer.batch(batch.len(), started.elapsed());
                self.since_checkpoint += batch.len() as u64;
                for (i, (job, envelope)) in batch.into_iter().enumerate() {
                    let _ = job.reply.send(Ok(Issued {
                        receipt_id: job.draft.receipt_id.clone(),
                        index: first + i as u64,
                        envelope,
                    }));
                }
            }
            Err(e) => {
                // Receipts already signed behind this batch carry indices that will never
                // exist: stop issuing evidence (and so stop calls) until restart.
                self.broken.store(true, Ordering::Release);
                tracing::error!(error = %e, "receipt log append failed; all calls are refused until restart");
                let err = EvidenceError::Log(Arc::new(e));
                for (job, _) in batch {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
    }

    fn checkpoint_wait(&self) -> Duration {
        if self.since_checkpoint == 0 {
            return Duration::from_secs(3600);
        }
        self.settings
            .checkpoint_interval
            .saturating_sub(self.last_checkpoint.elapsed())
            .max(Duration::from_millis(1))
    }

    async fn maybe_checkpoint(&mut self, idle: bool) {
        let due = self.since_checkpoint >= self.settings.checkpoint_every
            || (self.since_checkpoint > 0
                && (idle || self.last_checkpoint.elapsed() >= self.settings.checkpoint_interval));
        if !due {
            return;
        }
        let size = self.store.size();
        let root: Hash = match self.store.with_tree(|t| t.root(size)) {
            Ok(r) => r,
            Err(_) => return,
        };
        let cp = Checkpoint {
            origin: self.settings.origin.clone(),
            size,
            root,
            extensions: Vec::new(),
        };
        let text = cp.to_text();
        match self.log_signer.sign(text.as_bytes()).await {
            Ok(sig) => {
                let note_text = note::assemble(
                    &text,
                    &[NoteSignature {
                        name: self.log_verifier.name.clone(),
                        id: self.log_verifier.id,
                        sig: sig.to_vec(),
                    }],
                );
                if let Err(e) = self.store.save_checkpoint(&note_text) {
                    tracing::error!(error = %e, "cannot save the checkpoint; will retry");
                    // Retry at the checkpoint interval, not in a tight loop.
                    self.last_checkpoint = Instant::now();
                    return;
                }
                self.latest.store(Arc::new(Some(note_text)));
                self.since_checkpoint = 0;
                self.last_checkpoint = Instant::now();
                self.observer.checkpoint(size);
            }
            Err(e) => {
                tracing::error!(code = e.code(), error = %e, "checkpoint signing failed; will retry");
                self.last_checkpoint = Instant::now();
            }
        }
    }
}
