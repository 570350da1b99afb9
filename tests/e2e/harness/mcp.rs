//! Real MCP peers, built with the official MCP Python SDK (`tests/mcp/`, see its README).
//!
//! The gateway's MCP support is tested against peers it did not write: [`McpUpstream`] runs
//! `tests/mcp/server.py`, an MCP server whose one `/mcp` endpoint serves both protocol
//! generations, and [`mcp_client`] runs `tests/mcp/client.py`, the SDK's client forced to one
//! [`Generation`], for one scenario, and returns the JSON object it prints.
//!
//! Rules kept: the server listens on 127.0.0.1 only, on a port leased with [`free_port`];
//! its start is bounded by [`MCP_READY_TIMEOUT`] and each client run by
//! [`MCP_CLIENT_TIMEOUT`]; the server is killed and reaped when dropped; its stderr goes to a
//! file (a pipe nobody reads would block it once full) and is quoted when it fails to start.

use crate::ports::free_port;
use crate::process::{assert_success, repo_root, run_command, wait_for, ChildGuard};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long `server.py` may take to print `READY` (the SDK's import alone takes a second).
pub const MCP_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one `client.py` run may take before it is killed. The client gives itself 15 s
/// less, so a scenario that hangs is reported in its JSON rather than killed.
pub const MCP_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

fn script(name: &str) -> PathBuf {
    repo_root().join("tests/mcp").join(name)
}

/// Which MCP protocol generation a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// 2025-11-25 and earlier: `initialize` handshake, `Mcp-Session-Id`, server-to-client
    /// requests on the response stream.
    Legacy,
    /// 2026-07-28: no handshake, the version in every request's `_meta` and headers
    /// (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`).
    Modern,
    /// The SDK's default: probe `server/discover`, fall back to `initialize`.
    Auto,
}

impl Generation {
    /// The two generations a dual-era gateway must carry.
    pub const BOTH: [Generation; 2] = [Generation::Legacy, Generation::Modern];

    /// The `--generation` value of `client.py`.
    pub fn as_str(self) -> &'static str {
        match self {
            Generation::Legacy => "legacy",
            Generation::Modern => "modern",
            Generation::Auto => "auto",
        }
    }

    /// The protocol version the SDK negotiates in this generation (`Auto` against a server
    /// that serves both: the modern one).
    pub fn protocol_version(self) -> &'static str {
        match self {
            Generation::Legacy => "2025-11-25",
            Generation::Modern | Generation::Auto => "2026-07-28",
        }
    }
}

/// How to start an [`McpUpstream`]; `Default` is a server named `fixture` that answers with
/// SSE and asks for no credential.
#[derive(Clone, Debug, Default)]
pub struct McpUpstreamOptions {
    name: Option<String>,
    require_header: Option<(String, String)>,
    json_response: bool,
}

impl McpUpstreamOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// The server's name (`serverInfo`, `whoami`'s `server`, the `res://motd` text), so a
    /// test fronting several servers can tell which one answered.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Refuse every request without this exact header: 401 when it is missing, 403 when its
    /// value differs (the tool credential a gateway must inject).
    pub fn require_header(mut self, name: &str, value: &str) -> Self {
        self.require_header = Some((name.to_string(), value.to_string()));
        self
    }

    /// Answer `application/json` instead of an SSE stream (no progress, no elicitation on a
    /// legacy connection).
    pub fn json_response(mut self) -> Self {
        self.json_response = true;
        self
    }
}

/// A running `tests/mcp/server.py`. Killed and reaped when dropped.
pub struct McpUpstream {
    child: ChildGuard,
    port: u16,
    stderr: tempfile::NamedTempFile,
}

