//! Bearer JWTs from a real OpenID provider (oidc-provider, `tests/oidc/`): the gateway as an
//! OAuth 2.1 resource server (RFC 8707 audiences, RFC 9728 metadata, scopes), with the tokens
//! a provider never issues minted by the test with the provider's own keys.

use lap_e2e::*;
use serde_json::{json, Value};
use std::time::Duration;

const PUBLIC_URL: &str = "https://gw.test";
const API_KEY: &str = "lap_e2e_jwt_api_key";

const POLICY: &str = r#"
permit(principal == Agent::"agent-1", action, resource);
permit(principal == Agent::"agent-2", action, resource);
permit(principal == Agent::"key-bot", action, resource);
permit(principal in Group::"via-file", action, resource);
"#;

/// A gateway trusting `issuer` (discovery), with an echo tool needing `files:read` and an MCP
/// server `files` needing `files:write` (never reached in these tests: an unused port).
async fn gateway(issuer: &str, up: &Upstream, extra: &str) -> Gateway {
    GatewayBuilder::new()
        .tool_toml("echo", &up.url(), "required_scopes = [\"files:read\"]")
        .keys_file(&format!(r#"{{"{API_KEY}": "key-bot"}}"#))
        .policy(POLICY)
        .env("LAP_PUBLIC_URL", PUBLIC_URL)
        .extra_toml(&format!(
            "[mcp.servers.files]\nupstream = \"http://127.0.0.1:9/mcp\"\nrequired_scopes = [\"files:write\"]\n\n\
             [[auth.jwt]]\nissuer = \"{issuer}\"\nleeway_seconds = 5\nrefresh_min_interval_seconds = 1\n{extra}\n"
        ))
        .start()
        .await
}

/// Waits until the gateway has the issuer's keys (its first fetch runs in the background).
async fn wait_for_keys(gw: &Gateway, token: &str) {
    let ok = wait_until(Duration::from_secs(15), || async {
        gw.get("/tools/echo/x").bearer(token).send().await.status != 503
    })
    .await;
    assert!(
        ok,
        "the gateway never loaded the issuer's keys:\n{}",
        gw.log_text()
    );
}

fn claims(issuer: &str, aud: &str) -> Value {
    let now = unix_now();
    json!({"iss": issuer, "sub": "agent-1", "client_id": "agent-1", "aud": aud,
           "iat": now, "exp": now + 300, "scope": "files:read files:write"})
}

fn files_in(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files_in(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push(b);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A provider token identifies its client; the receipt records `auth: "jwt"` with iss, sub,
/// kid and the token's hash prefix; the token is neither forwarded nor written anywhere; a
/// token seen before is answered from the verified-token cache.
#[tokio::test]
async fn provider_tokens_identify_agents_and_never_leave_the_gateway() {
    let key = SigningKey::rsa("k1");
    let idp = OidcProvider::start(&[&key]).await;
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway(&idp.issuer(), &up, "").await;
    let token = idp.token("agent-1", PUBLIC_URL, Some("files:read")).await;
    wait_for_keys(&gw, &token).await;

    let r = gw.get("/tools/echo/x").bearer(&token).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last().expect("the tool was called");
    assert_eq!(
        seen.header("authorization"),
        None,
        "the agent's token was forwarded"
    );
    assert_eq!(seen.header("x-lap-agent-id"), Some("agent-1"));
    let (entry, _) = batched_receipt(&r).expect("a receipt");
    let p = &receipt_payload(&entry)["principal"];
    let hash = sha256_hex(token.as_bytes());
    assert_eq!(p["auth"], "jwt", "{p}");
    assert_eq!(p["agent_id"], "agent-1");
    assert_eq!(p["iss"], idp.issuer().as_str());
    assert_eq!(p["sub"], "agent-1");
    assert_eq!(p["kid"], "k1");
    assert_eq!(
        p["token_hash_prefix"],
        format!("sha256:{}", &hash[..12]).as_str()
    );

    // Again: no second signature check.
    let r = gw.get("/tools/echo/y").bearer(&token).send().await;
    assert_eq!(r.status, 200);
    assert!(
        gw.metric("lap_jwt_token_cache_total", &[("result", "hit")])
            .await
            >= Some(1.0)
    );

    // Refusals too: a token for another agent's route scope.
    let read_only = idp.token("agent-2", PUBLIC_URL, Some("files:read")).await;
    assert_eq!(
        gw.get("/tools/echo/z")
            .bearer(&read_only)
            .send()
            .await
            .status,
        200
    );

    // The token appears in no file of the gateway (receipts, log, keys) and in none of its output.
    let secret = token
        .split('.')
        .nth(2)
        .expect("a signature")
        .as_bytes()
        .to_vec();
    for bytes in files_in(gw.dir()) {
        assert!(!contains(&bytes, &secret), "a gateway file holds the token");
    }
    assert!(!gw.log_text().contains(&token) && !gw.stdout_text().contains(&token));
}

/// Every token a provider never issues is refused with its own code, and every 401 names the
/// protected resource metadata with `error="invalid_token"`; API keys keep working.
#[tokio::test]
async fn forged_and_invalid_tokens_are_refused_with_their_codes() {
    let key = SigningKey::rsa("k1");
    let idp = OidcProvider::start(&[&key]).await;
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway(&idp.issuer(), &up, "").await;
    let iss = idp.issuer();
    wait_for_keys(&gw, &key.token(&claims(&iss, PUBLIC_URL))).await;
    let now = unix_now();
    let with = |name: &str, v: Value| {
        let mut c = claims(&iss, PUBLIC_URL);
        c[name] = v;
        c
    };
    let good = key.token(&claims(&iss, PUBLIC_URL));
    let parts: Vec<&str> = good.split('.').collect();
    let stranger = SigningKey::rsa("k1");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            key.token(&with("exp", json!(now - 60))),
            "JWT_EXPIRED",
        ),
        (
            "not yet valid",
            key.token(&with("nbf", json!(now + 120))),
            "JWT_NOT_YET_VALID",
        ),
        (
            "issued in the future",
            key.token(&with("iat", json!(now + 120))),
            "JWT_ISSUED_IN_FUTURE",
        ),
        (
            "wrong issuer",
            key.token(&with("iss", json!("http://127.0.0.1:1"))),
            "JWT_ISSUER_UNKNOWN",
        ),
        (
            "wrong audience",
            key.token(&with("aud", json!("https://other.test"))),
            "JWT_AUDIENCE_MISMATCH",
        ),
        (
            "another MCP endpoint's audience on a tool",
            key.token(&with("aud", json!(format!("{PUBLIC_URL}/mcp/files")))),
            "JWT_AUDIENCE_MISMATCH",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                base64_url(r#"{"alg":"none","kid":"k1"}"#),
                parts[1]
            ),
            "JWT_ALG_NOT_ALLOWED",
        ),
        (
            "HS256 keyed with the public key",
            hs256_token(
                &json!({"alg": "HS256", "kid": "k1"}),
                &claims(&iss, PUBLIC_URL),
                key.jwk().to_string().as_bytes(),
            ),
            "JWT_ALG_NOT_ALLOWED",
        ),
        (
            "tampered payload",
            format!(
                "{}.{}.{}",
                parts[0],
                base64_url(&with("sub", json!("admin")).to_string()),
                parts[2]
            ),
            "JWT_SIGNATURE_INVALID",
        ),
        (
            "signed by a stranger with the same kid",
            stranger.token(&claims(&iss, PUBLIC_URL)),
            "JWT_SIGNATURE_INVALID",
        ),
        (
            "unknown kid",
            SigningKey::ed25519("nope").token(&claims(&iss, PUBLIC_URL)),
            "JWT_KID_UNKNOWN",
        ),
    ];
    let hits = up.hits();
    for (what, token, code) in &cases {
        let r = gw.get("/tools/echo/x").bearer(token).send().await;
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (401, Some(*code)),
            "{what}: {}",
            r.text()
        );
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert_eq!(
            challenge,
            format!("Bearer resource_metadata=\"{PUBLIC_URL}/.well-known/oauth-protected-resource\", error=\"invalid_token\""),
            "{what}"
        );
    }
    assert_eq!(up.hits(), hits, "a refused token reached the tool");
    assert_eq!(
        gw.get("/tools/echo/x").bearer(&good).send().await.status,
        200
    );
    assert_eq!(
        gw.get("/tools/echo/x").api_key(API_KEY).send().await.status,
        200
    );
    // A JWT and an API key together are two credentials.
    gw.get("/tools/echo/x")
        .bearer(&good)
        .header("x-api-key", API_KEY)
        .send()
        .await
        .assert_error(401, "AUTH_AMBIGUOUS");
    assert!(
        gw.metric("lap_auth_failures_total", &[("code", "JWT_EXPIRED")])
            .await
            >= Some(1.0)
    );
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// MCP authorization: the RFC 9728 metadata per endpoint, 401 with `resource_metadata` as a
/// JSON-RPC error, 403 `insufficient_scope` naming the scopes to ask for, audience per endpoint.
#[tokio::test]
async fn mcp_endpoints_follow_the_oauth_resource_server_rules() {
    let key = SigningKey::rsa("k1");
    let idp = OidcProvider::start(&[&key]).await;
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway(&idp.issuer(), &up, "").await;
    let mcp_url = format!("{PUBLIC_URL}/mcp/files");
    let metadata_url = format!("{PUBLIC_URL}/.well-known/oauth-protected-resource/mcp/files");

    let doc = gw
        .get("/.well-known/oauth-protected-resource/mcp/files")
        .send()
        .await;
    assert_eq!(doc.status, 200, "{}", doc.text());
    let doc = doc.json();
    assert_eq!(doc["resource"], mcp_url.as_str());
    assert_eq!(doc["authorization_servers"], json!([idp.issuer()]));
    assert_eq!(doc["scopes_supported"], json!(["files:write"]));
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    let root = gw
        .get("/.well-known/oauth-protected-resource")
        .send()
        .await
        .json();
    assert_eq!(root["resource"], PUBLIC_URL);
    assert_eq!(
        gw.get("/.well-known/oauth-protected-resource/mcp/nope")
            .send()
            .await
            .status,
        404
    );

    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let post = |token: Option<&str>| {
        let mut r = gw
            .post("/mcp/files")
            .header("accept", "application/json, text/event-stream")
            .json(init);
        if let Some(t) = token {
            r = r.bearer(t);
        }
        r.send()
    };
    let r = post(None).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!("Bearer resource_metadata=\"{metadata_url}\"").as_str())
    );
    let body = r.json();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["error"]["data"]["code"], "API_KEY_REQUIRED");

    // The provider's token for this endpoint, without the scope it needs: 403 for step-up.
    let read_only = idp.token("agent-1", &mcp_url, Some("files:read")).await;
    wait_for_keys(
        &gw,
        &idp.token("agent-1", PUBLIC_URL, Some("files:read")).await,
    )
    .await;
    let r = post(Some(&read_only)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["data"]["code"], "INSUFFICIENT_SCOPE");
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!("Bearer error=\"insufficient_scope\", scope=\"files:write\", resource_metadata=\"{metadata_url}\"")
                .as_str()
        )
    );
    // A token for this MCP endpoint is not good on the tool routes (another resource).
    let r = gw.get("/tools/echo/x").bearer(&read_only).send().await;
    r.assert_error(401, "JWT_AUDIENCE_MISMATCH");
    // With the scope it passes identity (and reaches the MCP server, which is down: 502).
    let full = idp
        .token("agent-1", &mcp_url, Some("files:read files:write"))
        .await;
    let r = post(Some(&full)).await;
    assert_ne!(r.status, 401, "{}", r.text());
    assert_ne!(r.status, 403, "{}", r.text());
}

