//! Batched mode: sign log states, not receipts.
//!
//! One thread, one batch at a time. For each batch, in this order:
//!
//! 1. take every draft waiting (up to [`MAX_BATCH`](crate::MAX_BATCH)); give each the next
//!    index, the id derived from it, its log position, the receipt signer's name and a
//!    128-bit random blinder; serialise the entries (version 2 payloads);
//! 2. stage them: the root of the tree with the batch appended and each entry's audit path,
//!    computed without the shared tree ever holding them ([`LogStore::stage`]);
//! 3. build the `tlog-checkpoint` for the new size and have it signed by the log key and by
//!    the receipt signer (the `lap_signing` seam: in process, one-shot or co-process, always
//!    verified against the pinned key) — one note, two signature lines. **A failure of either
//!    drops the batch here**: nothing was written, every call is refused with the signer's
//!    code, the next batch takes the same indices;
//! 4. write the entries with one `fdatasync`;
//! 5. save the checkpoint (history appended and synced, `checkpoint` replaced and synced) and
//!    only then publish it ([`Ledger::checkpoint`](crate::Ledger::checkpoint));
//! 6. release the calls, each with its `tlog-proof` to that checkpoint.
//!
//! So a signature exists only in memory until the entries it covers and the checkpoint itself
//! are durable, and a call is released only once both are. A crash between 4 and 5 leaves
//! entries after the durable checkpoint that nobody was told about; the next start discards
//! them (`tail`).
//!
//! One batch is in flight at a time: while a slow signer works, the next batch grows (with a
//! 100 ms signer and 256 calls waiting, about 2,500 calls a second). A failed write or
//! checkpoint save stops issuing until restart (after an I/O error the file state is not worth
//! trusting); those calls are refused.

use crate::{current_thread_runtime, EvidenceError, Issued, Job, Shared, MAX_BATCH};
use lap_receipt::{LogPosition, Signer as SignerInfo, LEAF_VERSION};
use lap_signing::{SignError, Signer};
use lap_tlog::note::{self, Checkpoint, NoteSignature, NoteVerifier};
use lap_tlog::proof::TlogProof;
use lap_tlog::store::{Staged, MAX_ENTRY_BYTES};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Instant;

/// Starts the batching thread. `checkpointed` is the size of the durable checkpoint found at
/// open: entries above it (envelopes verified at open) get a checkpoint straight away.
pub(crate) fn start(
    shared: Shared,
    rx: std_mpsc::Receiver<Job>,
    log_signer: Arc<dyn Signer>,
    log_verifier: NoteVerifier,
    checkpointed: u64,
) -> std::io::Result<()> {
    let batcher = Batcher {
        shared,
        rx,
        log_signer,
        log_verifier,
        broken: false,
    };
    std::thread::Builder::new()
        .name("lap-evidence".into())
        .spawn(move || batcher.run(checkpointed))?;
    Ok(())
}

struct Batcher {
    shared: Shared,
    rx: std_mpsc::Receiver<Job>,
    log_signer: Arc<dyn Signer>,
    log_verifier: NoteVerifier,
    /// A write or checkpoint save failed: everything is refused until restart.
    broken: bool,
}

/// A batch's entries, numbered and serialised.
struct Numbered {
    jobs: Vec<Job>,
    entries: Vec<String>,
}

impl Batcher {
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
            let mut jobs = match self.rx.recv() {
                Ok(job) => vec![job],
                Err(_) => return,
            };
            while jobs.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            if self.broken {
                refuse(jobs, &EvidenceError::LogBroken);
                continue;
            }
            rt.block_on(self.commit(jobs));
        }
    }

    /// Steps 1–6 of the module docs for one batch.
    async fn commit(&mut self, jobs: Vec<Job>) {
        let slot = self.shared.signer.load_full();
        let signer = slot.signer.clone();
        let mode = signer.mode().as_str();
        let Some(batch) = self.number(jobs, signer.as_ref(), slot.ephemeral) else {
            return;
        };
        let refs: Vec<&[u8]> = batch.entries.iter().map(|e| e.as_bytes()).collect();
        let staged = match self.shared.store.stage(&refs) {
            Ok(s) => s,
            Err(e) => {
                // Only a poisoned lock or an impossible range gets here: stop.
                tracing::error!(error = %e, "cannot stage a batch; all calls are refused until restart");
                self.broken = true;
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
        let (by_log, by_signer) = futures::join!(
            self.log_signer.sign(text.as_bytes()),
            signer.sign(text.as_bytes())
        );
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

        // Durable: entries first, then the checkpoint; only then is either shown.
        let started = Instant::now();
        if let Err(e) = self.shared.store.append_staged(&staged, &refs) {
            tracing::error!(error = %e, first = staged.first,
                "receipt log append failed; all calls are refused until restart");
            self.broken = true;
            refuse(batch.jobs, &EvidenceError::Log(Arc::new(e)));
            return;
        }
        if let Err(e) = self.shared.store.save_checkpoint(&note) {
            tracing::error!(error = %e, size = staged.size,
                "cannot save the batch's checkpoint; all calls are refused until restart");
            self.broken = true;
            refuse(batch.jobs, &EvidenceError::Checkpoint(Arc::new(e)));
            return;
        }
        self.shared
            .observer
            .batch(batch.jobs.len(), started.elapsed());
        self.shared.observer.checkpoint(staged.size);
        let checkpoint: Arc<str> = Arc::from(note.as_str());
        self.shared.latest.store(Arc::new(Some(note)));

        for (k, ((job, entry), path)) in batch
            .jobs
            .into_iter()
            .zip(batch.entries)
            .zip(staged.paths)
            .enumerate()
        {
            let index = staged.first + k as u64;
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
                leaf_hash: staged.leaf_hashes[k],
                proof: Some(Arc::from(proof.to_text())),
            }));
        }
    }

    /// Step 1: numbers the drafts from the log's size and serialises them. Drafts too large
    /// for an entry are refused on their own (they take no index); `None` when nothing is
    /// left to do but an empty batch was not asked for.
    fn number(&self, jobs: Vec<Job>, signer: &dyn Signer, ephemeral: bool) -> Option<Numbered> {
        let asked = jobs.len();
        let mut random = vec![0u8; 16 * jobs.len()];
        if let Err(e) = getrandom::getrandom(&mut random) {
            tracing::error!(error = %e, "no system randomness; the batch is refused");
            refuse(jobs, &EvidenceError::Randomness(e.to_string()));
            return None;
        }
        let first = self.shared.store.size();
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

fn refuse(jobs: Vec<Job>, e: &EvidenceError) {
    for job in jobs {
        let _ = job.reply.send(Err(e.clone()));
    }
}
