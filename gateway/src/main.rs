//! `lap-gateway`: the LAP policy-enforcing gateway between AI agents and their tools.
//!
//! ```text
//! lap-gateway --config gateway.toml          run
//! lap-gateway check-config --config FILE     validate everything, print precise errors
//! lap-gateway quickstart                     run a demo on embedded defaults
//! lap-gateway audit-pack --config FILE --out PACK.tar [--from N] [--to N] [--since T]
//!             [--until T] [--agent ID] [--tool NAME] [--since-size N]
//!                                            export an audit pack from the log directory
//! lap-gateway admin-token --role ROLE --id ID [--expires T]
//!                                            mint an admin-plane token and its file entry
//! ```

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::{Args, Parser, Subcommand};
use lap_gateway::commands::{check, quickstart};
use lap_gateway::{config, export, server};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "lap-gateway",
    version,
    about = "LAP gateway: policy enforcement between AI agents and their tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run(RunArgs),
    /// Validate the configuration, keys, signing key, tools and policy; exit 1 on any error.
    CheckConfig(RunArgs),
    /// Run a demo gateway on embedded defaults, with an example echo tool and a fresh API key.
    Quickstart(quickstart::QuickstartArgs),
    /// Export an audit pack from the configured log directory (read-only; the gateway may run).
    AuditPack(AuditPackArgs),
    /// Mint an admin-plane token: prints `token: …` (give it to the operator; it is not
    /// stored) and `entry: {…}` (add it to the admin tokens file's "tokens" list).
    AdminToken(AdminTokenArgs),
}

#[derive(Args)]
struct AdminTokenArgs {
    /// viewer, auditor, operator or admin.
    #[arg(long)]
    role: String,
    /// The token's id: a non-secret label for logs and receipts ([A-Za-z0-9._:@/-], 1-128).
    #[arg(long)]
    id: String,
    /// Expiry, RFC 3339 (e.g. 2027-01-01T00:00:00Z).
    #[arg(long)]
    expires: Option<String>,
}

fn admin_token(a: &AdminTokenArgs) -> ExitCode {
    let Some(role) = lap_auth::Role::parse(&a.role) else {
        eprintln!(
            "lap-gateway admin-token: role {:?} is not one of viewer, auditor, operator, admin",
            a.role
        );
        return ExitCode::from(2);
    };
    if lap_auth::AgentId::parse(&a.id).is_none() {
        eprintln!(
            "lap-gateway admin-token: id {:?} must be 1-128 characters from [A-Za-z0-9._:@/-]",
            a.id
        );
        return ExitCode::from(2);
    }
    if let Some(e) = &a.expires {
        if time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339).is_err() {
            eprintln!("lap-gateway admin-token: --expires {e:?} is not an RFC 3339 time");
            return ExitCode::from(2);
        }
    }
    let (token, hash) = match lap_auth::generate_admin_token() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("lap-gateway admin-token: no system randomness: {e}");
            return ExitCode::from(1);
        }
    };
    let mut entry = serde_json::json!({
        "id": a.id,
        "hash": hash.to_string(),
        "role": role.as_str(),
    });
    if let Some(e) = &a.expires {
        entry["expires_at"] = serde_json::Value::String(e.clone());
    }
    println!("token: {token}");
    println!("entry: {entry}");
    ExitCode::SUCCESS
}

#[derive(Args)]
struct AuditPackArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Where to write the pack (a tar file).
    #[arg(long)]
    out: PathBuf,
    /// First log index (inclusive; default 0).
    #[arg(long)]
    from: Option<u64>,
    /// End of the range (exclusive; default: the latest checkpoint's tree size).
    #[arg(long)]
    to: Option<u64>,
    /// Receipts issued at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Receipts issued before this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// Only receipts of this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Only receipts of calls to this tool.
    #[arg(long)]
    tool: Option<String>,
    /// Tree size of a checkpoint you hold: the pack proves the log extends it.
    #[arg(long)]
    since_size: Option<u64>,
}

fn audit_pack(a: &AuditPackArgs) -> ExitCode {
    let config = match config::load(
        a.run.config.as_deref(),
        &config::ProcessEnv,
        &a.run.overrides(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lap-gateway audit-pack: {e}");
            return ExitCode::from(2);
        }
    };
    let req = export::PackRequest {
        from: a.from,
        to: a.to,
        since: a.since.clone(),
        until: a.until.clone(),
        agent: a.agent.clone(),
        tool: a.tool.clone(),
        since_size: a.since_size,
    };
    match export::export_offline(&config, &req, &a.out) {
        Ok(n) => {
            println!("wrote {} ({n} entries)", a.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lap-gateway audit-pack: {}: {e}", e.code());
            ExitCode::from(1)
        }
    }
}

#[derive(Args, Clone, Default)]
struct RunArgs {
    /// Configuration file (TOML). Environment variables override it.
    #[arg(long, short = 'c', env = "LAP_CONFIG")]
    config: Option<PathBuf>,
    /// Trust X-Forwarded-For from the addresses in --forwarded-allow-ips.
    #[arg(long)]
    proxy_headers: bool,
    /// Comma-separated proxy addresses/CIDRs whose X-Forwarded-For is trusted.
    #[arg(long)]
    forwarded_allow_ips: Option<String>,
}

impl RunArgs {
    fn overrides(&self) -> config::CliOverrides {
        config::CliOverrides {
            proxy_headers: self.proxy_headers,
            forwarded_allow_ips: self.forwarded_allow_ips.clone(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => server::run(cli.run.config.as_deref(), &cli.run.overrides(), Vec::new()),
        Some(Command::Run(a)) => server::run(a.config.as_deref(), &a.overrides(), Vec::new()),
        Some(Command::CheckConfig(a)) => check::check(a.config.as_deref(), &a.overrides()),
        Some(Command::Quickstart(q)) => quickstart::run(&q),
        Some(Command::AuditPack(a)) => audit_pack(&a),
        Some(Command::AdminToken(a)) => admin_token(&a),
    }
}