/// Key rotation at the issuer: tokens signed with the new key are accepted at once (the
/// unknown kid fetches the JWKS again). Issuer down: the last good keys keep serving, an
/// unknown kid is refused.
#[tokio::test]
async fn key_rotation_and_issuer_outage() {
    let k1 = SigningKey::rsa("k1");
    let k2 = SigningKey::rsa("k2");
    let mut idp = OidcProvider::start(&[&k1]).await;
    let up = Upstream::start(Behavior::Echo).await;
    let gw = gateway(&idp.issuer(), &up, "").await;
    let iss = idp.issuer();
    let first = idp.token("agent-1", PUBLIC_URL, Some("files:read")).await;
    wait_for_keys(&gw, &first).await;
    assert_eq!(
        gw.get("/tools/echo/x").bearer(&first).send().await.status,
        200
    );

    idp.restart_with(&[&k2]).await;
    let rotated = idp.token("agent-1", PUBLIC_URL, Some("files:read")).await;
    assert!(rotated.starts_with(&base64_url(r#"{"alg":"RS256","typ":"at+jwt","kid":"k2"}"#)));
    // Allowed once per refresh_min_interval (1 s here): the first try may fall in the
    // interval of the background fetch.
    let ok = wait_until(Duration::from_secs(5), || async {
        gw.get("/tools/echo/x").bearer(&rotated).send().await.status == 200
    })
    .await;
    assert!(ok, "the rotated key was never fetched:\n{}", gw.log_text());
    assert!(
        gw.metric(
            "lap_jwt_jwks_refresh_total",
            &[("issuer", &iss), ("result", "updated")]
        )
        .await
            >= Some(2.0)
    );

    idp.stop();
    let still = k2.token(&claims(&iss, PUBLIC_URL));
    assert_eq!(
        gw.get("/tools/echo/x").bearer(&still).send().await.status,
        200
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = gw
        .get("/tools/echo/x")
        .bearer(&SigningKey::ed25519("k3").token(&claims(&iss, PUBLIC_URL)))
        .send()
        .await;
    r.assert_error(401, "JWT_KID_UNKNOWN");
    assert!(gw.wait_for_log("JWKS load failed").await);
    assert!(
        gw.metric(
            "lap_jwt_jwks_refresh_total",
            &[("issuer", &iss), ("result", "error")]
        )
        .await
            >= Some(1.0)
    );
    assert_eq!(
        gw.get("/tools/echo/x").bearer(&still).send().await.status,
        200
    );
}

/// An issuer never reached fails closed (503) while API keys and another issuer (EdDSA keys
/// from a hot-reloaded `jwks_file`, its agents in the issuer's group, which policy permits)
/// keep working.
#[tokio::test]
async fn unreachable_issuer_fails_closed_while_others_work() {
    let down = PortLease::new();
    let dead = format!("http://127.0.0.1:{}", down.port());
    let ed = SigningKey::ed25519("e1");
    let up = Upstream::start(Behavior::Echo).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, jwks_json(&[&ed])).expect("jwks");
    let gw = gateway(
        &dead,
        &up,
        &format!(
            "[[auth.jwt]]\nissuer = \"https://idp.example\"\njwks_file = \"{}\"\nalgorithms = [\"EdDSA\"]\nagent_claim = \"client_id\"\nissuer_groups = [\"via-file\"]\n",
            jwks.display()
        ),
    )
    .await;
    let mut c = claims("https://idp.example", PUBLIC_URL);
    c["client_id"] = "ed-bot".into();
    let r = gw.get("/tools/echo/x").bearer(&ed.token(&c)).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = gw
        .get("/tools/echo/x")
        .bearer(&SigningKey::ed25519("x").token(&claims(&dead, PUBLIC_URL)))
        .send()
        .await;
    r.assert_error(503, "JWT_ISSUER_UNAVAILABLE");
    assert_eq!(
        gw.get("/tools/echo/x").api_key(API_KEY).send().await.status,
        200
    );

    // The file is hot-reloaded: a rotated key is accepted once the file names it.
    let ed2 = SigningKey::ed25519("e2");
    std::fs::write(&jwks, jwks_json(&[&ed2])).expect("jwks");
    let rotated = ed2.token(&c);
    let ok = wait_until(Duration::from_secs(5), || async {
        gw.get("/tools/echo/x").bearer(&rotated).send().await.status == 200
    })
    .await;
    assert!(ok, "the rewritten jwks_file was not reloaded");
    gw.get("/tools/echo/x")
        .bearer(&ed.token(&c))
        .send()
        .await
        .assert_error(401, "JWT_KID_UNKNOWN");
}

/// check-config names the key of a bad `[[auth.jwt]]` table.
#[tokio::test]
async fn check_config_names_bad_jwt_keys() {
    let cases = [
        ("issuer = \"http://idp.example\"", "auth.jwt[0].issuer"),
        (
            "issuer = \"https://idp.example\"\nalgorithms = [\"HS256\"]",
            "auth.jwt[0].algorithms",
        ),
        (
            "issuer = \"https://idp.example\"\nleeway_seconds = 3600",
            "auth.jwt[0].leeway_seconds",
        ),
        (
            "issuer = \"https://idp.example\"\njwks_file = \"missing.json\"",
            "auth.jwt[0].jwks_file",
        ),
    ];
    for (table, key) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = GatewayBuilder::new()
            .extra_toml(&format!(
                "[[auth.jwt]]\n{table}\naudiences = [\"https://gw.test\"]\n"
            ))
            .config_text(free_port(), free_port());
        std::fs::write(dir.path().join("gateway.toml"), text).expect("config");
        std::fs::write(dir.path().join("keys.json"), "{}").expect("keys");
        std::fs::write(dir.path().join("policy.cedar"), NO_POLICY).expect("policy");
        let out = check_config(&dir.path().join("gateway.toml"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{table}: accepted");
        assert!(stderr.contains(key), "{table}: {stderr}");
    }
}

/// OIDC discovery: a document that names another issuer than the configured one is refused, so
/// the gateway never takes keys from it (its tokens fail closed).
#[tokio::test]
async fn discovery_must_name_the_configured_issuer() {
    let key = SigningKey::rsa("k1");
    let idp = OidcProvider::start(&[&key]).await;
    let up = Upstream::start(Behavior::Echo).await;
    // The same provider under another name: its discovery document says 127.0.0.1.
    let alias = idp.issuer().replace("127.0.0.1", "localhost");
    let gw = gateway(&alias, &up, "").await;
    assert!(
        gw.wait_for_log("JWKS_DISCOVERY_INVALID").await,
        "{}",
        gw.log_text()
    );
    let r = gw
        .get("/tools/echo/x")
        .bearer(&key.token(&claims(&alias, PUBLIC_URL)))
        .send()
        .await;
    r.assert_error(503, "JWT_ISSUER_UNAVAILABLE");
    assert_eq!(up.hits(), 0);
}

/// A real MCP agent (the official Python SDK) with a provider token for the endpoint, in both
/// protocol generations, through to a real MCP server: identified as the token's agent, and the
/// server never sees the token.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_mcp_agent_calls_with_a_provider_token() {
    let key = SigningKey::rsa("k1");
    let idp = OidcProvider::start(&[&key]).await;
    let up = Upstream::start(Behavior::Echo).await;
    let mcp = McpUpstream::start(McpUpstreamOptions::new()).await;
    let gw = gateway(
        &idp.issuer(),
        &up,
        &format!("[mcp.servers.fx]\nupstream = \"{}\"\n", mcp.url()),
    )
    .await;
    wait_for_keys(
        &gw,
        &idp.token("agent-1", PUBLIC_URL, Some("files:read")).await,
    )
    .await;
    let token = idp
        .token(
            "agent-1",
            &format!("{PUBLIC_URL}/mcp/fx"),
            Some("files:read"),
        )
        .await;
    let bearer = format!("Bearer {token}");
    let url = format!("http://{}/mcp/fx", gw.data);
    for g in Generation::BOTH {
        let who = mcp_client(
            &url,
            &[("Authorization", &bearer)],
            g,
            "call",
            &["whoami", "{}"],
        )
        .await;
        let who = mcp_ok(who);
        let headers = &who["result"]["structuredContent"]["headers"];
        assert_eq!(headers["x-lap-agent-id"], "agent-1", "{g:?}: {who}");
        assert!(
            headers.get("authorization").is_none(),
            "{g:?}: the token was forwarded: {who}"
        );
    }
    let secret = token
        .split('.')
        .nth(2)
        .expect("a signature")
        .as_bytes()
        .to_vec();
    for bytes in files_in(gw.dir()) {
        assert!(!contains(&bytes, &secret), "a gateway file holds the token");
    }
}
