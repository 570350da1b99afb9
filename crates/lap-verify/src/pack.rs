//! Verification of an audit pack (format: `lap-pack`, specified in `docs/auditing.md`).
//!
//! Every check runs even after a failure, so one pass reports everything wrong with a pack;
//! each failure has a stable code and names the member, log index or line concerned.

use crate::{Finding, InputError, Report, TrustFile};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use lap_pack::{Manifest, ManifestSignature, Proofs};
use lap_tlog::merkle::{leaf_hash, verify_consistency, verify_multi, Hash};
use lap_tlog::note::Checkpoint;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;

/// What the auditor brings besides the pack.
#[derive(Default)]
pub struct PackOptions<'a> {
    /// Keys the auditor trusts; without them the pack's own `trust.json` is used (and a note
    /// says so: a pack can then only prove it is self-consistent).
    pub trusted_keys: Option<&'a TrustFile>,
    /// A checkpoint note the auditor already trusts: the pack's log must extend it.
    pub pinned_checkpoint: Option<&'a str>,
    /// Threads for signature checks (0 = all CPUs).
    pub threads: usize,
    /// The pack's length in bytes, when known (a file): each member is then read into one
    /// buffer of its size.
    pub input_len: Option<u64>,
}

/// Verifies a pack read from `input`. `Err` only when the input cannot be read at all (an I/O
/// error, a directory); anything wrong with the pack's contents is a failure in the report.
pub fn verify_pack(input: impl Read, opts: &PackOptions) -> Result<Report, InputError> {
    let mut report = Report::default();
    let members = match lap_pack::read_tar_sized(input, opts.input_len) {
        Ok(m) => m,
        Err(lap_pack::PackError::Unreadable(e)) => return Err(InputError::Unreadable(e)),
        Err(e) => {
            report.fail("ARCHIVE_CORRUPT", None, e.to_string());
            return Ok(report);
        }
    };
    let mut by_name: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for (name, bytes) in &members {
        if by_name.insert(name, bytes).is_some() {
            report.fail(
                "PACK_MALFORMED",
                None,
                format!("member {name:?} appears twice"),
            );
        }
    }
    let Some(manifest_json) = by_name.get(lap_pack::MANIFEST).copied() else {
        report.fail("MEMBER_MISSING", None, "no manifest.json");
        return Ok(report);
    };
    let manifest: Manifest = match serde_json::from_slice(manifest_json) {
        Ok(m) => m,
        Err(e) => {
            report.fail("PACK_MALFORMED", None, format!("manifest.json: {e}"));
            return Ok(report);
        }
    };
    if manifest.format != lap_pack::FORMAT {
        report.fail(
            "PACK_MALFORMED",
            None,
            format!("unsupported format {:?}", manifest.format),
        );
        return Ok(report);
    }
    report.checkpoint_size = Some(manifest.tree_size);
    let sel = &manifest.selection;
    if sel.from >= sel.to || sel.to > manifest.tree_size {
        report.fail(
            "PACK_MALFORMED",
            None,
            format!(
                "the selected range [{}, {}) is empty or beyond the tree size {}",
                sel.from, sel.to, manifest.tree_size
            ),
        );
    }

    // Trust: the auditor's pinned keys, or (noted) the pack's own.
    let packed_trust = by_name
        .get(lap_pack::TRUST)
        .map(|b| TrustFile::parse(&String::from_utf8_lossy(b)));
    let trust = match (opts.trusted_keys, &packed_trust) {
        (Some(pinned), packed) => {
            match packed {
                Some(Ok(p)) => compare_trust(pinned, p, &mut report),
                Some(Err(e)) => {
                    report.fail("TRUST_FILE_MISMATCH", None, format!("trust.json: {e}"))
                }
                None => report.fail("MEMBER_MISSING", None, "no trust.json"),
            }
            pinned.clone()
        }
        (None, Some(Ok(p))) => {
            report.note(
                "TRUST_FROM_PACK",
                None,
                "keys taken from the pack's own trust.json: pin them with --trusted-keys to prove origin",
            );
            p.clone()
        }
        (None, Some(Err(e))) => {
            report.fail("PACK_MALFORMED", None, format!("trust.json: {e}"));
            return Ok(report);
        }
        (None, None) => {
            report.fail("MEMBER_MISSING", None, "no trust.json");
            return Ok(report);
        }
    };
    if manifest.origin != trust.log_origin {
        report.fail(
            "ORIGIN_MISMATCH",
            None,
            format!(
                "the pack is for log {:?}, the trusted log is {:?}",
                manifest.origin, trust.log_origin
            ),
        );
    }

    check_manifest_signature(&by_name, manifest_json, &trust, &mut report);
    // The members' digests (a pass over every byte of the pack) are computed on a thread of
    // their own while the rest is checked; their findings are reported in this place.
    let listed_at = report.failures.len();
    let listed = std::thread::scope(|s| {
        let listed = s.spawn(|| check_listed_files(&manifest, &members));
        check_contents(&by_name, &members, &manifest, &trust, opts, &mut report);
        listed.join().unwrap_or_else(|_| vec![crate::panicked()])
    });
    report.failures.splice(listed_at..listed_at, listed);
    Ok(report)
}

