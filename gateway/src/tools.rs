//! The tool catalog: resolved upstreams and the credentials injected into them.

use crate::config::{SecretSource, ToolConfig};
use http::HeaderValue;
use pingora::utils::tls::WrappedX509;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a DNS answer for an upstream host is reused.
const DNS_TTL: Duration = Duration::from_secs(30);

/// Why a tool could not be prepared. Secrets never appear in these messages.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{tool}: upstream {url:?}: {why}")]
    Upstream {
        tool: String,
        url: String,
        why: &'static str,
    },
    #[error("{tool}: credential: {problem}")]
    Credential {
        tool: String,
        #[source]
        problem: CredentialError,
    },
    #[error("{tool}: ca_file {path}: {problem}")]
    Ca {
        tool: String,
        path: String,
        #[source]
        problem: CaError,
    },
}

/// What is wrong with a tool's credential. Never quotes the secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("environment variable {0} is not set")]
    EnvNotSet(String),
    #[error(transparent)]
    File(#[from] lap_keys::PrivateFileError),
    #[error("value is not a valid header value")]
    Value,
    #[error("header is not a valid header name")]
    Header,
}

/// What is wrong with a tool's CA file.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Pem(#[from] rustls_pki_types::pem::Error),
    #[error("no PEM certificates found")]
    Empty,
    #[error("invalid certificate: {0}")]
    Certificate(String),
}

/// A tool ready to be called.
pub struct Tool {
    pub name: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `Host` header value sent upstream.
    pub host_header: HeaderValue,
    /// Base path without a trailing slash ("" for the root).
    pub base_path: String,
    pub sni: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_request_bytes: u64,
    pub max_response_bytes: u64,
    pub ca: Option<Arc<[WrappedX509]>>,
    pub credential: Option<(http::HeaderName, HeaderValue)>,
    /// Separates this tool's upstream connection pool from every other tool's. Pingora reuses
    /// a pooled connection for any peer with the same address, SNI and verification flags —
    /// but not the same CA: without this, a tool trusting a private CA could hand its verified
    /// TLS connection to another tool configured to trust only the system roots.
    pub pool_key: u64,
    /// What its calls must carry against replay.
    pub replay: crate::config::Replay,
    literal_addr: Option<SocketAddr>,
    dns_cache: Mutex<Option<(Instant, SocketAddr)>>,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("credential", &self.credential.as_ref().map(|(h, _)| h))
            .finish()
    }
}

