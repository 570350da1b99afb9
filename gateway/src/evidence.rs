//! The gateway's side of evidence: building receipts from requests and issuing them through
//! the ledger (sign + durable log). See `lap-evidence` for the ordering and durability rules.

use crate::config::Config;
use crate::metrics::Metrics;
use lap_evidence::{EvidenceError, Issued, Ledger, Observer, Settings, SignerSlot};
use lap_keys::Keyset;
use lap_receipt::{Call, Decision, Kind, Principal, Receipt, RECEIPT_VERSION};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use time::format_description::FormatItem;
use time::macros::format_description;

/// `2026-11-23T06:00:00.123456Z`
const TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(TIMESTAMP)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000000Z".into())
}

pub struct Evidence {
    ledger: Ledger,
    gateway_id: String,
    id_prefix: String,
    seq: AtomicU64,
    /// Receipt id → log index, for look-ups on the admin plane.
    ids: RwLock<HashMap<String, u64>>,
    metrics: Arc<Metrics>,
    log_signer: Arc<dyn lap_signing::Signer>,
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
    receipt_signer: impl FnOnce() -> Result<Arc<dyn lap_signing::Signer>, String>,
    create: bool,
) -> Result<Arc<dyn lap_signing::Signer>, String> {
    let path = match &config.log.key_file {
        Some(path) => path.clone(),
        None => {
            let path = config.log.dir.join(LOG_KEY_FILE);
            if !path.exists() {
                let has_checkpoint = lap_tlog::store::read_checkpoint(&config.log.dir)
                    .map_err(|e| e.to_string())?
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
                std::fs::create_dir_all(&config.log.dir)
                    .map_err(|e| format!("{}: {e}", config.log.dir.display()))?;
                let key = lap_keys::create_seed_file(&path)
                    .map_err(|e| format!("cannot create the log key: {e}"))?;
                tracing::info!(path = %path.display(), "created the log's checkpoint key");
                return Ok(Arc::new(lap_signing::InProcess::new("log", key)));
            }
            path
        }
    };
    let text = lap_keys::read_private_file(&path).map_err(|e| e.to_string())?;
    let key = lap_keys::parse_seed_hex(text.trim())
        .map_err(|e| format!("log key {}: {e}", path.display()))?;
    Ok(Arc::new(lap_signing::InProcess::new("log", key)))
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
    pub fn open(config: &Config, keyset: &Keyset, metrics: Arc<Metrics>) -> Result<Self, String> {
        let active = keyset.active();
        let signer = lap_signing::for_key(active, config.external_coprocess)
            .ok_or_else(|| format!("active key {:?} cannot sign", active.kid))?;
        let log_signer = log_signer(config, || Ok(signer.clone()), true)?;
        let settings = Settings {
            origin: config.log.origin.clone(),
            checkpoint_every: config.log.checkpoint_every,
            checkpoint_interval: config.log.checkpoint_interval,
        };
        let (ledger, recovery) = Ledger::open(
            &config.log.dir,
            settings,
            SignerSlot {
                signer,
                ephemeral: keyset.is_ephemeral(),
            },
            log_signer.clone(),
            Arc::new(MetricsObserver(metrics.clone())),
        )
        .map_err(|e| format!("receipt log {}: {e}", config.log.dir.display()))?;
        if recovery.truncated_bytes > 0 {
            tracing::warn!(
                bytes = recovery.truncated_bytes,
                size = recovery.size,
                "receipt log: removed a torn tail left by a crash (entries never acknowledged)"
            );
        }
        let mut ids = HashMap::with_capacity(recovery.size as usize);
        for index in 0..recovery.size {
            let entry = ledger.store().read(index).map_err(|e| e.to_string())?;
            let (_, r) = lap_receipt::open(&entry)
                .map_err(|e| format!("receipt log entry {index} is not a receipt: {e}"))?;
            ids.insert(r.receipt_id, index);
        }
        metrics.log_size.set(recovery.size as i64);
        let mut prefix = [0u8; 6];
        getrandom::getrandom(&mut prefix).map_err(|e| e.to_string())?;
        tracing::info!(
            origin = %config.log.origin,
            size = recovery.size,
            dir = %config.log.dir.display(),
            vkey = %ledger.log_vkey(),
            "receipt log open"
        );
        let evidence = Self {
            ledger,
            gateway_id: config.gateway_id.clone(),
            id_prefix: hex::encode(prefix),
            seq: AtomicU64::new(0),
            ids: RwLock::new(ids),
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

    /// Signs and logs `draft`; the call may proceed only on `Ok`.
    pub async fn issue(&self, draft: Receipt) -> Result<Issued, EvidenceError> {
        let kind = kind_label(draft.kind);
        let result = self.ledger.issue(draft).await;
        match &result {
            Ok(issued) => {
                if let Ok(mut ids) = self.ids.write() {
                    ids.insert(issued.receipt_id.clone(), issued.index);
                }
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

    pub fn index_of(&self, receipt_id: &str) -> Option<u64> {
        self.ids.read().ok()?.get(receipt_id).copied()
    }

    /// A fresh receipt with everything but the signer and log position filled in.
    pub fn draft(
        &self,
        kind: Kind,
        request_id: &str,
        principal: Option<&lap_auth::Principal>,
        call: Call,
        decision: Decision,
    ) -> Receipt {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        Receipt {
            version: RECEIPT_VERSION,
            receipt_id: format!("rcpt_{}_{n:x}", self.id_prefix),
            kind,
            issued_at: now_rfc3339(),
            gateway_id: self.gateway_id.clone(),
            request_id: request_id.to_string(),
            principal: principal.map(|p| Principal {
                agent_id: p.agent_id.to_string(),
                auth: "api_key".into(),
                key_id: p.key_id.clone(),
                key_hash_prefix: p.key_hash_prefix.clone(),
            }),
            call,
            decision,
            completion: None,
            // Filled in by the sequencer.
            signer: Default::default(),
            log: Default::default(),
        }
    }
}

fn kind_label(k: Kind) -> &'static str {
    match k {
        Kind::Decision => "decision",
        Kind::Completion => "completion",
        Kind::Denial => "denial",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_microseconds_and_z() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 27, "{t}");
        assert!(t.ends_with('Z'));
    }
}
