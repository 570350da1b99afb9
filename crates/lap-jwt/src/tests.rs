//! Every rule, with keys generated here: RSA (by the `openssl` tool; ring cannot generate
//! RSA keys), P-256 and Ed25519 (ring).

use crate::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self as sig, KeyPair};
use serde_json::{json, Value};
use std::sync::OnceLock;

const ISS: &str = "https://idp.example";
const AUD: &str = "https://gw.example/mcp/files";
const NOW: i64 = 1_900_000_000;

enum Signer {
    Rsa(sig::RsaKeyPair),
    P256(sig::EcdsaKeyPair),
    Ed(sig::Ed25519KeyPair),
}

struct TestKey {
    signer: Signer,
    jwk: Value,
}

fn rsa_der() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| {
        // PKCS#1 DER (ring refuses some PKCS#8 encodings OpenSSL writes).
        let out = std::process::Command::new("sh")
            .args(["-c", "openssl genrsa 2048 2>/dev/null | openssl rsa -traditional -outform DER 2>/dev/null"])
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    })
}

fn rsa(kid: Option<&str>) -> TestKey {
    let kp = sig::RsaKeyPair::from_der(rsa_der()).unwrap();
    let c = sig::RsaPublicKeyComponents::<Vec<u8>>::from(kp.public());
    let mut jwk = json!({"kty": "RSA", "n": B64.encode(&c.n), "e": B64.encode(&c.e), "use": "sig"});
    if let Some(k) = kid {
        jwk["kid"] = k.into();
    }
    TestKey {
        signer: Signer::Rsa(kp),
        jwk,
    }
}

fn p256(kid: Option<&str>) -> TestKey {
    let rng = SystemRandom::new();
    let alg = &sig::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = sig::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let kp = sig::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let public = kp.public_key().as_ref();
    let mut jwk = json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&public[1..33]), "y": B64.encode(&public[33..])});
    if let Some(k) = kid {
        jwk["kid"] = k.into();
    }
    TestKey {
        signer: Signer::P256(kp),
        jwk,
    }
}

fn ed(kid: Option<&str>) -> TestKey {
    let pkcs8 = sig::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let kp = sig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let mut jwk =
        json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(kp.public_key().as_ref())});
    if let Some(k) = kid {
        jwk["kid"] = k.into();
    }
    TestKey {
        signer: Signer::Ed(kp),
        jwk,
    }
}

impl TestKey {
    fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Rsa(_) => "RS256",
            Signer::P256(_) => "ES256",
            Signer::Ed(_) => "EdDSA",
        }
    }

    fn sign_raw(&self, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Rsa(kp) => {
                let mut out = vec![0; kp.public().modulus_len()];
                kp.sign(&sig::RSA_PKCS1_SHA256, &rng, msg, &mut out)
                    .unwrap();
                out
            }
            Signer::P256(kp) => kp.sign(&rng, msg).unwrap().as_ref().to_vec(),
            Signer::Ed(kp) => kp.sign(msg).as_ref().to_vec(),
        }
    }

    /// A token with this key's algorithm and kid, and `claims`.
    fn token(&self, claims: &Value) -> String {
        let mut header = json!({"alg": self.alg(), "typ": "JWT"});
        if let Some(kid) = self.jwk.get("kid") {
            header["kid"] = kid.clone();
        }
        self.token_with(&header, claims)
    }

    fn token_with(&self, header: &Value, claims: &Value) -> String {
        let signed = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let s = self.sign_raw(signed.as_bytes());
        format!("{signed}.{}", B64.encode(s))
    }
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "ci-bot", "aud": AUD, "exp": NOW + 600, "iat": NOW - 10,
           "nbf": NOW - 10, "scope": "files:read files:write",
           "realm_access": {"roles": ["readers", "ops"]}})
}

fn jwks(keys: &[&TestKey]) -> KeySet {
    let doc = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    KeySet::from_json(doc.to_string().as_bytes()).unwrap()
}