/// Everything after the manifest and its members: checkpoints, entries, proofs.
fn check_contents(
    by_name: &BTreeMap<&str, &[u8]>,
    members: &[(String, Vec<u8>)],
    manifest: &Manifest,
    trust: &TrustFile,
    opts: &PackOptions,
    report: &mut Report,
) {
    let proofs: Option<Proofs> = match by_name.get(lap_pack::PROOFS) {
        Some(b) => match serde_json::from_slice(b) {
            Ok(p) => Some(p),
            Err(e) => {
                report.fail("PACK_MALFORMED", None, format!("proofs.json: {e}"));
                None
            }
        },
        None => None, // already reported by check_listed_files
    };
    let checkpoints = check_checkpoints(members, manifest, proofs.as_ref(), trust, opts, report);
    let (anchor, covering) = match checkpoints {
        Some((anchor, covering)) => (Some(anchor), covering),
        None => (None, BTreeMap::new()),
    };

    let Some(entries_txt) = by_name.get(lap_pack::ENTRIES).copied() else {
        return;
    };
    let leaves = check_entries(
        entries_txt,
        manifest,
        trust,
        &covering,
        opts.threads,
        report,
    );
    report.entries = leaves.len() as u64;

    // Inclusion: every entry, at its index, is a leaf of the anchor's tree.
    if let (Some(anchor), Some(proofs)) = (anchor, proofs.as_ref()) {
        let mut sorted = leaves;
        sorted.sort_by_key(|l| l.0);
        sorted.dedup_by_key(|l| l.0);
        let fits = proofs.inclusion.tree_size == anchor.size;
        let root = lap_pack::decode_hashes(&proofs.inclusion.hashes)
            .filter(|_| fits)
            .and_then(|p| verify_multi(anchor.size, &sorted, &p));
        match root {
            Some(r) if r == anchor.root => {}
            Some(_) => report.fail(
                "INCLUSION_PROOF_FAILED",
                None,
                format!(
                    "the entries and proof give a root other than the checkpoint's (tree size {})",
                    anchor.size
                ),
            ),
            None if sorted.is_empty() => {}
            None => report.fail(
                "INCLUSION_PROOF_FAILED",
                None,
                "the inclusion proof does not fit the entries and the tree size",
            ),
        }
    }
}

/// The pinned trust file must agree with the pack's on every key both name, and on the log.
fn compare_trust(pinned: &TrustFile, packed: &TrustFile, report: &mut Report) {
    if pinned.log_verifier.to_vkey() != packed.log_verifier.to_vkey() {
        report.fail(
            "TRUST_FILE_MISMATCH",
            None,
            "trust.json names another log key than the pinned trust file",
        );
    }
    for (kid, k) in &packed.keys {
        if let Some(p) = pinned.keys.get(kid) {
            if p.public_key != k.public_key {
                report.fail(
                    "TRUST_FILE_MISMATCH",
                    None,
                    format!("trust.json gives key {kid:?} other key material than the pinned trust file"),
                );
            }
        }
    }
}

fn check_manifest_signature(
    by_name: &BTreeMap<&str, &[u8]>,
    manifest_json: &[u8],
    trust: &TrustFile,
    report: &mut Report,
) {
    let Some(sig_bytes) = by_name.get(lap_pack::MANIFEST_SIG) else {
        report.fail("MANIFEST_SIGNATURE", None, "no manifest.sig");
        return;
    };
    let sig: ManifestSignature = match serde_json::from_slice(sig_bytes) {
        Ok(s) => s,
        Err(e) => {
            report.fail("MANIFEST_SIGNATURE", None, format!("manifest.sig: {e}"));
            return;
        }
    };
    let signature = B64
        .decode(&sig.sig)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok());
    let valid = sig.payload_type == lap_pack::MANIFEST_PAYLOAD_TYPE
        && sig.key == trust.log_verifier.to_vkey()
        && signature.is_some_and(|s| {
            lap_receipt::dsse::verify_raw(
                &trust.log_verifier.key,
                &lap_pack::signing_message(manifest_json),
                &s,
            )
        });
    if !valid {
        report.fail(
            "MANIFEST_SIGNATURE",
            None,
            "manifest.json is not signed by the trusted log key",
        );
    }
}

