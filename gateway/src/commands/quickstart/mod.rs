//! `lap-gateway quickstart`: a working gateway in one command, on embedded defaults.
//!
//! It writes a small, editable setup into a directory (config, a hashed API-key file, a Cedar
//! policy and schema, a tool credential), starts an example `echo` tool and an example MCP
//! server (`mcp_demo`) next to the gateway, and prints a fresh API key and ready-to-run `curl`
//! commands. The signing key is ephemeral, and the
//! gateway says so: this is for trying things out, not for production.

mod echo;
mod mcp_demo;

use crate::config::CliOverrides;
use pingora::services::listening::Service;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const POLICY: &str = include_str!("../../../quickstart/policy.cedar");
const SCHEMA: &str = include_str!("../../../quickstart/policy.cedarschema");
const CONFIG: &str = include_str!("../../../quickstart/gateway.toml");
/// The example tool's credential; the agent never sees it (the echo tool only says whether the
/// gateway injected it).
pub(crate) const DEMO_TOOL_TOKEN: &str = "demo-tool-token-not-a-real-secret";

#[derive(clap::Args)]
pub struct QuickstartArgs {
    /// Directory for the generated configuration (re-created on every start).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Data-plane port (agents).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Admin-plane port (metrics, readiness).
    #[arg(long, default_value_t = 9090)]
    admin_port: u16,
    /// Port of the example echo tool.
    #[arg(long, default_value_t = 9801)]
    tool_port: u16,
    /// Port of the example MCP server.
    #[arg(long, default_value_t = 9802)]
    mcp_port: u16,
}

pub fn run(args: &QuickstartArgs) -> ExitCode {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("lap-quickstart"));
    let key = match write_setup(&dir, args) {
        Ok(k) => k,
        Err(e) => {
            eprintln!(
                "lap-gateway quickstart: cannot prepare {}: {e}",
                dir.display()
            );
            return ExitCode::from(2);
        }
    };
    print_banner(&dir, args, &key);

    let mut echo = Service::new("example-echo-tool".to_string(), echo::EchoTool);
    echo.add_tcp(&format!("127.0.0.1:{}", args.tool_port));
    echo.threads = Some(1);
    let mut mcp = Service::new("example-mcp-server".to_string(), mcp_demo::DemoMcp);
    mcp.add_tcp(&format!("127.0.0.1:{}", args.mcp_port));
    mcp.threads = Some(1);
    crate::server::run(
        Some(&dir.join("gateway.toml")),
        &CliOverrides::default(),
        vec![Box::new(echo), Box::new(mcp)],
    )
}

fn write_setup(dir: &Path, args: &QuickstartArgs) -> std::io::Result<String> {
    std::fs::create_dir_all(dir)?;
    // Each run has a new ephemeral key, so the previous run's log could not be verified (and
    // the gateway would rightly refuse to continue it): start a fresh log.
    let data = dir.join("lap-data");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    let (key, hash) = lap_auth::generate_api_key().map_err(std::io::Error::other)?;
    let keys = serde_json::json!({
        "version": 1,
        "keys": [{"id": "quickstart", "hash": hash.to_string(), "agent_id": "demo-agent",
                  "groups": ["demo"], "note": "created by lap-gateway quickstart"}]
    });
    write(
        dir,
        "keys.json",
        &serde_json::to_string_pretty(&keys)?,
        0o600,
    )?;
    write(dir, "policy.cedar", POLICY, 0o644)?;
    write(dir, "policy.cedarschema", SCHEMA, 0o644)?;
    write(dir, "echo-tool.token", DEMO_TOOL_TOKEN, 0o600)?;
    let config = CONFIG
        .replace("@PORT@", &args.port.to_string())
        .replace("@ADMIN_PORT@", &args.admin_port.to_string())
        .replace("@TOOL_PORT@", &args.tool_port.to_string())
        .replace("@MCP_PORT@", &args.mcp_port.to_string());
    write(dir, "gateway.toml", &config, 0o644)?;
    Ok(key)
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> std::io::Result<()> {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    Ok(())
}

fn print_banner(dir: &Path, a: &QuickstartArgs, key: &str) {
    let gw = format!("http://127.0.0.1:{}", a.port);
    println!(
        r#"
LAP gateway quickstart
  agents:   {gw}/tools/<tool>/...      health: {gw}/v1/health
  admin:    http://127.0.0.1:{admin}/metrics  /readyz
  tool:     "echo" → example echo service on 127.0.0.1:{tool} (credential injected by the gateway)
  mcp:      "demo" → example MCP server on 127.0.0.1:{mcp}; MCP clients use {gw}/mcp/demo
  config:   {dir}  (edit policy.cedar or keys.json: applied within a second, no restart)
  signing:  EPHEMERAL key (development only); receipts in {dir}/lap-data/log
  evidence: http://127.0.0.1:{admin}/v1/log/checkpoint  /v1/receipts/<id>  /v1/keys on the data plane

API key for agent "demo-agent" (group "demo") — shown once, stored hashed:
  {key}

Try:
  curl -s {gw}/tools/echo/hello -H 'X-Api-Key: {key}'
  curl -s -X POST {gw}/tools/echo/payments -H 'X-Api-Key: {key}' \
       -H 'Content-Type: application/json' -d '{{"amount": 50, "to": "bob"}}'     # allowed
  curl -s -X POST {gw}/tools/echo/payments -H 'X-Api-Key: {key}' \
       -H 'Content-Type: application/json' -d '{{"amount": 5000, "to": "bob"}}'   # 403 by policy
  curl -s {gw}/tools/echo/admin/users -H 'X-Api-Key: {key}'                      # 403 forbid
  curl -s {gw}/tools/echo/hello                                                  # 401

MCP (an MCP client: streamable HTTP at {gw}/mcp/demo, header X-Api-Key: <key>), or by hand:
  curl -s {gw}/mcp/demo -H 'X-Api-Key: {key}' -H 'Content-Type: application/json' \
       -H 'MCP-Protocol-Version: 2026-07-28' -H 'Mcp-Method: tools/list' \
       -d '{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}}}}'
  curl -s {gw}/mcp/demo -H 'X-Api-Key: {key}' -H 'Content-Type: application/json' \
       -H 'MCP-Protocol-Version: 2026-07-28' -H 'Mcp-Method: tools/call' -H 'Mcp-Name: pay' \
       -d '{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"pay","arguments":{{"amount":5000,"to":"bob"}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}}}}'   # denied: amount
"#,
        admin = a.admin_port,
        tool = a.tool_port,
        mcp = a.mcp_port,
        dir = dir.display(),
    );
}
