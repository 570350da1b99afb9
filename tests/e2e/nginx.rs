//! The nginx baseline (nginx/) in front of the real gateway: TLS, redirect, security headers,
//! body cap, identity-header stripping and rate limits, with real nginx on loopback.

use lap_e2e::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "nginx-test-key-0123456789";
const TOOL_TOKEN: &str = "tool-token-behind-nginx";

struct Nginx {
    child: Child,
}

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its workers; SIGKILL only if it does not exit in
    /// time (a SIGKILLed master leaves its workers running and holding the ports).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-S", "-D", "-", "-o", "-", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_behind_real_nginx_over_https() {
    if Command::new("nginx").arg("-v").output().is_err() {
        eprintln!("SKIP: nginx is not installed (tests/run.sh installs it)");
        return;
    }
    let up = Upstream::start(Behavior::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = run_command(
        Command::new("bash")
            .arg(repo_root().join("certs/gen-certs.sh"))
            .arg(&certs),
        Duration::from_secs(60),
    );
    assert_success(&out, "certs/gen-certs.sh");
    let (https, http) = (free_port(), free_port());
    let ca_file = certs.join("ca.crt");
    // Two HTTPS tools served by nginx itself: one verified against the local CA, one against
    // the system roots (which do not know that CA).
    let tls_tool = format!("ca_file = \"{}\"\nsni = \"localhost\"", ca_file.display());
    let mut gw = GatewayBuilder::new()
        .tool_toml(
            "echo",
            &up.url(),
            "[tools.echo.credential]\nheader = \"Authorization\"\nvalue_env = \"ECHO_TOKEN\"\nprefix = \"Bearer \"",
        )
        .tool_toml("tls", &format!("https://localhost:{https}"), &tls_tool)
        .tool_toml("tls-untrusted", &format!("https://localhost:{https}"), "sni = \"localhost\"")
        .env("ECHO_TOKEN", TOOL_TOKEN)
        .server_toml("proxy_headers = true\nforwarded_allow_ips = [\"127.0.0.1\"]")
        .keys_file(&format!(
            r#"{{"keys": [{{"id": "n", "hash": "{}", "agent_id": "nginx-agent", "groups": ["g"]}}]}}"#,
            key_hash(KEY)
        ))
        .policy(r#"permit(principal in Group::"g", action, resource);"#)
        .start()
        .await;

    let prefix = dir.path().join("nginx");
    let out = run_command(
        Command::new("bash")
            .arg(repo_root().join("nginx/render.sh"))
            .arg(&prefix)
            .arg(gw.data.to_string())
            .arg(format!("127.0.0.1:{https}"))
            .arg(format!("127.0.0.1:{http}"))
            .arg(&certs),
        Duration::from_secs(60),
    );
    assert_success(&out, "nginx/render.sh");
    // Run in the foreground; as root, keep the workers root so they can use the temp prefix.
    let globals = if is_root() {
        "daemon off; user root root;"
    } else {
        "daemon off;"
    };
    let child = Command::new("nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .args(["-g", globals])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("nginx.stderr")).unwrap())
        .spawn()
        .expect("start nginx");
    let _nginx = Nginx { child };
    let health = format!("http://127.0.0.1:{http}/nginx-health");
    let started = wait_until(Duration::from_secs(10), || async {
        curl(&[&health]).0 == 200
    })
    .await;
    assert!(
        started,
        "nginx did not start: {}",
        std::fs::read_to_string(dir.path().join("nginx.stderr")).unwrap_or_default()
    );
    let ca = certs.join("ca.crt");
    let ca = ca.to_str().unwrap();
    let base = format!("https://localhost:{https}");

    // A tool call through TLS: reaches the tool with the injected credential, without the
    // agent's key and without the spoofed identity header (stripped by nginx and gateway).
    let (status, head, body) = curl(&[
        "--cacert",
        ca,
        "-H",
        &format!("X-Api-Key: {KEY}"),
        "-H",
        "X-Agent-Id: somebody-else",
        &format!("{base}/tools/echo/hello?x=1"),
    ]);
    assert_eq!(status, 200, "{head}{body}");
    let seen = up.last().expect("the tool was called");
    assert_eq!(seen.target, "/hello?x=1");
    assert_eq!(
        seen.header("authorization"),
        Some(&*format!("Bearer {TOOL_TOKEN}"))
    );
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(seen.header("x-agent-id"), None);
    assert_eq!(seen.header("x-lap-agent-id"), Some("nginx-agent"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_security_headers(&head);
    assert!(head.contains("x-lap-receipt-id:"), "{head}");
    assert!(
        !head.contains("server: nginx/"),
        "server_tokens must be off"
    );

    // Plain HTTP redirects to HTTPS.
    let (status, head, _) = curl(&[&format!("http://127.0.0.1:{http}/tools/echo/x")]);
    assert_eq!(status, 301);
    assert!(
        head.contains(&format!("location: https://127.0.0.1:{https}/tools/echo/x")),
        "{head}"
    );

    // Bodies over 1 MiB stop at nginx with a JSON error.
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'a'; 1024 * 1024 + 10]).unwrap();
    let hits = up.hits();
    let (status, head, body) = curl(&[
        "--cacert",
        ca,
        "-H",
        &format!("X-Api-Key: {KEY}"),
        "--data-binary",
        &format!("@{}", big.display()),
        &format!("{base}/tools/echo/upload"),
    ]);
    assert_eq!(status, 413);
    assert!(body.contains("REQUEST_TOO_LARGE"), "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_security_headers(&head);
    assert_eq!(up.hits(), hits);

    // nginx refuses most malformed requests itself, but relays any number of headers: past
    // the 256 that Pingora's parser holds, the gateway still answers with its JSON error, a
    // request id and a denial receipt (docs/threat-model.md, parser differentials).
    let many: Vec<String> = (0..300).map(|i| format!("X-H{i}: v")).collect();
    let key_header = format!("X-Api-Key: {KEY}");
    let target = format!("{base}/tools/echo/many");
    let mut args = vec!["--cacert", ca, "-H", key_header.as_str()];
    for h in &many {
        args.extend(["-H", h.as_str()]);
    }
    args.push(&target);
    let (status, head, body) = curl(&args);
    assert_eq!(status, 431, "{head}{body}");
    assert!(body.contains("\"code\":\"HEADERS_TOO_LARGE\""), "{body}");
    assert!(head.contains("x-request-id:"), "{head}");
    assert!(head.contains("x-lap-receipt-id:"), "{head}");
    assert_eq!(up.hits(), hits);

    // HTTPS upstreams: verified against the tool's CA file; refused without it.
    let r = gw.get("/tools/tls/nginx-health").api_key(KEY).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "ok\n");
    let r = gw
        .get("/tools/tls-untrusted/nginx-health")
        .api_key(KEY)
        .send()
        .await;
    r.assert_error(502, "UPSTREAM_TLS_ERROR");

    // The session endpoint is rate limited per client IP (2 r/s, burst 10): a quick burst of
    // 20 gets 429s.
    let mut limited = 0;
    for _ in 0..20 {
        let (status, head, body) = curl(&[
            "--cacert",
            ca,
            "-X",
            "POST",
            &format!("{base}/v1/session/new"),
        ]);
        if status == 429 {
            assert!(body.contains("\"code\":\"RATE_LIMITED\""), "{body}");
            assert!(head.contains("content-type: application/json"), "{head}");
            assert!(head.contains("retry-after: 1"), "{head}");
            assert_security_headers(&head);
            limited += 1;
        } else {
            // Below the limit the request reaches the gateway, which wants an API key.
            assert_eq!(status, 401, "{head}{body}");
            assert!(body.contains("\"code\":\"API_KEY_REQUIRED\""), "{body}");
        }
    }
    assert!(limited >= 5, "expected 429s after the burst, got {limited}");

    // With the gateway down, nginx answers in the same JSON shape.
    gw.kill();
    let (status, head, body) = curl(&[
        "--cacert",
        ca,
        "-H",
        &format!("X-Api-Key: {KEY}"),
        &format!("{base}/tools/echo/hello"),
    ]);
    assert_eq!(status, 502, "{head}{body}");
    assert!(body.contains("\"code\":\"GATEWAY_UNAVAILABLE\""), "{body}");
    assert_security_headers(&head);
}

/// The headers of nginx/snippets/security-headers.conf, on every HTTPS response (`head` is
/// lowercased).
fn assert_security_headers(head: &str) {
    for h in [
        "strict-transport-security: max-age=",
        "x-content-type-options: nosniff",
        "x-frame-options: deny",
        "referrer-policy: no-referrer",
        "permissions-policy: ",
        "cache-control: no-store",
    ] {
        assert!(head.contains(h), "missing {h} in\n{head}");
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
