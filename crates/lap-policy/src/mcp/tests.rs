use super::*;
use crate::{parse_json_args, Outcome, PolicyEngine, DEFAULT_SCHEMA, MCP_SCHEMA, REST_SCHEMA};

/// The default schema with fields declared in `McpArgs` (as an operator would).
fn schema_with_mcp_args() -> String {
    let mcp = MCP_SCHEMA.replace(
        "type McpArgs = {};",
        "type McpArgs = { amount?: Long, to?: String, price?: decimal };",
    );
    assert_ne!(mcp, MCP_SCHEMA, "the MCP schema declares McpArgs");
    format!("{REST_SCHEMA}\n{mcp}")
}

fn load(policies: &str) -> PolicyEngine {
    PolicyEngine::load(policies, Some(&schema_with_mcp_args()), &[]).unwrap()
}

fn groups(g: &[&str]) -> Vec<String> {
    g.iter().map(|s| s.to_string()).collect()
}

fn req<'a>(
    groups: &'a [String],
    server: &'a str,
    method: &'a str,
    target: McpTarget<'a>,
) -> McpRequest<'a> {
    McpRequest {
        agent_id: "agent-1",
        groups,
        server,
        method,
        target,
        generation: McpGeneration::Legacy,
        protocol_version: "2025-06-18",
        auth: crate::AuthContext::ApiKey { key_id: Some("k1") },
        args: None,
        args_digest: None,
    }
}

fn candidate<'a>(
    groups: &'a [String],
    server: &'a str,
    method: &'a str,
    target: McpTarget<'a>,
) -> McpCandidate<'a> {
    req(groups, server, method, target).candidate()
}

fn args(json: &str) -> serde_json::Value {
    parse_json_args(json.as_bytes()).unwrap()
}

fn digest(tag: &str) -> Option<[u8; 32]> {
    use sha2::Digest;
    Some(sha2::Sha256::digest(tag.as_bytes()).into())
}

const POLICIES: &str = r#"
@id("ops-session-discover")
permit (principal in Group::"ops",
        action in [Action::"mcp:session", Action::"mcp:discover"],
        resource == McpServer::"weather");

@id("ops-forecast")
permit (principal in Group::"ops", action == Action::"tools/call",
        resource == McpTool::"weather/forecast");

@id("ops-summary-prompt")
permit (principal in Group::"ops", action == Action::"prompts/get", resource in McpServer::"weather")
when { context has name && context.name == "summary" };

@id("ops-public-docs")
permit (principal in Group::"ops", action in Action::"mcp:call", resource in McpServer::"docs")
when { context has uri && context.uri like "file:///public/*" };

@id("payers-small")
permit (principal in Group::"payers", action == Action::"tools/call", resource == McpTool::"bank/pay")
when { context has args && context.args has amount && context.args.amount <= 100 };

@id("everyone-bank")
permit (principal, action == Action::"tools/call", resource in McpServer::"bank")
when { context has name && context.name like "view_*" };

@id("no-delete-all")
forbid (principal, action == Action::"tools/call", resource)
when { context has name && context.name == "delete_all" };

@id("ops-all-bank")
permit (principal in Group::"ops", action, resource in McpServer::"bank");

@id("custom-method")
permit (principal in Group::"ops", action == Action::"mcp:other", resource == McpServer::"weather")
when { context.method == "x/custom" };
"#;

fn engine() -> PolicyEngine {
    load(POLICIES)
}

#[test]
fn default_schema_is_rest_then_mcp() {
    assert!(DEFAULT_SCHEMA.starts_with(REST_SCHEMA));
    assert!(DEFAULT_SCHEMA.ends_with(MCP_SCHEMA));
    let e = PolicyEngine::load(
        r#"permit(principal, action == Action::"ping", resource == McpServer::"s");"#,
        None,
        &[],
    )
    .unwrap();
    assert_eq!(e.mcp_unavailable(), None);
    let ping = e.decide_mcp(req(&[], "s", "ping", McpTarget::Server));
    assert_eq!(ping.outcome, Outcome::Allow);
}

