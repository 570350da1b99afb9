//! End-to-end tests of the real `lap-gateway` binary against real upstream servers.

use lap_e2e::*;
use std::time::Duration;

const KEY_A: &str = "key-agent-a-0123456789";
const KEY_B: &str = "key-agent-b-0123456789";
const TOOL_TOKEN: &str = "tool-secret-token-42";

fn keys_rich(extra: &str) -> String {
    format!(
        r#"{{"version": 1, "keys": [
            {{"id": "a", "hash": "{}", "agent_id": "agent-a", "groups": ["readers", "writers"]}},
            {{"id": "b", "hash": "{}", "agent_id": "agent-b", "groups": ["readers"]}}{extra}
        ]}}"#,
        key_hash(KEY_A),
        key_hash(KEY_B)
    )
}

const POLICY: &str = r#"
@id("readers-read")
permit(principal in Group::"readers", action in Action::"read", resource == Tool::"echo");
@id("writers-write")
permit(principal in Group::"writers", action in Action::"write", resource == Tool::"echo");
@id("no-admin")
forbid(principal, action, resource) when { context.path like "/admin*" };
"#;

/// The `echo` tool (the upstream's root), both agents, [`POLICY`].
fn echo_gateway(up: &Upstream) -> GatewayBuilder {
    GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(&keys_rich(""))
        .policy(POLICY)
}

/// The `echo` tool at the upstream's `/base`, with [`TOOL_TOKEN`] injected as its bearer
/// credential; both agents, [`POLICY`].
fn echo_gateway_with_credential(up: &Upstream) -> GatewayBuilder {
    GatewayBuilder::new()
        .tool_toml(
            "echo",
            &format!("{}/base", up.url()),
            "[tools.echo.credential]\nheader = \"Authorization\"\nvalue_env = \"ECHO_TOKEN\"\nprefix = \"Bearer \"",
        )
        .env("ECHO_TOKEN", TOOL_TOKEN)
        .keys_file(&keys_rich(""))
        .policy(POLICY)
}

