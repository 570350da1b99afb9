//! The HTTPS data listener with client certificates: SPIFFE identities, the one-credential
//! rule, certificates and CA bundles rotated on disk while the gateway serves, expiry gauges,
//! and start-up refusing broken material. Real gateway binary, certificates made at test time,
//! a real TLS client presenting them.

use lap_e2e::*;
use std::path::Path;
use std::time::Duration;

const KEY: &str = "mtls-test-api-key-0123456789";
const DEMO: &str = "spiffe://lap.test/agent/demo";

/// A gateway with a TLS listener on a leased port; certificates in `dir`.
fn tls_gateway(dir: &Path, up: &Upstream, tls_port: u16, mtls: &str, keys: &str) -> GatewayBuilder {
    GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(keys)
        .policy("permit(principal, action, resource);")
        .extra_toml(&format!(
            "[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert_file = \"{d}/server.crt\"\nkey_file = \"{d}/server.key\"\n\n[mtls]\nclient_ca_files = [\"{d}/client-ca.crt\"]\n{mtls}",
            d = dir.display()
        ))
}

const IDENTITY: &str = r#"identity = true
trust_domains = ["lap.test"]
[[mtls.identities]]
spiffe_id = "spiffe://lap.test/agent/demo"
agent_id = "demo"
groups = ["workloads"]
"#;

