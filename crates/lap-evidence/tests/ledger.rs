// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

//! The ledger's invariants (crate docs), each against a real log directory and real signers:
//! in-process keys, and one-shot external signers that are real child processes failing in
//! the ways a hostile or broken signer does.

use ed25519_dalek::SigningKey;
use lap_evidence::*;
use lap_receipt::*;
use lap_signing::{InProcess, Mode as SignerMode, OneShot, SignError, Signer};
use lap_tlog::merkle::{leaf_hash, verify_inclusion};
use lap_tlog::note::{self, Checkpoint, NoteVerifier};
use lap_tlog::proof::TlogProof;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ORIGIN: &str = "lap.test/gw";

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
        version: 0,
        receipt_id: String::new(),
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
            session: None,
        },
        decision: Decision {
            outcome: Outcome::Allow,
            code: "ALLOWED".into(),
            policy_ids: vec![],
            policy_digest: "0".repeat(64),
        },
        completion: None,
        aggregate: None,
        signer: Default::default(),
        log: Default::default(),
        blinder: None,
    }
}

fn keys() -> (SigningKey, SigningKey) {
    (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    )
}

fn settings(mode: Mode) -> Settings {
    let (rk, _) = keys();
    Settings {
        origin: ORIGIN.into(),
        mode,
        checkpoint_every: 10,
        checkpoint_interval: Duration::from_millis(50),
        tail_keys: BTreeMap::from([("gateway".to_string(), rk.verifying_key())]),
    }
}

fn open_with(d: &Path, mode: Mode, signer: Arc<dyn Signer>) -> Result<(Ledger, Opened), OpenError> {
    let (_, log_key) = keys();
    Ledger::open(
        d,
        settings(mode),
        SignerSlot {
            signer,
            ephemeral: false,
        },
        Arc::new(InProcess::new("log", log_key)),
        Arc::new(Quiet),
    )
}

fn open(d: &Path, mode: Mode, signer: Arc<dyn Signer>) -> Result<Ledger, OpenError> {
    open_with(d, mode, signer).map(|(l, _)| l)
}

fn good_signer() -> Arc<dyn Signer> {
    Arc::new(InProcess::new("gateway", keys().0))
}

fn log_verifier() -> NoteVerifier {
    NoteVerifier::new(ORIGIN, keys().1.verifying_key()).unwrap()
}

fn receipt_verifier(kid: &str, key: &SigningKey) -> NoteVerifier {
    NoteVerifier::new(&batch_key_name(ORIGIN, kid), key.verifying_key()).unwrap()
}

/// Everything an agent can check about a batched receipt with the log key alone, plus the
/// receipt key's signature on the same checkpoint.
fn check_batched(i: &Issued) -> Checkpoint {
    let receipt = open_leaf(i.entry.as_bytes()).unwrap();
    assert_eq!(receipt.version, LEAF_VERSION);
    assert_eq!(receipt.log.index, i.index);
    assert_eq!(receipt.log.origin, ORIGIN);
    assert_eq!(receipt.receipt_id, ReceiptIds::new(ORIGIN).id(i.index));
    assert_eq!(receipt.receipt_id, i.receipt_id);
    assert_eq!(receipt.blinder.as_ref().map(String::len), Some(32));
    assert_eq!(i.leaf_hash, leaf_hash(i.entry.as_bytes()));
    let proof =
        TlogProof::parse(i.proof.as_deref().expect("a batched receipt has a proof")).unwrap();
    assert_eq!(proof.index, i.index);
    let cp = proof.verify(&i.leaf_hash, &log_verifier()).unwrap();
    note::open(&proof.checkpoint, &receipt_verifier("gateway", &keys().0))
        .expect("the receipt key signed the batch's checkpoint");
    cp
}

fn history(d: &Path) -> Vec<String> {
    lap_tlog::store::read_history(d).unwrap()
}

fn on_disk(d: &Path) -> Vec<Vec<u8>> {
    lap_tlog::store::read_only(d).unwrap().entries
}

