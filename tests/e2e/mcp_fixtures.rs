//! The MCP fixtures (`tests/mcp/`) against each other, with no gateway in between: the SDK's
//! server and the SDK's client agree, in both protocol generations, on every scenario the
//! gateway's MCP tests use. So when one of those fails with the gateway in between, the
//! gateway is to blame, not the fixtures.

use lap_e2e::*;
use serde_json::{json, Value};

/// Runs a scenario straight against `up`, without extra headers, and expects success.
async fn ok(up: &McpUpstream, g: Generation, scenario: &str, args: &[&str]) -> Value {
    let reply = mcp_ok(mcp_client(&up.url(), &[], g, scenario, args).await);
    assert_generation(&reply, g);
    reply
}

/// The HTTP exchanges of a reply that POSTed a message.
fn posts(reply: &Value) -> Vec<&Value> {
    reply["http"]
        .as_array()
        .expect("an http log")
        .iter()
        .filter(|e| e["method"] == "POST")
        .collect()
}

/// The wire shows the generation asked for: a legacy client initializes and then sends the
/// session id it was given on every message; a modern one never initializes, has no session,
/// and names the method of every request in `Mcp-Method`.
#[track_caller]
fn assert_generation(reply: &Value, g: Generation) {
    assert_eq!(reply["protocol_version"], g.protocol_version(), "{reply:#}");
    let posts = posts(reply);
    match g {
        Generation::Legacy => {
            assert_eq!(posts[0]["rpc"], "initialize", "{reply:#}");
            let sid = posts[0]["session_id"].as_str().expect("an Mcp-Session-Id");
            assert!(!sid.is_empty());
            for e in &posts[1..] {
                assert_eq!(e["sent"]["mcp-session-id"], sid, "{reply:#}");
                assert_eq!(e["sent"]["mcp-protocol-version"], g.protocol_version());
            }
        }
        Generation::Modern | Generation::Auto => {
            for e in posts {
                assert_ne!(e["rpc"], "initialize", "{reply:#}");
                assert_eq!(e["sent"]["mcp-protocol-version"], "2026-07-28", "{reply:#}");
                assert_eq!(e["sent"]["mcp-method"], e["rpc"], "{reply:#}");
                assert!(e["sent"].get("mcp-session-id").is_none(), "{reply:#}");
                assert!(e["session_id"].is_null(), "{reply:#}");
            }
        }
    }
}

fn names<'a>(list: &'a Value, key: &str) -> Vec<&'a str> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|v| v[key].as_str().expect("a name"))
        .collect()
}