/// Every known method is declared in the default schema as its own action, in its group,
/// applying to the resource type of its target kind; `mcp:other` applies to servers.
#[test]
fn method_table_matches_the_schema() {
    let (schema, _) = cedar_policy::Schema::from_cedarschema_str(DEFAULT_SCHEMA).unwrap();
    let actions = schema.action_entities().unwrap();
    let uid =
        |id: &str| EntityUid::from_type_name_and_id("Action".parse().unwrap(), EntityId::new(id));
    let mut seen = HashSet::new();
    for m in MCP_METHODS {
        assert!(seen.insert(m.name), "{} listed twice", m.name);
        assert_eq!(mcp_action(m.name), m.name);
        let parents: Vec<EntityUid> = actions.ancestors(&uid(m.name)).unwrap().cloned().collect();
        assert_eq!(parents, vec![uid(m.group.action())], "{}", m.name);
        let want = match m.target {
            McpTargetKind::Server => "McpServer",
            McpTargetKind::Tool => "McpTool",
            McpTargetKind::Prompt => "McpPrompt",
            McpTargetKind::Resource => "McpResource",
        };
        let resources: Vec<String> = schema
            .resources_for_action(&uid(m.name))
            .unwrap()
            .map(ToString::to_string)
            .collect();
        assert_eq!(resources, vec![want.to_string()], "{}", m.name);
    }
    let other: Vec<String> = schema
        .resources_for_action(&uid(MCP_OTHER))
        .unwrap()
        .map(ToString::to_string)
        .collect();
    assert_eq!(other, vec!["McpServer".to_string()]);
    // Group names, `mcp:other` and REST methods are not known methods.
    for name in [
        "mcp:call",
        "mcp:discover",
        "mcp:session",
        MCP_OTHER,
        "GET",
        "Tools/Call",
    ] {
        assert_eq!(mcp_action(name), MCP_OTHER, "{name}");
        assert_eq!(mcp_target_kind(name), McpTargetKind::Server);
    }
}

#[test]
fn session_and_discovery_on_a_server() {
    let e = engine();
    let ops = groups(&["ops"]);
    for method in [
        "initialize",
        "ping",
        "mcp:stream",
        "mcp:end",
        "tools/list",
        "server/discover",
    ] {
        let d = e.decide_mcp(req(&ops, "weather", method, McpTarget::Server));
        assert_eq!(d.outcome, Outcome::Allow, "{method}");
        assert_eq!(d.policy_ids, vec!["ops-session-discover"]);
        // Another server, another principal: deny by default.
        let d = e.decide_mcp(req(&ops, "docs", method, McpTarget::Server));
        assert_eq!(d.outcome, Outcome::NoPermit, "{method}");
        let d = e.decide_mcp(req(&[], "weather", method, McpTarget::Server));
        assert_eq!(d.outcome, Outcome::NoPermit, "{method}");
    }
    // Session and discovery do not include calls.
    let d = e.decide_mcp(req(
        &ops,
        "weather",
        "completion/complete",
        McpTarget::Server,
    ));
    assert_eq!(d.outcome, Outcome::NoPermit);
}

