//! Admins signing in to the admin plane with OIDC access tokens (`[[admin.jwt]]`), end to end
//! with the real binary: an issuer whose keys come from a `jwks_file` (tokens minted here with
//! its key), roles from a claim through the role map, the admin plane's own audience (a
//! data-plane token is refused there, an admin token is refused on the data plane), refusals
//! with the `JWT_*` codes and the `lap-admin` challenge, admin receipts naming the JWT
//! (`auth: "jwt"`) verified offline by `lap-verify` in an audit pack, and no token in the log
//! or any receipt. `check-config` validates the section. And with a real OpenID provider
//! (`tests/oidc/`, discovery): provider tokens for the admin resource, and a key rotation at the
//! issuer reaching the admin plane through the unknown-`kid` refresh it shares with the data
//! plane.

use lap_e2e::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const PUBLIC_URL: &str = "https://gw.test";
const ISSUER: &str = "https://idp.example/realms/ops";

fn admin(gw: &Gateway, method: &str, target: &str, token: Option<&str>) -> Request {
    let r = Request::new(gw.admin, method, target);
    match token {
        Some(t) => r.bearer(t),
        None => r,
    }
}

/// An admin's access token: for the admin plane, with these realm roles.
fn claims(user: &str, roles: &[&str]) -> Value {
    let now = unix_now();
    json!({"iss": ISSUER, "sub": format!("uid-{user}"), "preferred_username": user,
           "aud": format!("{PUBLIC_URL}/admin"), "iat": now, "exp": now + 300,
           "realm_access": {"roles": roles}})
}

/// The `[[auth.jwt]]` issuer (keys from `jwks`) and its `[[admin.jwt]]` table.
fn issuer_toml(jwks: &std::path::Path) -> String {
    format!(
        "[[auth.jwt]]\nissuer = \"{ISSUER}\"\njwks_file = \"{}\"\nalgorithms = [\"EdDSA\"]\n\n\
         [[admin.jwt]]\nissuer = \"{ISSUER}\"\nroles_claim = \"realm_access.roles\"\n\
         subject_claim = \"preferred_username\"\n\
         role_map = {{ \"lap-operators\" = \"operator\", \"lap-auditors\" = \"auditor\", \"lap-viewers\" = \"viewer\" }}\n",
        jwks.display()
    )
}