/// Invariant 1: a batched receipt is returned only as a durable leaf under a durable
/// checkpoint signed by the log key and the receipt key, with a proof an agent checks with the
/// log key alone.
#[tokio::test(flavor = "multi_thread")]
async fn batched_receipts_are_durable_leaves_under_a_durable_signed_checkpoint() {
    let d = dir("batched");
    let ledger = Arc::new(open(&d, Mode::Batched, good_signer()).unwrap());
    let mut handles = Vec::new();
    for n in 0..200 {
        let l = ledger.clone();
        let d = d.clone();
        handles.push(tokio::spawn(async move {
            let i = l.issue(draft(n)).await.unwrap();
            // At the moment of release, the entry and the checkpoint of its proof are on disk.
            let proof = TlogProof::parse(i.proof.as_deref().unwrap()).unwrap();
            assert!(
                history(&d).contains(&proof.checkpoint),
                "checkpoint durable"
            );
            assert_eq!(
                on_disk(&d)[i.index as usize],
                i.entry.as_bytes(),
                "entry durable"
            );
            i
        }));
    }
    let mut issued = Vec::new();
    for h in handles {
        issued.push(h.await.unwrap());
    }
    let mut indices: Vec<u64> = issued.iter().map(|i| i.index).collect();
    indices.sort();
    assert_eq!(indices, (0..200).collect::<Vec<_>>());
    let mut batches = std::collections::BTreeSet::new();
    for i in &issued {
        let cp = check_batched(i);
        assert!(cp.size > i.index);
        batches.insert(cp.size);
        assert_eq!(ledger.store().read(i.index).unwrap(), i.entry.as_bytes());
    }
    // One checkpoint per batch, and every one in the history.
    assert_eq!(history(&d).len(), batches.len());
    assert!(
        batches.len() < 200,
        "concurrent calls share batches ({} batches)",
        batches.len()
    );
    assert_eq!(ledger.served_size(), 200);
    let latest =
        Checkpoint::parse(note::open(&ledger.checkpoint().unwrap(), &log_verifier()).unwrap())
            .unwrap();
    assert_eq!(latest.size, 200);
    // Blinders differ (random), so equal calls have different leaves.
    let blinders: std::collections::BTreeSet<_> = issued
        .iter()
        .map(|i| open_leaf(i.entry.as_bytes()).unwrap().blinder)
        .collect();
    assert_eq!(blinders.len(), 200);
    drop(ledger);
    std::fs::remove_dir_all(&d).ok();
}

/// Holds every signature until the test lets it go.
struct Gated {
    inner: InProcess,
    gate: Arc<tokio::sync::Semaphore>,
    asked: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Signer for Gated {
    fn key_id(&self) -> &str {
        self.inner.key_id()
    }
    fn public_key(&self) -> &ed25519_dalek::VerifyingKey {
        self.inner.public_key()
    }
    fn mode(&self) -> SignerMode {
        SignerMode::External
    }
    async fn sign(&self, m: &[u8]) -> Result<[u8; 64], SignError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let permit = self.gate.acquire().await;
        drop(permit);
        self.inner.sign(m).await
    }
}

/// Invariant 2: while a batch's checkpoint is being signed, nothing of it is written, served
/// or returned; a slow signer makes the next batch grow instead of adding signatures.
#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_written_or_served_before_the_signature_and_the_disk() {
    let d = dir("gated");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let asked = Arc::new(AtomicUsize::new(0));
    let signer = Arc::new(Gated {
        inner: InProcess::new("gateway", keys().0),
        gate: gate.clone(),
        asked: asked.clone(),
    });
    let ledger = Arc::new(open(&d, Mode::Batched, signer).unwrap());
    let first = {
        let l = ledger.clone();
        tokio::spawn(async move { l.issue(draft(0)).await })
    };
    while asked.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Forty more calls arrive while the first batch waits for its signature.
    let mut rest = Vec::new();
    for n in 1..=40 {
        let l = ledger.clone();
        rest.push(tokio::spawn(async move { l.issue(draft(n)).await }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!first.is_finished());
    assert_eq!(ledger.store().size(), 0, "no staged leaf is visible");
    assert_eq!(ledger.served_size(), 0);
    assert_eq!(ledger.checkpoint(), None, "no checkpoint is served");
    assert!(on_disk(&d).is_empty(), "nothing written");
    assert!(history(&d).is_empty() && !d.join("checkpoint").exists());
    gate.add_permits(1000);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.index, 0);
    for r in rest {
        check_batched(&r.await.unwrap().unwrap());
    }
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "the forty calls that waited share one signature"
    );
    drop(ledger);
    std::fs::remove_dir_all(&d).ok();
}