fn check_listed_files(manifest: &Manifest, members: &[(String, Vec<u8>)]) -> Vec<Finding> {
    let mut report = Report::default();
    let listed: BTreeMap<&str, &lap_pack::FileDigest> = manifest
        .files
        .iter()
        .map(|f| (f.name.as_str(), f))
        .collect();
    // The first member of each name (a repeated name is reported with the members).
    let mut present: HashMap<&str, &[u8]> = HashMap::with_capacity(members.len());
    for (name, bytes) in members {
        present.entry(name.as_str()).or_insert(bytes.as_slice());
    }
    for f in &manifest.files {
        match present.get(f.name.as_str()) {
            None => report.fail(
                "MEMBER_MISSING",
                None,
                format!("{} is listed but absent", f.name),
            ),
            Some(bytes) => {
                if bytes.len() as u64 != f.size || lap_pack::sha256_hex(bytes) != f.sha256 {
                    report.fail(
                        "MANIFEST_HASH_MISMATCH",
                        None,
                        format!("{} does not match its manifest digest", f.name),
                    );
                }
            }
        }
    }
    for required in [lap_pack::TRUST, lap_pack::ENTRIES, lap_pack::PROOFS] {
        if !listed.contains_key(required) {
            report.fail(
                "MEMBER_MISSING",
                None,
                format!("the manifest does not list {required}"),
            );
        }
    }
    for (name, _) in members {
        if !lap_pack::is_member_name(name) {
            report.fail(
                "PACK_MALFORMED",
                None,
                format!("{name} is not a member of the pack format"),
            );
        }
        let is_manifest = name == lap_pack::MANIFEST || name == lap_pack::MANIFEST_SIG;
        if !is_manifest && !listed.contains_key(name.as_str()) {
            report.fail(
                "MEMBER_UNLISTED",
                None,
                format!("{name} is not in the manifest"),
            );
        }
    }
    report.failures
}

/// Checkpoints signed by the log key, by tree size (note text), for the batch signatures.
type Covering = BTreeMap<u64, String>;

/// Checks the checkpoints and the consistency proofs between them (and from the pinned one);
/// returns the anchor (the last checkpoint) when it is usable, and every checkpoint signed by
/// the log key by size.
fn check_checkpoints(
    members: &[(String, Vec<u8>)],
    manifest: &Manifest,
    proofs: Option<&Proofs>,
    trust: &TrustFile,
    opts: &PackOptions,
    report: &mut Report,
) -> Option<(Checkpoint, Covering)> {
    let open = |text: &str, what: &str, report: &mut Report| {
        crate::open_checkpoint(trust, text, what, report)
    };
    let mut cps: Vec<(String, Checkpoint)> = Vec::new();
    let mut covering = Covering::new();
    let mut all_usable = true;
    // A batched pack holds a checkpoint per batch: their signatures are checked on all CPUs,
    // the verdicts reported in member order.
    let notes: Vec<(&String, String)> = members
        .iter()
        .filter(|(n, _)| lap_pack::is_checkpoint_name(n))
        .map(|(n, bytes)| (n, String::from_utf8_lossy(bytes).into_owned()))
        .collect();
    let opened = crate::in_chunks(&notes, opts.threads, |_, part| {
        part.iter()
            .map(|(_, text)| crate::checkpoint_of(trust, text))
            .collect::<Vec<_>>()
    });
    let mut notes = notes.into_iter();
    for part in opened {
        let part = match part {
            Ok(p) => p,
            Err(f) => {
                report.failures.push(f);
                all_usable = false;
                // Its notes are unchecked: the ones after would be paired with the wrong verdicts.
                break;
            }
        };
        // `part` first: zip stops on it without taking one more from `notes`.
        for (verdict, (name, text)) in part.into_iter().zip(notes.by_ref()) {
            match verdict {
                Ok(cp) => {
                    covering.entry(cp.size).or_insert(text);
                    cps.push((name.clone(), cp));
                }
                Err(why) => {
                    report.fail(why.code, None, format!("{name}{}", why.detail));
                    all_usable = false;
                }
            }
        }
    }
    cps.sort_by(|a, b| a.0.cmp(&b.0));
    let Some((_, anchor)) = cps.last().cloned() else {
        if all_usable {
            report.fail("NO_CHECKPOINT", None, "the pack holds no checkpoint");
        }
        return None;
    };
    if anchor.size != manifest.tree_size {
        report.fail(
            "PACK_MALFORMED",
            None,
            format!(
                "the last checkpoint has size {}, the manifest says {}",
                anchor.size, manifest.tree_size
            ),
        );
    }
    // The first proof of each step (one per pair of consecutive checkpoints).
    let mut steps: HashMap<(u64, u64), &lap_pack::ConsistencyProof> = HashMap::new();
    for c in proofs.iter().flat_map(|p| &p.consistency) {
        steps.entry((c.old, c.new)).or_insert(c);
    }
    let consistency = |old: u64, new: u64| -> Option<Vec<Hash>> {
        steps
            .get(&(old, new))
            .and_then(|c| lap_pack::decode_hashes(&c.hashes))
    };
    let check_step = |a: &Checkpoint, b: &Checkpoint, what: &str, report: &mut Report| {
        let ok = if a.size == b.size {
            a.root == b.root
        } else {
            a.size < b.size
                && consistency(a.size, b.size)
                    .is_some_and(|p| verify_consistency(a.size, b.size, &a.root, &b.root, &p))
        };
        if !ok {
            report.fail(
                "FORK_DETECTED",
                None,
                format!(
                    "{what}: the tree of size {} is not a prefix of the tree of size {}",
                    a.size, b.size
                ),
            );
        }
    };
    for w in cps.windows(2) {
        check_step(
            &w[0].1,
            &w[1].1,
            &format!("{} → {}", w[0].0, w[1].0),
            report,
        );
    }
    if let Some(text) = opts.pinned_checkpoint {
        if let Some(pinned) = open(text, "pinned checkpoint", report) {
            if let Some((_, same)) = cps.iter().find(|(_, c)| c.size == pinned.size) {
                check_step(&pinned, same, "pinned checkpoint", report);
            } else if pinned.size < anchor.size && consistency(pinned.size, anchor.size).is_some() {
                check_step(&pinned, &anchor, "pinned checkpoint", report);
            } else {
                report.fail(
                    "PINNED_NOT_PROVEN",
                    None,
                    format!(
                        "the pack has no proof that its log (size {}) extends the pinned checkpoint (size {}); export with since_size={}",
                        anchor.size, pinned.size, pinned.size
                    ),
                );
            }
        }
    }
    Some((anchor, covering))
}

