//! `lap-signer`: operator tools for the LAP gateway's keys.
//!
//! ```text
//! lap-signer keygen --out FILE [--kid ID]     new Ed25519 seed (mode 0600), prints the public key
//! lap-signer pubkey --key-file FILE           public key of a seed file
//! lap-signer apikey create --agent ID [...]   new agent API key + its hashed key-file entry
//! lap-signer apikey hash KEY                  the sha256: form of an existing key
//! lap-signer sign --key-file FILE             one signature, the LAP external-signer contract
//! lap-signer serve --key-file FILE            persistent co-process signer (line protocol)
//!          [--delay-ms MS] [--hang-after N]     test aids: a slow or a hung signer
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
        #[command(flatten)]
        faults: ServeFaults,
    },
    /// Edit a keyset file (validated, written atomically with mode 0600). The gateway picks
    /// the change up without a restart.
    #[command(subcommand)]
    Keyset(KeysetCommand),
}

/// Test aids for `serve`: a slow or a hung signer, to exercise the gateway's timeouts and
/// restarts with a real process. Never needed in production.
#[derive(clap::Args, Clone, Copy, Default)]
struct ServeFaults {
    /// Test aid: wait this long before answering each request (one request at a time), like
    /// a slow hardware signer.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    delay_ms: u64,
    /// Test aid: after answering this many requests, stop answering (still reading, and still
    /// exiting when stdin closes), like a signer that has hung.
    #[arg(long, value_name = "N")]
    hang_after: Option<u64>,
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

/// Why a command failed; printed after `lap-signer: `.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    KeyId(#[from] lap_keys::InvalidKeyId),
    #[error(transparent)]
    PublicKey(#[from] lap_keys::HexKeyError),
    #[error(transparent)]
    PrivateFile(#[from] lap_keys::PrivateFileError),
    #[error(transparent)]
    SeedFile(#[from] lap_keys::SeedFileError),
    #[error("{path}: {source}")]
    Seed {
        path: PathBuf,
        #[source]
        source: lap_keys::HexKeyError,
    },
    #[error("{path}: {source}")]
    Keyset {
        path: PathBuf,
        #[source]
        source: lap_keys::KeysetError,
    },
    #[error("refusing to write an invalid keyset: {0}")]
    InvalidKeyset(#[source] lap_keys::KeysetError),
    #[error("key {0:?} already exists")]
    KeyExists(String),
    #[error("no key {kid:?} in {file}")]
    NoSuchKey { kid: String, file: PathBuf },
    #[error("{0:?} is the active key; activate another key first")]
    ActiveKey(String),
    #[error("give --seed-file or --public-key-hex")]
    NoKeyGiven,
    #[error("{0:?} is not an RFC 3339 time")]
    Time(String),
    #[error("--expires {0:?} is not an RFC 3339 timestamp")]
    Expires(String),
    #[error("agent id {0:?} must be 1-128 characters from [A-Za-z0-9._:@/-]")]
    AgentId(String),
    #[error("group {0:?} must be 1-128 characters from [A-Za-z0-9._:@/-]")]
    Group(String),
    #[error("{0}")]
    Random(getrandom::Error),
    #[error("{0}")]
    Clock(#[source] time::error::Format),
    #[error("stdin: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("stdin is not base64")]
    NotBase64,
    #[error("{0}")]
    Stdout(#[source] std::io::Error),
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Keygen { out, kid } => keygen(&out, &kid),
        Command::Pubkey { key_file } => {
            let key = load_key(&key_file)?;
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
                return Err(CliError::AgentId(agent));
            }
            if let Some(g) = groups
                .iter()
                .find(|g| lap_auth::AgentId::parse(g).is_none())
            {
                return Err(CliError::Group(g.clone()));
            }
            if let Some(e) = &expires {
                time::OffsetDateTime::parse(e, &Rfc3339)
                    .map_err(|_| CliError::Expires(e.clone()))?;
            }
            let (key, hash) = lap_auth::generate_api_key().map_err(CliError::Random)?;
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
                .map_err(CliError::Stdin)?;
            let msg = B64
                .decode(line.trim_end_matches(['\r', '\n']))
                .map_err(|_| CliError::NotBase64)?;
            println!("{}", B64.encode(key.sign(&msg).to_bytes()));
            Ok(())
        }
        Command::Serve { key_file, faults } => serve(&load_key(&key_file)?, faults),
        Command::Keyset(cmd) => keyset(cmd),
        Command::Apikey(ApiKeyCommand::Hash { key }) => {
            let key = if key == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_line(&mut s)
                    .map_err(CliError::Stdin)?;
                s.trim_end_matches(['\r', '\n']).to_string()
            } else {
                key
            };
            println!("{}", lap_auth::ApiKeyHash::of_key(&key));
            Ok(())
        }
    }
}

fn rfc3339(t: &str) -> Result<String, CliError> {
    time::OffsetDateTime::parse(t, &Rfc3339)
        .map(|_| t.to_string())
        .map_err(|_| CliError::Time(t.to_string()))
}

fn now_rfc3339() -> Result<String, CliError> {
    time::OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .map_err(CliError::Clock)
}

/// Edits a keyset file through the keyset format itself ([`lap_keys::KeysetFile`]): what the
/// operator wrote is kept (a file with fields the format does not know is refused, not
/// rewritten without them), and nothing the gateway would refuse is ever written.
fn keyset(cmd: KeysetCommand) -> Result<(), CliError> {
    use lap_keys::{KeyFields, KeyFileEntry, KeysetFile, SeedHex, SigningCmd};
    let file = match &cmd {
        KeysetCommand::Add { file, .. }
        | KeysetCommand::Activate { file, .. }
        | KeysetCommand::Retire { file, .. }
        | KeysetCommand::Revoke { file, .. }
        | KeysetCommand::Show { file } => file.clone(),
    };
    let read = read_keyset(&file);
    let no_such_key = |kid: &str| CliError::NoSuchKey {
        kid: kid.to_string(),
        file: file.clone(),
    };
    let doc = match cmd {
        KeysetCommand::Show { .. } => {
            show_keyset(&read?);
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
            let existing =
                match read {
                    Ok(doc) => Some(doc),
                    Err(CliError::PrivateFile(lap_keys::PrivateFileError::Io {
                        source, ..
                    })) if source.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                };
            lap_keys::validate_kid(&kid)?;
            if existing.as_ref().is_some_and(|d| d.keys.contains_key(&kid)) {
                return Err(CliError::KeyExists(kid));
            }
            let mut e = KeyFields::default();
            match (seed_file, public_key_hex) {
                (Some(seed), None) => e.seed_hex = Some(SeedHex::of(&load_key(&seed)?)),
                (None, Some(pk)) => {
                    lap_keys::parse_public_hex(&pk)?;
                    e.public_key_hex = Some(pk);
                    e.signing_cmd = signing_cmd.map(SigningCmd::Line);
                    e.timeout_seconds = timeout_seconds;
                }
                _ => return Err(CliError::NoKeyGiven),
            }
            e.not_before = not_before.as_deref().map(rfc3339).transpose()?;
            e.not_after = not_after.as_deref().map(rfc3339).transpose()?;
            let entry = KeyFileEntry::Fields(e);
            match existing {
                // A new file: its first key is the active one.
                None => KeysetFile::with_key(&kid, entry),
                Some(mut doc) => {
                    doc.keys.insert(kid, entry);
                    doc
                }
            }
        }
        KeysetCommand::Activate { kid, .. } => {
            let mut doc = read?;
            if !doc.keys.contains_key(&kid) {
                return Err(no_such_key(&kid));
            }
            doc.active_kid = kid;
            doc
        }
        KeysetCommand::Retire { kid, at, .. } => {
            let mut doc = read?;
            if doc.active_kid == kid {
                return Err(CliError::ActiveKey(kid));
            }
            let at = match at {
                Some(t) => rfc3339(&t)?,
                None => now_rfc3339()?,
            };
            doc.fields_mut(&kid)
                .ok_or_else(|| no_such_key(&kid))?
                .retired_at = Some(at);
            doc
        }
        KeysetCommand::Revoke { kid, at, .. } => {
            let mut doc = read?;
            if doc.active_kid == kid {
                return Err(CliError::ActiveKey(kid));
            }
            let at = rfc3339(&at)?;
            doc.fields_mut(&kid)
                .ok_or_else(|| no_such_key(&kid))?
                .revoked_at = Some(at);
            doc
        }
    };
    // Never write a keyset the gateway would refuse.
    doc.to_keyset(lap_keys::KeySource::KeysetFile)
        .map_err(CliError::InvalidKeyset)?;
    write_private_atomic(&file, &doc.to_json_pretty())?;
    println!("{}: updated (active: {})", file.display(), doc.active_kid);
    Ok(())
}

/// Reads a keyset file (private: refused when group or others may read it).
fn read_keyset(file: &Path) -> Result<lap_keys::KeysetFile, CliError> {
    let text = zeroize::Zeroizing::new(lap_keys::read_private_file(file)?);
    lap_keys::KeysetFile::parse(&text).map_err(|source| CliError::Keyset {
        path: file.to_path_buf(),
        source,
    })
}

/// Prints each key without secrets: how it signs and its lifecycle.
fn show_keyset(doc: &lap_keys::KeysetFile) {
    for (kid, entry) in &doc.keys {
        let e = entry.fields();
        let kind = if e.seed_hex.is_some() {
            "in-process"
        } else if e.signing_cmd.is_some() {
            "external"
        } else {
            "verify-only"
        };
        let mark = if *kid == doc.active_kid {
            " (active)"
        } else {
            ""
        };
        let times: Vec<String> = [
            ("not_before", &e.not_before),
            ("not_after", &e.not_after),
            ("retired_at", &e.retired_at),
            ("revoked_at", &e.revoked_at),
        ]
        .into_iter()
        .filter_map(|(f, v)| v.as_ref().map(|v| format!("{f}={v}")))
        .collect();
        println!("{kid}{mark}: {kind} {}", times.join(" "));
    }
}

/// Writes `text` to `path` via a 0600 temporary file and a rename (readers never see half).
fn write_private_atomic(path: &Path, text: &str) -> Result<(), CliError> {
    let tmp = path.with_extension("tmp");
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CliError::Write { path, source }
    };
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(failed(&tmp))?;
    f.write_all(text.as_bytes()).map_err(failed(&tmp))?;
    f.sync_all().map_err(failed(&tmp))?;
    std::fs::rename(&tmp, path).map_err(failed(path))
}

fn load_key(path: &Path) -> Result<ed25519_dalek::SigningKey, CliError> {
    let text = zeroize::Zeroizing::new(lap_keys::read_private_file(path)?);
    lap_keys::parse_seed_hex(text.trim()).map_err(|source| CliError::Seed {
        path: path.to_path_buf(),
        source,
    })
}

/// The co-process loop. Requests are answered in order; output is flushed whenever no more
/// input is immediately buffered, so a pipelined batch costs one write. Returns when stdin
/// reaches end of file — the gateway closed it or is gone (even killed with SIGKILL), so a
/// signer never outlives its gateway — also while hung on purpose (`--hang-after`).
fn serve(key: &ed25519_dalek::SigningKey, faults: ServeFaults) -> Result<(), CliError> {
    use std::io::BufRead;
    let mut input = std::io::BufReader::with_capacity(64 * 1024, std::io::stdin());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut line = String::new();
    let mut answered: u64 = 0;
    loop {
        line.clear();
        let n = input.read_line(&mut line).map_err(CliError::Stdin)?;
        if n == 0 {
            out.flush().map_err(CliError::Stdout)?;
            return Ok(());
        }
        if faults.hang_after.is_some_and(|limit| answered >= limit) {
            continue;
        }
        if faults.delay_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(faults.delay_ms));
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
        out.write_all(answer.as_bytes()).map_err(CliError::Stdout)?;
        answered += 1;
        if input.buffer().is_empty() || faults.delay_ms > 0 {
            out.flush().map_err(CliError::Stdout)?;
        }
    }
}

fn keygen(out: &Path, kid: &str) -> Result<(), CliError> {
    lap_keys::validate_kid(kid)?;
    let key = lap_keys::create_seed_file(out)?;
    println!("kid: {kid}");
    println!(
        "public_key_hex: {}",
        hex::encode(key.verifying_key().as_bytes())
    );
    Ok(())
}
