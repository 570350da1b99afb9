//! The admin plane with authentication and roles, end to end with the real binary: tokens
//! minted by `lap-gateway admin-token`, every refusal code, the role hierarchy, the tokens file
//! hot-reloaded (a broken edit keeps the last good one), mutating admin requests written to the
//! log as `admin` receipts before they act (allowed and refused), those receipts verified
//! offline by `lap-verify` in an audit pack, no token in logs or receipts, and the start-up
//! rules (no authentication → refused).

use lap_e2e::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const KEYS: &str = r#"{"keys": [
  {"id": "k-a", "hash": "sha256:b5ae3c2e6e29fb1ea1f1ebfbcb8d2fef6ea8e7c65b2a09ab2e2b0a5fbf9b1c61", "agent_id": "agent-a", "groups": ["g1"], "expires_at": "2099-01-01T00:00:00Z"},
  {"id": "k-legacy-off", "hash": "sha256:0000000000000000000000000000000000000000000000000000000000000000", "agent_id": "agent-b", "disabled": true}
]}"#;

/// A token minted by the real CLI: (token, file entry).
fn mint(role: &str, id: &str) -> (String, Value) {
    let out = run_command(
        std::process::Command::new(gateway_bin()).args(["admin-token", "--role", role, "--id", id]),
        Duration::from_secs(30),
    );
    assert_success(&out, "lap-gateway admin-token");
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("token line")
        .to_string();
    let entry: Value = serde_json::from_str(
        text.lines()
            .find_map(|l| l.strip_prefix("entry: "))
            .expect("entry line"),
    )
    .unwrap();
    assert!(token.starts_with("lapadm_"), "{token}");
    assert_eq!(entry["role"], role);
    assert_eq!(entry["id"], id);
    assert!(!entry.to_string().contains(&token));
    (token, entry)
}

