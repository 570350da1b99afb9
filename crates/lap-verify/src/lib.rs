//! Offline verification of LAP evidence.
//!
//! Everything here works from files alone, with no network: a trust file (the gateway's
//! `/v1/keys` document, saved by the auditor), a log directory (`entries` + `checkpoint` +
//! `checkpoints`), and optionally a checkpoint the auditor already trusts. A log holds two
//! kinds of entries (`lap_receipt::Entry`): DSSE envelopes (`per_receipt`), each signed by a
//! receipt key, and batched leaves, proven by their inclusion under a checkpoint signed by the
//! log key — the checkpoint of their batch also carries the receipt key's signature, which
//! shows which key stood behind the batch. [`verify_log`] checks that:
//!
//! * every record is intact (leaf hashes) and every entry is a receipt of either kind;
//! * every envelope is signed by a key of the trust file that was valid when it was issued
//!   (not before `not_before`, before `not_after`, before `revoked_at`);
//! * every batched leaf names a key of the trust file valid when it was issued, and the first
//!   checkpoint that covers it (its batch's) carries a valid signature by that key
//!   ([`BatchSignatures`]);
//! * every receipt names this log's origin and its own position (no reordering, no splicing);
//! * the checkpoint, and every checkpoint of the history, is signed by the log key and its
//!   root is the root of the entries it covers (nothing removed, inserted or altered below
//!   it);
//! * a pinned earlier checkpoint is a prefix of this log (no fork, no rollback).
//!
//! [`verify_receipt_with_tlog_proof`] checks what an agent holds for one call: the entry and
//! its `tlog-proof`, with nothing but the log key (or a trust file). Each problem is reported
//! with a stable code and the index it concerns.

pub mod pack;

use ed25519_dalek::VerifyingKey;
use lap_keys::TrustDocument;
use lap_receipt::{Entry, Receipt};
use lap_tlog::json::InclusionProofJson;
use lap_tlog::merkle::{leaf_hash, Tree};
use lap_tlog::note::{self, Checkpoint, NoteVerifier};
use lap_tlog::proof::TlogProof;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// One key of the trust file.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub key_id: String,
    pub public_key: VerifyingKey,
    pub not_before: Option<OffsetDateTime>,
    pub not_after: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

/// The auditor's trust anchors: receipt keys and the log's checkpoint key.
#[derive(Debug, Clone)]
pub struct TrustFile {
    pub keys: BTreeMap<String, TrustedKey>,
    pub log_origin: String,
    pub log_verifier: NoteVerifier,
}

/// A problem found, with a stable code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: &'static str,
    /// The log index concerned, when there is one.
    pub index: Option<u64>,
    pub detail: String,
}

impl Finding {
    pub fn new(code: &'static str, index: Option<u64>, detail: impl Into<String>) -> Self {
        Finding {
            code,
            index,
            detail: detail.into(),
        }
    }
}

/// The outcome of a verification.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub entries: u64,
    pub checkpoint_size: Option<u64>,
    pub failures: Vec<Finding>,
    pub notes: Vec<Finding>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub(crate) fn fail(
        &mut self,
        code: &'static str,
        index: Option<u64>,
        detail: impl Into<String>,
    ) {
        self.failures.push(Finding::new(code, index, detail));
    }

    pub(crate) fn note(
        &mut self,
        code: &'static str,
        index: Option<u64>,
        detail: impl Into<String>,
    ) {
        self.notes.push(Finding::new(code, index, detail));
    }

    /// The distinct failure codes, sorted.
    pub fn failure_codes(&self) -> Vec<&'static str> {
        let mut codes: Vec<_> = self.failures.iter().map(|f| f.code).collect();
        codes.sort_unstable();
        codes.dedup();
        codes
    }
}

/// Why the inputs themselves could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("trust file: {0}")]
    Trust(String),
    #[error("log: {0}")]
    Log(String),
    #[error("{0}")]
    Unreadable(String),
}