/// A signer that refuses with the given error (the verdict the signing seam gives when an
/// external signer answers with a signature by another key).
struct Refusing(InProcess, SignError);

#[async_trait::async_trait]
impl Signer for Refusing {
    fn key_id(&self) -> &str {
        self.0.key_id()
    }
    fn public_key(&self) -> &ed25519_dalek::VerifyingKey {
        self.0.public_key()
    }
    fn mode(&self) -> SignerMode {
        SignerMode::External
    }
    async fn sign(&self, _: &[u8]) -> Result<[u8; 64], SignError> {
        Err(self.1.clone())
    }
}

fn one_shot(script: &str) -> Arc<dyn Signer> {
    Arc::new(OneShot::new(
        "gateway".into(),
        keys().0.verifying_key(),
        vec!["sh".into(), "-c".into(), script.into()],
        Duration::from_millis(300),
    ))
}

/// Invariant 3: a signer that times out, crashes, answers garbage or signs with another key
/// drops the whole batch before anything is written: every call refused with the signer's
/// code, the log unchanged on disk and in memory, and the next batch takes the same indices.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_signer_drops_the_batch_and_the_next_batch_reuses_its_indices() {
    let d = dir("faults");
    let ledger = Arc::new(open(&d, Mode::Batched, good_signer()).unwrap());
    let mut next = 0u64;
    for n in 0..3 {
        assert_eq!(ledger.issue(draft(n)).await.unwrap().index, n as u64);
        next += 1;
    }
    let wrong_key = Arc::new(Refusing(
        InProcess::new("gateway", keys().0),
        SignError::BadSignature,
    ));
    let faults: Vec<(Arc<dyn Signer>, &str)> = vec![
        (one_shot("sleep 5"), "SIGNER_TIMEOUT"),
        (
            one_shot("cat >/dev/null; kill -9 $$"),
            "SIGNER_EXIT_NONZERO",
        ),
        (one_shot("cat >/dev/null; exit 3"), "SIGNER_EXIT_NONZERO"),
        (
            one_shot("cat >/dev/null; echo not-a-signature"),
            "SIGNER_MALFORMED_OUTPUT",
        ),
        // 64 bytes of base64 that are no signature by the pinned key.
        (
            one_shot(&format!("cat >/dev/null; echo {}", "A".repeat(86) + "==")),
            "SIGNER_BAD_SIGNATURE",
        ),
        (wrong_key, "SIGNER_BAD_SIGNATURE"),
    ];
    for (faulty, code) in faults {
        let before_disk = on_disk(&d);
        let before_history = history(&d);
        let before_cp = ledger.checkpoint();
        ledger.set_signer(SignerSlot {
            signer: faulty,
            ephemeral: false,
        });
        let mut calls = Vec::new();
        for n in 0..8 {
            let l = ledger.clone();
            calls.push(tokio::spawn(async move { l.issue(draft(100 + n)).await }));
        }
        for c in calls {
            let err = c.await.unwrap().unwrap_err();
            assert_eq!(err.code(), code, "{err}");
        }
        assert_eq!(ledger.store().size(), next, "{code}: nothing appended");
        assert_eq!(on_disk(&d), before_disk, "{code}: nothing written");
        assert_eq!(history(&d), before_history, "{code}: no checkpoint saved");
        assert_eq!(
            ledger.checkpoint(),
            before_cp,
            "{code}: no checkpoint served"
        );
        // The tree never held the dropped batch: the next one takes its indices.
        ledger.set_signer(SignerSlot {
            signer: good_signer(),
            ephemeral: false,
        });
        let i = ledger.issue(draft(7)).await.unwrap();
        assert_eq!(i.index, next, "{code}: the next batch reuses the indices");
        check_batched(&i);
        next += 1;
    }
    drop(ledger);
    // The log verifies after all that: every entry a leaf at its index under the checkpoint.
    let ledger = open(&d, Mode::Batched, good_signer()).unwrap();
    assert_eq!(ledger.store().size(), next);
    let cp = Checkpoint::from_note_unverified(&ledger.checkpoint().unwrap()).unwrap();
    assert_eq!(cp.size, next);
    for (index, e) in on_disk(&d).iter().enumerate() {
        assert_eq!(open_leaf(e).unwrap().log.index, index as u64);
    }
    drop(ledger);
    std::fs::remove_dir_all(&d).ok();
}

