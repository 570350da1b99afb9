// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Invariant 4 of the batched ledger, at the process level: a child process (this test binary,
//! re-run as `crash_child`) issues receipts from many tasks as fast as it can and prints each
//! one as it is released; the parent kills it with SIGKILL after a random delay, reopens the
//! log and checks that
//!
//! * the log opens (whatever the moment of the kill) and verifies: every entry a version 2
//!   leaf at its own index, named after it; the latest checkpoint and every checkpoint of the
//!   history signed by both keys, each with the root of the log's first entries;
//! * every receipt the child released (what a tool would have seen) is in the log, at its
//!   index, with the same leaf hash, under the durable checkpoint — across all the rounds, so
//!   no released index is ever reused.

use ed25519_dalek::SigningKey;
use lap_evidence::*;
use lap_receipt::*;
use lap_signing::{InProcess, Mode as SignerMode, SignError, Signer};
use lap_tlog::note::{self, Checkpoint, NoteVerifier};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ORIGIN: &str = "lap.test/crash";
const CHILD: &str = "LAP_EVIDENCE_CRASH_CHILD_DIR";
const ROUNDS: usize = 12;

struct Quiet;
impl Observer for Quiet {
    fn signed(&self, _: &'static str, _: bool, _: &'static str) {}
    fn batch(&self, _: usize, _: Duration) {}
    fn checkpoint(&self, _: u64) {}
}

fn receipt_key() -> SigningKey {
    SigningKey::from_bytes(&[11; 32])
}

fn log_key() -> SigningKey {
    SigningKey::from_bytes(&[12; 32])
}

/// An external-looking signer that takes a little while (0–3 ms), so that kills land inside
/// signing as well as inside writing and syncing.
struct Jittery(InProcess);

#[async_trait::async_trait]
impl Signer for Jittery {
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
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() % 3000);
        tokio::time::sleep(Duration::from_micros(micros.into())).await;
        self.0.sign(m).await
    }
}

fn open(dir: &Path) -> (Ledger, Opened) {
    let settings = Settings {
        origin: ORIGIN.into(),
        mode: Mode::Batched,
        checkpoint_every: 1000,
        checkpoint_interval: Duration::from_secs(1),
        tail_keys: BTreeMap::new(),
    };
    Ledger::open(
        dir,
        settings,
        SignerSlot {
            signer: Arc::new(Jittery(InProcess::new("rk", receipt_key()))),
            ephemeral: false,
        },
        Arc::new(InProcess::new("log", log_key())),
        Arc::new(Quiet),
    )
    .unwrap_or_else(|e| panic!("the log must reopen after SIGKILL: {e}"))
}

fn draft(n: u64) -> Draft {
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
            method: "POST".into(),
            path: format!("/call/{n}"),
            query_sha256: None,
            body_sha256: None,
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

/// The child: issue forever from 32 tasks, print `ACK <index> <leaf hash hex>` per release.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD) else {
        return; // only meaningful as the child of the test below
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (ledger, _) = open(Path::new(&dir));
        let ledger = Arc::new(ledger);
        for w in 0..32u64 {
            let l = ledger.clone();
            tokio::spawn(async move {
                let mut n = 0;
                loop {
                    if let Ok(i) = l.issue(draft(w * 1_000_000 + n)).await {
                        println!("ACK {} {}", i.index, hex::encode(i.leaf_hash));
                    }
                    n += 1;
                }
            });
        }
        std::future::pending::<()>().await;
    });
}

/// Checks the reopened log and every receipt released so far.
fn verify(dir: &Path, ledger: &Ledger, released: &BTreeMap<u64, String>) {
    let log_v = NoteVerifier::new(ORIGIN, log_key().verifying_key()).unwrap();
    let rk_v =
        NoteVerifier::new(&batch_key_name(ORIGIN, "rk"), receipt_key().verifying_key()).unwrap();
    let size = ledger.store().size();
    let cp = match ledger.checkpoint() {
        Some(text) => {
            let cp = Checkpoint::parse(note::open(&text, &log_v).unwrap()).unwrap();
            note::open(&text, &rk_v).expect("the receipt key signed the checkpoint");
            cp.size
        }
        None => 0,
    };
    assert_eq!(
        cp, size,
        "nothing beyond the durable checkpoint survives a restart"
    );
    let ids = ReceiptIds::new(ORIGIN);
    for index in 0..size {
        let entry = ledger.store().read(index).unwrap();
        let r = open_leaf(&entry).unwrap();
        assert_eq!((r.log.index, r.receipt_id), (index, ids.id(index)));
    }
    for text in lap_tlog::store::read_history(dir).unwrap() {
        let c = Checkpoint::parse(note::open(&text, &log_v).unwrap()).unwrap();
        note::open(&text, &rk_v).expect("every batch checkpoint has the receipt key's signature");
        if c.size <= size {
            assert_eq!(
                ledger.store().with_tree(|t| t.root(c.size)).unwrap(),
                c.root
            );
        }
    }
    for (index, leaf) in released {
        assert!(
            *index < size,
            "released receipt {index} is gone (log size {size})"
        );
        let stored = ledger.store().with_tree(|t| t.leaf(*index)).unwrap();
        assert_eq!(
            &hex::encode(stored),
            leaf,
            "released receipt {index} changed"
        );
    }
}

#[test]
fn sigkill_at_random_points_loses_nothing_released() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("lap-evidence-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut released: BTreeMap<u64, String> = BTreeMap::new();
    let mut seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut kills_under_load = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the first release, then let it run a random while and kill it.
        let mut lines = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
                let first = line.starts_with("ACK ");
                lines.push(line);
                if first {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(random(300)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        let mut this_round = 0;
        for line in &lines {
            let mut parts = line.split(' ');
            let (Some("ACK"), Some(index), Some(leaf), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(index), 64) = (index.parse::<u64>(), leaf.len()) else {
                continue; // a line cut by the kill
            };
            if let Some(before) = released.insert(index, leaf.to_string()) {
                assert_eq!(
                    before, leaf,
                    "round {round}: released index {index} was reused"
                );
            }
            this_round += 1;
        }
        if this_round > 0 {
            kills_under_load += 1;
        }
        let (ledger, opened) = open(&dir);
        eprintln!(
            "round {round}: {this_round} released, log {} entries, tail discarded {:?}",
            opened.recovery.size, opened.tail.discard
        );
        verify(&dir, &ledger, &released);
        drop(ledger);
        // The batching thread ends once the ledger's handle is gone.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        kills_under_load >= ROUNDS / 2,
        "only {kills_under_load} of {ROUNDS} kills hit a working child"
    );
    assert!(!released.is_empty());
    std::fs::remove_dir_all(&dir).ok();
}
