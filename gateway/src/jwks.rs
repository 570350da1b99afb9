//! Issuers' keys for bearer JWTs: fetched, cached and refreshed off the request path.
//!
//! Each `[[auth.jwt]]` issuer gets its JWKS one of three ways: OIDC discovery
//! (`<issuer>/.well-known/openid-configuration` → `jwks_uri`, and the document's `issuer` must
//! be exactly the configured one, or a look-alike provider could hand out its own keys), a
//! static `jwks_url`, or a local `jwks_file` (polled and hot-reloaded, for air-gapped
//! deployments). The rules:
//!
//! * fetched in the background (a service ticking every second); a JWKS is kept for its
//!   `Cache-Control: max-age`, clamped to the issuer's `jwks_ttl_min_seconds` ..
//!   `jwks_ttl_max_seconds` (5 minutes when the issuer says nothing);
//! * the only fetch on the request path is for a token whose `kid` no key matches (the issuer
//!   may have rotated), and it happens at most once per `refresh_min_interval_seconds` per
//!   issuer: a flood of tokens with random `kid`s costs the issuer one request per interval;
//! * when the issuer is unreachable or serves garbage, the last good key set stays in force
//!   (logged, counted in `lap_jwt_jwks_refresh_total{result="error"}`); an issuer never reached
//!   yet has no keys, so its tokens are refused 503 `JWT_ISSUER_UNAVAILABLE` (fail closed)
//!   while API keys keep working;
//! * HTTPS only, except to loopback hosts; responses are bounded in size
//!   ([`lap_jwt::MAX_JWKS_BYTES`]) and time (`fetch_timeout_ms`); redirects are not followed.
//!
//! Verification itself is `lap_jwt`'s ([`Verifier`]); this module installs the key sets. The
//! admin plane's OIDC issuers (`[[admin.jwt]]`) have a verifier of their own — their audience,
//! admin-id and role claims differ — fed with the same key sets: one fetch, one refresh and one
//! rate limit per issuer serve both planes ([`JwtRuntime::verify_admin`]).

use crate::config::{secure_url, AdminJwt, JwksSource, JwtConfig, JwtIssuer};
use crate::metrics::Metrics;
use bytes::Bytes;
use http_body_util::BodyExt;
use lap_jwt::{JwksError, JwtError, KeySet, Outcome, Verifier};
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long a JWKS is kept when the issuer sends no max-age (before clamping).
const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Verified admin tokens remembered: admins are few.
const ADMIN_CACHE_ENTRIES: usize = 1_024;
/// Largest discovery document accepted.
const MAX_DISCOVERY_BYTES: usize = 64 * 1024;

/// Why an issuer's keys could not be (re)loaded. Messages name URLs and files, never keys.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("discovery document {url}: {reason}")]
    Discovery { url: String, reason: String },
    #[error("{what}: {source}")]
    Jwks {
        what: String,
        #[source]
        source: JwksError,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::Http { .. } => "JWKS_FETCH_FAILED",
            FetchError::Timeout { .. } => "JWKS_FETCH_TIMEOUT",
            FetchError::Discovery { .. } => "JWKS_DISCOVERY_INVALID",
            FetchError::Jwks { source, .. } => source.code(),
            FetchError::Read { .. } => "JWKS_FILE_UNREADABLE",
        }
    }
}

