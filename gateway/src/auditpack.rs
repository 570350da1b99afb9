//! Audit-pack export: choose the entries, gather the checkpoints and proofs that make them
//! checkable offline, sign the manifest with the log key. The format is `lap-pack`'s; the
//! checks are `lap-verify`'s.
//!
//! Two front ends share this code: the admin route `GET /v1/audit-pack?…` on a running gateway
//! and `lap-gateway audit-pack --config FILE …`, which reads the log directory read-only (it
//! works while the gateway runs, or after it stopped).
//!
//! Selection: a log range `[from, to)` (default: everything under the latest checkpoint),
//! narrowed by a time window (`since`/`until`: the smallest contiguous range holding every
//! receipt issued in the window) and optionally filtered by agent and tool. Only entries under
//! the latest checkpoint can be proven, so `to` may not go beyond it. Without agent and tool
//! filters the pack is *complete*: every index of the range is in it, and the single
//! multi-leaf inclusion proof lets the auditor prove that nothing was left out.

use crate::config::Config;
use crate::evidence::now_rfc3339;
use lap_pack::{
    ConsistencyProof, InclusionProof, Manifest, ManifestSignature, Members, Proofs, Selection,
};
use lap_tlog::merkle::Tree;
use lap_tlog::note::Checkpoint;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use time::format_description::well_known::Rfc3339;
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
    Log(String),
    #[error("signing the manifest: {0}")]
    Sign(String),
    #[error("signing keys: {0}")]
    Keys(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("writing the pack: {0}")]
    Write(String),
}

impl ExportError {
    pub fn status(&self) -> u16 {
        match self {
            Self::BadQuery(_) | Self::BadRange(_) => 400,
            Self::NoCheckpoint => 409,
            Self::Empty => 404,
            Self::TooLarge { .. } => 413,
            Self::Log(_) | Self::Write(_) | Self::Keys(_) | Self::Internal(_) => 500,
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
            Self::Write(_) => "PACK_WRITE_FAILED",
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

/// Read access to a log, live or on disk.
pub trait LogSource {
    /// The entry at `index` (a receipt envelope).
    fn entry(&self, index: u64) -> Result<Cow<'_, [u8]>, String>;
    /// Every checkpoint note known (history and latest; order and duplicates do not matter).
    fn checkpoints(&self) -> Result<Vec<String>, String>;
    /// Runs `f` on the log's Merkle tree.
    fn with_tree<T>(&self, f: impl FnOnce(&Tree) -> T) -> T;
}

/// The running gateway's log.
pub struct LiveLog<'a>(pub &'a lap_evidence::Ledger);

impl LogSource for LiveLog<'_> {
    fn entry(&self, index: u64) -> Result<Cow<'_, [u8]>, String> {
        let bytes = self.0.store().read(index).map_err(|e| e.to_string())?;
        Ok(Cow::Owned(bytes))
    }
    fn checkpoints(&self) -> Result<Vec<String>, String> {
        let mut all = self
            .0
            .store()
            .checkpoint_history()
            .map_err(|e| e.to_string())?;
        all.extend(self.0.checkpoint());
        Ok(all)
    }
    fn with_tree<T>(&self, f: impl FnOnce(&Tree) -> T) -> T {
        self.0.store().with_tree(f)
    }
}

/// A log directory read from disk, unchanged.
pub struct OfflineLog {
    log: lap_tlog::store::ReadOnlyLog,
    tree: Tree,
}

impl OfflineLog {
    pub fn open(dir: &std::path::Path) -> Result<Self, ExportError> {
        let log = lap_tlog::store::read_only(dir).map_err(|e| ExportError::Log(e.to_string()))?;
        if let Some((index, offset)) = log.corrupt_at {
            return Err(ExportError::Log(format!(
                "record {index} at byte {offset} is damaged; verify the log with lap-verify"
            )));
        }
        let tree = Tree::from_entries(&log.entries);
        Ok(Self { log, tree })
    }
}

impl LogSource for OfflineLog {
    fn entry(&self, index: u64) -> Result<Cow<'_, [u8]>, String> {
        self.log
            .entries
            .get(index as usize)
            .map(|e| Cow::Borrowed(e.as_slice()))
            .ok_or_else(|| format!("no entry {index}"))
    }
    fn checkpoints(&self) -> Result<Vec<String>, String> {
        let mut all = self.log.checkpoints.clone();
        all.extend(self.log.checkpoint.clone());
        Ok(all)
    }
    fn with_tree<T>(&self, f: impl FnOnce(&Tree) -> T) -> T {
        f(&self.tree)
    }
}

/// A pack ready to be signed.
pub struct Prepared {
    manifest_json: Vec<u8>,
    members: Members,
    pub entries: u64,
}