impl McpUpstream {
    /// Starts the server on a leased port and waits (at most [`MCP_READY_TIMEOUT`]) for its
    /// `READY` line; panics with its stderr if it does not come.
    pub async fn start(options: McpUpstreamOptions) -> McpUpstream {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Self::try_start(&options).await {
                Ok(up) => return up,
                // Another program may bind a leased port between the lease and the server.
                Err(e) if attempts < 3 && e.contains("address already in use") => continue,
                Err(e) => panic!(
                    "tests/mcp/server.py did not start: {e} \
                     (it needs the MCP Python SDK: tests/run.sh installs it)"
                ),
            }
        }
    }

    async fn try_start(options: &McpUpstreamOptions) -> Result<McpUpstream, String> {
        let port = free_port();
        let stderr = tempfile::NamedTempFile::new().expect("stderr file");
        let mut cmd = Command::new("python3");
        cmd.arg(script("server.py"))
            .args(["--port", &port.to_string()]);
        if let Some(name) = &options.name {
            cmd.args(["--name", name]);
        }
        if let Some((name, value)) = &options.require_header {
            cmd.arg("--require-header").arg(format!("{name}={value}"));
        }
        if options.json_response {
            cmd.arg("--json-response");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("stderr file"));
        let mut child = ChildGuard::spawn(&mut cmd);

        // The first stdout line that says READY; the thread drains stdout until the end.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(p) = line.strip_prefix("READY ") {
                    let _ = tx.send(p.trim().parse::<u16>().ok());
                }
            }
        });
        enum Started {
            Ready(Option<u16>),
            Exited(ExitStatus),
        }
        let started = wait_for(MCP_READY_TIMEOUT, || {
            let now = match rx.try_recv() {
                Ok(p) => Some(Started::Ready(p)),
                Err(_) => child.try_wait().ok().flatten().map(Started::Exited),
            };
            async move { now }
        })
        .await;
        let up = McpUpstream {
            child,
            port,
            stderr,
        };
        match started {
            Some(Started::Ready(Some(p))) if p == port => Ok(up),
            Some(Started::Ready(p)) => Err(format!("it said READY {p:?}, not READY {port}")),
            Some(Started::Exited(st)) => Err(format!("it exited ({st})\n{}", up.stderr())),
            None => Err(format!(
                "no READY in {MCP_READY_TIMEOUT:?}\n{}",
                up.stderr()
            )),
        }
    }

    /// `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many messages of each kind reached the server (`tools/call:<tool>`, other methods,
    /// `response`, `GET`, `DELETE`): its `GET /hits`.
    pub async fn hits(&self) -> serde_json::Value {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let r = crate::http::Request::get(addr, "/hits").send().await;
        assert_eq!(r.status, 200, "GET /hits: {}", r.text());
        r.json()
    }

    /// How many times `key` (see [`McpUpstream::hits`]) reached the server.
    pub async fn hit_count(&self, key: &str) -> u64 {
        self.hits().await[key].as_u64().unwrap_or(0)
    }

    /// What the server wrote to stderr so far (SDK and uvicorn logs, tracebacks).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.stderr.path()).unwrap_or_default()).into_owned()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Runs `tests/mcp/client.py` (at most [`MCP_CLIENT_TIMEOUT`], off the async runtime) for one
/// scenario against `url`, sending `headers` on every HTTP request, and returns the JSON
/// object it printed. A refusal is not a failure here: it is in the object (`error`,
/// `http_status`; see [`mcp_ok`]). Panics, with the client's stdout and stderr, only when the
/// client itself failed (bad usage, a crash, no JSON).
///
/// Scenarios and their arguments are listed in `tests/mcp/client.py` and its README.
pub async fn mcp_client(
    url: &str,
    headers: &[(&str, &str)],
    generation: Generation,
    scenario: &str,
    args: &[&str],
) -> serde_json::Value {
    let mut cmd = Command::new("python3");
    cmd.arg(script("client.py"))
        .args(["--url", url, "--generation", generation.as_str()])
        .arg("--timeout")
        .arg((MCP_CLIENT_TIMEOUT.as_secs() - 15).to_string());
    for (name, value) in headers {
        cmd.arg("--header").arg(format!("{name}={value}"));
    }
    cmd.arg(scenario).args(args);
    let what = format!(
        "client.py --generation {} {scenario} {args:?} against {url}",
        generation.as_str()
    );
    let out = tokio::task::spawn_blocking(move || run_command(&mut cmd, MCP_CLIENT_TIMEOUT))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert_success(&out, &what);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what} printed no JSON object ({e})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `reply` if the scenario succeeded; panics with the whole reply if it holds an `error`.
#[track_caller]
pub fn mcp_ok(reply: serde_json::Value) -> serde_json::Value {
    assert!(
        reply.get("error").is_none(),
        "the MCP scenario failed: {reply:#}"
    );
    reply
}
