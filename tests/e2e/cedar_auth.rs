//! `context.auth` through the real gateway: how a principal authenticated (API key with its
//! id, bearer JWT with its scopes, client certificate with its SPIFFE trust domain) decides
//! calls on the tool path and the MCP path. The JWT issuer is a `jwks_file` with a key the test made, so tokens
//! are minted here (the provider-backed tests are in `jwt.rs`); certificates come from a
//! private CA made at test time; the MCP upstream is the SDK's server.

use lap_e2e::*;
use serde_json::{json, Value};
use std::time::Duration;

const PUBLIC_URL: &str = "https://gw.test";
const ISSUER: &str = "https://idp.example";
const API_KEY: &str = "lap_e2e_cedar_auth_api_key";
const UNNAMED_KEY: &str = "lap_e2e_cedar_auth_unnamed_key";

const POLICY: &str = r#"
@id("pay-needs-a-jwt-granting-pay")
permit (principal, action == Action::"POST", resource == Tool::"pay")
when {
  context.auth.method == "jwt" &&
  context.auth has scopes && context.auth.scopes.contains("pay")
};

@id("weather-for-lap-test-workloads")
permit (principal, action == Action::"GET", resource == Tool::"weather")
when { context.auth has trust_domain && context.auth.trust_domain == "lap.test" };

@id("weather-for-the-weather-key")
permit (principal, action == Action::"GET", resource == Tool::"weather")
when { context.auth has key_id && context.auth.key_id == "k-weather" };

@id("mcp-session")
permit (principal, action in [Action::"mcp:session", Action::"mcp:discover"], resource == McpServer::"fx");

@id("mcp-add-needs-pay")
permit (principal, action == Action::"tools/call", resource == McpTool::"fx/add")
when { context.auth has scopes && context.auth.scopes.contains("pay") };
"#;

fn claims(scope: &str) -> Value {
    let now = unix_now();
    // Same issuer, subject and agent for every token: they differ in their scopes only.
    json!({"iss": ISSUER, "sub": "svc-1", "client_id": "svc-1", "aud": PUBLIC_URL,
           "iat": now, "exp": now + 300, "scope": scope})
}

const MODERN_ADD: &[u8] = br#"{"jsonrpc":"2.0","id":"m1","method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"t","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#;

