//! The real `lap-gateway` binary, configured and started per test.
//!
//! [`GatewayBuilder`] writes a complete gateway directory (gateway.toml, keys.json,
//! policy.cedar, optional schema) in a fresh temporary directory and starts the binary on two
//! leased ports (see [`crate::ports`]). The rules kept here:
//!
//! - every gateway has its own directory (config, keys, policy, pid file, upgrade socket, logs)
//!   and its own ports, so tests run in parallel;
//! - "started" means ready: admin `/readyz` answers 200, the data port accepts connections, and
//!   the process is still alive after both; a gateway that is not ready within
//!   [`READY_TIMEOUT`] fails the test with its config and the tail of its logs;
//! - a [`Gateway`] (and a [`Spawned`] one) is SIGKILLed and reaped when dropped, before its
//!   directory and port leases are released;
//! - the signing key defaults to [`TEST_SEED`], passed in the environment as an operator would.

use crate::http::Request;
use crate::ports::{free_ports, loopback, PortLease};
use crate::process::{gateway_bin, run_command, wait_until, ChildGuard};
use crate::upstream::sha256_hex;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A fixed Ed25519 seed for tests (never use outside tests). The builder passes it as
/// `LAP_GATEWAY_SIGNING_KEY` unless told otherwise.
pub const TEST_SEED: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

/// The policy file of a gateway built without [`GatewayBuilder::policy`]: no policy (every
/// call is denied), written as a comment because an empty file is refused as one caught
/// half-way through a write.
pub const NO_POLICY: &str = "// No policy: every call is denied.\n";

/// How long [`GatewayBuilder::start`] waits for `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// `sha256:<hex>` as written in rich key files.
pub fn key_hash(key: &str) -> String {
    format!("sha256:{}", sha256_hex(key.as_bytes()))
}

/// Runs `lap-gateway check-config --config <config>` (with [`TEST_SEED`] as the signing key)
/// to completion, at most 60 s.
pub fn check_config(config: &Path) -> Output {
    run_command(
        Command::new(gateway_bin())
            .args(["check-config", "--config"])
            .arg(config)
            .env("LAP_GATEWAY_SIGNING_KEY", TEST_SEED),
        Duration::from_secs(60),
    )
}

/// Builds a gateway directory (gateway.toml, keys.json, policy.cedar, optional
/// policy.cedarschema) and starts the real binary on it.
///
/// The generated config always sets `[server] listen`, `threads = 2`, `reload_interval_ms`
/// (200 unless [`GatewayBuilder::reload_interval_ms`]), `pid_file` and `upgrade_sock` (in the
/// temp dir), `[admin] listen` (and `allow_unauthenticated_loopback = true` unless
/// [`GatewayBuilder::admin_toml`]), `[auth] api_keys_file = "keys.json"` and `[policy] file`; do
/// not repeat those keys in [`GatewayBuilder::server_toml`].
pub struct GatewayBuilder {
    tools: Vec<(String, String, String)>,
    policy: Option<String>,
    schema: Option<String>,
    keys: String,
    server: Vec<String>,
    admin: String,
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
            admin: "allow_unauthenticated_loopback = true".into(),
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

    /// The Cedar policy text (policy.cedar). When not given, the file holds only a comment
    /// ([`NO_POLICY`]): no policy, so every call is denied.
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

    /// The `[admin]` lines besides `listen`, replacing the default
    /// `allow_unauthenticated_loopback = true` (e.g. `tokens_file = "admin-tokens.json"`).
    pub fn admin_toml(mut self, lines: &str) -> Self {
        self.admin = lines.into();
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
             pid_file = \"gw.pid\"\nupgrade_sock = \"gw.sock\"\n{}\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}\n\n\
             [auth]\napi_keys_file = \"keys.json\"\n\n[limits]\n{}\n\n[policy]\nfile = \"policy.cedar\"\n",
            self.reload_interval_ms,
            self.server.join("\n"),
            self.admin,
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
            self.policy.as_deref().unwrap_or(NO_POLICY),
        )
        .expect("policy");
        if let Some(s) = &self.schema {
            std::fs::write(dir.join("policy.cedarschema"), s).expect("schema");
        }
        dir.join("gateway.toml")
    }

    /// Writes the directory and spawns the gateway on fresh ports without waiting (for
    /// start-up failure tests).
    pub fn spawn(&self) -> Spawned {
        let [data, admin] = free_ports::<2>();
        self.spawn_on(data, admin)
    }

    /// Like [`GatewayBuilder::spawn`] on given ports (lease them with [`PortLease`]).
    pub fn spawn_on(&self, data: u16, admin: u16) -> Spawned {
        let dir = tempfile::tempdir().expect("tempdir");
        self.write(dir.path(), data, admin);
        let child = ChildGuard::spawn(&mut self.command(dir.path()));
        Spawned {
            data: loopback(data),
            admin: loopback(admin),
            child,
            dir,
        }
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
            .stdout(log_file(dir, STDOUT_LOG))
            .stderr(log_file(dir, GATEWAY_LOG));
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
            let Spawned { dir, child, .. } = self.spawn_on(data, admin);
            let mut gw = Gateway {
                data: loopback(data),
                admin: loopback(admin),
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

/// Where the gateway's stderr (its log) and stdout go, in its directory.
const GATEWAY_LOG: &str = "gateway.log";
const STDOUT_LOG: &str = "stdout.log";

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().filter(|l| !l.is_empty()).collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Appends to a log file in the gateway directory (kept across restarts).
fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("log file")
}

fn read_log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// A gateway spawned without waiting for it to be ready ([`GatewayBuilder::spawn`]), for
/// tests of start-up itself. SIGKILLed and reaped on drop (its directory is removed after).
pub struct Spawned {
    /// Data plane address (`[server] listen`).
    pub data: SocketAddr,
    /// Admin plane address (`[admin] listen`).
    pub admin: SocketAddr,
    /// The process. Declared before `dir`: killed before its directory is removed.
    pub child: ChildGuard,
    dir: tempfile::TempDir,
}

impl Spawned {
    /// The gateway's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The gateway's stderr (where it logs, and where it says why it refused to start).
    pub fn log_text(&self) -> String {
        read_log(self.dir(), GATEWAY_LOG)
    }

    /// Waits (at most `limit`) for the process to exit by itself; `None` (and the process
    /// killed) if it does not.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.child.wait_exit(limit).await
    }
}

