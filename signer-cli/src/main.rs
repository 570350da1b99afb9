//! `lap-signer`: operator tools for the LAP gateway's keys.
//!
//! ```text
//! lap-signer keygen --out FILE [--kid ID]     new Ed25519 seed (mode 0600), prints the public key
//! lap-signer pubkey --key-file FILE           public key of a seed file
//! lap-signer apikey create --agent ID [...]   new agent API key + its hashed key-file entry
//! lap-signer apikey hash KEY                  the sha256: form of an existing key
//! lap-signer sign --key-file FILE             one signature, the LAP external-signer contract
//! lap-signer serve --key-file FILE            persistent co-process signer (line protocol)
//! lap-signer keyset add|activate|retire|revoke|show --file FILE …   edit a keyset safely
//! ```
//!
//! `sign` reads `base64(message)` and a newline on stdin and writes `base64(signature)`.
//! `serve` reads `<id> <base64(message)>` lines and answers `<id> <base64(signature)>` (or
//! `<id> ERR <reason>`), flushing after each batch of available input so pipelined requests
//! are answered at full speed. Both are reference signers: an HSM- or KMS-backed signer
//! implements the same contracts.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::{Parser, Subcommand};
use ed25519_dalek::Signer;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use time::format_description::well_known::Rfc3339;

#[derive(Parser)]
#[command(name = "lap-signer", version, about = "Key tools for the LAP gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an Ed25519 signing seed (64 hex) into a new file with mode 0600.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// Key id to print alongside the public key.
        #[arg(long, default_value = lap_keys::DEFAULT_KEY_ID)]
        kid: String,
    },
    /// Print the public key (hex) of a seed file.
    Pubkey {
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Agent API keys.
    #[command(subcommand)]
    Apikey(ApiKeyCommand),
    /// Sign one message: stdin `base64(message)` + newline, stdout `base64(signature)`.
    Sign {
        #[arg(long, env = "LAP_SIGNER_KEY_FILE")]
        key_file: PathBuf,
    },
    /// Serve the co-process line protocol on stdin/stdout until stdin closes.
    Serve {
        #[arg(long, env = "LAP_SIGNER_KEY_FILE")]
        key_file: PathBuf,
    },
    /// Edit a keyset file (validated, written atomically with mode 0600). The gateway picks
    /// the change up without a restart.
    #[command(subcommand)]
    Keyset(KeysetCommand),
}

#[derive(Subcommand)]
enum KeysetCommand {
    /// Add a key (creating the file, with this key active, if it does not exist).
    Add {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        kid: String,
        /// In-process key: the seed is copied into the keyset as `seed_hex`.
        #[arg(long, conflicts_with = "public_key_hex")]
        seed_file: Option<PathBuf>,
        /// Verify-only key, or the pinned key of `--signing-cmd`.
        #[arg(long)]
        public_key_hex: Option<String>,
        /// External signer command for this key (needs --public-key-hex).
        #[arg(long, requires = "public_key_hex")]
        signing_cmd: Option<String>,
        #[arg(long, requires = "signing_cmd")]
        timeout_seconds: Option<f64>,
        #[arg(long)]
        not_before: Option<String>,
        #[arg(long)]
        not_after: Option<String>,
    },
    /// Make a key the active (signing) key.
    Activate {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        kid: String,
    },
    /// Stop using a key from a time on (default now); its earlier signatures stay valid.
    Retire {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        kid: String,
        #[arg(long)]
        at: Option<String>,
    },
    /// Mark a key compromised from a time on: signatures made then or later are invalid.
    Revoke {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        kid: String,
        #[arg(long)]
        at: String,
    },
    /// Print the keyset's keys without secrets.
    Show {
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create a key: prints `key: …` (give it to the agent, it is not stored) and
    /// `entry: {…}` (add it to the API-key file's "keys" list).
    Create {
        #[arg(long)]
        agent: String,
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Key id (a non-secret label); defaults to the hash prefix.
        #[arg(long)]
        id: Option<String>,
        /// Expiry, RFC 3339 (e.g. 2027-01-01T00:00:00Z).
        #[arg(long)]
        expires: Option<String>,
    },
    /// Print the sha256: hash of an existing key (read from the argument or, with "-", stdin).
    Hash { key: String },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lap-signer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Keygen { out, kid } => keygen(&out, &kid),
        Command::Pubkey { key_file } => {
            let text = lap_keys::read_private_file(&key_file).map_err(|e| e.to_string())?;
            let key = lap_keys::parse_seed_hex(text.trim())
                .map_err(|e| format!("{}: {e}", key_file.display()))?;
            println!("{}", hex::encode(key.verifying_key().as_bytes()));
            Ok(())
        }
        Command::Apikey(ApiKeyCommand::Create {
            agent,
            groups,
            id,
            expires,
        }) => {
            if lap_auth::AgentId::parse(&agent).is_none() {
                return Err(format!(
                    "agent id {agent:?} must be 1-128 characters from [A-Za-z0-9._:@/-]"
                ));
            }
            if let Some(g) = groups
                .iter()
                .find(|g| lap_auth::AgentId::parse(g).is_none())
            {
                return Err(format!(
                    "group {g:?} must be 1-128 characters from [A-Za-z0-9._:@/-]"
                ));
            }
            if let Some(e) = &expires {
                time::OffsetDateTime::parse(e, &Rfc3339)
                    .map_err(|_| format!("--expires {e:?} is not an RFC 3339 timestamp"))?;
            }
            let (key, hash) = lap_auth::generate_api_key().map_err(|e| e.to_string())?;
            let mut entry = serde_json::json!({
                "id": id.unwrap_or_else(|| hash.short()),
                "hash": hash.to_string(),
                "agent_id": agent,
                "groups": groups,
            });
            if let Some(e) = expires {
                entry["expires_at"] = serde_json::Value::String(e);
            }
            println!("key: {key}");
            println!("entry: {entry}");
            Ok(())
        }
        Command::Sign { key_file } => {
            let key = load_key(&key_file)?;
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| format!("stdin: {e}"))?;
            let msg = B64
                .decode(line.trim_end_matches(['\r', '\n']))
                .map_err(|_| "stdin is not base64".to_string())?;
            println!("{}", B64.encode(key.sign(&msg).to_bytes()));
            Ok(())
        }
        Command::Serve { key_file } => serve(&load_key(&key_file)?),
        Command::Keyset(cmd) => keyset(cmd),
        Command::Apikey(ApiKeyCommand::Hash { key }) => {
            let key = if key == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_line(&mut s)
                    .map_err(|e| e.to_string())?;
                s.trim_end_matches(['\r', '\n']).to_string()
            } else {
                key
            };
            println!("{}", lap_auth::ApiKeyHash::of_key(&key));
            Ok(())
        }
    }
}

