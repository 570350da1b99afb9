//! MCP through the real gateway: the official MCP Python SDK as agent and as upstream
//! (`tests/mcp/`), both protocol generations, policy on arguments, filtered discovery,
//! sessions, streaming, refusals as JSON-RPC errors, and receipts that verify offline.

use lap_e2e::*;
use serde_json::{json, Value};
use std::time::Duration;

const KEY_A: &str = "key-mcp-agent-a-0123456789";
const KEY_B: &str = "key-mcp-agent-b-0123456789";
const UPSTREAM_TOKEN: &str = "upstream-secret-7";
const META_RECEIPT: &str = "io.github.lap-gateway/receipt";

fn keys() -> String {
    format!(
        r#"{{"version": 1, "keys": [
            {{"id": "a", "hash": "{}", "agent_id": "agent-a", "groups": ["payers"]}},
            {{"id": "b", "hash": "{}", "agent_id": "agent-b", "groups": ["viewers"]}}
        ]}}"#,
        key_hash(KEY_A),
        key_hash(KEY_B)
    )
}

/// The default schema (REST and MCP parts) with the fixture tools' argument fields declared.
fn schema() -> String {
    let root = repo_root().join("crates/lap-policy/src");
    let rest = std::fs::read_to_string(root.join("default.cedarschema")).unwrap();
    let mcp = std::fs::read_to_string(root.join("mcp.cedarschema"))
        .unwrap()
        .replace(
            "type McpArgs = {};",
            "type McpArgs = { a?: Long, b?: Long, amount?: Long, to?: String, n?: Long, steps?: Long, delay_ms?: Long };",
        );
    format!("{rest}\n{mcp}")
}

const POLICY: &str = r#"
@id("mcp-session")
permit (principal, action in [Action::"mcp:session", Action::"mcp:discover"], resource == McpServer::"fx");
@id("add")
permit (principal, action == Action::"tools/call", resource == McpTool::"fx/add");
@id("whoami")
permit (principal, action == Action::"tools/call", resource == McpTool::"fx/whoami");
@id("stream-and-elicit")
permit (principal in Group::"payers", action == Action::"tools/call", resource)
when { resource == McpTool::"fx/slow_count" || resource == McpTool::"fx/ask_name" || resource == McpTool::"fx/big" };
@id("small-payments")
permit (principal in Group::"payers", action == Action::"tools/call", resource == McpTool::"fx/pay")
when { context has args && context.args has amount && context.args.amount <= 100 };
@id("no-payments-to-mallory")
forbid (principal, action == Action::"tools/call", resource == McpTool::"fx/pay")
when { context has args && context.args has to && context.args.to == "mallory" };
@id("prompts")
permit (principal in Group::"payers", action in [Action::"prompts/get", Action::"resources/read"], resource in McpServer::"fx");
"#;

/// An upstream that insists on the injected credential, and a gateway fronting it as `fx`.
async fn setup(extra: &str) -> (McpUpstream, Gateway) {
    let up = McpUpstream::start(
        McpUpstreamOptions::new()
            .name("fx")
            .require_header("x-upstream-token", UPSTREAM_TOKEN),
    )
    .await;
    let gw = mcp_gateway(&up, extra).start().await;
    (up, gw)
}

fn mcp_gateway(up: &McpUpstream, extra: &str) -> GatewayBuilder {
    GatewayBuilder::new()
        .keys_file(&keys())
        .schema(&schema())
        .policy(POLICY)
        .env("FX_TOKEN", UPSTREAM_TOKEN)
        .extra_toml(&format!(
            "[mcp]\n{extra}\n[mcp.servers.fx]\nupstream = \"{}\"\n\n\
             [mcp.servers.fx.credential]\nheader = \"X-Upstream-Token\"\nvalue_env = \"FX_TOKEN\"\n",
            up.url()
        ))
}

fn url(gw: &Gateway) -> String {
    format!("http://{}/mcp/fx", gw.data)
}