impl InputError {
    /// Stable code, printed by the CLI.
    pub fn code(&self) -> &'static str {
        match self {
            InputError::Trust(_) => "TRUST_FILE_INVALID",
            InputError::Log(_) => "LOG_UNREADABLE",
            InputError::Unreadable(_) => "INPUT_UNREADABLE",
        }
    }
}

impl TrustFile {
    /// The ids of this log's receipts.
    pub(crate) fn ids(&self) -> lap_receipt::ReceiptIds {
        lap_receipt::ReceiptIds::new(&self.log_origin)
    }
}

/// An optional RFC 3339 time of a trust-file key.
fn time_field(value: Option<&str>, field: &str) -> Result<Option<OffsetDateTime>, InputError> {
    value
        .map(|s| {
            OffsetDateTime::parse(s, &Rfc3339)
                .map_err(|_| InputError::Trust(format!("{field} {s:?} is not RFC 3339")))
        })
        .transpose()
}

impl TrustFile {
    /// Parses the `/v1/keys` document ([`lap_keys::TrustDocument`]) and checks that it can
    /// anchor a verification: every key a usable Ed25519 key, every time RFC 3339, key ids
    /// unique, and a log whose checkpoint key is named after its origin.
    pub fn parse(text: &str) -> Result<Self, InputError> {
        let doc = TrustDocument::parse(text).map_err(|e| InputError::Trust(e.to_string()))?;
        let mut keys = BTreeMap::new();
        for k in &doc.keys {
            let key_id = &k.key_id;
            let public_key = lap_keys::parse_public_hex(&k.public_key_hex)
                .map_err(|e| InputError::Trust(format!("key {key_id:?}: {e}")))?;
            if public_key.is_weak() {
                return Err(InputError::Trust(format!(
                    "key {key_id:?} is a small-order point, not a usable Ed25519 key"
                )));
            }
            // Retirement does not limit verification, but a trust file is read whole.
            time_field(k.retired_at.as_deref(), "retired_at")?;
            let key = TrustedKey {
                key_id: key_id.clone(),
                public_key,
                not_before: time_field(k.not_before.as_deref(), "not_before")?,
                not_after: time_field(k.not_after.as_deref(), "not_after")?,
                revoked_at: time_field(k.revoked_at.as_deref(), "revoked_at")?,
            };
            if keys.insert(key_id.clone(), key).is_some() {
                return Err(InputError::Trust(format!("duplicate key {key_id:?}")));
            }
        }
        let log = doc
            .log
            .ok_or_else(|| InputError::Trust("missing log.origin".into()))?;
        let log_verifier = NoteVerifier::parse_vkey(&log.vkey)
            .map_err(|e| InputError::Trust(format!("log.vkey: {e}")))?;
        if log_verifier.name != log.origin {
            return Err(InputError::Trust(
                "log.vkey is not named after log.origin".into(),
            ));
        }
        Ok(Self {
            keys,
            log_origin: log.origin,
            log_verifier,
        })
    }
}

/// A parsed envelope whose signature is still to be checked.
pub(crate) struct Opened<'t> {
    pub receipt: Receipt,
    /// The DSSE PAE bytes the signature covers.
    pub message: Vec<u8>,
    pub signature: ed25519_dalek::Signature,
    pub key: &'t TrustedKey,
}

/// A log entry, parsed: an envelope whose signature is still to be checked, or a batched
/// leaf whose key claim and batch signature are still to be checked.
pub(crate) enum OpenedEntry<'t> {
    Envelope(Opened<'t>),
    Leaf(Receipt),
}