/// Why the JWT runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("auth.jwt issuer {issuer}: {source}")]
    File {
        issuer: String,
        #[source]
        source: FetchError,
    },
    #[error("auth.jwt: {0}")]
    Policy(#[source] lap_jwt::PolicyError),
    #[error("metrics: {0}")]
    Metrics(#[source] prometheus::Error),
}

/// The JWT metrics (registered with the gateway's registry).
struct JwtMetrics {
    refresh: IntCounterVec,
    age: IntGaugeVec,
    cache: IntCounterVec,
}

impl JwtMetrics {
    fn new(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let refresh = IntCounterVec::new(
            Opts::new(
                "lap_jwt_jwks_refresh_total",
                "JWKS loads per issuer by result (updated, unchanged, error)",
            ),
            &["issuer", "result"],
        )?;
        let age = IntGaugeVec::new(
            Opts::new(
                "lap_jwt_jwks_age_seconds",
                "Seconds since the issuer's key set in force was last loaded (-1: never)",
            ),
            &["issuer"],
        )?;
        let cache = IntCounterVec::new(
            Opts::new(
                "lap_jwt_token_cache_total",
                "Bearer JWT verifications answered by the verified-token cache (hit) or by a signature check (miss)",
            ),
            &["result"],
        )?;
        metrics.register(vec![
            Box::new(refresh.clone()),
            Box::new(age.clone()),
            Box::new(cache.clone()),
        ])?;
        Ok(JwtMetrics {
            refresh,
            age,
            cache,
        })
    }
}

#[derive(Debug, Default)]
struct Status {
    /// When the key set in force should be fetched again.
    due: Option<Instant>,
    last_attempt: Option<Instant>,
    last_success: Option<Instant>,
    /// A `jwks_file`'s modification time and length when last loaded.
    file_stamp: Option<Vec<crate::live::Stamp>>,
}

struct IssuerState {
    config: JwtIssuer,
    status: Mutex<Status>,
    /// One fetch per issuer at a time.
    fetching: tokio::sync::Mutex<()>,
}

/// The verifier and the machinery that keeps its keys current.
pub struct JwtRuntime {
    verifier: Verifier,
    /// The admin plane's verifier (`[[admin.jwt]]`), when admins sign in with OIDC tokens.
    admin: Option<Verifier>,
    issuers: Vec<IssuerState>,
    metrics: JwtMetrics,
    tls: Arc<tokio_rustls::rustls::ClientConfig>,
    public_url: Option<String>,
}

impl JwtRuntime {
    /// The runtime for the configured issuers (`None` without any). `jwks_file` key sets are
    /// loaded here, so a broken file stops the start; URLs are fetched by [`JwtRuntime::run`].
    /// `admin` are the admin plane's issuers, each one of `config`'s.
    pub fn new(
        config: &JwtConfig,
        admin: &[AdminJwt],
        metrics: &Metrics,
    ) -> Result<Option<Arc<Self>>, SetupError> {
        if !config.enabled() {
            return Ok(None);
        }
        let verifier = Verifier::new(
            config.issuers.iter().map(|i| i.policy.clone()).collect(),
            config.cache_entries,
        )
        .map_err(SetupError::Policy)?;
        let admin = match admin {
            [] => None,
            issuers => Some(
                Verifier::new(
                    issuers.iter().map(|a| a.policy.clone()).collect(),
                    ADMIN_CACHE_ENTRIES,
                )
                .map_err(SetupError::Policy)?,
            ),
        };
        let runtime = JwtRuntime {
            verifier,
            admin,
            issuers: config
                .issuers
                .iter()
                .map(|c| IssuerState {
                    config: c.clone(),
                    status: Mutex::new(Status::default()),
                    fetching: tokio::sync::Mutex::new(()),
                })
                .collect(),
            metrics: JwtMetrics::new(metrics).map_err(SetupError::Metrics)?,
            tls: Arc::new(tls_config()),
            public_url: config.public_url.clone(),
        };
        for state in &runtime.issuers {
            runtime
                .metrics
                .age
                .with_label_values(&[state.issuer()])
                .set(-1);
            if let JwksSource::File(path) = &state.config.keys {
                runtime
                    .load_file(state, path)
                    .map_err(|source| SetupError::File {
                        issuer: state.issuer().to_string(),
                        source,
                    })?;
            }
        }
        Ok(Some(Arc::new(runtime)))
    }

    /// The canonical public URL (`[auth] public_url`), if configured.
    pub fn public_url(&self) -> Option<&str> {
        self.public_url.as_deref()
    }

    /// The configured issuers.
    pub fn issuers(&self) -> impl Iterator<Item = &JwtIssuer> {
        self.issuers.iter().map(|s| &s.config)
    }

    /// Whether issuer `name` relies on the default audience (the route's resource).
    pub fn default_audience(&self, name: &str) -> bool {
        self.issuers
            .iter()
            .any(|s| s.issuer() == name && s.config.default_audience)
    }

    /// Verifies a bearer JWT now. An unknown `kid` may fetch the issuer's JWKS once (rate
    /// limited) and try again.
    pub async fn verify(&self, token: &str) -> Result<Outcome, JwtError> {
        self.verify_with(&self.verifier, token).await
    }

    /// Whether admins may sign in with OIDC tokens (`[[admin.jwt]]`).
    pub fn admin_enabled(&self) -> bool {
        self.admin.is_some()
    }

    /// Verifies a bearer JWT presented to the admin plane, under the admin issuers' rules (their
    /// audiences: a data-plane token is refused `JWT_AUDIENCE_MISMATCH`, an issuer that is not
    /// an admin issuer `JWT_ISSUER_UNKNOWN`).
    pub async fn verify_admin(&self, token: &str) -> Result<Outcome, JwtError> {
        match &self.admin {
            Some(admin) => self.verify_with(admin, token).await,
            None => Err(JwtError::IssuerUnknown),
        }
    }

    async fn verify_with(&self, verifier: &Verifier, token: &str) -> Result<Outcome, JwtError> {
        let result = match verifier.verify(token, unix_now()) {
            Err(JwtError::KidUnknown { issuer }) => {
                if self.on_unknown_kid(&issuer).await {
                    verifier.verify(token, unix_now())
                } else {
                    Err(JwtError::KidUnknown { issuer })
                }
            }
            other => other,
        };
        if let Ok(out) = &result {
            let label = if out.cached { "hit" } else { "miss" };
            self.metrics.cache.with_label_values(&[label]).inc();
        }
        result
    }

    /// A token named a key the issuer's set lacks: fetch again, unless that was tried less
    /// than `refresh_min_interval` ago. Whether the key set changed.
    async fn on_unknown_kid(&self, issuer: &str) -> bool {
        let Some(state) = self.issuers.iter().find(|s| s.issuer() == issuer) else {
            return false;
        };
        if matches!(state.config.keys, JwksSource::File(_)) {
            return false;
        }
        {
            let mut status = lock(&state.status);
            let now = Instant::now();
            if status
                .last_attempt
                .is_some_and(|t| now.duration_since(t) < state.config.refresh_min_interval)
            {
                return false;
            }
            status.last_attempt = Some(now);
        }
        self.refresh(state, "unknown kid").await
    }

    /// The background service: keeps every issuer's keys current until shutdown.
    pub async fn run(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            for state in &self.issuers {
                self.tick(state).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn tick(&self, state: &IssuerState) {
        let now = Instant::now();
        let (due, age) = {
            let mut status = lock(&state.status);
            let age = status.last_success.map_or(-1, |t| {
                i64::try_from(now.duration_since(t).as_secs()).unwrap_or(i64::MAX)
            });
            let due = match &state.config.keys {
                JwksSource::File(_) => true,
                _ => match status.due {
                    Some(d) => d <= now,
                    None => true,
                },
            };
            if due && !matches!(state.config.keys, JwksSource::File(_)) {
                status.last_attempt = Some(now);
            }
            (due, age)
        };
        self.metrics
            .age
            .with_label_values(&[state.issuer()])
            .set(age);
        if !due {
            return;
        }
        match &state.config.keys {
            JwksSource::File(path) => {
                if let Err(e) = self.load_file(state, path) {
                    self.failed(state, &e);
                }
            }
            _ => {
                self.refresh(state, "due").await;
            }
        }
    }

    /// Fetches the issuer's JWKS and installs it; whether the key set changed.
    async fn refresh(&self, state: &IssuerState, why: &'static str) -> bool {
        let _one = state.fetching.lock().await;
        match self.fetch(&state.config).await {
            Ok((keys, ttl)) => {
                let count = keys.len();
                let changed = self.install(state.issuer(), keys);
                self.loaded(state, changed, Some(ttl));
                if changed {
                    tracing::info!(
                        issuer = state.issuer(),
                        keys = count,
                        reason = why,
                        "JWKS loaded"
                    );
                }
                changed
            }
            Err(e) => {
                self.failed(state, &e);
                false
            }
        }
    }

    /// Reloads a `jwks_file` when its modification time, length or inode changed.
    fn load_file(&self, state: &IssuerState, path: &Path) -> Result<(), FetchError> {
        let read = |source| FetchError::Read {
            path: path.to_path_buf(),
            source,
        };
        // Each state of the file (modification time, length, inode; a missing file is a state
        // too) is read, and a broken one reported, once, not every second.
        let stamp = crate::live::stamp(&[path.to_path_buf()]);
        if lock(&state.status).file_stamp.replace(stamp.clone()) == Some(stamp) {
            return Ok(());
        }
        let doc = std::fs::read(path).map_err(read)?;
        let keys = KeySet::from_json(&doc).map_err(|source| FetchError::Jwks {
            what: path.display().to_string(),
            source,
        })?;
        let count = keys.len();
        let changed = self.install(state.issuer(), keys);
        self.loaded(state, changed, None);
        if changed {
            tracing::info!(issuer = state.issuer(), keys = count, file = %path.display(), "JWKS loaded");
        }
        Ok(())
    }

    /// Installs an issuer's key set in both planes' verifiers; whether the data plane's
    /// changed (the admin verifier holds the same sets, for its issuers only).
    fn install(&self, issuer: &str, keys: KeySet) -> bool {
        let keys = Arc::new(keys);
        if let Some(admin) = &self.admin {
            admin.install_shared_keys(issuer, keys.clone());
        }
        self.verifier.install_shared_keys(issuer, keys)
    }

    fn loaded(&self, state: &IssuerState, changed: bool, ttl: Option<Duration>) {
        let now = Instant::now();
        let mut status = lock(&state.status);
        status.last_success = Some(now);
        status.due = ttl.map(|t| now + t);
        let result = if changed { "updated" } else { "unchanged" };
        self.metrics
            .refresh
            .with_label_values(&[state.issuer(), result])
            .inc();
    }

    /// A failed load: counted and logged; the last good keys stay, and the next try is one
    /// `refresh_min_interval` away.
    fn failed(&self, state: &IssuerState, e: &FetchError) {
        self.metrics
            .refresh
            .with_label_values(&[state.issuer(), "error"])
            .inc();
        let has_keys = self.verifier.has_keys(state.issuer());
        tracing::warn!(
            issuer = state.issuer(),
            code = e.code(),
            error = %e,
            keeping_last_good = has_keys,
            "JWKS load failed"
        );
        lock(&state.status).due = Some(Instant::now() + state.config.refresh_min_interval);
    }

    /// The issuer's key set and how long to keep it.
    async fn fetch(&self, issuer: &JwtIssuer) -> Result<(KeySet, Duration), FetchError> {
        let jwks_url = match &issuer.keys {
            JwksSource::Url(url) => url.clone(),
            JwksSource::Discovery { url } => self.discover(issuer, url).await?,
            JwksSource::File(path) => {
                return Err(FetchError::Discovery {
                    url: path.display().to_string(),
                    reason: "a file is not fetched".into(),
                })
            }
        };
        let (body, max_age) = self
            .get(&jwks_url, issuer.fetch_timeout, lap_jwt::MAX_JWKS_BYTES)
            .await?;
        let keys = KeySet::from_json(&body).map_err(|source| FetchError::Jwks {
            what: jwks_url.clone(),
            source,
        })?;
        let ttl = max_age
            .map_or(DEFAULT_TTL, Duration::from_secs)
            .clamp(issuer.ttl_min, issuer.ttl_max);
        Ok((keys, ttl))
    }

    /// OIDC discovery: the `jwks_uri` of an issuer whose document names exactly it.
    async fn discover(&self, issuer: &JwtIssuer, url: &str) -> Result<String, FetchError> {
        let bad = |reason: String| FetchError::Discovery {
            url: url.to_string(),
            reason,
        };
        let (body, _) = self
            .get(url, issuer.fetch_timeout, MAX_DISCOVERY_BYTES)
            .await?;
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| bad("not JSON".into()))?;
        let named = doc.get("issuer").and_then(|v| v.as_str());
        if named != Some(issuer.policy.issuer.as_str()) {
            return Err(bad(format!(
                "its issuer {named:?} is not the configured {:?}",
                issuer.policy.issuer
            )));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("no jwks_uri".into()))?;
        if !secure_url(jwks_uri) {
            return Err(bad(format!(
                "jwks_uri {jwks_uri:?} is not https:// (http:// only for loopback hosts)"
            )));
        }
        Ok(jwks_uri.to_string())
    }

    /// GET `url` (HTTPS, or HTTP to loopback): the body (at most `max` bytes) and the
    /// response's `Cache-Control: max-age`, for a 200 only.
    async fn get(
        &self,
        url: &str,
        timeout: Duration,
        max: usize,
    ) -> Result<(Bytes, Option<u64>), FetchError> {
        match tokio::time::timeout(timeout, self.get_unbounded(url, max)).await {
            Ok(r) => r.map_err(|reason| FetchError::Http {
                url: url.to_string(),
                reason,
            }),
            Err(_) => Err(FetchError::Timeout {
                url: url.to_string(),
                timeout,
            }),
        }
    }

    async fn get_unbounded(&self, url: &str, max: usize) -> Result<(Bytes, Option<u64>), String> {
        if !secure_url(url) {
            return Err("not an https:// URL (http:// only for loopback hosts)".into());
        }
        let uri: http::Uri = url.parse().map_err(|_| "not a URL".to_string())?;
        let https = uri.scheme_str() == Some("https");
        let authority = uri.authority().ok_or("no host")?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let req = http::Request::get(path)
            .header(http::header::HOST, authority.as_str())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "lap-gateway")
            .header(http::header::CONNECTION, "close")
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let response = if https {
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|_| "not a TLS server name".to_string())?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            exchange(hyper_util::rt::TokioIo::new(tls), req, max).await?
        } else {
            exchange(hyper_util::rt::TokioIo::new(tcp), req, max).await?
        };
        Ok(response)
    }
}

