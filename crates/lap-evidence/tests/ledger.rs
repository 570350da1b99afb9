// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ed25519_dalek::SigningKey;
use lap_evidence::*;
use lap_receipt::*;
use lap_signing::{InProcess, Mode, SignError, Signer};
use lap_tlog::merkle::{leaf_hash, verify_inclusion};
use lap_tlog::note::{self, Checkpoint};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Quiet;
impl Observer for Quiet {
    fn signed(&self, _: &'static str, _: bool, _: &'static str) {}
    fn batch(&self, _: usize, _: Duration) {}
    fn checkpoint(&self, _: u64) {}
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lap-evidence-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn draft(n: usize) -> Draft {
    Receipt {
        version: RECEIPT_VERSION,
        receipt_id: format!("rcpt_test_{n}"),
        kind: Kind::Decision,
        issued_at: "2026-11-23T00:00:00.000000Z".into(),
        gateway_id: "gw".into(),
        request_id: format!("req-{n}"),
        principal: None,
        call: Call {
            tool: Some("t".into()),
            method: "GET".into(),
            path: "/".into(),
            query_sha256: None,
            body_sha256: Some(sha256_hex(b"")),
            body_bytes: 0,
            args_sha256: None,
        },
        decision: Decision {
            outcome: Outcome::Allow,
            code: "ALLOWED".into(),
            policy_ids: vec![],
            policy_digest: "0".repeat(64),
        },
        completion: None,
        signer: Default::default(),
        log: Default::default(),
    }
}

fn settings() -> Settings {
    Settings {
        origin: "lap.test/gw".into(),
        checkpoint_every: 10,
        checkpoint_interval: Duration::from_millis(50),
    }
}

fn keys() -> (SigningKey, SigningKey) {
    (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    )
}

fn open(d: &std::path::Path, signer: Arc<dyn Signer>) -> Result<Ledger, OpenError> {
    let (_, log_key) = keys();
    Ledger::open(
        d,
        settings(),
        SignerSlot {
            signer,
            ephemeral: false,
        },
        Arc::new(InProcess::new("log", log_key)),
        Arc::new(Quiet),
    )
    .map(|(l, _)| l)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_receipts_are_signed_logged_and_provable() {
    let d = dir("concurrent");
    let (rk, lk) = keys();
    let ledger = Arc::new(open(&d, Arc::new(InProcess::new("gateway", rk.clone()))).unwrap());
    let mut handles = Vec::new();
    for n in 0..200 {
        let l = ledger.clone();
        handles.push(tokio::spawn(
            async move { l.issue(draft(n)).await.unwrap() },
        ));
    }
    let mut issued = Vec::new();
    for h in handles {
        issued.push(h.await.unwrap());
    }
    let mut indices: Vec<u64> = issued.iter().map(|i| i.index).collect();
    indices.sort();
    assert_eq!(indices, (0..200).collect::<Vec<_>>());
    for i in &issued {
        let (env, r) = open_receipt(i.envelope.as_bytes()).unwrap();
        env.verify("gateway", &rk.verifying_key()).unwrap();
        assert_eq!(r.log.index, i.index, "the signed index is the log index");
        assert_eq!(r.log.origin, "lap.test/gw");
        assert_eq!(ledger.store().read(i.index).unwrap(), i.envelope.as_bytes());
    }
    // A checkpoint covering everything appears, verifies with Go-compatible keys, and every
    // receipt is provably included.
    let mut cp = None;
    for _ in 0..100 {
        if let Some(text) = ledger.checkpoint() {
            let v = note::NoteVerifier::new("lap.test/gw", lk.verifying_key()).unwrap();
            let c = Checkpoint::parse(note::open(&text, &v).unwrap()).unwrap();
            if c.size == 200 {
                cp = Some(c);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cp = cp.expect("checkpoint of size 200");
    for i in &issued {
        let proof = ledger
            .store()
            .with_tree(|t| t.inclusion_proof(i.index, 200))
            .unwrap();
        assert!(verify_inclusion(
            i.index,
            200,
            &leaf_hash(i.envelope.as_bytes()),
            &proof,
            &cp.root
        ));
    }
    drop(ledger);
    std::fs::remove_dir_all(&d).ok();
}

fn open_receipt(b: &[u8]) -> Result<(lap_receipt::dsse::Envelope, Receipt), ReceiptError> {
    lap_receipt::open(b)
}

/// Fails every third signature; used to check renumbering and fail-closed behaviour.
struct Flaky {
    inner: InProcess,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl Signer for Flaky {
    fn key_id(&self) -> &str {
        self.inner.key_id()
    }
    fn public_key(&self) -> &ed25519_dalek::VerifyingKey {
        self.inner.public_key()
    }
    fn mode(&self) -> Mode {
        Mode::External
    }
    async fn sign(&self, m: &[u8]) -> Result<[u8; 64], SignError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
            return Err(SignError::Timeout(Duration::from_millis(1)));
        }
        self.inner.sign(m).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn signer_failures_refuse_only_their_call_and_leave_no_hole() {
    let d = dir("flaky");
    let (rk, _) = keys();
    let flaky = Arc::new(Flaky {
        inner: InProcess::new("gateway", rk.clone()),
        calls: AtomicUsize::new(0),
    });
    let ledger = Arc::new(open(&d, flaky).unwrap());
    let mut handles = Vec::new();
    for n in 0..60 {
        let l = ledger.clone();
        handles.push(tokio::spawn(async move { l.issue(draft(n)).await }));
    }
    let mut ok = Vec::new();
    let mut refused = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(i) => ok.push(i),
            Err(e) => {
                assert_eq!(e.code(), "SIGNER_TIMEOUT");
                refused += 1;
            }
        }
    }
    assert!(refused > 0);
    assert_eq!(
        ok.len() as u64,
        ledger.store().size(),
        "only issued receipts are logged"
    );
    let mut idx: Vec<u64> = ok.iter().map(|i| i.index).collect();
    idx.sort();
    assert_eq!(
        idx,
        (0..ok.len() as u64).collect::<Vec<_>>(),
        "no hole in the log"
    );
    for i in &ok {
        let (env, r) = open_receipt(i.envelope.as_bytes()).unwrap();
        env.verify("gateway", &rk.verifying_key()).unwrap();
        assert_eq!(r.log.index, i.index);
    }
    std::fs::remove_dir_all(&d).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_continues_and_detects_rollback() {
    let d = dir("restart");
    let (rk, _) = keys();
    let signer: Arc<dyn Signer> = Arc::new(InProcess::new("gateway", rk));
    {
        let ledger = open(&d, signer.clone()).unwrap();
        for n in 0..25 {
            ledger.issue(draft(n)).await.unwrap();
        }
        // Wait for the checkpoint of all 25 to be saved.
        for _ in 0..100 {
            if ledger.checkpoint().is_some_and(|c| c.contains("\n25\n")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let ledger = open(&d, signer.clone()).unwrap();
    assert_eq!(ledger.store().size(), 25);
    let next = ledger.issue(draft(99)).await.unwrap();
    assert_eq!(next.index, 25, "indices continue, never reused");
    drop(ledger);
    std::thread::sleep(Duration::from_millis(100));

    // Roll the log back behind the published checkpoint: start-up must refuse.
    let entries = d.join("entries");
    let bytes = std::fs::read(&entries).unwrap();
    std::fs::write(&entries, &bytes[..bytes.len() / 2]).unwrap();
    match open(&d, signer) {
        Err(OpenError::Checkpoint(CheckpointError::Fork(_))) => {}
        Err(e) => panic!("expected a fork error, got {e}"),
        Ok(_) => panic!("a rolled-back log must not open"),
    }
    std::fs::remove_dir_all(&d).ok();
}

/// Entries logged after the last checkpoint of a process that died (no checkpoint at shutdown)
/// get a checkpoint soon after the next start, without waiting for new traffic.
#[tokio::test(flavor = "multi_thread")]
async fn an_uncheckpointed_tail_is_checkpointed_after_restart() {
    let d = dir("tail");
    let (rk, _) = keys();
    let signer: Arc<dyn Signer> = Arc::new(InProcess::new("gateway", rk));
    {
        let ledger = open(&d, signer.clone()).unwrap();
        for n in 0..5 {
            ledger.issue(draft(n)).await.unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    // Three more entries appended as a crashed process leaves them: durable, not checkpointed.
    {
        let (store, _) = lap_tlog::store::LogStore::open(&d).unwrap();
        let tail: Vec<Vec<u8>> = (0..3).map(|n| format!("tail {n}").into_bytes()).collect();
        let refs: Vec<&[u8]> = tail.iter().map(Vec::as_slice).collect();
        store.append(&refs).unwrap();
    }
    let ledger = open(&d, signer).unwrap();
    assert_eq!(ledger.store().size(), 8);
    let mut covered = false;
    for _ in 0..100 {
        if ledger.checkpoint().is_some_and(|c| c.contains("\n8\n")) {
            covered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(covered, "the tail is checkpointed without new traffic");
    std::fs::remove_dir_all(&d).ok();
}
