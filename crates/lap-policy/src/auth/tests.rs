use crate::mcp::{McpGeneration, McpRequest, McpTarget};
use crate::{AuthContext, DecisionRequest, Outcome, PolicyEngine, PolicyError, DEFAULT_SCHEMA};

const POLICIES: &str = r#"
@id("pay-with-jwt-scope")
permit (principal, action == Action::"POST", resource == Tool::"pay")
when {
  context.auth.method == "jwt" &&
  context.auth has scopes && context.auth.scopes.contains("pay")
};

@id("read-by-trust-domain")
permit (principal, action == Action::"GET", resource)
when { context.auth has trust_domain && context.auth.trust_domain == "lap.test" };

@id("key-k1-reads-weather")
permit (principal, action == Action::"GET", resource == Tool::"weather")
when { context.auth has key_id && context.auth.key_id == "k1" };

@id("mcp-pay-with-jwt-scope")
permit (principal, action == Action::"tools/call", resource == McpTool::"bank/pay")
when { context.auth has scopes && context.auth.scopes.contains("pay") };

@id("no-foreign-issuer")
forbid (principal, action, resource)
when { context.auth has issuer && context.auth.issuer == "https://evil.example" };
"#;

fn engine() -> PolicyEngine {
    PolicyEngine::load(POLICIES, None, &["pay".to_string(), "weather".to_string()]).unwrap()
}

fn rest<'a>(method: &'a str, tool: &'a str, auth: AuthContext<'a>) -> DecisionRequest<'a> {
    DecisionRequest {
        agent_id: "agent-1",
        groups: &[],
        method,
        tool,
        path: "/",
        query: "",
        body_size: 0,
        args: None,
        args_digest: None,
        auth,
    }
}

fn mcp<'a>(auth: AuthContext<'a>) -> McpRequest<'a> {
    McpRequest {
        agent_id: "agent-1",
        groups: &[],
        server: "bank",
        method: "tools/call",
        target: McpTarget::Tool("pay"),
        generation: McpGeneration::Modern,
        protocol_version: "2026-07-28",
        auth,
        args: None,
        args_digest: None,
    }
}

