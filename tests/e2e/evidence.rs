//! Evidence end to end, in both modes: batched receipts verified offline by the real
//! `lap-verify` with nothing but the log key, per-receipt envelopes by an independent DSSE
//! implementation, checkpoints, proofs and each call's tlog-proof by the Go reference code,
//! external signers failing in every way (real child processes), and SIGKILL under load.

use lap_e2e::*;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "evidence-test-key-0123456789";

fn keys() -> String {
    format!(
        r#"{{"keys": [{{"id": "e", "hash": "{}", "agent_id": "agent-e", "groups": ["g"]}}]}}"#,
        key_hash(KEY)
    )
}

const POLICY: &str =
    r#"@id("g-read") permit(principal in Group::"g", action in Action::"read", resource);"#;

/// The two evidence modes, as `LAP_EVIDENCE_MODE` takes them.
const MODES: [&str; 2] = ["batched", "per_receipt"];

/// Public key of the test seed, as `/v1/keys` publishes it.
async fn public_key(gw: &Gateway) -> String {
    gw.keys_json().await["keys"][0]["public_key_hex"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn call(gw: &Gateway, path: &str) -> HttpResponse {
    gw.get(path).api_key(KEY).send().await
}

#[tokio::test(flavor = "multi_thread")]
async fn receipts_verify_with_securesystemslib() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(&keys())
        .policy(POLICY)
        .env("LAP_EVIDENCE_MODE", "per_receipt")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let allowed = call(&gw, "/tools/echo/a").await;
    let denied = gw
        .request("DELETE", "/tools/echo/a")
        .api_key(KEY)
        .send()
        .await;
    assert_eq!((allowed.status, denied.status), (200, 403));
    for (i, r) in [&allowed, &denied].iter().enumerate() {
        let id = r.header("x-lap-receipt-id").unwrap();
        let env = gw.admin_get(&format!("/v1/receipts/{id}")).send().await;
        assert_eq!(env.status, 200);
        assert_eq!(
            env.text(),
            r.header("x-lap-receipt").unwrap(),
            "header = logged envelope"
        );
        let f = dir.path().join(format!("r{i}.json"));
        std::fs::write(&f, &env.body).unwrap();
        files.push(f);
    }
    // The completion receipt (issued in the background).
    let index: u64 = allowed.header("x-lap-log-index").unwrap().parse().unwrap();
    let completion = wait_for(EVIDENCE_TIMEOUT, || async {
        for i in (0..4u64).filter(|i| *i != index) {
            let e = gw.log_entry(i).await;
            if e.status == 200 {
                let r = receipt_payload(&e.body);
                if r["kind"] == "completion" {
                    assert_eq!(r["completion"]["decision_log_index"], index);
                    assert_eq!(r["completion"]["status"], 200);
                    return Some(e.body);
                }
            }
        }
        None
    })
    .await;
    let f = dir.path().join("completion.json");
    std::fs::write(&f, completion.expect("a completion receipt")).unwrap();
    files.push(f);

    let pk = public_key(&gw).await;
    let verify = |files: &[PathBuf]| {
        run_command(
            Command::new("python3")
                .arg(repo_root().join("tests/interop/verify_dsse.py"))
                .arg(&pk)
                .arg("gateway")
                .args(files),
            Duration::from_secs(60),
        )
    };
    let out = verify(&files);
    assert_success(
        &out,
        "securesystemslib rejected our envelopes (is it installed? tests/run.sh installs it)",
    );
    // One changed payload byte must fail.
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut payload = base64_decode(v["payload"].as_str().unwrap());
    payload[10] ^= 1;
    let mut tampered = v.clone();
    tampered["payload"] = base64_encode(&payload).into();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, tampered.to_string()).unwrap();
    assert!(
        !verify(&[bad]).status.success(),
        "a tampered receipt must not verify"
    );
}

