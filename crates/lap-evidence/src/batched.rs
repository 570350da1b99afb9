//! Batched mode: sign log states, not receipts.
//!
//! Two threads: the **sequencer** builds and signs batches, the **writer** makes them durable
//! and releases their calls. For each batch, in this order:
//!
//! 1. (sequencer) take every draft waiting (up to [`MAX_BATCH`](crate::MAX_BATCH)); give each
//!    the next index, the id derived from it, its log position, the receipt signer's name and
//!    a 128-bit random blinder; serialise the entries (version 2 payloads);
//! 2. (sequencer) stage them: the root of the tree with the batch appended and each entry's
//!    audit path, computed without the shared tree ever holding them ([`LogStore::stage`]);
//! 3. (sequencer) build the `tlog-checkpoint` for the new size and have it signed by the log
//!    key and by the receipt signer (the `lap_signing` seam: in process, one-shot or
//!    co-process, always verified against the pinned key) — one note, two signature lines.
//!    **A failure of either drops the batch here**: nothing was written, every call is refused
//!    with the signer's code, the next batch takes the same indices (the batches before it,
//!    already signed, are unaffected: their checkpoints do not cover it);
//! 4. (writer) write the entries with one `fdatasync`;
//! 5. (writer) append the checkpoint to the history with one `fdatasync` — from then on it is
//!    the durable checkpoint (the newer of `checkpoint` and the history's last record is what a
//!    restart continues) — and only then publish it ([`Ledger::checkpoint`](crate::Ledger::checkpoint));
//! 6. (writer) release the calls, each with its `tlog-proof` to that checkpoint.
//!
//! The `checkpoint` file itself (replaced atomically, three syncs) is brought up to date by a
//! third thread, at most every 250 ms and always to the latest durable checkpoint: it is a
//! convenience for readers, never the only durable copy, and never on a call's path.
//!
//! **When the next batch is cut.** The sequencer cuts batch *n + 1* once the writer has
//! released batch *n*: everything that arrived meanwhile goes into it, so the fixed costs of a
//! batch (two signatures, two syncs, the thread hand-offs) are shared by as many calls as
//! possible. Cutting it earlier, to sign while the writer syncs, was measured: with a fast
//! signer it made batches smaller and cost more CPU per call than it saved in latency; with
//! a slow one the writer is idle most of the time anyway.
//!
//! So a signature exists only in memory until the entries it covers and the checkpoint itself
//! are durable, and a call is released only once both are. A crash between 4 and 5 leaves
//! entries after the durable checkpoint that nobody was told about; the next start discards
//! them (`tail`). Batches reach the writer in order, and a batch is only written on top of
//! the one it was staged on: if that one failed, the log is broken and everything is refused.
//!
//! **A slow signer** (an HSM at ~100 ms a signature) bounds latency, not throughput: each
//! signature covers every call that waited for it. So that the calls just released make it
//! into the next batch rather than the one after, the sequencer then also lets the batch
//! fill while calls keep arriving (each within 2 ms of the last; at most half the last
//! signing time, and 50 ms); with a fast signer it never waits.
//!
//! A failed write or checkpoint save stops issuing until restart (after an I/O error the file
//! state is not worth trusting); those calls are refused.

use crate::{current_thread_runtime, EvidenceError, Issued, Job, Shared, MAX_BATCH};
use lap_receipt::{LogPosition, Signer as SignerInfo, LEAF_VERSION};
use lap_signing::{SignError, Signer};
use lap_tlog::note::{self, Checkpoint, NoteSignature, NoteVerifier};
use lap_tlog::proof::TlogProof;
use lap_tlog::store::{Staged, MAX_ENTRY_BYTES};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Signing slower than this counts as slow: the sequencer then lets batches fill up.
const SLOW_SIGNATURE: Duration = Duration::from_millis(2);
/// …for at most this long (and never more than half the last signing time).
const MAX_LINGER: Duration = Duration::from_millis(50);
/// The `checkpoint` file is replaced at most this often (each time: three syncs).
const CHECKPOINT_FILE_EVERY: Duration = Duration::from_millis(250);
/// With a slow signer, a batch keeps filling while calls keep arriving this close together…
const LINGER_GAP: Duration = Duration::from_millis(2);

