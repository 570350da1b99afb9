//! Who may use the admin plane, and for what.
//!
//! Every admin request is authenticated before it is routed, against one table that gives each
//! route the least [`Role`] it needs ([`rule`]). Authentication turns the request's credential
//! into an [`AdminPrincipal`] (today a bearer token from the tokens file; the credential enum
//! in `lap_auth::admin` is where another kind of proof plugs in) or refuses it with a stable
//! code; authorisation then compares roles. The two health probes may be left open
//! (`[admin] open_probes`, the default) because orchestrators probe without credentials and
//! the probes say nothing an attacker could use.
//!
//! An admin plane configured without authentication (explicitly, loopback only) treats every
//! caller as [`Caller::Unauthenticated`] with every role.

use crate::config::{AdminAccess, AdminConfig};
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use lap_auth::{AdminAuthError, AdminPrincipal, AdminTokenStore, Role};
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
            AdminRefusal::RoleInsufficient { .. } => "ADMIN_ROLE_INSUFFICIENT",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            AdminRefusal::Auth(_) => 401,
            AdminRefusal::RoleInsufficient { .. } => 403,
        }
    }
}

/// The admin plane's authentication: its settings and the tokens in force.
pub struct AdminAuth {
    config: AdminConfig,
    tokens: ArcSwap<AdminTokenStore>,
    metrics: Arc<Metrics>,
    anonymous: std::sync::Mutex<Window>,
}

/// Receipts of refused mutating attempts by no verified admin, written per minute at most:
/// anyone who reaches the admin port can send them, and each costs a log entry. Beyond, the
/// attempts are still refused and counted (`lap_admin_refusals_total`), and logged.
pub const ANONYMOUS_RECEIPTS_PER_MINUTE: u32 = 60;

/// A fixed one-minute window of anonymous admin receipts.
struct Window {
    start: std::time::Instant,
    used: u32,
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
    pub fn new(config: AdminConfig, metrics: Arc<Metrics>) -> Result<Self, TokensLoadError> {
        let store = match &config.access {
            AdminAccess::Tokens(path) => load_tokens(path)?,
            _ => AdminTokenStore::default(),
        };
        metrics.admin_tokens_loaded.set(store.len() as i64);
        Ok(Self {
            config,
            tokens: ArcSwap::from_pointee(store),
            metrics,
            anonymous: std::sync::Mutex::new(Window {
                start: std::time::Instant::now(),
                used: 0,
            }),
        })
    }

    /// Whether a refused attempt by no verified admin may have its receipt now
    /// ([`ANONYMOUS_RECEIPTS_PER_MINUTE`]).
    pub fn anonymous_receipt_allowed(&self) -> bool {
        let Ok(mut w) = self.anonymous.lock() else {
            return false;
        };
        if w.start.elapsed() >= std::time::Duration::from_secs(60) {
            w.start = std::time::Instant::now();
            w.used = 0;
        }
        if w.used >= ANONYMOUS_RECEIPTS_PER_MINUTE {
            return false;
        }
        w.used += 1;
        true
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
    pub fn admit<'a>(
        &self,
        path: &str,
        authorization: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Caller, AdminRefusal> {
        let result = self.decide(path, authorization);
        if let Err(e) = &result {
            self.metrics
                .admin_refusals
                .with_label_values(&[e.code()])
                .inc();
        }
        result
    }

    fn decide<'a>(
        &self,
        path: &str,
        authorization: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Caller, AdminRefusal> {
        if self.config.access == AdminAccess::UnauthenticatedLoopback {
            return Ok(Caller::Unauthenticated);
        }
        let presented = bearer(authorization);
        if self.config.open_probes && is_probe(path) && presented == Presented::None {
            return Ok(Caller::Unauthenticated);
        }
        let token = match presented {
            Presented::None => return Err(AdminAuthError::Missing.into()),
            Presented::Malformed => return Err(AdminAuthError::Invalid.into()),
            Presented::Bearer(t) => t,
        };
        let principal = self
            .tokens
            .load()
            .authenticate(token, time::OffsetDateTime::now_utc())?;
        let needed = rule(path).role;
        if !principal.role.allows(needed) {
            return Err(AdminRefusal::RoleInsufficient {
                needed,
                admin: principal,
            });
        }
        Ok(Caller::Admin(principal))
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
        };
        AdminAuth::new(config, Arc::new(Metrics::new().unwrap())).unwrap()
    }

    fn admit(a: &AdminAuth, path: &str, header: Option<&str>) -> Result<Caller, AdminRefusal> {
        a.admit(path, header.map(str::as_bytes).into_iter())
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
    }

    #[test]
    fn unauthenticated_loopback_lets_everything_through() {
        let a = AdminAuth::new(
            AdminConfig {
                access: AdminAccess::UnauthenticatedLoopback,
                open_probes: true,
            },
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
}