/// Batched mode (the default): a response carries its receipt — the log entry — and a C2SP
/// tlog-proof; the real `lap-verify` checks them offline with nothing but the log key
/// (`/v1/log/vkey`), and with the trust file also the receipt key that stood behind the batch.
/// The id names the position, the admin plane serves the same bytes, a completion names its
/// decision's leaf hash, and the headers stay small enough for any proxy and client.
#[tokio::test(flavor = "multi_thread")]
async fn batched_receipts_verify_offline_with_the_log_key_alone() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(&keys())
        .policy(POLICY)
        .extra_toml("[log]\norigin = \"lap.test/batched\"")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let vkey = gw.admin_get("/v1/log/vkey").send().await.text();
    let vkey = vkey.trim();
    let trust = save(dir.path(), "keys.json", &gw.trust_doc().await);
    let allowed = call(&gw, "/tools/echo/a?token=s3cret").await;
    let denied = gw
        .request("DELETE", "/tools/echo/a")
        .api_key(KEY)
        .send()
        .await;
    let stranger = gw.get("/tools/echo/a").api_key("not-a-key").send().await;
    assert_eq!(
        (allowed.status, denied.status, stranger.status),
        (200, 403, 401)
    );
    let prefix = format!("rcpt_{}_", &sha256_hex(b"lap.test/batched")[..12]);
    for (n, r) in [&allowed, &denied, &stranger].into_iter().enumerate() {
        let (entry, proof) = batched_receipt(r).expect("a batched receipt and its proof");
        let sizes = (
            r.header("x-lap-receipt").unwrap().len(),
            r.header("x-lap-receipt-proof").unwrap().len(),
        );
        eprintln!("header bytes (receipt, proof): {sizes:?}");
        assert!(
            sizes.0 + sizes.1 < 4096,
            "receipt headers of {sizes:?} bytes"
        );
        let index: u64 = r.header("x-lap-log-index").unwrap().parse().unwrap();
        let id = r.header("x-lap-receipt-id").unwrap();
        assert_eq!(
            id,
            format!("{prefix}{index:x}"),
            "the id names the position"
        );
        let receipt = receipt_payload(&entry);
        assert_eq!(receipt["receipt_id"], id);
        assert_eq!(receipt["log"]["index"], index);
        assert_eq!(receipt["blinder"].as_str().map(str::len), Some(32));
        assert!(!String::from_utf8_lossy(&entry).contains("s3cret"));
        // The admin plane serves the same bytes, by id and by index.
        let by_id = gw.admin_get(&format!("/v1/receipts/{id}")).send().await;
        assert_eq!((by_id.status, &by_id.body), (200, &entry));
        assert_eq!(gw.log_entry(index).await.body, entry);

        let ef = save(dir.path(), &format!("r{n}.json"), &entry);
        let pf = save(dir.path(), &format!("r{n}.tlog-proof"), proof.as_bytes());
        let verify = |anchor: [&OsStr; 2], entry: &Path| {
            lap_verify_json(&[
                OsStr::new("receipt"),
                entry.as_os_str(),
                OsStr::new("--proof"),
                pf.as_os_str(),
                anchor[0],
                anchor[1],
            ])
        };
        let with_log_key = [OsStr::new("--log-key"), OsStr::new(vkey)];
        let with_trust = [OsStr::new("--trusted-keys"), trust.as_os_str()];
        let report = verify(with_log_key, &ef);
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(
            report["report"]["notes"][0]["code"], "RECEIPT_KEY_NOT_CHECKED",
            "{report}"
        );
        let report = verify(with_trust, &ef);
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["report"]["notes"], serde_json::json!([]), "{report}");
        // One digit of the entry changed: not the entry the log holds.
        let text = String::from_utf8(entry.clone()).unwrap();
        let at = text.find("Z\"").unwrap() - 1;
        let mut bad = entry.clone();
        bad[at] = if bad[at] == b'9' { b'0' } else { bad[at] + 1 };
        let bf = save(dir.path(), &format!("bad{n}.json"), &bad);
        let report = verify(with_log_key, &bf);
        assert_eq!(report["ok"], false);
        assert_eq!(
            report["report"]["failures"][0]["code"], "INCLUSION_PROOF_FAILED",
            "{report}"
        );
    }
    // The completion receipt names its decision by id, index and leaf hash.
    let (decision, _) = batched_receipt(&allowed).unwrap();
    let index: u64 = allowed.header("x-lap-log-index").unwrap().parse().unwrap();
    let leaf = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update([0u8]);
        h.update(&decision);
        hex::encode(h.finalize())
    };
    let completion = wait_for(EVIDENCE_TIMEOUT, || async {
        for i in 0..gw.log_size().await {
            let r = receipt_payload(&gw.log_entry(i).await.body);
            if r["kind"] == "completion" {
                return Some(r);
            }
        }
        None
    })
    .await
    .expect("a completion receipt");
    assert_eq!(completion["completion"]["decision_log_index"], index);
    assert_eq!(completion["completion"]["decision_leaf_hash"], leaf);
    assert_eq!(
        completion["completion"]["decision_receipt_id"],
        allowed.header("x-lap-receipt-id").unwrap()
    );
    // Ids that name no receipt of this log.
    for id in [format!("{prefix}fff"), "rcpt_000000000000_1".into()] {
        let r = gw.admin_get(&format!("/v1/receipts/{id}")).send().await;
        r.assert_error(404, "RECEIPT_NOT_FOUND");
    }
}

/// The Go reference verifier (tests/interop/go/verify.go, built against Debian's
/// golang.org/x/mod) for one log's verifier key. Each check runs bounded and returns the
/// process output.
struct GoVerifier {
    bin: PathBuf,
    vkey: String,
}

impl GoVerifier {
    fn build(dir: &Path, vkey: &str) -> GoVerifier {
        let bin = dir.join("verify");
        let gopath = std::env::var("LAP_GOPATH").unwrap_or_else(|_| "/usr/share/gocode".into());
        assert!(
            Command::new("go").arg("version").output().is_ok(),
            "go is missing (tests/run.sh installs golang-go and golang-golang-x-mod-dev)"
        );
        let st = run_command(
            Command::new("go")
                .args(["build", "-o"])
                .arg(&bin)
                .arg(repo_root().join("tests/interop/go/verify.go"))
                .env("GO111MODULE", "off")
                .env("GOPATH", &gopath)
                .env("GOCACHE", dir.join("gocache"))
                .env("GOFLAGS", ""),
            Duration::from_secs(300),
        );
        assert_success(&st, "go build");
        GoVerifier {
            bin,
            vkey: vkey.to_string(),
        }
    }

    fn run(&self, check: &str, args: &[&OsStr]) -> Output {
        run_command(
            Command::new(&self.bin).args([check, &self.vkey]).args(args),
            Duration::from_secs(60),
        )
    }

    /// `checkpoint VKEY NOTE`: the note's signature.
    fn checkpoint(&self, note: &Path) -> Output {
        self.run("checkpoint", &[note.as_os_str()])
    }

    /// `inclusion VKEY NOTE INDEX ENTRY PROOF`.
    fn inclusion(&self, note: &Path, index: u64, entry: &Path, proof: &Path) -> Output {
        let index = index.to_string();
        let args = [
            note.as_os_str(),
            index.as_ref(),
            entry.as_os_str(),
            proof.as_os_str(),
        ];
        self.run("inclusion", &args)
    }

    /// `consistency VKEY OLD NEW PROOF`.
    fn consistency(&self, old: &Path, new: &Path, proof: &Path) -> Output {
        self.run(
            "consistency",
            &[old.as_os_str(), new.as_os_str(), proof.as_os_str()],
        )
    }

