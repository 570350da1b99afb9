//! Audit packs end to end: a real gateway issues receipts for two agents and two tools; packs
//! are exported from the admin plane and with `lap-gateway audit-pack` over the log directory,
//! then checked offline by the real `lap-verify` binary.

use lap_e2e::audit::*;
use lap_e2e::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn packs_from_the_admin_plane_and_the_cli_verify_offline() {
    let (_up, gw) = busy_gateway(6, LOG_TOML).await;
    let (note, size) = gw.settled_checkpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let trust = save(dir.path(), "keys.json", &gw.trust_doc().await);
    let pinned = save(dir.path(), "pinned.cp", note.as_bytes());
    let keys_arg = [std::ffi::OsStr::new("--trusted-keys"), trust.as_os_str()];

    // The whole log, from the admin plane.
    let full = save(dir.path(), "full.tar", &gw.audit_pack("").await);
    let v = verify_pack(&full, &keys_arg);
    assert!(v.ok, "{}", v.report);
    assert_eq!(v.report["report"]["entries"].as_u64(), Some(size));
    // Without pinned keys it still checks, and says the keys came from the pack.
    let v = verify_pack(&full, &[]);
    assert!(v.ok, "{}", v.report);
    assert!(v.report.to_string().contains("TRUST_FROM_PACK"));

    // A pack cut short is refused with a clear code, not a crash.
    let bytes = std::fs::read(&full).unwrap();
    let cut = save(dir.path(), "cut.tar", &bytes[..bytes.len() / 2 + 7]);
    let v = verify_pack(&cut, &keys_arg);
    assert!(!v.ok);
    assert_eq!(v.failure_codes(), ["ARCHIVE_CORRUPT"]);

    // Filtered by agent: only that agent's receipts, still proven members of the log.
    let filtered = gw.audit_pack("agent=agent-b&tool=beta").await;
    let filtered = save(dir.path(), "b.tar", &filtered);
    let v = verify_pack(&filtered, &keys_arg);
    assert!(v.ok, "{}", v.report);
    let n = v.report["report"]["entries"].as_u64().unwrap();
    assert!(n >= 12 && n < size, "{n} of {size}");

    // A range, with a proof from a checkpoint the auditor already holds.
    let ranged = gw.audit_pack("from=3&to=9&since_size=2").await;
    let ranged = save(dir.path(), "range.tar", &ranged);
    let v = verify_pack(
        &ranged,
        &[
            keys_arg[0],
            keys_arg[1],
            "--checkpoint".as_ref(),
            pinned.as_os_str(),
        ],
    );
    assert!(v.ok, "{}", v.report);
    assert_eq!(v.report["report"]["entries"].as_u64(), Some(6));

    // Bad requests get a stable code.
    for (query, status, code) in [
        ("from=5&to=5", 400, "BAD_RANGE"),
        ("to=999999", 400, "BAD_RANGE"),
        ("agent=nobody", 404, "NOTHING_SELECTED"),
        ("colour=red", 400, "BAD_QUERY"),
        ("since=yesterday", 400, "BAD_QUERY"),
    ] {
        let r = gw
            .admin_get(&format!("/v1/audit-pack?{query}"))
            .send()
            .await;
        r.assert_error(status, code);
    }

    // One receipt with its inclusion proof and the checkpoint it refers to.
    let r = gw.get("/tools/alpha/one").api_key(KEY_A).send().await;
    let id = r.header("x-lap-receipt-id").unwrap().to_string();
    let (note, _) = gw.settled_checkpoint().await;
    let receipt = gw.admin_get(&format!("/v1/receipts/{id}")).send().await;
    let index: u64 = receipt.header("x-lap-log-index").unwrap().parse().unwrap();
    let receipt = save(dir.path(), "receipt.json", &receipt.body);
    let cp = save(dir.path(), "latest.cp", note.as_bytes());
    let check_one = |proof: HttpResponse| {
        assert_eq!(proof.status, 200, "{}", proof.text());
        let proof = save(dir.path(), "proof.json", &proof.body);
        run_command(
            Command::new(verify_bin())
                .args(["receipt", "--json", "--trusted-keys"])
                .arg(&trust)
                .arg(&receipt)
                .arg("--proof")
                .arg(&proof)
                .arg("--log-checkpoint")
                .arg(&cp),
            Duration::from_secs(30),
        )
    };
    let path = format!("/v1/log/proof/inclusion?index={index}");
    let out = check_one(gw.admin_get(&path).send().await);
    assert_success(&out, "lap-verify receipt with its inclusion proof");
    let path = format!("/v1/log/proof/inclusion?index={}", index - 1);
    let out = check_one(gw.admin_get(&path).send().await);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("INCLUSION_PROOF_FAILED"));

    // The CLI over the log directory, with the gateway still running, then after it stopped.
    let config = gw.config_path();
    let export = |out: &Path, args: &[&str]| {
        run_command(
            Command::new(gateway_bin())
                .arg("audit-pack")
                .arg("--config")
                .arg(&config)
                .arg("--out")
                .arg(out)
                .args(args)
                .env("LAP_GATEWAY_SIGNING_KEY", TEST_SEED),
            Duration::from_secs(60),
        )
    };
    let cli = dir.path().join("cli.tar");
    let out = export(
        &cli,
        &["--since", "2000-01-01T00:00:00Z", "--tool", "alpha"],
    );
    assert_success(&out, "lap-gateway audit-pack --since --tool");
    let v = verify_pack(&cli, &keys_arg);
    assert!(v.ok, "{}", v.report);
    let out = export(&dir.path().join("x.tar"), &["--from", "4", "--to", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("BAD_RANGE") && stderr.contains("empty"),
        "{stderr}"
    );
    let mut gw = gw;
    gw.kill();
    let cli_all = dir.path().join("cli-all.tar");
    // With a proof from the checkpoint the auditor pinned earlier.
    let out = export(&cli_all, &["--since-size", &size.to_string()]);
    assert_success(&out, "lap-gateway audit-pack --since-size");
    let v = verify_pack(
        &cli_all,
        &[
            keys_arg[0],
            keys_arg[1],
            "--checkpoint".as_ref(),
            pinned.as_os_str(),
        ],
    );
    assert!(v.ok, "{}", v.report);
    let entries = v.report["report"]["entries"].as_u64().unwrap();
    assert!(entries > size, "the later calls are in it");
    assert_eq!(
        Some(entries),
        v.report["report"]["checkpoint_size"].as_u64()
    );

    // check-config inspects the stopped log as start-up would: the checkpoint's signature
    // by the log key, and its root.
    let out = check_config(&config);
    assert_success(&out, "check-config on the stopped log");
    let saved = gw.dir().join("lap-data/log/checkpoint");
    let note = std::fs::read_to_string(&saved).unwrap();
    let forged = note.replacen(
        &format!("\n{entries}\n"),
        &format!("\n{}\n", entries - 1),
        1,
    );
    assert_ne!(forged, note);
    std::fs::write(&saved, forged).unwrap();
    let out = check_config(&config);
    assert_eq!(out.status.code(), Some(1));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("not signed by the log key"), "{printed}");
}