/// Parses a log entry of either kind; for an envelope, finds its trusted key.
pub(crate) fn open_entry<'t>(
    trust: &'t TrustFile,
    entry: &[u8],
    index: Option<u64>,
) -> Result<OpenedEntry<'t>, Finding> {
    let malformed =
        |e: lap_receipt::ReceiptError| Finding::new("RECEIPT_MALFORMED", index, e.to_string());
    match lap_receipt::open_entry(entry).map_err(malformed)? {
        Entry::Leaf(r) => Ok(OpenedEntry::Leaf(r)),
        Entry::Envelope { envelope, receipt } => {
            open_envelope(trust, envelope, receipt, index).map(OpenedEntry::Envelope)
        }
    }
}

/// Finds the trusted key of a parsed envelope; the signature is not checked yet.
fn open_envelope<'t>(
    trust: &'t TrustFile,
    env: lap_receipt::dsse::Envelope,
    receipt: Receipt,
    index: Option<u64>,
) -> Result<Opened<'t>, Finding> {
    let finding = |code, detail: String| Finding::new(code, index, detail);
    let sig = env
        .signatures
        .first()
        .ok_or_else(|| finding("RECEIPT_UNSIGNED", "no signature".into()))?;
    if env.signatures.len() > 1 {
        return Err(finding(
            "RECEIPT_MALFORMED",
            "more than one signature (the gateway signs once)".into(),
        ));
    }
    let key = trust.keys.get(&sig.keyid).ok_or_else(|| {
        finding(
            "UNKNOWN_KEY",
            format!("signed by {:?}, not in the trust file", sig.keyid),
        )
    })?;
    Ok(Opened {
        message: env.pae(),
        signature: ed25519_dalek::Signature::from_bytes(&sig.sig),
        receipt,
        key,
    })
}

/// `key` was valid (not before `not_before`, before `not_after` and `revoked_at`) when
/// `receipt` was issued.
fn check_key_validity(
    key: &TrustedKey,
    receipt: &Receipt,
    index: Option<u64>,
) -> Result<(), Finding> {
    let finding = |code, detail: String| Finding::new(code, index, detail);
    let issued = OffsetDateTime::parse(&receipt.issued_at, &Rfc3339)
        .map_err(|_| finding("RECEIPT_MALFORMED", "issued_at is not RFC 3339".into()))?;
    if key.revoked_at.is_some_and(|r| issued >= r) {
        return Err(finding(
            "KEY_REVOKED",
            format!(
                "key {:?} was revoked before this receipt was issued",
                key.key_id
            ),
        ));
    }
    if key.not_before.is_some_and(|t| issued < t) || key.not_after.is_some_and(|t| issued >= t) {
        return Err(finding(
            "KEY_OUTSIDE_VALIDITY",
            format!(
                "key {:?} was not valid at {}",
                key.key_id, receipt.issued_at
            ),
        ));
    }
    Ok(())
}

/// What a receipt with a valid signature must also satisfy: it names the key that signed it,
/// and that key was valid (not before `not_before`, before `not_after` and `revoked_at`) when
/// the receipt was issued.
pub(crate) fn check_signed_receipt(opened: &Opened, index: Option<u64>) -> Result<(), Finding> {
    let (receipt, key) = (&opened.receipt, opened.key);
    if receipt.signer.key_id != key.key_id {
        return Err(Finding::new(
            "SIGNER_MISMATCH",
            index,
            format!(
                "payload names key {:?}, signature is by {:?}",
                receipt.signer.key_id, key.key_id
            ),
        ));
    }
    check_key_validity(key, receipt, index)
}

/// A batched leaf names the receipt key that signed its batch's checkpoint: that key must be
/// in the trust file and valid when the receipt was issued. Returns the key.
pub(crate) fn check_claimed_key<'t>(
    trust: &'t TrustFile,
    receipt: &Receipt,
    index: Option<u64>,
) -> Result<&'t TrustedKey, Finding> {
    let kid = &receipt.signer.key_id;
    let key = trust.keys.get(kid).ok_or_else(|| {
        Finding::new(
            "UNKNOWN_KEY",
            index,
            format!("the batch was signed by {kid:?}, not in the trust file"),
        )
    })?;
    check_key_validity(key, receipt, index)?;
    Ok(key)
}