    /// `tlogproof VKEY PROOF ENTRY [COSIGNER…]`: a call's tlog-proof, its checkpoint signed by
    /// the log key and by every cosigner key given.
    fn tlog_proof(&self, proof: &Path, entry: &Path, cosigners: &[&str]) -> Output {
        let mut args = vec![proof.as_os_str(), entry.as_os_str()];
        args.extend(cosigners.iter().map(OsStr::new));
        self.run("tlogproof", &args)
    }
}

/// The note verifier key (Go `note` format) under which the receipt key `kid` signs batch
/// checkpoints: name `<origin>/receipt-key/<kid>`, id = first 4 bytes of
/// SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key) — computed here from `/v1/keys`, independently of the
/// gateway's code.
fn receipt_vkey(origin: &str, kid: &str, public_hex: &str) -> String {
    use sha2::Digest;
    let name = format!("{origin}/receipt-key/{kid}");
    let mut raw = vec![0x01];
    raw.extend_from_slice(&hex::decode(public_hex).unwrap());
    let mut h = sha2::Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update(&raw);
    let id = hex::encode(&h.finalize()[..4]);
    format!("{name}+{id}+{}", base64_encode(&raw))
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_and_proofs_verify_with_go_reference() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(&keys())
        .policy(POLICY)
        .extra_toml("[log]\ncheckpoint_every = 4\ncheckpoint_interval_ms = 100\norigin = \"lap.test/interop\"")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let vkey = gw.admin_get("/v1/log/vkey").send().await.text();
    let vkey = vkey.trim();
    assert!(vkey.starts_with("lap.test/interop+"));
    let go = GoVerifier::build(dir.path(), vkey);

    for i in 0..5 {
        assert_eq!(call(&gw, &format!("/tools/echo/{i}")).await.status, 200);
    }
    let (old_note, old_size) = gw.checkpoint_at_least(10).await;
    for i in 0..7 {
        assert_eq!(
            call(&gw, &format!("/tools/echo/more/{i}")).await.status,
            200
        );
    }
    let (new_note, new_size) = gw.checkpoint_at_least(old_size + 14).await;
    let old_cp = save(dir.path(), "old.cp", old_note.as_bytes());
    let new_cp = save(dir.path(), "new.cp", new_note.as_bytes());

    let out = go.checkpoint(&new_cp);
    assert_success(&out, "Go checkpoint");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("{new_size} ")));

    // Another entry's bytes must not verify with a proof.
    let other = save(dir.path(), "other", b"not the entry");
    for index in [0, 3, old_size - 1, new_size - 1] {
        let entry = gw.log_entry(index).await;
        let proof = gw
            .admin_get(&format!(
                "/v1/log/proof/inclusion?index={index}&size={new_size}"
            ))
            .send()
            .await;
        assert_eq!((entry.status, proof.status), (200, 200));
        let ef = save(dir.path(), &format!("e{index}"), &entry.body);
        let pf = save(dir.path(), &format!("p{index}.json"), &proof.body);
        let out = go.inclusion(&new_cp, index, &ef, &pf);
        assert_success(&out, &format!("Go inclusion {index}"));
        assert!(!go.inclusion(&new_cp, index, &other, &pf).status.success());
    }

    let proof = gw
        .admin_get(&format!(
            "/v1/log/proof/consistency?old={old_size}&new={new_size}"
        ))
        .send()
        .await;
    let pf = save(dir.path(), "consistency.json", &proof.body);
    let out = go.consistency(&old_cp, &new_cp, &pf);
    assert_success(&out, "Go consistency");
    // A forged checkpoint (signature no longer matches) is rejected by the Go note code.
    let forged = new_note.replacen(
        &format!("\n{new_size}\n"),
        &format!("\n{}\n", new_size + 1),
        1,
    );
    let forged = save(dir.path(), "forged.cp", forged.as_bytes());
    assert!(!go.checkpoint(&forged).status.success());

    // Each call's own evidence (batched mode): the entry and its tlog-proof from the response
    // headers verify with the Go note and tlog code, the checkpoint signed by the log key and
    // by the receipt key that stood behind the batch.
    let keys = gw.keys_json().await;
    let kid = keys["active_kid"].as_str().unwrap();
    let rk = receipt_vkey("lap.test/interop", kid, &public_key(&gw).await);
    let other_key = ed25519_dalek::SigningKey::from_bytes(&[0x44; 32]).verifying_key();
    let stranger = receipt_vkey("lap.test/interop", kid, &hex::encode(other_key.as_bytes()));
    for (i, method) in ["GET", "GET", "DELETE"].iter().enumerate() {
        let r = gw
            .request(method, &format!("/tools/echo/proof/{i}"))
            .api_key(KEY)
            .send()
            .await;
        let (entry, proof) = batched_receipt(&r).expect("a batched receipt and its proof");
        let ef = save(dir.path(), &format!("call{i}.entry"), &entry);
        let pf = save(dir.path(), &format!("call{i}.tlog-proof"), proof.as_bytes());
        assert_success(
            &go.tlog_proof(&pf, &ef, &[&rk]),
            &format!("Go tlog-proof {i}"),
        );
        assert!(!go.tlog_proof(&pf, &other, &[]).status.success());
        assert!(
            !go.tlog_proof(&pf, &ef, &[&stranger]).status.success(),
            "a key that did not sign the checkpoint"
        );
    }
}

