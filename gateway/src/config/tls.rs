//! `[tls]` and `[mtls]`: the HTTPS data listener, client certificates, and the identity they
//! carry.
//!
//! Kept apart from `resolve.rs` because these settings form one feature with its own rules:
//!
//! * `[tls]` is the server side: where the HTTPS listener is, its certificate and key, and
//!   whether the plain listener stays;
//! * `[mtls]` is the client side: whether certificates are asked for (`client_auth`), the CA
//!   bundles they are verified against, and — only when `identity = true` — how a verified
//!   certificate becomes a principal (SPIFFE trust domains, the mapping table, what an
//!   unmapped SPIFFE ID gets) and which proxies may forward a certificate in a header.
//!
//! Everything that can be checked without the files is checked here (the files themselves are
//! read at start-up and by `check-config`, see `tls::material`): a combination that cannot
//! work — client certificates with no CA, identity with no way for a certificate to arrive, a
//! mapping whose SPIFFE ID is malformed or outside the allowed trust domains — is refused
//! rather than left to fail open or closed at the first request.

use super::sources::{Sourced, Sources};
use super::{ConfigError, Origin, Problem};
use crate::tls::spiffe::{self, SpiffeId};
use ipnet::IpNet;
use lap_auth::AgentId;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `[tls]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub listen: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub plain_listener: Option<bool>,
}

/// `[mtls]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsFile {
    pub client_auth: Option<String>,
    pub client_ca_files: Option<Vec<PathBuf>>,
    pub identity: Option<bool>,
    pub trust_domains: Option<Vec<String>>,
    pub unmapped: Option<String>,
    pub cert_header: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    #[serde(default)]
    pub identities: Vec<IdentityFile>,
}

/// One `[[mtls.identities]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    pub spiffe_id: Option<String>,
    pub spiffe_prefix: Option<String>,
    pub subject: Option<String>,
    pub agent_id: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// The TLS transport: the listener, and client certificates as a transport matter.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The HTTPS data listener, if there is one.
    pub listener: Option<TlsListener>,
    /// Whether the plain HTTP data listener (`server.listen`) serves too.
    pub plain_listener: bool,
    /// Whether the TLS listener asks for client certificates.
    pub client_auth: ClientAuth,
    /// The CA bundles client certificates are verified against (the listener's and forwarded
    /// ones alike).
    pub client_ca_files: Vec<PathBuf>,
}

/// The HTTPS data listener.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Whether the TLS listener asks for a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Not asked for.
    None,
    /// Asked for; a client without one still connects (and authenticates otherwise).
    Optional,
    /// The handshake fails without a certificate the CAs accept.
    Required,
}

/// How a verified client certificate becomes a principal (`[mtls] identity = true`).
#[derive(Debug, Clone)]
pub struct CertIdentity {
    /// SPIFFE trust domains whose IDs are accepted.
    pub trust_domains: Vec<String>,
    /// The mapping table, first match wins (exact IDs and subjects before prefixes: see
    /// `pipeline::identity::mtls`).
    pub rules: Vec<IdentityRule>,
    /// What an allowed but unmapped SPIFFE ID gets.
    pub unmapped: Unmapped,
    /// Every request must carry a certificate (`client_auth = "required"`): one without (the
    /// plain listener, a proxy that forwarded none) is refused, not let through on an API key.
    pub required: bool,
    /// The header a trusted proxy forwards the client certificate in (lower case).
    pub cert_header: String,
    /// The proxies whose `cert_header` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

/// One mapping to a principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRule {
    pub matcher: CertMatch,
    pub agent_id: AgentId,
    pub groups: Vec<String>,
}

/// What a mapping matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertMatch {
    /// This SPIFFE ID exactly.
    SpiffeId(SpiffeId),
    /// SPIFFE IDs under this prefix (`spiffe://td/agents/` matches `spiffe://td/agents/a`).
    SpiffePrefix(String),
    /// A certificate without a SPIFFE ID whose subject DN is exactly this.
    Subject(String),
}