fn receipt_principal(r: &HttpResponse) -> serde_json::Value {
    let (entry, _) = batched_receipt(r).expect("a receipt");
    receipt_payload(&entry)["principal"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn spiffe_identities_over_optional_client_certificates() {
    let up = Upstream::start(Behavior::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let (server_pki, client_pki, foreign) = (
        Pki::new("server CA"),
        Pki::new("client CA"),
        Pki::new("foreign CA"),
    );
    server_pki.server("gateway").write(dir.path(), "server");
    client_pki.write_ca(&dir.path().join("client-ca.crt"));
    let lease = PortLease::new();
    let expires = time_rfc3339(now_secs() + 30 * 86_400);
    let keys = format!(
        r#"{{"version": 1, "keys": [{{"id": "k-exp", "hash": "{}", "agent_id": "agent-a", "expires_at": "{expires}"}}]}}"#,
        key_hash(KEY)
    );
    // A receipt signing key with a validity window (60 days).
    let keyset = KeysetFile::new(dir.path());
    let seed = keyset.keygen("k-window");
    let not_after = time_rfc3339(now_secs() + 60 * 86_400);
    lap_signer(&[
        "keyset",
        "add",
        "--file",
        keyset.path_str(),
        "--kid",
        "k-window",
        "--seed-file",
        seed.to_str().unwrap(),
        "--not-after",
        &not_after,
    ]);
    keyset.activate("k-window");
    let gw = tls_gateway(
        dir.path(),
        &up,
        lease.port(),
        &format!("client_auth = \"optional\"\n{IDENTITY}"),
        &keys,
    )
    .without_signing_key()
    .env("LAP_GATEWAY_KEYSET_FILE", keyset.path_str())
    .start()
    .await;
    let tls = lease.addr();
    let call = |client: Option<&Issued>, req: Request| {
        let ca = server_pki.ca_pem.clone();
        let client = client.cloned();
        async move { tls_exchange(tls, &ca, client.as_ref(), req).await.response }
    };
    let get = || Request::get(tls, "/tools/echo/x");

    // A mapped SPIFFE ID: the principal, with the certificate in the receipt.
    let demo = client_pki.client("demo workload", &[DEMO]);
    let r = call(Some(&demo), get()).await.expect("a response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().unwrap().header("x-lap-agent-id"), Some("demo"));
    let p = receipt_principal(&r);
    assert_eq!(p["auth"], "mtls");
    assert_eq!(p["agent_id"], "demo");
    assert_eq!(p["spiffe_id"], DEMO);
    assert_eq!(p["cert_sha256"], demo.sha256());
    assert!(
        up.last().unwrap().header("x-client-cert").is_none(),
        "never forwarded"
    );

    // No certificate: the API key still works (client_auth = "optional").
    let r = call(None, get().api_key(KEY)).await.expect("a response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(receipt_principal(&r)["auth"], "api_key");

    // One credential per request.
    let r = call(Some(&demo), get().api_key(KEY)).await.unwrap();
    r.assert_error(401, "AUTH_AMBIGUOUS");
    let r = call(Some(&demo), get().bearer("a.b.c")).await.unwrap();
    r.assert_error(401, "AUTH_AMBIGUOUS");

    // Certificates of the right CA that give no identity, each with its code.
    let cases = [
        (
            client_pki.client("evil", &["spiffe://evil.test/agent/demo"]),
            "TRUST_DOMAIN_NOT_ALLOWED",
        ),
        (client_pki.client("plain", &[]), "CLIENT_CERT_NO_IDENTITY"),
        (
            client_pki.client("two", &[DEMO, "spiffe://lap.test/agent/other"]),
            "SPIFFE_ID_INVALID",
        ),
        (
            client_pki.client("bad", &["spiffe://lap.test/agent/../demo"]),
            "SPIFFE_ID_INVALID",
        ),
        (
            client_pki.client("unmapped", &["spiffe://lap.test/agent/other"]),
            "CLIENT_IDENTITY_UNMAPPED",
        ),
    ];
    for (cert, code) in &cases {
        let r = call(Some(cert), get()).await.expect("a response");
        r.assert_error(401, code);
        assert_eq!(receipt_principal(&r), serde_json::Value::Null, "{code}");
    }

    // Another CA's certificate: the handshake fails, and it is counted.
    let stranger = foreign.client("demo", &[DEMO]);
    assert!(call(Some(&stranger), get()).await.is_none());
    gw.settled_metrics("the refused certificate counted", |m| {
        metric_value(
            m,
            "lap_tls_client_cert_failures_total",
            &[("reason", "unknown_issuer")],
        )
        .is_some_and(|v| v >= 1.0)
    })
    .await;

    // The header of a forwarding proxy, from a client that is none.
    let header = escaped_pem(&demo.cert_pem);
    let r = gw
        .get("/tools/echo/x")
        .header("x-client-cert", &header)
        .send()
        .await;
    r.assert_error(401, "CLIENT_CERT_HEADER_UNTRUSTED");
    let r = call(None, get().header("x-client-cert", &header))
        .await
        .unwrap();
    r.assert_error(401, "CLIENT_CERT_HEADER_UNTRUSTED");

    // Expiry gauges: the server certificate, the client CA, the API key (30 days).
    let m = gw.metrics().await;
    let server = metric_sum(&m, "lap_cert_expiry_seconds", &[("kind", "server")]);
    assert!(server > 86_400.0, "server certificate: {server}");
    let ca = metric_sum(&m, "lap_cert_expiry_seconds", &[("kind", "client_ca")]);
    assert!(ca > 86_400.0, "client CA: {ca}");
    let key = metric_value(&m, "lap_api_key_expiry_seconds", &[("key_id", "k-exp")])
        .expect("API key gauge");
    assert!(
        (29.0 * 86_400.0..=30.0 * 86_400.0).contains(&key),
        "API key: {key}"
    );
    let signing = metric_value(
        &m,
        "lap_signing_key_expiry_seconds",
        &[("key_id", "k-window")],
    )
    .expect("signing key gauge");
    assert!(
        (59.0 * 86_400.0..=60.0 * 86_400.0).contains(&signing),
        "signing key: {signing}"
    );
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Seconds since the epoch as RFC 3339 (UTC).
fn time_rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn required_client_certificates_and_material_rotated_on_disk() {
    let up = Upstream::start(Behavior::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let (server_pki, client_pki, next_pki) = (
        Pki::new("server CA"),
        Pki::new("client CA"),
        Pki::new("next client CA"),
    );
    let first = server_pki.server("first");
    first.write(dir.path(), "server");
    client_pki.write_ca(&dir.path().join("client-ca.crt"));
    let lease = PortLease::new();
    let gw = tls_gateway(
        dir.path(),
        &up,
        lease.port(),
        &format!("client_auth = \"required\"\n{IDENTITY}"),
        &format!(r#"{{"{KEY}": "agent-a"}}"#),
    )
    .start()
    .await;
    let tls = lease.addr();
    let ca = server_pki.ca_pem.clone();
    let get = || Request::get(tls, "/tools/echo/x");
    let demo = client_pki.client("demo", &[DEMO]);

    // Without a certificate the handshake is refused; with one, the call goes through.
    assert!(tls_exchange(tls, &ca, None, get()).await.response.is_none());
    let x = tls_exchange(tls, &ca, Some(&demo), get()).await;
    assert_eq!(x.response.expect("a response").status, 200);
    assert_eq!(x.server_leaf.as_deref(), Some(&first.cert_der[..]));
    // `required`: the plain listener does not let an API key stand in for a certificate.
    gw.get("/tools/echo/x")
        .api_key(KEY)
        .send()
        .await
        .assert_error(401, "CLIENT_CERT_REQUIRED");

    // The server certificate rotated on disk: new connections get it, no restart.
    let second = server_pki.server("second");
    second.write(dir.path(), "server");
    let rotated = wait_for(Duration::from_secs(10), || async {
        let x = tls_exchange(tls, &ca, Some(&demo), get()).await;
        (x.server_leaf.as_deref() == Some(&second.cert_der[..])).then_some(())
    })
    .await;
    assert!(rotated.is_some(), "the new server certificate is served");

    // A broken certificate file: counted, and the last good certificate stays.
    let errors = |m: &str| {
        metric_value(
            m,
            "lap_tls_reload_total",
            &[("file", "server_cert"), ("result", "error")],
        )
        .unwrap_or(0.0)
    };
    let before = errors(&gw.metrics().await);
    std::fs::write(
        dir.path().join("server.crt"),
        "-----BEGIN CERTIFICATE-----\ngarbage\n",
    )
    .unwrap();
    gw.settled_metrics("the broken file counted", |m| errors(m) > before)
        .await;
    let x = tls_exchange(tls, &ca, Some(&demo), get()).await;
    assert_eq!(x.server_leaf.as_deref(), Some(&second.cert_der[..]));
    assert_eq!(x.response.expect("still serving").status, 200);

    // The client CA bundle rotated: the new CA's clients are accepted, the old one's are not.
    next_pki.write_ca(&dir.path().join("client-ca.crt"));
    let next_demo = next_pki.client("demo", &[DEMO]);
    let accepted = wait_for(Duration::from_secs(10), || async {
        tls_exchange(tls, &ca, Some(&next_demo), get())
            .await
            .response
            .filter(|r| r.status == 200)
    })
    .await;
    assert!(accepted.is_some(), "the new CA's client is accepted");
    assert!(tls_exchange(tls, &ca, Some(&demo), get())
        .await
        .response
        .is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn start_up_refuses_a_key_that_does_not_pair() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("server CA");
    pki.server("one").write(dir.path(), "server");
    let other = pki.server("two");
    std::fs::write(dir.path().join("server.key"), &other.key_pem).unwrap();
    let lease = PortLease::new();
    let builder = GatewayBuilder::new().extra_toml(&format!(
        "[tls]\nlisten = \"127.0.0.1:{}\"\ncert_file = \"{d}/server.crt\"\nkey_file = \"{d}/server.key\"\n",
        lease.port(),
        d = dir.path().display()
    ));
    let mut spawned = builder.spawn();
    let status = spawned
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exits by itself");
    assert_eq!(status.code(), Some(2));
    let log = spawned.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("refusing to start"))
        .expect("one line saying why");
    assert!(line.contains("does not pair"), "{line}");
    assert!(!line.contains("PRIVATE KEY"), "{line}");

    // check-config finds the same, with its code.
    let out = check_config(&spawned.dir().join("gateway.toml"));
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("TLS_KEY_MISMATCH"), "{text}");
}

/// Real nginx in the foreground on a rendered copy of the baseline; stopped on drop.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    /// SIGTERM to the master (which stops its workers); SIGKILL if it has not exited in 5 s.
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// curl, at most 10 s: the response with header names in lower case and values as sent.
fn curl(args: &[&str]) -> HttpResponse {
    let out = std::process::Command::new("curl")
        .args(["-s", "-S", "-D", "-", "-o", "-", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.as_bytes().to_vec(),
    }
}

/// A request sent from 127.0.0.2: on loopback, but not the trusted proxy (127.0.0.1).
async fn send_from_elsewhere(req: Request) -> HttpResponse {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let bytes = req.to_bytes();
    let target = {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let host = text
            .lines()
            .find_map(|l| l.strip_prefix("Host: "))
            .expect("a Host header")
            .to_string();
        host.parse::<std::net::SocketAddr>().unwrap()
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = socket.connect(target).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, &bytes)
            .await
            .unwrap();
        read_response(&mut s).await
    })
    .await
    .expect("a response within 10 s")
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_forwarded_by_real_nginx() {
    if std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!("SKIP: nginx is not installed (tests/run.sh installs it)");
        return;
    }
    let up = Upstream::start(Behavior::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = run_command(
        std::process::Command::new("bash")
            .arg(repo_root().join("certs/gen-certs.sh"))
            .arg(&certs),
        Duration::from_secs(60),
    );
    assert_success(&out, "certs/gen-certs.sh");
    let gw = GatewayBuilder::new()
        .tool("echo", &up.url())
        .server_toml("proxy_headers = true\nforwarded_allow_ips = [\"127.0.0.1\"]")
        .keys_file(&format!(r#"{{"{KEY}": "key-agent"}}"#))
        .policy("permit(principal, action, resource);")
        .extra_toml(&format!(
            "[mtls]\nclient_ca_files = [\"{}\"]\ntrusted_proxies = [\"127.0.0.1\"]\n{IDENTITY}",
            certs.join("ca.crt").display()
        ))
        .start()
        .await;
    let (https, http) = (PortLease::new(), PortLease::new());
    let prefix = dir.path().join("nginx");
    let out = run_command(
        std::process::Command::new("bash")
            .arg(repo_root().join("nginx/render.sh"))
            .arg(&prefix)
            .arg(gw.data.to_string())
            .arg(https.addr().to_string())
            .arg(http.addr().to_string())
            .arg(&certs),
        Duration::from_secs(60),
    );
    assert_success(&out, "nginx/render.sh");
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    // As root, keep the workers root so they can use the temporary prefix.
    let globals = if root {
        "daemon off; user root root;"
    } else {
        "daemon off;"
    };
    let child = std::process::Command::new("nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .args(["-g", globals])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("nginx.stderr")).unwrap())
        .spawn()
        .expect("start nginx");
    let _nginx = Nginx(child);
    let health = format!("http://{}/nginx-health", http.addr());
    let started = wait_until(Duration::from_secs(10), || async {
        curl(&[&health]).status == 200
    })
    .await;
    assert!(
        started,
        "nginx did not start: {}",
        std::fs::read_to_string(dir.path().join("nginx.stderr")).unwrap_or_default()
    );
    let path = |f: &str| certs.join(f).display().to_string();
    let (ca, agent_crt, agent_key) = (path("ca.crt"), path("agent.crt"), path("agent.key"));
    let url = format!("https://localhost:{}/tools/echo/x", https.port());

    // The agent's certificate, verified by nginx and again by the gateway: the SPIFFE identity.
    let r = curl(&[
        "--cacert", &ca, "--cert", &agent_crt, "--key", &agent_key, &url,
    ]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().unwrap().header("x-lap-agent-id"), Some("demo"));
    assert!(up.last().unwrap().header("x-client-cert").is_none());
    let p = receipt_principal(&r);
    assert_eq!(p["auth"], "mtls");
    assert_eq!(p["spiffe_id"], DEMO);
    let pem = std::fs::read_to_string(&agent_crt).unwrap();
    let der = {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64_decode(&b64)
    };
    assert_eq!(p["cert_sha256"], sha256_hex(&der));

    // Without a certificate, a client's own X-Client-Cert is overwritten by nginx: the gateway
    // sees no certificate, and the API key decides.
    let forged = format!("X-Client-Cert: {}", escaped_pem(&pem));
    let r = curl(&["--cacert", &ca, "-H", &forged, &url]);
    r.assert_error(401, "API_KEY_REQUIRED");
    let key = format!("X-Api-Key: {KEY}");
    let r = curl(&["--cacert", &ca, "-H", &forged, "-H", &key, &url]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(receipt_principal(&r)["agent_id"], "key-agent");
    // A certificate and a key through nginx: one credential too many.
    let r = curl(&[
        "--cacert", &ca, "--cert", &agent_crt, "--key", &agent_key, "-H", &key, &url,
    ]);
    r.assert_error(401, "AUTH_AMBIGUOUS");

    // The same header straight to the gateway from an address that is not the proxy.
    let r = send_from_elsewhere(
        gw.get("/tools/echo/x")
            .header("x-client-cert", &escaped_pem(&pem)),
    )
    .await;
    r.assert_error(401, "CLIENT_CERT_HEADER_UNTRUSTED");
}

#[tokio::test(flavor = "multi_thread")]
async fn https_only_is_ready_and_serves_certificates_only() {
    let up = Upstream::start(Behavior::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let (server_pki, client_pki) = (Pki::new("server CA"), Pki::new("client CA"));
    server_pki.server("gateway").write(dir.path(), "server");
    client_pki.write_ca(&dir.path().join("client-ca.crt"));
    let lease = PortLease::new();
    let spawned = tls_gateway(
        dir.path(),
        &up,
        lease.port(),
        &format!("client_auth = \"required\"\n{IDENTITY}"),
        &format!(r#"{{"{KEY}": "agent-a"}}"#),
    )
    .env("LAP_TLS_PLAIN_LISTENER", "false")
    .spawn();
    // Ready although nothing listens on the plain port: the probe went over TLS.
    let ready = wait_until(Duration::from_secs(20), || async {
        Request::get(spawned.admin, "/readyz")
            .try_send(Duration::from_secs(2))
            .await
            .is_some_and(|r| r.status == 200)
    })
    .await;
    assert!(ready, "not ready: {}", spawned.log_text());
    assert!(
        tokio::net::TcpStream::connect(spawned.data).await.is_err(),
        "no plain listener"
    );
    let demo = client_pki.client("demo", &[DEMO]);
    let x = tls_exchange(
        lease.addr(),
        &server_pki.ca_pem,
        Some(&demo),
        Request::get(lease.addr(), "/tools/echo/x"),
    )
    .await;
    assert_eq!(x.response.expect("a response").status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_server_certificate_at_once() {
    let up = Upstream::start(Behavior::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("server CA");
    let first = pki.server("first");
    first.write(dir.path(), "server");
    Pki::new("client CA").write_ca(&dir.path().join("client-ca.crt"));
    let lease = PortLease::new();
    // Polling once an hour: only the signal can make the change visible within the test.
    let gw = tls_gateway(
        dir.path(),
        &up,
        lease.port(),
        "",
        &format!(r#"{{"{KEY}": "agent-a"}}"#),
    )
    .reload_interval_ms(3_600_000)
    .start()
    .await;
    let leaf = || async {
        tls_exchange(
            lease.addr(),
            &pki.ca_pem,
            None,
            Request::get(lease.addr(), "/tools/echo/x").api_key(KEY),
        )
        .await
    };
    let x = leaf().await;
    assert_eq!(x.server_leaf.as_deref(), Some(&first.cert_der[..]));
    assert_eq!(x.response.expect("a response").status, 200);

    let second = pki.server("second");
    second.write(dir.path(), "server");
    assert_eq!(
        leaf().await.server_leaf.as_deref(),
        Some(&first.cert_der[..]),
        "no poll within the hour"
    );
    gw.sighup();
    let rotated = wait_for(Duration::from_secs(5), || async {
        (leaf().await.server_leaf.as_deref() == Some(&second.cert_der[..])).then_some(())
    })
    .await;
    assert!(rotated.is_some(), "SIGHUP reloads the certificate");
}
