//! Tampering with real audit packs: packs are exported from real gateways, then every class of
//! tampering an auditor must catch is applied, and the real `lap-verify` binary must report it
//! with its own code (the untouched pack must pass). Random byte flips over the whole archive
//! go through the verifier library: every flip that changes a member must fail verification,
//! none may crash it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::Signer as _;
use lap_e2e::*;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

const KEY_A: &str = "mutation-test-key-a-0123456789";
const KEY_B: &str = "mutation-test-key-b-0123456789";
const POLICY: &str =
    r#"@id("g-read") permit(principal in Group::"g", action in Action::"read", resource);"#;

fn keys() -> String {
    format!(
        r#"{{"keys": [
            {{"id": "a", "hash": "{}", "agent_id": "agent-a", "groups": ["g"]}},
            {{"id": "b", "hash": "{}", "agent_id": "agent-b", "groups": ["g"]}}]}}"#,
        key_hash(KEY_A),
        key_hash(KEY_B)
    )
}

/// A gateway sharing `log_key` (a seed file) as its checkpoint key, with `extra` config.
async fn gateway(up: &Upstream, log_key: &Path, extra: &str) -> Gateway {
    GatewayBuilder::new()
        .tool("alpha", &up.url())
        .keys_file(&keys())
        .policy(POLICY)
        .env("LAP_LOG_SIGNING_KEY_FILE", log_key.to_str().unwrap())
        .extra_toml(&format!(
            "[log]\ncheckpoint_every = 6\ncheckpoint_interval_ms = 50\n{extra}"
        ))
        .start()
        .await
}

async fn traffic(gw: &Gateway, tag: &str, n: usize) {
    for i in 0..n {
        let key = if i % 2 == 0 { KEY_A } else { KEY_B };
        let path = format!("/tools/alpha/{tag}/{i}");
        let r = request(gw.data, "GET", &path, &[("X-Api-Key", key)], None).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

type Members = Vec<(String, Vec<u8>)>;

fn unpack(pack: &[u8]) -> Members {
    lap_pack::read_tar(pack).expect("a readable pack")
}

fn repack(members: &Members) -> Vec<u8> {
    let mut out = Vec::new();
    lap_pack::write_members(
        &mut out,
        0,
        members.iter().map(|(n, b)| (n.as_str(), b.as_slice())),
    )
    .unwrap();
    out
}

fn member<'a>(members: &'a mut Members, name: &str) -> &'a mut Vec<u8> {
    &mut members.iter_mut().find(|(n, _)| n == name).unwrap().1
}

