//! `[auth] public_url` and `[[auth.jwt]]`: the issuers whose bearer JWTs identify agents.
//!
//! Kept apart from `resolve.rs` because these settings form one feature with its own rules:
//! an issuer's URLs must be HTTPS (plain HTTP only for loopback hosts, i.e. tests), exactly one
//! way to its keys is configured (OIDC discovery, a JWKS URL or a JWKS file), algorithms are
//! asymmetric only (`none` and HMAC are refused here, before the verifier would), and the
//! default audience is the gateway's canonical resource URL (RFC 8707), which is therefore
//! required as soon as one issuer relies on it. See `docs/configuration.md`.

use super::sources::Sources;
use super::{ConfigError, Origin, Problem};
use lap_jwt::{Algorithm, ClaimPath, IssuerPolicy, DEFAULT_LEEWAY_SECS, MAX_LEEWAY_SECS};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// One `[[auth.jwt]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerFile {
    pub issuer: String,
    pub discovery: Option<bool>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub audiences: Option<Vec<String>>,
    pub algorithms: Option<Vec<String>>,
    pub leeway_seconds: Option<u64>,
    pub agent_claim: Option<String>,
    pub agent_prefix: Option<String>,
    pub groups_claim: Option<String>,
    pub group_prefix: Option<String>,
    pub issuer_groups: Option<Vec<String>>,
    pub scope_group_prefix: Option<String>,
    pub required_claims: Option<Vec<String>>,
    pub jwks_ttl_min_seconds: Option<u64>,
    pub jwks_ttl_max_seconds: Option<u64>,
    pub refresh_min_interval_seconds: Option<u64>,
    pub fetch_timeout_ms: Option<u64>,
}

/// The resolved JWT settings.
#[derive(Debug, Clone, Default)]
pub struct JwtConfig {
    /// The gateway's canonical public URL (`[auth] public_url`, `LAP_PUBLIC_URL`), without a
    /// trailing slash: the resource agents' tokens are for, and the base of the protected
    /// resource metadata.
    pub public_url: Option<String>,
    pub issuers: Vec<JwtIssuer>,
    /// Verified tokens remembered (`[auth] jwt_cache_entries`).
    pub cache_entries: usize,
}

impl JwtConfig {
    pub fn enabled(&self) -> bool {
        !self.issuers.is_empty()
    }
}

/// One trusted issuer.
#[derive(Debug, Clone)]
pub struct JwtIssuer {
    pub policy: IssuerPolicy,
    /// Audiences were not configured: the token must be for the gateway (`public_url`) or for
    /// the MCP endpoint it is used on (`public_url/mcp/<server>`).
    pub default_audience: bool,
    pub keys: JwksSource,
    /// A JWKS is kept for its Cache-Control max-age clamped to these (no max-age: 5 min).
    pub ttl_min: Duration,
    pub ttl_max: Duration,
    /// An unknown `kid` fetches the JWKS again at most this often.
    pub refresh_min_interval: Duration,
    pub fetch_timeout: Duration,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// `<issuer>/.well-known/openid-configuration` → `jwks_uri`.
    Discovery {
        url: String,
    },
    Url(String),
    /// A local JWKS file, hot-reloaded.
    File(PathBuf),
}

/// Largest `[auth] jwt_cache_entries`.
const MAX_CACHE_ENTRIES: u64 = 1_000_000;