async fn gateway_with(up: &Upstream) -> Gateway {
    echo_gateway_with_credential(up).start().await
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_call_reaches_upstream_with_injected_credential() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway_with(&up).await;
    let body = br#"{"q": "weather", "n": 3}"#;
    let r = gw
        .post("/tools/echo/a/b?x=1&y=2")
        .api_key(KEY_A)
        .json(body)
        .header("X-Agent-Id", "agent-a")
        .header("X-Lap-Agent-Id", "someone-else")
        .header("Cookie", "session=agent-cookie")
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-lap-decision-policies"), Some("writers-write"));
    assert!(r.header("x-request-id").is_some());
    assert!(r.header("x-lap-receipt-id").is_some());
    assert!(r.header("x-lap-log-index").is_some());
    // Batched evidence (the default): the entry and its proof, base64.
    let (entry, proof) = batched_receipt(&r).expect("the receipt and its proof");
    assert_eq!(receipt_payload(&entry)["kind"], "decision");
    assert!(proof.contains("\nindex "), "{proof}");
    let seen = up.last().expect("upstream saw the call");
    assert_eq!(up.hits(), 1);
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/base/a/b?x=1&y=2");
    assert_eq!(seen.body, body);
    // The tool's answer comes back unchanged.
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["body_sha256"], sha256_hex(body));
    assert_eq!(r.json()["target"], "/base/a/b?x=1&y=2");
    assert_eq!(
        seen.header("authorization"),
        Some(&*format!("Bearer {TOOL_TOKEN}"))
    );
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(seen.header("x-agent-id"), None);
    assert_eq!(seen.header("cookie"), None);
    assert_eq!(seen.header("x-lap-agent-id"), Some("agent-a"));
    assert_eq!(seen.header("x-request-id"), r.header("x-request-id"));
    // Bearer form works too, for a GET.
    let r = gw.get("/tools/echo").bearer(KEY_B).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last().expect("second call");
    assert_eq!(seen.target, "/base/");
    assert_eq!(seen.header("x-lap-agent-id"), Some("agent-b"));
    assert_eq!(
        seen.header("authorization"),
        Some(&*format!("Bearer {TOOL_TOKEN}"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credential_from_file_and_legacy_key_map() {
    let up = Upstream::start(Behavior::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    write_private(&token, "file-token\n");
    let gw = GatewayBuilder::new()
        .tool_toml(
            "echo",
            &up.url(),
            &format!(
                "[tools.echo.credential]\nheader = \"X-Tool-Key\"\nvalue_file = \"{}\"",
                token.display()
            ),
        )
        .keys_file(r#"{"legacy-plain-key": "legacy-agent"}"#)
        .policy(r#"permit(principal == Agent::"legacy-agent", action, resource);"#)
        .start()
        .await;
    let r = gw
        .get("/tools/echo/x")
        .api_key("legacy-plain-key")
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-tool-key"), Some("file-token"));
    assert_eq!(seen.header("x-lap-agent-id"), Some("legacy-agent"));
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_calls_never_reach_the_upstream() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway_with(&up).await;
    // agent-b is only a reader: POST has no permit.
    let r = gw
        .post("/tools/echo/x")
        .api_key(KEY_B)
        .body(b"{}")
        .send()
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code().as_deref(), Some("POLICY_NO_PERMIT"));
    assert!(
        r.header("x-lap-receipt-id").is_some(),
        "denials get a receipt"
    );
    // forbid wins over a permit.
    let r = gw
        .get("/tools/echo/admin/users")
        .api_key(KEY_A)
        .send()
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code().as_deref(), Some("POLICY_FORBIDDEN"));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no-admin"));
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_errors_and_health() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway_with(&up).await;
    let r = gw.get("/tools/nope/x").api_key(KEY_A).send().await;
    r.assert_error(404, "TOOL_NOT_FOUND");
    let r = gw.get("/elsewhere").send().await;
    r.assert_error(404, "ROUTE_NOT_FOUND");
    // The route is checked before the method.
    gw.request("TRACE", "/elsewhere")
        .send()
        .await
        .assert_error(404, "ROUTE_NOT_FOUND");
    let r = gw
        .request("TRACE", "/tools/echo/x")
        .api_key(KEY_A)
        .send()
        .await;
    r.assert_error(405, "METHOD_NOT_ALLOWED");
    let r = gw.get("/v1/health").send().await;
    assert_eq!(r.status, 200);
    let h = r.json();
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["crypto_available"], true);
    assert_eq!(h["signing"]["ephemeral"], false);
    assert_eq!(h["signing"]["source"], "signing_key");
    assert_eq!(h["signing"]["key_id"], "gateway");
    assert_eq!(h["gateway_id"], "lap-gateway");
    assert!(r.header("x-request-id").is_some());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let keys = gw.get("/v1/keys").send().await.json();
    assert_eq!(keys["active_kid"], "gateway");
    assert_eq!(
        keys["keys"][0]["public_key_hex"].as_str().unwrap().len(),
        64
    );
    for p in [
        "/tools/echo/../x",
        "/tools/echo/%2e%2e/x",
        "/tools/echo/a%2Fb",
        "/tools/echo/a//b",
    ] {
        let r = gw.get(p).api_key(KEY_A).send().await;
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (400, Some("PATH_INVALID")),
            "{p}"
        );
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_failures() {
    let up = Upstream::start(Behavior::Echo).await;
    let extra = format!(
        r#", {{"id": "old", "hash": "{}", "agent_id": "agent-c", "groups": ["readers"], "expires_at": "2020-01-01T00:00:00Z"}},
           {{"id": "off", "hash": "{}", "agent_id": "agent-d", "groups": ["readers"], "disabled": true}}"#,
        key_hash("expired-key"),
        key_hash("disabled-key")
    );
    let gw = echo_gateway(&up)
        .keys_file(&keys_rich(&extra))
        .start()
        .await;
    let cases: [(&[(&str, &str)], &str); 7] = [
        (&[], "API_KEY_REQUIRED"),
        (&[("X-Api-Key", "wrong")], "API_KEY_INVALID"),
        (
            &[("Authorization", "Basic Zm9vOmJhcg==")],
            "API_KEY_INVALID",
        ),
        (&[("X-Api-Key", "expired-key")], "API_KEY_EXPIRED"),
        (&[("X-Api-Key", "disabled-key")], "API_KEY_DISABLED"),
        (
            &[("X-Api-Key", KEY_A), ("X-Agent-Id", "agent-b")],
            "AGENT_ID_MISMATCH",
        ),
        (
            &[("X-Api-Key", KEY_A), ("Authorization", "Bearer x")],
            "API_KEY_INVALID",
        ),
    ];
    for (headers, code) in cases {
        let r = gw.get("/tools/echo/x").headers(headers).send().await;
        assert_eq!(r.status, 401, "{code}");
        assert_eq!(r.error_code().as_deref(), Some(code));
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    assert_eq!(up.hits(), 0);
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "lap_auth_failures_total",
            &[("code", "API_KEY_INVALID")]
        ),
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn body_caps_hold_for_chunked_bodies() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = echo_gateway(&up)
        .limits_toml("max_request_bytes = 1000")
        .start()
        .await;
    // Chunked, 5 × 1000 bytes over a 1000-byte cap.
    let post = || gw.post("/tools/echo/x").api_key(KEY_A);
    let r = post().chunked(&[b'a'; 5000], 1000).send().await;
    r.assert_error(413, "REQUEST_TOO_LARGE");
    // Declared too large.
    let r = post().body([b'b'; 1001]).send().await;
    r.assert_error(413, "REQUEST_TOO_LARGE");
    assert_eq!(up.hits(), 0, "an over-cap request never reaches the tool");
    // Under the cap, chunked: forwarded intact.
    let r = post().chunked(&[b'c'; 900], 300).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().unwrap().body, vec![b'c'; 900]);
}

#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_are_forwarded_byte_for_byte() {
    // Bodies above 64 KiB exercise the patched pingora-proxy path.
    let up = Upstream::start(Behavior::Echo).await;
    let gw = echo_gateway(&up)
        .limits_toml("max_request_bytes = 1048576")
        .start()
        .await;
    let body: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let r = gw
        .request("PUT", "/tools/echo/blob")
        .api_key(KEY_A)
        .body(&body)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().unwrap().body, body);
    // Uneven chunk sizes, and a pattern that shows any reordering or loss.
    let body: Vec<u8> = (0..300_001u32).map(|i| (i % 253) as u8).collect();
    let r = gw
        .request("PUT", "/tools/echo/blob")
        .api_key(KEY_A)
        .chunked(&body, 7_777)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last().unwrap();
    assert!(
        seen.body == body,
        "chunked body altered ({} bytes seen)",
        seen.body.len()
    );
    assert_eq!(seen.header("content-length"), Some("300001"));
    assert_eq!(seen.header("transfer-encoding"), None);
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn key_file_hot_reload_and_broken_file() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway_with(&up).await;
    let call = |key: &str| gw.get("/tools/echo/x").api_key(key).send();
    assert_eq!(
        call("new-key-777").await.error_code().as_deref(),
        Some("API_KEY_INVALID")
    );
    // Add a key.
    let extra = format!(
        r#", {{"id": "n", "hash": "{}", "agent_id": "agent-n", "groups": ["readers"]}}"#,
        key_hash("new-key-777")
    );
    gw.write_keys(&keys_rich(&extra));
    assert!(
        wait_until(Duration::from_secs(5), || async {
            call("new-key-777").await.status == 200
        })
        .await
    );
    // Disable it.
    let extra = format!(
        r#", {{"id": "n", "hash": "{}", "agent_id": "agent-n", "groups": ["readers"], "disabled": true}}"#,
        key_hash("new-key-777")
    );
    gw.write_keys(&keys_rich(&extra));
    assert!(
        wait_until(Duration::from_secs(5), || async {
            call("new-key-777").await.error_code().as_deref() == Some("API_KEY_DISABLED")
        })
        .await
    );
    // Delete it (written in place, not renamed), with a SIGHUP as well.
    std::fs::write(gw.keys_path(), keys_rich("")).unwrap();
    gw.sighup();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            call("new-key-777").await.error_code().as_deref() == Some("API_KEY_INVALID")
        })
        .await
    );
    // A broken file is rejected; the last good set stays.
    gw.write_keys("{ this is not json");
    let api_keys_errors = [("file", "api_keys"), ("result", "error")];
    assert!(
        gw.wait_for_metric("lap_reload_total", &api_keys_errors, 1.0)
            .await
    );
    assert_eq!(call(KEY_A).await.status, 200);
    assert!(gw.wait_for_log("API key file rejected").await);
    // Valid JSON with an invalid agent id is rejected whole as well.
    gw.write_keys(&format!(
        r#"{{"version": 1, "keys": [{{"id": "x", "hash": "{}", "agent_id": "bad agent!"}}]}}"#,
        key_hash(KEY_A)
    ));
    assert!(
        gw.wait_for_metric("lap_reload_total", &api_keys_errors, 2.0)
            .await
    );
    let r = call(KEY_A).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-lap-agent-id"], "agent-a");
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_hot_reload_and_broken_policy() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway_with(&up).await;
    let post = || gw.post("/tools/echo/x").api_key(KEY_B).body(b"x").send();
    assert_eq!(post().await.status, 403);
    gw.write_policy(&format!(
        "{POLICY}\n@id(\"b-writes\") permit(principal == Agent::\"agent-b\", action, resource);"
    ));
    assert!(
        wait_until(Duration::from_secs(5), || async {
            post().await.status == 200
        })
        .await
    );
    let r = post().await;
    assert_eq!(r.header("x-lap-decision-policies"), Some("b-writes"));
    gw.write_policy("permit(principal, action, resource) when { nonsense");
    assert!(
        gw.wait_for_metric(
            "lap_reload_total",
            &[("file", "policy"), ("result", "error")],
            1.0
        )
        .await
    );
    assert_eq!(
        post().await.status,
        200,
        "the last good policy stays in force"
    );
    // A policy file truncated to nothing (a write caught half-way) is refused like a broken
    // one, rather than taken as "no policies": the last good policy still decides.
    gw.write_policy("\n");
    assert!(
        gw.wait_for_metric(
            "lap_reload_total",
            &[("file", "policy"), ("result", "error")],
            2.0
        )
        .await
    );
    assert!(gw.wait_for_log("policy.cedar is empty").await);
    assert_eq!(post().await.status, 200, "an empty file changes nothing");
    // "No policies" on purpose is a comment-only file: every call is denied.
    gw.write_policy("// no policies: every call is denied\n");
    assert!(
        wait_until(Duration::from_secs(5), || async {
            post().await.status == 403
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_and_slow() {
    let slow = Upstream::start(Behavior::Delay(Duration::from_secs(3))).await;
    let closed = free_port();
    let gw = GatewayBuilder::new()
        .tool("down", &format!("http://127.0.0.1:{closed}"))
        .tool_toml("slow", &slow.url(), "read_timeout_ms = 300")
        .keys_file(&keys_rich(""))
        .policy("permit(principal, action, resource);")
        .start()
        .await;
    let r = gw.get("/tools/down/x").api_key(KEY_A).send().await;
    r.assert_error(502, "UPSTREAM_UNAVAILABLE");
    let started = std::time::Instant::now();
    let r = gw.get("/tools/slow/x").api_key(KEY_A).send().await;
    r.assert_error(504, "UPSTREAM_TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        r.header("x-lap-receipt-id").is_some(),
        "the decision receipt id is returned"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_reflect_calls() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway_with(&up).await;
    for _ in 0..3 {
        assert_eq!(
            gw.get("/tools/echo/x").api_key(KEY_A).send().await.status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(
            gw.request("DELETE", "/tools/echo/x")
                .api_key(KEY_B)
                .send()
                .await
                .status,
            403
        );
    }
    for key in ["bad-key-1", "bad-key-2"] {
        gw.get("/tools/echo/x")
            .api_key(key)
            .send()
            .await
            .assert_error(401, "API_KEY_INVALID");
    }
    gw.get("/tools/nope/x")
        .api_key(KEY_A)
        .send()
        .await
        .assert_error(404, "TOOL_NOT_FOUND");
    // The 8 agent requests above (the admin plane's readiness probes are `local`).
    let agent_requests = |m: &str| {
        metric_sum(m, "lap_requests_total", &[("decision", "allow")])
            + metric_sum(m, "lap_requests_total", &[("decision", "deny")])
    };
    let m = gw
        .settled_metrics("all 8 agent requests counted", |m| agent_requests(m) == 8.0)
        .await;
    let v = |labels: &[(&str, &str)]| metric_value(&m, "lap_requests_total", labels);
    assert_eq!(
        v(&[("tool", "echo"), ("decision", "allow"), ("status", "200")]),
        Some(3.0)
    );
    assert_eq!(v(&[("tool", "-"), ("status", "404")]), Some(1.0), "{m}");
    assert_eq!(v(&[("status", "401")]), Some(2.0), "{m}");
    assert_eq!(
        metric_value(
            &m,
            "lap_auth_failures_total",
            &[("code", "API_KEY_INVALID")]
        ),
        Some(2.0)
    );
    assert_eq!(metric_value(&m, "lap_api_keys_loaded", &[]), Some(2.0));
    assert_eq!(metric_value(&m, "lap_policies_loaded", &[]), Some(3.0));
    assert_eq!(
        metric_value(
            &m,
            "lap_upstream_duration_seconds_count",
            &[("tool", "echo")]
        ),
        Some(3.0),
        "only forwarded calls reach the upstream histogram"
    );
    assert_eq!(
        v(&[("tool", "echo"), ("decision", "deny"), ("status", "403")]),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            &m,
            "lap_policy_decisions_total",
            &[("tool", "echo"), ("outcome", "POLICY_NO_PERMIT")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            &m,
            "lap_receipts_total",
            &[("kind", "decision"), ("result", "ok")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric_value(
            &m,
            "lap_receipts_total",
            &[("kind", "denial"), ("result", "ok")]
        ),
        Some(5.0),
        "every refusal (2 policy, 2 authentication, 1 routing) gets a denial receipt"
    );
    assert!(m.contains("lap_request_duration_seconds_bucket"));
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_key_is_required_unless_ephemeral_is_allowed() {
    let mut refused = GatewayBuilder::new()
        .keys_file(&keys_rich(""))
        .without_signing_key()
        .spawn();
    let status = refused
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the gateway must refuse to start");
    assert!(!status.success());
    let log = refused.log_text();
    assert!(log.contains("LAP_ALLOW_EPHEMERAL_SIGNING_KEYS"), "{log}");

    let gw = GatewayBuilder::new()
        .keys_file(&keys_rich(""))
        .without_signing_key()
        .env("LAP_ALLOW_EPHEMERAL_SIGNING_KEYS", "1")
        .start()
        .await;
    let h = gw.get("/v1/health").send().await.json();
    assert_eq!(h["signing"]["ephemeral"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_reports_errors_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(dir.path().join("keys.json"), keys_rich("")).unwrap();
    std::fs::write(dir.path().join("policy.cedar"), POLICY).unwrap();
    std::fs::write(
        &cfg,
        "[admin]\nallow_unauthenticated_loopback = true\n[auth]\napi_keys_file = \"keys.json\"\n[policy]\nfile = \"policy.cedar\"\n[tools.echo]\nupstream = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let out = check_config(&cfg);
    assert_success(&out, "check-config");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok:"));
    // From the configuration's directory, named without one: the log directory is relative to
    // the working directory, which exists.
    let out = run_command(
        std::process::Command::new(gateway_bin())
            .args(["check-config", "--config", "gw.toml"])
            .current_dir(dir.path())
            .env("LAP_GATEWAY_SIGNING_KEY", TEST_SEED),
        Duration::from_secs(60),
    );
    assert_success(&out, "check-config --config gw.toml in its directory");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("receipt log lap-data/log will be created"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::write(
        dir.path().join("policy.cedar"),
        "permit(principal, action, resource);\nforbid(principal, action resource);",
    )
    .unwrap();
    let out = check_config(&cfg);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
    std::fs::write(&cfg, "[server]\nlisten = 42\n").unwrap();
    let out = check_config(&cfg);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn json_arguments_are_strict_and_drive_policy() {
    let up = Upstream::start(Behavior::Echo).await;
    let schema = r#"
entity Group; entity Agent in [Group]; entity Tool;
type Args = { amount?: Long };
type Call = { path: String, query: String, body_size: Long, args?: Args };
action "read", "write";
action "GET", "HEAD", "OPTIONS" in ["read"] appliesTo { principal: [Agent], resource: [Tool], context: Call };
action "POST", "PUT", "PATCH", "DELETE" in ["write"] appliesTo { principal: [Agent], resource: [Tool], context: Call };
"#;
    let gw = GatewayBuilder::new()
        .tool("pay", &up.url())
        .keys_file(&keys_rich(""))
        .schema(schema)
        .policy(r#"@id("small") permit(principal, action == Action::"POST", resource) when { context has args && context.args has amount && context.args.amount <= 100 };"#)
        .start()
        .await;
    let post = |body: &[u8]| gw.post("/tools/pay/send").api_key(KEY_A).json(body).send();
    let small = br#"{ "amount" : 50,  "memo": "lunch" }"#;
    let r = post(small).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-lap-decision-policies"), Some("small"));
    assert_eq!(up.last().unwrap().body, small, "forwarded byte for byte");
    post(br#"{"amount": 500}"#)
        .await
        .assert_error(403, "POLICY_NO_PERMIT");
    let r = post(br#"{"amount": 50, "amount": 500}"#).await;
    r.assert_error(400, "JSON_DUPLICATE_KEY");
    let r = post(b"{not json").await;
    r.assert_error(400, "INVALID_JSON_BODY");
    let deep = format!("{}1{}", r#"{"a":"#.repeat(40), "}".repeat(40));
    let r = gw
        .post("/tools/pay/send")
        .api_key(KEY_A)
        .json(deep.as_bytes())
        .send()
        .await;
    r.assert_error(400, "JSON_TOO_DEEP");
    // `application/*+json` is JSON too.
    let r = gw
        .post("/tools/pay/send")
        .api_key(KEY_A)
        .header("Content-Type", "application/vnd.pay+json")
        .body(br#"{"amount": 50, "amount": 500}"#)
        .send()
        .await;
    r.assert_error(400, "JSON_DUPLICATE_KEY");
    // Another content type is not parsed: no args, so the args policy does not permit.
    let r = gw
        .post("/tools/pay/send")
        .api_key(KEY_A)
        .header("Content-Type", "text/plain")
        .body(br#"{"amount": 50}"#)
        .send()
        .await;
    r.assert_error(403, "POLICY_NO_PERMIT");
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_appear_in_errors_or_logs() {
    let up = Upstream::start(Behavior::Echo).await;
    let closed = free_port();
    let gw = echo_gateway_with_credential(&up)
        .tool_toml(
            "down",
            &format!("http://127.0.0.1:{closed}"),
            "[tools.down.credential]\nheader = \"X-Tool-Key\"\nvalue_env = \"ECHO_TOKEN\"",
        )
        .limits_toml("max_request_bytes = 2000")
        .policy(&format!(
            "{POLICY}\npermit(principal, action, resource == Tool::\"down\");"
        ))
        .start()
        .await;
    let post = |key: &str| gw.post("/tools/echo/x").api_key(key);
    let errors = vec![
        gw.get("/tools/echo/x")
            .api_key("not-a-key-SECRETPROBE")
            .send()
            .await,
        gw.get("/tools/echo/x")
            .header("Authorization", "Bearer SECRETPROBE-bearer")
            .send()
            .await,
        gw.get("/tools/echo/x")
            .api_key(KEY_A)
            .header("X-Agent-Id", "agent-b")
            .send()
            .await,
        post(KEY_B).json(b"{\"p\": \"BODYSECRET\"}").send().await,
        post(KEY_A)
            .json(b"{\"p\": \"BODYSECRET\", \"p\": 1}")
            .send()
            .await,
        post(KEY_A).json(b"{\"p\": BODYSECRET").send().await,
        post(KEY_A)
            .body(format!("BODYSECRET{}", "x".repeat(3000)))
            .send()
            .await,
        gw.get("/tools/nope/x").bearer(KEY_A).send().await,
        gw.get("/tools/down/x").api_key(KEY_A).send().await,
    ];
    let codes: Vec<String> = errors
        .iter()
        .map(|r| r.error_code().unwrap_or_default())
        .collect();
    assert_eq!(
        codes,
        [
            "API_KEY_INVALID",
            "API_KEY_INVALID",
            "AGENT_ID_MISMATCH",
            "POLICY_NO_PERMIT",
            "JSON_DUPLICATE_KEY",
            "INVALID_JSON_BODY",
            "REQUEST_TOO_LARGE",
            "TOOL_NOT_FOUND",
            "UPSTREAM_UNAVAILABLE",
        ]
    );
    for r in &errors {
        let all = format!("{:?}{}", r.headers, r.text());
        for secret in [TOOL_TOKEN, KEY_A, KEY_B, "SECRETPROBE", "BODYSECRET"] {
            assert!(!all.contains(secret), "{secret} leaked: {all}");
        }
    }
    // A successful call: the gateway adds nothing secret to the response headers (the echo
    // body does carry the injected credential: that is the tool's answer).
    let ok = gw.get("/tools/echo/x").api_key(KEY_A).send().await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.json()["headers"]["authorization"],
        format!("Bearer {TOOL_TOKEN}")
    );
    let headers = format!("{:?}", ok.headers);
    assert!(
        !headers.contains(TOOL_TOKEN) && !headers.contains(KEY_A),
        "{headers}"
    );
    // The access line of the last call is the last thing logged: wait for it so the whole
    // log is on disk before it is searched.
    let last_id = ok.header("x-request-id").expect("request id").to_string();
    assert!(gw.wait_for_log(&last_id).await, "the access log is written");
    let log = format!("{}{}", gw.log_text(), gw.stdout_text());
    assert!(!log.is_empty(), "the gateway logs something");
    for secret in [
        TOOL_TOKEN,
        KEY_A,
        KEY_B,
        "SECRETPROBE",
        "BODYSECRET",
        TEST_SEED,
    ] {
        assert!(!log.contains(secret), "{secret} found in the gateway log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_and_hop_by_hop_headers_are_replaced() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = echo_gateway_with_credential(&up)
        .server_toml("strip_headers = [\"x-custom-identity\"]")
        .start()
        .await;
    let spoofed = [
        ("X-Agent-Id", "agent-a"),
        ("X-Lap-Agent-Id", "agent-b"),
        ("X-Lap-Decision-Policies", "forged"),
        ("X-Forwarded-User", "root"),
        ("X-Auth-Principal", "root"),
        ("X-Remote-User", "root"),
        ("X-Authenticated-User", "root"),
        ("X-User-Id", "root"),
        ("X-Principal", "root"),
        ("X-Custom-Identity", "root"),
        ("X-Real-IP", "10.9.9.9"),
        ("X-Forwarded-For", "10.9.9.9"),
        ("Forwarded", "for=10.9.9.9"),
        ("Cookie", "session=agent"),
        ("Proxy-Authorization", "Basic cm9vdDpyb290"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("X-Listed-Hop", "by-connection"),
        ("X-Benign", "kept"),
    ];
    let mut raw = format!(
        "GET /tools/echo/who?x=1 HTTP/1.1\r\nHost: gateway.example\r\nX-Api-Key: {KEY_A}\r\nConnection: close, X-Listed-Hop\r\n"
    );
    for (k, v) in spoofed {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    let r = send_raw(gw.data, raw.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last().expect("forwarded");
    assert_eq!(seen.target, "/base/who?x=1");
    for (name, _) in spoofed {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "x-lap-agent-id" => assert_eq!(seen.header_all(&name), ["agent-a"]),
            "x-forwarded-for" => assert_eq!(seen.header_all(&name), ["127.0.0.1"]),
            "x-benign" => assert_eq!(seen.header(&name), Some("kept")),
            _ => assert_eq!(seen.header(&name), None, "{name} reached the tool"),
        }
    }
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(
        seen.header_all("authorization"),
        [format!("Bearer {TOOL_TOKEN}")]
    );
    assert_eq!(seen.header_all("host"), [up.addr().to_string()]);
    assert_eq!(
        seen.header_all("x-request-id"),
        [r.header("x-request-id").unwrap()]
    );
    // The forged response header is the gateway's, not the agent's.
    assert_eq!(r.header("x-lap-decision-policies"), Some("readers-read"));

    // A renamed agent header carries the verified id and replaces the agent's own value.
    let up2 = Upstream::start(Behavior::Echo).await;
    let gw2 = echo_gateway(&up2)
        .server_toml("agent_header = \"x-verified-agent\"")
        .start()
        .await;
    let r = gw2
        .get("/tools/echo/x")
        .api_key(KEY_B)
        .header("X-Verified-Agent", "agent-a")
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up2.last().unwrap();
    assert_eq!(seen.header_all("x-verified-agent"), ["agent-b"]);
    assert_eq!(seen.header("x-lap-agent-id"), None);

    // agent_header = "" sends no identity header at all.
    let up3 = Upstream::start(Behavior::Echo).await;
    let gw3 = echo_gateway(&up3)
        .server_toml("agent_header = \"\"")
        .start()
        .await;
    let r = gw3
        .get("/tools/echo/x")
        .api_key(KEY_A)
        .header("X-Lap-Agent-Id", "agent-b")
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up3.last().unwrap().header("x-lap-agent-id"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_keys_and_policy_without_polling() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = echo_gateway(&up)
        .reload_interval_ms(3_600_000)
        .start()
        .await;
    let call = |key: &str, method: &str| gw.request(method, "/tools/echo/x").api_key(key).send();
    let extra = format!(
        r#", {{"id": "h", "hash": "{}", "agent_id": "agent-h", "groups": ["readers"]}}"#,
        key_hash("hup-key-123")
    );
    gw.write_keys(&keys_rich(&extra));
    gw.write_policy(&format!(
        "{POLICY}\n@id(\"b-deletes\") permit(principal == Agent::\"agent-b\", action == Action::\"DELETE\", resource);"
    ));
    // Polling is effectively off: nothing changes by itself.
    tokio::time::sleep(Duration::from_millis(800)).await;
    call("hup-key-123", "GET")
        .await
        .assert_error(401, "API_KEY_INVALID");
    call(KEY_B, "DELETE")
        .await
        .assert_error(403, "POLICY_NO_PERMIT");
    let before = gw
        .metric(
            "lap_reload_total",
            &[("file", "api_keys"), ("result", "success")],
        )
        .await
        .unwrap_or(0.0);
    gw.sighup();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            call("hup-key-123", "GET").await.status == 200
                && call(KEY_B, "DELETE").await.status == 200
        })
        .await,
        "SIGHUP must apply the new key file and policy"
    );
    let after = gw
        .metric(
            "lap_reload_total",
            &[("file", "api_keys"), ("result", "success")],
        )
        .await
        .unwrap_or(0.0);
    assert!(
        after > before,
        "reload success counted ({before} → {after})"
    );
    for file in ["api_keys", "policy"] {
        assert_eq!(
            gw.metric("lap_config_generation", &[("file", file)]).await,
            Some(2.0),
            "{file}"
        );
    }
    assert_eq!(gw.metric("lap_api_keys_loaded", &[]).await, Some(3.0));
    assert_eq!(gw.metric("lap_policies_loaded", &[]).await, Some(4.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_answers_and_response_caps() {
    let missing = Upstream::start(Behavior::Status(404, r#"{"upstream":"not here"}"#)).await;
    let big = Upstream::start(Behavior::Large(5000)).await;
    let small = Upstream::start(Behavior::Echo).await;
    let gw = GatewayBuilder::new()
        .tool("missing", &missing.url())
        .tool_toml("big", &big.url(), "max_response_bytes = 1000")
        .tool_toml("small", &small.url(), "max_request_bytes = 100")
        .keys_file(&keys_rich(""))
        .policy(r#"@id("all") permit(principal, action, resource);"#)
        .start()
        .await;
    // An upstream error status and body pass through untouched.
    let r = gw.get("/tools/missing/x").api_key(KEY_A).send().await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), r#"{"upstream":"not here"}"#);
    assert_eq!(r.header("x-lap-decision-policies"), Some("all"));
    assert!(r.header("x-request-id").is_some());
    assert_eq!(missing.hits(), 1);
    // A response declared larger than the tool's cap is refused.
    let r = gw.get("/tools/big/x").api_key(KEY_A).send().await;
    r.assert_error(502, "UPSTREAM_RESPONSE_TOO_LARGE");
    assert!(!r.text().contains("xxxxxxxxxx"), "no upstream bytes leak");
    // A tool's own request cap is lower than the global one.
    let r = gw
        .post("/tools/small/x")
        .api_key(KEY_A)
        .body([b'a'; 101])
        .send()
        .await;
    r.assert_error(413, "REQUEST_TOO_LARGE");
    assert_eq!(small.hits(), 0);
    let r = gw
        .post("/tools/small/x")
        .api_key(KEY_A)
        .body([b'a'; 100])
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(small.last().unwrap().body, vec![b'a'; 100]);
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "lap_requests_total",
            &[
                ("tool", "missing"),
                ("decision", "allow"),
                ("status", "404")
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn header_caps_and_error_shape() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = echo_gateway(&up)
        .limits_toml("max_header_count = 20\nmax_header_bytes = 2048")
        .start()
        .await;
    let many: Vec<(String, String)> = (0..30).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let mut headers: Vec<(&str, &str)> =
        many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    headers.push(("X-Api-Key", KEY_A));
    let r = gw.get("/tools/echo/x").headers(&headers).send().await;
    r.assert_error(431, "HEADERS_TOO_LARGE");
    let long = "v".repeat(4000);
    let r = gw
        .get("/tools/echo/x")
        .api_key(KEY_A)
        .header("X-Long", &long)
        .send()
        .await;
    r.assert_error(431, "HEADERS_TOO_LARGE");
    assert_eq!(up.hits(), 0);
    // Under the caps the same request passes.
    let r = gw.get("/tools/echo/x").api_key(KEY_A).send().await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Every error has the same JSON shape, and its request id is the response header's.
    let errors = [
        gw.get("/nowhere").send().await,
        gw.get("/tools/echo/x").send().await,
        gw.request("DELETE", "/tools/echo/x")
            .api_key(KEY_B)
            .send()
            .await,
        gw.get("/tools/echo/%2e%2e/x").api_key(KEY_A).send().await,
        gw.get("/tools/echo/x").headers(&headers).send().await,
    ];
    let mut ids = std::collections::HashSet::new();
    for r in &errors {
        assert!(r.status >= 400, "{r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
        let j = r.json();
        let id = r
            .header("x-request-id")
            .expect("x-request-id on every error");
        assert_eq!(j["error"]["request_id"], id, "{}", r.text());
        assert!(j["error"]["code"].as_str().is_some_and(|c| !c.is_empty()));
        assert!(j["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert_eq!(
            j.as_object().map(|o| o.len()),
            Some(1),
            "only `error`: {}",
            r.text()
        );
        ids.insert(id.to_string());
    }
    assert_eq!(ids.len(), errors.len(), "request ids are unique");
}

#[tokio::test(flavor = "multi_thread")]
async fn methods_map_to_read_and_write_actions() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway_with(&up).await;
    // agent-b is a reader only.
    for (method, status) in [
        ("GET", 200),
        ("HEAD", 200),
        ("OPTIONS", 200),
        ("POST", 403),
        ("PUT", 403),
        ("PATCH", 403),
        ("DELETE", 403),
    ] {
        let r = gw
            .request(method, "/tools/echo/m")
            .api_key(KEY_B)
            .send()
            .await;
        assert_eq!(r.status, status, "{method}: {}", r.text());
    }
    assert_eq!(up.hits(), 3);
    let methods: Vec<String> = up.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["GET", "HEAD", "OPTIONS"]);
    // agent-a also writes.
    let r = gw
        .request("PATCH", "/tools/echo/m")
        .api_key(KEY_A)
        .body(b"p")
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().unwrap().method, "PATCH");
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_sees_the_normalised_path() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway_with(&up).await;
    // `%61dmin` is `admin`: the forbid must still match, and the tool never sees the call.
    let r = gw
        .get("/tools/echo/%61dmin/users")
        .api_key(KEY_A)
        .send()
        .await;
    r.assert_error(403, "POLICY_FORBIDDEN");
    assert_eq!(up.hits(), 0);
    // A query string is passed on unchanged, raw.
    let r = gw
        .get("/tools/echo/q?a=%20b&c=d%26e&admin")
        .api_key(KEY_A)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().unwrap().target, "/base/q?a=%20b&c=d%26e&admin");
    // Authentication comes before the tool lookup and the path check: no enumeration.
    gw.get("/tools/nope/x")
        .send()
        .await
        .assert_error(401, "API_KEY_REQUIRED");
    gw.get("/tools/echo/../x")
        .send()
        .await
        .assert_error(401, "API_KEY_REQUIRED");
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_body_times_out_without_reaching_the_upstream() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = echo_gateway(&up)
        .limits_toml("body_read_timeout_ms = 300")
        .start()
        .await;
    let started = std::time::Instant::now();
    // Announces 100 bytes, sends 10, then stalls (the socket stays open).
    let raw = format!(
        "POST /tools/echo/x HTTP/1.1\r\nHost: gw\r\nX-Api-Key: {KEY_A}\r\nContent-Length: 100\r\n\r\n0123456789"
    );
    let r = send_raw(gw.data, raw.as_bytes()).await;
    r.assert_error(408, "REQUEST_BODY_TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_calls_are_each_forwarded_once() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway_with(&up).await;
    let data = gw.data;
    let calls = (0..40u32).map(|i| {
        tokio::spawn(async move {
            let body = format!(
                "{{\"call\": {i}, \"pad\": \"{}\"}}",
                "p".repeat(i as usize * 100)
            );
            let r = Request::post(data, &format!("/tools/echo/c/{i}"))
                .api_key(KEY_A)
                .json(body.as_bytes())
                .send()
                .await;
            (i, body, r)
        })
    });
    for c in calls {
        let (i, body, r) = c.await.unwrap();
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
        let echo = r.json();
        assert_eq!(echo["path"], format!("/base/c/{i}"));
        assert_eq!(echo["body_sha256"], sha256_hex(body.as_bytes()));
    }
    assert_eq!(up.hits(), 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_is_verified_against_its_ca_file() {
    let ca = TestCa::new();
    let up = Upstream::start_tls(Behavior::Echo, &ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    ca.write_ca(&ca_file);
    let port = up.addr().port();
    let gw = GatewayBuilder::new()
        .tool_toml(
            "tls",
            &format!("https://localhost:{port}/secure"),
            &format!(
                "ca_file = \"{}\"\n[tools.tls.credential]\nheader = \"X-Tool-Key\"\nvalue_env = \"TLS_TOKEN\"",
                ca_file.display()
            ),
        )
        .tool_toml(
            "tls-sni",
            &up.url(),
            &format!("ca_file = \"{}\"\nsni = \"localhost\"", ca_file.display()),
        )
        .tool("untrusted", &format!("https://localhost:{port}"))
        .env("TLS_TOKEN", TOOL_TOKEN)
        .keys_file(&keys_rich(""))
        .policy("permit(principal, action, resource);")
        .start()
        .await;
    let body = b"{\"over\": \"tls\"}";
    let r = gw
        .post("/tools/tls/p?q=1")
        .api_key(KEY_A)
        .body(body)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last().unwrap();
    assert_eq!(seen.target, "/secure/p?q=1");
    assert_eq!(seen.body, body);
    assert_eq!(seen.header("x-tool-key"), Some(TOOL_TOKEN));
    assert_eq!(seen.header("host"), Some(&*format!("localhost:{port}")));
    let r = gw.get("/tools/tls-sni/s").api_key(KEY_A).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let hits = up.hits();
    // System roots do not know the private CA: refused before any HTTP byte is sent.
    let r = gw.get("/tools/untrusted/x").api_key(KEY_A).send().await;
    r.assert_error(502, "UPSTREAM_TLS_ERROR");
    assert_eq!(up.hits(), hits);
}

/// With its data port taken by another socket, the gateway refuses to start: exit code 2 and
/// a message naming the address, before its admin plane exists (a load balancer asking the
/// admin port is never told "ready"). That `/readyz` answers 503 `DATA_PLANE_NOT_READY` until
/// the data port answers for this very process is unit-tested with the admin plane.
#[tokio::test(flavor = "multi_thread")]
async fn refuses_to_start_when_the_data_port_is_taken() {
    let (data, admin) = (PortLease::new(), PortLease::new());
    let _squatter = std::net::TcpListener::bind(data.addr()).unwrap();
    let mut gw = GatewayBuilder::new()
        .keys_file(&keys_rich(""))
        .spawn_on(data.port(), admin.port());
    // Until the process exits, the admin port is probed: it must never answer.
    let outcome = wait_for(Duration::from_secs(10), || {
        let exited = gw.child.try_wait().expect("try_wait");
        let probe = Request::get(gw.admin, "/readyz").try_send(Duration::from_millis(500));
        async move {
            match exited {
                Some(status) => Some(Ok(status)),
                None => probe.await.map(Err),
            }
        }
    })
    .await;
    let log = gw.log_text();
    let status = match outcome {
        Some(Ok(status)) => status,
        Some(Err(r)) => panic!(
            "the admin port answered {} while the data port was taken: {}\nlog:\n{log}",
            r.status,
            r.text()
        ),
        None => {
            panic!("the gateway did not exit within 10 s with its data port taken; log:\n{log}")
        }
    };
    assert_eq!(status.code(), Some(2), "refused to start; log:\n{log}");
    assert!(
        log.contains(&data.addr().to_string()),
        "the message names the taken address {}; log:\n{log}",
        data.addr()
    );
}

/// On a normal start, admin `/readyz` says ready (200, `"status": "ready"`) with what is in
/// force. (`GatewayBuilder::start` waits for that 200; here the answer itself is checked.)
#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_ready_on_a_normal_start() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway_with(&up).await;
    let r = gw.admin_get("/readyz").send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let ready = r.json();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["gateway_id"], "lap-gateway", "{ready}");
    assert_eq!(ready["api_keys"], 2, "{ready}");
    assert_eq!(ready["policies"], 3, "{ready}");
    assert!(
        ready["policy_digest"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{ready}"
    );
    assert!(ready["log_size"].is_u64(), "{ready}");
    let live = gw.admin_get("/healthz").send().await;
    assert_eq!(
        (live.status, live.json()["status"].as_str()),
        (200, Some("ok"))
    );
}

/// The README's first command, `lap-gateway quickstart`: the demo it prints works as printed
/// (key, example tool with an injected credential, policy decisions), and its evidence can be
/// exported and verified offline.
#[tokio::test(flavor = "multi_thread")]
async fn quickstart_works_as_printed() {
    let (data, admin, tool, mcp) = (
        PortLease::new(),
        PortLease::new(),
        PortLease::new(),
        PortLease::new(),
    );
    let dir = tempfile::tempdir().unwrap();
    let stdout = dir.path().join("stdout.txt");
    let mut child = ChildGuard::spawn(
        std::process::Command::new(gateway_bin())
            .arg("quickstart")
            .arg("--dir")
            .arg(dir.path().join("qs"))
            .args(["--port", &data.port().to_string()])
            .args(["--admin-port", &admin.port().to_string()])
            .args(["--tool-port", &tool.port().to_string()])
            .args(["--mcp-port", &mcp.port().to_string()])
            .env("LAP_LOG", "warn")
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr.txt")).unwrap()),
    );
    let (data_addr, admin_addr) = (data.addr(), admin.addr());
    let ready = wait_until(Duration::from_secs(20), || async {
        Request::get(admin_addr, "/readyz")
            .try_send(Duration::from_secs(1))
            .await
            .is_some_and(|r| r.status == 200)
    })
    .await;
    let printed = std::fs::read_to_string(&stdout).unwrap_or_default();
    assert!(ready, "quickstart not ready:\n{printed}");
    let key = printed
        .lines()
        .skip_while(|l| !l.starts_with("API key for agent"))
        .nth(1)
        .map(str::trim)
        .expect("the banner shows the API key")
        .to_string();

    let call = |method: &str, path: &str, body: Option<&str>, with_key: bool| {
        let mut req =
            Request::new(data_addr, method, path).header("Content-Type", "application/json");
        if with_key {
            req = req.api_key(&key);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        req.send()
    };
    let hello = call("GET", "/tools/echo/hello", None, true).await;
    assert_eq!(hello.status, 200, "{}", hello.text());
    assert_eq!(hello.json()["tool_credential_injected"], true);
    assert_eq!(hello.json()["agent_api_key_seen"], false);
    let small = r#"{"amount": 50, "to": "bob"}"#;
    let large = r#"{"amount": 5000, "to": "bob"}"#;
    assert_eq!(
        call("POST", "/tools/echo/payments", Some(small), true)
            .await
            .status,
        200
    );
    assert_eq!(
        call("POST", "/tools/echo/payments", Some(large), true)
            .await
            .status,
        403
    );
    assert_eq!(
        call("GET", "/tools/echo/admin/users", None, true)
            .await
            .status,
        403
    );
    assert_eq!(
        call("GET", "/tools/echo/hello", None, false).await.status,
        401
    );

    // The example MCP server, as an MCP client sees it through the gateway: the tool no
    // policy permits is not even listed; payments are decided on their amount.
    let mcp_url = format!("http://{data_addr}/mcp/demo");
    let key_header = [("X-Api-Key", key.as_str())];
    for g in Generation::BOTH {
        let agent = |scenario: &'static str, args: &'static [&'static str]| {
            mcp_client(&mcp_url, &key_header, g, scenario, args)
        };
        let tools = mcp_ok(agent("list-tools", &[]).await);
        let mut names: Vec<&str> = tools["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["echo", "pay"], "{g:?}: {tools}");
        let paid = mcp_ok(agent("call", &["pay", r#"{"amount": 50, "to": "bob"}"#]).await);
        assert_eq!(paid["text"], "paid 50 to bob", "{g:?}");
        assert_eq!(
            paid["result"]["structuredContent"]["tool_credential_injected"],
            true
        );
        let denied = agent("call", &["pay", r#"{"amount": 5000, "to": "bob"}"#]).await;
        assert_eq!(
            denied["error"]["data"]["code"], "POLICY_NO_PERMIT",
            "{g:?}: {denied}"
        );
    }

    // The evidence of these calls, exported and verified offline.
    let pack = wait_for(Duration::from_secs(5), || async {
        let r = Request::get(admin_addr, "/v1/audit-pack").send().await;
        (r.status == 200).then_some(r.body)
    })
    .await;
    let keys = Request::get(data_addr, "/v1/keys").send().await;
    child.kill_and_reap();
    let pack_file = dir.path().join("pack.tar");
    std::fs::write(
        &pack_file,
        pack.expect("an audit pack once a checkpoint exists"),
    )
    .unwrap();
    let keys_file = dir.path().join("keys.json");
    std::fs::write(&keys_file, &keys.body).unwrap();
    let out = run_command(
        std::process::Command::new(verify_bin())
            .arg("pack")
            .arg(&pack_file)
            .arg("--trusted-keys")
            .arg(&keys_file),
        Duration::from_secs(30),
    );
    assert_success(&out, "lap-verify pack on the quickstart's evidence");
}