/// Writes a keyset whose active key signs through `cmd` (external) with the pinned public key
/// of `seed`; a separate in-process log key keeps checkpoints out of the signer under test.
fn signer_gateway(up: &Upstream, dir: &Path, cmd: &str, coprocess: bool) -> GatewayBuilder {
    let seed = dir.join("signer.seed");
    write_private(&seed, TEST_SEED);
    let log_seed = dir.join("log.seed");
    write_private(&log_seed, &"42".repeat(32));
    let pubhex = pubkey_of(&seed);
    let keyset = serde_json::json!({
        "active_kid": "ext",
        "keys": {"ext": {"signing_cmd": cmd.replace("@SEED@", &seed.display().to_string()),
                          "public_key_hex": pubhex, "timeout_seconds": 0.5}}
    });
    let keyset_file = dir.join("keyset.json");
    write_private(&keyset_file, &keyset.to_string());
    GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(&keys())
        .policy(POLICY)
        .without_signing_key()
        .env("LAP_GATEWAY_KEYSET_FILE", keyset_file.to_str().unwrap())
        .env("LAP_LOG_SIGNING_KEY_FILE", log_seed.to_str().unwrap())
        .env(
            "LAP_SIGNER_PROTOCOL",
            if coprocess { "coprocess" } else { "oneshot" },
        )
}

