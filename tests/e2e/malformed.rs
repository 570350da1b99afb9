//! Requests that Pingora's HTTP parser refuses before the gateway's first phase (smuggling
//! attempts, probes, clients speaking TLS to the plain port), sent byte for byte to the real
//! binary: each gets the gateway's JSON error with its stable code and a request id, a denial
//! receipt in the log, a count and an access-log line, and the gateway keeps serving.

use lap_e2e::*;
use std::sync::Arc;

const KEY: &str = "key-agent-a-0123456789";

async fn echo_gateway(up: &Upstream) -> Gateway {
    GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file(&format!(r#"{{"{KEY}": "agent-a"}}"#))
        .policy("permit(principal, action, resource);")
        .start()
        .await
}

/// `GET /tools/echo/x` with the API key and these extra header lines (each ending in CRLF).
fn with_headers(extra: &str) -> Vec<u8> {
    format!("GET /tools/echo/x HTTP/1.1\r\nHost: gw\r\nX-Api-Key: {KEY}\r\n{extra}\r\n")
        .into_bytes()
}

/// The first bytes a real TLS client (rustls) sends: its ClientHello.
fn client_hello() -> Vec<u8> {
    let config = tls_client_config();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = tokio_rustls::rustls::ClientConnection::new(config, name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert_eq!(hello[0], 0x16, "a TLS handshake record");
    hello
}

fn tls_client_config() -> Arc<tokio_rustls::rustls::ClientConfig> {
    use tokio_rustls::rustls::{crypto::ring, ClientConfig, RootCertStore};
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    Arc::new(config)
}

/// Every malformed input of the issue, with the answer the docs give it (`docs/api.md`).
fn malformed_inputs() -> Vec<(&'static str, Vec<u8>, u16, &'static str)> {
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_url = format!(
        "GET /tools/echo/{} HTTP/1.1\r\nHost: gw\r\nX-Api-Key: {KEY}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    // Never ends: still incomplete after Pingora's 1 MiB.
    let endless = format!(
        "GET /tools/echo/x HTTP/1.1\r\nHost: gw\r\nX-Big: {}",
        "v".repeat(1024 * 1024 + 100)
    );
    vec![
        (
            "two different Content-Lengths",
            with_headers("Content-Length: 5\r\nContent-Length: 6\r\n"),
            400,
            "BAD_CONTENT_LENGTH",
        ),
        (
            "Content-Length: +12",
            with_headers("Content-Length: +12\r\n"),
            400,
            "BAD_CONTENT_LENGTH",
        ),
        (
            "Transfer-Encoding: xchunked",
            with_headers("Transfer-Encoding: xchunked\r\n"),
            400,
            "BAD_TRANSFER_ENCODING",
        ),
        (
            "obs-fold",
            with_headers("X-Folded: a\r\n b\r\n"),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "NUL in a header",
            with_headers("X-Nul: a\0b\r\n"),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "two Host headers",
            with_headers("Host: other\r\n"),
            400,
            "BAD_HOST",
        ),
        ("500 headers", with_headers(&many), 431, "HEADERS_TOO_LARGE"),
        (
            "a 100 KB URL",
            long_url.into_bytes(),
            431,
            "HEADERS_TOO_LARGE",
        ),
        (
            "a header block over 1 MiB",
            endless.into_bytes(),
            431,
            "HEADERS_TOO_LARGE",
        ),
        (
            "TLS on the plain port",
            client_hello(),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "CONNECT",
            b"CONNECT tool.example:443 HTTP/1.1\r\nHost: tool.example:443\r\n\r\n".to_vec(),
            405,
            "METHOD_NOT_ALLOWED",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn parser_refusals_get_json_errors_and_denial_receipts() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = echo_gateway(&up).await;
    let mut ids = Vec::new();
    for (what, raw, status, code) in malformed_inputs() {
        let r = send_raw(gw.data, &raw).await;
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (status, Some(code)),
            "{what}: {}",
            r.text()
        );
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{what}: no request id"));
        assert_eq!(r.json()["error"]["request_id"], id, "{what}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
        assert_eq!(r.header("connection"), Some("close"), "{what}");
        if status == 405 {
            assert!(
                r.header("allow").is_some(),
                "{what}: a 405 names its methods"
            );
        }

        // The denial receipt travels with the answer and is the one in the log.
        let receipt_id = r
            .header("x-lap-receipt-id")
            .unwrap_or_else(|| panic!("{what}: no denial receipt"));
        let logged = gw
            .admin_get(&format!("/v1/receipts/{receipt_id}"))
            .send()
            .await;
        assert_eq!(logged.status, 200, "{what}: {}", logged.text());
        // Batched: the entry travels base64 beside its proof; per receipt: the envelope as is.
        let carried = match batched_receipt(&r) {
            Some((entry, _proof)) => entry,
            None => r
                .header("x-lap-receipt")
                .unwrap_or_default()
                .as_bytes()
                .to_vec(),
        };
        assert_eq!(logged.body, carried, "{what}");
        let index: u64 = r.header("x-lap-log-index").unwrap().parse().unwrap();
        assert_eq!(gw.log_entry(index).await.body, logged.body, "{what}");
        let p = receipt_payload(&logged.body);
        assert_eq!(p["kind"], "denial", "{what}");
        assert_eq!(p["request_id"], id, "{what}");
        assert_eq!(p["decision"]["outcome"], "deny", "{what}");
        assert_eq!(p["decision"]["code"], code, "{what}");
        // Nothing of an unread request is in its receipt: no agent, method, path or digest.
        assert_eq!(p["principal"], serde_json::Value::Null, "{what}");
        assert_eq!(p["call"]["tool"], serde_json::Value::Null, "{what}");
        assert_eq!(p["call"]["method"], "", "{what}");
        assert_eq!(p["call"]["path"], "", "{what}");
        assert_eq!(p["call"]["query_sha256"], serde_json::Value::Null, "{what}");
        ids.push(id.to_string());
    }
    assert_eq!(up.hits(), 0, "nothing malformed reaches the tool");
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a fresh request id each");

    // Counted as denials of no tool, and logged with their request id.
    gw.settled_metrics("the refusals counted", |m| {
        metric_value(
            m,
            "lap_requests_total",
            &[("tool", "-"), ("decision", "deny"), ("status", "400")],
        ) == Some(7.0)
            && metric_value(
                m,
                "lap_requests_total",
                &[("tool", "-"), ("decision", "deny"), ("status", "431")],
            ) == Some(3.0)
            && metric_value(
                m,
                "lap_requests_total",
                &[("tool", "-"), ("decision", "deny"), ("status", "405")],
            ) == Some(1.0)
    })
    .await;
    let last = ids.last().unwrap();
    assert!(
        gw.wait_for_log(last).await,
        "the access log has the refusal"
    );
    let log = gw.log_text();
    for id in &ids {
        assert!(log.contains(id.as_str()), "{id} not in the access log");
    }
    // Nothing of the refused bytes is logged (most of them carried the key).
    assert!(!log.contains(KEY), "a refused request was logged");

    // The gateway keeps serving.
    let r = gw.get("/tools/echo/x").api_key(KEY).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_client_on_the_plain_port_fails_fast_and_the_gateway_keeps_serving() {
    let up = Upstream::start(Behavior::Echo).await;
    let gw = echo_gateway(&up).await;
    let tcp = tokio::net::TcpStream::connect(gw.data).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let handshake = tokio_rustls::TlsConnector::from(tls_client_config()).connect(name, tcp);
    let outcome = tokio::time::timeout(RESPONSE_TIMEOUT, handshake)
        .await
        .expect("the handshake ends instead of hanging");
    // The client reads an HTTP answer where a ServerHello should be.
    assert!(outcome.is_err(), "no TLS on the plain port");
    let size_before = gw.log_size().await;
    assert!(size_before >= 1, "the refusal has its denial receipt");
    let r = gw.get("/tools/echo/x").api_key(KEY).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
}
