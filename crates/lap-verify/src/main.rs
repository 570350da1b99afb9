//! `lap-verify`: offline verification of LAP evidence. No network access.
//!
//! ```text
//! lap-verify pack PACK.tar [--trusted-keys KEYS.json] [--checkpoint PINNED] [--json] [--threads N]
//! lap-verify log DIR --trusted-keys KEYS.json [--checkpoint PINNED] [--json]
//! lap-verify receipt FILE --trusted-keys KEYS.json [--proof PROOF.json --log-checkpoint CP] [--json]
//! lap-verify trust KEYS.json
//! ```
//!
//! `KEYS.json` is the gateway's `/v1/keys` document. Exit status 0 only when everything checks;
//! 1 when something failed verification; 2 when the inputs could not be read.

use clap::{Parser, Subcommand};
use lap_verify::pack::{verify_pack, PackOptions};
use lap_verify::{
    verify_log, verify_receipt, verify_receipt_with_proof, InputError, Report, TrustFile,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "lap-verify",
    version,
    about = "Offline verification of LAP evidence"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify an audit pack: manifest, trust file, checkpoints, proofs, every receipt.
    Pack {
        /// The pack (a tar file), or `-` for standard input.
        file: PathBuf,
        /// Keys you trust (a `/v1/keys` document); without it the pack's own trust.json is used.
        #[arg(long)]
        trusted_keys: Option<PathBuf>,
        /// An earlier checkpoint you trust: the pack's log must extend it.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Threads for signature checks (default: all CPUs).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Verify a log directory (entries + checkpoint) against a trust file.
    Log {
        dir: PathBuf,
        #[arg(long)]
        trusted_keys: PathBuf,
        /// An earlier checkpoint you trust: the log must extend it.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Verify one receipt envelope's signature and key validity, and optionally its place
    /// in the log.
    Receipt {
        file: PathBuf,
        #[arg(long)]
        trusted_keys: PathBuf,
        /// Its inclusion proof (the admin plane's /v1/log/proof/inclusion answer).
        #[arg(long, requires = "log_checkpoint")]
        proof: Option<PathBuf>,
        /// The checkpoint note the proof refers to.
        #[arg(long, requires = "proof")]
        log_checkpoint: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Print a trust file's keys.
    Trust { file: PathBuf },
}

/// Why a command could not run at all (exit status 2), with a stable code.
struct Unusable {
    code: &'static str,
    message: String,
}

impl From<InputError> for Unusable {
    fn from(e: InputError) -> Self {
        Unusable {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

fn unreadable(path: &Path, e: std::io::Error) -> Unusable {
    Unusable {
        code: "INPUT_UNREADABLE",
        message: format!("{}: {e}", path.display()),
    }
}

fn read(path: &Path) -> Result<String, Unusable> {
    std::fs::read_to_string(path).map_err(|e| unreadable(path, e))
}

fn trust(path: &Path) -> Result<TrustFile, Unusable> {
    TrustFile::parse(&read(path)?).map_err(|e| Unusable {
        code: e.code(),
        message: format!("{}: {e}", path.display()),
    })
}

fn print(report: &Report, json: bool) {
    if json {
        let v = serde_json::json!({"ok": report.ok(), "report": report});
        println!("{v}");
        return;
    }
    for f in &report.failures {
        match f.index {
            Some(i) => println!("FAIL {} at index {i}: {}", f.code, f.detail),
            None => println!("FAIL {}: {}", f.code, f.detail),
        }
    }
    for n in &report.notes {
        println!("note {}: {}", n.code, n.detail);
    }
    println!(
        "{}: {} entries, checkpoint size {}",
        if report.ok() { "OK" } else { "FAILED" },
        report.entries,
        report.checkpoint_size.map_or("-".into(), |s| s.to_string())
    );
}

fn run(cli: Cli) -> Result<bool, Unusable> {
    match cli.command {
        Command::Log {
            dir,
            trusted_keys,
            checkpoint,
            json,
        } => {
            let trust = trust(&trusted_keys)?;
            let pinned = checkpoint.as_deref().map(read).transpose()?;
            let report = verify_log(&dir, &trust, pinned.as_deref())?;
            print(&report, json);
            Ok(report.ok())
        }
        Command::Pack {
            file,
            trusted_keys,
            checkpoint,
            json,
            threads,
        } => {
            let trust = trusted_keys.as_deref().map(trust).transpose()?;
            let pinned = checkpoint.as_deref().map(read).transpose()?;
            // `-` reads the pack from standard input (`curl … | lap-verify pack - …`).
            let input: Box<dyn std::io::Read> = if file == Path::new("-") {
                Box::new(std::io::stdin().lock())
            } else {
                let f = std::fs::File::open(&file).map_err(|e| unreadable(&file, e))?;
                Box::new(std::io::BufReader::new(f))
            };
            let opts = PackOptions {
                trusted_keys: trust.as_ref(),
                pinned_checkpoint: pinned.as_deref(),
                threads,
            };
            let report = verify_pack(input, &opts)?;
            print(&report, json);
            Ok(report.ok())
        }
        Command::Receipt {
            file,
            trusted_keys,
            proof,
            log_checkpoint,
            json,
        } => {
            let trust = trust(&trusted_keys)?;
            let bytes = std::fs::read(&file).map_err(|e| unreadable(&file, e))?;
            let report = match (proof, log_checkpoint) {
                (Some(p), Some(cp)) => {
                    verify_receipt_with_proof(&trust, &bytes, &read(&p)?, &read(&cp)?)
                }
                _ => {
                    let mut report = Report {
                        entries: 1,
                        ..Report::default()
                    };
                    if let Err(f) = verify_receipt(&trust, &bytes, None) {
                        report.failures.push(f);
                    }
                    report
                }
            };
            print(&report, json);
            Ok(report.ok())
        }
        Command::Trust { file } => {
            let t = trust(&file)?;
            println!("log {} ({})", t.log_origin, t.log_verifier.to_vkey());
            for k in t.keys.values() {
                println!(
                    "key {} {} not_before={:?} not_after={:?} revoked_at={:?}",
                    k.key_id,
                    hex::encode(k.public_key.as_bytes()),
                    k.not_before,
                    k.not_after,
                    k.revoked_at
                );
            }
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("lap-verify: {}: {}", e.code, e.message);
            ExitCode::from(2)
        }
    }
}