fn jwt<'a>(issuer: &'a str, scopes: &'a [String]) -> AuthContext<'a> {
    AuthContext::Jwt {
        issuer,
        subject: "svc-1",
        scopes,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const ISSUER: &str = "https://idp.example";

#[test]
fn each_method_is_its_own_record() {
    let e = engine();
    assert!(e.uses_auth());
    let pay = strings(&["pay", "read"]);
    let spiffe = AuthContext::Mtls {
        spiffe_id: Some("spiffe://lap.test/agent/batch"),
    };
    let cases = [
        (rest("POST", "pay", jwt(ISSUER, &pay)), Outcome::Allow),
        (
            rest("POST", "pay", AuthContext::ApiKey { key_id: Some("k1") }),
            Outcome::NoPermit,
        ),
        (rest("POST", "pay", spiffe), Outcome::NoPermit),
        (rest("GET", "pay", spiffe), Outcome::Allow),
        (rest("GET", "pay", jwt(ISSUER, &pay)), Outcome::NoPermit),
        (
            rest("GET", "weather", AuthContext::ApiKey { key_id: Some("k1") }),
            Outcome::Allow,
        ),
        (
            rest("GET", "weather", AuthContext::ApiKey { key_id: Some("k2") }),
            Outcome::NoPermit,
        ),
        (
            rest("GET", "pay", AuthContext::ApiKey { key_id: Some("k1") }),
            Outcome::NoPermit,
        ),
        (
            rest("POST", "pay", jwt("https://evil.example", &pay)),
            Outcome::Forbidden,
        ),
    ];
    // Twice: the second round is answered by the decision cache and must agree.
    for round in 0..2 {
        for (r, want) in &cases {
            assert_eq!(
                e.decide(r.clone()).outcome,
                *want,
                "round {round}: {:?}",
                r.auth
            );
        }
    }
}

#[test]
fn optional_attributes_are_absent_not_empty() {
    let e = PolicyEngine::load(
        r#"
        @id("has-scopes") permit (principal, action == Action::"GET", resource == Tool::"t")
          when { context.auth has scopes };
        @id("has-spiffe") permit (principal, action == Action::"PUT", resource == Tool::"t")
          when { context.auth has spiffe_id || context.auth has trust_domain };
        @id("has-key") permit (principal, action == Action::"POST", resource == Tool::"t")
          when { context.auth has key_id || context.auth has issuer || context.auth has subject };
        "#,
        None,
        &["t".to_string()],
    )
    .unwrap();
    let none: Vec<String> = Vec::new();
    let allow = |m, a| e.decide(rest(m, "t", a)).outcome.is_allow();
    // A JWT without scopes still has the (empty) set; other methods have no scopes at all.
    assert!(allow("GET", jwt(ISSUER, &none)));
    assert!(!allow("GET", AuthContext::ApiKey { key_id: Some("k1") }));
    assert!(!allow(
        "GET",
        AuthContext::Mtls {
            spiffe_id: Some("spiffe://lap.test/a")
        }
    ));
    // SPIFFE attributes only for a certificate with a SPIFFE ID.
    assert!(allow(
        "PUT",
        AuthContext::Mtls {
            spiffe_id: Some("spiffe://lap.test/a")
        }
    ));
    assert!(!allow("PUT", AuthContext::Mtls { spiffe_id: None }));
    assert!(!allow("PUT", jwt(ISSUER, &none)));
    assert!(!allow("PUT", AuthContext::ApiKey { key_id: Some("k1") }));
    // key_id for keys, issuer/subject for JWTs, none of them for certificates.
    assert!(allow("POST", AuthContext::ApiKey { key_id: Some("k1") }));
    // A key without an `id` in the key file has none here (never its hash prefix instead).
    assert!(!allow("POST", AuthContext::ApiKey { key_id: None }));
    assert!(allow("POST", jwt(ISSUER, &none)));
    assert!(!allow(
        "POST",
        AuthContext::Mtls {
            spiffe_id: Some("spiffe://lap.test/a")
        }
    ));
}

#[test]
fn unguarded_reads_of_optional_attributes_are_refused_at_load() {
    for policy in [
        r#"permit (principal, action, resource) when { context.auth.scopes.contains("x") };"#,
        r#"permit (principal, action, resource) when { context.auth.trust_domain == "x" };"#,
        r#"permit (principal, action, resource) when { context.auth.key_id == "x" };"#,
        r#"permit (principal, action, resource) when { context.auth.token == "x" };"#,
    ] {
        let err = PolicyEngine::load(policy, None, &[]).unwrap_err();
        assert!(matches!(err, PolicyError::Validation(_)), "{policy}: {err}");
    }
    // `method` is always there.
    PolicyEngine::load(
        r#"permit (principal, action, resource) when { context.auth.method == "mtls" };"#,
        None,
        &[],
    )
    .unwrap();
}

#[test]
fn trust_domain_of_spiffe_ids() {
    let td = |id| AuthContext::Mtls { spiffe_id: id }.trust_domain();
    assert_eq!(td(Some("spiffe://lap.test/agent/x")), Some("lap.test"));
    assert_eq!(td(Some("spiffe://lap.test")), Some("lap.test"));
    assert_eq!(td(Some("spiffe:///agent")), None);
    assert_eq!(td(Some("https://lap.test/agent")), None);
    assert_eq!(td(None), None);
    assert_eq!(
        AuthContext::ApiKey {
            key_id: Some("spiffe://x/y")
        }
        .trust_domain(),
        None
    );
    let scopes = strings(&["a"]);
    assert_eq!(jwt(ISSUER, &scopes).method(), "jwt");
    assert_eq!(
        AuthContext::ApiKey { key_id: Some("k") }.method(),
        "api_key"
    );
    assert_eq!(AuthContext::Mtls { spiffe_id: None }.method(), "mtls");
}

/// Two principals that differ only in their scopes (same agent, groups, issuer, subject) get
/// their own decisions with the cache on, both ways and in either order, REST and MCP.
#[test]
fn the_decision_cache_keeps_auth_records_apart() {
    let with = strings(&["pay"]);
    let without = strings(&["read"]);
    for order in [[&with, &without], [&without, &with]] {
        let e = engine();
        for round in 0..3 {
            for scopes in order {
                let want = scopes.contains(&"pay".to_string());
                let d = e.decide(rest("POST", "pay", jwt(ISSUER, scopes)));
                assert_eq!(d.outcome.is_allow(), want, "REST round {round} {scopes:?}");
                let d = e.decide_mcp(mcp(jwt(ISSUER, scopes)));
                assert_eq!(d.outcome.is_allow(), want, "MCP round {round} {scopes:?}");
                let listed = e.could_permit_mcp(mcp(jwt(ISSUER, scopes)).candidate());
                assert_eq!(listed, want, "listing round {round} {scopes:?}");
            }
        }
        assert_eq!(e.decisions.len(), 2);
        assert_eq!(e.mcp_decisions.len(), 2);
        assert_eq!(e.mcp_listings.len(), 2);
    }
    // Issuer, subject, key id and SPIFFE ID are each part of the key too.
    let e = engine();
    let pay = strings(&["pay"]);
    for _ in 0..2 {
        assert!(e
            .decide(rest("POST", "pay", jwt(ISSUER, &pay)))
            .outcome
            .is_allow());
        assert!(!e
            .decide(rest("POST", "pay", jwt("https://evil.example", &pay)))
            .outcome
            .is_allow());
        let other_subject = AuthContext::Jwt {
            issuer: ISSUER,
            subject: "svc-2",
            scopes: &pay,
        };
        assert!(e
            .decide(rest("POST", "pay", other_subject))
            .outcome
            .is_allow());
        assert!(e
            .decide(rest(
                "GET",
                "weather",
                AuthContext::ApiKey { key_id: Some("k1") }
            ))
            .outcome
            .is_allow());
        assert!(!e
            .decide(rest(
                "GET",
                "weather",
                AuthContext::ApiKey { key_id: Some("k2") }
            ))
            .outcome
            .is_allow());
        let mtls = |id| rest("GET", "weather", AuthContext::Mtls { spiffe_id: id });
        assert!(e
            .decide(mtls(Some("spiffe://lap.test/a")))
            .outcome
            .is_allow());
        assert!(!e
            .decide(mtls(Some("spiffe://other.test/a")))
            .outcome
            .is_allow());
        assert!(!e.decide(mtls(None)).outcome.is_allow());
        let unnamed = rest("GET", "weather", AuthContext::ApiKey { key_id: None });
        assert!(!e.decide(unnamed).outcome.is_allow());
    }
    assert_eq!(e.decisions.len(), 9);
}

/// When no policy can read `context.auth`, it is neither in the context nor in the cache key:
/// principals that differ only in how they authenticated share one entry.
#[test]
fn policies_that_do_not_read_auth_share_cache_entries() {
    let e = PolicyEngine::load(
        r#"permit (principal, action == Action::"GET", resource == Tool::"t");"#,
        None,
        &["t".to_string()],
    )
    .unwrap();
    assert!(!e.uses_auth());
    let scopes = strings(&["a"]);
    for auth in [
        AuthContext::ApiKey { key_id: Some("k1") },
        jwt(ISSUER, &scopes),
        AuthContext::Mtls { spiffe_id: None },
    ] {
        assert!(e.decide(rest("GET", "t", auth)).outcome.is_allow());
    }
    assert_eq!(e.decisions.len(), 1);
}

/// An operator's schema written before `context.auth` still loads (REST and MCP) for policies
/// that do not read it; one that declares it so that the gateway's records would not conform
/// is refused at load.
#[test]
fn operator_schemas_with_and_without_auth() {
    let old = DEFAULT_SCHEMA
        .replace("  auth: Auth,         // how the principal authenticated\n", "")
        .replace(
            "  auth: Auth,                // how the principal authenticated (type Auth: the REST part)\n",
            "",
        );
    assert!(!old.contains("auth: Auth"), "both parts declare auth");
    let e = PolicyEngine::load(
        r#"permit (principal, action == Action::"tools/call", resource);"#,
        Some(&old),
        &[],
    )
    .unwrap();
    assert_eq!(e.mcp_unavailable(), None);
    assert!(e
        .decide_mcp(mcp(AuthContext::ApiKey { key_id: Some("k1") }))
        .outcome
        .is_allow());
    // Reading it needs it declared.
    assert!(matches!(
        PolicyEngine::load(
            r#"permit (principal, action, resource) when { context.auth.method == "jwt" };"#,
            Some(&old),
            &[],
        ),
        Err(PolicyError::Validation(_))
    ));
    // Scopes required: API-key and certificate records would not conform.
    let strict = DEFAULT_SCHEMA.replace("scopes?: Set<String>", "scopes: Set<String>");
    assert_ne!(strict, DEFAULT_SCHEMA);
    let err = PolicyEngine::load(
        r#"permit (principal, action, resource);"#,
        Some(&strict),
        &[],
    )
    .unwrap_err();
    assert!(matches!(err, PolicyError::Schema(_)), "{err}");
    assert!(err.to_string().contains("with context.auth:"), "{err}");
}

/// The record's construction error has its code (it cannot come from the gateway's records,
/// whose attribute names are fixed; a record with a repeated name shows the shape).
#[test]
fn the_record_error_has_a_stable_code() {
    let s = || cedar_policy::RestrictedExpression::new_string("x".into());
    let e = cedar_policy::RestrictedExpression::new_record([("a".into(), s()), ("a".into(), s())])
        .unwrap_err();
    let e = crate::AuthRecordError::Construction(Box::new(e));
    assert_eq!(e.code(), "POLICY_AUTH_RECORD_INVALID");
    assert!(e.to_string().starts_with("context.auth: "), "{e}");
    let mcp = crate::McpRequestError::Auth(e);
    assert_eq!(mcp.code(), "MCP_REQUEST_INVALID");
}