#[tokio::test(flavor = "multi_thread")]
async fn policies_read_how_the_principal_authenticated() {
    let up = Upstream::start(Behavior::Echo).await;
    let mcp = McpUpstream::start(McpUpstreamOptions::new().name("fx")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::ed25519("e1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, jwks_json(&[&key])).expect("jwks");
    let (server_pki, client_pki) = (Pki::new("server CA"), Pki::new("client CA"));
    server_pki.server("gateway").write(dir.path(), "server");
    client_pki.write_ca(&dir.path().join("client-ca.crt"));
    let lease = PortLease::new();
    let gw = GatewayBuilder::new()
        .tool("pay", &up.url())
        .tool("weather", &up.url())
        .keys_file(&format!(
            r#"{{"version": 1, "keys": [
                {{"id": "k-weather", "hash": "{}", "agent_id": "key-bot"}},
                {{"hash": "{}", "agent_id": "key-bot"}}
            ]}}"#,
            key_hash(API_KEY),
            key_hash(UNNAMED_KEY)
        ))
        .policy(POLICY)
        .env("LAP_PUBLIC_URL", PUBLIC_URL)
        .extra_toml(&format!(
            "[tls]\nlisten = \"127.0.0.1:{port}\"\ncert_file = \"{d}/server.crt\"\nkey_file = \"{d}/server.key\"\n\n\
             [mtls]\nclient_ca_files = [\"{d}/client-ca.crt\"]\nclient_auth = \"optional\"\nidentity = true\n\
             trust_domains = [\"lap.test\", \"other.test\"]\nunmapped = \"spiffe_id\"\n\n\
             [mcp.servers.fx]\nupstream = \"{mcp}\"\n\n\
             [[auth.jwt]]\nissuer = \"{ISSUER}\"\njwks_file = \"{jwks}\"\nalgorithms = [\"EdDSA\"]\nagent_claim = \"client_id\"\n",
            port = lease.port(),
            d = dir.path().display(),
            mcp = mcp.url(),
            jwks = jwks.display(),
        ))
        .start()
        .await;

    let pay = key.token(&claims("read pay"));
    let read = key.token(&claims("read"));
    let no_scope = {
        let mut c = claims("");
        c.as_object_mut().expect("claims").remove("scope");
        key.token(&c)
    };
    let pay_call = |token: &str| gw.post("/tools/pay/x").bearer(token).json(b"{}");

    // The jwks_file is read in the background: wait for the first token to be accepted.
    let ok = wait_until(Duration::from_secs(10), || async {
        pay_call(&pay).send().await.status == 200
    })
    .await;
    assert!(ok, "the JWT was never accepted:\n{}", gw.log_text());

    // Two tokens of one agent that differ only in their scopes, interleaved: the decision
    // cache is on, and must never answer one with the other's decision. REST and MCP.
    let modern = |token: &str| {
        gw.post("/mcp/fx")
            .bearer(token)
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2026-07-28")
            .header("Mcp-Method", "tools/call")
            .header("Mcp-Name", "add")
            .json(MODERN_ADD)
    };
    for round in 0..3 {
        let r = pay_call(&pay).send().await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        assert_eq!(up.last().unwrap().header("x-lap-agent-id"), Some("svc-1"));
        pay_call(&read)
            .send()
            .await
            .assert_error(403, "POLICY_NO_PERMIT");
        pay_call(&no_scope)
            .send()
            .await
            .assert_error(403, "POLICY_NO_PERMIT");

        let r = modern(&pay).send().await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        assert!(r.json().get("error").is_none(), "{}", r.text());
        let r = modern(&read).send().await;
        assert_eq!(
            r.json()["error"]["data"]["code"],
            "POLICY_NO_PERMIT",
            "round {round}: {}",
            r.text()
        );
    }
    // A denial's receipt says how the refused principal authenticated (never its scopes or
    // the token).
    let r = pay_call(&read).send().await;
    let (entry, _) = batched_receipt(&r).expect("a receipt");
    let principal = receipt_payload(&entry)["principal"].clone();
    assert_eq!(principal["auth"], "jwt", "{principal}");
    assert_eq!(principal["sub"], "svc-1", "{principal}");
    assert!(principal.get("scopes").is_none(), "{principal}");

    // An API key is not a JWT, whatever it may call otherwise; its id (from the key file)
    // decides, and a key without one has none (not its hash prefix).
    for key in [API_KEY, UNNAMED_KEY] {
        gw.post("/tools/pay/x")
            .api_key(key)
            .json(b"{}")
            .send()
            .await
            .assert_error(403, "POLICY_NO_PERMIT");
    }
    let r = gw.get("/tools/weather/today").api_key(API_KEY).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    gw.get("/tools/weather/today")
        .api_key(UNNAMED_KEY)
        .send()
        .await
        .assert_error(403, "POLICY_NO_PERMIT");
    // A JWT has no trust domain.
    gw.get("/tools/weather/today")
        .bearer(&pay)
        .send()
        .await
        .assert_error(403, "POLICY_NO_PERMIT");

    // Client certificates: the SPIFFE trust domain decides; both domains are trusted for
    // identity, only one is permitted by policy.
    let tls = lease.addr();
    let call = |cert: &Issued, req: Request| {
        let ca = server_pki.ca_pem.clone();
        let cert = cert.clone();
        async move {
            tls_exchange(tls, &ca, Some(&cert), req)
                .await
                .response
                .expect("a response")
        }
    };
    let ours = client_pki.client("batch", &["spiffe://lap.test/agent/batch"]);
    let theirs = client_pki.client("batch", &["spiffe://other.test/agent/batch"]);
    for _ in 0..2 {
        let r = call(&ours, Request::get(tls, "/tools/weather/today")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            up.last().unwrap().header("x-lap-agent-id"),
            Some("spiffe://lap.test/agent/batch")
        );
        call(&theirs, Request::get(tls, "/tools/weather/today"))
            .await
            .assert_error(403, "POLICY_NO_PERMIT");
        // A certificate is not a JWT either.
        call(&ours, Request::post(tls, "/tools/pay/x"))
            .await
            .assert_error(403, "POLICY_NO_PERMIT");
    }

    // A refused certificate is answered like a refused token: with issuers configured, the
    // 401 names the protected resource metadata, where a client learns how to get a token.
    let r = call(
        &ours,
        Request::get(tls, "/tools/weather/today").api_key(API_KEY),
    )
    .await;
    r.assert_error(401, "AUTH_AMBIGUOUS");
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(
                "Bearer resource_metadata=\"{PUBLIC_URL}/.well-known/oauth-protected-resource\", error=\"invalid_token\""
            )
            .as_str()
        )
    );
}