/// A running `lap-gateway`; SIGKILLed and reaped on drop (its temp dir is removed after).
pub struct Gateway {
    /// Data plane address (`[server] listen`).
    pub data: SocketAddr,
    /// Admin plane address (`[admin] listen`).
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<ChildGuard>,
    command: Command,
    /// Declared after `child`: released only once the process is gone.
    _ports: [PortLease; 2],
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Gateway {
    /// A request to the data plane (what an agent sends).
    pub fn request(&self, method: &str, target: &str) -> Request {
        Request::new(self.data, method, target)
    }

    /// `GET target` on the data plane.
    pub fn get(&self, target: &str) -> Request {
        self.request("GET", target)
    }

    /// `POST target` on the data plane.
    pub fn post(&self, target: &str) -> Request {
        self.request("POST", target)
    }

    /// `GET target` on the admin plane.
    pub fn admin_get(&self, target: &str) -> Request {
        Request::get(self.admin, target)
    }

    /// `POST target` on the admin plane (revocations, reloads).
    pub fn admin_post(&self, target: &str) -> Request {
        Request::post(self.admin, target)
    }

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
        loop {
            if self.exited() || Instant::now() >= deadline {
                return false;
            }
            let ready = self.admin_get("/readyz").try_send(Duration::from_secs(3));
            if ready.await.is_some_and(|r| r.status == 200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ready_at = Instant::now();
        let connect = |addr| {
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
        };
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

    /// Sends `signal` (`"TERM"`, `"INT"`, …) and waits at most `limit` for the gateway to exit
    /// by itself; `None` (and the process killed) if it does not.
    pub async fn stop_with(&mut self, signal: &str, limit: Duration) -> Option<ExitStatus> {
        let pid = self.pid();
        assert_ne!(pid, 0, "the gateway is not running");
        let st = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{signal} {pid} failed");
        self.child.as_mut()?.wait_exit(limit).await
    }

    /// SIGKILL and reap, for crash tests; the gateway can then be restarted on the same
    /// directory with [`Gateway::restart`].
    pub fn kill(&mut self) {
        // Dropping the guard kills and reaps.
        self.child = None;
    }

    /// Starts the gateway again on the same directory, ports and configuration (after
    /// [`Gateway::kill`]) and waits until it is ready; `false` if it refuses to start.
    pub async fn restart(&mut self) -> bool {
        self.kill();
        let dir = self.dir.path().to_path_buf();
        self.command
            .stdout(log_file(&dir, STDOUT_LOG))
            .stderr(log_file(&dir, GATEWAY_LOG));
        self.child = Some(ChildGuard::spawn(&mut self.command));
        self.wait_ready(READY_TIMEOUT).await
    }

    /// The gateway's stderr (where it logs).
    pub fn log_text(&self) -> String {
        read_log(self.dir(), GATEWAY_LOG)
    }

    /// The gateway's stdout.
    pub fn stdout_text(&self) -> String {
        read_log(self.dir(), STDOUT_LOG)
    }

    /// Waits (up to 5 s) for `needle` to appear in the gateway's log file. The gateway logs
    /// from a background writer, so a line can land a little after the response that caused it.
    pub async fn wait_for_log(&self, needle: &str) -> bool {
        wait_until(Duration::from_secs(5), || async {
            self.log_text().contains(needle)
        })
        .await
    }
}
