//! Builds real logs with the gateway's evidence pipeline, then tampers with them.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ed25519_dalek::SigningKey;
use lap_evidence::{Issued, Ledger, Mode, Observer, Settings, SignerSlot};
use lap_receipt::*;
use lap_signing::InProcess;
use lap_tlog::merkle::leaf_hash;
use lap_tlog::note::Checkpoint;
use lap_verify::{verify_log, verify_receipt_with_tlog_proof, Anchor, TrustFile};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

struct Quiet;
impl Observer for Quiet {
    fn signed(&self, _: &'static str, _: bool, _: &'static str) {}
    fn batch(&self, _: usize, _: Duration) {}
    fn checkpoint(&self, _: u64) {}
}

const ORIGIN: &str = "lap.test/verify";

fn draft(n: usize) -> Receipt {
    Receipt {
        version: RECEIPT_VERSION,
        receipt_id: format!("rcpt_v_{n}"),
        kind: Kind::Decision,
        issued_at: "2026-11-23T00:00:00.000000Z".into(),
        gateway_id: "gw".into(),
        request_id: format!("req-{n}"),
        principal: None,
        call: Call {
            tool: Some("t".into()),
            method: "GET".into(),
            path: format!("/{n}"),
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

fn settings(mode: Mode, checkpoint_every: u64) -> Settings {
    Settings {
        origin: ORIGIN.into(),
        mode,
        checkpoint_every,
        checkpoint_interval: Duration::from_millis(20),
        tail_keys: Default::default(),
    }
}

/// A log of `n` receipts signed by `kid`/`key` (per receipt, or by batch), with a checkpoint
/// covering all of them; returns what the ledger issued.
async fn build_in(
    mode: Mode,
    dir: &Path,
    n: usize,
    kid: &str,
    key: &SigningKey,
    log_key: &SigningKey,
) -> Vec<Issued> {
    let (ledger, _) = Ledger::open(
        dir,
        settings(mode, 1_000_000),
        SignerSlot {
            signer: Arc::new(InProcess::new(kid, key.clone())),
            ephemeral: false,
        },
        Arc::new(InProcess::new("log", log_key.clone())),
        Arc::new(Quiet),
    )
    .unwrap();
    let first = ledger.store().size() as usize;
    let mut issued = Vec::new();
    for i in first..first + n {
        issued.push(ledger.issue(draft(i)).await.unwrap());
    }
    for _ in 0..200 {
        if ledger
            .checkpoint()
            .is_some_and(|c| c.contains(&format!("\n{}\n", first + n)))
        {
            assert!(checkpoint_file_covers(dir, first + n).await);
            return issued;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no checkpoint");
}

/// Batched, the ledger publishes a checkpoint once it is in the history and replaces the
/// `checkpoint` file when idle: waits for the file (what a log directory is read from) to
/// hold the checkpoint of `size` entries.
async fn checkpoint_file_covers(dir: &Path, size: usize) -> bool {
    for _ in 0..200 {
        let saved = lap_tlog::store::read_checkpoint(dir).ok().flatten();
        if saved.is_some_and(|c| c.contains(&format!("\n{size}\n"))) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn build(dir: &Path, n: usize, kid: &str, key: &SigningKey, log_key: &SigningKey) {
    build_in(Mode::PerReceipt, dir, n, kid, key, log_key).await;
}

fn trust(kid: &str, key: &SigningKey, log_key: &SigningKey, revoked_at: Option<&str>) -> TrustFile {
    TrustFile::parse(&trust_doc(kid, key, log_key, revoked_at).to_json()).unwrap()
}

/// The `/v1/keys` document of a gateway with one receipt key.
fn trust_doc(
    kid: &str,
    key: &SigningKey,
    log_key: &SigningKey,
    revoked_at: Option<&str>,
) -> lap_keys::TrustDocument {
    let vkey = lap_tlog::note::NoteVerifier::new(ORIGIN, log_key.verifying_key())
        .unwrap()
        .to_vkey();
    lap_keys::TrustDocument {
        active_kid: kid.into(),
        keys: vec![lap_keys::PublishedKey {
            key_id: kid.into(),
            alg: lap_keys::Alg::Ed25519,
            public_key_hex: hex(key.verifying_key().as_bytes()),
            status: lap_keys::KeyStatus::Active,
            not_before: None,
            not_after: None,
            retired_at: None,
            revoked_at: revoked_at.map(str::to_string),
        }],
        log: Some(lap_keys::LogKey {
            origin: ORIGIN.into(),
            vkey,
        }),
    }
}

/// What the trust-file reader refuses: anything that is not a usable `/v1/keys` document.
#[test]
fn trust_file_refusals() {
    let (key, log_key) = (
        SigningKey::from_bytes(&[3; 32]),
        SigningKey::from_bytes(&[4; 32]),
    );
    let good: serde_json::Value =
        serde_json::from_str(&trust_doc("k", &key, &log_key, None).to_json()).unwrap();
    let mut extra = good.clone();
    extra["served_by"] = "a newer gateway".into();
    assert!(TrustFile::parse(&extra.to_string()).is_ok());
    let edit = |path: &str, value: serde_json::Value| {
        let mut v = good.clone();
        *v.pointer_mut(path).unwrap() = value;
        v.to_string()
    };
    let mut duplicated = good.clone();
    let first = duplicated["keys"][0].clone();
    duplicated["keys"].as_array_mut().unwrap().push(first);
    let small_order = format!("01{}", "00".repeat(31));
    let other_log = lap_tlog::note::NoteVerifier::new("elsewhere", log_key.verifying_key())
        .unwrap()
        .to_vkey();
    for (case, text) in [
        ("not JSON", "{".to_string()),
        ("no keys", edit("/keys", serde_json::Value::Null)),
        ("no key id", edit("/keys/0/key_id", serde_json::Value::Null)),
        ("short key", edit("/keys/0/public_key_hex", "abcd".into())),
        (
            "weak key",
            edit("/keys/0/public_key_hex", small_order.into()),
        ),
        ("bad time", edit("/keys/0/not_after", "tomorrow".into())),
        ("time not a string", edit("/keys/0/revoked_at", 5.into())),
        ("bad retired_at", edit("/keys/0/retired_at", "later".into())),
        ("other algorithm", edit("/keys/0/alg", "RSA".into())),
        ("duplicate key", duplicated.to_string()),
        ("no log", edit("/log", serde_json::Value::Null)),
        ("no vkey", edit("/log/vkey", serde_json::Value::Null)),
        ("vkey of another log", edit("/log/vkey", other_log.into())),
    ] {
        let err = TrustFile::parse(&text)
            .err()
            .unwrap_or_else(|| panic!("{case}: accepted"));
        assert_eq!(err.code(), "TRUST_FILE_INVALID", "{case}: {err}");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lap-verify-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Rewrites the entries file from a list of entries (valid records, so only the semantic
/// checks can catch the change).
fn rewrite(dir: &Path, entries: &[Vec<u8>]) {
    let mut out = b"LAPTLOG1".to_vec();
    for e in entries {
        out.extend_from_slice(&(e.len() as u32).to_be_bytes());
        out.extend_from_slice(e);
        out.extend_from_slice(&leaf_hash(e));
    }
    std::fs::write(dir.join("entries"), out).unwrap();
}

fn codes(r: &lap_verify::Report) -> Vec<&'static str> {
    r.failures.iter().map(|f| f.code).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mutation_is_detected_with_its_code() {
    let (k, lk) = (
        SigningKey::from_bytes(&[5; 32]),
        SigningKey::from_bytes(&[6; 32]),
    );
    let d = dir("base");
    build(&d, 8, "gw", &k, &lk).await;
    let t = trust("gw", &k, &lk, None);
    let clean = verify_log(&d, &t, None).unwrap();
    assert!(clean.ok(), "{:?}", clean.failures);
    assert_eq!((clean.entries, clean.checkpoint_size), (8, Some(8)));
    let ro = lap_tlog::store::read_only(&d).unwrap();

    // A key revoked before the receipts were issued.
    let revoked = trust("gw", &k, &lk, Some("2026-01-01T00:00:00Z"));
    assert!(codes(&verify_log(&d, &revoked, None).unwrap()).contains(&"KEY_REVOKED"));
    // Revoked only later: earlier receipts stay valid.
    let later = trust("gw", &k, &lk, Some("2027-01-01T00:00:00Z"));
    assert!(verify_log(&d, &later, None).unwrap().ok());
    // A trust file without the signing key.
    let other = trust("other", &k, &lk, None);
    assert!(codes(&verify_log(&d, &other, None).unwrap()).contains(&"UNKNOWN_KEY"));

    // Removed entry.
    let mut removed = ro.entries.clone();
    removed.remove(3);
    rewrite(&d, &removed);
    let c = codes(&verify_log(&d, &t, None).unwrap());
    assert!(
        c.contains(&"INDEX_MISMATCH") && c.contains(&"LOG_TRUNCATED"),
        "{c:?}"
    );
    // Reordered entries.
    let mut swapped = ro.entries.clone();
    swapped.swap(1, 2);
    rewrite(&d, &swapped);
    let c = codes(&verify_log(&d, &t, None).unwrap());
    assert!(
        c.contains(&"INDEX_MISMATCH") && c.contains(&"CHECKPOINT_ROOT_MISMATCH"),
        "{c:?}"
    );
    // An inserted receipt signed by an unknown key.
    let mut inserted = ro.entries.clone();
    let intruder = draft(99)
        .signed("intruder", [0u8; 64])
        .to_json()
        .into_bytes();
    inserted.insert(4, intruder);
    rewrite(&d, &inserted);
    let c = codes(&verify_log(&d, &t, None).unwrap());
    assert!(
        c.contains(&"UNKNOWN_KEY") && c.contains(&"INDEX_MISMATCH"),
        "{c:?}"
    );
    // One altered byte inside a record (its stored hash no longer matches).
    rewrite(&d, &ro.entries);
    let mut bytes = std::fs::read(d.join("entries")).unwrap();
    bytes[8 + 4 + 20] ^= 1;
    std::fs::write(d.join("entries"), &bytes).unwrap();
    assert!(codes(&verify_log(&d, &t, None).unwrap()).contains(&"RECORD_CORRUPT"));
    // A forged checkpoint.
    rewrite(&d, &ro.entries);
    let cp = ro.checkpoint.clone().unwrap();
    std::fs::write(d.join("checkpoint"), cp.replacen("\n8\n", "\n7\n", 1)).unwrap();
    assert!(codes(&verify_log(&d, &t, None).unwrap()).contains(&"CHECKPOINT_SIGNATURE"));
    std::fs::write(d.join("checkpoint"), &cp).unwrap();
    assert!(verify_log(&d, &t, None).unwrap().ok());

    // Pinning: a log that extends the pinned checkpoint passes (same receipts, one more)…
    let f = dir("extends");
    build(&f, 9, "gw", &k, &lk).await;
    let extended = verify_log(&f, &t, Some(&cp)).unwrap();
    assert!(extended.ok(), "{:?}", extended.failures);
    // …a log with different history under the same keys is a fork.
    let g = dir("fork");
    let (ledger, _) = Ledger::open(
        &g,
        settings(Mode::PerReceipt, 1),
        SignerSlot {
            signer: Arc::new(InProcess::new("gw", k.clone())),
            ephemeral: false,
        },
        Arc::new(InProcess::new("log", lk.clone())),
        Arc::new(Quiet),
    )
    .unwrap();
    for i in 0..10 {
        let mut r = draft(i);
        r.call.path = format!("/different/{i}");
        ledger.issue(r).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(ledger);
    let c = codes(&verify_log(&g, &t, Some(&cp)).unwrap());
    assert!(c.contains(&"FORK_DETECTED"), "{c:?}");
    for p in [&d, &f, &g] {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// Rewrites the checkpoint history from a list of notes.
fn rewrite_history(dir: &Path, notes: &[String]) {
    let mut out = Vec::new();
    for n in notes {
        out.extend_from_slice(format!("{}\n{n}", n.len()).as_bytes());
    }
    std::fs::write(dir.join("checkpoints"), out).unwrap();
}

/// The same note with its receipt-key signature line made by `other` instead.
fn resigned(note: &str, kid: &str, other: &SigningKey) -> String {
    use ed25519_dalek::Signer;
    let (text, sigs) = lap_tlog::note::split(note).unwrap();
    let name = batch_key_name(ORIGIN, kid);
    let sigs: Vec<_> = sigs
        .into_iter()
        .map(|mut s| {
            if s.name == name {
                s.sig = other.sign(text.as_bytes()).to_bytes().to_vec();
            }
            s
        })
        .collect();
    lap_tlog::note::assemble(text, &sigs)
}

/// Batched logs: authentic by inclusion under checkpoints signed by the log key, each batch's
/// checkpoint signed by the receipt key its receipts name. Every tampering class keeps its
/// code; a forged or missing receipt-key signature is `BATCH_SIGNATURE`.
#[tokio::test(flavor = "multi_thread")]
async fn batched_logs_and_their_mutations() {
    let (k, lk) = (
        SigningKey::from_bytes(&[7; 32]),
        SigningKey::from_bytes(&[8; 32]),
    );
    let d = dir("batched");
    build_in(Mode::Batched, &d, 8, "gw", &k, &lk).await;
    let t = trust("gw", &k, &lk, None);
    let clean = verify_log(&d, &t, None).unwrap();
    assert!(clean.ok(), "{:?}", clean.failures);
    assert_eq!((clean.entries, clean.checkpoint_size), (8, Some(8)));
    let ro = lap_tlog::store::read_only(&d).unwrap();
    assert!(ro.entries.iter().all(|e| open_leaf(e).is_ok()));

    // The receipt key's validity at issue time, as for envelopes.
    let revoked = trust("gw", &k, &lk, Some("2026-01-01T00:00:00Z"));
    assert!(codes(&verify_log(&d, &revoked, None).unwrap()).contains(&"KEY_REVOKED"));
    let other_kid = trust("other", &k, &lk, None);
    assert!(codes(&verify_log(&d, &other_kid, None).unwrap()).contains(&"UNKNOWN_KEY"));
    // A trust file whose "gw" is another key: the batches were not signed by it.
    let impostor = SigningKey::from_bytes(&[9; 32]);
    let wrong = trust("gw", &impostor, &lk, None);
    let c = codes(&verify_log(&d, &wrong, None).unwrap());
    assert_eq!(c, vec!["BATCH_SIGNATURE"; 8], "{c:?}");

    // Removed, reordered, altered, inserted entries.
    let mut removed = ro.entries.clone();
    removed.remove(3);
    rewrite(&d, &removed);
    let c = codes(&verify_log(&d, &t, None).unwrap());
    assert!(
        c.contains(&"INDEX_MISMATCH") && c.contains(&"LOG_TRUNCATED"),
        "{c:?}"
    );
    let mut swapped = ro.entries.clone();
    swapped.swap(1, 2);
    rewrite(&d, &swapped);
    let c = codes(&verify_log(&d, &t, None).unwrap());
    assert!(
        c.contains(&"INDEX_MISMATCH") && c.contains(&"CHECKPOINT_ROOT_MISMATCH"),
        "{c:?}"
    );
    let mut altered = ro.entries.clone();
    let text = String::from_utf8(altered[5].clone()).unwrap();
    altered[5] = text.replace("\"ALLOWED\"", "\"ALLOWEX\"").into_bytes();
    rewrite(&d, &altered);
    let c = codes(&verify_log(&d, &t, None).unwrap());
    assert!(
        c.contains(&"CHECKPOINT_ROOT_MISMATCH") && c.contains(&"FORK_DETECTED"),
        "{c:?}"
    );
    let mut inserted = ro.entries.clone();
    let mut forged = open_leaf(&ro.entries[4]).unwrap();
    forged.call.path = "/forged".into();
    inserted.insert(4, forged.to_payload());
    rewrite(&d, &inserted);
    let c = codes(&verify_log(&d, &t, None).unwrap());
    assert!(
        c.contains(&"INDEX_MISMATCH") && c.contains(&"CHECKPOINT_ROOT_MISMATCH"),
        "{c:?}"
    );
    rewrite(&d, &ro.entries);
    assert!(verify_log(&d, &t, None).unwrap().ok());

    // A batch checkpoint whose receipt-key signature is by another key: exactly the
    // receipts of that batch fail.
    let mut notes = ro.checkpoints.clone();
    let victim = 2;
    let victim_size = Checkpoint::from_note_unverified(&notes[victim])
        .unwrap()
        .size;
    let before = if victim == 0 {
        0
    } else {
        Checkpoint::from_note_unverified(&notes[victim - 1])
            .unwrap()
            .size
    };
    notes[victim] = resigned(&notes[victim], "gw", &impostor);
    rewrite_history(&d, &notes);
    let r = verify_log(&d, &t, None).unwrap();
    let failed: Vec<(&str, Option<u64>)> = r.failures.iter().map(|f| (f.code, f.index)).collect();
    let expected: Vec<(&str, Option<u64>)> = (before..victim_size)
        .map(|i| ("BATCH_SIGNATURE", Some(i)))
        .collect();
    assert_eq!(failed, expected);
    // A history checkpoint not signed by the log key is reported, not used.
    notes[victim] = notes[victim].replacen(&format!("\n{victim_size}\n"), "\n1\n", 1);
    rewrite_history(&d, &notes);
    let c = codes(&verify_log(&d, &t, None).unwrap());
    assert!(c.contains(&"CHECKPOINT_SIGNATURE"), "{c:?}");
    rewrite_history(&d, &ro.checkpoints);

    // A log with both kinds of entries (a deployment that switched modes) verifies.
    let m = dir("mixed");
    build_in(Mode::PerReceipt, &m, 4, "gw", &k, &lk).await;
    build_in(Mode::Batched, &m, 4, "gw", &k, &lk).await;
    build_in(Mode::PerReceipt, &m, 2, "gw", &k, &lk).await;
    let mixed = verify_log(&m, &t, None).unwrap();
    assert!(mixed.ok(), "{:?}", mixed.failures);
    assert_eq!(mixed.entries, 10);
    for p in [&d, &m] {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// What an agent holds for one call — the entry and its tlog-proof — verifies with the log key
/// alone; with the trust file, the receipt key behind the batch is checked too.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_s_receipt_and_tlog_proof_verify_offline() {
    let (k, lk) = (
        SigningKey::from_bytes(&[10; 32]),
        SigningKey::from_bytes(&[11; 32]),
    );
    let d = dir("tlog-proof");
    let issued = build_in(Mode::Batched, &d, 5, "gw", &k, &lk).await;
    let t = trust("gw", &k, &lk, None);
    let vkey = t.log_verifier.clone();
    for i in &issued {
        let proof = i.proof.as_deref().unwrap();
        let entry = i.entry.as_bytes();
        let r = verify_receipt_with_tlog_proof(Anchor::LogKey(&vkey), entry, proof);
        assert!(r.ok(), "{:?}", r.failures);
        assert_eq!(r.notes[0].code, "RECEIPT_KEY_NOT_CHECKED");
        let r = verify_receipt_with_tlog_proof(Anchor::Trust(&t), entry, proof);
        assert!(r.ok() && r.notes.is_empty(), "{:?}", r.failures);
    }
    let code = |anchor: Anchor<'_>, entry: &[u8], proof: &str| {
        let r = verify_receipt_with_tlog_proof(anchor, entry, proof);
        r.failures.first().map(|f| f.code).unwrap_or("OK")
    };
    let one = &issued[2];
    let proof = one.proof.as_deref().unwrap();
    // Another entry's bytes, an altered entry, another log's key, a proof moved to another index.
    let other = issued[3].entry.as_bytes();
    assert_eq!(
        code(Anchor::LogKey(&vkey), other, proof),
        "INCLUSION_PROOF_FAILED"
    );
    let altered = one.entry.replace("\"GET\"", "\"PUT\"");
    assert_eq!(
        code(Anchor::LogKey(&vkey), altered.as_bytes(), proof),
        "INCLUSION_PROOF_FAILED"
    );
    let stranger = lap_tlog::note::NoteVerifier::new(
        ORIGIN,
        SigningKey::from_bytes(&[12; 32]).verifying_key(),
    )
    .unwrap();
    assert_eq!(
        code(Anchor::LogKey(&stranger), one.entry.as_bytes(), proof),
        "CHECKPOINT_SIGNATURE"
    );
    let moved = proof.replacen("index 2\n", "index 3\n", 1);
    assert_ne!(
        code(Anchor::LogKey(&vkey), one.entry.as_bytes(), &moved),
        "OK"
    );
    assert_eq!(
        code(Anchor::LogKey(&vkey), one.entry.as_bytes(), "garbage"),
        "PROOF_MALFORMED"
    );
    // The trust file names another key for "gw": the batch was not signed by it.
    let wrong = trust("gw", &SigningKey::from_bytes(&[13; 32]), &lk, None);
    assert_eq!(
        code(Anchor::Trust(&wrong), one.entry.as_bytes(), proof),
        "BATCH_SIGNATURE"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// An aggregate denial receipt of `count` refusals (`codes_sum` of them under one code).
fn aggregate(n: usize, count: u64, codes_sum: u64) -> Receipt {
    let mut r = draft(n);
    r.kind = Kind::DenialAggregate;
    r.request_id = String::new();
    r.call.tool = None;
    r.decision.outcome = Outcome::Deny;
    r.decision.code = "UNAUTHENTICATED_RATE_LIMITED".into();
    r.aggregate = Some(Aggregate {
        client: "203.0.113.9".into(),
        first_at: "2026-11-23T00:00:00.000000Z".into(),
        last_at: "2026-11-23T00:00:09.000000Z".into(),
        count,
        rate_limited: count,
        codes: [("API_KEY_INVALID".to_string(), codes_sum)].into(),
    });
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregate_receipts_verify_and_inconsistent_counts_are_malformed() {
    let (k, lk) = (
        SigningKey::from_bytes(&[10; 32]),
        SigningKey::from_bytes(&[11; 32]),
    );
    for mode in [Mode::Batched, Mode::PerReceipt] {
        let d = dir(&format!("aggregate-{}", mode.as_str()));
        let (ledger, _) = Ledger::open(
            &d,
            settings(mode, 1_000_000),
            SignerSlot {
                signer: Arc::new(InProcess::new("gw", k.clone())),
                ephemeral: false,
            },
            Arc::new(InProcess::new("log", lk.clone())),
            Arc::new(Quiet),
        )
        .unwrap();
        // A decision, a consistent aggregate, and one whose codes do not add up to its count
        // (the ledger logs what it is given; the verifier must catch it).
        for r in [draft(0), aggregate(1, 12, 12), aggregate(2, 12, 11)] {
            ledger.issue(r).await.unwrap();
        }
        let mut covered = false;
        for _ in 0..200 {
            if ledger.checkpoint().is_some_and(|c| c.contains("\n3\n")) {
                covered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(covered, "{}: no checkpoint", mode.as_str());
        assert!(checkpoint_file_covers(&d, 3).await, "{}", mode.as_str());
        drop(ledger);
        let report = verify_log(&d, &trust("gw", &k, &lk, None), None).unwrap();
        let found: Vec<_> = report.failures.iter().map(|f| (f.code, f.index)).collect();
        assert_eq!(
            found,
            [("RECEIPT_MALFORMED", Some(2))],
            "{}: {:?}",
            mode.as_str(),
            report.failures
        );
        assert_eq!(report.entries, 3);
    }
}

/// An admin receipt: a reload by an operator token, with the `principal` given.
fn admin_receipt(n: usize, principal: Option<Principal>) -> Receipt {
    let mut r = draft(n);
    r.kind = Kind::Admin;
    r.request_id = format!("adm_{n:016x}");
    r.principal = principal;
    r.call.tool = None;
    r.call.method = "POST".into();
    r.call.path = "/v1/reload".into();
    r
}

fn admin_token() -> Option<Principal> {
    Some(Principal {
        agent_id: "ops-1".into(),
        credential: Credential::AdminToken {
            key_id: "ops-1".into(),
            key_hash_prefix: "sha256:0123456789ab".into(),
        },
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_receipts_verify_and_misattributed_ones_are_malformed() {
    let (k, lk) = (
        SigningKey::from_bytes(&[12; 32]),
        SigningKey::from_bytes(&[13; 32]),
    );
    for mode in [Mode::Batched, Mode::PerReceipt] {
        let d = dir(&format!("admin-{}", mode.as_str()));
        let (ledger, _) = Ledger::open(
            &d,
            settings(mode, 1_000_000),
            SignerSlot {
                signer: Arc::new(InProcess::new("gw", k.clone())),
                ephemeral: false,
            },
            Arc::new(InProcess::new("log", lk.clone())),
            Arc::new(Quiet),
        )
        .unwrap();
        // An allowed admin action, a refused one by nobody, then two the verifier must refuse
        // (the ledger logs what it is given): an agent's API key as an admin receipt's
        // principal, and an admin token on a decision receipt.
        let mut refused = admin_receipt(1, None);
        refused.decision.outcome = Outcome::Deny;
        refused.decision.code = "ADMIN_AUTH_REQUIRED".into();
        let agent = Some(Principal {
            agent_id: "agent-a".into(),
            credential: Credential::ApiKey {
                key_id: "k1".into(),
                key_hash_prefix: "sha256:0123456789ab".into(),
            },
        });
        let mut decision_by_admin = draft(3);
        decision_by_admin.principal = admin_token();
        for r in [
            admin_receipt(0, admin_token()),
            refused,
            admin_receipt(2, agent),
            decision_by_admin,
        ] {
            ledger.issue(r).await.unwrap();
        }
        let mut covered = false;
        for _ in 0..200 {
            if ledger.checkpoint().is_some_and(|c| c.contains("\n4\n")) {
                covered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(covered, "{}: no checkpoint", mode.as_str());
        assert!(checkpoint_file_covers(&d, 4).await, "{}", mode.as_str());
        drop(ledger);
        let report = verify_log(&d, &trust("gw", &k, &lk, None), None).unwrap();
        let found: Vec<_> = report.failures.iter().map(|f| (f.code, f.index)).collect();
        assert_eq!(
            found,
            [
                ("RECEIPT_MALFORMED", Some(2)),
                ("RECEIPT_MALFORMED", Some(3))
            ],
            "{}: {:?}",
            mode.as_str(),
            report.failures
        );
        assert_eq!(report.entries, 4);
    }
}

/// An admin signed in with an OIDC token: the admin receipt names the JWT (issuer, subject,
/// kid, token hash prefix) and verifies like one by an admin token.
#[tokio::test(flavor = "multi_thread")]
async fn admin_receipts_by_an_oidc_admin_verify() {
    let (k, lk) = (
        SigningKey::from_bytes(&[14; 32]),
        SigningKey::from_bytes(&[15; 32]),
    );
    let d = dir("admin-jwt");
    let (ledger, _) = Ledger::open(
        &d,
        settings(Mode::Batched, 1_000_000),
        SignerSlot {
            signer: Arc::new(InProcess::new("gw", k.clone())),
            ephemeral: false,
        },
        Arc::new(InProcess::new("log", lk.clone())),
        Arc::new(Quiet),
    )
    .unwrap();
    let jwt = Some(Principal {
        agent_id: "alice".into(),
        credential: Credential::Jwt {
            issuer: "https://idp.example/realms/ops".into(),
            subject: "alice".into(),
            kid: Some("k1".into()),
            token_hash_prefix: "sha256:0123456789ab".into(),
        },
    });
    let mut refused = admin_receipt(1, jwt.clone());
    refused.decision.outcome = Outcome::Deny;
    refused.decision.code = "ADMIN_ROLE_INSUFFICIENT".into();
    for r in [admin_receipt(0, jwt), refused] {
        ledger.issue(r).await.unwrap();
    }
    let mut covered = false;
    for _ in 0..200 {
        if ledger.checkpoint().is_some_and(|c| c.contains("\n2\n")) {
            covered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(covered, "no checkpoint");
    assert!(checkpoint_file_covers(&d, 2).await);
    drop(ledger);
    let report = verify_log(&d, &trust("gw", &k, &lk, None), None).unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.entries, 2);
}