/// What an allowed SPIFFE ID without a mapping gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmapped {
    /// Refused (`CLIENT_IDENTITY_UNMAPPED`).
    Refuse,
    /// The SPIFFE ID itself is the agent id, with no groups.
    SpiffeId,
}

/// Headers `cert_header` may not be (besides the gateway's own `x-lap-*`).
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "x-agent-id",
    "x-forwarded-for",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "cookie",
];

/// The default header a TLS-terminating proxy forwards the client certificate in.
pub const DEFAULT_CERT_HEADER: &str = "x-client-cert";

/// Resolves `[tls]` and `[mtls]`. `taken` are the other listeners' addresses.
pub(super) fn resolve(
    s: &Sources<'_>,
    tls: TlsFile,
    mtls: MtlsFile,
    taken: &[SocketAddr],
) -> Result<(TlsSettings, Option<CertIdentity>), ConfigError> {
    let listen = s
        .text("LAP_TLS_LISTEN", "tls.listen", tls.listen)
        .map(|v| {
            v.value
                .parse::<SocketAddr>()
                .map_err(|_| v.refuse(Problem::NotAnAddress(v.value.clone())))
                .and_then(|a| {
                    if taken.contains(&a) {
                        Err(v.refuse(Problem::ListenerTaken(a)))
                    } else {
                        Ok(a)
                    }
                })
        })
        .transpose()?;
    let cert_file = s.path("LAP_TLS_CERT_FILE", tls.cert_file);
    let key_file = s.path("LAP_TLS_KEY_FILE", tls.key_file);
    let listener = match (listen, cert_file, key_file) {
        (None, None, None) => None,
        (Some(listen), Some(cert_file), Some(key_file)) => Some(TlsListener {
            listen,
            cert_file,
            key_file,
        }),
        _ => return Err(invalid("tls", Problem::TlsIncomplete)),
    };
    let plain_listener = s
        .flag("LAP_TLS_PLAIN_LISTENER", tls.plain_listener)?
        .unwrap_or(true);
    if !plain_listener && listener.is_none() {
        return Err(invalid("tls.plain_listener", Problem::NoDataListener));
    }

    let client_auth = match s
        .text("LAP_MTLS_CLIENT_AUTH", "mtls.client_auth", mtls.client_auth)
        .map(|v| choice(v, &["none", "optional", "required"]))
        .transpose()?
        .as_deref()
    {
        None | Some("none") => ClientAuth::None,
        Some("optional") => ClientAuth::Optional,
        _ => ClientAuth::Required,
    };
    let client_ca_files = list_of_paths(
        s,
        "LAP_MTLS_CLIENT_CA_FILES",
        mtls.client_ca_files.unwrap_or_default(),
    );
    if client_auth != ClientAuth::None {
        if listener.is_none() {
            return Err(invalid(
                "mtls.client_auth",
                Problem::ClientAuthWithoutListener,
            ));
        }
        if client_ca_files.is_empty() {
            return Err(invalid("mtls.client_auth", Problem::ClientAuthWithoutCa));
        }
    }
    let settings = TlsSettings {
        listener,
        plain_listener,
        client_auth,
        client_ca_files,
    };

    let identity = s.flag("LAP_MTLS_IDENTITY", mtls.identity)?.unwrap_or(false);
    let trusted_proxies = trusted_proxies(s, mtls.trusted_proxies.unwrap_or_default())?;
    let cert_header = match s.text("LAP_MTLS_CERT_HEADER", "mtls.cert_header", mtls.cert_header) {
        None => DEFAULT_CERT_HEADER.to_string(),
        Some(h) => {
            let name = http::HeaderName::from_bytes(h.value.as_bytes())
                .map(|n| n.as_str().to_string())
                .map_err(|_| h.refuse(Problem::HeaderName(h.value.clone())))?;
            // A header that already means something to the gateway or HTTP cannot carry a
            // certificate too.
            if RESERVED_HEADERS.contains(&name.as_str()) || name.starts_with("x-lap-") {
                return Err(h.refuse(Problem::ReservedHeader(name)));
            }
            name
        }
    };
    if !identity {
        if !trusted_proxies.is_empty() {
            return Err(invalid("mtls.trusted_proxies", Problem::IdentityOff));
        }
        if !mtls.identities.is_empty() {
            return Err(invalid("mtls.identities", Problem::IdentityOff));
        }
        return Ok((settings, None));
    }
    if settings.client_ca_files.is_empty() {
        return Err(invalid("mtls.identity", Problem::IdentityWithoutCa));
    }
    if settings.client_auth == ClientAuth::None && trusted_proxies.is_empty() {
        return Err(invalid("mtls.identity", Problem::IdentityWithoutSource));
    }
    let trust_domains = trust_domains(s, mtls.trust_domains.unwrap_or_default())?;
    let unmapped = match s
        .text("LAP_MTLS_UNMAPPED", "mtls.unmapped", mtls.unmapped)
        .map(|v| choice(v, &["refuse", "spiffe_id"]))
        .transpose()?
        .as_deref()
    {
        Some("spiffe_id") => Unmapped::SpiffeId,
        _ => Unmapped::Refuse,
    };
    let rules = mtls
        .identities
        .into_iter()
        .enumerate()
        .map(|(i, r)| rule(i, r, &trust_domains))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        settings.clone(),
        Some(CertIdentity {
            trust_domains,
            rules,
            unmapped,
            required: settings.client_auth == ClientAuth::Required,
            cert_header,
            trusted_proxies,
        }),
    ))
}

