//! Who may use the admin plane, and for what.
//!
//! Every admin request is authenticated before it is routed, against one table that gives each
//! route the least [`Role`] it needs ([`rule`]). Authentication turns the request's credential
//! into an [`AdminPrincipal`] or refuses it with a stable code; authorisation then compares
//! roles. The credential is a bearer token from the tokens file, or, with `[[admin.jwt]]`
//! issuers, a bearer shaped like a JWT (three dot-separated base64url segments; minted admin
//! tokens never are): an OIDC token verified against the admin issuers' own audiences (a
//! data-plane token is refused `JWT_AUDIENCE_MISMATCH`), the admin id from its subject claim
//! and the highest role its role claim maps to. A valid token that maps to no role is refused
//! 403 `ADMIN_ROLE_INSUFFICIENT`: who it is is proved, but it may do nothing. The two health probes may be left open
//! (`[admin] open_probes`, the default) because orchestrators probe without credentials and
//! the probes say nothing an attacker could use.
//!
//! An admin plane configured without authentication (explicitly, loopback only) treats every
//! caller as [`Caller::Unauthenticated`] with every role.

use crate::config::{AdminAccess, AdminConfig};
use crate::jwks::JwtRuntime;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use lap_auth::{AdminAuthError, AdminCredential, AdminPrincipal, AdminTokenStore, Role};
use lap_jwt::JwtError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a route needs: the least role, and whether it changes something (then every attempt,
/// allowed or refused, is written to the log as an admin receipt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRule {
    pub role: Role,
    pub mutating: bool,
}

const fn needs(role: Role) -> RouteRule {
    RouteRule {
        role,
        mutating: false,
    }
}

const fn changes(role: Role) -> RouteRule {
    RouteRule {
        role,
        mutating: true,
    }
}

/// The route → role table (`docs/api.md`, "Admin plane"). Routes not listed need `viewer`,
/// so an unauthenticated caller cannot even learn which routes exist.
///
/// | route | role |
/// |---|---|
/// | `/healthz`, `/readyz`, `/metrics` | viewer |
/// | `/v1/receipts/…`, `/v1/log/…`, `/v1/audit-pack` | auditor |
/// | `/v1/sessions/{id}/revoke`, `/v1/reload` | operator (mutating) |
/// | `/v1/api-keys` | admin |
pub fn rule(path: &str) -> RouteRule {
    match path {
        "/healthz" | "/readyz" | "/metrics" => needs(Role::Viewer),
        "/v1/audit-pack" => needs(Role::Auditor),
        p if p.starts_with("/v1/receipts/") || p.starts_with("/v1/log/") => needs(Role::Auditor),
        "/v1/reload" => changes(Role::Operator),
        p if p.starts_with("/v1/sessions/") => changes(Role::Operator),
        "/v1/api-keys" => needs(Role::Admin),
        _ => needs(Role::Viewer),
    }
}

/// Whether the path is one of the health probes `open_probes` leaves open.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A verified admin.
    Admin(Arc<AdminPrincipal>),
    /// No credential, where none is needed: an open probe, or an admin plane explicitly
    /// configured without authentication on loopback.
    Unauthenticated,
}

impl Caller {
    /// A non-secret label for log lines.
    pub fn label(&self) -> &str {
        match self {
            Caller::Admin(p) => &p.id,
            Caller::Unauthenticated => "-",
        }
    }
}

/// Why an admin request was refused before routing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminRefusal {
    #[error(transparent)]
    Auth(#[from] AdminAuthError),
    /// An OIDC token refused by the admin issuers' rules (the `JWT_*` codes).
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// A verified OIDC token whose role claim maps to no role.
    #[error("this route needs the {needed} role (the token's role claim maps to no admin role)")]
    RoleUnmapped {
        needed: Role,
        id: String,
        credential: AdminCredential,
    },
    /// A verified admin whose role is below the route's.
    #[error("this route needs the {needed} role (the token has {})", .admin.role)]
    RoleInsufficient {
        needed: Role,
        admin: Arc<AdminPrincipal>,
    },
}