#[tokio::test]
async fn tools_prompts_and_resources_are_discovered_in_both_generations() {
    let up = McpUpstream::start(McpUpstreamOptions::new().name("alpha")).await;
    for g in Generation::BOTH {
        let tools = ok(&up, g, "list-tools", &[]).await;
        assert_eq!(
            names(&tools["tools"], "name"),
            ["add", "pay", "whoami", "slow_count", "ask_name", "big"]
        );
        let add = &tools["tools"][0]["inputSchema"];
        assert_eq!(add["properties"]["a"]["type"], "integer");
        assert_eq!(add["properties"]["b"]["type"], "integer");
        assert_eq!(add["required"], json!(["a", "b"]));
        let pay = &tools["tools"][1]["inputSchema"];
        assert_eq!(pay["properties"]["to"]["type"], "string");

        let prompts = ok(&up, g, "list-prompts", &[]).await;
        assert_eq!(names(&prompts["prompts"], "name"), ["greet"]);
        assert_eq!(prompts["prompts"][0]["arguments"][0]["name"], "name");
        let prompt = ok(&up, g, "get-prompt", &["greet", r#"{"name": "carol"}"#]).await;
        assert_eq!(
            prompt["prompt"]["messages"][0]["content"]["text"],
            "Please greet carol warmly."
        );

        let resources = ok(&up, g, "list-resources", &[]).await;
        assert_eq!(names(&resources["resources"], "uri"), ["res://motd"]);
        let motd = ok(&up, g, "read-resource", &["res://motd"]).await;
        assert_eq!(
            motd["resource"]["contents"][0]["text"],
            "message of the day from alpha"
        );

        let discover = ok(&up, g, "discover", &[]).await;
        match g {
            Generation::Legacy => {
                let init = &discover["initialize"];
                assert_eq!(init["protocolVersion"], "2025-11-25");
                assert_eq!(init["serverInfo"]["name"], "alpha");
                assert!(init["capabilities"]["tools"].is_object());
            }
            _ => {
                let d = &discover["discover"];
                assert!(d["supportedVersions"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("2026-07-28")));
                assert!(d["capabilities"]["tools"].is_object());
                assert_eq!(
                    d["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
                    "alpha"
                );
                assert_eq!(posts(&discover)[0]["rpc"], "server/discover");
            }
        }
    }
}

#[tokio::test]
async fn tools_are_called_in_both_generations() {
    let up = McpUpstream::start(McpUpstreamOptions::new().name("alpha")).await;
    for g in Generation::BOTH {
        let add = ok(&up, g, "call", &["add", r#"{"a": 2, "b": 3}"#]).await;
        assert_eq!(add["text"], "5");
        assert_eq!(add["result"]["structuredContent"], json!({"result": 5}));
        assert_eq!(add["result"]["isError"], false);
        let tool_call = posts(&add)
            .into_iter()
            .find(|e| e["rpc"] == "tools/call")
            .expect("a tools/call POST");
        if g == Generation::Modern {
            assert_eq!(tool_call["sent"]["mcp-name"], "add");
            // The result's _meta reaches the test verbatim (the gateway adds receipts there).
            assert_eq!(
                add["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
                "alpha"
            );
        }

        let pay = ok(&up, g, "call", &["pay", r#"{"amount": 50, "to": "bob"}"#]).await;
        assert_eq!(pay["text"], "paid 50 to bob");

        let big = ok(&up, g, "call", &["big", r#"{"n": 100000}"#]).await;
        assert_eq!(big["text"].as_str().unwrap().len(), 100_000);

        let unknown = ok(&up, g, "call", &["nope", "{}"]).await;
        assert_eq!(unknown["result"]["isError"], true);
    }
}

#[tokio::test]
async fn elicitation_works_in_both_generations() {
    let up = McpUpstream::start(McpUpstreamOptions::new()).await;
    for g in Generation::BOTH {
        let reply = ok(&up, g, "elicit", &["alice"]).await;
        assert_eq!(reply["text"], "hello alice");
        let asked = reply["elicitations"].as_array().unwrap();
        assert_eq!(asked.len(), 1, "{reply:#}");
        assert_eq!(asked[0]["message"], "What is your name?");
        assert_eq!(
            asked[0]["requestedSchema"]["properties"]["name"]["type"],
            "string"
        );
        let rpcs: Vec<&Value> = posts(&reply).iter().map(|e| &e["rpc"]).collect();
        let calls = rpcs.iter().filter(|r| **r == "tools/call").count();
        let answers = rpcs.iter().filter(|r| **r == "response").count();
        match g {
            // elicitation/create arrived on the call's SSE stream; the answer was POSTed back.
            Generation::Legacy => assert_eq!((calls, answers), (1, 1), "{reply:#}"),
            // InputRequiredResult, then the call again with the answer (MRTR).
            _ => assert_eq!((calls, answers), (2, 0), "{reply:#}"),
        }
    }
}

#[tokio::test]
async fn a_legacy_session_has_an_id_and_a_modern_one_has_none() {
    let up = McpUpstream::start(McpUpstreamOptions::new()).await;
    let legacy = ok(&up, Generation::Legacy, "session", &[]).await;
    let sid = legacy["session_id"].as_str().expect("a session id");
    assert!(sid.len() >= 16 && sid.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    let sent = legacy["session_ids_sent"].as_array().unwrap();
    assert!(
        !sent.is_empty() && sent.iter().all(|s| s == sid),
        "{legacy:#}"
    );
    assert_eq!(legacy["text"], "5");
    // The standalone GET stream, and DELETE at the end.
    let methods: Vec<&Value> = legacy["http"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["method"])
        .collect();
    assert!(methods.contains(&&json!("GET")), "{legacy:#}");
    assert_eq!(methods.last(), Some(&&json!("DELETE")), "{legacy:#}");

    let modern = ok(&up, Generation::Modern, "session", &[]).await;
    assert!(modern["session_id"].is_null(), "{modern:#}");
    let sent = modern["session_ids_sent"].as_array().unwrap();
    assert!(sent.iter().all(Value::is_null), "{modern:#}");
    assert_eq!(modern["text"], "5");

    // Left to choose, the SDK client picks the modern generation on a dual-era server.
    let auto = ok(
        &up,
        Generation::Auto,
        "call",
        &["add", r#"{"a": 1, "b": 1}"#],
    )
    .await;
    assert_eq!(posts(&auto)[0]["rpc"], "server/discover");
    assert_eq!(auto["text"], "2");
}

#[tokio::test]
async fn whoami_shows_the_headers_the_server_received() {
    let up = McpUpstream::start(McpUpstreamOptions::new().name("beta")).await;
    let sent = [
        ("X-Tool-Token", "tok-1"),
        ("Authorization", "Bearer agent-key"),
    ];
    for g in Generation::BOTH {
        let reply = mcp_ok(mcp_client(&up.url(), &sent, g, "call", &["whoami", "{}"]).await);
        assert_generation(&reply, g);
        let seen = &reply["result"]["structuredContent"];
        assert_eq!(seen["server"], "beta");
        assert_eq!(seen["protocol_version"], g.protocol_version());
        let headers = &seen["headers"];
        assert_eq!(headers["x-tool-token"], "tok-1", "{seen:#}");
        assert_eq!(headers["authorization"], "Bearer agent-key", "{seen:#}");
        assert_eq!(headers["mcp-protocol-version"], g.protocol_version());
        assert!(seen["raw_headers"]
            .as_array()
            .unwrap()
            .contains(&json!(["x-tool-token", "tok-1"])));
        match g {
            Generation::Legacy => assert!(headers["mcp-session-id"].is_string(), "{seen:#}"),
            _ => {
                assert_eq!(headers["mcp-method"], "tools/call");
                assert_eq!(headers["mcp-name"], "whoami");
                assert!(headers.get("mcp-session-id").is_none());
            }
        }
    }
}

#[tokio::test]
async fn require_header_refuses_requests_without_it() {
    let up = McpUpstream::start(McpUpstreamOptions::new().require_header("X-Tool-Token", "s3cret"))
        .await;
    for g in Generation::BOTH {
        for (headers, status) in [
            (&[][..], 401),
            (&[("X-Tool-Token", "wrong")][..], 403),
            (
                &[("x-tool-token", "s3cret"), ("X-Tool-Token", "s3cret")][..],
                403,
            ),
        ] {
            let reply = mcp_client(&up.url(), headers, g, "list-tools", &[]).await;
            assert!(reply["error"]["code"].is_i64(), "{reply:#}");
            assert_eq!(reply["http_status"], status, "{reply:#}");
            assert!(reply.get("tools").is_none());
        }
        let sent = [("X-Tool-Token", "s3cret")];
        let reply = mcp_ok(mcp_client(&up.url(), &sent, g, "call", &["whoami", "{}"]).await);
        assert_eq!(
            reply["result"]["structuredContent"]["headers"]["x-tool-token"],
            "s3cret"
        );
    }
}

#[tokio::test]
async fn progress_streams_event_by_event() {
    const STEPS: u64 = 5;
    const DELAY_MS: u64 = 300;
    let up = McpUpstream::start(McpUpstreamOptions::new()).await;
    for g in Generation::BOTH {
        let args = [STEPS.to_string(), DELAY_MS.to_string()];
        let reply = ok(&up, g, "stream", &[&args[0], &args[1]]).await;
        assert_eq!(reply["text"], format!("counted {STEPS}"));
        let progress = reply["progress"].as_array().unwrap();
        assert_eq!(progress.len() as u64, STEPS, "{reply:#}");
        assert_eq!(reply["logs"].as_array().unwrap().len() as u64, STEPS);
        let ms = |v: &Value| v.as_u64().expect("a time in ms");
        for (i, p) in progress.iter().enumerate() {
            assert_eq!(p["progress"], (i + 1) as f64);
            let (sent, got) = (ms(&p["server_ms"]), ms(&p["client_ms"]));
            // One clock (this machine's): an event arrives after it was sent, ms rounding aside.
            assert!(got + 2 >= sent, "step {i}: {reply:#}");
            if i > 0 {
                assert!(sent >= ms(&progress[i - 1]["server_ms"]) + DELAY_MS - 10);
            }
        }
        // Event by event: the first arrived before the server even sent the last one.
        let first_got = ms(&progress[0]["client_ms"]);
        let last_sent = ms(&progress[progress.len() - 1]["server_ms"]);
        assert!(first_got + DELAY_MS <= last_sent, "{reply:#}");
        let call = posts(&reply)
            .into_iter()
            .find(|e| e["rpc"] == "tools/call")
            .unwrap();
        assert_eq!(call["content_type"], "text/event-stream");
    }
}

#[tokio::test]
async fn json_response_answers_without_a_stream() {
    let up = McpUpstream::start(McpUpstreamOptions::new().json_response()).await;
    for g in Generation::BOTH {
        let reply = ok(&up, g, "call", &["add", r#"{"a": 20, "b": 22}"#]).await;
        assert_eq!(reply["text"], "42");
        for e in posts(&reply) {
            let ct = e["content_type"].as_str().unwrap_or("");
            assert!(
                e["status"] == 202 || ct.starts_with("application/json"),
                "{reply:#}"
            );
        }
    }
}

#[tokio::test]
async fn an_upstream_stops_when_dropped() {
    let mut up = McpUpstream::start(McpUpstreamOptions::new()).await;
    assert!(up.is_running());
    let port = up.port();
    assert!(std::net::TcpStream::connect(loopback(port)).is_ok());
    drop(up);
    assert!(std::net::TcpStream::connect(loopback(port)).is_err());
}