fn invalid(key: &str, problem: Problem) -> ConfigError {
    ConfigError::Invalid {
        origin: Origin::Key(key.to_string()),
        problem,
    }
}

fn choice(v: Sourced<String>, choices: &'static [&'static str]) -> Result<String, ConfigError> {
    if choices.contains(&v.value.as_str()) {
        Ok(v.value)
    } else {
        Err(v.refuse(Problem::NotAChoice {
            value: v.value.clone(),
            choices,
        }))
    }
}

/// Paths from a comma-separated variable (as given), else from the file (relative to it).
fn list_of_paths(s: &Sources<'_>, var: &'static str, file: Vec<PathBuf>) -> Vec<PathBuf> {
    match s.env.var(var) {
        Some(v) => v
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect(),
        None => file.into_iter().map(|p| s.rel(p)).collect(),
    }
}

/// A list from a comma-separated variable, else from the file, with its origin.
fn list(
    s: &Sources<'_>,
    var: &'static str,
    key: &'static str,
    file: Vec<String>,
) -> (Vec<String>, Origin) {
    match s.env.var(var) {
        Some(v) => (
            v.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect(),
            Origin::Env(var),
        ),
        None => (file, Origin::Key(key.to_string())),
    }
}

fn trusted_proxies(s: &Sources<'_>, file: Vec<String>) -> Result<Vec<IpNet>, ConfigError> {
    let (nets, origin) = list(s, "LAP_MTLS_TRUSTED_PROXIES", "mtls.trusted_proxies", file);
    nets.into_iter()
        .map(|net| {
            let refuse = |problem| ConfigError::Invalid {
                origin: origin.clone(),
                problem,
            };
            if net == "*" || net == "0.0.0.0/0" || net == "::/0" {
                return Err(refuse(Problem::CertHeaderFromEveryone));
            }
            net.parse::<IpNet>()
                .or_else(|_| net.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| refuse(Problem::NotANetwork(net)))
        })
        .collect()
}

fn trust_domains(s: &Sources<'_>, file: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let (domains, origin) = list(s, "LAP_MTLS_TRUST_DOMAINS", "mtls.trust_domains", file);
    for d in &domains {
        spiffe::trust_domain(d).map_err(|e| ConfigError::Invalid {
            origin: origin.clone(),
            problem: Problem::TrustDomain(d.clone(), e.to_string()),
        })?;
    }
    Ok(domains)
}