/// A real one-shot signer that works: one process per batch, not per receipt.
#[tokio::test(flavor = "multi_thread")]
async fn an_external_signer_signs_once_per_batch() {
    // `sh` cannot sign; the seam's verdict on a good signature is covered by the in-process
    // key elsewhere. Here: a signer that takes 100 ms per signature still serves many calls.
    struct Slow(InProcess, Arc<AtomicUsize>);
    #[async_trait::async_trait]
    impl Signer for Slow {
        fn key_id(&self) -> &str {
            self.0.key_id()
        }
        fn public_key(&self) -> &ed25519_dalek::VerifyingKey {
            self.0.public_key()
        }
        fn mode(&self) -> SignerMode {
            SignerMode::External
        }
        async fn sign(&self, m: &[u8]) -> Result<[u8; 64], SignError> {
            self.1.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.0.sign(m).await
        }
    }
    let d = dir("slow");
    let count = Arc::new(AtomicUsize::new(0));
    let signer = Arc::new(Slow(InProcess::new("gateway", keys().0), count.clone()));
    let ledger = Arc::new(open(&d, Mode::Batched, signer).unwrap());
    let started = std::time::Instant::now();
    let mut calls = Vec::new();
    for n in 0..500 {
        let l = ledger.clone();
        calls.push(tokio::spawn(async move { l.issue(draft(n)).await }));
    }
    let mut issued = Vec::new();
    for c in calls {
        issued.push(c.await.unwrap().unwrap());
    }
    let elapsed = started.elapsed();
    for i in issued.iter().step_by(50) {
        check_batched(i);
    }
    let signatures = count.load(Ordering::SeqCst);
    assert!(signatures <= 10, "{signatures} signatures for 500 calls");
    assert!(
        elapsed < Duration::from_secs(5),
        "500 calls through a 100 ms signer took {elapsed:?}"
    );
    drop(ledger);
    std::fs::remove_dir_all(&d).ok();
}