/// Three allowed calls by agent-a to `alpha`.
async fn three_calls(gw: &Gateway) {
    for i in 0..3 {
        get_ok(gw, &format!("/tools/alpha/{i}"), KEY_A).await;
    }
}

/// Rotating the receipt key and restarting: the log keeps its own checkpoint key (made in the
/// log directory), so the gateway restarts on its log, and one pack proves receipts signed by
/// both keys.
#[tokio::test(flavor = "multi_thread")]
async fn restart_after_receipt_key_rotation_and_a_pack_across_it() {
    let up = Upstream::start(Behavior::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let keyset = KeysetFile::new(dir.path());
    for kid in ["k1", "k2"] {
        keyset.add(kid, &keyset.keygen(kid));
    }
    keyset.activate("k1");
    let mut gw = GatewayBuilder::new()
        .tool("alpha", &up.url())
        .keys_file(&keys())
        .policy(POLICY)
        .without_signing_key()
        .env("LAP_GATEWAY_KEYSET_FILE", keyset.path_str())
        .extra_toml("[log]\ncheckpoint_every = 4\ncheckpoint_interval_ms = 50")
        .start()
        .await;
    three_calls(&gw).await;
    keyset.activate("k2");
    let rotated = gw.wait_for_active_kid("k2").await;
    assert!(rotated, "k2 becomes active without a restart");
    three_calls(&gw).await;
    let (_, before_restart) = gw.settled_checkpoint().await;
    assert!(
        gw.restart().await,
        "restart on the rotated keyset:\n{}",
        gw.log_text()
    );
    // The saved checkpoint is reported at once, before any new traffic (a tail logged after it
    // before the restart may already have its own checkpoint by now: at least as large).
    let reported = gw
        .metric("lap_log_checkpoint_size", &[])
        .await
        .unwrap_or(0.0);
    assert!(
        reported >= before_restart as f64,
        "{reported} < {before_restart}"
    );
    three_calls(&gw).await;
    gw.settled_checkpoint().await;

    let trust = save(dir.path(), "keys.json", &gw.trust_doc().await);
    let bytes = gw.audit_pack("").await;
    let pack = save(dir.path(), "pack.tar", &bytes);
    let v = verify_pack(&pack, &["--trusted-keys".as_ref(), trust.as_os_str()]);
    assert!(v.ok, "{}", v.report);
    // Batched receipts (the default) name the key behind their batch, and the pack carries
    // each batch's checkpoint with that key's signature line.
    let text = String::from_utf8_lossy(&bytes);
    for kid in ["k1", "k2"] {
        assert!(
            text.contains(&format!(r#""signer":{{"key_id":"{kid}""#)),
            "{kid}"
        );
        assert!(text.contains(&format!("/receipt-key/{kid} ")), "{kid}");
    }
    // The checkpoint key is the log's own, not a receipt key.
    let log_key = gw.dir().join("lap-data/log/log.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log_key).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "log.key is private");
}