/// Writes the tokens file atomically (a rename), as an operator's tooling would.
fn write_tokens(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn tokens_file(entries: &[&Value]) -> String {
    serde_json::json!({"version": 1, "tokens": entries}).to_string()
}

fn admin(gw: &Gateway, method: &str, target: &str, token: Option<&str>) -> Request {
    let r = Request::new(gw.admin, method, target);
    match token {
        Some(t) => r.bearer(t),
        None => r,
    }
}

/// Every `admin` receipt in the log, read by an auditor.
async fn admin_receipts(gw: &Gateway, auditor: &str) -> Vec<Value> {
    let r = admin(gw, "GET", "/readyz", Some(auditor)).send().await;
    let size = r.json()["log_size"].as_u64().expect("log_size");
    let mut out = Vec::new();
    for i in 0..size {
        let e = admin(gw, "GET", &format!("/v1/log/entries/{i}"), Some(auditor))
            .send()
            .await;
        assert_eq!(e.status, 200, "{}", e.text());
        let receipt = receipt_payload(e.text().as_bytes());
        if receipt["kind"] == "admin" {
            out.push(receipt);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_refusals_reload_and_admin_receipts() {
    let up = Upstream::start(Behavior::Echo).await;
    let tokens_dir = tempfile::tempdir().unwrap();
    let tokens = tokens_dir.path().join("admin-tokens.json");
    let (viewer, viewer_e) = mint("viewer", "watch-1");
    let (auditor, auditor_e) = mint("auditor", "audit-1");
    let (operator, operator_e) = mint("operator", "ops-1");
    let (root, root_e) = mint("admin", "root-1");
    write_tokens(
        &tokens,
        &tokens_file(&[&viewer_e, &auditor_e, &operator_e, &root_e]),
    );
    // Sessions need an agent: the legacy key map is simplest for the data plane.
    let gw = GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(r#"{"key-a": "agent-a"}"#)
        .policy("permit(principal, action, resource);")
        .admin_toml(&format!("tokens_file = \"{}\"", tokens.display()))
        .extra_toml("[log]\ncheckpoint_every = 1\ncheckpoint_interval_ms = 20")
        .start()
        .await;

    // Probes are open by default; everything else needs a token.
    assert_eq!(admin(&gw, "GET", "/healthz", None).send().await.status, 200);
    let r = admin(&gw, "GET", "/metrics", None).send().await;
    r.assert_error(401, "ADMIN_AUTH_REQUIRED");
    assert!(r
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Bearer")));
    let r = admin(&gw, "GET", "/metrics", Some("lapadm_not-a-token"))
        .send()
        .await;
    r.assert_error(401, "ADMIN_TOKEN_INVALID");
    assert!(r
        .header("www-authenticate")
        .is_some_and(|h| h.contains("invalid_token")));
    admin(&gw, "GET", "/v1/log/checkpoint", None)
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .assert_error(401, "ADMIN_TOKEN_INVALID");

    // The hierarchy: viewer < auditor < operator < admin.
    assert_eq!(
        admin(&gw, "GET", "/metrics", Some(&viewer))
            .send()
            .await
            .status,
        200
    );
    let r = admin(&gw, "GET", "/v1/audit-pack", Some(&viewer))
        .send()
        .await;
    r.assert_error(403, "ADMIN_ROLE_INSUFFICIENT");
    assert_eq!(r.json()["error"]["required_role"], "auditor");
    admin(&gw, "GET", "/v1/api-keys", Some(&operator))
        .send()
        .await
        .assert_error(403, "ADMIN_ROLE_INSUFFICIENT");
    let r = admin(&gw, "GET", "/v1/api-keys", Some(&root)).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["keys"][0]["agent_id"], "agent-a");
    assert!(!r.text().contains("hash"), "{}", r.text());

    // Mutating attempts with the wrong role or no token: refused, and evidence.
    let r = admin(&gw, "POST", "/v1/reload", Some(&auditor))
        .send()
        .await;
    r.assert_error(403, "ADMIN_ROLE_INSUFFICIENT");
    assert_eq!(r.json()["error"]["required_role"], "operator");
    let r = gw
        .post("/v1/session/new")
        .api_key("key-a")
        .json(r#"{"ttl_seconds": 600}"#)
        .send()
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let sid = r.json()["session_id"].as_str().unwrap().to_string();
    admin(&gw, "POST", &format!("/v1/sessions/{sid}/revoke"), None)
        .send()
        .await
        .assert_error(401, "ADMIN_AUTH_REQUIRED");

    // An operator revokes the live session and reloads.
    let r = admin(
        &gw,
        "POST",
        &format!("/v1/sessions/{sid}/revoke"),
        Some(&operator),
    )
    .send()
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let digest = r.json()["session"].as_str().unwrap().to_string();
    let r = admin(&gw, "POST", "/v1/reload", Some(&operator))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let files: Vec<_> = r.json()["reloaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(files, ["api_keys", "policy", "admin_tokens"]);
    // The wrong method on a mutating route: refused, and evidence too.
    admin(&gw, "GET", "/v1/reload", Some(&operator))
        .send()
        .await
        .assert_error(405, "METHOD_NOT_ALLOWED");

    // The admin receipts: two refusals, then the revocation and the reload, in order.
    let receipts = admin_receipts(&gw, &auditor).await;
    let summary: Vec<(String, String, String, Value)> = receipts
        .iter()
        .map(|r| {
            (
                r["call"]["path"].as_str().unwrap().to_string(),
                r["decision"]["code"].as_str().unwrap().to_string(),
                r["decision"]["outcome"].as_str().unwrap().to_string(),
                r["principal"]["key_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "/v1/reload".into(),
                "ADMIN_ROLE_INSUFFICIENT".into(),
                "deny".into(),
                Value::from("audit-1")
            ),
            (
                "/v1/sessions/{id}/revoke".into(),
                "ADMIN_AUTH_REQUIRED".into(),
                "deny".into(),
                Value::Null
            ),
            (
                "/v1/sessions/{id}/revoke".into(),
                "ALLOWED".into(),
                "allow".into(),
                Value::from("ops-1")
            ),
            (
                "/v1/reload".into(),
                "ALLOWED".into(),
                "allow".into(),
                Value::from("ops-1")
            ),
            (
                "/v1/reload".into(),
                "METHOD_NOT_ALLOWED".into(),
                "deny".into(),
                Value::from("ops-1")
            ),
        ],
        "{receipts:#?}"
    );
    assert!(receipts[1]["principal"].is_null());
    assert_eq!(receipts[1]["call"]["session"], digest.as_str());
    assert_eq!(receipts[2]["principal"]["auth"], "admin_token");
    assert_eq!(receipts[2]["call"]["session"], digest.as_str());
    assert!(receipts[2]["call"]["tool"].is_null());

    // An auditor exports the pack holding them, and lap-verify verifies it offline.
    let pack = admin(&gw, "GET", "/v1/audit-pack", Some(&auditor))
        .send()
        .await;
    assert_eq!(pack.status, 200, "{}", pack.text());
    let dir = tempfile::tempdir().unwrap();
    let trust = save(dir.path(), "keys.json", &gw.trust_doc().await);
    let pack_path = save(dir.path(), "pack.tar", &pack.body);
    let v = verify_pack(
        &pack_path,
        &[std::ffi::OsStr::new("--trusted-keys"), trust.as_os_str()],
    );
    assert!(v.ok, "{}", v.report);

    // Refusals are counted by code.
    let metrics = admin(&gw, "GET", "/metrics", Some(&viewer))
        .send()
        .await
        .text();
    assert_eq!(
        metric_value(
            &metrics,
            "lap_admin_refusals_total",
            &[("code", "ADMIN_ROLE_INSUFFICIENT")]
        ),
        Some(3.0)
    );

    // The tokens file, edited: a new token works without a restart…
    let (late, late_e) = mint("auditor", "audit-2");
    write_tokens(
        &tokens,
        &tokens_file(&[&viewer_e, &auditor_e, &operator_e, &root_e, &late_e]),
    );
    let works = wait_for(Duration::from_secs(10), || async {
        let r = admin(&gw, "GET", "/v1/log/checkpoint", Some(&late))
            .send()
            .await;
        (r.status == 200).then_some(())
    })
    .await;
    assert!(works.is_some(), "the new token was never accepted");
    // …and a broken edit keeps the last good file in force.
    write_tokens(&tokens, r#"{"version": 1, "tokens": [{"id": "x"#);
    let rejected = wait_for(Duration::from_secs(10), || async {
        let m = admin(&gw, "GET", "/metrics", Some(&late))
            .send()
            .await
            .text();
        let n = metric_value(
            &m,
            "lap_reload_total",
            &[("file", "admin_tokens"), ("result", "error")],
        );
        n.filter(|n| *n >= 1.0)
    })
    .await;
    assert!(
        rejected.is_some(),
        "the broken tokens file was not rejected"
    );
    assert_eq!(
        admin(&gw, "GET", "/v1/log/checkpoint", Some(&late))
            .send()
            .await
            .status,
        200
    );
    // A reload asked for now says which file failed, and changes nothing.
    let r = admin(&gw, "POST", "/v1/reload", Some(&operator))
        .send()
        .await;
    r.assert_error(422, "RELOAD_FAILED");

    // No token, and no session id, in the gateway's log or in any receipt.
    let log = gw.log_text();
    let mut entries = String::new();
    let size = admin(&gw, "GET", "/readyz", None).send().await.json()["log_size"]
        .as_u64()
        .unwrap();
    for i in 0..size {
        entries.push_str(
            &admin(&gw, "GET", &format!("/v1/log/entries/{i}"), Some(&auditor))
                .send()
                .await
                .text(),
        );
    }
    for secret in [&viewer, &auditor, &operator, &root, &late, &sid] {
        assert!(!log.contains(secret.as_str()), "a secret in the log");
        assert!(!entries.contains(secret.as_str()), "a secret in a receipt");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_plane_without_authentication_refuses_to_start() {
    // Loopback, but nothing said: refused.
    let mut gw = GatewayBuilder::new().admin_toml("").spawn();
    let status = gw.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{}", gw.log_text());
    let log = gw.log_text();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("allow_unauthenticated_loopback"), "{log}");

    // Explicitly unauthenticated, but on an address other hosts can reach: refused before
    // anything listens.
    let mut gw = GatewayBuilder::new()
        .env("LAP_ADMIN_LISTEN", "0.0.0.0:1")
        .spawn();
    let status = gw.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{}", gw.log_text());
    let log = gw.log_text();
    assert!(log.contains("is not a loopback address"), "{log}");

    // check-config says the same.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys.json"), KEYS).unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(&cfg, "[auth]\napi_keys_file = \"keys.json\"\n").unwrap();
    let out = check_config(&cfg);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no authentication"));
    // And validates the tokens file.
    std::fs::write(
        &cfg,
        "[admin]\ntokens_file = \"admin.json\"\n[auth]\napi_keys_file = \"keys.json\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("admin.json"),
        r#"{"version": 1, "tokens": [{"id": "a", "hash": "sha256:00", "role": "admin"}]}"#,
    )
    .unwrap();
    let out = check_config(&cfg);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin tokens"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, entry) = mint("viewer", "probe");
    std::fs::write(dir.path().join("admin.json"), tokens_file(&[&entry])).unwrap();
    let out = check_config(&cfg);
    assert_success(&out, "check-config with a tokens file");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 admin token(s)"));
}

/// No evidence, no action: with a receipt signer that always fails, a reload by an operator is
/// refused with the signer's code (503) and nothing is reloaded; a revocation is refused before
/// the store is asked (503, not 404 for the unknown session).
#[tokio::test(flavor = "multi_thread")]
async fn without_an_admin_receipt_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (operator, operator_e) = mint("operator", "ops-1");
    let tokens = dir.path().join("admin-tokens.json");
    write_tokens(&tokens, &tokens_file(&[&operator_e]));
    let seed = dir.path().join("signer.seed");
    write_private(&seed, TEST_SEED);
    let log_seed = dir.path().join("log.seed");
    write_private(&log_seed, &"42".repeat(32));
    let out = lap_signer(&["pubkey", "--key-file", seed.to_str().unwrap()]);
    let keyset = serde_json::json!({
        "active_kid": "ext",
        "keys": {"ext": {"signing_cmd": "sh -c 'cat >/dev/null; exit 1'",
                          "public_key_hex": String::from_utf8_lossy(&out.stdout).trim(),
                          "timeout_seconds": 0.5}}
    });
    let keyset_file = dir.path().join("keyset.json");
    write_private(&keyset_file, &keyset.to_string());
    let gw = GatewayBuilder::new()
        .policy("permit(principal, action, resource);")
        .without_signing_key()
        .env("LAP_GATEWAY_KEYSET_FILE", keyset_file.to_str().unwrap())
        .env("LAP_LOG_SIGNING_KEY_FILE", log_seed.to_str().unwrap())
        .env("LAP_EVIDENCE_MODE", "per_receipt")
        // Only an explicit reload re-reads the policy here.
        .reload_interval_ms(3_600_000)
        .admin_toml(&format!("tokens_file = \"{}\"", tokens.display()))
        .start()
        .await;
    let digest = || async {
        let r = admin(&gw, "GET", "/readyz", None).send().await;
        (
            r.json()["policies"].as_u64(),
            r.json()["policy_digest"].to_string(),
        )
    };
    let before = digest().await;
    std::fs::write(
        gw.dir().join("policy.cedar"),
        "permit(principal, action, resource);\nforbid(principal, action, resource);\n",
    )
    .unwrap();
    admin(&gw, "POST", "/v1/reload", Some(&operator))
        .send()
        .await
        .assert_error(503, "SIGNER_EXIT_NONZERO");
    assert_eq!(digest().await, before, "the policy must not be reloaded");
    admin(
        &gw,
        "POST",
        "/v1/sessions/sess_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/revoke",
        Some(&operator),
    )
    .send()
    .await
    .assert_error(503, "SIGNER_EXIT_NONZERO");
}
