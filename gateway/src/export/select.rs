//! Choosing what goes into a pack, and assembling it (everything but the signature).
//!
//! Selection: a log range `[from, to)` (default: everything under the latest checkpoint),
//! narrowed by a time window (`since`/`until`: the smallest contiguous range holding every
//! receipt issued in the window) and optionally filtered by agent and tool. Only entries under
//! the latest checkpoint can be proven, so `to` may not go beyond it. Without agent and tool
//! filters the pack is *complete*: every index of the range is in it, and the single
//! multi-leaf inclusion proof lets the auditor prove that nothing was left out.
//!
//! Checkpoints: the first one covering the range, then the anchor (the latest), linked by a
//! consistency proof — two notes whatever the length of the history — plus, for batched
//! receipts, the checkpoint of each of their batches (signed by the receipt key that stood
//! behind the batch), each linked to the next by a consistency proof; and a consistency
//! proof from `since_size` when the requester holds an older checkpoint.

use super::source::{LogReadError, LogSource};
use super::{ExportError, PackRequest};
use crate::evidence::now_rfc3339;
use lap_pack::{ConsistencyProof, InclusionProof, Manifest, Members, Proofs, Selection};
use lap_tlog::note::Checkpoint;
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A pack ready to be signed.
pub struct Prepared {
    pub(super) manifest_json: Vec<u8>,
    pub(super) members: Members,
    pub entries: u64,
}

/// Resolves the request against the log and assembles everything but the signature.
/// `max_entries` caps what one pack may hold (the admin plane's limit).
pub fn prepare(
    src: &impl LogSource,
    origin: &str,
    trust_json: &[u8],
    req: &PackRequest,
    max_entries: Option<u64>,
) -> Result<Prepared, ExportError> {
    let window = Window::of(req)?;
    let checkpoints = checkpoints_by_size(src.checkpoints()?, origin);
    let (&tree_size, _) = checkpoints
        .last_key_value()
        .ok_or(ExportError::NoCheckpoint)?;
    let (from, to) = requested_range(req, tree_size)?;
    let filtered = req.agent.is_some() || req.tool.is_some();
    let (from, to, indices) = if window.is_open() && !filtered {
        // Checked before the index list is built: it would be as long as the range.
        cap(to - from, max_entries)?;
        (from, to, (from..to).collect())
    } else {
        select(src, req, &window, from, to)?
    };
    if indices.is_empty() {
        return Err(ExportError::Empty);
    }
    let count = indices.len() as u64;
    cap(count, max_entries)?;

    let mut entries_txt = Vec::with_capacity(indices.len() * 1024);
    let mut batched = Vec::new();
    for &index in &indices {
        let entry = src.entry(index)?;
        if lap_receipt::is_batched_entry(&entry) {
            batched.push(index);
        }
        lap_pack::push_entry_line(&mut entries_txt, index, &entry)
            .map_err(|source| LogReadError::Entry { index, source })?;
    }
    let chosen = covering_checkpoints(&checkpoints, to, tree_size, &batched);
    let mut steps: Vec<(u64, u64)> = chosen.windows(2).map(|w| (w[0].0, w[1].0)).collect();
    if let Some(m) = req.since_size {
        steps.push((m, tree_size));
    }
    let proofs = proofs(src, &indices, tree_size, &steps)?;
    let mut members = vec![(lap_pack::TRUST.to_string(), trust_json.to_vec())];
    for (n, (_, text)) in chosen.iter().enumerate() {
        members.push((lap_pack::checkpoint_name(n), text.as_bytes().to_vec()));
    }
    members.push((lap_pack::ENTRIES.to_string(), entries_txt));
    members.push((
        lap_pack::PROOFS.to_string(),
        serde_json::to_vec_pretty(&proofs).map_err(ExportError::Encode)?,
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
        manifest_json: serde_json::to_vec_pretty(&manifest).map_err(ExportError::Encode)?,
        members,
        entries: count,
    })
}

/// The requested time window; open on both ends when none was asked for.
struct Window {
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
}

