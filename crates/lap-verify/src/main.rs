//! `lap-verify`: offline verification of LAP evidence. No network access.
//!
//! ```text
//! lap-verify pack PACK.tar [--trusted-keys KEYS.json] [--checkpoint PINNED] [--json] [--threads N]
//! lap-verify log DIR --trusted-keys KEYS.json [--checkpoint PINNED] [--json]
//! lap-verify receipt FILE (--trusted-keys KEYS.json | --log-key VKEY) [--proof PROOF] [--log-checkpoint CP] [--json]
//! lap-verify trust KEYS.json
//! ```
//!
//! `KEYS.json` is the gateway's `/v1/keys` document, `VKEY` its log key (`/v1/log/vkey`).
//! `receipt --proof` takes a C2SP `tlog-proof` (what a call gets in `x-lap-receipt-proof`;
//! self-contained) or the admin plane's JSON inclusion proof (with `--log-checkpoint`). Exit
//! status 0 only when everything checks; 1 when something failed verification; 2 when the
//! inputs could not be read.

// A million receipts are a few tens of millions of small allocations.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::{Parser, Subcommand};
use lap_tlog::note::NoteVerifier;
use lap_verify::pack::{verify_pack, PackOptions};
use lap_verify::{
    verify_log, verify_receipt, verify_receipt_with_proof, verify_receipt_with_tlog_proof, Anchor,
    InputError, Report, TrustFile,
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
    /// Verify one receipt (a log entry: a batched receipt or a DSSE envelope), and its place
    /// in the log when a proof is given. A batched receipt needs its proof.
    Receipt {
        file: PathBuf,
        /// Keys you trust (a `/v1/keys` document).
        #[arg(long, required_unless_present = "log_key", conflicts_with = "log_key")]
        trusted_keys: Option<PathBuf>,
        /// Only the log's verifier key (`/v1/log/vkey`, Go note format): enough for a
        /// tlog-proof, without checking which receipt key stood behind the receipt.
        #[arg(long)]
        log_key: Option<String>,
        /// Its proof: a C2SP tlog-proof, or the admin plane's /v1/log/proof/inclusion answer.
        #[arg(long)]
        proof: Option<PathBuf>,
        /// The checkpoint note a JSON inclusion proof refers to.
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
            let (input, input_len): (Box<dyn std::io::Read>, _) = if file == Path::new("-") {
                (Box::new(std::io::stdin().lock()), None)
            } else {
                let f = std::fs::File::open(&file).map_err(|e| unreadable(&file, e))?;
                let len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
                (Box::new(std::io::BufReader::new(f)), len)
            };
            let opts = PackOptions {
                trusted_keys: trust.as_ref(),
                pinned_checkpoint: pinned.as_deref(),
                threads,
                input_len,
            };
            let report = verify_pack(input, &opts)?;
            print(&report, json);
            Ok(report.ok())
        }
        Command::Receipt {
            file,
            trusted_keys,
            log_key,
            proof,
            log_checkpoint,
            json,
        } => {
            let trust = trusted_keys.as_deref().map(trust).transpose()?;
            let log_key = log_key
                .map(|k| {
                    NoteVerifier::parse_vkey(k.trim()).map_err(|e| Unusable {
                        code: "TRUST_FILE_INVALID",
                        message: format!("--log-key: {e}"),
                    })
                })
                .transpose()?;
            let bytes = std::fs::read(&file).map_err(|e| unreadable(&file, e))?;
            let proof = proof.as_deref().map(read).transpose()?;
            let tlog = proof
                .as_deref()
                .is_some_and(|p| p.starts_with(lap_tlog::proof::HEADER));
            let usage = |message: &str| Unusable {
                code: "USAGE",
                message: message.to_string(),
            };
            let report = match (&trust, &log_key, proof, log_checkpoint) {
                (_, _, Some(p), None) if tlog => {
                    let anchor = match (&trust, &log_key) {
                        (Some(t), _) => Anchor::Trust(t),
                        (None, Some(k)) => Anchor::LogKey(k),
                        (None, None) => return Err(usage("give --trusted-keys or --log-key")),
                    };
                    verify_receipt_with_tlog_proof(anchor, &bytes, &p)
                }
                (_, _, Some(_), Some(_)) if tlog => {
                    return Err(usage(
                        "a tlog-proof carries its checkpoint: drop --log-checkpoint",
                    ))
                }
                (Some(t), _, Some(p), Some(cp)) => {
                    verify_receipt_with_proof(t, &bytes, &p, &read(&cp)?)
                }
                (Some(t), _, None, _) => {
                    let mut report = Report {
                        entries: 1,
                        ..Report::default()
                    };
                    if let Err(f) = verify_receipt(t, &bytes, None) {
                        report.failures.push(f);
                    }
                    report
                }
                (None, _, _, _) => {
                    return Err(usage(
                        "--log-key alone verifies a receipt with its tlog-proof only (--proof)",
                    ))
                }
                (Some(_), _, Some(_), None) => return Err(usage(
                    "a JSON inclusion proof needs the checkpoint it refers to (--log-checkpoint)",
                )),
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