/// Checks `entries.txt`: order, completeness, each receipt; returns (index, leaf hash) per
/// parsed line, in file order.
fn check_entries(
    text: &[u8],
    manifest: &Manifest,
    trust: &TrustFile,
    covering: &Covering,
    threads: usize,
    report: &mut Report,
) -> Vec<(u64, Hash)> {
    let mut lines: Vec<(u64, &[u8])> = Vec::new();
    for (line_no, parsed) in lap_pack::entry_lines(text) {
        match parsed {
            Ok(l) => lines.push(l),
            Err(why) => report.fail(
                "PACK_MALFORMED",
                None,
                format!("entries.txt line {line_no}: {why}"),
            ),
        }
    }
    let sel = &manifest.selection;
    let mut previous: Option<u64> = None;
    for &(index, _) in &lines {
        if previous.is_some_and(|p| index <= p) {
            report.fail(
                "ENTRIES_REORDERED",
                Some(index),
                format!(
                    "index {index} follows index {} (entries must be in increasing order)",
                    previous.unwrap_or_default()
                ),
            );
        }
        previous = Some(previous.map_or(index, |p| p.max(index)));
        if !(sel.from..sel.to).contains(&index) {
            report.fail(
                "ENTRY_OUTSIDE_RANGE",
                Some(index),
                format!("not in the selected range [{}, {})", sel.from, sel.to),
            );
        }
    }
    if sel.complete {
        // The range comes from the (untrusted) manifest: walk the gaps between the entries
        // present, never the range itself.
        let range = sel.from..sel.to;
        let mut present: Vec<u64> = lines
            .iter()
            .map(|l| l.0)
            .filter(|i| range.contains(i))
            .collect();
        present.sort_unstable();
        present.dedup();
        let missing = range.end.saturating_sub(range.start) - present.len() as u64;
        let mut shown = 0u64;
        let mut next = range.start;
        for end in present.iter().copied().chain([range.end]) {
            while next < end && shown < 100 {
                report.fail(
                    "ENTRY_MISSING",
                    Some(next),
                    "the range is complete but this index is absent",
                );
                shown += 1;
                next += 1;
            }
            next = end.saturating_add(1);
        }
        if missing > shown {
            let rest = missing - shown;
            report.fail(
                "ENTRY_MISSING",
                None,
                format!("{rest} more missing indices"),
            );
        }
    }
    if lines.len() as u64 != manifest.entries {
        report.fail(
            "ENTRY_COUNT_MISMATCH",
            None,
            format!(
                "the manifest lists {} entries, entries.txt holds {}",
                manifest.entries,
                lines.len()
            ),
        );
    }

    // Signatures and receipt contents, in parallel chunks.
    let ids = trust.ids();
    let results = crate::in_chunks(&lines, threads, |_, part| {
        check_receipts(part, manifest, trust, &ids, covering)
    });
    let mut leaves = Vec::with_capacity(lines.len());
    for part in results {
        match part {
            Ok((l, findings)) => {
                leaves.extend(l);
                report.failures.extend(findings);
            }
            Err(f) => report.failures.push(f),
        }
    }
    leaves
}