pub(super) fn resolve(
    s: &Sources<'_>,
    public_url: Option<String>,
    cache_entries: Option<u64>,
    issuers: Vec<JwtIssuerFile>,
    mcp_servers: &[&str],
) -> Result<JwtConfig, ConfigError> {
    let public_url = match s.text("LAP_PUBLIC_URL", "auth.public_url", public_url) {
        None => None,
        Some(u) => Some(canonical_url(&u.value).ok_or_else(|| {
            u.refuse(Problem::Auth(format!(
                "{:?} must be an absolute https:// URL (http:// only for loopback) without query or fragment",
                u.value
            )))
        })?),
    };
    let cache_entries = match cache_entries {
        None => 10_000,
        Some(n @ 0..=MAX_CACHE_ENTRIES) => n as usize,
        Some(_) => {
            return Err(invalid(
                "auth.jwt_cache_entries".into(),
                Problem::OutOfRange {
                    min: 0,
                    max: MAX_CACHE_ENTRIES,
                },
            ))
        }
    };
    let mut resolved = Vec::with_capacity(issuers.len());
    for (i, f) in issuers.into_iter().enumerate() {
        let issuer = issuer(s, i, f, public_url.as_deref(), mcp_servers)?;
        if resolved
            .iter()
            .any(|o: &JwtIssuer| o.policy.issuer == issuer.policy.issuer)
        {
            return Err(invalid(
                format!("auth.jwt[{i}].issuer"),
                Problem::Auth("the same issuer is configured twice".into()),
            ));
        }
        resolved.push(issuer);
    }
    Ok(JwtConfig {
        public_url,
        issuers: resolved,
        cache_entries,
    })
}

fn invalid(key: String, problem: Problem) -> ConfigError {
    ConfigError::Invalid {
        origin: Origin::Key(key),
        problem,
    }
}