/// A receipt must name this log and the index it was found at: otherwise it was spliced in
/// from another log, or moved within this one. A batched receipt's id is its position
/// (`ids`: this log's, `ReceiptIds::new(&trust.log_origin)`).
pub(crate) fn check_position(
    trust: &TrustFile,
    ids: &lap_receipt::ReceiptIds,
    receipt: &Receipt,
    index: u64,
) -> Result<(), Finding> {
    if receipt.log.origin != trust.log_origin {
        let detail = format!("receipt belongs to log {:?}", receipt.log.origin);
        return Err(Finding::new("ORIGIN_MISMATCH", Some(index), detail));
    }
    if receipt.log.index != index {
        let detail = format!(
            "receipt says index {} (moved, removed, inserted or spliced)",
            receipt.log.index
        );
        return Err(Finding::new("INDEX_MISMATCH", Some(index), detail));
    }
    // `index_of` accepts only the canonical spelling, so this is `receipt_id == ids.id(index)`.
    if receipt.version == lap_receipt::LEAF_VERSION
        && ids.index_of(&receipt.receipt_id) != Some(index)
    {
        let detail = format!(
            "receipt id {:?} does not name its position (expected {:?})",
            receipt.receipt_id,
            ids.id(index)
        );
        return Err(Finding::new("INDEX_MISMATCH", Some(index), detail));
    }
    Ok(())
}

/// Verifies one receipt envelope (signature, key validity at its issue time); returns the
/// receipt on success, the finding otherwise. A batched receipt has no signature of its own:
/// it needs its proof ([`verify_receipt_with_tlog_proof`]).
pub fn verify_receipt(
    trust: &TrustFile,
    entry: &[u8],
    index: Option<u64>,
) -> Result<Receipt, Finding> {
    let opened = match open_entry(trust, entry, index)? {
        OpenedEntry::Envelope(o) => o,
        OpenedEntry::Leaf(_) => {
            return Err(Finding::new(
                "RECEIPT_UNSIGNED",
                index,
                "a batched receipt is proven by its inclusion under a signed checkpoint: give its tlog-proof (--proof)",
            ))
        }
    };
    opened
        .key
        .public_key
        .verify_strict(&opened.message, &opened.signature)
        .map_err(|_| {
            let detail = format!("signature by {:?} does not verify", opened.key.key_id);
            Finding::new("BAD_SIGNATURE", index, detail)
        })?;
    check_signed_receipt(&opened, index)?;
    Ok(opened.receipt)
}

/// Verifies one receipt together with its inclusion proof (the admin plane's
/// `/v1/log/proof/inclusion` answer) and the checkpoint note that proof refers to. For a
/// batched receipt the checkpoint is usually a later one than its batch's, so the receipt
/// key's signature is not checked here (a note says so): use its `tlog-proof` for that.
pub fn verify_receipt_with_proof(
    trust: &TrustFile,
    entry: &[u8],
    proof_json: &str,
    checkpoint_note: &str,
) -> Report {
    let mut report = Report {
        entries: 1,
        ..Report::default()
    };
    let proof: InclusionProofJson = match serde_json::from_str(proof_json) {
        Ok(p) => p,
        Err(e) => {
            report.fail("PROOF_MALFORMED", None, e.to_string());
            return report;
        }
    };
    let Some(hashes) = proof.path() else {
        report.fail(
            "PROOF_MALFORMED",
            None,
            "every hash must be base64 of 32 bytes",
        );
        return report;
    };
    let (index, size) = (proof.index, proof.tree_size);
    let checked = match open_entry(trust, entry, Some(index)) {
        Err(f) => Err(f),
        Ok(OpenedEntry::Envelope(_)) => verify_receipt(trust, entry, Some(index)),
        Ok(OpenedEntry::Leaf(r)) => {
            report.note(
                "RECEIPT_KEY_NOT_CHECKED",
                Some(index),
                "a batched receipt: the receipt key's signature is on its batch's checkpoint (give its tlog-proof to check it)",
            );
            check_claimed_key(trust, &r, Some(index)).map(|_| r)
        }
    }
    .and_then(|r| check_position(trust, &trust.ids(), &r, index));
    if let Err(f) = checked {
        report.failures.push(f);
    }
    let Some(cp) = open_checkpoint(trust, checkpoint_note, "checkpoint", &mut report) else {
        return report;
    };
    report.checkpoint_size = Some(cp.size);
    let leaf = leaf_hash(entry);
    if cp.size != size || !lap_tlog::merkle::verify_inclusion(index, size, &leaf, &hashes, &cp.root)
    {
        report.fail(
            "INCLUSION_PROOF_FAILED",
            Some(index),
            format!(
                "the receipt is not proven at index {index} of the checkpoint's tree (size {})",
                cp.size
            ),
        );
    }
    report
}

