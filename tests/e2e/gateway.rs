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

async fn gateway_with(up: &Upstream) -> Gateway {
    GatewayBuilder::new()
        .tool_toml(
            "echo",
            &format!("{}/base", up.url()),
            "[tools.echo.credential]\nheader = \"Authorization\"\nvalue_env = \"ECHO_TOKEN\"\nprefix = \"Bearer \"",
        )
        .env("ECHO_TOKEN", TOOL_TOKEN)
        .keys_file(&keys_rich(""))
        .policy(POLICY)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_call_reaches_upstream_with_injected_credential() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway_with(&up).await;
    let body = br#"{"q": "weather", "n": 3}"#;
    let r = request(
        gw.data,
        "POST",
        "/tools/echo/a/b?x=1&y=2",
        &[
            ("X-Api-Key", KEY_A),
            ("Content-Type", "application/json"),
            ("X-Agent-Id", "agent-a"),
            ("X-Lap-Agent-Id", "someone-else"),
            ("Cookie", "session=agent-cookie"),
        ],
        Some(body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-lap-decision-policies"), Some("writers-write"));
    assert!(r.header("x-request-id").is_some());
    assert!(r.header("x-lap-receipt-id").is_some());
    assert!(r.header("x-lap-log-index").is_some());
    assert!(r
        .header("x-lap-receipt")
        .is_some_and(|v| v.contains("payloadType")));
    let seen = up.last().expect("upstream saw the call");
    assert_eq!(up.hits(), 1);
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/base/a/b?x=1&y=2");
    assert_eq!(seen.body, body);
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
    let r = request(
        gw.data,
        "GET",
        "/tools/echo",
        &[("Authorization", &format!("Bearer {KEY_B}"))],
        None,
    )
    .await;
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
    std::fs::write(&token, "file-token\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
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
    let r = request(
        gw.data,
        "GET",
        "/tools/echo/x",
        &[("X-Api-Key", "legacy-plain-key")],
        None,
    )
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
    let r = request(
        gw.data,
        "POST",
        "/tools/echo/x",
        &[("X-Api-Key", KEY_B)],
        Some(b"{}"),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code().as_deref(), Some("POLICY_NO_PERMIT"));
    assert!(
        r.header("x-lap-receipt-id").is_some(),
        "denials get a receipt"
    );
    // forbid wins over a permit.
    let r = request(
        gw.data,
        "GET",
        "/tools/echo/admin/users",
        &[("X-Api-Key", KEY_A)],
        None,
    )
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
    let r = request(
        gw.data,
        "GET",
        "/tools/nope/x",
        &[("X-Api-Key", KEY_A)],
        None,
    )
    .await;
    r.assert_error(404, "TOOL_NOT_FOUND");
    let r = request(gw.data, "GET", "/elsewhere", &[], None).await;
    r.assert_error(404, "ROUTE_NOT_FOUND");
    let r = request(
        gw.data,
        "TRACE",
        "/tools/echo/x",
        &[("X-Api-Key", KEY_A)],
        None,
    )
    .await;
    r.assert_error(405, "METHOD_NOT_ALLOWED");
    let r = request(gw.data, "GET", "/v1/health", &[], None).await;
    assert_eq!(r.status, 200);
    let h = r.json();
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["crypto_available"], true);
    assert_eq!(h["signing"]["ephemeral"], false);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let keys = request(gw.data, "GET", "/v1/keys", &[], None).await.json();
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
        let r = request(gw.data, "GET", p, &[("X-Api-Key", KEY_A)], None).await;
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
    let gw = GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(&keys_rich(&extra))
        .policy(POLICY)
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
        let r = request(gw.data, "GET", "/tools/echo/x", headers, None).await;
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
    let gw = GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(&keys_rich(""))
        .policy(POLICY)
        .limits_toml("max_request_bytes = 1000")
        .start()
        .await;
    let head = |extra: &str| {
        format!(
            "POST /tools/echo/x HTTP/1.1\r\nHost: gw\r\nX-Api-Key: {KEY_A}\r\nConnection: close\r\n{extra}\r\n"
        )
    };
    // Chunked, 5 × 1000 bytes over a 1000-byte cap.
    let mut raw = head("Transfer-Encoding: chunked\r\n").into_bytes();
    raw.extend(chunked_body(5, 1000, b'a'));
    let r = send_raw(gw.data, &raw).await;
    r.assert_error(413, "REQUEST_TOO_LARGE");
    // Declared too large.
    let r = request(
        gw.data,
        "POST",
        "/tools/echo/x",
        &[("X-Api-Key", KEY_A)],
        Some(&[b'b'; 1001]),
    )
    .await;
    r.assert_error(413, "REQUEST_TOO_LARGE");
    assert_eq!(up.hits(), 0, "an over-cap request never reaches the tool");
    // Under the cap, chunked: forwarded intact.
    let mut raw = head("Transfer-Encoding: chunked\r\n").into_bytes();
    raw.extend(chunked_body(3, 300, b'c'));
    let r = send_raw(gw.data, &raw).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().unwrap().body, vec![b'c'; 900]);
}

#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_are_forwarded_byte_for_byte() {
    // Bodies above 64 KiB exercise the patched pingora-proxy path.
    let up = Upstream::start(Behavior::Echo).await;
    let gw = GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(&keys_rich(""))
        .policy(POLICY)
        .start()
        .await;
    let body: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let r = request(
        gw.data,
        "PUT",
        "/tools/echo/blob",
        &[("X-Api-Key", KEY_A)],
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().unwrap().body, body);
    let mut raw = format!(
        "PUT /tools/echo/blob HTTP/1.1\r\nHost: gw\r\nX-Api-Key: {KEY_A}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    raw.extend(chunked_body(50, 4000, b'z'));
    let r = send_raw(gw.data, &raw).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().unwrap().body, vec![b'z'; 200_000]);
}