fn rfc3339(t: &str) -> Result<String, String> {
    time::OffsetDateTime::parse(t, &Rfc3339)
        .map(|_| t.to_string())
        .map_err(|_| format!("{t:?} is not an RFC 3339 time"))
}

fn now_rfc3339() -> Result<String, String> {
    time::OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .map_err(|e| e.to_string())
}

fn keyset(cmd: KeysetCommand) -> Result<(), String> {
    use serde_json::{json, Value};
    let file = match &cmd {
        KeysetCommand::Add { file, .. }
        | KeysetCommand::Activate { file, .. }
        | KeysetCommand::Retire { file, .. }
        | KeysetCommand::Revoke { file, .. }
        | KeysetCommand::Show { file } => file.clone(),
    };
    let mut doc: Value = match lap_keys::read_private_file(&file) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?,
        Err(lap_keys::KeyError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound
                && matches!(cmd, KeysetCommand::Add { .. }) =>
        {
            json!({"active_kid": null, "keys": {}})
        }
        Err(e) => return Err(e.to_string()),
    };
    match cmd {
        KeysetCommand::Show { .. } => {
            let active = doc["active_kid"].as_str().unwrap_or("").to_string();
            if let Some(keys) = doc["keys"].as_object() {
                for (kid, e) in keys {
                    let kind = if e.get("seed_hex").is_some() {
                        "in-process"
                    } else if e.get("signing_cmd").is_some() {
                        "external"
                    } else {
                        "verify-only"
                    };
                    let mark = if *kid == active { " (active)" } else { "" };
                    let times: Vec<String> =
                        ["not_before", "not_after", "retired_at", "revoked_at"]
                            .iter()
                            .filter_map(|f| {
                                e.get(*f)
                                    .and_then(Value::as_str)
                                    .map(|v| format!("{f}={v}"))
                            })
                            .collect();
                    println!("{kid}{mark}: {kind} {}", times.join(" "));
                }
            }
            return Ok(());
        }
        KeysetCommand::Add {
            kid,
            seed_file,
            public_key_hex,
            signing_cmd,
            timeout_seconds,
            not_before,
            not_after,
            ..
        } => {
            lap_keys::validate_kid(&kid)?;
            if doc["keys"].get(&kid).is_some() {
                return Err(format!("key {kid:?} already exists"));
            }
            let mut e = serde_json::Map::new();
            match (seed_file, public_key_hex) {
                (Some(seed), None) => {
                    let key = load_key(&seed)?;
                    e.insert("seed_hex".into(), hex::encode(key.to_bytes()).into());
                }
                (None, Some(pk)) => {
                    lap_keys::parse_public_hex(&pk)?;
                    e.insert("public_key_hex".into(), pk.into());
                    if let Some(c) = signing_cmd {
                        e.insert("signing_cmd".into(), c.into());
                    }
                    if let Some(t) = timeout_seconds {
                        e.insert("timeout_seconds".into(), t.into());
                    }
                }
                _ => return Err("give --seed-file or --public-key-hex".into()),
            }
            for (k, v) in [("not_before", not_before), ("not_after", not_after)] {
                if let Some(v) = v {
                    e.insert(k.into(), rfc3339(&v)?.into());
                }
            }
            doc["keys"][&kid] = Value::Object(e);
            if doc["active_kid"].is_null() {
                doc["active_kid"] = kid.into();
            }
        }
        KeysetCommand::Activate { kid, .. } => {
            key_mut(&mut doc, &kid, &file)?;
            doc["active_kid"] = kid.into();
        }
        KeysetCommand::Retire { kid, at, .. } => {
            if doc["active_kid"] == kid.as_str() {
                return Err(format!(
                    "{kid:?} is the active key; activate another key first"
                ));
            }
            let at = match at {
                Some(t) => rfc3339(&t)?,
                None => now_rfc3339()?,
            };
            key_mut(&mut doc, &kid, &file)?["retired_at"] = at.into();
        }
        KeysetCommand::Revoke { kid, at, .. } => {
            if doc["active_kid"] == kid.as_str() {
                return Err(format!(
                    "{kid:?} is the active key; activate another key first"
                ));
            }
            let at = rfc3339(&at)?;
            key_mut(&mut doc, &kid, &file)?["revoked_at"] = at.into();
        }
    }
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    // Never write a keyset the gateway would refuse.
    lap_keys::parse_keyset(&text, lap_keys::KeySource::KeysetFile)
        .map_err(|e| format!("refusing to write an invalid keyset: {e}"))?;
    write_private_atomic(&file, &text)?;
    println!(
        "{}: updated (active: {})",
        file.display(),
        doc["active_kid"].as_str().unwrap_or("?")
    );
    Ok(())
}