/// Invariant 4 (the parts a restart decides): batched entries after the durable checkpoint
/// were never acknowledged and are discarded; their indices are used again.
#[tokio::test(flavor = "multi_thread")]
async fn an_unacknowledged_batched_tail_is_discarded_at_start() {
    let d = dir("discard");
    {
        let ledger = open(&d, Mode::Batched, good_signer()).unwrap();
        for n in 0..4 {
            ledger.issue(draft(n)).await.unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    // A crash between writing a batch and saving its checkpoint leaves its leaves behind.
    let leaves: Vec<Vec<u8>> = (4..7u64)
        .map(|index| {
            let mut r = draft(index as usize);
            r.version = LEAF_VERSION;
            r.receipt_id = ReceiptIds::new(ORIGIN).id(index);
            r.blinder = Some("cd".repeat(16));
            r.log = LogPosition {
                origin: ORIGIN.into(),
                index,
            };
            r.to_payload()
        })
        .collect();
    {
        let (store, _) = lap_tlog::store::LogStore::open(&d).unwrap();
        let refs: Vec<&[u8]> = leaves.iter().map(Vec::as_slice).collect();
        store.append(&refs).unwrap();
    }
    for mode in [Mode::PerReceipt, Mode::Batched] {
        let (ledger, opened) = open_with(&d, mode, good_signer()).unwrap();
        assert_eq!(opened.checkpointed, 4);
        assert_eq!(opened.tail.discard, Some((4, 3)), "{mode:?}");
        assert_eq!(ledger.store().size(), 4);
        assert_eq!(on_disk(&d).len(), 4, "discarded durably");
        if mode == Mode::Batched {
            let i = ledger.issue(draft(9)).await.unwrap();
            assert_eq!(i.index, 4, "the discarded indices are used again");
            check_batched(&i);
        }
        drop(ledger);
        std::thread::sleep(Duration::from_millis(50));
        if mode == Mode::PerReceipt {
            // Put the tail back for the batched round.
            let (store, _) = lap_tlog::store::LogStore::open(&d).unwrap();
            let refs: Vec<&[u8]> = leaves.iter().map(Vec::as_slice).collect();
            store.append(&refs).unwrap();
        }
    }
    std::fs::remove_dir_all(&d).ok();
}

/// A crash after the history got a batch's checkpoint but before `checkpoint` was replaced:
/// that checkpoint is durable and signed, so the restart continues it (never contradicts it).
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_saved_only_in_the_history_is_continued() {
    let d = dir("history");
    let older;
    {
        let ledger = open(&d, Mode::Batched, good_signer()).unwrap();
        ledger.issue(draft(0)).await.unwrap();
        older = ledger.checkpoint().unwrap();
        ledger.issue(draft(1)).await.unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    std::fs::write(d.join("checkpoint"), &older).unwrap();
    let (ledger, opened) = open_with(&d, Mode::Batched, good_signer()).unwrap();
    assert_eq!(opened.checkpointed, 2);
    assert_eq!(opened.tail.discard, None);
    assert_eq!(ledger.issue(draft(2)).await.unwrap().index, 2);
    drop(ledger);
    std::fs::remove_dir_all(&d).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn per_receipt_receipts_are_signed_logged_and_provable() {
    let d = dir("concurrent");
    let (rk, lk) = keys();
    let ledger = Arc::new(open(&d, Mode::PerReceipt, good_signer()).unwrap());
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
        let (env, r) = lap_receipt::open(i.entry.as_bytes()).unwrap();
        env.verify("gateway", &rk.verifying_key()).unwrap();
        assert_eq!(r.version, RECEIPT_VERSION);
        assert_eq!(r.log.index, i.index, "the signed index is the log index");
        assert_eq!(r.log.origin, ORIGIN);
        assert_eq!(r.receipt_id, ReceiptIds::new(ORIGIN).id(i.index));
        assert_eq!(r.blinder, None);
        assert!(i.proof.is_none());
        assert_eq!(ledger.store().read(i.index).unwrap(), i.entry.as_bytes());
    }
    // A checkpoint covering everything appears, verifies with Go-compatible keys, and every
    // receipt is provably included.
    let mut cp = None;
    for _ in 0..100 {
        if let Some(text) = ledger.checkpoint() {
            let v = NoteVerifier::new(ORIGIN, lk.verifying_key()).unwrap();
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
            &leaf_hash(i.entry.as_bytes()),
            &proof,
            &cp.root
        ));
    }
    drop(ledger);
    std::fs::remove_dir_all(&d).ok();
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
    fn mode(&self) -> SignerMode {
        SignerMode::External
    }
    async fn sign(&self, m: &[u8]) -> Result<[u8; 64], SignError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
            return Err(SignError::Timeout(Duration::from_millis(1)));
        }
        self.inner.sign(m).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn per_receipt_signer_failures_refuse_only_their_call_and_leave_no_hole() {
    let d = dir("flaky");
    let (rk, _) = keys();
    let flaky = Arc::new(Flaky {
        inner: InProcess::new("gateway", rk.clone()),
        calls: AtomicUsize::new(0),
    });
    let ledger = Arc::new(open(&d, Mode::PerReceipt, flaky).unwrap());
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
        let (env, r) = lap_receipt::open(i.entry.as_bytes()).unwrap();
        env.verify("gateway", &rk.verifying_key()).unwrap();
        assert_eq!(r.log.index, i.index);
        assert_eq!(
            r.receipt_id, i.receipt_id,
            "renumbered receipts are renamed too"
        );
    }
    std::fs::remove_dir_all(&d).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_continues_and_detects_rollback() {
    for mode in [Mode::PerReceipt, Mode::Batched] {
        let d = dir(&format!("restart-{}", mode.as_str()));
        {
            let ledger = open(&d, mode, good_signer()).unwrap();
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
        std::thread::sleep(Duration::from_millis(100));
        let ledger = open(&d, mode, good_signer()).unwrap();
        assert_eq!(ledger.store().size(), 25);
        let next = ledger.issue(draft(99)).await.unwrap();
        assert_eq!(next.index, 25, "indices continue, never reused");
        drop(ledger);
        std::thread::sleep(Duration::from_millis(100));

        // Roll the log back behind the published checkpoint: start-up must refuse.
        let entries = d.join("entries");
        let bytes = std::fs::read(&entries).unwrap();
        std::fs::write(&entries, &bytes[..bytes.len() / 2]).unwrap();
        match open(&d, mode, good_signer()) {
            Err(OpenError::Checkpoint(CheckpointError::Fork(_))) => {}
            Err(e) => panic!("expected a fork error, got {e}"),
            Ok(_) => panic!("a rolled-back log must not open"),
        }
        std::fs::remove_dir_all(&d).ok();
    }
}

/// Envelopes after the last checkpoint are verified at start-up: genuine ones are kept and
/// covered by a checkpoint soon after (without waiting for new traffic), in either mode; a
/// forged record refuses start-up instead of being signed over.
#[tokio::test(flavor = "multi_thread")]
async fn an_uncheckpointed_tail_is_verified_before_it_is_checkpointed() {
    for mode in [Mode::PerReceipt, Mode::Batched] {
        let d = dir(&format!("tail-{}", mode.as_str()));
        {
            let ledger = open(&d, Mode::PerReceipt, good_signer()).unwrap();
            for n in 0..5 {
                ledger.issue(draft(n)).await.unwrap();
            }
            for _ in 0..100 {
                if ledger.checkpoint().is_some_and(|c| c.contains("\n5\n")) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        // Three more genuine envelopes, as a per-receipt gateway that crashed leaves them:
        // durable and acknowledged, not yet checkpointed.
        let signer = InProcess::new("gateway", keys().0);
        let envelope = |index: u64, key: &InProcess| {
            let mut r = draft(index as usize);
            r.version = RECEIPT_VERSION;
            r.receipt_id = ReceiptIds::new(ORIGIN).id(index);
            r.signer.key_id = "gateway".into();
            r.log = LogPosition {
                origin: ORIGIN.into(),
                index,
            };
            r.signed("gateway", key.sign_now(&r.envelope().pae()))
                .to_json()
        };
        let append = |entries: Vec<String>| {
            let (store, _) = lap_tlog::store::LogStore::open(&d).unwrap();
            let refs: Vec<&[u8]> = entries.iter().map(|e| e.as_bytes()).collect();
            store.append(&refs).unwrap();
        };
        append((5..8).map(|i| envelope(i, &signer)).collect());
        {
            let (ledger, opened) = open_with(&d, mode, good_signer()).unwrap();
            assert_eq!(opened.tail.kept, 3);
            assert_eq!(ledger.store().size(), 8);
            let mut covered = false;
            for _ in 0..100 {
                if ledger.checkpoint().is_some_and(|c| c.contains("\n8\n")) {
                    covered = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                covered,
                "{mode:?}: the tail is checkpointed without new traffic"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        // A record forged on disk (an envelope by a key the gateway does not trust, then
        // plain garbage) is never signed over.
        let stranger = InProcess::new("gateway", SigningKey::from_bytes(&[9; 32]));
        for forged in [envelope(8, &stranger), "forged".to_string()] {
            append(vec![forged]);
            match open(&d, mode, good_signer()) {
                Err(OpenError::Tail(_)) => {}
                Err(e) => panic!("expected a tail error, got {e}"),
                Ok(_) => panic!("{mode:?}: a forged tail must refuse start-up"),
            }
            let (store, _) = lap_tlog::store::LogStore::open(&d).unwrap();
            store.truncate_to(8).unwrap();
        }
        std::fs::remove_dir_all(&d).ok();
    }
}