/// What `verify_receipt_with_tlog_proof` trusts: the auditor's trust file, or only the log's
/// verifier key (what an agent holds: `/v1/log/vkey`).
pub enum Anchor<'a> {
    Trust(&'a TrustFile),
    LogKey(&'a NoteVerifier),
}

/// Verifies what a call got from the gateway: its log entry and its C2SP `tlog-proof`. With
/// the log key alone: the proof's checkpoint is signed by the log key for its origin, the
/// entry is at the proof's index of that tree, and names that origin, index (and, batched,
/// the id derived from it). With a trust file, also: an envelope's own signature, and for a
/// batched receipt the receipt key's signature on the checkpoint (its batch's), by a trusted
/// key valid when the receipt was issued.
pub fn verify_receipt_with_tlog_proof(
    anchor: Anchor<'_>,
    entry: &[u8],
    proof_text: &str,
) -> Report {
    let mut report = Report {
        entries: 1,
        ..Report::default()
    };
    let log_key = match &anchor {
        Anchor::Trust(t) => &t.log_verifier,
        Anchor::LogKey(k) => k,
    };
    let proof = match TlogProof::parse(proof_text) {
        Ok(p) => p,
        Err(e) => {
            report.fail(e.code(), None, e.to_string());
            return report;
        }
    };
    let index = proof.index;
    match proof.verify(&leaf_hash(entry), log_key) {
        Ok(cp) => report.checkpoint_size = Some(cp.size),
        Err(e) => report.fail(e.code(), Some(index), e.to_string()),
    }
    let receipt = match &anchor {
        Anchor::Trust(trust) => {
            let r = match open_entry(trust, entry, Some(index)) {
                Err(f) => Err(f),
                Ok(OpenedEntry::Envelope(_)) => verify_receipt(trust, entry, Some(index)),
                Ok(OpenedEntry::Leaf(r)) => {
                    let mut sigs = BatchSignatures::new(trust);
                    check_claimed_key(trust, &r, Some(index))
                        .and_then(|_| sigs.check(&proof.checkpoint, &r, index))
                        .map(|()| r)
                }
            };
            r.and_then(|r| check_position(trust, &trust.ids(), &r, index).map(|()| r))
        }
        Anchor::LogKey(k) => {
            let r = lap_receipt::open_entry(entry)
                .map(Entry::into_receipt)
                .map_err(|e| Finding::new("RECEIPT_MALFORMED", Some(index), e.to_string()));
            if r.is_ok() {
                report.note(
                    "RECEIPT_KEY_NOT_CHECKED",
                    Some(index),
                    "only the log key was given: which receipt key stood behind this receipt is not checked (give the trust file for that)",
                );
            }
            r.and_then(|r| {
                let t = TrustFile {
                    keys: BTreeMap::new(),
                    log_origin: k.name.clone(),
                    log_verifier: (*k).clone(),
                };
                check_position(&t, &t.ids(), &r, index).map(|()| r)
            })
        }
    };
    if let Err(f) = receipt {
        report.failures.push(f);
    }
    report
}

/// Checks that the checkpoint of a batched receipt's batch carries a valid signature by the
/// receipt key the receipt names (under `lap_receipt::batch_key_name`), remembering each
/// (checkpoint, key) verdict: a batch's receipts share one checkpoint.
pub struct BatchSignatures<'t> {
    trust: &'t TrustFile,
    /// Verdicts by checkpoint note, then by key id.
    verdicts: HashMap<String, Vec<(String, bool)>>,
}