fn hash_prefix(token: &str) -> String {
    format!(
        "sha256:{}",
        &hex::encode(Sha256::digest(token.as_bytes()))[..12]
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_admins_get_their_roles_from_a_claim_and_are_recorded() {
    let key = SigningKey::ed25519("adm-1");
    let up = Upstream::start(Behavior::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, jwks_json(&[&key])).unwrap();
    // OIDC only: no tokens file, and no unauthenticated admin plane.
    let gw = GatewayBuilder::new()
        .tool("echo", &up.url())
        .keys_file("{}")
        .policy("permit(principal, action, resource);")
        .env("LAP_PUBLIC_URL", PUBLIC_URL)
        .admin_toml("")
        .extra_toml(&format!(
            "{}\n[log]\ncheckpoint_every = 1\ncheckpoint_interval_ms = 20\n",
            issuer_toml(&jwks)
        ))
        .start()
        .await;

    let operator = key.token(&claims("alice", &["lap-operators", "offline_access"]));
    let auditor = key.token(&claims("carol", &["lap-auditors"]));
    let viewer = key.token(&claims("dan", &["lap-viewers"]));
    let nobody = key.token(&claims("eve", &["default-roles-ops"]));
    let mut c = claims("alice", &["lap-operators"]);
    c["exp"] = (unix_now() - 600).into();
    c["iat"] = (unix_now() - 900).into();
    let expired = key.token(&c);
    // An agent's token from the same issuer, for the data plane.
    let agent = key.token(&json!({"iss": ISSUER, "sub": "bot-1", "aud": PUBLIC_URL,
        "iat": unix_now(), "exp": unix_now() + 300, "realm_access": {"roles": ["lap-operators"]}}));

    // The role hierarchy, from the claim.
    assert_eq!(
        admin(&gw, "GET", "/metrics", Some(&viewer))
            .send()
            .await
            .status,
        200
    );
    let r = admin(&gw, "POST", "/v1/reload", Some(&viewer)).send().await;
    r.assert_error(403, "ADMIN_ROLE_INSUFFICIENT");
    assert_eq!(r.json()["error"]["required_role"], "operator");
    let r = admin(&gw, "POST", "/v1/reload", Some(&operator))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A valid token that maps to no role may do nothing.
    admin(&gw, "GET", "/metrics", Some(&nobody))
        .send()
        .await
        .assert_error(403, "ADMIN_ROLE_INSUFFICIENT");
    admin(&gw, "POST", "/v1/reload", Some(&nobody))
        .send()
        .await
        .assert_error(403, "ADMIN_ROLE_INSUFFICIENT");

    // Audiences keep the planes apart, both ways.
    let r = admin(&gw, "GET", "/metrics", Some(&agent)).send().await;
    r.assert_error(401, "JWT_AUDIENCE_MISMATCH");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"lap-admin\", error=\"invalid_token\"")
    );
    let r = gw.get("/tools/echo/x").bearer(&agent).send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    gw.get("/tools/echo/x")
        .bearer(&operator)
        .send()
        .await
        .assert_error(401, "JWT_AUDIENCE_MISMATCH");
    // Expired; and signed by a key the issuer does not have.
    admin(&gw, "POST", "/v1/reload", Some(&expired))
        .send()
        .await
        .assert_error(401, "JWT_EXPIRED");
    let forged = SigningKey::ed25519("adm-1").token(&claims("mallory", &["lap-operators"]));
    admin(&gw, "POST", "/v1/reload", Some(&forged))
        .send()
        .await
        .assert_error(401, "JWT_SIGNATURE_INVALID");

    // The admin receipts name each verified admin by its JWT, never by the token.
    let size = admin(&gw, "GET", "/readyz", None).send().await.json()["log_size"]
        .as_u64()
        .expect("log_size");
    let mut receipts = Vec::new();
    let mut entries = String::new();
    for i in 0..size {
        let e = admin(&gw, "GET", &format!("/v1/log/entries/{i}"), Some(&auditor))
            .send()
            .await;
        assert_eq!(e.status, 200, "{}", e.text());
        entries.push_str(&e.text());
        let receipt = receipt_payload(e.text().as_bytes());
        if receipt["kind"] == "admin" {
            receipts.push(receipt);
        }
    }
    let summary: Vec<(String, Value, Value)> = receipts
        .iter()
        .map(|r| {
            (
                r["decision"]["code"].as_str().unwrap().to_string(),
                r["principal"]["agent_id"].clone(),
                r["principal"]["auth"].clone(),
            )
        })
        .collect();
    let jwt = Value::from("jwt");
    assert_eq!(
        summary,
        [
            ("ADMIN_ROLE_INSUFFICIENT".into(), "dan".into(), jwt.clone()),
            ("ALLOWED".into(), "alice".into(), jwt.clone()),
            ("ADMIN_ROLE_INSUFFICIENT".into(), "eve".into(), jwt.clone()),
            ("JWT_EXPIRED".into(), Value::Null, Value::Null),
            ("JWT_SIGNATURE_INVALID".into(), Value::Null, Value::Null),
        ],
        "{receipts:#?}"
    );
    let p = &receipts[1]["principal"];
    assert_eq!(p["iss"], ISSUER);
    assert_eq!(p["sub"], "uid-alice");
    assert_eq!(p["kid"], "adm-1");
    assert_eq!(p["token_hash_prefix"], hash_prefix(&operator).as_str());
    assert_eq!(receipts[1]["call"]["path"], "/v1/reload");

    // An auditor exports the pack holding them, and lap-verify verifies it offline.
    let pack = admin(&gw, "GET", "/v1/audit-pack", Some(&auditor))
        .send()
        .await;
    assert_eq!(pack.status, 200, "{}", pack.text());
    let out = tempfile::tempdir().unwrap();
    let trust = save(out.path(), "keys.json", &gw.trust_doc().await);
    let pack_path = save(out.path(), "pack.tar", &pack.body);
    let v = verify_pack(
        &pack_path,
        &[std::ffi::OsStr::new("--trusted-keys"), trust.as_os_str()],
    );
    assert!(v.ok, "{}", v.report);

    // Refusals are counted by code.
    let metrics = admin(&gw, "GET", "/metrics", Some(&viewer))
        .send()
        .await
        .text();
    for (code, n) in [
        ("ADMIN_ROLE_INSUFFICIENT", 3.0),
        ("JWT_AUDIENCE_MISMATCH", 1.0),
        ("JWT_EXPIRED", 1.0),
    ] {
        assert_eq!(
            metric_value(&metrics, "lap_admin_refusals_total", &[("code", code)]),
            Some(n),
            "{code}"
        );
    }

    // No token in the gateway's log or in any receipt.
    let log = gw.log_text();
    for token in [
        &operator, &auditor, &viewer, &nobody, &expired, &agent, &forged,
    ] {
        assert!(!log.contains(token.as_str()), "a token in the log");
        assert!(!entries.contains(token.as_str()), "a token in a receipt");
        // Nor its signature alone.
        let sig = token.rsplit('.').next().unwrap();
        assert!(!log.contains(sig) && !entries.contains(sig));
    }

    // The issuer's key set, shared with the data plane, rotates for the admin plane too: the
    // rewritten jwks_file (another kid, so another length too) is picked up without a restart.
    let rotated = SigningKey::ed25519("adm-rotated");
    std::fs::write(&jwks, jwks_json(&[&rotated])).unwrap();
    let next = rotated.token(&claims("alice", &["lap-operators"]));
    let ok = wait_until(std::time::Duration::from_secs(5), || async {
        admin(&gw, "GET", "/v1/log/checkpoint", Some(&next))
            .send()
            .await
            .status
            == 200
    })
    .await;
    assert!(ok, "the rotated admin key was never accepted");
    admin(&gw, "GET", "/v1/log/checkpoint", Some(&auditor))
        .send()
        .await
        .assert_error(401, "JWT_KID_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_validates_admin_jwt() {
    let key = SigningKey::ed25519("adm-1");
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, jwks_json(&[&key])).unwrap();
    std::fs::write(dir.path().join("keys.json"), "{}").unwrap();
    std::fs::write(dir.path().join("policy.cedar"), NO_POLICY).unwrap();
    let cfg = dir.path().join("gateway.toml");
    let write = |admin: &str, extra: &str| {
        let text = GatewayBuilder::new()
            .admin_toml(admin)
            .extra_toml(extra)
            .config_text(free_port(), free_port());
        // `[auth] public_url` next to the harness's `[auth]` lines.
        let text = text.replacen(
            "[auth]\n",
            &format!("[auth]\npublic_url = \"{PUBLIC_URL}\"\n"),
            1,
        );
        std::fs::write(&cfg, text).unwrap();
    };

    // OIDC admins count as authentication: the admin plane may start.
    write("", &issuer_toml(&jwks));
    let out = check_config(&cfg);
    assert_success(&out, "check-config with [[admin.jwt]]");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "admin OIDC issuer {ISSUER} (audiences {PUBLIC_URL}/admin"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("lap-operators=operator"), "{stdout}");

    let other = issuer_toml(&jwks).replacen(
        &format!("[[admin.jwt]]\nissuer = \"{ISSUER}\""),
        "[[admin.jwt]]\nissuer = \"https://other.example\"",
        1,
    );
    let cases = [
        ("", other, "admin.jwt[0].issuer"),
        (
            "",
            format!("{}audiences = [\"{PUBLIC_URL}\"]\n", issuer_toml(&jwks)),
            "admin.jwt[0].audiences",
        ),
        (
            "",
            issuer_toml(&jwks).replace("\"lap-viewers\" = \"viewer\"", "\"x\" = \"root\""),
            "admin.jwt[0].role_map",
        ),
        (
            "allow_unauthenticated_loopback = true",
            issuer_toml(&jwks),
            "exclude each other",
        ),
    ];
    for (admin, extra, needle) in cases {
        write(admin, &extra);
        let out = check_config(&cfg);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{needle}: accepted");
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}