#[tokio::test(flavor = "multi_thread")]
async fn key_file_hot_reload_and_broken_file() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway_with(&up).await;
    let call = |key: &'static str| async move {
        request(gw.data, "GET", "/tools/echo/x", &[("X-Api-Key", key)], None).await
    };
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
        gw.wait_until(Duration::from_secs(5), || async {
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
        gw.wait_until(Duration::from_secs(5), || async {
            call("new-key-777").await.error_code().as_deref() == Some("API_KEY_DISABLED")
        })
        .await
    );
    // Delete it, applied through SIGHUP.
    std::fs::write(gw.keys_path(), keys_rich("")).unwrap();
    gw.sighup();
    assert!(
        gw.wait_until(Duration::from_secs(5), || async {
            call("new-key-777").await.error_code().as_deref() == Some("API_KEY_INVALID")
        })
        .await
    );
    // A broken file is rejected; the last good set stays.
    gw.write_keys("{ this is not json");
    assert!(
        gw.wait_until(Duration::from_secs(5), || async {
            metric_value(
                &gw.metrics().await,
                "lap_reload_total",
                &[("file", "api_keys"), ("result", "error")],
            ) == Some(1.0)
        })
        .await
    );
    assert_eq!(call(KEY_A).await.status, 200);
    assert!(gw.log_text().contains("API key file rejected"));
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_hot_reload_and_broken_policy() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway_with(&up).await;
    let post = || async {
        request(
            gw.data,
            "POST",
            "/tools/echo/x",
            &[("X-Api-Key", KEY_B)],
            Some(b"x"),
        )
        .await
    };
    assert_eq!(post().await.status, 403);
    gw.write_policy(&format!(
        "{POLICY}\n@id(\"b-writes\") permit(principal == Agent::\"agent-b\", action, resource);"
    ));
    assert!(
        gw.wait_until(Duration::from_secs(5), || async {
            post().await.status == 200
        })
        .await
    );
    let r = post().await;
    assert_eq!(r.header("x-lap-decision-policies"), Some("b-writes"));
    gw.write_policy("permit(principal, action, resource) when { nonsense");
    assert!(
        gw.wait_until(Duration::from_secs(5), || async {
            metric_value(
                &gw.metrics().await,
                "lap_reload_total",
                &[("file", "policy"), ("result", "error")],
            ) == Some(1.0)
        })
        .await
    );
    assert_eq!(
        post().await.status,
        200,
        "the last good policy stays in force"
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
    let r = request(
        gw.data,
        "GET",
        "/tools/down/x",
        &[("X-Api-Key", KEY_A)],
        None,
    )
    .await;
    r.assert_error(502, "UPSTREAM_UNAVAILABLE");
    let started = std::time::Instant::now();
    let r = request(
        gw.data,
        "GET",
        "/tools/slow/x",
        &[("X-Api-Key", KEY_A)],
        None,
    )
    .await;
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
            request(
                gw.data,
                "GET",
                "/tools/echo/x",
                &[("X-Api-Key", KEY_A)],
                None
            )
            .await
            .status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(
            request(
                gw.data,
                "DELETE",
                "/tools/echo/x",
                &[("X-Api-Key", KEY_B)],
                None
            )
            .await
            .status,
            403
        );
    }
    let m = gw.metrics().await;
    let v = |labels: &[(&str, &str)]| metric_value(&m, "lap_requests_total", labels);
    assert_eq!(
        v(&[("tool", "echo"), ("decision", "allow"), ("status", "200")]),
        Some(3.0)
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
        Some(2.0)
    );
    assert!(m.contains("lap_request_duration_seconds_bucket"));
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_key_is_required_unless_ephemeral_is_allowed() {
    let (dir, mut child, _, _) = GatewayBuilder::new()
        .keys_file(&keys_rich(""))
        .without_signing_key()
        .spawn();
    let status =
        wait_exit(&mut child, Duration::from_secs(10)).expect("the gateway must refuse to start");
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap();
    assert!(log.contains("LAP_ALLOW_EPHEMERAL_SIGNING_KEYS"), "{log}");

    let gw = GatewayBuilder::new()
        .keys_file(&keys_rich(""))
        .without_signing_key()
        .env("LAP_ALLOW_EPHEMERAL_SIGNING_KEYS", "1")
        .start()
        .await;
    let h = request(gw.data, "GET", "/v1/health", &[], None)
        .await
        .json();
    assert_eq!(h["signing"]["ephemeral"], true);
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_reports_errors_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(dir.path().join("keys.json"), keys_rich("")).unwrap();
    std::fs::write(dir.path().join("policy.cedar"), POLICY).unwrap();
    std::fs::write(
        &cfg,
        "[auth]\napi_keys_file = \"keys.json\"\n[policy]\nfile = \"policy.cedar\"\n[tools.echo]\nupstream = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let run = || {
        std::process::Command::new(gateway_bin())
            .args(["check-config", "--config"])
            .arg(&cfg)
            .env("LAP_GATEWAY_SIGNING_KEY", TEST_SEED)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok:"));
    std::fs::write(
        dir.path().join("policy.cedar"),
        "permit(principal, action, resource);\nforbid(principal, action resource);",
    )
    .unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
    std::fs::write(&cfg, "[server]\nlisten = 42\n").unwrap();
    let out = run();
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
    let post = |body: &'static [u8]| async move {
        request(
            gw.data,
            "POST",
            "/tools/pay/send",
            &[("X-Api-Key", KEY_A), ("Content-Type", "application/json")],
            Some(body),
        )
        .await
    };
    assert_eq!(post(br#"{"amount": 50}"#).await.status, 200);
    assert_eq!(post(br#"{"amount": 500}"#).await.status, 403);
    let r = post(br#"{"amount": 50, "amount": 500}"#).await;
    r.assert_error(400, "JSON_DUPLICATE_KEY");
    let r = post(b"{not json").await;
    r.assert_error(400, "INVALID_JSON_BODY");
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_appear_in_errors_or_logs() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway_with(&up).await;
    let responses = vec![
        request(
            gw.data,
            "GET",
            "/tools/echo/x",
            &[("X-Api-Key", "not-a-key-SECRETPROBE")],
            None,
        )
        .await,
        request(
            gw.data,
            "POST",
            "/tools/echo/x",
            &[("X-Api-Key", KEY_B)],
            Some(b"x"),
        )
        .await,
        request(
            gw.data,
            "GET",
            "/tools/echo/x",
            &[("X-Api-Key", KEY_A)],
            None,
        )
        .await,
    ];
    for r in &responses {
        let all = format!("{:?}{}", r.headers, r.text());
        assert!(!all.contains(TOOL_TOKEN), "tool credential leaked: {all}");
        assert!(!all.contains(KEY_A) && !all.contains(KEY_B) && !all.contains("SECRETPROBE"));
    }
    let log = gw.log_text();
    for secret in [TOOL_TOKEN, KEY_A, KEY_B, "SECRETPROBE", TEST_SEED] {
        assert!(!log.contains(secret), "{secret} found in the gateway log");
    }
}