fn issuer(
    s: &Sources<'_>,
    i: usize,
    f: JwtIssuerFile,
    public_url: Option<&str>,
    mcp_servers: &[&str],
) -> Result<JwtIssuer, ConfigError> {
    let at = |key: &str, why: String| invalid(format!("auth.jwt[{i}].{key}"), Problem::Auth(why));
    if !secure_url(&f.issuer) {
        return Err(at(
            "issuer",
            format!(
                "{:?} must be an https:// URL (http:// only for loopback hosts)",
                f.issuer
            ),
        ));
    }
    let keys = match (f.discovery, f.jwks_url, f.jwks_file) {
        (Some(true) | None, None, None) => JwksSource::Discovery {
            url: format!(
                "{}/.well-known/openid-configuration",
                f.issuer.trim_end_matches('/')
            ),
        },
        (Some(false) | None, Some(url), None) => {
            if !secure_url(&url) {
                return Err(at(
                    "jwks_url",
                    format!("{url:?} must be an https:// URL (http:// only for loopback hosts)"),
                ));
            }
            JwksSource::Url(url)
        }
        (Some(false) | None, None, Some(path)) => JwksSource::File(s.rel(path)),
        _ => {
            return Err(at(
                "discovery",
                "use exactly one of discovery, jwks_url and jwks_file".into(),
            ))
        }
    };
    let default_audience = f.audiences.is_none();
    let audiences = match f.audiences {
        Some(list) => {
            if list.is_empty() || list.iter().any(String::is_empty) {
                return Err(at("audiences", "must list non-empty audiences".into()));
            }
            list
        }
        // The gateway as a whole, and each MCP endpoint (what MCP clients ask tokens for);
        // the identity stage then holds a token to the resource of the route it is used on.
        None => match public_url {
            Some(u) => std::iter::once(u.to_string())
                .chain(mcp_servers.iter().map(|m| format!("{u}/mcp/{m}")))
                .collect(),
            None => {
                return Err(at(
                    "audiences",
                    "without audiences the audience is the gateway's public URL: set [auth] public_url (LAP_PUBLIC_URL)".into(),
                ))
            }
        },
    };
    let algorithms = match f.algorithms {
        None => lap_jwt::DEFAULT_ALGORITHMS.to_vec(),
        Some(names) if names.is_empty() => {
            return Err(at("algorithms", "must list at least one algorithm".into()))
        }
        Some(names) => names
            .iter()
            .map(|n| Algorithm::parse(n).map_err(|e| at("algorithms", e.to_string())))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let leeway_secs = f.leeway_seconds.unwrap_or(DEFAULT_LEEWAY_SECS);
    if leeway_secs > MAX_LEEWAY_SECS {
        return Err(at(
            "leeway_seconds",
            format!("must be 0..={MAX_LEEWAY_SECS}"),
        ));
    }
    let path = |key: &str, p: &str| ClaimPath::parse(p).map_err(|e| at(key, e.to_string()));
    let agent_claim = path("agent_claim", f.agent_claim.as_deref().unwrap_or("sub"))?;
    let groups_claim = f
        .groups_claim
        .as_deref()
        .map(|p| path("groups_claim", p))
        .transpose()?;
    let required_claims = f
        .required_claims
        .unwrap_or_default()
        .iter()
        .map(|p| path("required_claims", p))
        .collect::<Result<Vec<_>, _>>()?;
    let secs = |key: &str, v: Option<u64>, default: u64, (min, max): (u64, u64)| {
        let v = v.unwrap_or(default);
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(at(key, format!("must be {min}..={max}")))
        }
    };
    let ttl_min = secs(
        "jwks_ttl_min_seconds",
        f.jwks_ttl_min_seconds,
        60,
        (1, 86_400),
    )?;
    let ttl_max = secs(
        "jwks_ttl_max_seconds",
        f.jwks_ttl_max_seconds,
        3_600,
        (1, 7 * 86_400),
    )?;
    if ttl_min > ttl_max {
        return Err(at(
            "jwks_ttl_min_seconds",
            "must not exceed jwks_ttl_max_seconds".into(),
        ));
    }
    let refresh = secs(
        "refresh_min_interval_seconds",
        f.refresh_min_interval_seconds,
        10,
        (1, 3_600),
    )?;
    let timeout = secs("fetch_timeout_ms", f.fetch_timeout_ms, 5_000, (100, 60_000))?;
    let mut policy = IssuerPolicy::new(f.issuer, audiences);
    policy.algorithms = algorithms;
    policy.leeway_secs = leeway_secs;
    policy.agent_claim = agent_claim;
    policy.agent_prefix = f.agent_prefix.unwrap_or_default();
    if !policy.agent_prefix.is_empty() && lap_auth::AgentId::parse(&policy.agent_prefix).is_none() {
        return Err(at(
            "agent_prefix",
            "must be characters of [A-Za-z0-9._:@/-], at most 128".into(),
        ));
    }
    policy.groups_claim = groups_claim;
    policy.group_prefix = f.group_prefix.unwrap_or_default();
    policy.required_claims = required_claims;
    policy.scope_group_prefix = f.scope_group_prefix;
    policy.issuer_groups = f.issuer_groups.unwrap_or_default();
    if policy.issuer_groups.iter().any(String::is_empty) {
        return Err(at("issuer_groups", "groups must be non-empty".into()));
    }
    policy.validate().map_err(|e| at("issuer", e.to_string()))?;
    Ok(JwtIssuer {
        policy,
        default_audience,
        keys,
        ttl_min: Duration::from_secs(ttl_min),
        ttl_max: Duration::from_secs(ttl_max),
        refresh_min_interval: Duration::from_secs(refresh),
        fetch_timeout: Duration::from_millis(timeout),
    })
}