fn verifier_with(policy: IssuerPolicy, keys: &[&TestKey]) -> Verifier {
    let v = Verifier::new(vec![policy], 16).unwrap();
    assert!(v.install_keys(ISS, jwks(keys)));
    v
}

fn verifier(keys: &[&TestKey]) -> Verifier {
    verifier_with(IssuerPolicy::new(ISS, vec![AUD.to_string()]), keys)
}

fn code(v: &Verifier, token: &str) -> &'static str {
    match v.verify(token, NOW) {
        Ok(_) => "OK",
        Err(e) => e.code(),
    }
}

#[test]
fn each_key_type_verifies_and_maps_the_principal() {
    for key in [rsa(Some("r1")), p256(Some("e1")), ed(Some("d1"))] {
        let v = verifier(&[&key]);
        let out = v.verify(&key.token(&claims()), NOW).unwrap();
        assert!(!out.cached);
        let p = &out.verified.principal;
        assert_eq!(p.agent_id.as_str(), "ci-bot");
        assert_eq!(out.verified.scopes, ["files:read", "files:write"]);
        match &p.credential {
            lap_auth::Credential::Jwt {
                issuer,
                subject,
                kid,
                token_hash_prefix,
                scopes,
            } => {
                assert_eq!(scopes, &["files:read", "files:write"]);
                assert_eq!(issuer, ISS);
                assert_eq!(subject, "ci-bot");
                assert_eq!(kid.as_deref(), key.jwk["kid"].as_str());
                assert!(token_hash_prefix.starts_with("sha256:") && token_hash_prefix.len() == 19);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn claim_mapping_agent_groups_prefix_and_scp() {
    let key = ed(Some("d1"));
    let mut policy = IssuerPolicy::new(ISS, vec![AUD.to_string()]);
    policy.agent_claim = ClaimPath::parse("azp").unwrap();
    policy.groups_claim = Some(ClaimPath::parse("realm_access.roles").unwrap());
    policy.group_prefix = "idp:".into();
    policy.scope_group_prefix = Some("scope:".into());
    policy.issuer_groups = vec!["issuer:idp".into()];
    let v = verifier_with(policy, &[&key]);
    let mut c = claims();
    c["azp"] = "agent-7".into();
    c.as_object_mut().unwrap().remove("scope");
    c["scp"] = json!(["a", "b"]);
    let out = v.verify(&key.token(&c), NOW).unwrap();
    // The credential's scopes (what policy reads as `context.auth.scopes`) are sorted and
    // deduplicated; the token's own list is kept as sent.
    let mut unsorted = c.clone();
    unsorted["scp"] = json!(["b", "a", "b"]);
    unsorted["jti"] = "unsorted".into();
    let u = v.verify(&key.token(&unsorted), NOW).unwrap();
    assert_eq!(u.verified.scopes, ["b", "a", "b"]);
    match &u.verified.principal.credential {
        lap_auth::Credential::Jwt { scopes, .. } => assert_eq!(scopes, &["a", "b"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(out.verified.principal.agent_id.as_str(), "agent-7");
    assert_eq!(
        out.verified.principal.groups,
        ["idp:readers", "idp:ops", "issuer:idp", "scope:a", "scope:b"]
    );
    assert_eq!(out.verified.scopes, ["a", "b"]);
    // agent_prefix keeps this issuer's agents apart from others'
    let mut prefixed = IssuerPolicy::new(ISS, vec![AUD.to_string()]);
    prefixed.agent_prefix = "partner:".into();
    let pv = verifier_with(prefixed, &[&key]);
    let mut c3 = claims();
    c3["jti"] = "prefixed".into();
    let p = pv.verify(&key.token(&c3), NOW).unwrap();
    assert_eq!(
        p.verified.principal.agent_id.as_str(),
        format!("partner:{}", c3["sub"].as_str().unwrap())
    );
    // a string group claim is one group; a number is refused
    let mut c2 = c.clone();
    c2["realm_access"]["roles"] = "solo".into();
    c2["jti"] = "x".into();
    assert_eq!(
        v.verify(&key.token(&c2), NOW)
            .unwrap()
            .verified
            .principal
            .groups,
        ["idp:solo", "issuer:idp", "scope:a", "scope:b"]
    );
    c2["realm_access"]["roles"] = 3.into();
    assert_eq!(code(&v, &key.token(&c2)), "JWT_CLAIM_INVALID");
    // the agent claim missing, or not a valid agent id
    let mut c3 = c.clone();
    c3.as_object_mut().unwrap().remove("azp");
    assert_eq!(code(&v, &key.token(&c3)), "JWT_CLAIM_MISSING");
    c3["azp"] = "has space".into();
    assert_eq!(code(&v, &key.token(&c3)), "JWT_AGENT_ID_INVALID");
    c3["azp"] = json!(["a"]);
    assert_eq!(code(&v, &key.token(&c3)), "JWT_AGENT_ID_INVALID");
}

#[test]
fn alg_none_and_hmac_with_the_public_key_are_refused() {
    let key = rsa(Some("r1"));
    let v = verifier(&[&key]);
    let body = B64.encode(claims().to_string());
    let none = format!("{}.{body}.", B64.encode(r#"{"alg":"none","kid":"r1"}"#));
    assert!(looks_like_jwt(&none));
    assert_eq!(code(&v, &none), "JWT_ALG_NOT_ALLOWED");
    let none_sig = format!("{}.{body}.AAAA", B64.encode(r#"{"alg":"none","kid":"r1"}"#));
    assert_eq!(code(&v, &none_sig), "JWT_ALG_NOT_ALLOWED");
    // HS256 keyed with the public key's bytes (the JWK's modulus and its JSON form).
    for secret in [
        B64.decode(key.jwk["n"].as_str().unwrap()).unwrap(),
        key.jwk.to_string().into_bytes(),
    ] {
        let signed = format!("{}.{body}", B64.encode(r#"{"alg":"HS256","kid":"r1"}"#));
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        let t = format!(
            "{signed}.{}",
            B64.encode(ring::hmac::sign(&k, signed.as_bytes()))
        );
        assert_eq!(code(&v, &t), "JWT_ALG_NOT_ALLOWED");
    }
    // an HMAC key in the JWKS is never usable
    let oct = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]});
    assert!(matches!(
        KeySet::from_json(oct.to_string().as_bytes()),
        Err(JwksError::NoUsableKey)
    ));
    // and HS256/none cannot be configured
    assert_eq!(
        Algorithm::parse("HS256").unwrap_err().code(),
        "JWT_ALG_FORBIDDEN"
    );
    assert_eq!(
        Algorithm::parse("none").unwrap_err().code(),
        "JWT_ALG_FORBIDDEN"
    );
    assert_eq!(
        Algorithm::parse("RS1").unwrap_err().code(),
        "JWT_ALG_UNKNOWN"
    );
}

#[test]
fn algorithm_must_be_allowed_and_match_the_key() {
    let r = rsa(Some("k"));
    let e = p256(Some("k2"));
    let mut policy = IssuerPolicy::new(ISS, vec![AUD.to_string()]);
    policy.algorithms = vec![Algorithm::ES256];
    let v = verifier_with(policy, &[&r, &e]);
    assert_eq!(code(&v, &r.token(&claims())), "JWT_ALG_NOT_ALLOWED");
    assert_eq!(code(&v, &e.token(&claims())), "OK");
    // header says ES256 but names the RSA key: no key fits
    let t = e.token_with(&json!({"alg": "ES256", "kid": "k"}), &claims());
    assert_eq!(code(&v, &t), "JWT_KID_UNKNOWN");
    // a JWK whose `alg` disagrees with its type is not usable; `use: enc` neither
    let mut bad = e.jwk.clone();
    bad["alg"] = "RS256".into();
    let mut enc = r.jwk.clone();
    enc["use"] = "enc".into();
    let doc = json!({"keys": [bad, enc]});
    assert!(KeySet::from_json(doc.to_string().as_bytes()).is_err());
    // a JWK `alg` restricts the key to that algorithm
    let mut rs384 = r.jwk.clone();
    rs384["alg"] = "RS384".into();
    let mut policy = IssuerPolicy::new(ISS, vec![AUD.to_string()]);
    policy.algorithms = vec![Algorithm::RS256, Algorithm::RS384];
    let v = Verifier::new(vec![policy], 0).unwrap();
    v.install_keys(
        ISS,
        KeySet::from_json(json!({"keys": [rs384]}).to_string().as_bytes()).unwrap(),
    );
    assert_eq!(code(&v, &r.token(&claims())), "JWT_KID_UNKNOWN");
}

#[test]
fn crit_length_and_shape_are_refused() {
    let key = ed(Some("d1"));
    let v = verifier(&[&key]);
    let t = key.token_with(
        &json!({"alg": "EdDSA", "kid": "d1", "crit": ["exp"], "exp": 1}),
        &claims(),
    );
    assert_eq!(code(&v, &t), "JWT_CRIT_UNSUPPORTED");
    let mut c = claims();
    c["pad"] = "x".repeat(MAX_TOKEN_LEN).into();
    assert_eq!(code(&v, &key.token(&c)), "JWT_MALFORMED");
    assert_eq!(code(&v, "a.b"), "JWT_MALFORMED");
    assert_eq!(code(&v, "a.b.c.d"), "JWT_MALFORMED");
    assert_eq!(code(&v, "!!.b.c"), "JWT_MALFORMED");
    let not_object = key.token_with(&json!({"alg": "EdDSA", "kid": "d1"}), &json!([1]));
    assert_eq!(code(&v, &not_object), "JWT_MALFORMED");
    assert!(looks_like_jwt(&key.token(&claims())));
    for s in ["lap_abc", "a.b", "a..c", ".b.c", "a.b.c.d", "a.b.c=", ""] {
        assert!(!looks_like_jwt(s), "{s}");
    }
}

#[test]
fn issuer_selects_and_unknown_issuer_is_refused_before_keys() {
    let key = rsa(Some("r1"));
    let v = verifier(&[&key]);
    let mut c = claims();
    c["iss"] = "https://evil.example".into();
    assert_eq!(code(&v, &key.token(&c)), "JWT_ISSUER_UNKNOWN");
    c["iss"] = format!("{ISS}/").into();
    assert_eq!(code(&v, &key.token(&c)), "JWT_ISSUER_UNKNOWN");
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(code(&v, &key.token(&c)), "JWT_CLAIM_MISSING");
    // a configured issuer without keys yet
    let empty = Verifier::new(vec![IssuerPolicy::new(ISS, vec![AUD.into()])], 4).unwrap();
    assert!(!empty.has_keys(ISS));
    assert_eq!(
        code(&empty, &key.token(&claims())),
        "JWT_ISSUER_UNAVAILABLE"
    );
}

#[test]
fn tampered_payload_or_signature_and_wrong_kid() {
    let key = p256(Some("e1"));
    let other = p256(Some("e1"));
    let v = verifier(&[&key]);
    let good = key.token(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let mut c = claims();
    c["sub"] = "admin".into();
    let tampered = format!("{}.{}.{}", parts[0], B64.encode(c.to_string()), parts[2]);
    assert_eq!(code(&v, &tampered), "JWT_SIGNATURE_INVALID");
    let mut s = B64.decode(parts[2]).unwrap();
    s[5] ^= 1;
    let bad_sig = format!("{}.{}.{}", parts[0], parts[1], B64.encode(s));
    assert_eq!(code(&v, &bad_sig), "JWT_SIGNATURE_INVALID");
    // same kid, another key: signature invalid; another kid: unknown
    assert_eq!(code(&v, &other.token(&claims())), "JWT_SIGNATURE_INVALID");
    let t = key.token_with(&json!({"alg": "ES256", "kid": "nope"}), &claims());
    assert_eq!(code(&v, &t), "JWT_KID_UNKNOWN");
}

#[test]
fn kidless_token_only_with_exactly_one_fitting_key() {
    let a = ed(None);
    let b = ed(None);
    let r = rsa(None);
    let header = json!({"alg": "EdDSA"});
    let one = verifier(&[&a, &r]);
    assert_eq!(code(&one, &a.token_with(&header, &claims())), "OK");
    let two = verifier(&[&a, &b]);
    assert_eq!(
        code(&two, &a.token_with(&header, &claims())),
        "JWT_KID_UNKNOWN"
    );
}

#[test]
fn time_claims_with_leeway() {
    let key = ed(Some("d1"));
    let v = verifier(&[&key]);
    let with = |name: &str, value: i64| {
        let mut c = claims();
        c[name] = value.into();
        key.token(&c)
    };
    assert_eq!(code(&v, &with("exp", NOW - 31)), "JWT_EXPIRED");
    assert_eq!(code(&v, &with("exp", NOW - 29)), "OK");
    assert_eq!(code(&v, &with("nbf", NOW + 31)), "JWT_NOT_YET_VALID");
    assert_eq!(code(&v, &with("nbf", NOW + 29)), "OK");
    assert_eq!(code(&v, &with("iat", NOW + 31)), "JWT_ISSUED_IN_FUTURE");
    assert_eq!(code(&v, &with("iat", NOW + 29)), "OK");
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(code(&v, &key.token(&c)), "JWT_CLAIM_MISSING");
    c["exp"] = "soon".into();
    assert_eq!(code(&v, &key.token(&c)), "JWT_CLAIM_INVALID");
    // no leeway
    let mut policy = IssuerPolicy::new(ISS, vec![AUD.to_string()]);
    policy.leeway_secs = 0;
    let strict = verifier_with(policy, &[&key]);
    assert_eq!(code(&strict, &with("exp", NOW)), "JWT_EXPIRED");
    assert_eq!(code(&strict, &with("nbf", NOW + 1)), "JWT_NOT_YET_VALID");
}

#[test]
fn audience_and_required_claims() {
    let key = ed(Some("d1"));
    let mut policy = IssuerPolicy::new(ISS, vec![AUD.to_string(), "https://gw.example".into()]);
    policy.required_claims = vec![ClaimPath::parse("tenant.id").unwrap()];
    let v = verifier_with(policy, &[&key]);
    let mut c = claims();
    c["tenant"] = json!({"id": "t1"});
    assert_eq!(code(&v, &key.token(&c)), "OK");
    c["aud"] = json!(["other", "https://gw.example"]);
    let out = v.verify(&key.token(&c), NOW).unwrap();
    assert_eq!(out.verified.audiences, ["https://gw.example"]);
    c["aud"] = json!(["other"]);
    assert_eq!(code(&v, &key.token(&c)), "JWT_AUDIENCE_MISMATCH");
    c["aud"] = "https://gw.example/".into();
    assert_eq!(code(&v, &key.token(&c)), "JWT_AUDIENCE_MISMATCH");
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(code(&v, &key.token(&c)), "JWT_CLAIM_MISSING");
    let mut c = claims();
    c["tenant"] = json!({"name": "t1"});
    assert_eq!(code(&v, &key.token(&c)), "JWT_CLAIM_MISSING");
    c["tenant"] = json!({"id": "t1"});
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(code(&v, &key.token(&c)), "JWT_CLAIM_MISSING");
}

#[test]
fn cache_answers_repeats_until_exp_and_key_rotation() {
    let key = ed(Some("d1"));
    let v = verifier(&[&key]);
    let t = key.token(&claims());
    assert!(!v.verify(&t, NOW).unwrap().cached);
    assert!(v.verify(&t, NOW).unwrap().cached);
    assert_eq!(v.cache.len(), 1);
    // at exp the entry goes (and the full check, with leeway, decides)
    assert!(!v.verify(&t, NOW + 600).unwrap().cached);
    assert!(v.verify(&t, NOW + 600 + 31).is_err());
    // the same JWKS installed again changes nothing; a new one drops the issuer's entries
    assert!(v.verify(&t, NOW).is_ok());
    assert!(v.verify(&t, NOW).unwrap().cached);
    assert!(!v.install_keys(ISS, jwks(&[&key])));
    assert!(v.verify(&t, NOW).unwrap().cached);
    let rotated = ed(Some("d2"));
    assert!(v.install_keys(ISS, jwks(&[&rotated])));
    assert_eq!(v.cache.len(), 0);
    assert_eq!(code(&v, &t), "JWT_KID_UNKNOWN");
    assert!(!v.install_keys("https://unknown.example", jwks(&[&rotated])));
}

#[test]
fn cache_is_bounded() {
    let key = ed(Some("d1"));
    let policy = IssuerPolicy::new(ISS, vec![AUD.to_string()]);
    let v = Verifier::new(vec![policy], 3).unwrap();
    v.install_keys(ISS, jwks(&[&key]));
    for i in 0..10 {
        let mut c = claims();
        c["jti"] = i.into();
        v.verify(&key.token(&c), NOW).unwrap();
        assert!(v.cache.len() <= 3);
    }
}

#[test]
fn policy_validation() {
    let ok = IssuerPolicy::new(ISS, vec![AUD.to_string()]);
    assert!(ok.validate().is_ok());
    let mut p = ok.clone();
    p.leeway_secs = MAX_LEEWAY_SECS + 1;
    assert_eq!(p.validate().unwrap_err().code(), "JWT_POLICY_INVALID");
    let mut p = ok.clone();
    p.audiences.clear();
    assert!(p.validate().is_err());
    let mut p = ok.clone();
    p.algorithms.clear();
    assert!(p.validate().is_err());
    assert!(ClaimPath::parse("a..b").is_err());
    assert!(Verifier::new(vec![ok.clone(), ok], 1).is_err());
}

#[test]
fn jwks_documents() {
    assert_eq!(
        KeySet::from_json(b"[]").unwrap_err().code(),
        "JWKS_MALFORMED"
    );
    assert_eq!(
        KeySet::from_json(b"{").unwrap_err().code(),
        "JWKS_MALFORMED"
    );
    assert_eq!(
        KeySet::from_json(br#"{"keys":[]}"#).unwrap_err().code(),
        "JWKS_NO_USABLE_KEY"
    );
    let big = vec![b' '; MAX_JWKS_BYTES + 1];
    assert_eq!(
        KeySet::from_json(&big).unwrap_err().code(),
        "JWKS_TOO_LARGE"
    );
    // unusable entries are skipped, usable ones kept
    let e = ed(Some("d1"));
    let doc = json!({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}, {"kty": "EC", "crv": "P-521"}, e.jwk]});
    assert_eq!(
        KeySet::from_json(doc.to_string().as_bytes()).unwrap().len(),
        1
    );
}

#[test]
fn one_key_set_serves_verifiers_with_their_own_audiences() {
    let key = ed(Some("d1"));
    let keys = std::sync::Arc::new(jwks(&[&key]));
    let data = Verifier::new(vec![IssuerPolicy::new(ISS, vec![AUD.to_string()])], 16).unwrap();
    let admin_aud = "https://gw.example/admin";
    let admin = Verifier::new(vec![IssuerPolicy::new(ISS, vec![admin_aud.into()])], 16).unwrap();
    assert!(data.install_shared_keys(ISS, keys.clone()));
    assert!(admin.install_shared_keys(ISS, keys.clone()));
    // The same set again changes nothing; an issuer a verifier lacks is ignored.
    assert!(!admin.install_shared_keys(ISS, keys.clone()));
    assert!(!admin.install_shared_keys("https://other.example", keys));
    let agent = key.token(&claims());
    let mut c = claims();
    c["aud"] = admin_aud.into();
    let operator = key.token(&c);
    assert_eq!(code(&data, &agent), "OK");
    assert_eq!(code(&admin, &agent), "JWT_AUDIENCE_MISMATCH");
    assert_eq!(code(&admin, &operator), "OK");
    assert_eq!(code(&data, &operator), "JWT_AUDIENCE_MISMATCH");
}