/// With a real OpenID provider (oidc-provider, discovery): its client-credentials tokens for the
/// admin resource (RFC 8707) sign a client in as an admin — the role from `client_id` here,
/// the claim this provider's tokens carry —, the same client's token for the data plane is
/// refused there, and after a key rotation at the issuer the admin plane's unknown `kid` fetches
/// the new keys through the machinery it shares with the data plane.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_provider_signs_admins_in_and_rotates_its_keys() {
    let key = SigningKey::rsa("k1");
    let mut idp = OidcProvider::start(&[&key]).await;
    let issuer = idp.issuer();
    let gw = GatewayBuilder::new()
        .keys_file("{}")
        .env("LAP_PUBLIC_URL", PUBLIC_URL)
        .admin_toml("")
        .extra_toml(&format!(
            "[[auth.jwt]]\nissuer = \"{issuer}\"\nrefresh_min_interval_seconds = 1\n\n\
             [[admin.jwt]]\nissuer = \"{issuer}\"\nroles_claim = \"client_id\"\n\
             role_map = {{ \"agent-1\" = \"operator\", \"agent-2\" = \"viewer\" }}\n"
        ))
        .start()
        .await;
    let resource = format!("{PUBLIC_URL}/admin");
    let operator = idp.token("agent-1", &resource, None).await;
    // The issuer's keys are fetched in the background after start.
    let ready = wait_until(std::time::Duration::from_secs(15), || async {
        admin(&gw, "GET", "/metrics", Some(&operator))
            .send()
            .await
            .status
            != 503
    })
    .await;
    assert!(
        ready,
        "the issuer's keys were never loaded:\n{}",
        gw.log_text()
    );
    let r = admin(&gw, "POST", "/v1/reload", Some(&operator))
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let viewer = idp.token("agent-2", &resource, None).await;
    assert_eq!(
        admin(&gw, "GET", "/metrics", Some(&viewer))
            .send()
            .await
            .status,
        200
    );
    admin(&gw, "POST", "/v1/reload", Some(&viewer))
        .send()
        .await
        .assert_error(403, "ADMIN_ROLE_INSUFFICIENT");
    let data_plane = idp.token("agent-1", PUBLIC_URL, None).await;
    admin(&gw, "POST", "/v1/reload", Some(&data_plane))
        .send()
        .await
        .assert_error(401, "JWT_AUDIENCE_MISMATCH");

    // Key rotation at the issuer: tokens under the new kid are accepted once the admin plane's
    // unknown kid has fetched the new JWKS (rate-limited to one fetch a second).
    let k2 = SigningKey::rsa("k2");
    idp.restart_with(&[&k2, &key]).await;
    let rotated = idp.token("agent-1", &resource, None).await;
    let ok = wait_until(std::time::Duration::from_secs(10), || async {
        admin(&gw, "GET", "/v1/log/checkpoint", Some(&rotated))
            .send()
            .await
            .status
            == 200
    })
    .await;
    assert!(ok, "the rotated key was never fetched:\n{}", gw.log_text());
    let log = gw.log_text();
    for token in [&operator, &viewer, &data_plane, &rotated] {
        assert!(!log.contains(token.as_str()), "a token in the log");
    }
}