impl AdminRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            AdminRefusal::Auth(e) => e.code(),
            AdminRefusal::Jwt(e) => e.code(),
            AdminRefusal::RoleInsufficient { .. } | AdminRefusal::RoleUnmapped { .. } => {
                "ADMIN_ROLE_INSUFFICIENT"
            }
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            AdminRefusal::Auth(_) => 401,
            // Fail closed while the issuer's keys were never loaded, as on the data plane.
            AdminRefusal::Jwt(JwtError::IssuerUnavailable { .. }) => 503,
            AdminRefusal::Jwt(_) => 401,
            AdminRefusal::RoleInsufficient { .. } | AdminRefusal::RoleUnmapped { .. } => 403,
        }
    }
}

/// The admin plane's authentication: its settings and the tokens in force.
pub struct AdminAuth {
    config: AdminConfig,
    tokens: ArcSwap<AdminTokenStore>,
    /// Verifies admins' OIDC tokens (`[[admin.jwt]]`); `None` without admin issuers.
    jwt: Option<Arc<JwtRuntime>>,
    metrics: Arc<Metrics>,
    anonymous: std::sync::Mutex<Window>,
    /// The same allowance for refused attempts by verified admins (too low a role, or none):
    /// a window of its own, so anonymous attempts cannot crowd out their evidence.
    identified: std::sync::Mutex<Window>,
}

/// Receipts of refused mutating attempts by no verified admin, written per minute at most:
/// anyone who reaches the admin port can send them, and each costs a log entry. Beyond, the
/// attempts are still refused and counted (`lap_admin_refusals_total`), and logged.
pub const ANONYMOUS_RECEIPTS_PER_MINUTE: u32 = 60;

/// Receipts of refused mutating attempts by verified admins whose role does not allow them,
/// written per minute at most: a valid token with no role could otherwise grow the log without
/// bound. Beyond, the attempts are refused, counted and logged, as above.
pub const IDENTIFIED_REFUSAL_RECEIPTS_PER_MINUTE: u32 = 60;

/// A fixed one-minute window of refused-attempt receipts.
struct Window {
    start: std::time::Instant,
    used: u32,
}

impl Window {
    fn new() -> Self {
        Window {
            start: std::time::Instant::now(),
            used: 0,
        }
    }

    /// Takes one receipt of this minute's `limit`, if any is left.
    fn take(window: &std::sync::Mutex<Window>, limit: u32) -> bool {
        let Ok(mut w) = window.lock() else {
            return false;
        };
        if w.start.elapsed() >= std::time::Duration::from_secs(60) {
            *w = Window::new();
        }
        if w.used >= limit {
            return false;
        }
        w.used += 1;
        true
    }
}

/// Why an admin tokens file could not be loaded. Never quotes token material.
#[derive(Debug, thiserror::Error)]
pub enum TokensLoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is empty; an empty file is refused as a write caught half-way (to have no admin tokens, {{\"version\": 1, \"tokens\": []}})")]
    Empty { path: PathBuf },
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: lap_auth::KeyFileError,
    },
}

impl TokensLoadError {
    pub fn code(&self) -> &'static str {
        match self {
            TokensLoadError::Read { .. } => "ADMIN_TOKENS_UNREADABLE",
            TokensLoadError::Empty { .. } => "ADMIN_TOKENS_EMPTY",
            TokensLoadError::Invalid { .. } => "ADMIN_TOKENS_INVALID",
        }
    }
}

/// Loads an admin tokens file.
pub fn load_tokens(path: &Path) -> Result<AdminTokenStore, TokensLoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokensLoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if text.trim().is_empty() {
        return Err(TokensLoadError::Empty {
            path: path.to_path_buf(),
        });
    }
    lap_auth::parse_admin_token_file(&text)
        .and_then(AdminTokenStore::new)
        .map_err(|source| TokensLoadError::Invalid {
            path: path.to_path_buf(),
            source,
        })
}

