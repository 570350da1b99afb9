//! End-to-end test harness: the real `lap-gateway` binary, real upstream HTTP(S) servers, and a
//! raw HTTP/1.1 client that controls every byte (chunked bodies, spoofed headers).
//!
//! Everything listens on 127.0.0.1 only. Every wait is bounded; a gateway that does not become
//! ready fails the test with the tail of its logs. Each gateway gets its own temporary
//! directory (config, key file, policy, pid file, upgrade socket, logs) and its own ports, so
//! tests run in parallel.
//!
//! ```no_run
//! # async fn demo() {
//! use lap_e2e::*;
//! let up = Upstream::start(Behavior::Echo).await;
//! let gw = GatewayBuilder::new()
//!     .tool("echo", &up.url())
//!     .keys_file(r#"{"plain-key": "agent-a"}"#)
//!     .policy("permit(principal, action, resource);")
//!     .start()
//!     .await;
//! let r = request(gw.data, "GET", "/tools/echo/x", &[("X-Api-Key", "plain-key")], None).await;
//! assert_eq!(r.status, 200);
//! assert_eq!(up.last().unwrap().target, "/x");
//! # }
//! ```

pub mod audit;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response as HyperResponse};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A fixed Ed25519 seed for tests (never use outside tests). The builder passes it as
/// `LAP_GATEWAY_SIGNING_KEY` unless told otherwise.
pub const TEST_SEED: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

/// How long [`GatewayBuilder::start`] waits for `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`send_raw`] (and so [`request`]) waits for a complete response.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

fn target_dir() -> PathBuf {
    // target/debug/deps/<test binary> → target/debug
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target dir")
}