/// Starts the sequencer and writer threads. `checkpointed` is the size of the durable
/// checkpoint found at open: entries above it (envelopes verified at open) get a checkpoint
/// straight away.
pub(crate) fn start(
    shared: Shared,
    rx: std_mpsc::Receiver<Job>,
    log_signer: Arc<dyn Signer>,
    log_verifier: NoteVerifier,
    checkpointed: u64,
) -> std::io::Result<()> {
    // At most one batch is in the writer: the sequencer waits for its release.
    let (to_writer, from_sequencer) = std_mpsc::sync_channel::<Signed>(1);
    let (released_tx, released) = std_mpsc::channel::<()>();
    let broken = Arc::new(AtomicBool::new(false));
    let (to_saver, saver_rx) = std_mpsc::channel::<Arc<str>>();
    let saver = CheckpointFile {
        shared: shared.clone(),
        rx: saver_rx,
        broken: broken.clone(),
    };
    std::thread::Builder::new()
        .name("lap-evidence-cp".into())
        .spawn(move || saver.run())?;
    let writer = Writer {
        shared: shared.clone(),
        rx: from_sequencer,
        released: released_tx,
        broken: broken.clone(),
        to_saver,
    };
    std::thread::Builder::new()
        .name("lap-evidence-writer".into())
        .spawn(move || writer.run())?;
    let sequencer = Sequencer {
        shared,
        rx,
        log_signer,
        log_verifier,
        to_writer,
        released,
        broken,
        last_signing: Duration::ZERO,
    };
    std::thread::Builder::new()
        .name("lap-evidence".into())
        .spawn(move || sequencer.run(checkpointed))?;
    Ok(())
}

/// Numbers, stages and signs batches (steps 1–3).
struct Sequencer {
    shared: Shared,
    rx: std_mpsc::Receiver<Job>,
    log_signer: Arc<dyn Signer>,
    log_verifier: NoteVerifier,
    to_writer: std_mpsc::SyncSender<Signed>,
    /// One message per batch the writer is done with.
    released: std_mpsc::Receiver<()>,
    /// Set by the writer when a write or checkpoint save failed: everything is refused until
    /// restart.
    broken: Arc<AtomicBool>,
    /// How long the last batch's signatures took.
    last_signing: Duration,
}

/// A batch's entries, numbered and serialised.
struct Numbered {
    jobs: Vec<Job>,
    entries: Vec<String>,
}

/// A signed batch on its way to the writer.
struct Signed {
    jobs: Vec<Job>,
    entries: Vec<String>,
    staged: Staged,
    note: String,
}

