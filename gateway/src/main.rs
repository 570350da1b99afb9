//! `lap-gateway`: the LAP policy-enforcing gateway between AI agents and their tools.
//!
//! ```text
//! lap-gateway --config gateway.toml          run
//! lap-gateway check-config --config FILE     validate everything, print precise errors
//! lap-gateway quickstart                     run a demo on embedded defaults
//! ```

mod admin;
mod check;
mod client_ip;
mod config;
mod errors;
mod evidence;
mod metrics;
mod proxy;
mod quickstart;
mod routes;
mod server;
mod state;
mod tools;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::{Args, Parser, Subcommand};
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
        None => server::run(cli.run.config.as_deref(), &cli.run.overrides(), None),
        Some(Command::Run(a)) => server::run(a.config.as_deref(), &a.overrides(), None),
        Some(Command::CheckConfig(a)) => check::check(a.config.as_deref(), &a.overrides()),
        Some(Command::Quickstart(q)) => quickstart::run(&q),
    }
}