async fn agent(gw: &Gateway, key: &str, g: Generation, scenario: &str, args: &[&str]) -> Value {
    mcp_client(&url(gw), &[("X-Api-Key", key)], g, scenario, args).await
}

fn error_code(v: &Value) -> Option<&str> {
    v["error"]["data"]["code"].as_str()
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_are_decided_on_their_arguments_in_both_generations() {
    let (up, gw) = setup("").await;
    for g in Generation::BOTH {
        let ok = agent(
            &gw,
            KEY_A,
            g,
            "call",
            &["pay", r#"{"amount": 50, "to": "bob"}"#],
        )
        .await;
        let ok = mcp_ok(ok);
        assert_eq!(ok["text"], "paid 50 to bob", "{g:?}: {ok}");
        let receipt = &ok["result"]["_meta"][META_RECEIPT];
        assert!(
            receipt["receipt_id"].as_str().unwrap().starts_with("rcpt_"),
            "{g:?}: {ok}"
        );
        assert!(receipt["log_index"].as_u64().is_some());
        // Batched (the default): the entry as a JSON object — the log's entry, as the admin
        // plane serves its bytes — and its tlog-proof, which verifies those bytes offline with
        // the log key alone.
        assert_eq!(receipt["receipt"]["version"], 2, "{g:?}: {ok}");
        assert_eq!(receipt["receipt"]["log"]["index"], receipt["log_index"]);
        let proof = receipt["proof"].as_str().expect("a tlog-proof");
        assert!(proof.starts_with("c2sp.org/tlog-proof@v1\n"), "{proof}");
        let id = receipt["receipt_id"].as_str().unwrap();
        let logged = gw.admin_get(&format!("/v1/receipts/{id}")).send().await;
        assert_eq!(logged.json(), receipt["receipt"], "{g:?}: the logged entry");
        let dir = tempfile::tempdir().unwrap();
        let entry = save(dir.path(), "entry.json", &logged.body);
        let pf = save(dir.path(), "proof", proof.as_bytes());
        let vkey = gw.admin_get("/v1/log/vkey").send().await.text();
        let report = lap_verify_json(&[
            "receipt".as_ref(),
            entry.as_os_str(),
            "--proof".as_ref(),
            pf.as_os_str(),
            "--log-key".as_ref(),
            vkey.trim().as_ref(),
        ]);
        assert_eq!(report["ok"], true, "{g:?}: {report}");

        let before = up.hit_count("tools/call:pay").await;
        let big = agent(
            &gw,
            KEY_A,
            g,
            "call",
            &["pay", r#"{"amount": 5000, "to": "bob"}"#],
        )
        .await;
        assert_eq!(error_code(&big), Some("POLICY_NO_PERMIT"), "{g:?}: {big}");
        assert_eq!(big["error"]["code"], -32010);
        assert_eq!(big["http_status"], 403, "{big}");
        let mallory = agent(
            &gw,
            KEY_A,
            g,
            "call",
            &["pay", r#"{"amount": 5, "to": "mallory"}"#],
        )
        .await;
        assert_eq!(
            error_code(&mallory),
            Some("POLICY_FORBIDDEN"),
            "{g:?}: {mallory}"
        );
        let viewer = agent(
            &gw,
            KEY_B,
            g,
            "call",
            &["pay", r#"{"amount": 5, "to": "bob"}"#],
        )
        .await;
        assert_eq!(
            error_code(&viewer),
            Some("POLICY_NO_PERMIT"),
            "{g:?}: {viewer}"
        );
        assert_eq!(
            up.hit_count("tools/call:pay").await,
            before,
            "denied calls never reach the upstream"
        );
        let add = agent(&gw, KEY_B, g, "call", &["add", r#"{"a": 2, "b": 3}"#]).await;
        let add = mcp_ok(add);
        assert_eq!(add["text"], "5");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tool_gets_its_credential_never_the_agents() {
    let (_up, gw) = setup("").await;
    for g in Generation::BOTH {
        let who = agent(&gw, KEY_A, g, "call", &["whoami", "{}"]).await;
        let who = mcp_ok(who);
        let headers = &who["result"]["structuredContent"]["headers"];
        assert_eq!(headers["x-upstream-token"], UPSTREAM_TOKEN, "{who}");
        assert!(headers.get("x-api-key").is_none(), "{who}");
        assert!(headers.get("authorization").is_none(), "{who}");
        assert_eq!(headers["x-lap-agent-id"], "agent-a");
        // The upstream never sees the gateway's session id, only its own.
        if g == Generation::Legacy {
            let sid = headers["mcp-session-id"].as_str().unwrap_or("");
            assert!(!sid.starts_with("lap1."), "{who}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_shows_only_what_the_agent_could_use() {
    let (_up, gw) = setup("").await;
    for g in Generation::BOTH {
        let names = |v: &Value| -> Vec<String> {
            let mut n: Vec<String> = v["tools"]
                .as_array()
                .unwrap_or_else(|| panic!("{v}"))
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect();
            n.sort();
            n
        };
        let a = agent(&gw, KEY_A, g, "list-tools", &[]).await;
        let a = mcp_ok(a);
        assert_eq!(
            names(&a),
            ["add", "ask_name", "big", "pay", "slow_count", "whoami"],
            "{g:?}"
        );
        let b = agent(&gw, KEY_B, g, "list-tools", &[]).await;
        let b = mcp_ok(b);
        assert_eq!(
            names(&b),
            ["add", "whoami"],
            "{g:?}: a tool agent-b can never call is never listed"
        );
        let prompts = agent(&gw, KEY_B, g, "list-prompts", &[]).await;
        let prompts = mcp_ok(prompts);
        assert_eq!(prompts["prompts"], json!([]), "{g:?}");
    }
    // Per-agent lists are not for shared caches.
    let r = gw
        .post("/mcp/fx")
        .api_key(KEY_B)
        .header("MCP-Protocol-Version", "2026-07-28")
        .header("Mcp-Method", "tools/list")
        .header("Accept", "application/json, text/event-stream")
        .json(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"t","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("private, no-store"));
}

#[tokio::test(flavor = "multi_thread")]
async fn events_stream_through_one_by_one() {
    let (_up, gw) = setup("").await;
    for g in Generation::BOTH {
        let v = agent(&gw, KEY_A, g, "stream", &["5", "400"]).await;
        let v = mcp_ok(v);
        let progress = v["progress"].as_array().unwrap_or_else(|| panic!("{v}"));
        assert_eq!(progress.len(), 5, "{g:?}: {v}");
        // The first event reached the agent before the server even sent the last one: the
        // gateway relays events as they come, it does not wait for the stream to end.
        let first_seen = progress[0]["client_ms"].as_i64().unwrap();
        let last_sent = progress[4]["server_ms"].as_i64().unwrap();
        assert!(first_seen < last_sent, "{g:?}: {v}");
        assert_eq!(
            v["result"]["_meta"][META_RECEIPT]["receipt_id"]
                .as_str()
                .map(|s| &s[..5]),
            Some("rcpt_"),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn elicitation_reaches_the_agent_and_its_answer_the_server() {
    let (_up, gw) = setup("").await;
    for g in Generation::BOTH {
        let v = agent(&gw, KEY_A, g, "elicit", &["Ada"]).await;
        let v = mcp_ok(v);
        assert_eq!(v["text"], "hello Ada", "{g:?}: {v}");
        assert_eq!(v["elicitations"].as_array().map(Vec::len), Some(1), "{v}");
    }
}

/// A legacy `initialize` by hand: the gateway's session id.
async fn initialize(gw: &Gateway, key: &str) -> String {
    let r = gw
        .post("/mcp/fx")
        .api_key(key)
        .header("Accept", "application/json, text/event-stream")
        .json(br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sid = r
        .header("mcp-session-id")
        .expect("a session id")
        .to_string();
    assert!(sid.starts_with("lap1."), "the gateway's own id: {sid}");
    sid
}

fn legacy_list(gw: &Gateway, key: &str, sid: Option<&str>) -> Request {
    let mut r = gw
        .post("/mcp/fx")
        .api_key(key)
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-11-25");
    if let Some(sid) = sid {
        r = r.header("Mcp-Session-Id", sid);
    }
    r.json(br#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#)
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_belong_to_their_agent() {
    let (up, gw) = setup("").await;
    let sid = initialize(&gw, KEY_A).await;
    let ok = legacy_list(&gw, KEY_A, Some(&sid)).send().await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let before = up.hit_count("tools/list").await;
    // Another agent with a stolen session id: the session does not exist for it.
    let stolen = legacy_list(&gw, KEY_B, Some(&sid)).send().await;
    assert_eq!(stolen.status, 404, "{}", stolen.text());
    assert_eq!(stolen.json()["error"]["data"]["code"], "SESSION_NOT_FOUND");
    assert_eq!(stolen.json()["id"], 7, "the error answers the request's id");
    // A tampered id, and none at all.
    let mut forged = sid.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    assert_eq!(
        legacy_list(&gw, KEY_A, Some(&forged)).send().await.status,
        404
    );
    let missing = legacy_list(&gw, KEY_A, None).send().await;
    assert_eq!(missing.status, 400, "{}", missing.text());
    assert_eq!(missing.json()["error"]["data"]["code"], "SESSION_REQUIRED");
    assert_eq!(
        up.hit_count("tools/list").await,
        before,
        "refused before the upstream"
    );
    // A notification inside the session is relayed: 202, no body.
    let note = gw
        .post("/mcp/fx")
        .api_key(KEY_A)
        .header("Mcp-Session-Id", &sid)
        .header("MCP-Protocol-Version", "2025-11-25")
        .header("Accept", "application/json, text/event-stream")
        .json(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        .send()
        .await;
    assert_eq!(note.status, 202, "{}", note.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_works_on_every_replica_that_shares_the_key() {
    let up = McpUpstream::start(
        McpUpstreamOptions::new()
            .name("fx")
            .require_header("x-upstream-token", UPSTREAM_TOKEN),
    )
    .await;
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("mcp-session.key");
    write_private(&key_file, &"ab".repeat(32));
    let shared = format!("session_key_file = \"{}\"", key_file.display());
    let a = mcp_gateway(&up, &shared).start().await;
    let b = mcp_gateway(&up, &shared).start().await;
    let sid = initialize(&a, KEY_A).await;
    let r = legacy_list(&b, KEY_A, Some(&sid)).send().await;
    assert_eq!(
        r.status,
        200,
        "replica b opens replica a's session: {}",
        r.text()
    );
    // A replica with another key does not.
    let c = mcp_gateway(&up, "").start().await;
    assert_eq!(legacy_list(&c, KEY_A, Some(&sid)).send().await.status, 404);
}

fn modern_call(gw: &Gateway, method_header: &str, name_header: &str, body: &[u8]) -> Request {
    gw.post("/mcp/fx")
        .api_key(KEY_A)
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2026-07-28")
        .header("Mcp-Method", method_header)
        .header("Mcp-Name", name_header)
        .json(body)
}

const MODERN_ADD: &[u8] = br#"{"jsonrpc":"2.0","id":"m1","method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"t","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#;

#[tokio::test(flavor = "multi_thread")]
async fn headers_must_say_what_the_body_says() {
    let (up, gw) = setup("").await;
    let ok = modern_call(&gw, "tools/call", "add", MODERN_ADD)
        .send()
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let before = up.hit_count("tools/call:add").await;
    // The name an upstream could route on differs from the tool policy decided on.
    let r = modern_call(&gw, "tools/call", "pay", MODERN_ADD)
        .send()
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], -32020);
    assert_eq!(r.json()["error"]["data"]["code"], "HEADER_MISMATCH");
    assert_eq!(r.json()["id"], "m1");
    let r = modern_call(&gw, "tools/list", "add", MODERN_ADD)
        .send()
        .await;
    assert_eq!(r.json()["error"]["code"], -32020, "{}", r.text());
    // An unknown protocol version: 400 with the versions the gateway serves.
    let r = gw
        .post("/mcp/fx")
        .api_key(KEY_A)
        .header("MCP-Protocol-Version", "2099-01-01")
        .json(br#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{}}"#)
        .send()
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], -32022);
    assert_eq!(r.json()["error"]["data"]["supported"][0], "2026-07-28");
    assert_eq!(up.hit_count("tools/call:add").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_json_rpc_errors_and_the_gateway_keeps_serving() {
    let (up, gw) = setup("allowed_origins = [\"https://app.example\"]").await;
    let post = |body: &'static [u8]| gw.post("/mcp/fx").api_key(KEY_A).json(body);
    let cases: [(&[u8], u16, i64, &str); 4] = [
        (b"{not json", 400, -32700, "INVALID_JSON_BODY"),
        (
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            400,
            -32600,
            "JSONRPC_BATCH_REFUSED",
        ),
        (
            br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            400,
            -32600,
            "JSONRPC_INVALID",
        ),
        (
            br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":1,"a":2}}"#,
            400,
            -32600,
            "JSON_DUPLICATE_KEY",
        ),
    ];
    for (body, status, rpc, code) in cases {
        let r = post(body).send().await;
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], rpc, "{}", r.text());
        assert_eq!(r.json()["error"]["data"]["code"], code, "{}", r.text());
    }
    // No credential: 401 as JSON-RPC, with the challenge.
    let r = gw.post("/mcp/fx").json(MODERN_ADD).send().await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.json()["error"]["data"]["code"], "API_KEY_REQUIRED");
    // DNS rebinding: a page of another origin is refused; the allowed one passes.
    let r = modern_call(&gw, "tools/call", "add", MODERN_ADD)
        .header("Origin", "http://evil.example")
        .send()
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["data"]["code"], "ORIGIN_NOT_ALLOWED");
    let r = modern_call(&gw, "tools/call", "add", MODERN_ADD)
        .header("Origin", "https://APP.example")
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Unknown server, wrong method.
    let r = gw
        .post("/mcp/nope")
        .api_key(KEY_A)
        .json(MODERN_ADD)
        .send()
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["data"]["code"], "MCP_SERVER_NOT_FOUND");
    let r = gw
        .request("PUT", "/mcp/fx")
        .api_key(KEY_A)
        .json(MODERN_ADD)
        .send()
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST, DELETE"));
    // A modern GET: not part of the stateless protocol.
    let r = gw
        .get("/mcp/fx")
        .api_key(KEY_A)
        .header("MCP-Protocol-Version", "2026-07-28")
        .send()
        .await;
    assert_eq!(r.status, 405, "{}", r.text());
    // Still serving.
    assert_eq!(
        modern_call(&gw, "tools/call", "add", MODERN_ADD)
            .send()
            .await
            .status,
        200
    );
    drop(up);
}

#[tokio::test(flavor = "multi_thread")]
async fn caps_and_a_dead_upstream() {
    let up = McpUpstream::start(
        McpUpstreamOptions::new()
            .name("fx")
            .require_header("x-upstream-token", UPSTREAM_TOKEN),
    )
    .await;
    let gw = GatewayBuilder::new()
        .keys_file(&keys())
        .schema(&schema())
        .policy(POLICY)
        .env("FX_TOKEN", UPSTREAM_TOKEN)
        .extra_toml(&format!(
            "[mcp.servers.fx]\nupstream = \"{}\"\nmax_request_bytes = 2048\nmax_response_bytes = 4096\n\n\
             [mcp.servers.fx.credential]\nheader = \"X-Upstream-Token\"\nvalue_env = \"FX_TOKEN\"\n",
            up.url()
        ))
        .start()
        .await;
    // A request over the server's cap: 413, never forwarded.
    let padding = "x".repeat(4096);
    let big_body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"add","arguments":{{"a":1,"b":2}},"pad":"{padding}","_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}}}}"#
    );
    let r = modern_call(&gw, "tools/call", "add", big_body.as_bytes())
        .send()
        .await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["data"]["code"], "REQUEST_TOO_LARGE");
    // A response over the cap is cut off: the agent gets no result.
    for g in Generation::BOTH {
        let v = agent(&gw, KEY_A, g, "call", &["big", r#"{"n": 100000}"#]).await;
        assert!(
            v.get("error").is_some() && v.get("text").is_none(),
            "{g:?}: {v}"
        );
        let small = agent(&gw, KEY_A, g, "call", &["big", r#"{"n": 100}"#]).await;
        mcp_ok(small);
    }
    // The upstream goes away: a JSON-RPC error with a stable code.
    drop(up);
    let r = modern_call(&gw, "tools/call", "add", MODERN_ADD)
        .send()
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["data"]["code"], "UPSTREAM_UNAVAILABLE");
    assert_eq!(r.json()["id"], "m1");
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_receipts_verify_offline_with_the_rest() {
    let (_up, gw) = setup("").await;
    let mut receipt_ids = Vec::new();
    for g in Generation::BOTH {
        let ok = agent(&gw, KEY_A, g, "call", &["add", r#"{"a": 1, "b": 1}"#]).await;
        let ok = mcp_ok(ok);
        receipt_ids.push(
            ok["result"]["_meta"][META_RECEIPT]["receipt_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        let denied = agent(
            &gw,
            KEY_B,
            g,
            "call",
            &["pay", r#"{"amount": 1, "to": "x"}"#],
        )
        .await;
        assert_eq!(error_code(&denied), Some("POLICY_NO_PERMIT"));
        assert!(
            denied["error"]["data"]["receipt_id"].is_string(),
            "{denied}"
        );
    }
    // Each receipt names the MCP method and the tool it decided.
    for id in &receipt_ids {
        let r = gw.admin_get(&format!("/v1/receipts/{id}")).send().await;
        assert_eq!(r.status, 200);
        let payload = receipt_payload(&r.body);
        assert_eq!(payload["call"]["method"], "tools/call", "{payload}");
        assert_eq!(payload["call"]["tool"], "fx/add", "{payload}");
        assert!(payload["call"]["args_sha256"].is_string(), "{payload}");
    }
    let (_, size) = gw.settled_checkpoint().await;
    let pack = gw.audit_pack(&format!("to={size}")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = save(dir.path(), "mcp.tar", &pack);
    let verdict = verify_pack(&path, &[]);
    assert!(verdict.ok, "{}", verdict.summary());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stream_cancels_the_call_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, gw) = setup("").await;
    let body = br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"slow_count","arguments":{"steps":30,"delay_ms":200},"_meta":{"progressToken":"p1","io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"t","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let request = modern_call(&gw, "tools/call", "slow_count", body).to_bytes();
    let mut conn = tokio::net::TcpStream::connect(gw.data).await.unwrap();
    conn.write_all(&request).await.unwrap();
    // Wait for the first event to arrive, then walk away.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let got_event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the stream ended early: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(9).any(|w| w == b"progress\"") {
                break;
            }
        }
    })
    .await;
    assert!(
        got_event.is_ok(),
        "no event: {}",
        String::from_utf8_lossy(&seen)
    );
    drop(conn);
    // The upstream learns of it and stops: the call is cancelled, not finished.
    let cancelled = wait_until(Duration::from_secs(10), || async {
        up.hit_count("cancelled:slow_count").await == 1
    })
    .await;
    assert!(cancelled, "upstream: {}", up.hits().await);
    assert_eq!(up.hit_count("finished:slow_count").await, 0);
}