fn rule(i: usize, r: IdentityFile, trust_domains: &[String]) -> Result<IdentityRule, ConfigError> {
    let at = |field: &str| Origin::Key(format!("mtls.identities[{i}].{field}"));
    let refuse = |field: &str, problem| ConfigError::Invalid {
        origin: at(field),
        problem,
    };
    let allowed = |id: &SpiffeId, field: &str| {
        if trust_domains.iter().any(|d| d == id.trust_domain()) {
            Ok(())
        } else {
            Err(refuse(
                field,
                Problem::TrustDomainNotListed(id.trust_domain().to_string()),
            ))
        }
    };
    let matcher = match (r.spiffe_id, r.spiffe_prefix, r.subject) {
        (Some(id), None, None) => {
            let id = SpiffeId::parse(&id)
                .map_err(|e| refuse("spiffe_id", Problem::SpiffeId(id.clone(), e.to_string())))?;
            allowed(&id, "spiffe_id")?;
            CertMatch::SpiffeId(id)
        }
        (None, Some(prefix), None) => {
            // The prefix must itself be a SPIFFE ID (a trust domain and whole segments) and end
            // with '/', so `spiffe://td/agent` cannot match `spiffe://td/agents-evil`.
            let stem = prefix.strip_suffix('/').unwrap_or(&prefix);
            let id = SpiffeId::parse(stem).map_err(|e| {
                refuse(
                    "spiffe_prefix",
                    Problem::SpiffeId(prefix.clone(), e.to_string()),
                )
            })?;
            allowed(&id, "spiffe_prefix")?;
            CertMatch::SpiffePrefix(format!("{stem}/"))
        }
        (None, None, Some(subject)) if !subject.trim().is_empty() => CertMatch::Subject(subject),
        _ => return Err(refuse("spiffe_id", Problem::OneMatcher)),
    };
    let agent_id = AgentId::parse(&r.agent_id)
        .ok_or_else(|| refuse("agent_id", Problem::GatewayId(r.agent_id.clone())))?;
    Ok(IdentityRule {
        matcher,
        agent_id,
        groups: r.groups,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{load, CliOverrides, ConfigError};
    use std::collections::BTreeMap;
    use std::io::Write;

    fn config(toml: &str, env: &[(&str, &str)]) -> Result<crate::config::Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let keys = r#"[auth]
api_keys_file = "keys.json"
"#;
        write!(f, "{keys}{toml}").unwrap();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load(Some(f.path()), &env, &CliOverrides::default())
    }

    fn refusal(toml: &str) -> String {
        config(toml, &[]).expect_err("refused").to_string()
    }

    const LISTENER: &str = r#"[tls]
listen = "127.0.0.1:8443"
cert_file = "s.crt"
key_file = "s.key"
"#;

    #[test]
    fn defaults_have_no_tls() {
        let c = config("", &[]).unwrap();
        assert!(c.tls.listener.is_none());
        assert!(c.tls.plain_listener);
        assert_eq!(c.tls.client_auth, super::ClientAuth::None);
        assert!(c.cert_identity.is_none());
    }

    #[test]
    fn a_full_mtls_section() {
        let c = config(
            &format!(
                r#"{LISTENER}
[mtls]
client_auth = "optional"
client_ca_files = ["ca.crt"]
identity = true
trust_domains = ["lap.test"]
unmapped = "spiffe_id"
trusted_proxies = ["127.0.0.1"]
[[mtls.identities]]
spiffe_id = "spiffe://lap.test/agent/demo"
agent_id = "demo"
groups = ["workloads"]
[[mtls.identities]]
spiffe_prefix = "spiffe://lap.test/batch"
agent_id = "batch"
[[mtls.identities]]
subject = "CN=legacy,O=Example"
agent_id = "legacy"
"#
            ),
            &[],
        )
        .unwrap();
        let id = c.cert_identity.unwrap();
        assert_eq!(id.rules.len(), 3);
        assert_eq!(
            id.rules[1].matcher,
            super::CertMatch::SpiffePrefix("spiffe://lap.test/batch/".into())
        );
        assert_eq!(id.unmapped, super::Unmapped::SpiffeId);
        assert_eq!(id.cert_header, "x-client-cert");
        assert!(!id.required);
        assert!(c.tls.client_ca_files[0].is_absolute());
        assert!(c.strip_headers.contains(&"x-client-cert".to_string()));
    }

    #[test]
    fn environment_overrides() {
        let c = config(
            "",
            &[
                ("LAP_TLS_LISTEN", "127.0.0.1:9443"),
                ("LAP_TLS_CERT_FILE", "/c.crt"),
                ("LAP_TLS_KEY_FILE", "/c.key"),
                ("LAP_TLS_PLAIN_LISTENER", "0"),
                ("LAP_MTLS_CLIENT_AUTH", "required"),
                ("LAP_MTLS_CLIENT_CA_FILES", "/a.crt, /b.crt"),
                ("LAP_MTLS_IDENTITY", "1"),
                ("LAP_MTLS_TRUST_DOMAINS", "a.test,b.test"),
                ("LAP_MTLS_CERT_HEADER", "X-SSL-Cert"),
            ],
        )
        .unwrap();
        assert_eq!(c.tls.listener.unwrap().listen.port(), 9443);
        assert!(!c.tls.plain_listener);
        assert_eq!(c.tls.client_ca_files.len(), 2);
        let id = c.cert_identity.unwrap();
        assert!(id.required);
        assert_eq!(id.trust_domains, ["a.test", "b.test"]);
        assert_eq!(id.cert_header, "x-ssl-cert");
    }

    #[test]
    fn impossible_combinations_are_refused() {
        let cases = [
            ("[tls]\nlisten = \"127.0.0.1:8443\"\n", "tls:"),
            ("[tls]\nplain_listener = false\n", "tls.plain_listener"),
            (
                "[tls]\nlisten = \"127.0.0.1:8080\"\ncert_file = \"a\"\nkey_file = \"b\"\n",
                "tls.listen",
            ),
            ("[mtls]\nclient_auth = \"required\"\n", "mtls.client_auth"),
            ("[mtls]\nclient_auth = \"sometimes\"\n", "mtls.client_auth"),
            (
                "[mtls]\ntrusted_proxies = [\"10.0.0.1\"]\n",
                "mtls.trusted_proxies",
            ),
            ("[mtls]\nidentity = true\n", "mtls.identity"),
        ];
        for (toml, origin) in cases {
            let e = refusal(toml);
            assert!(e.contains(origin), "{toml}: {e}");
        }
        let with = |mtls: &str| {
            refusal(&format!(
                "{LISTENER}[mtls]\nclient_auth = \"optional\"\nclient_ca_files = [\"ca\"]\n{mtls}"
            ))
        };
        let cases = [
            ("identity = true\ntrusted_proxies = [\"*\"]\n", "mtls.trusted_proxies"),
            ("identity = true\ntrusted_proxies = [\"0.0.0.0/0\"]\n", "mtls.trusted_proxies"),
            ("identity = true\ntrust_domains = [\"Lap.Test\"]\n", "mtls.trust_domains"),
            ("identity = true\nunmapped = \"guess\"\n", "mtls.unmapped"),
            ("identity = true\ncert_header = \"X-Api-Key\"\n", "mtls.cert_header"),
            ("identity = true\ncert_header = \"x-lap-cert\"\n", "mtls.cert_header"),
            (
                "identity = true\ntrust_domains = [\"a.test\"]\n[[mtls.identities]]\nspiffe_id = \"spiffe://b.test/x\"\nagent_id = \"x\"\n",
                "mtls.identities[0].spiffe_id",
            ),
            (
                "identity = true\ntrust_domains = [\"a.test\"]\n[[mtls.identities]]\nspiffe_id = \"spiffe://a.test/../x\"\nagent_id = \"x\"\n",
                "mtls.identities[0].spiffe_id",
            ),
            (
                "identity = true\ntrust_domains = [\"a.test\"]\n[[mtls.identities]]\nspiffe_id = \"spiffe://a.test/x\"\nsubject = \"CN=x\"\nagent_id = \"x\"\n",
                "mtls.identities[0]",
            ),
            (
                "identity = true\ntrust_domains = [\"a.test\"]\n[[mtls.identities]]\nspiffe_id = \"spiffe://a.test/x\"\nagent_id = \"no spaces\"\n",
                "mtls.identities[0].agent_id",
            ),
        ];
        for (mtls, origin) in cases {
            let e = with(mtls);
            assert!(e.contains(origin), "{mtls}: {e}");
        }
    }
}
