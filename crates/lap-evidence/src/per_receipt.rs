//! Per-receipt mode: every receipt signed on its own (a DSSE envelope, version 1 payload).
//!
//! Two threads: the sequencer numbers and signs, the writer appends and fsyncs, so signing the
//! next batch overlaps making the previous one durable. The sequencer takes every draft
//! waiting as one batch: it gives each the next log index (and the id derived from it), signs
//! them (concurrently when the signer is external), hands the signed batch to the writer,
//! which appends it with a single `fdatasync` (group commit) and only then answers. A receipt
//! whose signature fails is refused; the drafts behind it in the batch are renumbered and
//! signed again, so the log never has a hole and never holds an unsigned entry.
//!
//! Checkpoints (C2SP `tlog-checkpoint`, signed by the log key) are issued every
//! `checkpoint_every` entries or `checkpoint_interval`, whichever comes first, and saved next
//! to the log so that a restart can prove it continues the same tree.

use crate::{current_thread_runtime, EvidenceError, Issued, Job, Settings, Shared, SignerSlot};
use arc_swap::ArcSwap;
use lap_receipt::{LogPosition, Signer as SignerInfo, RECEIPT_VERSION};
use lap_signing::{SignError, Signer};
use lap_tlog::merkle::{leaf_hash, Hash};
use lap_tlog::note::{self, Checkpoint, NoteSignature, NoteVerifier};
use lap_tlog::store::LogStore;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most drafts signed in one batch.
const MAX_BATCH: usize = 512;

/// Starts the sequencer and the writer.
pub(crate) fn start(
    shared: Shared,
    rx: std_mpsc::Receiver<Job>,
    log_signer: Arc<dyn Signer>,
    log_verifier: NoteVerifier,
    settings: &Settings,
    checkpointed: u64,
) -> std::io::Result<()> {
    // A small queue between signing and writing: enough to overlap the two, not so much
    // that a stalled disk hides behind it.
    let (to_writer, from_sequencer) = std_mpsc::sync_channel(4);
    let broken = Arc::new(AtomicBool::new(false));
    let size = shared.store.size();
    let seq = Sequencer {
        rx,
        signer: shared.signer.clone(),
        settings: settings.clone(),
        ids: shared.ids.clone(),
        observer: shared.observer.clone(),
        to_writer,
        broken: broken.clone(),
        next_index: size,
    };
    let writer = Writer {
        store: shared.store,
        rx: from_sequencer,
        log_signer,
        log_verifier,
        settings: settings.clone(),
        latest: shared.latest,
        observer: shared.observer,
        broken,
        // Entries logged after the last checkpoint before a restart (verified at open) get
        // one at the first idle moment, not only once new traffic arrives.
        since_checkpoint: size - checkpointed,
        last_checkpoint: Instant::now(),
    };
    std::thread::Builder::new()
        .name("lap-evidence-writer".into())
        .spawn(move || writer.run())?;
    std::thread::Builder::new()
        .name("lap-evidence".into())
        .spawn(move || seq.run())?;
    Ok(())
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
    ids: lap_receipt::ReceiptIds,
    observer: Arc<dyn crate::Observer>,
    to_writer: std_mpsc::SyncSender<Signed>,
    /// Set by the writer when an append failed: the indices handed out since are void, so
    /// everything is refused until restart (fail closed).
    broken: Arc<AtomicBool>,
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
    observer: Arc<dyn crate::Observer>,
    broken: Arc<AtomicBool>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
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
            let index = base + i as u64;
            let d = &mut job.draft;
            d.version = RECEIPT_VERSION;
            d.receipt_id = self.ids.id(index);
            d.blinder = None;
            if let Some(c) = &mut d.completion {
                // Version 1 completions name their decision by id and index only.
                c.decision_leaf_hash = None;
            }
            d.signer = SignerInfo {
                key_id: signer.key_id().to_string(),
                mode: signer.mode().as_str().to_string(),
                ephemeral: slot.ephemeral,
            };
            d.log = LogPosition {
                origin: self.settings.origin.clone(),
                index,
            };
            envelopes.push(d.envelope());
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
                        leaf_hash: leaf_hash(envelope.as_bytes()),
                        entry: envelope,
                        proof: None,
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