fn bin(name: &str, env: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --workspace --bins` first (or set {env})",
        p.display()
    );
    p
}

/// The `lap-gateway` binary next to the test binary (`target/debug`), or `$LAP_GATEWAY_BIN`.
pub fn gateway_bin() -> PathBuf {
    bin("lap-gateway", "LAP_GATEWAY_BIN")
}

/// The `lap-signer` binary, or `$LAP_SIGNER_BIN`.
pub fn signer_bin() -> PathBuf {
    bin("lap-signer", "LAP_SIGNER_BIN")
}

/// The `lap-verify` binary, or `$LAP_VERIFY_BIN`.
pub fn verify_bin() -> PathBuf {
    bin("lap-verify", "LAP_VERIFY_BIN")
}

/// A loopback port reserved for this test process.
///
/// Probing with `bind(127.0.0.1:0)` and releasing races with every other process doing the
/// same (parallel test binaries, several `cargo test` runs): two gateways can be handed the same
/// port. Ports therefore come from outside the kernel's ephemeral range (so no `bind(0)` or
/// outgoing connection takes them) and each is leased through an exclusive lock file in
/// `$TMPDIR/lap-e2e-ports` that other harness processes respect. The lease ends when it is
/// dropped (or the process exits).
pub struct PortLease {
    port: u16,
    _lock: std::fs::File,
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A fresh lease on a port that is free right now.
    pub fn new() -> PortLease {
        let dir = std::env::temp_dir().join("lap-e2e-ports");
        std::fs::create_dir_all(&dir).expect("port lock dir");
        let (lo, hi) = lease_range();
        let mut x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32)
            ^ NEXT_LEASE.fetch_add(1, Ordering::Relaxed) as u64;
        for _ in 0..4096 {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let port = lo + (x % u64::from(hi - lo)) as u16;
            let Ok(lock) = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("{port}.lock")))
            else {
                continue;
            };
            if lock.try_lock().is_err() {
                continue;
            }
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return PortLease { port, _lock: lock };
            }
        }
        panic!("no free loopback port in {lo}..{hi}");
    }
}

impl Default for PortLease {
    fn default() -> Self {
        Self::new()
    }
}

static NEXT_LEASE: AtomicUsize = AtomicUsize::new(0);

/// Ports below the ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), or above it.
fn lease_range() -> (u16, u16) {
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if lo >= 12_000 {
        (10_000, lo)
    } else if hi <= 63_000 {
        (hi + 1, 65_535)
    } else {
        (10_000, 30_000)
    }
}

/// Leases kept until the process exits (for [`free_port`]).
static LEAKED: Mutex<Vec<PortLease>> = Mutex::new(Vec::new());

/// A free loopback port, reserved for the rest of this test process (see [`PortLease`]): no
/// other harness user is handed it, so it can be given to a server, or left closed.
pub fn free_port() -> u16 {
    let lease = PortLease::new();
    let port = lease.port();
    LEAKED.lock().expect("leases").push(lease);
    port
}

/// `N` distinct free loopback ports, reserved like [`free_port`].
pub fn free_ports<const N: usize>() -> [u16; N] {
    std::array::from_fn(|_| free_port())
}

/// Runs a command to completion with stdout and stderr captured, killing it (and panicking)
/// if it runs longer than `limit`.
pub fn run_command(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let out = tempfile::tempfile().expect("stdout file");
    let err = tempfile::tempfile().expect("stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        f.seek(std::io::SeekFrom::Start(0)).expect("seek");
        f.read_to_end(&mut v).expect("read");
        v
    };
    std::process::Output {
        status,
        stdout: read(out),
        stderr: read(err),
    }
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// `sha256:<hex>` as written in rich key files.
pub fn key_hash(key: &str) -> String {
    format!("sha256:{}", sha256_hex(key.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Upstream servers

#[derive(Clone, Debug)]
pub enum Behavior {
    /// 200 with a JSON description of the request:
    /// `{"method","path","query","target","headers":{name: value},"body_sha256","body_len"}`
    /// (header names lowercase; repeated headers joined with ", ").
    Echo,
    /// Echo after a delay.
    Delay(Duration),
    /// A fixed status and body (content-type application/json).
    Status(u16, &'static str),
    /// 200 with a body of this many bytes (`x`), with a Content-Length.
    Large(usize),
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query, exactly as received.
    pub target: String,
    /// Header names lowercase, in arrival order, repeated headers kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first value of a header (`name` lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header (`name` lowercase).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }
}

/// A real HTTP/1.1 server on 127.0.0.1 that records every request. Stopped on drop.
pub struct Upstream {
    addr: SocketAddr,
    scheme: &'static str,
    hits: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Acceptor = Option<tokio_rustls::TlsAcceptor>;

impl Upstream {
    /// A plain-HTTP upstream.
    pub async fn start(behavior: Behavior) -> Upstream {
        Self::serve(behavior, None).await
    }

    /// An HTTPS upstream whose certificate (for `localhost` and `127.0.0.1`) is issued by `ca`.
    /// Its [`Upstream::url`] is `https://127.0.0.1:PORT`.
    pub async fn start_tls(behavior: Behavior, ca: &TestCa) -> Upstream {
        Self::serve(behavior, Some(ca.acceptor())).await
    }

    async fn serve(behavior: Behavior, tls: Acceptor) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (h, l) = (hits.clone(), log.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (h, l, b, tls) = (h.clone(), l.clone(), behavior.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve_connection(stream, h, l, b).await,
                        Some(acceptor) => {
                            // A failed handshake (untrusted CA on the client side) is not a hit.
                            let accepted = tokio::time::timeout(
                                Duration::from_secs(10),
                                acceptor.accept(stream),
                            )
                            .await;
                            if let Ok(Ok(s)) = accepted {
                                serve_connection(s, h, l, b).await;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            scheme,
            hits,
            log,
            task,
        }
    }

    /// `http://127.0.0.1:PORT` (or `https://…` for [`Upstream::start_tls`]).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many HTTP requests arrived (each counted when its head arrives).
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Every completely received request, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().expect("log").clone()
    }

    pub fn last(&self) -> Option<Recorded> {
        self.log.lock().expect("log").last().cloned()
    }
}

async fn serve_connection<S>(
    stream: S,
    hits: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Recorded>>>,
    behavior: Behavior,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let (h, l, b) = (hits.clone(), log.clone(), behavior.clone());
        async move { Ok::<_, hyper::Error>(handle(req, h, l, b).await) }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

async fn handle(
    req: Request<Incoming>,
    hits: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Recorded>>>,
    behavior: Behavior,
) -> HyperResponse<Full<Bytes>> {
    hits.fetch_add(1, Ordering::SeqCst);
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let mut header_map = serde_json::Map::new();
    for (k, v) in &headers {
        let joined = match header_map.get(k).and_then(|p| p.as_str()) {
            Some(prev) => format!("{prev}, {v}"),
            None => v.clone(),
        };
        header_map.insert(k.clone(), joined.into());
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let echo = serde_json::json!({
        "method": method,
        "path": path,
        "query": query,
        "target": target,
        "headers": header_map,
        "body_sha256": sha256_hex(&body),
        "body_len": body.len(),
    });
    log.lock().expect("log").push(Recorded {
        method,
        target,
        headers,
        body,
    });
    let json = |status: u16, body: Vec<u8>| {
        HyperResponse::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("connection", "keep-alive")
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    };
    match behavior {
        Behavior::Echo => json(200, echo.to_string().into_bytes()),
        Behavior::Delay(d) => {
            tokio::time::sleep(d).await;
            json(200, echo.to_string().into_bytes())
        }
        Behavior::Status(code, body) => json(code, body.as_bytes().to_vec()),
        Behavior::Large(n) => json(200, vec![b'x'; n]),
    }
}

// ---------------------------------------------------------------------------------------------
// A private CA for HTTPS upstreams

/// A throw-away certificate authority and one server certificate it issued, for `localhost`
/// and `127.0.0.1`.
pub struct TestCa {
    /// The CA certificate, PEM (what a tool's `ca_file` points to).
    pub ca_pem: String,
    leaf_der: Vec<u8>,
    leaf_key_der: Vec<u8>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose, SanType,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "LAP e2e test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("ca key");
        let ca_cert = ca.self_signed(&ca_key).expect("ca cert");

        let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
        leaf.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf_cert = leaf
            .signed_by(&leaf_key, &ca_cert, &ca_key)
            .expect("leaf cert");
        TestCa {
            ca_pem: ca_cert.pem(),
            leaf_der: leaf_cert.der().to_vec(),
            leaf_key_der: leaf_key.serialize_der(),
        }
    }

    /// Writes the CA certificate to `path` (for `ca_file`).
    pub fn write_ca(&self, path: &Path) {
        std::fs::write(path, &self.ca_pem).expect("write CA file");
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use tokio_rustls::rustls;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(
                    self.leaf_der.clone(),
                )],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.leaf_key_der.clone().into()),
            )
            .expect("server TLS config");
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway process

/// Builds a gateway directory (gateway.toml, keys.json, policy.cedar, optional
/// policy.cedarschema) and starts the real binary on it.
///
/// The generated config always sets `[server] listen`, `threads = 2`, `reload_interval_ms`
/// (200 unless [`GatewayBuilder::reload_interval_ms`]), `pid_file` and `upgrade_sock` (in the
/// temp dir), `[admin] listen`, `[auth] api_keys_file = "keys.json"` and `[policy] file`; do not
/// repeat those keys in [`GatewayBuilder::server_toml`].
pub struct GatewayBuilder {
    tools: Vec<(String, String, String)>,
    policy: Option<String>,
    schema: Option<String>,
    keys: String,
    server: Vec<String>,
    limits: Vec<String>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    signing_key: Option<String>,
    reload_interval_ms: u64,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayBuilder {
    pub fn new() -> Self {
        Self {
            tools: Vec::new(),
            policy: None,
            schema: None,
            keys: "{}".into(),
            server: Vec::new(),
            limits: Vec::new(),
            extra: Vec::new(),
            env: Vec::new(),
            signing_key: Some(TEST_SEED.into()),
            reload_interval_ms: 200,
        }
    }

    /// `[tools.<name>] upstream = "<upstream>"`.
    pub fn tool(mut self, name: &str, upstream: &str) -> Self {
        self.tools
            .push((name.into(), upstream.into(), String::new()));
        self
    }

    /// A tool with extra TOML lines after its `upstream` line: keys of `[tools.<name>]`
    /// (timeouts, caps, `ca_file`…) and/or whole sub-tables such as `[tools.<name>.credential]`.
    pub fn tool_toml(mut self, name: &str, upstream: &str, extra: &str) -> Self {
        self.tools
            .push((name.into(), upstream.into(), extra.into()));
        self
    }

    /// The Cedar policy text (policy.cedar; empty when not given: everything is denied).
    pub fn policy(mut self, text: &str) -> Self {
        self.policy = Some(text.into());
        self
    }

    /// A Cedar schema (policy.cedarschema, referenced by `[policy] schema`).
    pub fn schema(mut self, text: &str) -> Self {
        self.schema = Some(text.into());
        self
    }

    /// The API key file (keys.json) content, legacy map or rich format. Default `{}`.
    pub fn keys_file(mut self, json: &str) -> Self {
        self.keys = json.into();
        self
    }

    /// Extra lines in `[server]`.
    pub fn server_toml(mut self, lines: &str) -> Self {
        self.server.push(lines.into());
        self
    }

    /// Extra lines in `[limits]`.
    pub fn limits_toml(mut self, lines: &str) -> Self {
        self.limits.push(lines.into());
        self
    }

    /// Whole extra sections appended to the config.
    pub fn extra_toml(mut self, text: &str) -> Self {
        self.extra.push(text.into());
        self
    }

    /// An environment variable for the gateway process.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// The `LAP_GATEWAY_SIGNING_KEY` seed (64 hex); default [`TEST_SEED`].
    pub fn signing_key_hex(mut self, hex: &str) -> Self {
        self.signing_key = Some(hex.into());
        self
    }

    /// Start without `LAP_GATEWAY_SIGNING_KEY` (and without the ephemeral opt-in unless given
    /// through [`GatewayBuilder::env`]).
    pub fn without_signing_key(mut self) -> Self {
        self.signing_key = None;
        self
    }

    /// `[server] reload_interval_ms` (default 200 in tests).
    pub fn reload_interval_ms(mut self, ms: u64) -> Self {
        self.reload_interval_ms = ms;
        self
    }

    /// The gateway.toml text for these ports.
    pub fn config_text(&self, data: u16, admin: u16) -> String {
        let mut cfg = format!(
            "[server]\nlisten = \"127.0.0.1:{data}\"\nthreads = 2\nreload_interval_ms = {}\n\
             pid_file = \"gw.pid\"\nupgrade_sock = \"gw.sock\"\n{}\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
             [auth]\napi_keys_file = \"keys.json\"\n\n[limits]\n{}\n\n[policy]\nfile = \"policy.cedar\"\n",
            self.reload_interval_ms,
            self.server.join("\n"),
            self.limits.join("\n"),
        );
        if self.schema.is_some() {
            cfg.push_str("schema = \"policy.cedarschema\"\n");
        }
        for (name, url, extra) in &self.tools {
            cfg.push_str(&format!(
                "\n[tools.{name}]\nupstream = \"{url}\"\n{extra}\n"
            ));
        }
        for e in &self.extra {
            cfg.push('\n');
            cfg.push_str(e);
            cfg.push('\n');
        }
        cfg
    }

    fn write(&self, dir: &Path, data: u16, admin: u16) -> PathBuf {
        std::fs::write(dir.join("gateway.toml"), self.config_text(data, admin)).expect("config");
        std::fs::write(dir.join("keys.json"), &self.keys).expect("keys");
        std::fs::write(
            dir.join("policy.cedar"),
            self.policy.as_deref().unwrap_or(""),
        )
        .expect("policy");
        if let Some(s) = &self.schema {
            std::fs::write(dir.join("policy.cedarschema"), s).expect("schema");
        }
        dir.join("gateway.toml")
    }

    /// Writes the directory and spawns the gateway without waiting (for start-up failure
    /// tests). Returns the directory, the child (NOT killed on drop: kill it), the data port
    /// and the admin port.
    pub fn spawn(&self) -> (tempfile::TempDir, Child, u16, u16) {
        let [data, admin] = free_ports::<2>();
        let (dir, child) = self.spawn_on(data, admin);
        (dir, child, data, admin)
    }

    /// Like [`GatewayBuilder::spawn`] on given ports (lease them with [`PortLease`]).
    pub fn spawn_on(&self, data: u16, admin: u16) -> (tempfile::TempDir, Child) {
        let dir = tempfile::tempdir().expect("tempdir");
        self.write(dir.path(), data, admin);
        let child = self.command(dir.path()).spawn().expect("spawn lap-gateway");
        (dir, child)
    }

    fn command(&self, dir: &Path) -> Command {
        let mut cmd = Command::new(gateway_bin());
        cmd.arg("--config")
            .arg(dir.join("gateway.toml"))
            .current_dir(dir)
            .env_remove("LAP_GATEWAY_SIGNING_KEY")
            .env_remove("LAP_ALLOW_EPHEMERAL_SIGNING_KEYS")
            .env("LAP_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(log_file(dir, "stdout.log"))
            .stderr(log_file(dir, "gateway.log"));
        if let Some(seed) = &self.signing_key {
            cmd.env("LAP_GATEWAY_SIGNING_KEY", seed);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the gateway and waits until admin `/readyz` answers 200 (at most
    /// [`READY_TIMEOUT`]); retries on fresh ports if a port was taken meanwhile. Panics with
    /// the tail of the gateway's logs otherwise.
    pub async fn start(self) -> Gateway {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let leases = [PortLease::new(), PortLease::new()];
            let (data, admin) = (leases[0].port(), leases[1].port());
            let (dir, child) = self.spawn_on(data, admin);
            let mut gw = Gateway {
                data: SocketAddr::from(([127, 0, 0, 1], data)),
                admin: SocketAddr::from(([127, 0, 0, 1], admin)),
                command: self.command(dir.path()),
                dir,
                child: Some(child),
                _ports: leases,
            };
            if gw.wait_ready(READY_TIMEOUT).await {
                return gw;
            }
            let exited = gw.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            gw.kill();
            let log = format!("{}\n{}", gw.stdout_text(), gw.log_text());
            // A port grabbed by someone else between probe and bind: try again.
            let clash = log.contains("Address already in use")
                || log.contains("os error 98")
                || log.contains("is in use");
            if attempt < ATTEMPTS && clash {
                continue;
            }
            panic!(
                "lap-gateway did not become ready within {READY_TIMEOUT:?} (exit: {exited:?}, \
                 data {data}, admin {admin}, dir {})\n--- gateway.toml ---\n{}\n--- log tail ---\n{}",
                gw.dir().display(),
                std::fs::read_to_string(gw.config_path()).unwrap_or_default(),
                tail(&log, 40)
            );
        }
        unreachable!()
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().filter(|l| !l.is_empty()).collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// A running `lap-gateway`; SIGKILLed and reaped on drop (its temp dir is removed after).
pub struct Gateway {
    /// Data plane address (`[server] listen`).
    pub data: SocketAddr,
    /// Admin plane address (`[admin] listen`).
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<Child>,
    command: Command,
    /// Declared after `child`: released only once the process is gone.
    _ports: [PortLease; 2],
}

/// Appends to a log file in the gateway directory (kept across restarts).
fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("log file")
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Gateway {
    fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Ready means: admin `/readyz` answers 200, the data port accepts connections, and the
    /// process is still alive after both (so the answers were not from another process that
    /// took one of our ports).
    async fn wait_ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let connect = |addr| tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr));
        loop {
            if self.exited() || Instant::now() >= deadline {
                return false;
            }
            if let Ok(Ok(mut s)) = connect(self.admin).await {
                let req = b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
                if s.write_all(req).await.is_ok() {
                    let r = tokio::time::timeout(Duration::from_secs(2), read_response(&mut s));
                    if matches!(r.await, Ok(r) if r.status == 200) {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ready_at = Instant::now();
        loop {
            if self.exited() || Instant::now() >= deadline {
                return false;
            }
            if let Ok(Ok(_)) = connect(self.data).await {
                let late = ready_at.elapsed();
                if late > Duration::from_millis(20) {
                    eprintln!(
                        "note: lap-gateway data port {} accepted {late:?} after /readyz said ready",
                        self.data
                    );
                }
                return !self.exited();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The gateway's temporary directory (config, keys, policy, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id (0 after [`Gateway::kill`]).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir().join("gateway.toml")
    }

    pub fn keys_path(&self) -> PathBuf {
        self.dir().join("keys.json")
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir().join("policy.cedar")
    }

    /// Replaces a file atomically (write + rename), as careful operators and ConfigMaps do.
    pub fn replace_file(&self, path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }

    /// Replaces keys.json atomically.
    pub fn write_keys(&self, json: &str) {
        self.replace_file(&self.keys_path(), json);
    }

    /// Replaces policy.cedar atomically.
    pub fn write_policy(&self, text: &str) {
        self.replace_file(&self.policy_path(), text);
    }

    /// Sends SIGHUP (reload keys and policy at once).
    pub fn sighup(&self) {
        let pid = self.pid();
        assert_ne!(pid, 0, "the gateway is not running");
        let st = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -HUP {pid} failed");
    }

    /// SIGKILL and reap, for crash tests; the gateway can then be restarted on the same
    /// directory with [`Gateway::restart`].
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the gateway again on the same directory, ports and configuration (after
    /// [`Gateway::kill`]) and waits until it is ready; `false` if it refuses to start.
    pub async fn restart(&mut self) -> bool {
        self.kill();
        let dir = self.dir.path().to_path_buf();
        self.command
            .stdout(log_file(&dir, "stdout.log"))
            .stderr(log_file(&dir, "gateway.log"));
        self.child = Some(self.command.spawn().expect("respawn lap-gateway"));
        self.wait_ready(READY_TIMEOUT).await
    }

    /// The gateway's stderr (where it logs).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir().join("gateway.log")).unwrap_or_default()
    }

    /// The admin plane's audit pack for `query` (e.g. `from=3&agent=a`); panics unless the
    /// answer is 200 with a tar archive.
    pub async fn audit_pack(&self, query: &str) -> Vec<u8> {
        let path = format!("/v1/audit-pack?{query}");
        let r = request(self.admin, "GET", &path, &[], None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/x-tar"));
        r.body
    }

    /// Waits (up to 5 s) until the latest signed checkpoint covers the whole receipt log;
    /// returns the checkpoint note and the log size. Panics if it does not happen.
    pub async fn settled_checkpoint(&self) -> (String, u64) {
        for _ in 0..100 {
            let ready = request(self.admin, "GET", "/readyz", &[], None).await;
            let size = ready.json()["log_size"].as_u64().unwrap_or(0);
            let cp = request(self.admin, "GET", "/v1/log/checkpoint", &[], None).await;
            let cp_size: u64 = cp
                .text()
                .lines()
                .nth(1)
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            if cp.status == 200 && cp_size == size && size > 0 {
                return (cp.text(), size);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no checkpoint covering the log within 5 s");
    }

    /// Waits (up to 5 s) for `needle` to appear in the gateway's log file. The gateway logs
    /// from a background writer, so a line can land a little after the response that caused it.
    pub async fn wait_for_log(&self, needle: &str) -> bool {
        wait_until(Duration::from_secs(5), || async {
            self.log_text().contains(needle)
        })
        .await
    }

    /// The gateway's stdout.
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(self.dir().join("stdout.log")).unwrap_or_default()
    }

    /// Admin `/metrics` (Prometheus text).
    pub async fn metrics(&self) -> String {
        let r = request(self.admin, "GET", "/metrics", &[], None).await;
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// One sample of the current metrics; see [`metric_value`].
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics().await, name, labels)
    }

    /// Polls `cond` every 50 ms until it holds or `limit` passes; `true` if it held.
    pub async fn wait_until<F, Fut>(&self, limit: Duration, cond: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        wait_until(limit, cond).await
    }
}

/// Runs the real `lap-verify` with `args` and `--json`. Whatever the input, it must answer a
/// JSON report and exit 0 or 1 (never 2, never a crash) in agreement with the report's `ok`.
pub fn lap_verify_json(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = run_command(
        Command::new(verify_bin()).args(args).arg("--json"),
        Duration::from_secs(60),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "lap-verify printed no JSON report (status {:?}); stdout {:?}; stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let ok = report["ok"] == true;
    assert_eq!(
        out.status.code(),
        Some(if ok { 0 } else { 1 }),
        "the exit status follows the verdict: {report}"
    );
    report
}

/// Polls `cond` every 50 ms until it holds or `limit` passes; `true` if it held.
pub async fn wait_until<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if let Ok(true) = tokio::time::timeout(remaining, cond()).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads one sample from Prometheus text: `name{labels…} value`. Every given label must be
/// present with exactly that value (other labels are ignored); the first matching sample wins.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| parse_sample(l))
        .filter(|(n, _, _)| *n == name)
        .find(|(_, ls, _)| {
            labels
                .iter()
                .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
}

/// Label pairs of one sample.
type Labels = Vec<(String, String)>;

/// `name{a="x",b="y"} 1.5` → (name, labels, value).
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series, Vec::new(), value));
    };
    let body = rest.strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut val = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                '"' => break,
                c => val.push(c),
            }
        }
        labels.push((key, val));
    }
    Some((name, labels, value))
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP client

/// A response as read off the wire. Header names are lowercase.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// 0 when the server closed the connection before a complete status line.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The name used by the brief; the same type as [`HttpResponse`].
pub type Response = HttpResponse;

impl HttpResponse {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// `error.code` of a JSON error body.
    pub fn error_code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_string)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts a JSON error response with this status and stable code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.error_code().as_deref()),
            (status, Some(code)),
            "body: {}",
            self.text()
        );
    }
}

/// Sends raw bytes and reads one response (the connection is then dropped). Honors
/// Content-Length and chunked framing, and reads to EOF otherwise; a server that closes early
/// ends the read. Panics after [`RESPONSE_TIMEOUT`] without a complete response.
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> HttpResponse {
    tokio::time::timeout(RESPONSE_TIMEOUT, async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // The server may answer (e.g. 413) and close before reading everything we send.
        let _ = s.write_all(bytes).await;
        read_response(&mut s).await
    })
    .await
    .unwrap_or_else(|_| panic!("no complete response from {addr} within {RESPONSE_TIMEOUT:?}"))
}

/// Like [`send_raw`], but `None` when the connection is refused or no complete response
/// arrives within `limit` (for probing a server that may not be up).
pub async fn try_send_raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Option<HttpResponse> {
    tokio::time::timeout(limit, async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let _ = s.write_all(bytes).await;
        let r = read_response(&mut s).await;
        (r.status != 0).then_some(r)
    })
    .await
    .ok()
    .flatten()
}

/// Like [`request`] (no body), but `None` on refusal or timeout; see [`try_send_raw`].
pub async fn try_get(addr: SocketAddr, path: &str, limit: Duration) -> Option<HttpResponse> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    try_send_raw(addr, req.as_bytes(), limit).await
}