impl<'t> BatchSignatures<'t> {
    pub fn new(trust: &'t TrustFile) -> Self {
        Self {
            trust,
            verdicts: HashMap::new(),
        }
    }

    /// `checkpoint` (a signed note) carries a valid signature by the key `receipt` names.
    pub fn check(
        &mut self,
        checkpoint: &str,
        receipt: &Receipt,
        index: u64,
    ) -> Result<(), Finding> {
        let kid = &receipt.signer.key_id;
        let fail = |detail: String| Finding::new("BATCH_SIGNATURE", Some(index), detail);
        let key = self
            .trust
            .keys
            .get(kid)
            .ok_or_else(|| fail(format!("key {kid:?} is not in the trust file")))?;
        let known = self
            .verdicts
            .get(checkpoint)
            .and_then(|v| v.iter().find(|(k, _)| k == kid))
            .map(|&(_, v)| v);
        let verdict = match known {
            Some(v) => v,
            None => {
                let name = lap_receipt::batch_key_name(&self.trust.log_origin, kid);
                let v = NoteVerifier::new(&name, key.public_key)
                    .is_ok_and(|v| note::open(checkpoint, &v).is_ok());
                self.verdicts
                    .entry(checkpoint.to_string())
                    .or_default()
                    .push((kid.clone(), v));
                v
            }
        };
        if verdict {
            Ok(())
        } else {
            Err(fail(format!(
                "the checkpoint of this receipt's batch has no valid signature by the receipt key {kid:?}"
            )))
        }
    }
}

/// Opens a checkpoint note signed by the trusted log key for the trusted origin; on failure
/// reports why (`CHECKPOINT_SIGNATURE`, `ORIGIN_MISMATCH`, `CHECKPOINT_MALFORMED`) about `what`.
pub(crate) fn open_checkpoint(
    trust: &TrustFile,
    text: &str,
    what: &str,
    report: &mut Report,
) -> Option<Checkpoint> {
    match checkpoint_of(trust, text) {
        Ok(cp) => Some(cp),
        Err(why) => {
            report.fail(why.code, None, format!("{what}{}", why.detail));
            None
        }
    }
}

/// Why a checkpoint note cannot be used: a code and what follows the note's description.
pub(crate) struct Unusable {
    pub code: &'static str,
    pub detail: String,
}

/// [`open_checkpoint`] without the report, for notes opened on several threads.
pub(crate) fn checkpoint_of(trust: &TrustFile, text: &str) -> Result<Checkpoint, Unusable> {
    let unusable = |code, detail| Unusable { code, detail };
    let body = note::open(text, &trust.log_verifier)
        .map_err(|e| unusable("CHECKPOINT_SIGNATURE", format!(": {e}")))?;
    match Checkpoint::parse(body) {
        Ok(cp) if cp.origin == trust.log_origin => Ok(cp),
        Ok(cp) => Err(unusable(
            "ORIGIN_MISMATCH",
            format!(" is for log {:?}", cp.origin),
        )),
        Err(e) => Err(unusable("CHECKPOINT_MALFORMED", format!(": {e}"))),
    }
}