/// Leaf hashes (index, hash) and failures of one chunk of entries.
type Checked = (Vec<(u64, Hash)>, Vec<Finding>);

/// Signatures per batch: large enough to amortise, small enough that a bad signature costs
/// little to locate (the batch is then re-checked one by one).
const BATCH: usize = 64;

/// Whether `r` passes the pack's agent/tool filter.
fn off_filter(manifest: &Manifest, r: &lap_receipt::Receipt) -> bool {
    let sel = &manifest.selection;
    let agent = r.principal.as_ref().map(|p| p.agent_id.as_str());
    sel.agent.as_deref().is_some_and(|a| agent != Some(a))
        || sel
            .tool
            .as_deref()
            .is_some_and(|t| r.call.tool.as_deref() != Some(t))
}

fn check_receipts(
    part: &[(u64, &[u8])],
    manifest: &Manifest,
    trust: &TrustFile,
    ids: &lap_receipt::ReceiptIds,
    covering: &Covering,
) -> Checked {
    let mut leaves = Vec::with_capacity(part.len());
    let mut findings = Vec::new();
    let mut opened = Vec::with_capacity(BATCH);
    let mut batches = crate::BatchSignatures::new(trust);
    let filter_mismatch = |index| {
        let detail = "the receipt does not match the pack's agent/tool filter";
        Finding::new("FILTER_MISMATCH", Some(index), detail)
    };
    for batch in part.chunks(BATCH) {
        opened.clear();
        for &(index, entry) in batch {
            leaves.push((index, leaf_hash(entry)));
            match crate::open_entry(trust, entry, Some(index)) {
                Ok(crate::OpenedEntry::Envelope(o)) => opened.push((index, o)),
                Ok(crate::OpenedEntry::Leaf(r)) => {
                    // Authentic by inclusion (checked against the anchor with every entry);
                    // the first checkpoint covering it is its batch's, which the receipt key
                    // it names must have signed.
                    let at = Some(index);
                    let signed =
                        crate::check_claimed_key(trust, &r, at).and_then(|_| {
                            match covering.range(index + 1..).next() {
                                Some((_, note)) => batches.check(note, &r, index),
                                None => Err(Finding::new(
                                    "BATCH_SIGNATURE",
                                    at,
                                    "no checkpoint in the pack covers this batched receipt",
                                )),
                            }
                        });
                    findings.extend(signed.err());
                    findings.extend(crate::check_position(trust, ids, &r, index).err());
                    if off_filter(manifest, &r) {
                        findings.push(filter_mismatch(index));
                    }
                }
                Err(f) => findings.push(f),
            }
        }
        // One batch equation for all; only if it fails, find the culprits one by one with
        // strict verification.
        let messages: Vec<&[u8]> = opened.iter().map(|(_, o)| o.message.as_slice()).collect();
        let signatures: Vec<_> = opened.iter().map(|(_, o)| o.signature).collect();
        let keys: Vec<_> = opened.iter().map(|(_, o)| o.key.public_key).collect();
        let all_valid = ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok();
        for &(index, ref o) in &opened {
            let at = Some(index);
            let bad_signature = !all_valid
                && o.key
                    .public_key
                    .verify_strict(&o.message, &o.signature)
                    .is_err();
            if bad_signature {
                let detail = format!("signature by {:?} does not verify", o.key.key_id);
                findings.push(Finding::new("BAD_SIGNATURE", at, detail));
                continue;
            }
            // Only a genuinely signed receipt's contents are worth checking further.
            let r = &o.receipt;
            let checked = crate::check_signed_receipt(o, at)
                .and_then(|()| crate::check_position(trust, ids, r, index));
            if let Err(f) = checked {
                findings.push(f);
            }
            if off_filter(manifest, r) {
                findings.push(filter_mismatch(index));
            }
        }
    }
    (leaves, findings)
}