impl AdminAuth {
    /// At start-up: loads the tokens file when one is configured (a failure stops start-up).
    /// `jwt` is the runtime that holds the admin issuers' verifier (`[[admin.jwt]]`); without
    /// it every JWT-shaped bearer is refused.
    pub fn new(
        config: AdminConfig,
        jwt: Option<Arc<JwtRuntime>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, TokensLoadError> {
        let store = match &config.access {
            AdminAccess::Tokens(path) => load_tokens(path)?,
            _ => AdminTokenStore::default(),
        };
        metrics.admin_tokens_loaded.set(store.len() as i64);
        Ok(Self {
            config,
            tokens: ArcSwap::from_pointee(store),
            jwt: jwt.filter(|j| j.admin_enabled()),
            metrics,
            anonymous: std::sync::Mutex::new(Window::new()),
            identified: std::sync::Mutex::new(Window::new()),
        })
    }

    /// Whether a refused attempt by no verified admin may have its receipt now
    /// ([`ANONYMOUS_RECEIPTS_PER_MINUTE`]).
    pub fn anonymous_receipt_allowed(&self) -> bool {
        Window::take(&self.anonymous, ANONYMOUS_RECEIPTS_PER_MINUTE)
    }

    /// Whether a refused attempt by a verified admin (role too low, or none) may have its
    /// receipt now ([`IDENTIFIED_REFUSAL_RECEIPTS_PER_MINUTE`]).
    pub fn identified_refusal_receipt_allowed(&self) -> bool {
        Window::take(&self.identified, IDENTIFIED_REFUSAL_RECEIPTS_PER_MINUTE)
    }

    /// The tokens file, when tokens are configured.
    pub fn tokens_file(&self) -> Option<&Path> {
        match &self.config.access {
            AdminAccess::Tokens(p) => Some(p),
            _ => None,
        }
    }

    /// Re-reads the tokens file; on failure the tokens in force stay.
    pub fn reload(&self) -> Result<usize, TokensLoadError> {
        let Some(path) = self.tokens_file() else {
            return Ok(0);
        };
        let result = load_tokens(path);
        let outcome = if result.is_ok() { "success" } else { "error" };
        self.metrics
            .reloads
            .with_label_values(&["admin_tokens", outcome])
            .inc();
        let store = result?;
        let n = store.len();
        self.tokens.store(Arc::new(store));
        self.metrics.admin_tokens_loaded.set(n as i64);
        self.metrics
            .config_generation
            .with_label_values(&["admin_tokens"])
            .inc();
        Ok(n)
    }

    /// Authenticates and authorises a request for `path` carrying these `Authorization`
    /// header values. A refusal is counted by code.
    pub async fn admit<'a>(
        &self,
        path: &str,
        authorization: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Caller, AdminRefusal> {
        let presented = bearer(authorization);
        let result = self.decide(path, presented).await;
        if let Err(e) = &result {
            self.metrics
                .admin_refusals
                .with_label_values(&[e.code()])
                .inc();
        }
        result
    }

    async fn decide(&self, path: &str, presented: Presented<'_>) -> Result<Caller, AdminRefusal> {
        if self.config.access == AdminAccess::UnauthenticatedLoopback {
            return Ok(Caller::Unauthenticated);
        }
        if self.config.open_probes && is_probe(path) && presented == Presented::None {
            return Ok(Caller::Unauthenticated);
        }
        let token = match presented {
            Presented::None => return Err(AdminAuthError::Missing.into()),
            Presented::Malformed => return Err(AdminAuthError::Invalid.into()),
            Presented::Bearer(t) => t,
        };
        let needed = rule(path).role;
        let principal = if !self.config.jwt.is_empty() && lap_jwt::looks_like_jwt(token) {
            self.jwt_admin(token, needed).await?
        } else {
            self.tokens
                .load()
                .authenticate(token, time::OffsetDateTime::now_utc())?
        };
        if !principal.role.allows(needed) {
            return Err(AdminRefusal::RoleInsufficient {
                needed,
                admin: principal,
            });
        }
        Ok(Caller::Admin(principal))
    }
}

impl AdminAuth {
    /// The admin an OIDC token proves, with the highest role its role claim maps to.
    async fn jwt_admin(
        &self,
        token: &str,
        needed: Role,
    ) -> Result<Arc<AdminPrincipal>, AdminRefusal> {
        let runtime = self.jwt.as_ref().ok_or(JwtError::IssuerUnknown)?;
        let verified = runtime.verify_admin(token).await?.verified;
        let issuer = self
            .config
            .jwt
            .iter()
            .find(|j| j.policy.issuer == verified.issuer)
            .ok_or(JwtError::IssuerUnknown)?;
        let lap_auth::Credential::Jwt {
            issuer: iss,
            subject,
            kid,
            token_hash_prefix,
            ..
        } = &verified.principal.credential
        else {
            return Err(JwtError::IssuerUnknown.into());
        };
        let credential = AdminCredential::Jwt {
            issuer: iss.clone(),
            subject: subject.clone(),
            kid: kid.clone(),
            token_hash_prefix: token_hash_prefix.clone(),
        };
        // The verifier read the role claim as the principal's groups (admin issuers have no
        // group prefix, issuer groups or scope groups).
        let id = verified.principal.agent_id.as_str().to_string();
        match issuer.role(&verified.principal.groups) {
            Some(role) => Ok(Arc::new(AdminPrincipal {
                id,
                role,
                credential,
            })),
            None => Err(AdminRefusal::RoleUnmapped {
                needed,
                id,
                credential,
            }),
        }
    }
}

/// What the request's `Authorization` header holds.
#[derive(Debug, PartialEq, Eq)]
enum Presented<'a> {
    None,
    /// Several headers, another scheme, or a value that is not text.
    Malformed,
    Bearer(&'a str),
}

fn bearer<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Presented<'a> {
    let Some(first) = values.next() else {
        return Presented::None;
    };
    if values.next().is_some() {
        return Presented::Malformed;
    }
    let Ok(text) = std::str::from_utf8(first) else {
        return Presented::Malformed;
    };
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            let token = token.trim();
            if token.is_empty() {
                Presented::None
            } else {
                Presented::Bearer(token)
            }
        }
        _ => Presented::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lap_auth::ApiKeyHash;

    #[test]
    fn the_route_table() {
        for p in ["/healthz", "/readyz", "/metrics", "/nope"] {
            assert_eq!(rule(p), needs(Role::Viewer), "{p}");
        }
        for p in [
            "/v1/audit-pack",
            "/v1/receipts/abc",
            "/v1/log/checkpoint",
            "/v1/log/vkey",
            "/v1/log/entries/3",
            "/v1/log/proof/inclusion",
        ] {
            assert_eq!(rule(p), needs(Role::Auditor), "{p}");
        }
        for p in ["/v1/reload", "/v1/sessions/s1/revoke"] {
            assert_eq!(rule(p), changes(Role::Operator), "{p}");
        }
        assert_eq!(rule("/v1/api-keys"), needs(Role::Admin));
    }

    #[test]
    fn bearer_parsing() {
        let one = |v: &'static [u8]| bearer(std::iter::once(v));
        assert_eq!(bearer(std::iter::empty()), Presented::None);
        assert_eq!(one(b"Bearer abc"), Presented::Bearer("abc"));
        assert_eq!(one(b"bearer  abc "), Presented::Bearer("abc"));
        assert_eq!(one(b"Bearer "), Presented::None);
        assert_eq!(one(b"Basic dXNlcjpwYXNz"), Presented::Malformed);
        assert_eq!(one(b"abc"), Presented::Malformed);
        assert_eq!(one(b"Bearer \xff"), Presented::Malformed);
        let two: [&[u8]; 2] = [b"Bearer a", b"Bearer b"];
        assert_eq!(bearer(two.into_iter()), Presented::Malformed);
    }

    fn auth(dir: &Path, open_probes: bool) -> AdminAuth {
        let path = dir.join("admin-tokens.json");
        let entry = |id: &str, token: &str, role: &str| {
            format!(
                r#"{{"id":"{id}","hash":"{}","role":"{role}"}}"#,
                ApiKeyHash::of_key(token)
            )
        };
        let text = format!(
            r#"{{"version":1,"tokens":[{},{},{},{}]}}"#,
            entry("v", "tv", "viewer"),
            entry("a", "ta", "auditor"),
            entry("o", "to", "operator"),
            entry("root", "tr", "admin"),
        );
        std::fs::write(&path, text).unwrap();
        let config = AdminConfig {
            access: AdminAccess::Tokens(path),
            open_probes,
            jwt: Vec::new(),
        };
        AdminAuth::new(config, None, Arc::new(Metrics::new().unwrap())).unwrap()
    }

    fn admit(a: &AdminAuth, path: &str, header: Option<&str>) -> Result<Caller, AdminRefusal> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(a.admit(path, header.map(str::as_bytes).into_iter()))
    }

    #[test]
    fn every_refusal_and_the_role_hierarchy() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(dir.path(), true);
        // Open probes answer without a token, but a bad token is still refused.
        assert!(matches!(
            admit(&a, "/healthz", None),
            Ok(Caller::Unauthenticated)
        ));
        assert!(matches!(
            admit(&a, "/readyz", None),
            Ok(Caller::Unauthenticated)
        ));
        assert_eq!(
            admit(&a, "/readyz", Some("Bearer bad")).unwrap_err().code(),
            "ADMIN_TOKEN_INVALID"
        );
        let e = admit(&a, "/metrics", None).unwrap_err();
        assert_eq!((e.status(), e.code()), (401, "ADMIN_AUTH_REQUIRED"));
        let e = admit(&a, "/metrics", Some("Basic x")).unwrap_err();
        assert_eq!((e.status(), e.code()), (401, "ADMIN_TOKEN_INVALID"));
        assert!(admit(&a, "/metrics", Some("Bearer tv")).is_ok());
        let e = admit(&a, "/v1/audit-pack", Some("Bearer tv")).unwrap_err();
        assert_eq!((e.status(), e.code()), (403, "ADMIN_ROLE_INSUFFICIENT"));
        assert!(e.to_string().contains("auditor"), "{e}");
        assert!(admit(&a, "/v1/audit-pack", Some("Bearer ta")).is_ok());
        assert_eq!(
            admit(&a, "/v1/reload", Some("Bearer ta"))
                .unwrap_err()
                .code(),
            "ADMIN_ROLE_INSUFFICIENT"
        );
        assert!(admit(&a, "/v1/reload", Some("Bearer to")).is_ok());
        assert!(admit(&a, "/v1/api-keys", Some("Bearer to")).is_err());
        match admit(&a, "/v1/api-keys", Some("Bearer tr")) {
            Ok(Caller::Admin(p)) => assert_eq!((p.id.as_str(), p.role), ("root", Role::Admin)),
            other => panic!("{other:?}"),
        }
        let refusals = String::from_utf8(a.metrics.render()).unwrap();
        assert!(
            refusals.contains("lap_admin_refusals_total{code=\"ADMIN_ROLE_INSUFFICIENT\"} 3"),
            "{refusals}"
        );
        // Probes closed: they need a token like any route.
        let b = auth(dir.path(), false);
        assert_eq!(
            admit(&b, "/healthz", None).unwrap_err().code(),
            "ADMIN_AUTH_REQUIRED"
        );
        assert!(admit(&b, "/healthz", Some("Bearer tv")).is_ok());
    }

    #[test]
    fn anonymous_receipts_are_capped_per_minute() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(dir.path(), true);
        for _ in 0..ANONYMOUS_RECEIPTS_PER_MINUTE {
            assert!(a.anonymous_receipt_allowed());
        }
        assert!(!a.anonymous_receipt_allowed());
        // Identified refusals have an allowance of their own, untouched by the anonymous one.
        for _ in 0..IDENTIFIED_REFUSAL_RECEIPTS_PER_MINUTE {
            assert!(a.identified_refusal_receipt_allowed());
        }
        assert!(!a.identified_refusal_receipt_allowed());
        assert!(!a.anonymous_receipt_allowed());
    }

    #[test]
    fn unauthenticated_loopback_lets_everything_through() {
        let a = AdminAuth::new(
            AdminConfig {
                access: AdminAccess::UnauthenticatedLoopback,
                open_probes: true,
                jwt: Vec::new(),
            },
            None,
            Arc::new(Metrics::new().unwrap()),
        )
        .unwrap();
        assert!(matches!(
            admit(&a, "/v1/reload", None),
            Ok(Caller::Unauthenticated)
        ));
    }

    #[test]
    fn a_broken_reload_keeps_the_tokens_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(dir.path(), true);
        let path = dir.path().join("admin-tokens.json");
        for broken in ["", "{not json", r#"{"version":1,"tokens":[{"id":"x"}]}"#] {
            std::fs::write(&path, broken).unwrap();
            assert!(a.reload().is_err());
            assert!(admit(&a, "/metrics", Some("Bearer tv")).is_ok());
        }
        std::fs::write(&path, r#"{"version":1,"tokens":[]}"#).unwrap();
        assert_eq!(a.reload().unwrap(), 0);
        assert_eq!(
            admit(&a, "/metrics", Some("Bearer tv")).unwrap_err().code(),
            "ADMIN_TOKEN_INVALID"
        );
        let e = load_tokens(&dir.path().join("missing.json")).unwrap_err();
        assert_eq!(e.code(), "ADMIN_TOKENS_UNREADABLE");
    }

    mod jwt {
        use super::*;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine;
        use ring::signature::{Ed25519KeyPair, KeyPair};
        use serde_json::{json, Value};

        const ISS: &str = "http://127.0.0.1:1/realms/ops";
        const GW: &str = "https://gw.example";

        struct Idp {
            key: Ed25519KeyPair,
        }

        impl Idp {
            fn new() -> Self {
                let rng = ring::rand::SystemRandom::new();
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
                Idp {
                    key: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
                }
            }

            fn jwks(&self) -> String {
                json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
                    "x": B64.encode(self.key.public_key().as_ref())}]})
                .to_string()
            }

            fn mint(&self, claims: Value) -> String {
                let header = B64.encode(json!({"alg": "EdDSA", "kid": "k1"}).to_string());
                let payload = B64.encode(claims.to_string());
                let signed = format!("{header}.{payload}");
                let sig = B64.encode(self.key.sign(signed.as_bytes()).as_ref());
                format!("{signed}.{sig}")
            }
        }

        fn now() -> i64 {
            time::OffsetDateTime::now_utc().unix_timestamp()
        }

        /// Claims of an admin token for `<GW>/admin` with these realm roles.
        fn claims(sub: &str, roles: &[&str]) -> Value {
            json!({"iss": ISS, "sub": sub, "aud": format!("{GW}/admin"),
                "exp": now() + 300, "iat": now(), "realm_access": {"roles": roles}})
        }

        /// An admin plane with a tokens file and `[[admin.jwt]]` on a `jwks_file` issuer,
        /// from a real configuration file.
        fn setup(dir: &Path, idp: &Idp) -> (AdminAuth, Arc<JwtRuntime>) {
            std::fs::write(dir.join("jwks.json"), idp.jwks()).unwrap();
            let tokens = dir.join("admin-tokens.json");
            let entry = format!(
                r#"{{"version":1,"tokens":[{{"id":"root","hash":"{}","role":"admin"}}]}}"#,
                lap_auth::ApiKeyHash::of_key("tr")
            );
            std::fs::write(&tokens, entry).unwrap();
            let toml = format!(
                "[admin]\ntokens_file = \"admin-tokens.json\"\n\
                 [auth]\npublic_url = \"{GW}\"\n\
                 [[auth.jwt]]\nissuer = \"{ISS}\"\njwks_file = \"jwks.json\"\n\
                 [[admin.jwt]]\nissuer = \"{ISS}\"\nroles_claim = \"realm_access.roles\"\n\
                 role_map = {{ \"lap-operators\" = \"operator\", \"lap-auditors\" = \"auditor\", \"lap-viewers\" = \"viewer\" }}\n"
            );
            let path = dir.join("gateway.toml");
            std::fs::write(&path, toml).unwrap();
            let vars: std::collections::BTreeMap<String, String> =
                [("LAP_API_KEYS_JSON".to_string(), "{}".to_string())].into();
            let config =
                crate::config::load(Some(&path), &vars, &crate::config::CliOverrides::default())
                    .unwrap();
            let metrics = Arc::new(Metrics::new().unwrap());
            let runtime = JwtRuntime::new(&config.jwt, &config.admin.jwt, &metrics)
                .unwrap()
                .unwrap();
            let auth = AdminAuth::new(config.admin, Some(runtime.clone()), metrics).unwrap();
            (auth, runtime)
        }

        fn bearer(token: &str) -> String {
            format!("Bearer {token}")
        }

        #[test]
        fn roles_come_from_the_claim_and_the_highest_wins() {
            let dir = tempfile::tempdir().unwrap();
            let idp = Idp::new();
            let (a, _) = setup(dir.path(), &idp);
            let op = idp.mint(claims("alice", &["lap-operators"]));
            match admit(&a, "/v1/reload", Some(&bearer(&op))) {
                Ok(Caller::Admin(p)) => {
                    assert_eq!((p.id.as_str(), p.role), ("alice", Role::Operator));
                    match &p.credential {
                        AdminCredential::Jwt {
                            issuer,
                            subject,
                            kid,
                            token_hash_prefix,
                        } => {
                            assert_eq!(
                                (issuer.as_str(), subject.as_str(), kid.as_deref()),
                                (ISS, "alice", Some("k1"))
                            );
                            assert!(token_hash_prefix.starts_with("sha256:"));
                            assert_eq!(token_hash_prefix.len(), 19);
                        }
                        other => panic!("{other:?}"),
                    }
                    assert!(!format!("{p:?}").contains(&op));
                }
                other => panic!("{other:?}"),
            }
            let both = idp.mint(claims("bob", &["lap-auditors", "other", "lap-operators"]));
            assert!(admit(&a, "/v1/reload", Some(&bearer(&both))).is_ok());
            let auditor = idp.mint(claims("carol", &["lap-auditors"]));
            assert!(admit(&a, "/v1/audit-pack", Some(&bearer(&auditor))).is_ok());
            let e = admit(&a, "/v1/reload", Some(&bearer(&auditor))).unwrap_err();
            assert_eq!((e.status(), e.code()), (403, "ADMIN_ROLE_INSUFFICIENT"));
            assert!(matches!(
                e,
                AdminRefusal::RoleInsufficient {
                    needed: Role::Operator,
                    ..
                }
            ));
            let viewer = idp.mint(claims("dan", &["lap-viewers"]));
            assert!(admit(&a, "/metrics", Some(&bearer(&viewer))).is_ok());
            assert_eq!(
                admit(&a, "/v1/api-keys", Some(&bearer(&op)))
                    .unwrap_err()
                    .code(),
                "ADMIN_ROLE_INSUFFICIENT"
            );
            // A valid token mapping to no role proves who it is and may do nothing.
            for roles in [&["LAP-OPERATORS"][..], &[]] {
                let none = idp.mint(claims("eve", roles));
                match admit(&a, "/metrics", Some(&bearer(&none))).unwrap_err() {
                    e @ AdminRefusal::RoleUnmapped { .. } => {
                        assert_eq!((e.status(), e.code()), (403, "ADMIN_ROLE_INSUFFICIENT"));
                        assert!(
                            matches!(&e, AdminRefusal::RoleUnmapped { needed: Role::Viewer, id, .. } if id == "eve")
                        );
                    }
                    other => panic!("{other:?}"),
                }
            }
            // The tokens file works alongside.
            assert!(admit(&a, "/v1/api-keys", Some("Bearer tr")).is_ok());
        }

        #[test]
        fn every_refusal_of_a_token() {
            let dir = tempfile::tempdir().unwrap();
            let idp = Idp::new();
            let (a, runtime) = setup(dir.path(), &idp);
            let with = |f: &dyn Fn(&mut Value)| {
                let mut c = claims("alice", &["lap-operators"]);
                f(&mut c);
                idp.mint(c)
            };
            let other = Idp::new();
            let cases = [
                // An agent's token for the data plane: another audience.
                (with(&|c| c["aud"] = GW.into()), "JWT_AUDIENCE_MISMATCH"),
                (
                    with(&|c| c["aud"] = format!("{GW}/mcp/files").into()),
                    "JWT_AUDIENCE_MISMATCH",
                ),
                (with(&|c| c["exp"] = (now() - 600).into()), "JWT_EXPIRED"),
                (
                    with(&|c| c["nbf"] = (now() + 600).into()),
                    "JWT_NOT_YET_VALID",
                ),
                (
                    with(&|c| c["iss"] = "https://elsewhere.example".into()),
                    "JWT_ISSUER_UNKNOWN",
                ),
                (
                    with(&|c| c["realm_access"]["roles"] = json!({"a": 1})),
                    "JWT_CLAIM_INVALID",
                ),
                (
                    with(&|c| c["sub"] = "has space".into()),
                    "JWT_AGENT_ID_INVALID",
                ),
                (
                    with(&|c| {
                        c.as_object_mut().unwrap().remove("exp");
                    }),
                    "JWT_CLAIM_MISSING",
                ),
                (
                    other.mint(claims("alice", &["lap-operators"])),
                    "JWT_SIGNATURE_INVALID",
                ),
                ("e30.e30.".to_string(), "JWT_MALFORMED"),
            ];
            for (token, code) in cases {
                let e = admit(&a, "/v1/reload", Some(&bearer(&token))).unwrap_err();
                assert_eq!((e.status(), e.code()), (401, code), "{e}");
                assert!(!e.to_string().contains(&token));
                let answer = crate::admin::Refusal::from(e).response();
                assert_eq!(
                    answer.headers()["www-authenticate"],
                    "Bearer realm=\"lap-admin\", error=\"invalid_token\""
                );
            }
            let refusals = String::from_utf8(a.metrics.render()).unwrap();
            assert!(
                refusals.contains("lap_admin_refusals_total{code=\"JWT_AUDIENCE_MISMATCH\"} 2"),
                "{refusals}"
            );
            // And the other way round: an admin token is no agent credential.
            let admin_token = idp.mint(claims("alice", &["lap-operators"]));
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            assert_eq!(
                rt.block_on(runtime.verify(&admin_token)).unwrap_err(),
                JwtError::AudienceMismatch
            );
            let agent_token = with(&|c| c["aud"] = GW.into());
            assert!(rt.block_on(runtime.verify(&agent_token)).is_ok());
        }

        #[test]
        fn without_admin_issuers_a_jwt_is_just_a_wrong_admin_token() {
            let dir = tempfile::tempdir().unwrap();
            let a = auth(dir.path(), true);
            let idp = Idp::new();
            let t = idp.mint(claims("alice", &["lap-operators"]));
            assert_eq!(
                admit(&a, "/metrics", Some(&bearer(&t))).unwrap_err().code(),
                "ADMIN_TOKEN_INVALID"
            );
        }
    }
}
