use super::*;

const SCHEMA_WITH_ARGS: &str = r#"
entity Group;
entity Agent in [Group];
entity Tool;
type Args = { amount?: Long, to?: String, price?: decimal };
type Call = { path: String, query: String, body_size: Long, args?: Args };
action "read", "write";
action "GET", "HEAD", "OPTIONS" in ["read"] appliesTo { principal: [Agent], resource: [Tool], context: Call };
action "POST", "PUT", "PATCH", "DELETE" in ["write"] appliesTo { principal: [Agent], resource: [Tool], context: Call };
"#;

const POLICIES: &str = r#"
@id("readers-read-weather")
permit(principal in Group::"readers", action in Action::"read", resource == Tool::"weather");

@id("payers-small")
permit(principal in Group::"payers", action == Action::"POST", resource == Tool::"pay")
when { context has args && context.args has amount && context.args.amount <= 100 };

@id("no-admin-path")
forbid(principal, action, resource) when { context.path like "/admin*" };
"#;

fn engine() -> PolicyEngine {
    PolicyEngine::load(
        POLICIES,
        Some(SCHEMA_WITH_ARGS),
        &["weather".to_string(), "pay".to_string()],
    )
    .unwrap()
}

fn req<'a>(
    groups: &'a [String],
    method: &'a str,
    tool: &'a str,
    path: &'a str,
) -> DecisionRequest<'a> {
    DecisionRequest {
        agent_id: "agent-1",
        groups,
        method,
        tool,
        path,
        query: "",
        body_size: 0,
        args: None,
        args_digest: None,
        auth: AuthContext::ApiKey { key_id: Some("k1") },
    }
}

fn args(json: &str) -> serde_json::Value {
    parse_json_args(json.as_bytes()).unwrap()
}

fn digest(json: &str) -> Option<[u8; 32]> {
    use sha2::Digest;
    Some(sha2::Sha256::digest(json.as_bytes()).into())
}

#[test]
fn group_permit_and_default_deny() {
    let e = engine();
    let readers = vec!["readers".to_string()];
    let d = e.decide(req(&readers, "GET", "weather", "/today"));
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(d.policy_ids, vec!["readers-read-weather"]);
    let d = e.decide(req(&readers, "POST", "weather", "/today"));
    assert_eq!(d.outcome, Outcome::NoPermit);
    assert!(d.policy_ids.is_empty());
    let d = e.decide(req(&[], "GET", "weather", "/today"));
    assert_eq!(d.outcome, Outcome::NoPermit);
}

#[test]
fn forbid_wins_and_is_reported() {
    let e = engine();
    let readers = vec!["readers".to_string()];
    let d = e.decide(req(&readers, "GET", "weather", "/admin/users"));
    assert_eq!(d.outcome, Outcome::Forbidden);
    assert_eq!(d.policy_ids, vec!["no-admin-path"]);
}