#[test]
fn each_target_kind() {
    let e = engine();
    let ops = groups(&["ops"]);
    let tool = |t| e.decide_mcp(req(&ops, "weather", "tools/call", McpTarget::Tool(t)));
    assert_eq!(tool("forecast").outcome, Outcome::Allow);
    assert_eq!(tool("forecast").policy_ids, vec!["ops-forecast"]);
    assert_eq!(tool("radar").outcome, Outcome::NoPermit);

    let prompt = |p| e.decide_mcp(req(&ops, "weather", "prompts/get", McpTarget::Prompt(p)));
    assert_eq!(prompt("summary").outcome, Outcome::Allow);
    assert_eq!(prompt("other").outcome, Outcome::NoPermit);
    // A tool of the same name is another entity.
    assert_eq!(
        e.decide_mcp(req(
            &ops,
            "weather",
            "tools/call",
            McpTarget::Tool("summary")
        ))
        .outcome,
        Outcome::NoPermit
    );

    // `resource in McpServer::"docs"` covers the server's resources, for every call method.
    for method in [
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
    ] {
        let r = |u| e.decide_mcp(req(&ops, "docs", method, McpTarget::Resource(u)));
        assert_eq!(
            r("file:///public/a.txt").outcome,
            Outcome::Allow,
            "{method}"
        );
        assert_eq!(
            r("file:///private/a.txt").outcome,
            Outcome::NoPermit,
            "{method}"
        );
    }
    // The same URI on another server is another resource.
    let d = e.decide_mcp(req(
        &ops,
        "weather",
        "resources/read",
        McpTarget::Resource("file:///public/a.txt"),
    ));
    assert_eq!(d.outcome, Outcome::NoPermit);
}