fn parse_time(what: &str, v: &str) -> Result<OffsetDateTime, ExportError> {
    OffsetDateTime::parse(v, &Rfc3339)
        .map_err(|_| ExportError::BadQuery(format!("{what} {v:?} is not an RFC 3339 time")))
}

/// Checkpoints of this log by tree size (signatures are the verifier's business; the exporter
/// only skips notes it cannot read).
fn checkpoints_by_size(notes: Vec<String>, origin: &str) -> BTreeMap<u64, String> {
    let mut by_size = BTreeMap::new();
    for text in notes {
        let parsed = Checkpoint::from_note_unverified(&text).ok();
        if let Some(cp) = parsed.filter(|cp| cp.origin == origin) {
            by_size.insert(cp.size, text);
        }
    }
    by_size
}

/// Resolves the request against the log and assembles everything but the signature.
pub fn prepare(
    src: &impl LogSource,
    origin: &str,
    trust_json: &[u8],
    req: &PackRequest,
    max_entries: Option<u64>,
) -> Result<Prepared, ExportError> {
    let since = req
        .since
        .as_deref()
        .map(|v| parse_time("since", v))
        .transpose()?;
    let until = req
        .until
        .as_deref()
        .map(|v| parse_time("until", v))
        .transpose()?;
    let checkpoints = checkpoints_by_size(src.checkpoints().map_err(ExportError::Log)?, origin);
    let (&tree_size, _) = checkpoints
        .last_key_value()
        .ok_or(ExportError::NoCheckpoint)?;
    let mut from = req.from.unwrap_or(0);
    let mut to = req.to.unwrap_or(tree_size);
    if to > tree_size {
        return Err(ExportError::BadRange(format!(
            "to={to} is beyond the latest checkpoint (tree size {tree_size}); later entries cannot be proven yet"
        )));
    }
    if from >= to {
        return Err(ExportError::BadRange(format!(
            "the range [{from}, {to}) is empty"
        )));
    }
    if let Some(m) = req.since_size {
        if m > tree_size {
            return Err(ExportError::BadRange(format!(
                "since_size={m} is beyond the latest checkpoint (tree size {tree_size})"
            )));
        }
    }

    let filtered = req.agent.is_some() || req.tool.is_some();
    let mut indices: Vec<u64> = Vec::new();
    if since.is_some() || until.is_some() || filtered {
        // One pass: narrow the range to the time window, remember which indices pass the
        // filters. Only indices are kept, so the size cap applies before any entry is held;
        // the selected entries are read again below.
        let (mut first, mut last) = (None, None);
        let mut passing = Vec::new();
        for i in from..to {
            let entry = src.entry(i).map_err(ExportError::Log)?;
            let (_, r) = lap_receipt::open(&entry)
                .map_err(|e| ExportError::Log(format!("entry {i} is not a receipt: {e}")))?;
            let t = OffsetDateTime::parse(&r.issued_at, &Rfc3339)
                .map_err(|_| ExportError::Log(format!("entry {i}: issued_at is not RFC 3339")))?;
            if since.is_none_or(|s| t >= s) && until.is_none_or(|u| t < u) {
                first.get_or_insert(i);
                last = Some(i);
            }
            let agent_ok = req
                .agent
                .as_deref()
                .is_none_or(|a| r.principal.as_ref().is_some_and(|p| p.agent_id == a));
            let tool_ok = req
                .tool
                .as_deref()
                .is_none_or(|t| r.call.tool.as_deref() == Some(t));
            if agent_ok && tool_ok {
                passing.push(i);
            }
        }
        if since.is_some() || until.is_some() {
            match (first, last) {
                (Some(f), Some(l)) => (from, to) = (f, l + 1),
                _ => return Err(ExportError::Empty),
            }
        }
        indices = passing
            .into_iter()
            .filter(|i| (from..to).contains(i))
            .collect();
    } else {
        // Checked before the index list is built: it would be as long as the range.
        if let Some(max) = max_entries.filter(|&m| to - from > m) {
            return Err(ExportError::TooLarge {
                count: to - from,
                max,
            });
        }
        indices.extend(from..to);
    }
    if indices.is_empty() {
        return Err(ExportError::Empty);
    }
    let count = indices.len() as u64;
    if let Some(max) = max_entries.filter(|&m| count > m) {
        return Err(ExportError::TooLarge { count, max });
    }

    // The first checkpoint covering the range, then the anchor (the latest), linked by a
    // consistency proof: two notes whatever the length of the history.
    let mut chosen: Vec<(u64, &String)> = checkpoints
        .range(to..)
        .next()
        .into_iter()
        .map(|(s, n)| (*s, n))
        .collect();
    if chosen.last().map(|c| c.0) != Some(tree_size) {
        chosen.extend(checkpoints.range(tree_size..).map(|(s, n)| (*s, n)));
    }
    let mut steps: Vec<(u64, u64)> = chosen.windows(2).map(|w| (w[0].0, w[1].0)).collect();
    if let Some(m) = req.since_size {
        steps.push((m, tree_size));
    }
    let (inclusion, consistency) = src
        .with_tree(|tree| {
            let inclusion = tree.multi_proof(&indices, tree_size)?;
            let consistency = steps
                .iter()
                .map(|&(old, new)| tree.consistency_proof(old, new))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, lap_tlog::merkle::RangeError>((inclusion, consistency))
        })
        .map_err(|e| ExportError::Log(e.to_string()))?;

    let mut entries_txt = Vec::with_capacity(indices.len() * 1024);
    for &i in &indices {
        let entry = src.entry(i).map_err(ExportError::Log)?;
        lap_pack::push_entry_line(&mut entries_txt, i, &entry)
            .map_err(|e| ExportError::Log(e.to_string()))?;
    }
    let proofs = Proofs {
        inclusion: InclusionProof {
            tree_size,
            hashes: lap_pack::encode_hashes(&inclusion),
        },
        consistency: steps
            .iter()
            .zip(consistency)
            .map(|(&(old, new), p)| ConsistencyProof {
                old,
                new,
                hashes: lap_pack::encode_hashes(&p),
            })
            .collect(),
    };
    let mut members = vec![(lap_pack::TRUST.to_string(), trust_json.to_vec())];
    for (n, (_, text)) in chosen.iter().enumerate() {
        members.push((lap_pack::checkpoint_name(n), text.as_bytes().to_vec()));
    }
    members.push((lap_pack::ENTRIES.to_string(), entries_txt));
    members.push((
        lap_pack::PROOFS.to_string(),
        serde_json::to_vec_pretty(&proofs).map_err(|e| ExportError::Write(e.to_string()))?,
    ));
    let members = Members(members);
    let manifest = Manifest {
        format: lap_pack::FORMAT.to_string(),
        origin: origin.to_string(),
        created_at: now_rfc3339(),
        selection: Selection {
            from,
            to,
            since: req.since.clone(),
            until: req.until.clone(),
            agent: req.agent.clone(),
            tool: req.tool.clone(),
            complete: !filtered,
        },
        tree_size,
        entries: count,
        since_size: req.since_size,
        files: members.digests(),
    };
    Ok(Prepared {
        manifest_json: serde_json::to_vec_pretty(&manifest)
            .map_err(|e| ExportError::Write(e.to_string()))?,
        members,
        entries: count,
    })
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
        .map_err(|e| ExportError::Sign(e.to_string()))?;
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
    .map_err(|e| ExportError::Write(e.to_string()))
}