#[test]
fn args_drive_decisions() {
    let e = engine();
    let payers = vec!["payers".to_string()];
    let mut r = req(&payers, "POST", "pay", "/send");
    let small = args(r#"{"amount": 50, "to": "bob", "memo": null}"#);
    let big = args(r#"{"amount": 500}"#);
    // Twice each: the second answer comes from the decision cache and must agree.
    for _ in 0..2 {
        r.args = Some(&small);
        r.args_digest = digest("small");
        assert_eq!(e.decide(r.clone()).outcome, Outcome::Allow);
        r.args = Some(&big);
        r.args_digest = digest("big");
        assert_eq!(e.decide(r.clone()).outcome, Outcome::NoPermit);
        r.args = Some(&big);
        r.args_digest = None;
        assert_eq!(e.decide(r.clone()).outcome, Outcome::NoPermit);
        r.args = None;
        r.args_digest = None;
        assert_eq!(e.decide(r.clone()).outcome, Outcome::NoPermit);
    }
}

#[test]
fn evaluation_errors_fail_closed() {
    // `amount` is compared without a `has` guard: a body that lacks it makes the policy error.
    let schema = SCHEMA_WITH_ARGS;
    let policies = r#"
        permit(principal, action, resource) when { context.args.amount < 5 || true };
    "#;
    // Strict validation rejects an unguarded optional attribute; that is the first line of
    // defence. Check it, then exercise the runtime guard with a type error the validator allows.
    assert!(matches!(
        PolicyEngine::load(policies, Some(schema), &["pay".into()]),
        Err(PolicyError::Validation(_))
    ));
    let policies = r#"
        @id("decimal-cmp")
        permit(principal, action, resource)
        when { context has args && context.args has price && context.args.price.lessThan(decimal("10.0")) };
    "#;
    let e = PolicyEngine::load(policies, Some(schema), &["pay".into()]).unwrap();
    let mut r = req(&[], "POST", "pay", "/");
    // The agent sends a string where the schema says decimal: runtime type error → deny.
    let cheap = args(r#"{"price": "cheap"}"#);
    r.args = Some(&cheap);
    let d = e.decide(r.clone());
    assert_eq!(d.outcome, Outcome::EvaluationError);
    assert!(!d.errors.is_empty());
    let price = args(r#"{"price": 9.5}"#);
    r.args = Some(&price);
    assert_eq!(e.decide(r).outcome, Outcome::Allow);
}

#[test]
fn a_request_cedar_cannot_express_fails_closed() {
    let d = engine().decide(req(&[], "TRACE", "weather", "/"));
    assert_eq!(d.outcome, Outcome::EvaluationError);
    assert_eq!(d.errors, ["method TRACE has no Cedar action"]);
    assert!(d.policy_ids.is_empty());
}

#[test]
fn load_errors_have_positions() {
    let err = PolicyEngine::load(
        "permit(principal, action, resource)\nwhen { 1 + };",
        None,
        &[],
    )
    .unwrap_err();
    assert!(matches!(err, PolicyError::Syntax(_)));
    assert!(err.to_string().contains("line 2"), "{err}");

    let err = PolicyEngine::load(
        "permit(principal == User::\"x\", action, resource);",
        None,
        &[],
    )
    .unwrap_err();
    assert!(matches!(err, PolicyError::Validation(_)), "{err}");
    assert!(err.to_string().contains("line 1"), "{err}");

    let err = PolicyEngine::load(
        "@id(\"a\") permit(principal, action, resource);\n@id(\"a\") forbid(principal, action, resource);",
        None,
        &[],
    )
    .unwrap_err();
    assert!(err.to_string().contains("duplicate policy id"), "{err}");

    assert!(matches!(
        PolicyEngine::load("", Some("entity X;"), &[]),
        Err(PolicyError::Schema(_))
    ));
}

#[test]
fn digest_tracks_text() {
    let a = PolicyEngine::load("permit(principal, action, resource);", None, &[]).unwrap();
    let b = PolicyEngine::load("permit(principal, action, resource); ", None, &[]).unwrap();
    assert_ne!(a.digest_hex(), b.digest_hex());
    assert_eq!(a.digest_hex().len(), 64);
}

#[test]
fn default_schema_loads() {
    let e = PolicyEngine::load(
        r#"permit(principal in Group::"ops", action in Action::"write", resource) when { context.body_size < 10 };"#,
        None,
        &["t".into()],
    )
    .unwrap();
    let ops = vec!["ops".to_string()];
    assert!(e.decide(req(&ops, "DELETE", "t", "/")).outcome.is_allow());
    assert!(!e.decide(req(&ops, "GET", "t", "/")).outcome.is_allow());
}

#[test]
fn knows_whether_args_are_read() {
    assert!(engine().uses_args());
    let e = PolicyEngine::load("permit(principal, action, resource);", None, &[]).unwrap();
    assert!(!e.uses_args());
}

#[test]
fn entity_cache_keeps_principals_apart() {
    let e = engine();
    let readers = vec!["readers".to_string()];
    // Same agent id, different groups (two keys of one agent): decisions must differ.
    assert!(e
        .decide(req(&readers, "GET", "weather", "/"))
        .outcome
        .is_allow());
    assert!(!e.decide(req(&[], "GET", "weather", "/")).outcome.is_allow());
    assert!(e
        .decide(req(&readers, "GET", "weather", "/"))
        .outcome
        .is_allow());
}

/// Whether a policy reads `args` is decided from the parsed policies, not their text: a
/// string escape can name the attribute without the letters `args` appearing in the source.
#[test]
fn escaped_attribute_names_count_as_reading_args() {
    let forbid_big = r#"
@id("all") permit(principal, action, resource);
@id("no-big") forbid(principal, action, resource)
when { context has "\u{61}rgs" && context["\u{61}rgs"] has amount
       && context["\u{61}rgs"].amount > 100 };
"#;
    assert!(!forbid_big.contains("args"), "the text never says args");
    let e = PolicyEngine::load(forbid_big, Some(SCHEMA_WITH_ARGS), &["pay".into()]).unwrap();
    assert!(e.uses_args());
    let plain = PolicyEngine::load(
        r#"@id("all") permit(principal, action, resource);"#,
        Some(SCHEMA_WITH_ARGS),
        &["pay".into()],
    )
    .unwrap();
    assert!(!plain.uses_args());
    // Nothing else in Cedar's JSON form of a policy spells "args" (functions, operators).
    let busy = PolicyEngine::load(
        r#"@id("busy") permit(principal in Group::"g", action in Action::"read", resource)
           when { context.path like "/x*" && context.body_size > 3 && context has query
                  && decimal("1.5").lessThan(decimal("2.0")) && [1, 2].contains(1) };"#,
        Some(SCHEMA_WITH_ARGS),
        &["pay".into()],
    )
    .unwrap();
    assert!(!busy.uses_args());
    assert!(engine().uses_args());
}

#[test]
fn require_annotations_name_what_allowed_calls_carry() {
    let policies = r#"
        @id("pay") @require("nonce, counter")
        permit (principal, action == Action::"POST", resource == Tool::"pay");
        @id("read") @require("session")
        permit (principal, action == Action::"GET", resource);
        @id("any")
        permit (principal, action, resource == Tool::"pay");
    "#;
    let e = PolicyEngine::load(policies, None, &["pay".into()]).unwrap();
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        e.requires(&ids(&["pay"])),
        Requires {
            session: true,
            nonce: true,
            counter: true
        }
    );
    assert_eq!(e.requires(&ids(&["any"])), Requires::default());
    let both = e.requires(&ids(&["any", "read"]));
    assert!(
        both.session && !both.nonce,
        "the union of the permits that allowed"
    );
    for bad in [
        r#"@require("nonce") forbid (principal, action, resource);"#,
        r#"@require("nonse") permit (principal, action, resource);"#,
        r#"@require("") permit (principal, action, resource);"#,
    ] {
        let err = PolicyEngine::load(bad, None, &["pay".into()]).unwrap_err();
        assert!(err.to_string().contains("@require"), "{err}");
    }
}