#[test]
fn arguments_drive_decisions() {
    let e = engine();
    assert!(e.uses_args());
    let payers = groups(&["payers"]);
    let mut r = req(&payers, "bank", "tools/call", McpTarget::Tool("pay"));
    let small = args(r#"{"amount": 50, "to": "bob", "memo": null}"#);
    let big = args(r#"{"amount": 500}"#);
    // Twice each: the second answer comes from the memo and must agree.
    for _ in 0..2 {
        r.args = Some(&small);
        r.args_digest = digest("small");
        assert_eq!(e.decide_mcp(r.clone()).outcome, Outcome::Allow);
        r.args = Some(&big);
        r.args_digest = digest("big");
        assert_eq!(e.decide_mcp(r.clone()).outcome, Outcome::NoPermit);
        r.args = Some(&big);
        r.args_digest = None;
        assert_eq!(e.decide_mcp(r.clone()).outcome, Outcome::NoPermit);
        r.args = None;
        r.args_digest = None;
        assert_eq!(e.decide_mcp(r.clone()).outcome, Outcome::NoPermit);
    }
    // A string where the schema says Long: a runtime type error, which denies.
    let wrong = args(r#"{"amount": "50"}"#);
    r.args = Some(&wrong);
    let d = e.decide_mcp(r.clone());
    assert_eq!(d.outcome, Outcome::EvaluationError);
    assert!(
        d.errors.iter().any(|m| m.contains("payers-small")),
        "{:?}",
        d.errors
    );
}

#[test]
fn forbid_wins() {
    let e = engine();
    let ops = groups(&["ops"]);
    // "ops-all-bank" permits everything on the bank server, but the forbid names the tool.
    let d = e.decide_mcp(req(
        &ops,
        "bank",
        "tools/call",
        McpTarget::Tool("delete_all"),
    ));
    assert_eq!(d.outcome, Outcome::Forbidden);
    assert_eq!(d.policy_ids, vec!["no-delete-all"]);
    let d = e.decide_mcp(req(&ops, "bank", "tools/call", McpTarget::Tool("balance")));
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(d.policy_ids, vec!["ops-all-bank"]);
}

#[test]
fn unknown_methods_are_mcp_other_and_need_an_explicit_permit() {
    let e = engine();
    let ops = groups(&["ops"]);
    let d = e.decide_mcp(req(&ops, "weather", "x/custom", McpTarget::Server));
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(d.policy_ids, vec!["custom-method"]);
    // Permits on the groups do not reach other methods, nor does naming a group or an
    // action as the method.
    for method in [
        "x/other",
        "notifications/initialized",
        "mcp:session",
        "mcp:other",
        "GET",
    ] {
        let d = e.decide_mcp(req(&ops, "weather", method, McpTarget::Server));
        assert_eq!(d.outcome, Outcome::NoPermit, "{method}");
    }
    // An unscoped action covers mcp:other too (Cedar semantics; see docs/policy.md).
    let d = e.decide_mcp(req(&ops, "bank", "x/anything", McpTarget::Server));
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(d.policy_ids, vec!["ops-all-bank"]);
}

#[test]
fn context_carries_generation_and_version() {
    let e = load(
        r#"@id("modern-only")
        permit (principal, action == Action::"tools/call", resource)
        when { context.generation == "modern" && context.protocol_version == "2026-07-28"
               && context.server == "s" && context.method == "tools/call" };"#,
    );
    let mut r = req(&[], "s", "tools/call", McpTarget::Tool("t"));
    assert_eq!(e.decide_mcp(r.clone()).outcome, Outcome::NoPermit);
    r.generation = McpGeneration::Modern;
    assert_eq!(e.decide_mcp(r.clone()).outcome, Outcome::NoPermit);
    r.protocol_version = "2026-07-28";
    assert_eq!(e.decide_mcp(r.clone()).outcome, Outcome::Allow);
}

#[test]
fn requests_cedar_cannot_express_are_refused_with_a_reason() {
    let e = engine();
    let ops = groups(&["ops"]);
    let cases: [(McpRequest<'_>, &str); 5] = [
        (
            req(&ops, "weather", "tools/call", McpTarget::Server),
            "MCP_TARGET_MISMATCH",
        ),
        (
            req(&ops, "weather", "ping", McpTarget::Tool("forecast")),
            "MCP_TARGET_MISMATCH",
        ),
        (
            req(&ops, "weather", "x/custom", McpTarget::Prompt("p")),
            "MCP_TARGET_MISMATCH",
        ),
        (
            req(&ops, "", "ping", McpTarget::Server),
            "MCP_INVALID_SERVER",
        ),
        (
            // "weather/x" + "forecast" would read as server "weather", tool "x/forecast".
            req(&ops, "weather/x", "tools/call", McpTarget::Tool("forecast")),
            "MCP_INVALID_SERVER",
        ),
    ];
    for (r, code) in cases {
        let err = r.check().unwrap_err();
        assert_eq!(err.code(), code);
        let d = e.decide_mcp(r.clone());
        assert_eq!(d.outcome, Outcome::EvaluationError);
        assert_eq!(d.errors, vec![err.to_string()]);
        assert!(d.policy_ids.is_empty());
        assert!(!e.could_permit_mcp(r.candidate()));
    }
    // Arguments must be an object, whether or not a policy reads them.
    let list = args("[1, 2]");
    for e in [engine(), load(r#"permit(principal, action, resource);"#)] {
        let mut r = req(&ops, "weather", "tools/call", McpTarget::Tool("forecast"));
        r.args = Some(&list);
        r.args_digest = digest("list");
        assert_eq!(r.check().unwrap_err().code(), "MCP_ARGS_NOT_OBJECT");
        let d = e.decide_mcp(r.clone());
        assert_eq!(d.outcome, Outcome::EvaluationError);
        // The refusal is not memoised under the inputs it shares with a valid request.
        r.args = None;
        assert_eq!(e.decide_mcp(r).outcome, Outcome::Allow);
    }
}

#[test]
fn memo_keeps_requests_apart() {
    let e = engine();
    let ops = groups(&["ops"]);
    let payers = groups(&["payers"]);
    let small = args(r#"{"amount": 50}"#);
    let big = args(r#"{"amount": 500}"#);
    let with = |g, a, d: &str| McpRequest {
        args: Some(a),
        args_digest: digest(d),
        ..req(g, "bank", "tools/call", McpTarget::Tool("pay"))
    };
    for round in 0..2 {
        // Different argument digests: different entries.
        assert!(e.decide_mcp(with(&payers, &small, "a")).outcome.is_allow());
        assert!(!e.decide_mcp(with(&payers, &big, "b")).outcome.is_allow());
        // Different groups, same everything else.
        assert!(e.decide_mcp(with(&ops, &big, "b")).outcome.is_allow());
        // Different targets (kind or name), same name.
        let ops_req = |m, t| e.decide_mcp(req(&ops, "weather", m, t)).outcome.clone();
        assert_eq!(
            ops_req("tools/call", McpTarget::Tool("forecast")),
            Outcome::Allow
        );
        assert_eq!(
            ops_req("tools/call", McpTarget::Tool("radar")),
            Outcome::NoPermit
        );
        assert_eq!(
            ops_req("prompts/get", McpTarget::Prompt("forecast")),
            Outcome::NoPermit
        );
        assert_eq!(
            ops_req("prompts/get", McpTarget::Prompt("summary")),
            Outcome::Allow
        );
        // Different servers, same tool name.
        let other = e.decide_mcp(req(&ops, "docs", "tools/call", McpTarget::Tool("forecast")));
        assert_eq!(other.outcome, Outcome::NoPermit);
        // Same inputs, second round: answered from the memo, nothing added.
        assert_eq!(e.mcp_decisions.len(), 8, "round {round}");
    }
    // A memoised answer is the same decision.
    let a = e.decide_mcp(with(&payers, &small, "a"));
    let b = e.decide_mcp(with(&payers, &small, "a"));
    assert!(Arc::ptr_eq(&a, &b));
    // Arguments without a digest are never memoised.
    let before = e.mcp_decisions.len();
    let mut r = with(&payers, &small, "a");
    r.args_digest = None;
    assert!(e.decide_mcp(r).outcome.is_allow());
    assert_eq!(e.mcp_decisions.len(), before);
}

/// When no policy reads arguments, they are neither converted nor part of the memo key.
#[test]
fn arguments_are_ignored_when_no_policy_reads_them() {
    let e =
        load(r#"permit(principal, action == Action::"tools/call", resource == McpTool::"s/t");"#);
    assert!(!e.uses_args());
    let a = args(r#"{"amount": 1}"#);
    let b = args(r#"{"amount": 2}"#);
    let mut r = req(&[], "s", "tools/call", McpTarget::Tool("t"));
    r.args = Some(&a);
    r.args_digest = digest("a");
    let first = e.decide_mcp(r.clone());
    r.args = Some(&b);
    r.args_digest = None;
    let second = e.decide_mcp(r);
    assert!(first.outcome.is_allow());
    assert!(Arc::ptr_eq(&first, &second));
}

#[test]
fn uses_args_counts_mcp_policies() {
    let reads = load(
        r#"permit(principal, action == Action::"tools/call", resource)
           when { context has args && context.args has to && context.args.to == "bob" };"#,
    );
    assert!(reads.uses_args());
    let names = load(
        r#"permit(principal, action == Action::"tools/call", resource)
           when { context has name && context.name == "t" };"#,
    );
    assert!(!names.uses_args());
    // Escapes cannot hide it either (decided on the parsed policy).
    let escaped = load(
        r#"permit(principal, action == Action::"tools/call", resource)
           when { context has "\u{61}rgs" && context["\u{61}rgs"] has to };"#,
    );
    assert!(escaped.uses_args());
}

/// The discovery truth table (see `PolicyEngine::could_permit_mcp`).
#[test]
fn could_permit_truth_table() {
    let e = load(
        r#"
@id("open") permit (principal in Group::"ops", action == Action::"tools/call", resource == McpTool::"s/open");
@id("small") permit (principal in Group::"ops", action == Action::"tools/call", resource == McpTool::"s/pay")
when { context has args && context.args has amount && context.args.amount <= 100 };
@id("admins") permit (principal in Group::"admins", action == Action::"tools/call", resource == McpTool::"s/admin");
@id("all-s") permit (principal in Group::"ops", action == Action::"tools/call", resource in McpServer::"s")
when { context has name && context.name like "f_*" };
@id("nuke") forbid (principal, action, resource == McpTool::"s/f_nuke");
@id("big") forbid (principal, action, resource == McpTool::"s/f_transfer")
when { context has args && context.args has amount && context.args.amount > 1000 };
@id("args-only") forbid (principal, action, resource == McpTool::"s/f_bare")
when { context has args };
@id("broken") permit (principal in Group::"ops", action == Action::"tools/call", resource == McpTool::"s/broken")
when { 9223372036854775807 + 1 > 0 };
@id("mixed-broken") permit (principal in Group::"ops", action == Action::"tools/call", resource == McpTool::"s/mixed")
when { 9223372036854775807 + 1 > 0 };
@id("mixed-args") permit (principal in Group::"ops", action == Action::"tools/call", resource == McpTool::"s/mixed")
when { context has args && context.args has amount && context.args.amount <= 5 };
@id("broken-forbid") forbid (principal, action, resource == McpTool::"s/f_fragile")
when { 9223372036854775807 + 1 > 0 };
@id("prompt") permit (principal in Group::"ops", action == Action::"prompts/get", resource == McpPrompt::"s/hello");
@id("res") permit (principal in Group::"ops", action == Action::"resources/read", resource in McpServer::"s")
when { context has uri && context.uri like "file:///pub/*" };
"#,
    );
    let ops = groups(&["ops"]);
    let admins = groups(&["admins"]);
    let tool = |g, t| e.could_permit_mcp(candidate(g, "s", "tools/call", McpTarget::Tool(t)));
    let table: &[(&str, bool, &str)] = &[
        ("open", true, "unconditional permit"),
        ("pay", true, "permit conditional on arguments"),
        ("admin", false, "permit for another group"),
        ("f_other", true, "permit on a name pattern"),
        ("f_nuke", false, "unconditional forbid"),
        ("f_transfer", true, "forbid conditional on arguments"),
        (
            "f_bare",
            true,
            "forbid only when arguments are sent: callable without",
        ),
        ("broken", false, "permit that errors"),
        (
            "mixed",
            false,
            "permit that errors beside one on arguments: every call errors",
        ),
        (
            "f_fragile",
            false,
            "forbid that errors: every call is denied",
        ),
        ("unknown", false, "no policy"),
    ];
    for (i, (t, want, why)) in table.iter().enumerate() {
        assert_eq!(tool(&ops, t), *want, "{t}: {why}");
        // Memoised: the same answer again, and one entry per distinct candidate.
        assert_eq!(tool(&ops, t), *want, "{t}: {why} (memo)");
        assert_eq!(e.mcp_listings.len(), i + 1);
    }
    assert!(tool(&admins, "admin"));
    assert!(!tool(&admins, "open"));
    assert!(!tool(&[], "open"));
    // The calls themselves agree with the listing where arguments do not matter.
    let call = |t| e.decide_mcp(req(&ops, "s", "tools/call", McpTarget::Tool(t)));
    assert_eq!(call("broken").outcome, Outcome::EvaluationError);
    let few = args(r#"{"amount": 1}"#);
    let mixed = e.decide_mcp(McpRequest {
        args: Some(&few),
        ..req(&ops, "s", "tools/call", McpTarget::Tool("mixed"))
    });
    assert_eq!(mixed.outcome, Outcome::EvaluationError);
    assert_eq!(call("f_fragile").outcome, Outcome::EvaluationError);
    assert_eq!(call("f_nuke").outcome, Outcome::Forbidden);
    assert_eq!(call("pay").outcome, Outcome::NoPermit);
    // Prompts and resources.
    let prompt = |p| e.could_permit_mcp(candidate(&ops, "s", "prompts/get", McpTarget::Prompt(p)));
    assert!(prompt("hello"));
    assert!(!prompt("open"));
    let res = |u| {
        e.could_permit_mcp(candidate(
            &ops,
            "s",
            "resources/read",
            McpTarget::Resource(u),
        ))
    };
    assert!(res("file:///pub/x"));
    assert!(!res("file:///priv/x"));
    // Another server: nothing.
    assert!(!e.could_permit_mcp(candidate(&ops, "t", "tools/call", McpTarget::Tool("open"))));
}

/// Without a policy on arguments, discovery is the decision without arguments.
#[test]
fn could_permit_without_argument_policies() {
    let e = load(
        r#"permit (principal in Group::"ops", action == Action::"tools/call", resource in McpServer::"s");
           forbid (principal, action, resource == McpTool::"s/no");"#,
    );
    assert!(!e.uses_args());
    let ops = groups(&["ops"]);
    assert!(e.could_permit_mcp(candidate(&ops, "s", "tools/call", McpTarget::Tool("yes"))));
    assert!(!e.could_permit_mcp(candidate(&ops, "s", "tools/call", McpTarget::Tool("no"))));
    assert!(!e.could_permit_mcp(candidate(&[], "s", "tools/call", McpTarget::Tool("yes"))));
}

#[test]
fn schema_validation_rejects_undeclared_mcp_names() {
    for policy in [
        r#"permit(principal, action == Action::"tools/cal", resource);"#,
        r#"permit(principal, action == Action::"notifications/initialized", resource);"#,
        r#"permit(principal, action == Action::"tools/call", resource == McpTol::"s/t");"#,
        r#"permit(principal, action == Action::"tools/call", resource) when { context.tool == "t" };"#,
        // Strict: an optional attribute needs `has`.
        r#"permit(principal, action == Action::"tools/call", resource) when { context.name == "t" };"#,
    ] {
        for schema in [None, Some(schema_with_mcp_args())] {
            let err = PolicyEngine::load(policy, schema.as_deref(), &[]).unwrap_err();
            assert!(matches!(err, PolicyError::Validation(_)), "{policy}: {err}");
        }
    }
}

/// A policy set written for REST before MCP existed (an unscoped policy on REST-only context)
/// still loads on the default schema, for REST alone; MCP requests are then refused.
#[test]
fn rest_only_policies_load_without_mcp() {
    let legacy = r#"
@id("readers") permit(principal in Group::"readers", action in Action::"read", resource);
@id("no-admin") forbid(principal, action, resource) when { context.path like "/admin*" };
"#;
    let e = PolicyEngine::load(legacy, None, &["t".into()]).unwrap();
    let why = e.mcp_unavailable().unwrap();
    assert_eq!(why.code(), "MCP_POLICIES_REST_ONLY");
    assert!(why.to_string().contains("path"), "{why}");
    // REST works as before, and the digest is over the schema in force (the REST part).
    let readers = groups(&["readers"]);
    let rest = e.decide(crate::DecisionRequest {
        agent_id: "a",
        groups: &readers,
        method: "GET",
        tool: "t",
        path: "/x",
        query: "",
        body_size: 0,
        args: None,
        args_digest: None,
        auth: crate::AuthContext::ApiKey { key_id: Some("k1") },
    });
    assert!(rest.outcome.is_allow());
    let same = PolicyEngine::load(legacy, Some(REST_SCHEMA), &["t".into()]).unwrap();
    assert_eq!(e.digest_hex(), same.digest_hex());
    // MCP: refused with the reason, hidden from discovery.
    let d = e.decide_mcp(req(&readers, "s", "ping", McpTarget::Server));
    assert_eq!(d.outcome, Outcome::EvaluationError);
    assert_eq!(
        d.errors,
        ["MCP is unavailable in the policy in force (MCP_POLICIES_REST_ONLY)"]
    );
    assert!(!e.could_permit_mcp(candidate(&readers, "s", "ping", McpTarget::Server)));

    // Guarded, the same forbid holds for REST and validates for MCP.
    let guarded = r#"
@id("readers") permit(principal in Group::"readers", action in Action::"read", resource);
@id("no-admin") forbid(principal, action, resource) when { context has path && context.path like "/admin*" };
"#;
    let e = PolicyEngine::load(guarded, None, &["t".into()]).unwrap();
    assert_eq!(e.mcp_unavailable(), None);
    assert_ne!(e.digest_hex(), same.digest_hex());
    // Policies that name MCP and fail validation are an error, not a REST-only load.
    let err = PolicyEngine::load(
        &format!("{legacy}\npermit(principal, action == Action::\"ping\", resource);"),
        None,
        &[],
    )
    .unwrap_err();
    assert!(matches!(err, PolicyError::Validation(_)), "{err}");
}

#[test]
fn operator_schemas_declare_all_of_mcp_or_none() {
    // None: a REST-only engine.
    let e = PolicyEngine::load(
        "permit(principal, action, resource);",
        Some(REST_SCHEMA),
        &[],
    )
    .unwrap();
    assert_eq!(e.mcp_unavailable(), Some(&McpUnavailable::NotDeclared));
    let d = e.decide_mcp(req(&[], "s", "ping", McpTarget::Server));
    assert_eq!(d.outcome, Outcome::EvaluationError);

    // Some but not all.
    let partial = format!(
        "{REST_SCHEMA}\nentity McpServer;\ntype McpCall = {{ server: String }};\n\
         action \"ping\" appliesTo {{ principal: [Agent], resource: [McpServer], context: McpCall }};"
    );
    let err = PolicyEngine::load("", Some(&partial), &[]).unwrap_err();
    assert!(matches!(err, PolicyError::Schema(_)), "{err}");
    assert!(err.to_string().contains("tools/call"), "{err}");

    // All, but in a shape the engine's requests do not fit.
    let wrong_resource =
        schema_with_mcp_args().replace("resource: [McpTool],", "resource: [McpServer],");
    let err = PolicyEngine::load("", Some(&wrong_resource), &[]).unwrap_err();
    assert!(err.to_string().contains("tools/call"), "{err}");
    let no_uri = schema_with_mcp_args().replace("  uri?: String,", "");
    let err = PolicyEngine::load("", Some(&no_uri), &[]).unwrap_err();
    assert!(matches!(err, PolicyError::Schema(_)), "{err}");
    assert!(err.to_string().contains("resources/read"), "{err}");
}

/// The Cedar blocks of docs/policy.md: the policy examples load with MCP on (against the
/// schema with the argument fields the docs declare), and the MCP schema shown is the real one
/// up to comments and layout.
#[test]
fn documentation_examples_hold() {
    let doc = include_str!("../../../../docs/policy.md");
    let blocks: Vec<&str> = doc
        .split("```cedar\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    assert!(blocks.len() >= 6, "{} cedar blocks", blocks.len());
    let schema = format!(
        "{}\n{}",
        REST_SCHEMA.replace(
            "type Args = {};",
            "type Args = { amount?: Long, currency?: String, to?: String, dry_run?: Bool };"
        ),
        MCP_SCHEMA.replace(
            "type McpArgs = {};",
            "type McpArgs = { amount?: Long, city?: String };"
        )
    );
    let mut policies = 0;
    for block in &blocks {
        let is_schema = block.contains("entity ") || block.trim_start().starts_with("type ");
        if is_schema {
            continue;
        }
        let e = PolicyEngine::load(block, Some(&schema), &[])
            .unwrap_or_else(|err| panic!("{block}\n{err}"));
        assert_eq!(e.mcp_unavailable(), None);
        policies += 1;
    }
    assert!(policies >= 3, "{policies} policy blocks");

    let shown = blocks
        .iter()
        .find(|b| b.contains("entity McpServer;"))
        .unwrap();
    let (a, _) =
        cedar_policy::Schema::from_cedarschema_str(&format!("{REST_SCHEMA}\n{shown}")).unwrap();
    let (b, _) = cedar_policy::Schema::from_cedarschema_str(DEFAULT_SCHEMA).unwrap();
    let envs = |s: &cedar_policy::Schema| {
        let mut v: Vec<String> = s
            .request_envs()
            .map(|e| format!("{} {} {}", e.principal(), e.action(), e.resource()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(envs(&a), envs(&b));
    let groups = |s: &cedar_policy::Schema| {
        let mut v: Vec<String> = s.action_groups().map(ToString::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(groups(&a), groups(&b));
}