fn lines(members: &mut Members) -> Vec<Vec<u8>> {
    member(members, lap_pack::ENTRIES)
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn set_lines(members: &mut Members, lines: &[Vec<u8>]) {
    let mut text = Vec::new();
    for l in lines {
        text.extend_from_slice(l);
        text.push(b'\n');
    }
    *member(members, lap_pack::ENTRIES) = text;
}

/// (index prefix, envelope) of an entries.txt line.
fn split_line(line: &[u8]) -> (String, serde_json::Value) {
    let sp = line.iter().position(|&b| b == b' ').unwrap();
    (
        String::from_utf8(line[..sp].to_vec()).unwrap(),
        serde_json::from_slice(&line[sp + 1..]).unwrap(),
    )
}

fn join_line(index: &str, envelope: &serde_json::Value) -> Vec<u8> {
    format!("{index} {envelope}").into_bytes()
}

fn payload(env: &serde_json::Value) -> serde_json::Value {
    serde_json::from_slice(&B64.decode(env["payload"].as_str().unwrap()).unwrap()).unwrap()
}

/// Re-signs `receipt` as a genuine-looking DSSE envelope with a key nobody trusts.
fn forge(receipt: &serde_json::Value, kid: &str) -> serde_json::Value {
    let key = ed25519_dalek::SigningKey::from_bytes(&[0x5a; 32]);
    let body = receipt.to_string();
    let pae = lap_receipt::dsse::pae(lap_receipt::RECEIPT_PAYLOAD_TYPE, body.as_bytes());
    serde_json::json!({
        "payload": B64.encode(body.as_bytes()),
        "payloadType": lap_receipt::RECEIPT_PAYLOAD_TYPE,
        "signatures": [{"keyid": kid, "sig": B64.encode(key.sign(&pae).to_bytes())}],
    })
}

/// Rewrites the manifest's digests to match the members (what an attacker without the log key
/// can do).
fn rehash_manifest(members: &mut Members) {
    let digests: Vec<serde_json::Value> = members
        .iter()
        .filter(|(n, _)| n != lap_pack::MANIFEST && n != lap_pack::MANIFEST_SIG)
        .map(|(n, b)| {
            use sha2::Digest;
            serde_json::json!({"name": n, "size": b.len(), "sha256": hex::encode(sha2::Sha256::digest(b))})
        })
        .collect();
    let manifest = member(members, lap_pack::MANIFEST);
    let mut m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    m["files"] = serde_json::Value::Array(digests);
    *manifest = serde_json::to_vec_pretty(&m).unwrap();
}

struct Verdict {
    ok: bool,
    codes: Vec<String>,
    text: String,
}

struct Auditor {
    dir: PathBuf,
    trust: PathBuf,
    n: usize,
}

impl Auditor {
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Runs the real lap-verify on `pack` with `args` (trusted keys added unless `args`
    /// already names a trust file).
    fn verify_with(&mut self, pack: &[u8], extra: &[&OsStr]) -> Verdict {
        self.n += 1;
        let path = self.file(&format!("pack-{}.tar", self.n), pack);
        let mut args: Vec<&OsStr> = vec!["pack".as_ref(), path.as_os_str()];
        if !extra.contains(&OsStr::new("--trusted-keys")) {
            args.extend([OsStr::new("--trusted-keys"), self.trust.as_os_str()]);
        }
        args.extend_from_slice(extra);
        let v = lap_verify_json(&args);
        let ok = v["ok"] == true;
        let text = v.to_string();
        let codes = v["report"]["failures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["code"].as_str().unwrap().to_string())
            .collect();
        Verdict { ok, codes, text }
    }

    fn verify(&mut self, pack: &[u8]) -> Verdict {
        self.verify_with(pack, &[])
    }

    fn expect(&mut self, what: &str, pack: &[u8], code: &str) {
        let v = self.verify(pack);
        assert!(!v.ok, "{what}: not detected");
        assert!(
            v.codes.iter().any(|c| c == code),
            "{what}: expected {code}, got {:?}\n{}",
            v.codes,
            v.text
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_tampering_is_detected_with_its_code() {
    let up = Upstream::start(Behavior::Echo).await;
    let work = tempfile::tempdir().unwrap();
    let log_key = work.path().join("log.seed");
    std::fs::write(&log_key, "42".repeat(32)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&log_key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A: the gateway under audit. Twin: same origin and keys, other traffic (a fork).
    // Other: another log (another origin).
    let a = gateway(&up, &log_key, "").await;
    let twin = gateway(&up, &log_key, "").await;
    let other = gateway(&up, &log_key, "origin = \"lap.test/other-log\"").await;
    traffic(&a, "a", 12).await;
    traffic(&twin, "t", 12).await;
    traffic(&other, "o", 4).await;
    let (_, size) = a.settled_checkpoint().await;
    let (twin_note, _) = twin.settled_checkpoint().await;
    other.settled_checkpoint().await;

    let trust_json = request(a.data, "GET", "/v1/keys", &[], None).await.body;
    let mut aud = Auditor {
        dir: work.path().to_path_buf(),
        trust: work.path().join("keys.json"),
        n: 0,
    };
    std::fs::write(&aud.trust, &trust_json).unwrap();

    let pack = a.audit_pack("").await;
    let v = aud.verify(&pack);
    assert!(v.ok, "the untouched pack passes: {}", v.text);
    let base = unpack(&pack);
    let n_lines = lines(&mut base.clone()).len();
    assert_eq!(n_lines as u64, size);
    let with = |f: &dyn Fn(&mut Members)| {
        let mut m = base.clone();
        f(&mut m);
        repack(&m)
    };

    // 1. One altered byte in a receipt: a changed field in the signed payload, a changed bit
    //    in the signature, and a raw byte flip inside the payload's base64.
    let altered = with(&|m| {
        let mut l = lines(m);
        let (i, mut env) = split_line(&l[3]);
        let mut p = payload(&env);
        p["call"]["method"] = "PUT".into();
        env["payload"] = B64.encode(p.to_string()).into();
        l[3] = join_line(&i, &env);
        set_lines(m, &l);
    });
    aud.expect("altered payload", &altered, "BAD_SIGNATURE");
    aud.expect("altered payload", &altered, "INCLUSION_PROOF_FAILED");
    let bad_sig = with(&|m| {
        let mut l = lines(m);
        let (i, mut env) = split_line(&l[5]);
        let mut sig = B64
            .decode(env["signatures"][0]["sig"].as_str().unwrap())
            .unwrap();
        sig[10] ^= 1;
        env["signatures"][0]["sig"] = B64.encode(sig).into();
        l[5] = join_line(&i, &env);
        set_lines(m, &l);
    });
    aud.expect("altered signature", &bad_sig, "BAD_SIGNATURE");
    let flipped = with(&|m| {
        let mut l = lines(m);
        let at = l[2]
            .windows(11)
            .position(|w| w == b"\"payload\":\"")
            .unwrap()
            + 40;
        l[2][at] = if l[2][at] == b'A' { b'B' } else { b'A' };
        set_lines(m, &l);
    });
    let v = aud.verify(&flipped);
    assert!(!v.ok);
    assert!(
        v.codes
            .iter()
            .any(|c| c == "BAD_SIGNATURE" || c == "RECEIPT_MALFORMED"),
        "{:?}",
        v.codes
    );

    // 2. A removed receipt: a gap in a complete range. Also with the manifest digests
    //    rewritten to match (the signature then fails).
    let removed = with(&|m| {
        let mut l = lines(m);
        l.remove(4);
        set_lines(m, &l);
    });
    aud.expect("removed receipt", &removed, "ENTRY_MISSING");
    let removed_rehashed = with(&|m| {
        let mut l = lines(m);
        l.remove(4);
        set_lines(m, &l);
        rehash_manifest(m);
    });
    aud.expect("removed + rehashed", &removed_rehashed, "ENTRY_MISSING");
    aud.expect(
        "removed + rehashed",
        &removed_rehashed,
        "MANIFEST_SIGNATURE",
    );

    // 3. An inserted receipt with a valid signature by an unknown key.
    let inserted = with(&|m| {
        let mut l = lines(m);
        let (i, env) = split_line(&l[6]);
        let mut p = payload(&env);
        p["signer"]["key_id"] = "k-evil".into();
        p["call"]["path"] = "/transfer-all".into();
        l.insert(7, join_line(&i, &forge(&p, "k-evil")));
        set_lines(m, &l);
    });
    aud.expect("inserted receipt", &inserted, "UNKNOWN_KEY");

    // 4. Reordered receipts: two whole lines swapped; and two envelopes swapped under their
    //    original index prefixes.
    let reordered = with(&|m| {
        let mut l = lines(m);
        l.swap(1, 2);
        set_lines(m, &l);
    });
    aud.expect("reordered lines", &reordered, "ENTRIES_REORDERED");
    let moved = with(&|m| {
        let mut l = lines(m);
        let (i1, e1) = split_line(&l[1]);
        let (i2, e2) = split_line(&l[2]);
        l[1] = join_line(&i1, &e2);
        l[2] = join_line(&i2, &e1);
        set_lines(m, &l);
    });
    aud.expect("envelopes moved", &moved, "INDEX_MISMATCH");

    // 5. Spliced in from another log (same keys, another origin).
    let other_pack = unpack(&other.audit_pack("").await);
    let foreign = lines(&mut other_pack.clone())[1].clone();
    let spliced = with(&|m| {
        let mut l = lines(m);
        let (i, _) = split_line(&l[1]);
        let (_, env) = split_line(&foreign);
        l[1] = join_line(&i, &env);
        set_lines(m, &l);
    });
    aud.expect("spliced from another log", &spliced, "ORIGIN_MISMATCH");
    aud.expect(
        "another log's pack",
        &other.audit_pack("").await,
        "ORIGIN_MISMATCH",
    );

    // 6. A forked log: the twin (same origin, same log key, other history) against a
    //    checkpoint of A the auditor pinned; and a checkpoint of the twin put into A's pack.
    let pinned = aud.file("pinned.cp", a.settled_checkpoint().await.0.as_bytes());
    let twin_pack = twin.audit_pack(&format!("since_size={size}")).await;
    let v = aud.verify_with(
        &twin_pack,
        &[OsStr::new("--checkpoint"), pinned.as_os_str()],
    );
    assert!(
        v.codes.iter().any(|c| c == "FORK_DETECTED"),
        "a fork of the pinned checkpoint: {:?}\n{}",
        v.codes,
        v.text
    );
    // The same pack, checked without the pin, is self-consistent: pinning is what catches it.
    assert!(aud.verify(&twin_pack).ok);
    let twin_cp = with(&|m| {
        let name = m
            .iter()
            .find(|(n, _)| n.starts_with(lap_pack::CHECKPOINT_DIR))
            .unwrap()
            .0
            .clone();
        *member(m, &name) = twin_note.clone().into_bytes();
    });
    aud.expect("a checkpoint from a fork", &twin_cp, "FORK_DETECTED");

    // 7 and 8. Key lifecycle in the auditor's trust file.
    let trust_with = |field: &str, value: &str| {
        let mut t: serde_json::Value = serde_json::from_slice(&trust_json).unwrap();
        t["keys"][0][field] = value.into();
        t.to_string().into_bytes()
    };
    for (field, value, code) in [
        ("revoked_at", "2000-01-01T00:00:00Z", Some("KEY_REVOKED")),
        ("revoked_at", "2999-01-01T00:00:00Z", None),
        (
            "not_after",
            "2000-01-01T00:00:00Z",
            Some("KEY_OUTSIDE_VALIDITY"),
        ),
        (
            "not_before",
            "2999-01-01T00:00:00Z",
            Some("KEY_OUTSIDE_VALIDITY"),
        ),
    ] {
        let trust = aud.file(&format!("trust-{field}.json"), &trust_with(field, value));
        let v = aud.verify_with(&pack, &[OsStr::new("--trusted-keys"), trust.as_os_str()]);
        match code {
            Some(code) => assert!(
                v.codes.iter().any(|c| c == code),
                "{field}={value}: expected {code}, got {:?}",
                v.codes
            ),
            None => assert!(v.ok, "{field}={value} must pass: {}", v.text),
        }
    }

    // 9. A tampered manifest; a tampered trust file inside the pack.
    let manifest = with(&|m| {
        let text = String::from_utf8(member(m, lap_pack::MANIFEST).clone()).unwrap();
        *member(m, lap_pack::MANIFEST) =
            text.replacen("\"from\": 0", "\"from\": 1", 1).into_bytes();
    });
    aud.expect("tampered manifest", &manifest, "MANIFEST_SIGNATURE");
    let other_key = hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[7; 32])
            .verifying_key()
            .to_bytes(),
    );
    let trust_swapped = with(&|m| {
        let mut t: serde_json::Value = serde_json::from_slice(member(m, lap_pack::TRUST)).unwrap();
        t["keys"][0]["public_key_hex"] = other_key.clone().into();
        *member(m, lap_pack::TRUST) = t.to_string().into_bytes();
    });
    aud.expect(
        "tampered trust.json",
        &trust_swapped,
        "MANIFEST_HASH_MISMATCH",
    );
    aud.expect("tampered trust.json", &trust_swapped, "TRUST_FILE_MISMATCH");

    // 10. Truncated and corrupt archives: a clear code, never a crash.
    for cut in [
        10,
        511,
        512,
        1500,
        pack.len() / 3,
        pack.len() / 2,
        pack.len() - 1024,
    ] {
        let v = aud.verify(&pack[..cut]);
        assert!(!v.ok, "cut at {cut} must fail");
        assert!(
            v.codes
                .iter()
                .any(|c| c == "ARCHIVE_CORRUPT" || c == "MEMBER_MISSING"),
            "cut at {cut}: {:?}",
            v.codes
        );
    }
    let mut garbage = pack.clone();
    garbage[..512].copy_from_slice(&[0x41; 512]);
    aud.expect("garbage header", &garbage, "ARCHIVE_CORRUPT");
    aud.expect("not a tar at all", b"hello auditor", "ARCHIVE_CORRUPT");

    // A filtered pack with a receipt of another agent slipped in at its true position.
    let filtered = unpack(&a.audit_pack("agent=agent-a").await);
    let full_lines = lines(&mut base.clone());
    let slipped = {
        let mut m = filtered.clone();
        let mut l = lines(&mut m);
        let b_line = full_lines
            .iter()
            .find(|line| payload(&split_line(line).1)["principal"]["agent_id"] == "agent-b")
            .unwrap()
            .clone();
        let b_index: u64 = split_line(&b_line).0.parse().unwrap();
        let at = l
            .iter()
            .position(|line| split_line(line).0.parse::<u64>().unwrap() > b_index)
            .unwrap_or(l.len());
        l.insert(at, b_line);
        set_lines(&mut m, &l);
        repack(&m)
    };
    aud.expect(
        "another agent in a filtered pack",
        &slipped,
        "FILTER_MISMATCH",
    );
}

/// Single byte flips anywhere in a real pack, checked with the verifier library (the binary
/// is the same code): a flip that changes any member's content must fail verification; a flip
/// that tar ignores (padding, unused header fields) must leave it passing. None may panic.
#[tokio::test(flavor = "multi_thread")]
async fn random_byte_flips_fail_verification_or_change_nothing() {
    let up = Upstream::start(Behavior::Echo).await;
    let work = tempfile::tempdir().unwrap();
    let log_key = work.path().join("log.seed");
    std::fs::write(&log_key, "43".repeat(32)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&log_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let gw = gateway(&up, &log_key, "").await;
    traffic(&gw, "f", 6).await;
    gw.settled_checkpoint().await;
    let trust_text = request(gw.data, "GET", "/v1/keys", &[], None).await.text();
    let trust = lap_verify::TrustFile::parse(&trust_text).unwrap();
    let pack = gw.audit_pack("").await;
    let opts = lap_verify::pack::PackOptions {
        trusted_keys: Some(&trust),
        pinned_checkpoint: None,
        threads: 1,
    };
    let original = unpack(&pack);
    assert!(lap_verify::pack::verify_pack(&pack[..], &opts)
        .unwrap()
        .ok());

    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut failed, mut unchanged) = (0, 0);
    for _ in 0..300 {
        let at = (next() % pack.len() as u64) as usize;
        let bit = 1u8 << (next() % 8);
        let mut m = pack.clone();
        m[at] ^= bit;
        let report = lap_verify::pack::verify_pack(&m[..], &opts).unwrap();
        let same = lap_pack::read_tar(&m[..]).is_ok_and(|members| members == original);
        if same {
            assert!(
                report.ok(),
                "flip at {at} changed nothing yet failed: {:?}",
                report.failures
            );
            unchanged += 1;
        } else {
            assert!(
                !report.ok(),
                "flip at byte {at} (bit {bit}) was not detected"
            );
            failed += 1;
        }
    }
    assert!(failed > 100, "most flips hit content ({failed} of 300)");
    eprintln!("byte flips: {failed} detected, {unchanged} in bytes tar ignores");
}