/// HTTPS, or HTTP to a loopback host (tests and local development).
pub fn secure_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    match uri.scheme_str() {
        Some("https") => true,
        Some("http") => is_loopback(host),
        _ => false,
    }
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An absolute URL as the canonical resource: scheme and host lower case, no query or fragment,
/// no trailing slash.
fn canonical_url(url: &str) -> Option<String> {
    if !secure_url(url) || url.contains('?') || url.contains('#') {
        return None;
    }
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?.as_str().to_ascii_lowercase();
    if authority.contains('@') {
        return None;
    }
    let path = uri.path().trim_end_matches('/');
    Some(format!("{scheme}://{authority}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(toml: &str, env: &[(&str, &str)]) -> Result<JwtConfig, String> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let text = format!("[auth]\napi_keys_file = \"k.json\"\n{toml}");
        let f = super::super::parse(&text, std::path::Path::new("t.toml"))
            .map_err(|e| e.to_string())?;
        let s = Sources {
            env: &env,
            base: None,
        };
        resolve(
            &s,
            f.auth.public_url,
            f.auth.jwt_cache_entries,
            f.auth.jwt,
            &["files"],
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_sources() {
        let c = run(
            "public_url = \"https://GW.example/\"\n[[auth.jwt]]\nissuer = \"https://idp.example/realms/a\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.public_url.as_deref(), Some("https://gw.example"));
        let i = &c.issuers[0];
        assert_eq!(
            i.policy.audiences,
            ["https://gw.example", "https://gw.example/mcp/files"]
        );
        assert!(i.default_audience);
        assert_eq!(
            i.keys,
            JwksSource::Discovery {
                url: "https://idp.example/realms/a/.well-known/openid-configuration".into()
            }
        );
        assert_eq!(i.policy.algorithms, lap_jwt::DEFAULT_ALGORITHMS);
        assert_eq!(i.refresh_min_interval, Duration::from_secs(10));
        let c = run(
            "[[auth.jwt]]\nissuer = \"http://127.0.0.1:9\"\njwks_file = \"j.json\"\naudiences = [\"a\"]\nalgorithms = [\"EdDSA\"]\nagent_claim = \"azp\"\ngroups_claim = \"realm_access.roles\"\n",
            &[("LAP_PUBLIC_URL", "http://localhost:8080")],
        )
        .unwrap();
        assert_eq!(c.public_url.as_deref(), Some("http://localhost:8080"));
        assert_eq!(c.issuers[0].keys, JwksSource::File("j.json".into()));
        assert!(!c.issuers[0].default_audience);
    }

    #[test]
    fn refusals_name_the_key() {
        let cases = [
            ("[[auth.jwt]]\nissuer = \"http://idp.example\"\naudiences=[\"a\"]", "auth.jwt[0].issuer"),
            ("[[auth.jwt]]\nissuer = \"https://i\"\njwks_url = \"http://idp.example/j\"\naudiences=[\"a\"]", "auth.jwt[0].jwks_url"),
            ("[[auth.jwt]]\nissuer = \"https://i\"\njwks_url = \"https://i/j\"\njwks_file = \"f\"\naudiences=[\"a\"]", "auth.jwt[0].discovery"),
            ("[[auth.jwt]]\nissuer = \"https://i\"", "auth.jwt[0].audiences"),
            ("[[auth.jwt]]\nissuer = \"https://i\"\naudiences=[\"a\"]\nalgorithms = [\"HS256\"]", "auth.jwt[0].algorithms"),
            ("[[auth.jwt]]\nissuer = \"https://i\"\naudiences=[\"a\"]\nalgorithms = [\"none\"]", "auth.jwt[0].algorithms"),
            ("[[auth.jwt]]\nissuer = \"https://i\"\naudiences=[\"a\"]\nleeway_seconds = 301", "auth.jwt[0].leeway_seconds"),
            ("[[auth.jwt]]\nissuer = \"https://i\"\naudiences=[\"a\"]\ngroups_claim = \"a..b\"", "auth.jwt[0].groups_claim"),
            ("[[auth.jwt]]\nissuer = \"https://i\"\naudiences=[\"a\"]\n[[auth.jwt]]\nissuer = \"https://i\"\naudiences=[\"a\"]", "auth.jwt[1].issuer"),
            ("[[auth.jwt]]\nissuer = \"https://i\"\naudiences=[\"a\"]\njwks_ttl_min_seconds = 100\njwks_ttl_max_seconds = 50", "auth.jwt[0].jwks_ttl_min_seconds"),
            ("public_url = \"https://gw.example/?x\"", "auth.public_url"),
            ("public_url = \"ftp://gw.example\"", "auth.public_url"),
        ];
        for (toml, key) in cases {
            let err = run(toml, &[]).unwrap_err();
            assert!(err.starts_with(key), "{toml}: {err}");
        }
        let err = run("[[auth.jwt]]\nissuer = \"https://i\"\nissuerr = 1", &[]).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }
}