impl Sequencer {
    fn run(mut self, checkpointed: u64) {
        let Some(rt) = current_thread_runtime("evidence sequencer") else {
            return;
        };
        if self.shared.store.size() > checkpointed {
            // Verified envelopes after the last checkpoint: cover them now, not only once new
            // traffic arrives (an empty batch is a checkpoint).
            rt.block_on(self.commit(Vec::new()));
        }
        loop {
            let first = match self.rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            };
            let mut jobs = vec![first];
            self.take_waiting(&mut jobs);
            if self.broken.load(Ordering::Acquire) {
                refuse(jobs, &EvidenceError::LogBroken);
                continue;
            }
            rt.block_on(self.commit(jobs));
        }
    }

    /// Adds the jobs waiting (up to a full batch); with a slow signer, also those that keep
    /// arriving (each within [`LINGER_GAP`] of the last, for at most half the last signing
    /// time or [`MAX_LINGER`]): the calls just released coming back.
    fn take_waiting(&mut self, jobs: &mut Vec<Job>) {
        let until = (self.last_signing > SLOW_SIGNATURE)
            .then(|| Instant::now() + (self.last_signing / 2).min(MAX_LINGER));
        while jobs.len() < MAX_BATCH {
            let next = match self.rx.try_recv() {
                Ok(job) => Some(job),
                Err(_) => until.and_then(|until| {
                    let left = until.saturating_duration_since(Instant::now());
                    (!left.is_zero())
                        .then(|| self.rx.recv_timeout(left.min(LINGER_GAP)).ok())
                        .flatten()
                }),
            };
            match next {
                Some(job) => jobs.push(job),
                None => break,
            }
        }
    }

    /// Steps 1–3 for one batch; hands it to the writer.
    async fn commit(&mut self, jobs: Vec<Job>) {
        let slot = self.shared.signer.load_full();
        let signer = slot.signer.clone();
        let mode = signer.mode().as_str();
        let first = self.shared.store.size();
        let Some(batch) = self.number(first, jobs, signer.as_ref(), slot.ephemeral) else {
            return;
        };
        let refs: Vec<&[u8]> = batch.entries.iter().map(|e| e.as_bytes()).collect();
        let staged = match self.shared.store.stage(&refs) {
            // A batch staged at other indices than it was numbered for is refused by the
            // writer (`StoreError::Stale`): only the sequencer appends, so it cannot be.
            Ok(s) => s,
            Err(e) => {
                // Only a poisoned lock or an impossible range gets here: stop.
                tracing::error!(error = %e, "cannot stage a batch; all calls are refused until restart");
                self.broken.store(true, Ordering::Release);
                refuse(batch.jobs, &EvidenceError::Log(Arc::new(e)));
                return;
            }
        };

        // Sign before anything is written: a refusal drops the batch without a trace.
        let text = Checkpoint {
            origin: self.shared.origin.clone(),
            size: staged.size,
            root: staged.root,
            extensions: Vec::new(),
        }
        .to_text();
        let signing = Instant::now();
        let (by_log, by_signer) = futures::join!(
            self.log_signer.sign(text.as_bytes()),
            signer.sign(text.as_bytes())
        );
        self.last_signing = signing.elapsed();
        let signed = by_signer
            .inspect_err(|e| self.shared.observer.signed(mode, false, e.code()))
            .inspect(|_| self.shared.observer.signed(mode, true, ""))
            .and_then(|s| Ok((by_log?, s)));
        let (log_sig, receipt_sig) = match signed {
            Ok(sigs) => sigs,
            Err(e) => {
                self.drop_batch(batch.jobs, &staged, signer.key_id(), e);
                return;
            }
        };
        let receipt_key = match NoteVerifier::new(
            &lap_receipt::batch_key_name(&self.shared.origin, signer.key_id()),
            *signer.public_key(),
        ) {
            Ok(k) => k,
            Err(e) => {
                // Key ids are validated when keysets load; this is a configuration bug.
                tracing::error!(error = %e, "the receipt key cannot name a note signature");
                let e = SignError::Refused(format!("receipt key name: {e}"));
                self.drop_batch(batch.jobs, &staged, signer.key_id(), e);
                return;
            }
        };
        let note = note::assemble(
            &text,
            &[
                NoteSignature {
                    name: self.log_verifier.name.clone(),
                    id: self.log_verifier.id,
                    sig: log_sig.to_vec(),
                },
                NoteSignature {
                    name: receipt_key.name,
                    id: receipt_key.id,
                    sig: receipt_sig.to_vec(),
                },
            ],
        );
        let signed = Signed {
            jobs: batch.jobs,
            entries: batch.entries,
            staged,
            note,
        };
        if let Err(std_mpsc::SendError(lost)) = self.to_writer.send(signed) {
            // The writer is gone (it cannot start, or it panicked): nothing can be made durable.
            self.broken.store(true, Ordering::Release);
            refuse(lost.jobs, &EvidenceError::LogBroken);
            return;
        }
        // The next batch is cut once this one is released ("When the next batch is cut").
        if self.released.recv().is_err() {
            self.broken.store(true, Ordering::Release);
        }
    }

    /// Step 1: numbers the drafts from the log's size and serialises them. Drafts too large
    /// for an entry are refused on their own (they take no index); `None` when nothing is
    /// left to do but an empty batch was not asked for.
    fn number(
        &self,
        first: u64,
        jobs: Vec<Job>,
        signer: &dyn Signer,
        ephemeral: bool,
    ) -> Option<Numbered> {
        let asked = jobs.len();
        let mut random = vec![0u8; 16 * jobs.len()];
        if let Err(e) = getrandom::getrandom(&mut random) {
            tracing::error!(error = %e, "no system randomness; the batch is refused");
            refuse(jobs, &EvidenceError::Randomness(e.to_string()));
            return None;
        }
        let mut batch = Numbered {
            jobs: Vec::with_capacity(jobs.len()),
            entries: Vec::with_capacity(jobs.len()),
        };
        for (job, blinder) in jobs.into_iter().zip(random.chunks_exact(16)) {
            let mut job = job;
            let index = first + batch.jobs.len() as u64;
            let d = &mut job.draft;
            d.version = LEAF_VERSION;
            d.receipt_id = self.shared.ids.id(index);
            d.blinder = Some(hex::encode(blinder));
            d.signer = SignerInfo {
                key_id: signer.key_id().to_string(),
                mode: signer.mode().as_str().to_string(),
                ephemeral,
            };
            d.log = LogPosition {
                origin: self.shared.origin.clone(),
                index,
            };
            let entry = d.to_payload();
            if entry.len() > MAX_ENTRY_BYTES {
                let _ = job.reply.send(Err(EvidenceError::TooLarge(entry.len())));
                continue;
            }
            // Serialising a receipt yields UTF-8 JSON.
            let entry = String::from_utf8(entry).unwrap_or_default();
            batch.jobs.push(job);
            batch.entries.push(entry);
        }
        (asked == 0 || !batch.jobs.is_empty()).then_some(batch)
    }

    /// Step 3 failed: nothing was written, the shared tree never held the batch; refuse it.
    fn drop_batch(&self, jobs: Vec<Job>, staged: &Staged, key_id: &str, e: SignError) {
        tracing::error!(code = e.code(), error = %e, key_id, calls = jobs.len(),
            first = staged.first, size = staged.size,
            "batch signing failed; the batch is dropped and its calls refused");
        refuse(jobs, &EvidenceError::Signer(e));
    }
}

