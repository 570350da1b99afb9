//! Builds real logs with the gateway's evidence pipeline, then tampers with them.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ed25519_dalek::SigningKey;
use lap_evidence::{Ledger, Observer, Settings, SignerSlot};
use lap_receipt::*;
use lap_signing::InProcess;
use lap_tlog::merkle::leaf_hash;
use lap_verify::{verify_log, TrustFile};
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

/// A log of `n` receipts signed by `kid`/`key`, with a checkpoint covering all of them.
async fn build(dir: &Path, n: usize, kid: &str, key: &SigningKey, log_key: &SigningKey) {
    let (ledger, _) = Ledger::open(
        dir,
        Settings {
            origin: ORIGIN.into(),
            checkpoint_every: 1_000_000,
            checkpoint_interval: Duration::from_millis(20),
        },
        SignerSlot {
            signer: Arc::new(InProcess::new(kid, key.clone())),
            ephemeral: false,
        },
        Arc::new(InProcess::new("log", log_key.clone())),
        Arc::new(Quiet),
    )
    .unwrap();
    for i in 0..n {
        ledger.issue(draft(i)).await.unwrap();
    }
    for _ in 0..200 {
        if ledger
            .checkpoint()
            .is_some_and(|c| c.contains(&format!("\n{n}\n")))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no checkpoint");
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
        Settings {
            origin: ORIGIN.into(),
            checkpoint_every: 1,
            checkpoint_interval: Duration::from_millis(20),
        },
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