/// Threads to use: `threads`, or all CPUs for 0.
pub(crate) fn thread_count(threads: usize) -> usize {
    match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Runs `f` on `items` split into one contiguous chunk per thread (`threads`: see
/// [`thread_count`]); `f` gets the offset of its chunk. The results come back in order; a
/// chunk whose thread failed gives an `INTERNAL_ERROR` finding instead.
pub(crate) fn in_chunks<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(usize, &[T]) -> R + Sync,
) -> Vec<Result<R, Finding>> {
    let chunk = items.len().div_ceil(thread_count(threads)).max(1);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(k, part)| s.spawn(move || f(k * chunk, part)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| panicked()))
            .collect()
    })
}

pub(crate) fn panicked() -> Finding {
    Finding::new("INTERNAL_ERROR", None, "a verification thread failed")
}

/// Verifies a log directory against a trust file (and optionally a pinned checkpoint note).
pub fn verify_log(
    dir: &Path,
    trust: &TrustFile,
    pinned: Option<&str>,
) -> Result<Report, InputError> {
    let log =
        lap_tlog::store::read_only_in_place(dir).map_err(|e| InputError::Log(e.to_string()))?;
    let entries: Vec<&[u8]> = log.entries().collect();
    let mut report = Report {
        entries: entries.len() as u64,
        ..Report::default()
    };
    if let Some((index, offset)) = log.corrupt_at {
        report.fail(
            "RECORD_CORRUPT",
            Some(index),
            format!("damaged record at byte {offset} with intact records after it"),
        );
    }
    if log.torn_bytes > 0 {
        report.note(
            "TORN_TAIL",
            Some(report.entries),
            format!(
                "{} bytes after the last record (an interrupted, unacknowledged write)",
                log.torn_bytes
            ),
        );
    }
    // Each record's leaf hash was checked against its bytes as the log was read.
    let tree = Tree::from_leaf_hashes(log.leaf_hashes.iter().copied());

    let checked =
        |text: &str, what: &str, report: &mut Report| open_checkpoint(trust, text, what, report);
    let check_against_log =
        |cp: &Checkpoint, what: &str, code: &'static str, report: &mut Report| match tree
            .root(cp.size)
        {
            Ok(root) if root == cp.root => true,
            Ok(_) => {
                report.fail(
                    code,
                    None,
                    format!(
                        "{what} root differs from the log's first {} entries",
                        cp.size
                    ),
                );
                false
            }
            Err(_) => {
                report.fail(
                    "LOG_TRUNCATED",
                    None,
                    format!(
                        "{what} covers {} entries, the log has {}",
                        cp.size,
                        tree.size()
                    ),
                );
                false
            }
        };
    // Every checkpoint that verifies and agrees with the log, by size: the batches' own
    // checkpoints are how batched receipts are tied to the receipt key.
    let mut covering: BTreeMap<u64, &str> = BTreeMap::new();
    let mut latest_size = 0;
    match &log.checkpoint {
        None => report.fail("NO_CHECKPOINT", None, "the log directory has no checkpoint"),
        Some(text) => {
            if let Some(cp) = checked(text, "checkpoint", &mut report) {
                report.checkpoint_size = Some(cp.size);
                latest_size = cp.size;
                if check_against_log(&cp, "checkpoint", "CHECKPOINT_ROOT_MISMATCH", &mut report) {
                    covering.insert(cp.size, text);
                }
            }
        }
    }
    // The history holds a checkpoint per batch: their signatures are checked on all CPUs,
    // the verdicts reported in order.
    let opened = in_chunks(&log.checkpoints, 0, |_, part| {
        part.iter()
            .map(|text| (log.checkpoint.as_ref() != Some(text)).then(|| checkpoint_of(trust, text)))
            .collect::<Vec<_>>()
    });
    let mut history = log.checkpoints.iter().enumerate();
    for part in opened {
        let part = match part {
            Ok(p) => p,
            Err(f) => {
                report.failures.push(f);
                // Its notes are unchecked: the ones after would be paired with the wrong verdicts.
                break;
            }
        };
        // `part` first: zip stops on it without taking one more from `history`.
        for (verdict, (n, text)) in part.into_iter().zip(history.by_ref()) {
            let what = || format!("checkpoint history record {n}");
            match verdict {
                Some(Err(why)) => report.fail(why.code, None, format!("{}{}", what(), why.detail)),
                Some(Ok(cp)) if check_against_log(&cp, &what(), "FORK_DETECTED", &mut report) => {
                    covering.entry(cp.size).or_insert(text);
                }
                // The `checkpoint` file itself (checked above), or one that does not agree
                // with the log (reported).
                None | Some(Ok(_)) => {}
            }
        }
    }
    // The gateway makes a checkpoint durable by appending it to the history and replaces the
    // `checkpoint` file later: the latest durable checkpoint is the larger of the two.
    if let Some(&size) = covering.keys().next_back() {
        if size > latest_size {
            latest_size = size;
            report.checkpoint_size = Some(size);
        }
    }
    if log.checkpoint.is_some() && latest_size < tree.size() {
        report.note(
            "UNCHECKPOINTED_TAIL",
            Some(latest_size),
            format!(
                "{} entries after the latest checkpoint",
                tree.size() - latest_size
            ),
        );
    }

    // Every entry, on all CPUs, in contiguous chunks (a batch's receipts mostly share a
    // chunk, so each batch signature is checked about once); findings in log order.
    let ids = trust.ids();
    let covering = &covering;
    let verdicts = in_chunks(&entries, 0, |offset, part| {
        let mut batches = BatchSignatures::new(trust);
        let mut findings = Vec::new();
        for (k, entry) in part.iter().enumerate() {
            let i = (offset + k) as u64;
            let (signed, position) = match open_entry(trust, entry, Some(i)) {
                Err(f) => (Err(f), Ok(())),
                Ok(OpenedEntry::Envelope(o)) => {
                    // What `verify_receipt` checks, without parsing the entry again.
                    let valid = o.key.public_key.verify_strict(&o.message, &o.signature);
                    match valid {
                        Err(_) => {
                            let detail = format!("signature by {:?} does not verify", o.key.key_id);
                            (Err(Finding::new("BAD_SIGNATURE", Some(i), detail)), Ok(()))
                        }
                        Ok(()) => match check_signed_receipt(&o, Some(i)) {
                            Ok(()) => (Ok(()), check_position(trust, &ids, &o.receipt, i)),
                            Err(f) => (Err(f), Ok(())),
                        },
                    }
                }
                Ok(OpenedEntry::Leaf(r)) => {
                    // The position is checked whatever the signatures say: a leaf is authentic
                    // by inclusion, so a moved one must say so even when its batch is
                    // unprovable.
                    let signed = check_claimed_key(trust, &r, Some(i)).and_then(|_| {
                        if i >= latest_size {
                            // Never acknowledged (noted as UNCHECKPOINTED_TAIL): no batch yet.
                            return Ok(());
                        }
                        match covering.range(i + 1..).next() {
                            Some((_, note)) => batches.check(note, &r, i),
                            None => Err(Finding::new(
                                "BATCH_SIGNATURE",
                                Some(i),
                                "no usable checkpoint covers this batched receipt",
                            )),
                        }
                    });
                    (signed, check_position(trust, &ids, &r, i))
                }
            };
            findings.extend(signed.err());
            findings.extend(position.err());
        }
        findings
    });
    for part in verdicts {
        match part {
            Ok(findings) => report.failures.extend(findings),
            Err(f) => report.failures.push(f),
        }
    }

    if let Some(text) = pinned {
        if let Some(cp) = checked(text, "pinned checkpoint", &mut report) {
            check_against_log(&cp, "pinned checkpoint", "FORK_DETECTED", &mut report);
        }
    }
    Ok(report)
}