fn key_mut<'a>(
    doc: &'a mut serde_json::Value,
    kid: &str,
    file: &Path,
) -> Result<&'a mut serde_json::Value, String> {
    doc["keys"]
        .get_mut(kid)
        .ok_or_else(|| format!("no key {kid:?} in {}", file.display()))
}

/// Writes `text` to `path` via a 0600 temporary file and a rename (readers never see half).
fn write_private_atomic(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

fn load_key(path: &Path) -> Result<ed25519_dalek::SigningKey, String> {
    let text = lap_keys::read_private_file(path).map_err(|e| e.to_string())?;
    lap_keys::parse_seed_hex(text.trim()).map_err(|e| format!("{}: {e}", path.display()))
}

/// The co-process loop. Requests are answered in order; output is flushed whenever no more
/// input is immediately buffered, so a pipelined batch costs one write.
fn serve(key: &ed25519_dalek::SigningKey) -> Result<(), String> {
    use std::io::BufRead;
    let mut input = std::io::BufReader::with_capacity(64 * 1024, std::io::stdin());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut line = String::new();
    loop {
        line.clear();
        let n = input
            .read_line(&mut line)
            .map_err(|e| format!("stdin: {e}"))?;
        if n == 0 {
            out.flush().map_err(|e| e.to_string())?;
            return Ok(());
        }
        let text = line.trim_end_matches(['\r', '\n']);
        let answer = match text.split_once(' ') {
            Some((id, b64)) if id.parse::<u64>().is_ok() => match B64.decode(b64) {
                Ok(msg) => format!("{id} {}\n", B64.encode(key.sign(&msg).to_bytes())),
                Err(_) => format!("{id} ERR message is not base64\n"),
            },
            // Without a usable id the gateway cannot match an answer; say so on stderr.
            _ => {
                eprintln!("lap-signer serve: ignoring malformed request line");
                continue;
            }
        };
        out.write_all(answer.as_bytes())
            .map_err(|e| e.to_string())?;
        if input.buffer().is_empty() {
            out.flush().map_err(|e| e.to_string())?;
        }
    }
}

fn keygen(out: &Path, kid: &str) -> Result<(), String> {
    lap_keys::validate_kid(kid)?;
    let key = lap_keys::create_seed_file(out)?;
    println!("kid: {kid}");
    println!(
        "public_key_hex: {}",
        hex::encode(key.verifying_key().as_bytes())
    );
    Ok(())
}