impl IssuerState {
    fn issuer(&self) -> &str {
        &self.config.policy.issuer
    }
}

/// One request on a fresh connection: the body of a 200 and its max-age.
async fn exchange<T>(
    io: T,
    req: http::Request<http_body_util::Empty<Bytes>>,
    max: usize,
) -> Result<(Bytes, Option<u64>), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let conn = tokio::spawn(conn);
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("HTTP status {}", resp.status().as_u16()));
        }
        let max_age = max_age(resp.headers());
        let body = http_body_util::Limited::new(resp.into_body(), max)
            .collect()
            .await
            .map_err(|_| format!("the response is not a body of at most {max} bytes"))?
            .to_bytes();
        Ok((body, max_age))
    }
    .await;
    conn.abort();
    result
}

/// `Cache-Control: max-age=N` (`no-store`/`no-cache` → 0; clamping happens later).
fn max_age(headers: &http::HeaderMap) -> Option<u64> {
    let value = headers.get(http::header::CACHE_CONTROL)?.to_str().ok()?;
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        let d = directive.to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" {
            return Some(0);
        }
        if let Some(n) = d.strip_prefix("max-age=") {
            age = n.trim_matches('"').parse().ok();
        }
    }
    age
}

/// Client TLS trusting the system's roots (ring, as the rest of the gateway).
fn tls_config() -> tokio_rustls::rustls::ClientConfig {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "a system root certificate could not be loaded");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::warn!("no system root certificates: HTTPS issuers cannot be reached");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        // ring supports the default versions; this arm is not reached in practice.
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The background service that runs [`JwtRuntime::run`].
pub struct JwksService(pub Arc<JwtRuntime>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for JwksService {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        self.0.run(shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_directives() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::CACHE_CONTROL, v.parse().unwrap());
            max_age(&m)
        };
        assert_eq!(h("public, max-age=600"), Some(600));
        assert_eq!(h("no-store"), Some(0));
        assert_eq!(h("public"), None);
        assert_eq!(max_age(&http::HeaderMap::new()), None);
    }
}
