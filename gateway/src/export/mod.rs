//! Audit-pack export: choose the entries, gather the checkpoints and proofs that make them
//! checkable offline, sign the manifest with the log key. The format is `lap-pack`'s; the
//! checks are `lap-verify`'s.
//!
//! Two front ends share this code: the admin route `GET /v1/audit-pack?…` on a running gateway
//! and `lap-gateway audit-pack --config FILE …`, which reads the log directory read-only (it
//! works while the gateway runs, or after it stopped).
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the request, the errors, signing and writing, the offline command |
//! | `select.rs` | which entries, checkpoints and proofs go in (the selection rules) |
//! | `source.rs` | the log read live or from disk |

mod select;
mod source;

pub use select::{prepare, Prepared};
pub use source::{LiveLog, LogReadError, LogSource, OfflineLog};

use crate::config::Config;
use crate::evidence::SetupError;
use lap_pack::ManifestSignature;
use std::io::Write;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// What the requester asked for, before it is resolved against the log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackRequest {
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub agent: Option<String>,
    pub tool: Option<String>,
    /// Size of a checkpoint the requester holds: the pack then proves the anchor extends it.
    pub since_size: Option<u64>,
}

/// Why no pack was made. Each maps to an HTTP status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    BadQuery(String),
    #[error("{0}")]
    BadRange(String),
    #[error("the log has no checkpoint yet; nothing can be proven")]
    NoCheckpoint,
    #[error("no log entry matches the selection")]
    Empty,
    #[error("{count} entries selected; the admin plane exports at most {max} per pack (use `lap-gateway audit-pack` for more, or narrow the range)")]
    TooLarge { count: u64, max: u64 },
    #[error("reading the log: {0}")]
    Log(#[from] LogReadError),
    #[error("signing the manifest: {0}")]
    Sign(#[source] lap_signing::SignError),
    #[error("signing keys: {0}")]
    Keys(#[from] SetupError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("encoding the pack: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("writing the pack{}: {source}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Write {
        path: Option<PathBuf>,
        #[source]
        source: std::io::Error,
    },
}

impl ExportError {
    pub fn status(&self) -> u16 {
        match self {
            Self::BadQuery(_) | Self::BadRange(_) => 400,
            Self::NoCheckpoint => 409,
            Self::Empty => 404,
            Self::TooLarge { .. } => 413,
            Self::Log(_)
            | Self::Write { .. }
            | Self::Encode(_)
            | Self::Keys(_)
            | Self::Internal(_) => 500,
            Self::Sign(_) => 503,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadQuery(_) => "BAD_QUERY",
            Self::BadRange(_) => "BAD_RANGE",
            Self::NoCheckpoint => "NO_CHECKPOINT",
            Self::Empty => "NOTHING_SELECTED",
            Self::TooLarge { .. } => "PACK_TOO_LARGE",
            Self::Log(_) => "LOG_READ_FAILED",
            Self::Sign(_) => "PACK_SIGNING_FAILED",
            Self::Keys(_) => "SIGNING_KEY_UNAVAILABLE",
            Self::Internal(_) => "INTERNAL_ERROR",
            Self::Write { .. } | Self::Encode(_) => "PACK_WRITE_FAILED",
        }
    }
}

impl PackRequest {
    /// Parses the admin route's query string (`from`, `to`, `since`, `until`, `agent`,
    /// `tool`, `since_size`); unknown or repeated parameters are refused.
    pub fn from_query(query: &str) -> Result<Self, ExportError> {
        let mut req = PackRequest::default();
        let mut seen = std::collections::HashSet::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| ExportError::BadQuery(format!("{k}: not UTF-8")))?
                .into_owned();
            if !seen.insert(k.to_string()) {
                return Err(ExportError::BadQuery(format!("{k} given twice")));
            }
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| ExportError::BadQuery(format!("{k} must be a whole number")))
            };
            match k {
                "from" => req.from = Some(number(&v)?),
                "to" => req.to = Some(number(&v)?),
                "since_size" => req.since_size = Some(number(&v)?),
                "since" => req.since = Some(v),
                "until" => req.until = Some(v),
                "agent" => req.agent = Some(v),
                "tool" => req.tool = Some(v),
                other => {
                    return Err(ExportError::BadQuery(format!(
                        "unknown parameter {other:?}"
                    )))
                }
            }
        }
        Ok(req)
    }
}

/// Signs the manifest with the log key and writes the archive.
pub async fn sign_and_write(
    prepared: Prepared,
    log_signer: &dyn lap_signing::Signer,
    log_vkey: &str,
    out: impl Write,
) -> Result<(), ExportError> {
    let sig = log_signer
        .sign(&lap_pack::signing_message(&prepared.manifest_json))
        .await
        .map_err(ExportError::Sign)?;
    use base64::Engine;
    let signature = ManifestSignature {
        payload_type: lap_pack::MANIFEST_PAYLOAD_TYPE.to_string(),
        key: log_vkey.to_string(),
        sig: base64::engine::general_purpose::STANDARD.encode(sig),
    };
    let mtime = OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    lap_pack::write_tar(
        out,
        mtime,
        &prepared.manifest_json,
        &signature,
        &prepared.members,
    )
    .map_err(|e| match e {
        lap_pack::PackError::Io(source) => ExportError::Write { path: None, source },
        other => ExportError::Internal(other.to_string()),
    })
}

/// `lap-gateway audit-pack`: exports from the configured log directory, offline. The pack is
/// written next to `out`, made durable, then renamed: never a half-written pack under its name.
pub fn export_offline(config: &Config, req: &PackRequest, out: &Path) -> Result<u64, ExportError> {
    let keyset = lap_keys::load(&config.keys).map_err(SetupError::from)?;
    let log_signer = crate::evidence::offline_log_signer(config)?;
    let vkey = crate::evidence::log_verifier(config, log_signer.as_ref())?.to_vkey();
    let trust = lap_keys::TrustDocument::new(
        &keyset,
        Some(lap_keys::LogKey {
            origin: config.log.origin.clone(),
            vkey: vkey.clone(),
        }),
    )
    .to_json();
    let log = OfflineLog::open(&config.log.dir)?;
    let prepared = prepare(&log, &config.log.origin, trust.as_bytes(), req, None)?;
    let entries = prepared.entries;
    let tmp = out.with_extension("partial");
    let write = |path: &Path| {
        let path = Some(path.to_path_buf());
        move |source| ExportError::Write { path, source }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ExportError::Internal(format!("cannot start a runtime: {e}")))?;
    let file = std::fs::File::create(&tmp).map_err(write(&tmp))?;
    let mut writer = std::io::BufWriter::new(file);
    runtime.block_on(sign_and_write(
        prepared,
        log_signer.as_ref(),
        &vkey,
        &mut writer,
    ))?;
    let file = writer
        .into_inner()
        .map_err(|e| write(&tmp)(e.into_error()))?;
    file.sync_all().map_err(write(&tmp))?;
    std::fs::rename(&tmp, out).map_err(write(out))?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_is_strict() {
        let r = PackRequest::from_query("from=3&to=9&agent=a%2Fb&since_size=2").unwrap();
        assert_eq!(
            (r.from, r.to, r.agent.as_deref(), r.since_size),
            (Some(3), Some(9), Some("a/b"), Some(2))
        );
        for bad in ["from=x", "from=1&from=2", "colour=red", "to=-1"] {
            let e = PackRequest::from_query(bad).unwrap_err();
            assert_eq!(e.code(), "BAD_QUERY", "{bad}");
        }
        assert_eq!(PackRequest::from_query("").unwrap(), PackRequest::default());
    }
}
