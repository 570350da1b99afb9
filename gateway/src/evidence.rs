//! The gateway's evidence service: the receipt log opened with its keys (the rotating receipt
//! key, the long-lived checkpoint key) in the configured mode (`batched` or `per_receipt`),
//! receipts issued through the ledger (durable and signed) and counted, and found again by id.
//! Ids are derived from log positions (`lap_receipt::ReceiptIds`), so a look-up needs no table;
//! only ids of an older log (random ones, from before ids were derived) are kept in a table
//! (16 bytes per such receipt), built once at start-up. What a receipt says about a request is drafted by the data plane's
//! evidence stage (`pipeline::evidence`); the ordering and durability rules are
//! `lap-evidence`'s.

use crate::config::Config;
use crate::metrics::Metrics;
use lap_evidence::{EvidenceError, Issued, Ledger, Mode, Observer, Settings, SignerSlot};
use lap_keys::{KeyStatus, Keyset};
use lap_receipt::{Call, Decision, Kind, Principal, Receipt};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use time::format_description::FormatItem;
use time::macros::format_description;

/// `2026-11-23T06:00:00.123456Z`
const TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// A receipt timestamp (`issued_at`'s format) of `t`, which is in UTC.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(TIMESTAMP)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000000Z".into())
}

pub struct Evidence {
    ledger: Ledger,
    gateway_id: String,
    /// Where the receipts issued before ids were derived from positions (an older log) are.
    /// Built once at start-up; new receipts never enter it: both modes give every receipt the
    /// id derived from its index, so only the entries a log held before that fill it. It
    /// therefore does not grow with traffic (its size is that fixed prefix's, empty for a log
    /// begun since), unlike an index of every receipt, which no longer exists.
    legacy_ids: LegacyIds,
    metrics: Arc<Metrics>,
    log_signer: Arc<dyn lap_signing::Signer>,
}