impl Window {
    fn of(req: &PackRequest) -> Result<Self, ExportError> {
        let parse = |what: &str, v: &Option<String>| {
            v.as_deref()
                .map(|v| {
                    OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
                        ExportError::BadQuery(format!("{what} {v:?} is not an RFC 3339 time"))
                    })
                })
                .transpose()
        };
        Ok(Self {
            since: parse("since", &req.since)?,
            until: parse("until", &req.until)?,
        })
    }

    fn is_open(&self) -> bool {
        self.since.is_none() && self.until.is_none()
    }

    fn contains(&self, t: OffsetDateTime) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }
}

/// `[from, to)` as requested, checked against the latest checkpoint's tree size.
fn requested_range(req: &PackRequest, tree_size: u64) -> Result<(u64, u64), ExportError> {
    let from = req.from.unwrap_or(0);
    let to = req.to.unwrap_or(tree_size);
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
    if let Some(m) = req.since_size.filter(|&m| m > tree_size) {
        return Err(ExportError::BadRange(format!(
            "since_size={m} is beyond the latest checkpoint (tree size {tree_size})"
        )));
    }
    Ok((from, to))
}

fn cap(count: u64, max_entries: Option<u64>) -> Result<(), ExportError> {
    match max_entries {
        Some(max) if count > max => Err(ExportError::TooLarge { count, max }),
        _ => Ok(()),
    }
}

/// One pass over `[from, to)`: narrows the range to the time window and keeps the indices
/// that pass the agent and tool filters. Only indices are kept, so the size cap applies
/// before any entry is held; the selected entries are read again when the pack is assembled.
fn select(
    src: &impl LogSource,
    req: &PackRequest,
    window: &Window,
    from: u64,
    to: u64,
) -> Result<(u64, u64, Vec<u64>), ExportError> {
    let (mut first, mut last) = (None, None);
    let mut passing = Vec::new();
    for index in from..to {
        let entry = src.entry(index)?;
        let r = lap_receipt::open_entry(&entry)
            .map_err(|source| LogReadError::NotAReceipt { index, source })?
            .into_receipt();
        let t = OffsetDateTime::parse(&r.issued_at, &Rfc3339)
            .map_err(|_| LogReadError::BadTime { index })?;
        if window.contains(t) {
            first.get_or_insert(index);
            last = Some(index);
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
            passing.push(index);
        }
    }
    let (from, to) = if window.is_open() {
        (from, to)
    } else {
        match (first, last) {
            (Some(f), Some(l)) => (f, l + 1),
            _ => return Err(ExportError::Empty),
        }
    };
    passing.retain(|i| (from..to).contains(i));
    Ok((from, to, passing))
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

/// The first checkpoint covering `to`, the anchor (at `tree_size`), and for each batched
/// entry (`batched`, increasing) the first checkpoint covering it — its batch's, which carries
/// the receipt key's signature — in increasing size, each once.
fn covering_checkpoints<'a>(
    checkpoints: &'a BTreeMap<u64, String>,
    to: u64,
    tree_size: u64,
    batched: &[u64],
) -> Vec<(u64, &'a String)> {
    let mut chosen: BTreeMap<u64, &String> = BTreeMap::new();
    let mut first_covering = |index_end: u64| {
        if let Some((s, n)) = checkpoints.range(index_end..).next() {
            chosen.insert(*s, n);
        }
    };
    first_covering(to);
    first_covering(tree_size);
    let mut covered_below = 0;
    for &index in batched {
        if index < covered_below {
            continue; // same batch as the previous one
        }
        if let Some((s, n)) = checkpoints.range(index + 1..).next() {
            chosen.insert(*s, n);
            covered_below = *s;
        }
    }
    chosen.into_iter().collect()
}

/// The multi-leaf inclusion proof of `indices` and the consistency proofs of `steps`.
fn proofs(
    src: &impl LogSource,
    indices: &[u64],
    tree_size: u64,
    steps: &[(u64, u64)],
) -> Result<Proofs, LogReadError> {
    let (inclusion, consistency) = src.proofs(indices, tree_size, steps)?;
    Ok(Proofs {
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
    })
}