/// `lap-gateway audit-pack`: exports from the configured log directory, offline.
pub fn export_offline(
    config: &Config,
    req: &PackRequest,
    out: &std::path::Path,
) -> Result<u64, ExportError> {
    let keys = |e: String| ExportError::Keys(e);
    let keyset = lap_keys::load(&config.keys).map_err(|e| keys(e.to_string()))?;
    let active = keyset.active();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ExportError::Internal(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(async {
        // The receipt key is needed only for a log whose checkpoints it signed.
        let receipt_signer = || {
            lap_signing::for_key(active, false)
                .ok_or_else(|| format!("active key {:?} cannot sign", active.kid))
        };
        let log_signer =
            crate::evidence::log_signer(config, receipt_signer, false).map_err(keys)?;
        let origin = config.log.origin.clone();
        let vkey = lap_tlog::note::NoteVerifier::new(&origin, *log_signer.public_key())
            .map_err(|e| keys(e.to_string()))?
            .to_vkey();
        let trust =
            crate::server::publish_with_log(config, &keyset, Some((origin.clone(), vkey.clone())));
        let log = OfflineLog::open(&config.log.dir)?;
        let prepared = prepare(&log, &origin, &trust.keys, req, None)?;
        let entries = prepared.entries;
        // Written next to the destination, then renamed: no half-written pack under its name.
        let tmp = out.with_extension("partial");
        let write = |p: &std::path::Path, e: std::io::Error| {
            ExportError::Write(format!("{}: {e}", p.display()))
        };
        let file = std::fs::File::create(&tmp).map_err(|e| write(&tmp, e))?;
        let mut writer = std::io::BufWriter::new(file);
        sign_and_write(prepared, log_signer.as_ref(), &vkey, &mut writer).await?;
        let file = writer
            .into_inner()
            .map_err(|e| write(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| write(&tmp, e))?;
        std::fs::rename(&tmp, out).map_err(|e| write(out, e))?;
        Ok(entries)
    })
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