impl Tool {
    /// Resolves a configured tool: parses the URL, reads the credential and CA file.
    pub fn prepare(cfg: &ToolConfig, env: &dyn crate::config::Env) -> Result<Self, ToolError> {
        let bad_url = |why| ToolError::Upstream {
            tool: cfg.key.clone(),
            url: cfg.upstream.clone(),
            why,
        };
        let uri: http::Uri = cfg
            .upstream
            .parse()
            .map_err(|_| bad_url("not a valid URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad_url("scheme must be http or https")),
        };
        if uri.query().is_some() {
            return Err(bad_url("must not contain a query"));
        }
        let authority = uri.authority().ok_or_else(|| bad_url("missing host"))?;
        if authority.as_str().contains('@') {
            return Err(bad_url(
                "must not contain user info; use its credential settings",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| bad_url("host is not a valid header value"))?;
        let base_path = uri.path().trim_end_matches('/').to_string();
        let literal_addr = host
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, port));

        let credential = match &cfg.credential {
            None => None,
            Some(c) => {
                let err = |problem: CredentialError| ToolError::Credential {
                    tool: cfg.key.clone(),
                    problem,
                };
                let secret = match &c.source {
                    SecretSource::Env(var) => env
                        .var(var)
                        .ok_or_else(|| err(CredentialError::EnvNotSet(var.clone())))?,
                    // Refused when group or others can read it.
                    SecretSource::File(path) => lap_keys::read_private_file(path)
                        .map_err(|e| err(CredentialError::File(e)))?,
                };
                let value = format!("{}{}", c.prefix, secret.trim_end_matches(['\r', '\n']));
                let mut value =
                    HeaderValue::from_str(&value).map_err(|_| err(CredentialError::Value))?;
                value.set_sensitive(true);
                let name = http::HeaderName::from_bytes(c.header.as_bytes())
                    .map_err(|_| err(CredentialError::Header))?;
                Some((name, value))
            }
        };

        let ca = match &cfg.ca_file {
            None => None,
            Some(path) => Some(Arc::from(load_ca(path).map_err(|problem| {
                ToolError::Ca {
                    tool: cfg.key.clone(),
                    path: path.display().to_string(),
                    problem,
                }
            })?)),
        };

        Ok(Self {
            name: cfg.name.clone(),
            tls,
            sni: cfg.sni.clone().unwrap_or_else(|| host.to_string()),
            host: host.to_string(),
            port,
            host_header,
            base_path,
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.read_timeout,
            write_timeout: cfg.write_timeout,
            max_request_bytes: cfg.max_request_bytes,
            max_response_bytes: cfg.max_response_bytes,
            ca,
            credential,
            pool_key: {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                cfg.key.hash(&mut h);
                h.finish()
            },
            replay: cfg.replay,
            literal_addr,
            dns_cache: Mutex::new(None),
        })
    }

    /// The socket address to connect to, resolving host names (cached for [`DNS_TTL`]).
    pub async fn resolve(&self) -> Option<SocketAddr> {
        if let Some(a) = self.literal_addr {
            return Some(a);
        }
        if let Ok(cache) = self.dns_cache.lock() {
            if let Some((at, addr)) = *cache {
                if at.elapsed() < DNS_TTL {
                    return Some(addr);
                }
            }
        }
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .ok()?
            .next()?;
        if let Ok(mut cache) = self.dns_cache.lock() {
            *cache = Some((Instant::now(), addr));
        }
        Some(addr)
    }

    /// The upstream request target for a normalised tool path and raw query.
    pub fn target(&self, rest: &str, query: Option<&str>) -> String {
        let mut t = String::with_capacity(self.base_path.len() + rest.len() + 16);
        t.push_str(&self.base_path);
        t.push_str(rest);
        if let Some(q) = query {
            t.push('?');
            t.push_str(q);
        }
        t
    }
}

fn load_ca(path: &Path) -> Result<Box<[WrappedX509]>, CaError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(path)?.collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err(CaError::Empty);
    }
    let mut out = Vec::with_capacity(certs.len());
    for der in certs {
        // Pingora's wrapper panics on unparsable DER; check first.
        x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        out.push(WrappedX509::new(der.as_ref().to_vec(), |c| {
            pingora::utils::tls::parse_x509(c)
        }));
    }
    Ok(out.into_boxed_slice())
}

/// All tools by name.
pub type Catalog = HashMap<String, Arc<Tool>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CredentialConfig, ToolConfig};
    use std::collections::BTreeMap;

    fn cfg(url: &str) -> ToolConfig {
        ToolConfig {
            name: "t".into(),
            key: "tools.t".into(),
            upstream: url.into(),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            max_request_bytes: 10,
            max_response_bytes: 10,
            ca_file: None,
            sni: None,
            credential: None,
            replay: Default::default(),
            required_scopes: Vec::new(),
        }
    }

    #[test]
    fn parses_upstreams() {
        let env = BTreeMap::new();
        let t = Tool::prepare(&cfg("http://127.0.0.1:9000/v1/"), &env).unwrap();
        assert_eq!(t.base_path, "/v1");
        assert_eq!(t.target("/a", Some("x=1")), "/v1/a?x=1");
        assert_eq!(t.host_header, "127.0.0.1:9000");
        let t = Tool::prepare(&cfg("https://api.example.com"), &env).unwrap();
        assert!(t.tls);
        assert_eq!(t.port, 443);
        assert_eq!(t.sni, "api.example.com");
        assert_eq!(t.target("/", None), "/");
        for bad in ["ftp://x", "http://u:p@x", "http://x/?q=1", "nope"] {
            assert!(Tool::prepare(&cfg(bad), &env).is_err(), "{bad}");
        }
    }

    #[test]
    fn credential_from_env_is_sensitive_and_never_debugged() {
        let mut c = cfg("http://127.0.0.1:1");
        c.credential = Some(CredentialConfig {
            header: "authorization".into(),
            source: SecretSource::Env("TOK".into()),
            prefix: "Bearer ".into(),
        });
        let env: BTreeMap<String, String> = [("TOK".to_string(), "s3cret".to_string())].into();
        let t = Tool::prepare(&c, &env).unwrap();
        let (name, value) = t.credential.as_ref().unwrap();
        assert_eq!(name, "authorization");
        assert_eq!(value, "Bearer s3cret");
        assert!(value.is_sensitive());
        assert!(!format!("{t:?}").contains("s3cret"));
        let err = Tool::prepare(&c, &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("TOK is not set"));
    }
}