fn pubkey_of(seed: &Path) -> String {
    let out = lap_signer(&["pubkey", "--key-file", seed.to_str().unwrap()]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every way an external signer can fail, in both modes: the call is refused with the
/// signer's code (batched: every call of the batch), the tool is never contacted, and the
/// failure is counted and logged; the genuine signer works through the same contract
/// (batched: one signature per batch checkpoint, checked against the pinned key).
#[tokio::test(flavor = "multi_thread")]
async fn failing_external_signers_refuse_the_call_and_never_reach_the_tool() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.seed");
    write_private(&other, &"77".repeat(32));
    let signer = signer_bin().display().to_string();
    let cases = [
        ("sh -c 'sleep 5'", "SIGNER_TIMEOUT"),
        ("sh -c 'cat >/dev/null; exit 1'", "SIGNER_EXIT_NONZERO"),
        ("sh -c 'cat >/dev/null; kill -9 $$'", "SIGNER_EXIT_NONZERO"),
        (
            "sh -c 'cat >/dev/null; echo not-a-signature'",
            "SIGNER_MALFORMED_OUTPUT",
        ),
        (
            &*format!("{signer} sign --key-file {}", other.display()),
            "SIGNER_BAD_SIGNATURE",
        ),
        ("/nonexistent/signer", "SIGNER_SPAWN_FAILED"),
    ];
    for mode in MODES {
        for (cmd, code) in cases.iter().copied() {
            let up = Upstream::start(Behavior::Echo).await;
            let gw = signer_gateway(&up, dir.path(), cmd, false)
                .env("LAP_EVIDENCE_MODE", mode)
                .start()
                .await;
            let started = Instant::now();
            // Concurrent calls: batched, they may share one batch; each is refused.
            let addr = gw.data;
            let calls: Vec<_> = (0..4)
                .map(|i| {
                    tokio::spawn(async move {
                        Request::get(addr, &format!("/tools/echo/x{i}"))
                            .api_key(KEY)
                            .send()
                            .await
                    })
                })
                .collect();
            for c in calls {
                let r = c.await.unwrap();
                assert_eq!(
                    (r.status, r.error_code().as_deref()),
                    (503, Some(code)),
                    "{mode} {cmd}: {}",
                    r.text()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "{mode}: the timeout bounds the wait"
            );
            assert_eq!(up.hits(), 0, "{mode} {cmd}: the tool must not be contacted");
            let m = gw.metrics().await;
            assert!(
                metric_value(
                    &m,
                    "lap_signer_failures_total",
                    &[("mode", "external"), ("code", code)]
                )
                .unwrap_or(0.0)
                    >= 1.0,
                "{mode} {cmd}: failure not counted"
            );
            assert!(
                gw.wait_for_log(code).await,
                "{mode} {cmd}: failure not logged"
            );
            if mode == "batched" {
                // The log never claims those calls were allowed: no decision is logged.
                assert!(gw.admin_get("/v1/log/checkpoint").send().await.status == 404);
                assert_eq!(gw.log_size().await, 0, "{mode} {cmd}: nothing logged");
            }
        }
        // The genuine signer works, through the same contract.
        let up = Upstream::start(Behavior::Echo).await;
        let gw = signer_gateway(
            &up,
            dir.path(),
            &format!("{signer} sign --key-file @SEED@"),
            false,
        )
        .env("LAP_EVIDENCE_MODE", mode)
        .start()
        .await;
        let r = call(&gw, "/tools/echo/x").await;
        assert_eq!(r.status, 200, "{mode}: {}", r.text());
        match batched_receipt(&r) {
            Some((entry, _)) => {
                assert_eq!(mode, "batched");
                assert_eq!(receipt_payload(&entry)["signer"]["key_id"], "ext");
                assert_eq!(receipt_payload(&entry)["signer"]["mode"], "external");
            }
            None => {
                assert_eq!(mode, "per_receipt");
                assert!(r
                    .header("x-lap-receipt")
                    .unwrap()
                    .contains("\"keyid\":\"ext\""));
            }
        }
        assert_eq!(up.hits(), 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn coprocess_signer_dies_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let signer = signer_bin().display().to_string();
    // Serves three signatures, then exits: the gateway must refuse while it is down and
    // recover when it restarts it. (The three requests are passed on one at a time, as they
    // come: `head -n 3` would hold them until it had all three, while the gateway sends the
    // next request only once the signer has answered the one before.)
    let cmd = format!(
        "sh -c 'i=0; while [ $i -lt 3 ] && IFS= read -r l; do echo \"$l\"; i=$((i+1)); done \
         | {signer} serve --key-file @SEED@'"
    );
    let up = Upstream::start(Behavior::Echo).await;
    let gw = signer_gateway(&up, dir.path(), &cmd, true).start().await;
    let (mut ok, mut unavailable) = (0, 0);
    let mut recovered_after_failure = false;
    for i in 0..40 {
        let r = call(&gw, &format!("/tools/echo/{i}")).await;
        match (r.status, r.error_code()) {
            (200, _) => {
                ok += 1;
                recovered_after_failure |= unavailable > 0;
            }
            (503, Some(c)) if c == "SIGNER_UNAVAILABLE" || c == "SIGNER_TIMEOUT" => {
                unavailable += 1
            }
            other => panic!("unexpected {other:?}: {}", r.text()),
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(unavailable > 0, "the signer's death must refuse calls");
    assert!(
        recovered_after_failure,
        "calls must succeed again after the restart"
    );
    // Every call the tool saw had a signed, logged decision receipt; refused ones did not reach it.
    assert_eq!(up.hits(), ok);
    let m = gw.metrics().await;
    assert!(
        metric_value(&m, "lap_signer_failures_total", &[("mode", "coprocess")]).unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_load_loses_no_acknowledged_evidence_batched() {
    sigkill_under_load("batched").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_load_loses_no_acknowledged_evidence_per_receipt() {
    sigkill_under_load("per_receipt").await;
}

/// SIGKILL mid-load: the gateway restarts on a log that verifies, every call the tool saw has
/// its decision in the log, and indices continue.
async fn sigkill_under_load(mode: &str) {
    let up = Arc::new(Upstream::start(Behavior::Echo).await);
    let mut gw = GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(&keys())
        .policy(POLICY)
        .extra_toml("[log]\ncheckpoint_every = 50\ncheckpoint_interval_ms = 50")
        .env("LAP_EVIDENCE_MODE", mode)
        .start()
        .await;
    let addr = gw.data;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..16 {
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 2000 {
                // Refused or cut short once the gateway is killed: no answer is expected then.
                let _ = Request::get(addr, &format!("/tools/echo/{w}/{n}"))
                    .api_key(KEY)
                    .try_send(Duration::from_secs(2))
                    .await;
                n += 1;
            }
        }));
    }
    let loaded = wait_until(Duration::from_secs(10), || async { up.hits() >= 200 }).await;
    assert!(loaded, "the load reaches the tool ({} calls)", up.hits());
    gw.kill(); // SIGKILL mid-load
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let seen_before: Vec<String> = up
        .requests()
        .iter()
        .filter_map(|r| r.header("x-request-id").map(str::to_string))
        .collect();
    assert!(
        seen_before.len() > 20,
        "the load reached the tool ({} calls)",
        seen_before.len()
    );

    assert!(
        gw.restart().await,
        "the gateway must restart on its crashed log:\n{}",
        gw.log_text()
    );
    let size = gw.log_size().await;
    let mut decisions = std::collections::HashSet::new();
    for i in 0..size {
        let e = gw.log_entry(i).await;
        assert_eq!(e.status, 200);
        let r = receipt_payload(&e.body);
        assert_eq!(
            r["log"]["index"], i,
            "every entry sits at the index it was signed for"
        );
        if r["kind"] == "decision" {
            decisions.insert(r["request_id"].as_str().unwrap().to_string());
        }
    }
    for id in &seen_before {
        assert!(
            decisions.contains(id),
            "the tool saw request {id} without a logged decision receipt"
        );
    }
    // New receipts continue the same tree: the next index is the old size.
    let r = call(&gw, "/tools/echo/after").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-lap-log-index").unwrap().parse::<u64>().unwrap(),
        size
    );
    // The checkpoint from before the crash is consistent with the log after it.
    let (_, cp_size) = gw.checkpoint_at_least(size + 1).await;
    let proof = gw
        .admin_get(&format!(
            "/v1/log/proof/consistency?old={}&new={cp_size}",
            size / 2
        ))
        .send()
        .await;
    assert_eq!(proof.status, 200);
    // And the whole log directory verifies offline (read once the gateway is gone, so that
    // no batch lands between reading the entries and the checkpoints).
    let dir = tempfile::tempdir().unwrap();
    let keys_file = save(dir.path(), "keys.json", &gw.trust_doc().await);
    gw.kill();
    let report = lap_verify_json(&[
        OsStr::new("log"),
        gw.dir().join("lap-data/log").as_os_str(),
        OsStr::new("--trusted-keys"),
        keys_file.as_os_str(),
    ]);
    assert_eq!(report["ok"], true, "{mode}: {report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keyset_rotation_under_load_without_restart() {
    for mode in MODES {
        keyset_rotation_under_load(mode).await;
    }
}

/// A receipt key rotated under load: no call fails, every receipt names the key that stood
/// behind it (its own signature, or its batch checkpoint's), and the log verifies.
async fn keyset_rotation_under_load(mode: &str) {
    let up = Upstream::start(Behavior::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let keyset = KeysetFile::new(dir.path());
    let (s1, s2) = (keyset.keygen("k1"), keyset.keygen("k2"));
    keyset.add("k1", &s1);
    let log_seed = dir.path().join("log.seed");
    write_private(&log_seed, &"24".repeat(32));
    let gw = GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(&keys())
        .policy(POLICY)
        .without_signing_key()
        .env("LAP_GATEWAY_KEYSET_FILE", keyset.path_str())
        .env("LAP_LOG_SIGNING_KEY_FILE", log_seed.to_str().unwrap())
        .env("LAP_EVIDENCE_MODE", mode)
        .start()
        .await;
    let addr = gw.data;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    // A steady, bounded load (4 agents, ~50 calls/s each) across the rotation.
    for w in 0..4 {
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 500 {
                let r = Request::get(addr, &format!("/tools/echo/{w}/{n}"))
                    .api_key(KEY)
                    .send()
                    .await;
                statuses.push(r.status);
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            statuses
        }));
    }
    // Some load under k1 first, some under k2 after it.
    let up = &up;
    let load = |calls: usize| {
        wait_until(Duration::from_secs(10), move || async move {
            up.hits() >= calls
        })
    };
    assert!(load(40).await, "calls before the rotation");
    keyset.add("k2", &s2);
    keyset.activate("k2");
    let rotated = gw.wait_for_active_kid("k2").await;
    assert!(rotated, "the new key must become active without a restart");
    keyset.retire("k1");
    assert!(load(up.hits() + 40).await, "calls after the rotation");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let statuses = w.await.unwrap();
        assert!(
            statuses.iter().all(|s| *s == 200),
            "no call may fail during rotation"
        );
        total += statuses.len();
    }
    assert!(total > 50);

    // Every receipt verifies with the key it names; k1 signs everything before the switch,
    // k2 everything after, and the retired k1 is still published for verification.
    let keys = gw.keys_json().await;
    let public = |kid: &str| {
        let k = keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key_id"] == kid)
            .unwrap()
            .clone();
        (
            lap_keys::parse_public_hex(k["public_key_hex"].as_str().unwrap()).unwrap(),
            k,
        )
    };
    let (pk1, k1) = public("k1");
    let (pk2, _) = public("k2");
    assert_eq!(k1["status"], "retired");
    // Each call logs a decision and, in the background, a completion receipt: wait for all.
    let landed = wait_until(EVIDENCE_TIMEOUT, || async {
        gw.log_size().await >= 2 * total as u64
    })
    .await;
    let size = gw.log_size().await;
    assert!(landed, "{size} entries for {total} calls");
    let mut seen_k2 = false;
    let (mut n1, mut n2) = (0, 0);
    for i in 0..size {
        let e = gw.log_entry(i).await;
        let receipt = receipt_payload(&e.body);
        let envelope = (mode == "per_receipt").then(|| lap_receipt::open(&e.body).unwrap().0);
        match receipt["signer"]["key_id"].as_str().unwrap() {
            "k1" => {
                assert!(!seen_k2, "entry {i}: k1 signed after k2 took over");
                if let Some(env) = &envelope {
                    env.verify("k1", &pk1).unwrap();
                }
                n1 += 1;
            }
            "k2" => {
                seen_k2 = true;
                if let Some(env) = &envelope {
                    env.verify("k2", &pk2).unwrap();
                    assert!(env.verify("k2", &pk1).is_err());
                }
                n2 += 1;
            }
            other => panic!("entry {i} signed by unexpected key {other}"),
        }
    }
    assert!(n1 > 0 && n2 > 0, "receipts from both keys ({n1}, {n2})");
    // Offline: envelopes by their keys, batches by the key their receipts name (each batch's
    // checkpoint signed by k1 or k2 accordingly), every key valid when it signed.
    let dir = tempfile::tempdir().unwrap();
    let keys_file = save(dir.path(), "keys.json", &gw.trust_doc().await);
    let mut gw = gw;
    gw.kill();
    let report = lap_verify_json(&[
        OsStr::new("log"),
        gw.dir().join("lap-data/log").as_os_str(),
        OsStr::new("--trusted-keys"),
        keys_file.as_os_str(),
    ]);
    assert_eq!(report["ok"], true, "{mode}: {report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn lap_verify_checks_a_real_gateway_log_offline() {
    let up = Upstream::start(Behavior::Echo).await;
    let mut gw = GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(&keys())
        .policy(POLICY)
        .extra_toml("[log]\ncheckpoint_every = 1000\ncheckpoint_interval_ms = 50")
        .start()
        .await;
    for i in 0..6 {
        call(&gw, &format!("/tools/echo/{i}")).await;
    }
    gw.request("DELETE", "/tools/echo/x")
        .api_key(KEY)
        .send()
        .await;
    let trust = gw.trust_doc().await;
    let (early, _) = gw.checkpoint_at_least(5).await;
    // 6 decisions, 6 completions (logged in the background) and a denial.
    let landed = wait_until(EVIDENCE_TIMEOUT, || async { gw.log_size().await >= 13 }).await;
    assert!(landed, "13 receipts logged");
    gw.kill();
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys.json");
    std::fs::write(&keys_file, &trust).unwrap();
    let pinned = dir.path().join("pinned.cp");
    std::fs::write(&pinned, early).unwrap();
    let log = gw.dir().join("lap-data/log");
    let verify = |log: &Path| {
        run_command(
            Command::new(verify_bin())
                .arg("log")
                .arg(log)
                .arg("--trusted-keys")
                .arg(&keys_file)
                .arg("--checkpoint")
                .arg(&pinned)
                .arg("--json"),
            Duration::from_secs(60),
        )
    };
    let out = verify(&log);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{report}");
    assert!(report["report"]["entries"].as_u64().unwrap() >= 13);

    // Swap two receipts in a copy of the log: caught, with stable codes.
    let copy = dir.path().join("log");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(log.join("checkpoint"), copy.join("checkpoint")).unwrap();
    let ro = lap_tlog_entries(&log);
    let mut swapped = ro.clone();
    swapped.swap(0, 1);
    let mut bytes = b"LAPTLOG1".to_vec();
    for e in &swapped {
        bytes.extend_from_slice(&(e.len() as u32).to_be_bytes());
        bytes.extend_from_slice(e);
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update([0u8]);
        h.update(e);
        bytes.extend_from_slice(&h.finalize());
    }
    std::fs::write(copy.join("entries"), bytes).unwrap();
    let out = verify(&copy);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let codes: Vec<&str> = report["report"]["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"INDEX_MISMATCH"), "{codes:?}");
}

/// Appends one record to a stopped gateway's log file, as something other than the gateway
/// would (a valid record: length, bytes, leaf hash).
fn append_record(log: &Path, entry: &[u8]) {
    use sha2::Digest;
    use std::io::Write;
    let mut h = sha2::Sha256::new();
    h.update([0u8]);
    h.update(entry);
    let mut record = (entry.len() as u32).to_be_bytes().to_vec();
    record.extend_from_slice(entry);
    record.extend_from_slice(&h.finalize());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(log.join("entries"))
        .unwrap();
    f.write_all(&record).unwrap();
}

/// Nothing beyond the last durable checkpoint is trusted without verification: a record
/// written to the log file behind the gateway's back refuses start-up (and `check-config` says
/// why) instead of being signed over by the next checkpoint; batched entries left after the
/// checkpoint by a crash were never acknowledged and are discarded at start, their indices used
/// again.
#[tokio::test(flavor = "multi_thread")]
async fn the_log_after_its_last_checkpoint_is_verified_or_discarded_at_start() {
    let up = Upstream::start(Behavior::Echo).await;
    let mut gw = GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(&keys())
        .policy(POLICY)
        .start()
        .await;
    for i in 0..3 {
        assert_eq!(call(&gw, &format!("/tools/echo/{i}")).await.status, 200);
    }
    let (_, size) = gw.settled_checkpoint().await;
    let last = gw.log_entry(size - 1).await.body;
    gw.kill();
    let log = gw.dir().join("lap-data/log");
    let config = gw.config_path();
    let entries = std::fs::read(log.join("entries")).unwrap();

    // A forged record (not a receipt), then a forged envelope: start-up refuses.
    let mut forged_envelope = receipt_payload(&last);
    forged_envelope["log"]["index"] = size.into();
    forged_envelope["version"] = 1.into();
    let envelope = serde_json::json!({
        "payload": base64_encode(forged_envelope.to_string().as_bytes()),
        "payloadType": "application/vnd.lap.receipt.v1+json",
        "signatures": [{"keyid": forged_envelope["signer"]["key_id"], "sig": base64_encode(&[7; 64])}],
    });
    for forged in [
        b"a forged record".to_vec(),
        envelope.to_string().into_bytes(),
    ] {
        std::fs::write(log.join("entries"), &entries).unwrap();
        append_record(&log, &forged);
        let out = check_config(&config);
        assert!(!out.status.success(), "check-config must refuse");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("entry {size} after the last checkpoint")),
            "{err}"
        );
        assert!(!gw.restart().await, "a forged tail must refuse start-up");
        assert!(
            gw.log_text()
                .contains("nothing beyond the last durable signed checkpoint"),
            "{}",
            gw.log_text()
        );
    }

    // A batched entry after the checkpoint (a crash between writing a batch and saving its
    // checkpoint): discarded at start, its index used again.
    std::fs::write(log.join("entries"), &entries).unwrap();
    let mut leaf = receipt_payload(&last);
    leaf["log"]["index"] = size.into();
    append_record(&log, leaf.to_string().as_bytes());
    let out = check_config(&config);
    assert_success(
        &out,
        "check-config on a log with an unacknowledged batched tail",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("will be discarded at start"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(gw.restart().await, "{}", gw.log_text());
    assert!(gw.log_text().contains("discarded batched entries"));
    let r = call(&gw, "/tools/echo/after").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-lap-log-index").unwrap().parse::<u64>().unwrap(),
        size,
        "the discarded index is used again"
    );
}

/// A log begun before receipt ids were derived from positions holds receipts with random ids:
/// the gateway finds them by id through its table of older ids (filled once at start-up from
/// those entries), tells an unknown id from them, and finds new receipts (derived ids) without
/// it.
#[tokio::test(flavor = "multi_thread")]
async fn receipts_of_an_older_log_are_found_by_their_random_ids() {
    use ed25519_dalek::Signer as _;
    let up = Upstream::start(Behavior::Echo).await;
    let mut gw = GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(&keys())
        .policy(POLICY)
        .env("LAP_EVIDENCE_MODE", "per_receipt")
        .start()
        .await;
    for i in 0..3 {
        assert_eq!(call(&gw, &format!("/tools/echo/{i}")).await.status, 200);
    }
    gw.settled_checkpoint().await;
    gw.kill();
    // The same receipts as an older gateway would have logged them: random ids, signed by the
    // same key, and no checkpoint yet (start-up verifies every envelope and keeps them).
    let log = gw.dir().join("lap-data/log");
    let seed: [u8; 32] = hex::decode(TEST_SEED).unwrap().try_into().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let legacy_id =
        |i: usize| format!("rcpt_{:032x}", 0x9e37_79b9_7f4a_7c15_u128 * (i as u128 + 7));
    let old = lap_tlog_entries(&log);
    let mut renamed = std::collections::HashMap::new();
    std::fs::write(log.join("entries"), b"LAPTLOG1").unwrap();
    for name in ["checkpoint", "checkpoints"] {
        std::fs::remove_file(log.join(name)).unwrap();
    }
    for (i, entry) in old.iter().enumerate() {
        let mut r = lap_receipt::open_entry(entry).unwrap().into_receipt();
        renamed.insert(r.receipt_id.clone(), legacy_id(i));
        r.receipt_id = legacy_id(i);
        if let Some(c) = r.completion.as_mut() {
            c.decision_receipt_id = renamed[&c.decision_receipt_id].clone();
        }
        let sig = key.sign(&r.envelope().pae()).to_bytes();
        let envelope = r.signed(&r.signer.key_id, sig).to_json();
        append_record(&log, envelope.as_bytes());
    }
    assert!(gw.restart().await, "{}", gw.log_text());
    assert!(
        gw.log_text().contains("verified and kept"),
        "{}",
        gw.log_text()
    );
    for i in 0..old.len() {
        let r = gw
            .admin_get(&format!("/v1/receipts/{}", legacy_id(i)))
            .send()
            .await;
        assert_eq!(r.status, 200, "{}", legacy_id(i));
        assert_eq!(r.header("x-lap-log-index"), Some(i.to_string().as_str()));
        let logged = lap_receipt::open_entry(&r.body).unwrap().into_receipt();
        assert_eq!(logged.receipt_id, legacy_id(i));
    }
    let unknown = gw
        .admin_get(&format!("/v1/receipts/{}", legacy_id(old.len())))
        .send()
        .await;
    assert_eq!(unknown.status, 404);
    // A new receipt gets the id derived from its position, found without the table.
    let new = call(&gw, "/tools/echo/new").await;
    assert_eq!(new.status, 200);
    let id = new.header("x-lap-receipt-id").unwrap();
    assert_ne!(id, legacy_id(old.len()));
    let found = gw.admin_get(&format!("/v1/receipts/{id}")).send().await;
    assert_eq!(found.status, 200);
    assert_eq!(
        found.header("x-lap-log-index"),
        new.header("x-lap-log-index")
    );
}

/// The entries of a log directory, parsed independently of the gateway's code.
fn lap_tlog_entries(dir: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(dir.join("entries")).unwrap();
    assert_eq!(&bytes[..8], b"LAPTLOG1");
    let mut out = Vec::new();
    let mut pos = 8;
    while pos + 4 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        if pos + 4 + len + 32 > bytes.len() {
            break;
        }
        out.push(bytes[pos + 4..pos + 4 + len].to_vec());
        pos += 4 + len + 32;
    }
    out
}

/// A hung co-process signer (timeout 0.5 s) costs the calls waiting on it one timeout, not
/// one timeout each: six concurrent calls are all refused within about a second (they used to
/// finish 0.5, 1.0, … 3.0 s in), none reaches the tool, and the gateway keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_coprocess_signer_refuses_concurrent_calls_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let signer = signer_bin().display().to_string();
    let cmd = format!("{signer} serve --key-file @SEED@ --hang-after 0");
    let up = Upstream::start(Behavior::Echo).await;
    let gw = signer_gateway(&up, dir.path(), &cmd, true).start().await;
    let addr = gw.data;
    let mut calls = Vec::new();
    for i in 0..6 {
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = Request::get(addr, &format!("/tools/echo/{i}"))
                .api_key(KEY)
                .send()
                .await;
            (r.status, r.error_code(), started.elapsed())
        }));
    }
    for c in calls {
        let (status, code, took) = c.await.unwrap();
        assert_eq!(status, 503, "{code:?}");
        assert!(
            matches!(
                code.as_deref(),
                Some("SIGNER_TIMEOUT" | "SIGNER_UNAVAILABLE" | "SIGNER_QUEUE_TIMEOUT")
            ),
            "{code:?}"
        );
        assert!(took < Duration::from_millis(1500), "refused after {took:?}");
    }
    assert_eq!(up.hits(), 0, "the tool must not be contacted");
    assert!(gw.wait_for_log("wedged").await, "the wedge is not logged");
}