/// A request with `Host` and `Connection: close` and, when a body is given, its
/// `Content-Length`. `headers` are sent verbatim, in order, after those. Panics if the
/// connection is refused or no response arrives within [`RESPONSE_TIMEOUT`].
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    send_raw(addr, &bytes).await
}

async fn read_response(s: &mut TcpStream) -> HttpResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    // Interim (1xx) responses are skipped; the final response is returned.
    let (status, headers, mut rest) = loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return HttpResponse {
                    status: 0,
                    headers: Vec::new(),
                    body: buf,
                };
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let rest = buf[head_end + 4..].to_vec();
        if (100..200).contains(&status) && status != 101 {
            buf = rest;
            continue;
        }
        break (status, headers, rest);
    };
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length: Option<usize> = get("content-length").and_then(|v| v.parse().ok());
    // No body by definition (HEAD answers are read to EOF: `request` sends Connection: close).
    if matches!(status, 101 | 204 | 304) {
        rest.clear();
        return HttpResponse {
            status,
            headers,
            body: rest,
        };
    }
    loop {
        if chunked {
            if let Some(body) = dechunk(&rest) {
                rest = body;
                break;
            }
        } else if let Some(n) = length {
            if rest.len() >= n {
                rest.truncate(n);
                break;
            }
        }
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            if chunked {
                rest = dechunk(&rest).unwrap_or(rest);
            }
            break;
        }
        rest.extend_from_slice(&chunk[..n]);
    }
    HttpResponse {
        status,
        headers,
        body: rest,
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Decodes a complete chunked body; `None` if incomplete.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let i = find(b, b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..i]).ok()?.split(';').next()?.trim(),
            16,
        )
        .ok()?;
        b = &b[i + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A chunked request body made of `chunks` pieces of `size` bytes each, then the last chunk.
pub fn chunked_body(chunks: usize, size: usize, byte: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..chunks {
        out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(byte, size));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// `data` as a chunked body in pieces of at most `size` bytes.
pub fn chunk_bytes(data: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in data.chunks(size.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_parsing() {
        let text = "# HELP x\nlap_x_total{tool=\"echo\",xtool=\"a\"} 3\nlap_x_total{tool=\"a\\\"b\"} 4\nlap_y 2.5\nlap_x_total_sum 9\n";
        assert_eq!(
            metric_value(text, "lap_x_total", &[("tool", "echo")]),
            Some(3.0)
        );
        assert_eq!(
            metric_value(text, "lap_x_total", &[("tool", "a\"b")]),
            Some(4.0)
        );
        assert_eq!(metric_value(text, "lap_x_total", &[("tool", "a")]), None);
        assert_eq!(metric_value(text, "lap_y", &[]), Some(2.5));
        assert_eq!(metric_value(text, "lap_x", &[]), None);
    }

    #[test]
    fn chunking_round_trips() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        assert_eq!(dechunk(&chunk_bytes(&data, 77)), Some(data));
        assert_eq!(dechunk(&chunked_body(3, 5, b'q')), Some(vec![b'q'; 15]));
        assert_eq!(dechunk(b"5\r\nab"), None);
    }
}