/// Makes signed batches durable and releases their calls (steps 4–6).
struct Writer {
    shared: Shared,
    rx: std_mpsc::Receiver<Signed>,
    released: std_mpsc::Sender<()>,
    broken: Arc<AtomicBool>,
    /// Durable checkpoints, for the `checkpoint` file.
    to_saver: std_mpsc::Sender<Arc<str>>,
}

impl Writer {
    fn run(mut self) {
        while let Ok(batch) = self.rx.recv() {
            self.write(batch);
            let _ = self.released.send(());
        }
    }

    fn write(&mut self, b: Signed) {
        if self.broken.load(Ordering::Acquire) {
            refuse(b.jobs, &EvidenceError::LogBroken);
            return;
        }
        // Durable: entries first, then the checkpoint; only then is either shown.
        let started = Instant::now();
        let refs: Vec<&[u8]> = b.entries.iter().map(|e| e.as_bytes()).collect();
        if let Err(e) = self.shared.store.append_staged(&b.staged, &refs) {
            tracing::error!(error = %e, first = b.staged.first,
                "receipt log append failed; all calls are refused until restart");
            self.broken.store(true, Ordering::Release);
            refuse(b.jobs, &EvidenceError::Log(Arc::new(e)));
            return;
        }
        if let Err(e) = self.shared.store.append_history(&b.note) {
            tracing::error!(error = %e, size = b.staged.size,
                "cannot save the batch's checkpoint; all calls are refused until restart");
            self.broken.store(true, Ordering::Release);
            refuse(b.jobs, &EvidenceError::Checkpoint(Arc::new(e)));
            return;
        }
        self.shared.observer.batch(b.jobs.len(), started.elapsed());
        self.shared.observer.checkpoint(b.staged.size);
        let checkpoint: Arc<str> = Arc::from(b.note.as_str());
        self.shared.latest.store(Arc::new(Some(b.note)));
        let _ = self.to_saver.send(checkpoint.clone());

        for (k, ((job, entry), path)) in b
            .jobs
            .into_iter()
            .zip(b.entries)
            .zip(b.staged.paths)
            .enumerate()
        {
            let index = b.staged.first + k as u64;
            let proof = TlogProof {
                extra: None,
                index,
                path,
                checkpoint: checkpoint.to_string(),
            };
            let _ = job.reply.send(Ok(Issued {
                receipt_id: job.draft.receipt_id,
                index,
                entry: Arc::from(entry),
                leaf_hash: b.staged.leaf_hashes[k],
                proof: Some(Arc::from(proof.to_text())),
            }));
        }
    }
}

/// Keeps the `checkpoint` file up to date with the durable checkpoint (already in the
/// history), off the writer's path: at most every [`CHECKPOINT_FILE_EVERY`], always the latest.
struct CheckpointFile {
    shared: Shared,
    rx: std_mpsc::Receiver<Arc<str>>,
    broken: Arc<AtomicBool>,
}

impl CheckpointFile {
    fn run(self) {
        let mut saved_at: Option<Instant> = None;
        while let Ok(mut note) = self.rx.recv() {
            if let Some(wait) =
                saved_at.and_then(|t| CHECKPOINT_FILE_EVERY.checked_sub(t.elapsed()))
            {
                std::thread::sleep(wait);
            }
            while let Ok(newer) = self.rx.try_recv() {
                note = newer;
            }
            saved_at = Some(Instant::now());
            if let Err(e) = self.shared.store.replace_checkpoint(&note) {
                // The checkpoint is durable in the history; but an I/O error here says the
                // disk is not to be trusted with the next batch either.
                tracing::error!(error = %e,
                    "cannot replace the checkpoint file; all calls are refused until restart");
                self.broken.store(true, Ordering::Release);
            }
        }
    }
}

fn refuse(jobs: Vec<Job>, e: &EvidenceError) {
    for job in jobs {
        let _ = job.reply.send(Err(e.clone()));
    }
}