/// Why evidence could not be set up: at start-up (the gateway refuses to start), in
/// `check-config`, or for an offline export.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the active key {0:?} cannot sign (no private key and no external signer)")]
    CannotSign(String),
    #[error(transparent)]
    Keys(#[from] lap_keys::KeyError),
    #[error("receipt log {dir}: {source}")]
    Store {
        dir: PathBuf,
        #[source]
        source: lap_tlog::store::StoreError,
    },
    #[error("{dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the log key: {0}")]
    CreateLogKey(#[source] lap_keys::SeedFileError),
    #[error("log key {path}: {source}")]
    ReadLogKey {
        path: PathBuf,
        #[source]
        source: lap_keys::PrivateFileError,
    },
    #[error("log key {path}: {source}")]
    ParseLogKey {
        path: PathBuf,
        #[source]
        source: lap_keys::HexKeyError,
    },
    #[error("log key: {0}")]
    LogKeyName(#[source] lap_tlog::note::NoteError),
    #[error("receipt log {dir}: {source}")]
    Open {
        dir: PathBuf,
        #[source]
        source: lap_evidence::OpenError,
    },
    #[error("receipt log entry {index} is not a receipt: {source}")]
    NotAReceipt {
        index: u64,
        #[source]
        source: lap_receipt::ReceiptError,
    },
}

/// The signer of `key` (its seed in process, or its external signer as configured).
pub fn signer_for(
    key: &lap_keys::KeyEntry,
    coprocess: bool,
    limits: lap_signing::LimitOverrides,
) -> Result<Arc<dyn lap_signing::Signer>, SetupError> {
    lap_signing::for_key_with(key, coprocess, limits)
        .ok_or_else(|| SetupError::CannotSign(key.kid.clone()))
}

/// The dedicated checkpoint key made in the log directory when `[log] key_file` is not set.
pub const LOG_KEY_FILE: &str = "log.key";

/// The checkpoint (log) key, which also signs audit-pack manifests. It must outlive receipt-key
/// rotations (a restart must still verify the saved checkpoint), so it is never the rotating
/// receipt key: `[log] key_file` if set, otherwise `log.key` in the log directory, created
/// (0600) with the log when `create` is true. A log that already has checkpoints but no
/// `log.key` was begun when the receipt key signed checkpoints: it keeps that key
/// (`receipt_signer` is asked for it only then).
pub fn log_signer(
    config: &Config,
    receipt_signer: impl FnOnce() -> Result<Arc<dyn lap_signing::Signer>, SetupError>,
    create: bool,
) -> Result<Arc<dyn lap_signing::Signer>, SetupError> {
    let dir = &config.log.dir;
    let path = match &config.log.key_file {
        Some(path) => path.clone(),
        None => {
            let path = dir.join(LOG_KEY_FILE);
            if !path.exists() {
                let has_checkpoint = lap_tlog::store::read_checkpoint(dir)
                    .map_err(|source| SetupError::Store {
                        dir: dir.clone(),
                        source,
                    })?
                    .is_some();
                if has_checkpoint || !create {
                    if create {
                        tracing::warn!(
                            "this log's checkpoints are signed with the receipt key (it predates \
                             dedicated log keys): set [log] key_file to that key's seed file \
                             before rotating it"
                        );
                    }
                    return receipt_signer();
                }
                std::fs::create_dir_all(dir).map_err(|source| SetupError::CreateDir {
                    dir: dir.clone(),
                    source,
                })?;
                let key = lap_keys::create_seed_file(&path).map_err(SetupError::CreateLogKey)?;
                tracing::info!(path = %path.display(), "created the log's checkpoint key");
                return Ok(Arc::new(lap_signing::InProcess::new("log", key)));
            }
            path
        }
    };
    let text = lap_keys::read_private_file(&path).map_err(|source| SetupError::ReadLogKey {
        path: path.clone(),
        source,
    })?;
    let key = lap_keys::parse_seed_hex(text.trim())
        .map_err(|source| SetupError::ParseLogKey { path, source })?;
    Ok(Arc::new(lap_signing::InProcess::new("log", key)))
}

/// The log key of a log read offline (`check-config`, `audit-pack`): never created; the
/// receipt key (from the configured keys) only for a log whose checkpoints it signed.
pub fn offline_log_signer(config: &Config) -> Result<Arc<dyn lap_signing::Signer>, SetupError> {
    let receipt_signer = || {
        let keyset = lap_keys::load(&config.keys)?;
        signer_for(keyset.active(), false, config.signer_limits)
    };
    log_signer(config, receipt_signer, false)
}

/// The verifier of a log key, named by the log's origin (a C2SP note verifier key).
pub fn log_verifier(
    config: &Config,
    log_signer: &dyn lap_signing::Signer,
) -> Result<lap_tlog::note::NoteVerifier, SetupError> {
    lap_tlog::note::NoteVerifier::new(&config.log.origin, *log_signer.public_key())
        .map_err(SetupError::LogKeyName)
}

struct MetricsObserver(Arc<Metrics>);

impl Observer for MetricsObserver {
    fn signed(&self, mode: &'static str, ok: bool, code: &'static str) {
        if !ok {
            self.0
                .signer_failures
                .with_label_values(&[mode, code])
                .inc();
        }
    }
    fn batch(&self, entries: usize, fsync: Duration) {
        self.0.log_batch_entries.observe(entries as f64);
        self.0.log_append_seconds.observe(fsync.as_secs_f64());
        self.0.log_size.add(entries as i64);
    }
    fn checkpoint(&self, size: u64) {
        self.0.checkpoint_size.set(size as i64);
    }
}

impl Evidence {
    /// Opens the log and starts the sequencer. Refuses on any doubt (fork, damage, bad key).
    pub fn open(
        config: &Config,
        keyset: &Keyset,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SetupError> {
        let signer = signer_for(
            keyset.active(),
            config.external_coprocess,
            config.signer_limits,
        )?;
        let log_signer = log_signer(config, || Ok(signer.clone()), true)?;
        let settings = Settings {
            origin: config.log.origin.clone(),
            mode: config.evidence_mode,
            checkpoint_every: config.log.checkpoint_every,
            checkpoint_interval: config.log.checkpoint_interval,
            tail_keys: tail_keys(keyset),
        };
        let (ledger, opened) = Ledger::open(
            &config.log.dir,
            settings,
            SignerSlot {
                signer,
                ephemeral: keyset.is_ephemeral(),
            },
            log_signer.clone(),
            Arc::new(MetricsObserver(metrics.clone())),
        )
        .map_err(|source| SetupError::Open {
            dir: config.log.dir.clone(),
            source,
        })?;
        let recovery = &opened.recovery;
        if recovery.truncated_bytes > 0 {
            tracing::warn!(
                bytes = recovery.truncated_bytes,
                size = recovery.size,
                "receipt log: removed a torn tail left by a crash (entries never acknowledged)"
            );
        }
        if recovery.derived_rebuilt > 0 {
            tracing::info!(
                entries = recovery.derived_rebuilt,
                size = recovery.size,
                "receipt log: rebuilt the derived tree and offset files from the entries (first \
                 start with them, or they were missing or damaged)"
            );
        }
        if opened.tail.kept > 0 {
            tracing::info!(
                entries = opened.tail.kept,
                from = opened.checkpointed,
                "receipt log: signed receipts after the last checkpoint verified and kept"
            );
        }
        // Only ids that are not derived from their position need remembering.
        let mut legacy_ids = Vec::new();
        for index in 0..recovery.size {
            let entry = ledger
                .store()
                .read(index)
                .map_err(|source| SetupError::Store {
                    dir: config.log.dir.clone(),
                    source,
                })?;
            let r = lap_receipt::open_entry(&entry)
                .map_err(|source| SetupError::NotAReceipt { index, source })?
                .into_receipt();
            if ledger.ids().index_of(&r.receipt_id) != Some(index) {
                legacy_ids.push((LegacyIds::fingerprint(&r.receipt_id), index));
            }
        }
        metrics.log_size.set(recovery.size as i64);
        tracing::info!(
            origin = %config.log.origin,
            mode = config.evidence_mode.as_str(),
            size = recovery.size,
            dir = %config.log.dir.display(),
            vkey = %ledger.log_vkey(),
            "receipt log open"
        );
        let evidence = Self {
            ledger,
            gateway_id: config.gateway_id.clone(),
            legacy_ids: LegacyIds::new(legacy_ids),
            metrics,
            log_signer,
        };
        // The saved checkpoint is in force from the start, not only once a new one is issued.
        if let Some(size) = evidence.checkpoint_size() {
            evidence.metrics.checkpoint_size.set(size as i64);
        }
        Ok(evidence)
    }

    /// The checkpoint key, which also signs audit-pack manifests.
    pub fn log_signer(&self) -> &Arc<dyn lap_signing::Signer> {
        &self.log_signer
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The tree size of the latest checkpoint (the size proofs default to).
    pub fn checkpoint_size(&self) -> Option<u64> {
        let note = self.ledger.checkpoint()?;
        lap_tlog::note::Checkpoint::from_note_unverified(&note)
            .ok()
            .map(|c| c.size)
    }

    pub fn mode(&self) -> Mode {
        self.ledger.mode()
    }

    /// Logs `draft` durably under a signature; the call may proceed only on `Ok`.
    pub async fn issue(&self, draft: Receipt) -> Result<Issued, EvidenceError> {
        let kind = kind_label(draft.kind);
        let result = self.ledger.issue(draft).await;
        match &result {
            Ok(_) => {
                self.metrics.receipts.with_label_values(&[kind, "ok"]).inc();
            }
            Err(e) => {
                self.metrics
                    .receipts
                    .with_label_values(&[kind, e.code()])
                    .inc();
            }
        }
        result
    }

    /// Where the receipt `receipt_id` would be: the position its id names, or a legacy id's
    /// index. The caller still checks that the entry there carries that id and may be shown
    /// ([`Ledger::served_size`]).
    pub fn index_of(&self, receipt_id: &str) -> Option<u64> {
        self.ledger.ids().index_of(receipt_id).or_else(|| {
            self.legacy_ids.find(receipt_id, |index| {
                self.ledger.store().read(index).is_ok_and(|entry| {
                    lap_receipt::open_entry(&entry)
                        .is_ok_and(|e| e.receipt().receipt_id == receipt_id)
                })
            })
        })
    }

    /// A fresh receipt with everything but its id, version, signer and log position (the
    /// sequencer's) filled in.
    pub fn draft(
        &self,
        kind: Kind,
        request_id: &str,
        principal: Option<&lap_auth::Principal>,
        call: Call,
        decision: Decision,
    ) -> Receipt {
        Receipt {
            // Filled in by the sequencer, which knows the mode and the index.
            version: 0,
            receipt_id: String::new(),
            kind,
            issued_at: now_rfc3339(),
            gateway_id: self.gateway_id.clone(),
            request_id: request_id.to_string(),
            principal: principal.map(receipt_principal),
            call,
            decision,
            completion: None,
            aggregate: None,
            // Filled in by the sequencer.
            signer: Default::default(),
            log: Default::default(),
            blinder: None,
        }
    }
}

/// The receipts of an older log's prefix by id. Those ids were random, so they need a table;
/// this one holds 16 bytes per such receipt — a 64-bit fingerprint of the id (the first 8
/// bytes of its SHA-256) and the index, sorted by fingerprint — instead of the ids themselves
/// (90 to 120 bytes each in a map of strings). A fingerprint only names candidates: when two
/// ids share one, the entries at the candidate indices say which carries the id.
#[derive(Debug, Default)]
struct LegacyIds(Vec<(u64, u64)>);

impl LegacyIds {
    fn new(mut table: Vec<(u64, u64)>) -> Self {
        table.sort_unstable();
        table.shrink_to_fit();
        Self(table)
    }

    fn fingerprint(id: &str) -> u64 {
        let digest = Sha256::digest(id.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }

    /// The index of the receipt `id`: the one candidate with its fingerprint, or, when several
    /// share it, the one whose entry `carries` the id.
    fn find(&self, id: &str, carries: impl Fn(u64) -> bool) -> Option<u64> {
        let fp = Self::fingerprint(id);
        let lo = self.0.partition_point(|&(f, _)| f < fp);
        let hi = self.0.partition_point(|&(f, _)| f <= fp);
        match &self.0[lo..hi] {
            [] => None,
            [(_, index)] => Some(*index),
            several => several.iter().map(|&(_, i)| i).find(|&i| carries(i)),
        }
    }
}

/// The receipt keys whose envelopes start-up accepts after the last checkpoint: every key of
/// the keyset but revoked ones (a revoked key's signatures are not to be trusted on sight).
pub(crate) fn tail_keys(keyset: &Keyset) -> BTreeMap<String, ed25519_dalek::VerifyingKey> {
    keyset
        .keys()
        .filter(|k| k.lifecycle.status() != KeyStatus::Revoked)
        .map(|k| (k.kid.clone(), k.public_key))
        .collect()
}

fn kind_label(k: Kind) -> &'static str {
    match k {
        Kind::Decision => "decision",
        Kind::Completion => "completion",
        Kind::Denial => "denial",
        Kind::DenialAggregate => "denial_aggregate",
        Kind::Admin => "admin",
    }
}

/// The receipt's account of a verified principal: the method and its non-secret facts.
pub fn receipt_principal(p: &lap_auth::Principal) -> Principal {
    use lap_auth::Credential as A;
    use lap_receipt::Credential as R;
    let credential = match &p.credential {
        A::ApiKey {
            key_id,
            key_hash_prefix,
        } => R::ApiKey {
            key_id: key_id.clone(),
            key_hash_prefix: key_hash_prefix.clone(),
        },
        A::Jwt {
            issuer,
            subject,
            kid,
            token_hash_prefix,
            scopes: _,
        } => R::Jwt {
            issuer: issuer.clone(),
            subject: subject.clone(),
            kid: kid.clone(),
            token_hash_prefix: token_hash_prefix.clone(),
        },
        A::Mtls {
            spiffe_id,
            cert_subject,
            cert_sha256,
        } => R::Mtls {
            spiffe_id: spiffe_id.clone(),
            cert_subject: cert_subject.clone(),
            cert_sha256: cert_sha256.clone(),
        },
    };
    Principal {
        agent_id: p.agent_id.to_string(),
        credential,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_ids_are_found_by_fingerprint_and_told_apart_by_their_entry() {
        let ids: Vec<String> = (0..1000).map(|i| format!("rcpt_{i:032x}")).collect();
        let table = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (LegacyIds::fingerprint(id), i as u64))
            .collect();
        let legacy = LegacyIds::new(table);
        let never = |_| panic!("a single candidate needs no entry read");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(legacy.find(id, never), Some(i as u64), "{id}");
        }
        assert_eq!(legacy.find("rcpt_unknown", never), None);
        assert_eq!(LegacyIds::default().find(&ids[0], never), None);
        // Two ids with one fingerprint (as if SHA-256's first 8 bytes collided): the entries
        // decide, and an id that no candidate carries is not found.
        let fp = LegacyIds::fingerprint(&ids[7]);
        let legacy = LegacyIds::new(vec![(fp, 40), (1, 2), (fp, 7), (u64::MAX, 3)]);
        assert_eq!(legacy.find(&ids[7], |i| i == 7), Some(7));
        assert_eq!(legacy.find(&ids[7], |i| i == 40), Some(40));
        assert_eq!(legacy.find(&ids[7], |_| false), None);
    }

    #[test]
    fn timestamps_have_microseconds_and_z() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 27, "{t}");
        assert!(t.ends_with('Z'));
    }
}
