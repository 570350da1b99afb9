//! End-to-end test harness: the real `lap-gateway` binary, real upstream HTTP servers, and a
//! raw HTTP/1.1 client that controls every byte (chunked bodies, spoofed headers).
//!
//! Everything listens on 127.0.0.1 only. Every wait is bounded; a gateway that does not become
//! ready fails the test with the tail of its log.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A fixed Ed25519 seed for tests (never use outside tests).
pub const TEST_SEED: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

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

pub fn gateway_bin() -> PathBuf {
    bin("lap-gateway", "LAP_GATEWAY_BIN")
}

pub fn signer_bin() -> PathBuf {
    bin("lap-signer", "LAP_SIGNER_BIN")
}

pub fn verify_bin() -> PathBuf {
    bin("lap-verify", "LAP_VERIFY_BIN")
}

/// A free loopback port (bound then released; the gateway binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
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
    /// 200 with a JSON description of the request.
    Echo,
    /// Echo after a delay.
    Delay(Duration),
    /// A fixed status and body.
    Status(u16, &'static str),
    /// 200 with a body of this many bytes.
    Large(usize),
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(behavior: Behavior) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (h, l) = (hits.clone(), log.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (h, l, b) = (h.clone(), l.clone(), behavior.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (h, l, b) = (h.clone(), l.clone(), b.clone());
                        async move { Ok::<_, hyper::Error>(handle(req, h, l, b).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            hits,
            log,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().expect("log").clone()
    }

    pub fn last(&self) -> Option<Recorded> {
        self.log.lock().expect("log").last().cloned()
    }
}

async fn handle(
    req: Request<Incoming>,
    hits: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Recorded>>>,
    behavior: Behavior,
) -> Response<Full<Bytes>> {
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
    let echo = serde_json::json!({
        "method": method,
        "target": target,
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
        Response::builder()
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
// The gateway process

pub struct GatewayBuilder {
    tools: Vec<(String, String, String)>,
    policy: Option<String>,
    schema: Option<String>,
    keys: String,
    server: Vec<String>,
    limits: Vec<String>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    signing: bool,
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
            signing: true,
        }
    }

    pub fn tool(mut self, name: &str, upstream: &str) -> Self {
        self.tools
            .push((name.into(), upstream.into(), String::new()));
        self
    }

    /// A tool with extra TOML lines inside `[tools.<name>]` (timeouts, caps, credential…).
    pub fn tool_toml(mut self, name: &str, upstream: &str, extra: &str) -> Self {
        self.tools
            .push((name.into(), upstream.into(), extra.into()));
        self
    }

    pub fn policy(mut self, text: &str) -> Self {
        self.policy = Some(text.into());
        self
    }

    pub fn schema(mut self, text: &str) -> Self {
        self.schema = Some(text.into());
        self
    }

    pub fn keys_file(mut self, json: &str) -> Self {
        self.keys = json.into();
        self
    }

    pub fn server_toml(mut self, line: &str) -> Self {
        self.server.push(line.into());
        self
    }

    pub fn limits_toml(mut self, line: &str) -> Self {
        self.limits.push(line.into());
        self
    }

    /// Whole extra sections appended to the config.
    pub fn extra_toml(mut self, text: &str) -> Self {
        self.extra.push(text.into());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Start without the default test signing key.
    pub fn without_signing_key(mut self) -> Self {
        self.signing = false;
        self
    }

    fn write(&self, dir: &Path, data: u16, admin: u16) -> PathBuf {
        let mut cfg = format!(
            "[server]\nlisten = \"127.0.0.1:{data}\"\nthreads = 2\nreload_interval_ms = 200\n\
             pid_file = \"gw.pid\"\nupgrade_sock = \"gw.sock\"\n{}\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
             [auth]\napi_keys_file = \"keys.json\"\n\n[limits]\n{}\n\n[policy]\nfile = \"policy.cedar\"\n",
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
        std::fs::write(dir.join("gateway.toml"), cfg).expect("config");
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

    /// Spawns the gateway without waiting (for start-up failure tests).
    pub fn spawn(&self) -> (tempfile::TempDir, Child, u16, u16) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, admin) = (free_port(), free_port());
        self.write(dir.path(), data, admin);
        let child = self.command(dir.path()).spawn().expect("spawn lap-gateway");
        (dir, child, data, admin)
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
        if self.signing {
            cmd.env("LAP_GATEWAY_SIGNING_KEY", TEST_SEED);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub async fn start(self) -> Gateway {
        for attempt in 0..3 {
            let (dir, child, data, admin) = self.spawn();
            let mut gw = Gateway {
                data: SocketAddr::from(([127, 0, 0, 1], data)),
                admin: SocketAddr::from(([127, 0, 0, 1], admin)),
                command: self.command(dir.path()),
                dir,
                child: Some(child),
            };
            if gw.wait_ready(Duration::from_secs(20)).await {
                return gw;
            }
            let log = gw.log_text();
            let exited = gw
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            // A port grabbed by someone else between probe and bind: try again.
            if attempt < 2 && log.contains("Address already in use") {
                continue;
            }
            panic!(
                "lap-gateway did not become ready (exited: {exited}); log tail:\n{}",
                tail(&log, 40)
            );
        }
        unreachable!()
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

pub struct Gateway {
    pub data: SocketAddr,
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<Child>,
    command: Command,
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
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Gateway {
    async fn wait_ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    return false;
                }
            }
            if let Ok(Ok(mut s)) =
                tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(self.admin)).await
            {
                let req = b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
                if s.write_all(req).await.is_ok() {
                    if let Ok(r) =
                        tokio::time::timeout(Duration::from_secs(2), read_response(&mut s)).await
                    {
                        if r.status == 200 {
                            return true;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
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

    pub fn write_keys(&self, json: &str) {
        self.replace_file(&self.keys_path(), json);
    }

    pub fn write_policy(&self, text: &str) {
        self.replace_file(&self.policy_path(), text);
    }

    pub fn sighup(&self) {
        let _ = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status();
    }

    /// SIGKILL, for crash tests; the gateway can then be restarted on the same directory.
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
        self.wait_ready(Duration::from_secs(20)).await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir().join("gateway.log")).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        let r = request(self.admin, "GET", "/metrics", &[], None).await;
        String::from_utf8_lossy(&r.body).into_owned()
    }

    /// Polls `cond` every 50 ms until it holds or `limit` passes.
    pub async fn wait_until<F, Fut>(&self, limit: Duration, mut cond: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if cond().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// Reads one sample from Prometheus text: `name{labels…} value`. All given labels must match.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP client

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

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

/// Sends raw bytes and reads one response (the connection is then dropped). Panics after
/// 15 s without a complete response.
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> HttpResponse {
    tokio::time::timeout(Duration::from_secs(15), async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // The server may answer (e.g. 413) and close before reading everything we send.
        let _ = s.write_all(bytes).await;
        read_response(&mut s).await
    })
    .await
    .expect("response within 15 s")
}

/// A request with `Connection: close` and, when given, a `Content-Length` body.
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
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = buf[head_end + 4..].to_vec();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length: Option<usize> = get("content-length").and_then(|v| v.parse().ok());
    loop {
        if let Some(n) = length {
            if rest.len() >= n {
                rest.truncate(n);
                break;
            }
        } else if chunked {
            if let Some(body) = dechunk(&rest) {
                rest = body;
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

/// A chunked request body made of `chunks` pieces of `size` bytes each.
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