/// The pids a signer wrapper appended to `file` (one per line), once there are `n`.
async fn pids_in(file: &Path, n: usize) -> Vec<u32> {
    wait_for(Duration::from_secs(10), || async {
        let pids: Vec<u32> = std::fs::read_to_string(file)
            .ok()?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        (pids.len() >= n).then_some(pids)
    })
    .await
    .unwrap_or_else(|| panic!("{} never had {n} pids", file.display()))
}

/// Whether `pid` runs (a zombie left to whoever inherited it counts as gone).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

async fn gone_within(pids: &[u32], limit: Duration) -> bool {
    wait_for(limit, || async {
        pids.iter().all(|p| !running(*p)).then_some(())
    })
    .await
    .is_some()
}

/// No co-process signer outlives its gateway, nor its keyset: a reload that replaces the
/// signer kills the old process; SIGTERM (graceful drain, then the signer's whole process
/// group is killed) leaves nothing behind, a helper the signer's wrapper started included;
/// after a SIGKILL of the gateway, `lap-signer serve` exits on its own when its stdin closes.
#[tokio::test(flavor = "multi_thread")]
async fn coprocess_signer_does_not_outlive_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let signer = signer_bin().display().to_string();
    let pids = dir.path().join("signer.pids");
    // Each life of the signer appends two lines: a helper it started, then its own pid.
    let cmd = format!(
        "sh -c 'sleep 1000 & echo $! >> {p}; echo $$ >> {p}; exec {signer} serve --key-file @SEED@'",
        p = pids.display()
    );
    let up = Upstream::start(Behavior::Echo).await;
    let mut gw = signer_gateway(&up, dir.path(), &cmd, true).start().await;
    let r = call(&gw, "/tools/echo/a").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first = pids_in(&pids, 2).await;
    assert!(first.iter().all(|p| running(*p)));

    // A keyset reload builds a new signer: the old process goes, a new one serves.
    gw.sighup();
    let second = pids_in(&pids, 4).await[2..].to_vec();
    assert!(
        gone_within(&first, Duration::from_secs(5)).await,
        "the replaced signer {first:?} lingers"
    );
    let r = call(&gw, "/tools/echo/b").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(second.iter().all(|p| running(*p)));

    // SIGTERM: the gateway drains, kills its signers and exits 0.
    let status = gw.stop_with("TERM", Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM: {status:?}\n{}",
        gw.log_text()
    );
    assert!(
        gone_within(&second, Duration::from_secs(5)).await,
        "signer processes {second:?} outlived the gateway"
    );

    // SIGKILL: nothing in the gateway runs, the signer sees end of file and exits.
    let killed = dir.path().join("killed.pid");
    let cmd = format!(
        "sh -c 'echo $$ > {}; exec {signer} serve --key-file @SEED@'",
        killed.display()
    );
    let dir2 = tempfile::tempdir().unwrap();
    let mut gw = signer_gateway(&up, dir2.path(), &cmd, true).start().await;
    let r = call(&gw, "/tools/echo/c").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let serve = pids_in(&killed, 1).await;
    gw.kill();
    assert!(
        gone_within(&serve, Duration::from_secs(5)).await,
        "lap-signer serve {serve:?} outlived a SIGKILLed gateway"
    );
}
