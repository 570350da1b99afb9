//! Audit packs under attack: real packs, exported by real running gateways, are unpacked,
//! mutated the way an attacker (or a damaged disk) would, packed again and handed to the real
//! `lap-verify pack` binary. Every mutation must be refused with its specific failure code;
//! the unmutated pack must pass. The verifier must never crash: exit status 0 or 1 and a JSON
//! report on stdout, whatever the input.
//!
//! An attacker cannot re-sign `manifest.json` (that takes the log key), so a mutated member
//! also shows `MANIFEST_HASH_MISMATCH`; where it makes sense each case is also run in the
//! "resealed" variant, where the attacker rewrites the manifest's digests (and entry count) to
//! match: then `MANIFEST_SIGNATURE` must be reported instead, and still the specific code.

use ed25519_dalek::{Signer as _, SigningKey};
use lap_e2e::audit::*;
use lap_e2e::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const MANIFEST: &str = "manifest.json";
const TRUST: &str = "trust.json";
const ENTRIES: &str = "entries.txt";

// ---------------------------------------------------------------------------------------------
// Packs, unpacked and packed again

type Members = Vec<(String, Vec<u8>)>;

/// Reads every member the way `lap-pack` does (regular files only, complete data); `Err` if
/// the tar crate refuses the archive.
fn read_members(bytes: &[u8]) -> Result<(Members, u64), String> {
    let mut archive = tar::Archive::new(bytes);
    let mut members = Vec::new();
    let mut mtime = 0;
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err("not a regular file".into());
        }
        let name = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| "member name is not UTF-8".to_string())?;
        mtime = entry.header().mtime().map_err(|e| e.to_string())?;
        let size = entry.size();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(|e| e.to_string())?;
        if data.len() as u64 != size {
            return Err(format!("{name} truncated"));
        }
        members.push((name, data));
    }
    Ok((members, mtime))
}

/// An unpacked pack: its members in archive order.
#[derive(Clone, Debug, PartialEq)]
struct Pack {
    members: Members,
    mtime: u64,
}

impl Pack {
    fn parse(bytes: &[u8]) -> Pack {
        let (members, mtime) = read_members(bytes).expect("a readable pack");
        Pack { members, mtime }
    }

    /// The archive again, members in the same order, headers as the exporter writes them.
    fn to_tar(&self) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, bytes) in &self.members {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(self.mtime);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, name, &bytes[..]).unwrap();
        }
        tar.into_inner().unwrap()
    }

    fn get(&self, name: &str) -> &[u8] {
        self.try_get(name)
            .unwrap_or_else(|| panic!("no {name} in the pack"))
    }

    fn try_get(&self, name: &str) -> Option<&[u8]> {
        self.members
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }

    fn with(&self, name: &str, bytes: Vec<u8>) -> Pack {
        let mut p = self.clone();
        let slot = p
            .members
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} in the pack"));
        slot.1 = bytes;
        p
    }

    /// `entries.txt` lines, without their `\n`.
    fn lines(&self) -> Vec<Vec<u8>> {
        let text = self.get(ENTRIES);
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
    }

    fn with_lines(&self, lines: &[Vec<u8>]) -> Pack {
        let mut text = Vec::new();
        for l in lines {
            text.extend_from_slice(l);
            text.push(b'\n');
        }
        self.with(ENTRIES, text)
    }

    fn manifest(&self) -> Value {
        serde_json::from_slice(self.get(MANIFEST)).unwrap()
    }

    /// The attacker's best effort: the manifest's digests and entry count rewritten to match the
    /// members (the signature cannot be redone without the log key).
    fn resealed(&self) -> Pack {
        let mut m = self.manifest();
        for f in m["files"].as_array_mut().unwrap() {
            let name = f["name"].as_str().unwrap().to_string();
            if let Some(bytes) = self.try_get(&name) {
                f["size"] = bytes.len().into();
                f["sha256"] = sha256_hex(bytes).into();
            }
        }
        m["entries"] = self.lines().len().into();
        self.with(MANIFEST, serde_json::to_vec_pretty(&m).unwrap())
    }

    /// `(member name, tree size)` of every checkpoint member.
    fn checkpoints(&self) -> Vec<(String, u64)> {
        self.members
            .iter()
            .filter(|(n, _)| n.starts_with("checkpoints/"))
            .map(|(n, b)| (n.clone(), note_size(b).expect("a checkpoint note")))
            .collect()
    }
}

fn line_index(line: &[u8]) -> u64 {
    let sp = line.iter().position(|&b| b == b' ').unwrap();
    std::str::from_utf8(&line[..sp]).unwrap().parse().unwrap()
}

fn line_envelope(line: &[u8]) -> &[u8] {
    let sp = line.iter().position(|&b| b == b' ').unwrap();
    &line[sp + 1..]
}

fn make_line(index: u64, envelope: &[u8]) -> Vec<u8> {
    let mut l = format!("{index} ").into_bytes();
    l.extend_from_slice(envelope);
    l
}

/// The receipt of an `entries.txt` line, of either kind (envelope or batched entry).
fn receipt_of(line: &[u8]) -> lap_receipt::Receipt {
    lap_receipt::open_entry(line_envelope(line))
        .expect("a receipt")
        .into_receipt()
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The envelope with one character of its base64 `payload` swapped for its neighbour in the
/// alphabet (A<->B, C<->D, …): still valid base64, one bit of the signed payload changed. The
/// envelope bytes are edited in place; decoding is only used to pick a position where the
/// altered payload still parses as a receipt (so the verifier gets as far as the signature).
fn altered_payload(envelope: &[u8]) -> Vec<u8> {
    let key = b"\"payload\":\"";
    let start = envelope
        .windows(key.len())
        .position(|w| w == key)
        .expect("a payload member")
        + key.len();
    let end = start + envelope[start..].iter().position(|&b| b == b'"').unwrap();
    // Away from the end: the last characters carry padding bits.
    for pos in (start + (end - start) / 2)..end - 4 {
        let Some(v) = B64.iter().position(|&c| c == envelope[pos]) else {
            continue;
        };
        let mut m = envelope.to_vec();
        m[pos] = B64[v ^ 1];
        if lap_receipt::open(&m).is_ok() {
            return m;
        }
    }
    panic!("no position where a flipped payload bit keeps a parseable receipt");
}

/// A copy of the line's receipt, altered, placed at `index` and signed by `key` under `keyid`:
/// a valid signature, by a key the auditor does not trust.
fn forged(line: &[u8], index: u64, key: &SigningKey, keyid: &str) -> Vec<u8> {
    let mut r = receipt_of(line);
    r.call.path = format!("{}/forged", r.call.path);
    r.log.index = index;
    r.signer.key_id = keyid.into();
    let sig = key.sign(&r.envelope().pae()).to_bytes();
    let env = r.signed(keyid, sig);
    env.verify(keyid, &key.verifying_key())
        .expect("the forged receipt carries a valid signature");
    make_line(index, env.to_json().as_bytes())
}

// ---------------------------------------------------------------------------------------------
// The verifier

static SCRATCH: AtomicUsize = AtomicUsize::new(0);

/// Runs `lap-verify pack FILE --threads 1 ARGS` on these bytes (see [`verify_pack`]: whatever
/// the input, exit 0 or 1 and a JSON report that agrees).
fn verify(dir: &Path, pack: &[u8], args: &[&OsStr]) -> Verdict {
    let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
    let file = save(dir, &format!("pack-{n}.tar"), pack);
    let mut all: Vec<&OsStr> = vec![OsStr::new("--threads"), OsStr::new("1")];
    all.extend_from_slice(args);
    let verdict = verify_pack(&file, &all);
    let _ = std::fs::remove_file(&file);
    verdict
}

#[track_caller]
fn expect_pass(v: &Verdict, case: &str) {
    assert!(v.ok, "{case}: must pass, got {}", v.summary());
}

/// Fails, with every code of `want` and none of `absent`.
#[track_caller]
fn expect_fail(v: &Verdict, case: &str, want: &[&str], absent: &[&str]) {
    assert!(!v.ok, "{case}: must fail, but the pack passed");
    for code in want {
        assert!(v.has(code), "{case}: expected {code}; got {}", v.summary());
    }
    for code in absent {
        assert!(
            !v.has(code),
            "{case}: unexpected {code}; got {}",
            v.summary()
        );
    }
}

/// A mutated pack: plain (the members changed, the signed manifest kept: the specific codes
/// plus `MANIFEST_HASH_MISMATCH`) and resealed (the manifest rewritten to match: the specific
/// codes plus `MANIFEST_SIGNATURE`, and no hash mismatch).
#[track_caller]
fn expect_mutation_caught(
    dir: &Path,
    case: &str,
    pack: &Pack,
    args: &[&OsStr],
    want: &[&str],
) -> Verdict {
    let plain = verify(dir, &pack.to_tar(), args);
    let mut all = want.to_vec();
    all.push("MANIFEST_HASH_MISMATCH");
    expect_fail(&plain, case, &all, &[]);
    let v = verify(dir, &pack.resealed().to_tar(), args);
    let mut all = want.to_vec();
    all.push("MANIFEST_SIGNATURE");
    expect_fail(
        &v,
        &format!("{case} (manifest resealed)"),
        &all,
        &["MANIFEST_HASH_MISMATCH"],
    );
    plain
}

/// The baseline: the exported pack passes, and so does the same pack unpacked and packed again
/// (which is byte-identical: the re-packing used by every case changes nothing by itself).
#[track_caller]
fn expect_baseline(dir: &Path, what: &str, bytes: &[u8], args: &[&OsStr]) -> Pack {
    expect_pass(&verify(dir, bytes, args), what);
    let pack = Pack::parse(bytes);
    assert!(
        pack.to_tar() == bytes,
        "{what}: re-packing an unmutated pack must give the same bytes"
    );
    // The reseal alone (no mutation): at most the signature is lost.
    let resealed = pack.resealed().to_tar();
    let v = verify(dir, &resealed, args);
    if resealed != bytes {
        assert_eq!(
            v.codes().into_iter().collect::<Vec<_>>(),
            ["MANIFEST_SIGNATURE"],
            "{what}: a reseal without mutation only breaks the signature; {}",
            v.summary()
        );
    }
    pack
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Mutations of `entries.txt`: an altered payload byte, a removed receipt, an inserted receipt
/// signed by an unknown key, reordered receipts, a receipt spliced in from another log (other
/// origin), a receipt moved from another index, and (filtered pack) a foreign entry that does
/// not match the filter.
#[tokio::test(flavor = "multi_thread")]
async fn entries_mutations_are_detected_with_their_codes() {
    let started = Instant::now();
    let other_log = format!(
        "[log]\norigin = \"lap.test/elsewhere\"\ncheckpoint_every = 8\ncheckpoint_interval_ms = 50{PER_RECEIPT}"
    );
    let this_log = format!("{LOG_TOML}{PER_RECEIPT}");
    let ((_up, gw), (_up2, other)) =
        tokio::join!(busy_gateway(2, &this_log), busy_gateway(2, &other_log));
    let (_, size) = gw.settled_checkpoint().await;
    other.settled_checkpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let trust = save(dir, "keys.json", &gw.trust_doc().await);
    let args = ["--trusted-keys".as_ref(), trust.as_os_str()];
    let full = expect_baseline(dir, "full pack", &gw.audit_pack("").await, &args);
    let lines = full.lines();
    assert_eq!(lines.len() as u64, size);
    assert_eq!(full.manifest()["selection"]["complete"], true);
    let other_pack = Pack::parse(&other.audit_pack("").await);
    assert_eq!(other_pack.manifest()["origin"], "lap.test/elsewhere");
    assert_ne!(full.manifest()["origin"], other_pack.manifest()["origin"]);
    let k = lines.len() / 2;
    let idx = |i: usize| line_index(&lines[i]);

    // 1. One bit of one receipt's signed payload.
    let mut m = lines.clone();
    m[k] = make_line(idx(k), &altered_payload(line_envelope(&lines[k])));
    let pack = full.with_lines(&m);
    let case = "altered payload byte";
    let v = expect_mutation_caught(
        dir,
        case,
        &pack,
        &args,
        &["BAD_SIGNATURE", "INCLUSION_PROOF_FAILED"],
    );
    assert_eq!(
        v.indices("BAD_SIGNATURE"),
        BTreeSet::from([idx(k)]),
        "{case}"
    );

    // 1b. One bit of one receipt's signature.
    let mut env = lap_receipt::dsse::Envelope::from_json(line_envelope(&lines[k])).unwrap();
    env.signatures[0].sig[10] ^= 1;
    let mut m = lines.clone();
    m[k] = make_line(idx(k), env.to_json().as_bytes());
    let pack = full.with_lines(&m);
    let case = "altered signature bit";
    let v = expect_mutation_caught(dir, case, &pack, &args, &["BAD_SIGNATURE"]);
    assert_eq!(
        v.indices("BAD_SIGNATURE"),
        BTreeSet::from([idx(k)]),
        "{case}"
    );

    // 2. A removed receipt.
    let mut m = lines.clone();
    m.remove(k);
    let pack = full.with_lines(&m);
    let case = "removed receipt";
    let v = expect_mutation_caught(dir, case, &pack, &args, &["ENTRY_MISSING"]);
    assert_eq!(
        v.indices("ENTRY_MISSING"),
        BTreeSet::from([idx(k)]),
        "{case}"
    );

    // 3. An inserted receipt, validly signed by a key the auditor does not trust.
    let evil = SigningKey::from_bytes(&[0x5e; 32]);
    let mut m = lines.clone();
    m.insert(k + 1, forged(&lines[k], idx(k), &evil, "k-evil"));
    let pack = full.with_lines(&m);
    expect_mutation_caught(
        dir,
        "inserted receipt (unknown key)",
        &pack,
        &args,
        &["UNKNOWN_KEY"],
    );

    // 4. Two whole lines swapped.
    let mut m = lines.clone();
    m.swap(1, k);
    let pack = full.with_lines(&m);
    expect_mutation_caught(
        dir,
        "reordered receipts",
        &pack,
        &args,
        &["ENTRIES_REORDERED"],
    );

    // 5a. A receipt of another log (same receipt key, other origin) under this line's index.
    let other_lines = other_pack.lines();
    let donor = other_lines
        .iter()
        .find(|l| line_index(l) == idx(k))
        .expect("the other log has that index too");
    let mut m = lines.clone();
    m[k] = make_line(idx(k), line_envelope(donor));
    let pack = full.with_lines(&m);
    let case = "receipt spliced in from another log";
    let v = expect_mutation_caught(dir, case, &pack, &args, &["ORIGIN_MISMATCH"]);
    assert_eq!(
        v.indices("ORIGIN_MISMATCH"),
        BTreeSet::from([idx(k)]),
        "{case}"
    );

    // 5c. A whole pack of the other log, checked against this log's trust file.
    let v = verify(dir, &other.audit_pack("").await, &args);
    expect_fail(&v, "another log's pack", &["ORIGIN_MISMATCH"], &[]);

    // 5b. The receipt of line j moved to line i (keeping line i's index).
    let (i, j) = (2, k + 1);
    let mut m = lines.clone();
    m[i] = make_line(idx(i), line_envelope(&lines[j]));
    let pack = full.with_lines(&m);
    let case = "receipt moved from another index";
    let v = expect_mutation_caught(dir, case, &pack, &args, &["INDEX_MISMATCH"]);
    assert_eq!(
        v.indices("INDEX_MISMATCH"),
        BTreeSet::from([idx(i)]),
        "{case}"
    );

    // A filtered pack (agent-b only): an entry of the same log that does not match the filter,
    // inserted at its correct position; and a forged agent-b receipt at a free index.
    let filtered = expect_baseline(
        dir,
        "filtered pack",
        &gw.audit_pack("agent=agent-b").await,
        &args,
    );
    assert_eq!(filtered.manifest()["selection"]["complete"], false);
    let mut f_lines = filtered.lines();
    let present: BTreeSet<u64> = f_lines.iter().map(|l| line_index(l)).collect();
    assert!(f_lines
        .iter()
        .all(|l| { receipt_of(l).principal.map(|p| p.agent_id).as_deref() == Some("agent-b") }));
    let foreign = lines
        .iter()
        .find(|l| {
            !present.contains(&line_index(l))
                && receipt_of(l).principal.map(|p| p.agent_id).as_deref() == Some("agent-a")
                && line_index(l) > *present.first().unwrap()
        })
        .expect("an agent-a entry after the first agent-b one");
    let at = f_lines
        .iter()
        .position(|l| line_index(l) > line_index(foreign))
        .unwrap_or(f_lines.len());
    let mut m = f_lines.clone();
    m.insert(at, foreign.clone());
    let pack = filtered.with_lines(&m);
    let case = "filtered pack with an entry outside the filter";
    let v = expect_mutation_caught(dir, case, &pack, &args, &["FILTER_MISMATCH"]);
    assert_eq!(
        v.indices("FILTER_MISMATCH"),
        BTreeSet::from([line_index(foreign)]),
        "{case}"
    );
    assert!(!v.has("ENTRIES_REORDERED"), "{case}: {}", v.summary());
    let gap = (0..size)
        .find(|i| !present.contains(i) && *i > line_index(&f_lines[0]))
        .unwrap();
    let at = f_lines
        .iter()
        .position(|l| line_index(l) > gap)
        .unwrap_or(f_lines.len());
    let forged_line = forged(&f_lines[0], gap, &evil, "k-evil");
    f_lines.insert(at, forged_line);
    expect_mutation_caught(
        dir,
        "filtered pack with a receipt by an unknown key at a free index",
        &filtered.with_lines(&f_lines),
        &args,
        &["UNKNOWN_KEY", "INCLUSION_PROOF_FAILED"],
    );
    eprintln!("entries mutations: {:?}", started.elapsed());
}

/// The same note with the signature line of key `name` replaced by one made with `key`.
fn resigned_note(note: &[u8], name: &str, key: &SigningKey) -> Vec<u8> {
    let note = std::str::from_utf8(note).unwrap();
    let split = note.rfind("\n\n").unwrap();
    let text = &note[..=split];
    let mut out = format!("{text}\n");
    for line in note[split + 2..].lines() {
        let (who, sig) = line
            .strip_prefix("\u{2014} ")
            .and_then(|l| l.split_once(' '))
            .unwrap();
        if who == name {
            let mut raw = base64_decode(sig);
            raw.truncate(4);
            raw.extend_from_slice(&key.sign(text.as_bytes()).to_bytes());
            out.push_str(&format!("\u{2014} {who} {}\n", base64_encode(&raw)));
        } else {
            out.push_str(&format!("{line}\n"));
        }
    }
    out.into_bytes()
}

/// Batched packs (the default mode): every entry is authentic only by its inclusion under the
/// anchor, and each batch's checkpoint (in the pack) carries the receipt key's signature. An
/// altered, removed, inserted, reordered, spliced or moved entry keeps its code; a batch
/// checkpoint whose receipt-key signature is not the receipt key's fails exactly that batch's
/// entries with `BATCH_SIGNATURE`.
#[tokio::test(flavor = "multi_thread")]
async fn batched_entries_mutations_are_detected_with_their_codes() {
    let started = Instant::now();
    let other_log =
        "[log]\norigin = \"lap.test/elsewhere\"\ncheckpoint_every = 8\ncheckpoint_interval_ms = 50";
    let ((_up, gw), (_up2, other)) =
        tokio::join!(busy_gateway(2, LOG_TOML), busy_gateway(2, other_log));
    let (_, size) = gw.settled_checkpoint().await;
    other.settled_checkpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let trust = save(dir, "keys.json", &gw.trust_doc().await);
    let args = ["--trusted-keys".as_ref(), trust.as_os_str()];
    let full = expect_baseline(dir, "full batched pack", &gw.audit_pack("").await, &args);
    let lines = full.lines();
    assert_eq!(lines.len() as u64, size);
    assert!(
        lines
            .iter()
            .all(|l| line_envelope(l).starts_with(b"{\"version\":2,")),
        "batched entries"
    );
    // The pack carries the checkpoint of every batch (more than the two of a per-receipt pack).
    let cps = full.checkpoints();
    assert!(cps.len() > 2, "{cps:?}");
    let k = lines.len() / 2;
    let idx = |i: usize| line_index(&lines[i]);

    // 1. One character of one entry.
    let mut m = lines.clone();
    let text = String::from_utf8(lines[k].clone()).unwrap();
    m[k] = text.replacen("\"kind\":\"", "\"kind\":\"x", 1).into_bytes();
    let case = "altered batched entry";
    let v = expect_mutation_caught(
        dir,
        case,
        &full.with_lines(&m),
        &args,
        &["RECEIPT_MALFORMED", "INCLUSION_PROOF_FAILED"],
    );
    assert_eq!(
        v.indices("RECEIPT_MALFORMED"),
        BTreeSet::from([idx(k)]),
        "{case}"
    );
    let mut m2 = lines.clone();
    let r = receipt_of(&lines[k]);
    let altered = text.replace(&r.request_id, &format!("{}x", r.request_id));
    m2[k] = altered.into_bytes();
    expect_mutation_caught(
        dir,
        "altered request id",
        &full.with_lines(&m2),
        &args,
        &["INCLUSION_PROOF_FAILED"],
    );

    // 2. A removed entry.
    let mut m = lines.clone();
    m.remove(k);
    let v = expect_mutation_caught(
        dir,
        "removed",
        &full.with_lines(&m),
        &args,
        &["ENTRY_MISSING"],
    );
    assert_eq!(v.indices("ENTRY_MISSING"), BTreeSet::from([idx(k)]));

    // 3. An inserted entry naming a key the auditor does not trust, at a duplicate index.
    let mut forged = receipt_of(&lines[k]);
    forged.call.path = "/forged".into();
    forged.signer.key_id = "k-evil".into();
    let mut m = lines.clone();
    m.insert(k + 1, make_line(idx(k), &forged.to_payload()));
    expect_mutation_caught(
        dir,
        "inserted batched entry",
        &full.with_lines(&m),
        &args,
        &["UNKNOWN_KEY", "ENTRIES_REORDERED"],
    );

    // 4. Two lines swapped.
    let mut m = lines.clone();
    m.swap(1, k);
    expect_mutation_caught(
        dir,
        "reordered",
        &full.with_lines(&m),
        &args,
        &["ENTRIES_REORDERED"],
    );

    // 5a. An entry of another log under this line's index.
    let other_pack = Pack::parse(&other.audit_pack("").await);
    let donor = other_pack
        .lines()
        .into_iter()
        .find(|l| line_index(l) == idx(k))
        .expect("the other log has that index too");
    let mut m = lines.clone();
    m[k] = make_line(idx(k), line_envelope(&donor));
    let v = expect_mutation_caught(
        dir,
        "spliced from another log",
        &full.with_lines(&m),
        &args,
        &["ORIGIN_MISMATCH", "INCLUSION_PROOF_FAILED"],
    );
    assert_eq!(v.indices("ORIGIN_MISMATCH"), BTreeSet::from([idx(k)]));

    // 5b. The entry of line j moved to line i.
    let (i, j) = (2, k + 1);
    let mut m = lines.clone();
    m[i] = make_line(idx(i), line_envelope(&lines[j]));
    let v = expect_mutation_caught(
        dir,
        "moved from another index",
        &full.with_lines(&m),
        &args,
        &["INDEX_MISMATCH", "INCLUSION_PROOF_FAILED"],
    );
    assert!(v.indices("INDEX_MISMATCH").contains(&idx(i)));

    // 6. A batch checkpoint whose receipt-key signature was made by another key: the log key's
    // signature still holds, so only the receipt key's part fails — for that batch's entries.
    let kid = receipt_of(&lines[0]).signer.key_id;
    let origin = full.manifest()["origin"].as_str().unwrap().to_string();
    let name = format!("{origin}/receipt-key/{kid}");
    let evil = SigningKey::from_bytes(&[0x5f; 32]);
    let mut sizes: Vec<u64> = cps.iter().map(|c| c.1).collect();
    sizes.sort();
    let (victim, victim_size) = cps
        .iter()
        .find(|(_, s)| *s == sizes[sizes.len() / 2])
        .cloned()
        .unwrap();
    let below = sizes
        .iter()
        .rev()
        .find(|s| **s < victim_size)
        .copied()
        .unwrap_or(0);
    let pack = full.with(&victim, resigned_note(full.get(&victim), &name, &evil));
    let case = "batch checkpoint with another key's receipt-key signature";
    let v = expect_mutation_caught(dir, case, &pack, &args, &["BATCH_SIGNATURE"]);
    let batch: BTreeSet<u64> = (below..victim_size).collect();
    assert_eq!(
        v.indices("BATCH_SIGNATURE"),
        batch,
        "{case}: {}",
        v.summary()
    );
    assert!(!v.has("CHECKPOINT_SIGNATURE"), "{case}: {}", v.summary());
    eprintln!("batched entries mutations: {:?}", started.elapsed());
}

/// Two gateways with the same origin, the same receipt key and the same log key, but different
/// traffic: two histories of "the same" log. A checkpoint of one pinned against a pack of the
/// other, and a checkpoint member of a pack replaced by the twin's of the same size, are forks.
#[tokio::test(flavor = "multi_thread")]
async fn forked_log_twins_are_detected() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let seed = dir.join("log.seed");
    write_private(
        &seed,
        "7a6b5c4d3e2f10ffeeddccbbaa99887766554433221100a1b2c3d4e5f6071829\n",
    );
    let log_toml = format!(
        "[log]\norigin = \"lap.test/twins\"\nkey_file = \"{}\"\ncheckpoint_every = 2\n\
         checkpoint_interval_ms = 50{PER_RECEIPT}",
        seed.display()
    );
    let up = Upstream::start(Behavior::Echo).await;
    let twin = || {
        GatewayBuilder::new()
            .tool("alpha", &up.url())
            .keys_file(&keys())
            .policy(POLICY)
            .extra_toml(&log_toml)
            .start()
    };
    let (a, b) = tokio::join!(twin(), twin());
    // Checkpoints at the same sizes on both sides (each call: two receipts, then settled).
    for i in 0..3 {
        get_ok(&a, &format!("/tools/alpha/a{i}"), KEY_A).await;
        get_ok(&b, &format!("/tools/alpha/b{i}"), KEY_A).await;
        a.settled_checkpoint().await;
        b.settled_checkpoint().await;
    }
    // A denial receipt on A (an odd size), more traffic on B.
    a.get("/tools/alpha/x").api_key("nope").send().await;
    for i in 3..6 {
        get_ok(&b, &format!("/tools/alpha/b{i}"), KEY_A).await;
    }
    let (a_note, a_size) = a.settled_checkpoint().await;
    let (_, b_size) = b.settled_checkpoint().await;
    assert!(a_size < b_size, "{a_size} < {b_size}");

    // The same keys on both sides: only the histories differ.
    let (ta, tb) = (a.trust_doc().await, b.trust_doc().await);
    let parse = |t: &[u8]| serde_json::from_slice::<Value>(t).unwrap();
    let (ja, jb) = (parse(&ta), parse(&tb));
    assert_eq!(ja["log"], jb["log"], "same log origin and key");
    let hexes = |j: &Value| -> Vec<Value> {
        j["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["public_key_hex"].clone())
            .collect()
    };
    assert_eq!(hexes(&ja), hexes(&jb), "same receipt keys");
    let trust = save(dir, "keys.json", &tb);
    let keys_arg = ["--trusted-keys".as_ref(), trust.as_os_str()];

    let a_full = expect_baseline(dir, "twin A pack", &a.audit_pack("").await, &keys_arg);
    let b_full = expect_baseline(dir, "twin B pack", &b.audit_pack("").await, &keys_arg);
    // Each side's checkpoint history, read from packs that end at every size: a pack carries
    // the checkpoint covering its range and the anchor.
    let a_history = checkpoint_history(&a, a_size).await;
    let b_history = checkpoint_history(&b, b_size).await;
    let b_sizes: BTreeMap<u64, &Vec<u8>> = b_history.iter().map(|(s, n)| (*s, n)).collect();

    // Every checkpoint of A, pinned against a pack of B with a proof from its size: a fork.
    // Two packs each: the whole log (when B also has a checkpoint of that size, the verifier
    // compares the roots) and from that size on (B's checkpoints of that size and below are
    // left out, so the verifier checks B's consistency proof from it). B's own checkpoints,
    // pinned the same way, pass.
    let mut a_checkpoints: Vec<(u64, Vec<u8>)> =
        a_history.iter().map(|(s, n)| (*s, n.clone())).collect();
    a_checkpoints.push((a_size, a_note.into_bytes()));
    assert!(a_full.checkpoints().iter().any(|(_, s)| *s == a_size));
    let mut same_size = 0;
    for (size, note) in &a_checkpoints {
        if b_sizes.contains_key(size) {
            same_size += 1;
        }
        for query in [
            format!("since_size={size}"),
            format!("from={size}&since_size={size}"),
        ] {
            let pack = b.audit_pack(&query).await;
            if query.starts_with("from=") {
                let sizes = Pack::parse(&pack).checkpoints();
                assert!(sizes.iter().all(|(_, s)| s != size), "?{query}: {sizes:?}");
            }
            let pin = |note: &[u8]| {
                let pinned = save(dir, "pinned.cp", note);
                verify(
                    dir,
                    &pack,
                    &[
                        keys_arg[0],
                        keys_arg[1],
                        "--checkpoint".as_ref(),
                        pinned.as_os_str(),
                    ],
                )
            };
            let case = format!("A's checkpoint of size {size} pinned against B's pack ?{query}");
            expect_fail(
                &pin(note),
                &case,
                &["FORK_DETECTED"],
                &["MANIFEST_SIGNATURE"],
            );
            if let Some(own) = b_sizes.get(size) {
                let case = format!("B's own checkpoint of size {size} pinned, ?{query}");
                expect_pass(&pin(own), &case);
            }
        }
    }
    assert!(same_size >= 3, "sizes both twins checkpointed: {same_size}");

    // A checkpoint member of B's pack replaced by A's checkpoint of the same size: validly
    // signed (same key, same origin), but another history.
    let a_by_size: BTreeMap<u64, &Vec<u8>> = a_checkpoints.iter().map(|(s, n)| (*s, n)).collect();
    let anchor = b_full.checkpoints().last().unwrap().0.clone();
    let mut replaced = 0;
    for &size in b_sizes.keys() {
        let Some(note) = a_by_size.get(&size) else {
            continue;
        };
        // A pack of B whose range ends there carries B's checkpoint of that size.
        let ending = expect_baseline(
            dir,
            &format!("B's pack up to {size}"),
            &b.audit_pack(&format!("to={size}")).await,
            &keys_arg,
        );
        let (name, _) = ending
            .checkpoints()
            .into_iter()
            .find(|(_, s)| *s == size)
            .expect("the covering checkpoint");
        let pack = ending.with(&name, note.to_vec());
        let case = format!("{name} (size {size}) replaced by the twin's");
        let v = expect_mutation_caught(dir, &case, &pack, &keys_arg, &["FORK_DETECTED"]);
        assert!(
            !v.has("CHECKPOINT_SIGNATURE"),
            "{case}: the twin's note is validly signed; {}",
            v.summary()
        );
        assert!(size < b_size, "{case}: not B's anchor ({anchor})");
        replaced += 1;
    }
    assert!(replaced >= 3, "checkpoint members replaced: {replaced}");
    eprintln!("forked twins: {:?}", started.elapsed());
}

/// A gateway's checkpoint notes by tree size, read from packs that end at every size up to
/// `size`: a pack carries the checkpoint covering its range and the anchor.
async fn checkpoint_history(gw: &Gateway, size: u64) -> BTreeMap<u64, Vec<u8>> {
    let mut notes = BTreeMap::new();
    for to in 1..=size {
        let pack = Pack::parse(&gw.audit_pack(&format!("to={to}")).await);
        for (name, s) in pack.checkpoints() {
            notes.insert(s, pack.get(&name).to_vec());
        }
    }
    notes
}

/// The auditor's pinned trust file says when the receipt key was revoked or valid; and the
/// manifest and the pack's own trust file are tampered with. In both modes: a batched receipt
/// names the key that signed its batch's checkpoint, judged at the receipt's issue time as an
/// envelope's signature is.
#[tokio::test(flavor = "multi_thread")]
async fn key_validity_and_manifest_and_trust_tampering() {
    key_validity_and_tampering(LOG_TOML).await;
    key_validity_and_tampering(&format!("{LOG_TOML}{PER_RECEIPT}")).await;
}

async fn key_validity_and_tampering(log_toml: &str) {
    let started = Instant::now();
    let (_up, gw) = busy_gateway(2, log_toml).await;
    gw.settled_checkpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let trust_bytes = gw.trust_doc().await;
    let trust = save(dir, "keys.json", &trust_bytes);
    let args = ["--trusted-keys".as_ref(), trust.as_os_str()];
    let bytes = gw.audit_pack("").await;
    let pack = expect_baseline(dir, "full pack", &bytes, &args);
    let lines = pack.lines();

    // When each receipt was issued (RFC 3339 UTC, fixed width: strings order like times).
    let issued: Vec<(u64, String)> = lines
        .iter()
        .map(|l| (line_index(l), receipt_of(l).issued_at))
        .collect();
    let width = issued[0].1.len();
    assert!(
        issued
            .iter()
            .all(|(_, t)| t.len() == width && t.ends_with('Z')),
        "{issued:?}"
    );
    let kid = receipt_of(&lines[0]).signer.key_id;
    assert!(lines.iter().all(|l| receipt_of(l).signer.key_id == kid));
    let mut times: Vec<&String> = issued.iter().map(|(_, t)| t).collect();
    times.sort();
    let mid = times[times.len() / 2].clone();
    let all: BTreeSet<u64> = issued.iter().map(|(i, _)| *i).collect();
    let from_mid: BTreeSet<u64> = issued
        .iter()
        .filter(|(_, t)| *t >= mid)
        .map(|(i, _)| *i)
        .collect();
    let before_mid: BTreeSet<u64> = all.difference(&from_mid).copied().collect();
    assert!(!from_mid.is_empty() && !before_mid.is_empty());

    // The pinned trust file with fields of the receipt key set.
    let doc: Value = serde_json::from_slice(&trust_bytes).unwrap();
    let edited = |fields: &[(&str, &str)]| -> PathBuf {
        let mut d = doc.clone();
        let key = d["keys"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|k| k["key_id"] == kid.as_str())
            .expect("the receipt key in /v1/keys");
        for (f, v) in fields {
            key[*f] = (*v).into();
        }
        save(dir, "edited-keys.json", d.to_string().as_bytes())
    };
    const PAST: &str = "2000-01-01T00:00:00Z";
    const FUTURE: &str = "2999-01-01T00:00:00Z";
    // (case, fields, code expected, indices it must name: None = passes)
    let mid = mid.as_str();
    let cases = vec![
        (
            "revoked long ago",
            vec![("revoked_at", PAST)],
            "KEY_REVOKED",
            Some(&all),
        ),
        (
            "revoked at a receipt's issued_at (at or after: revoked)",
            vec![("revoked_at", mid)],
            "KEY_REVOKED",
            Some(&from_mid),
        ),
        (
            "revocation far in the future",
            vec![("revoked_at", FUTURE)],
            "",
            None,
        ),
        (
            "not_after before the receipts",
            vec![("not_after", PAST)],
            "KEY_OUTSIDE_VALIDITY",
            Some(&all),
        ),
        (
            "not_before after the receipts",
            vec![("not_before", FUTURE)],
            "KEY_OUTSIDE_VALIDITY",
            Some(&all),
        ),
        (
            "not_after at a receipt's issued_at (exclusive)",
            vec![("not_after", mid)],
            "KEY_OUTSIDE_VALIDITY",
            Some(&from_mid),
        ),
        (
            "not_before at a receipt's issued_at (inclusive)",
            vec![("not_before", mid)],
            "KEY_OUTSIDE_VALIDITY",
            Some(&before_mid),
        ),
        (
            "a window around the receipts",
            vec![("not_before", PAST), ("not_after", FUTURE)],
            "",
            None,
        ),
    ];
    for (case, fields, code, indices) in cases {
        let pinned = edited(&fields);
        let v = verify(
            dir,
            &bytes,
            &["--trusted-keys".as_ref(), pinned.as_os_str()],
        );
        match indices {
            None => expect_pass(&v, case),
            Some(want) => {
                expect_fail(&v, case, &[code], &["TRUST_FILE_MISMATCH"]);
                assert_eq!(&v.indices(code), want, "{case}: {}", v.summary());
                assert_eq!(
                    v.codes().into_iter().collect::<Vec<_>>(),
                    [code],
                    "{case}: only {code}"
                );
            }
        }
    }

    // The manifest: one digit of selection.to changed.
    let text = String::from_utf8(pack.get(MANIFEST).to_vec()).unwrap();
    let at = text.find("\"to\": ").expect("selection.to") + "\"to\": ".len();
    let end = at + text[at..].find(|c: char| !c.is_ascii_digit()).unwrap();
    let mut m = text.into_bytes();
    m[end - 1] = if m[end - 1] == b'9' {
        b'8'
    } else {
        m[end - 1] + 1
    };
    let tampered = pack.with(MANIFEST, m).to_tar();
    for (case, a) in [
        ("tampered manifest (pinned keys)", &args[..]),
        ("tampered manifest (keys from the pack)", &[]),
    ] {
        let v = verify(dir, &tampered, a);
        expect_fail(&v, case, &["MANIFEST_SIGNATURE"], &[]);
    }

    // The pack's trust.json: the receipt key's public key replaced by another valid key.
    let real_hex = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == kid.as_str())
        .unwrap()["public_key_hex"]
        .as_str()
        .unwrap()
        .to_string();
    let fake_hex = hex::encode(
        SigningKey::from_bytes(&[0x33; 32])
            .verifying_key()
            .as_bytes(),
    );
    let packed_trust = String::from_utf8(pack.get(TRUST).to_vec()).unwrap();
    assert_eq!(packed_trust.matches(&real_hex).count(), 1);
    let swapped = pack.with(
        TRUST,
        packed_trust.replace(&real_hex, &fake_hex).into_bytes(),
    );
    let v = verify(dir, &swapped.to_tar(), &[]);
    expect_fail(
        &v,
        "trust.json key swapped (keys from the pack)",
        &["MANIFEST_HASH_MISMATCH"],
        &[],
    );
    expect_mutation_caught(
        dir,
        "trust.json key swapped (pinned keys)",
        &swapped,
        &args,
        &["TRUST_FILE_MISMATCH"],
    );
    let v = verify(dir, &swapped.resealed().to_tar(), &[]);
    expect_fail(
        &v,
        "trust.json key swapped, manifest resealed (keys from the pack)",
        &["MANIFEST_SIGNATURE"],
        &["MANIFEST_HASH_MISMATCH"],
    );
    eprintln!("key validity and tampering: {:?}", started.elapsed());
}

/// Byte offsets of each member's header, and the end of the last member's data blocks (where
/// the end-of-archive marker begins).
fn member_offsets(bytes: &[u8]) -> (Vec<(usize, usize)>, usize) {
    let mut offsets = Vec::new();
    let mut at = 0;
    while at + 512 <= bytes.len() && bytes[at..at + 512].iter().any(|&b| b != 0) {
        let size_field = std::str::from_utf8(&bytes[at + 124..at + 136]).unwrap();
        let size =
            usize::from_str_radix(size_field.trim_matches(|c| c == '\0' || c == ' '), 8).unwrap();
        offsets.push((at, size));
        at += 512 + size.div_ceil(512) * 512;
    }
    (offsets, at)
}

/// xorshift64: a small seeded PRNG, enough to spread byte flips.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Whether the verifier may accept these bytes: the tar reader gets every member byte for byte,
/// and after the last member's data blocks come the two zero blocks of the end-of-archive marker
/// and nothing but zeros (`docs/auditing.md`). A damage that keeps this (a flip in the padding
/// after a member's data, which tar ignores) changes nothing that is signed.
fn intact(bytes: &[u8], original: &Members, data_end: usize) -> bool {
    matches!(read_members(bytes), Ok((m, _)) if &m == original)
        && bytes.len() >= data_end + 1024
        && bytes[data_end..].iter().all(|&b| b == 0)
}

/// The rule for damaged archives: intact (see [`intact`]) → must pass; otherwise must fail:
/// `ARCHIVE_CORRUPT` alone when the archive does not read (or its end is damaged), and
/// `ARCHIVE_CORRUPT` or `MEMBER_MISSING` when it was cut exactly between members.
#[track_caller]
fn expect_damage_handled(
    dir: &Path,
    case: &str,
    bytes: &[u8],
    original: &Members,
    data_end: usize,
    args: &[&OsStr],
) -> Verdict {
    let v = verify(dir, bytes, args);
    if intact(bytes, original, data_end) {
        expect_pass(
            &v,
            &format!("{case} (every member and the end marker intact)"),
        );
        return v;
    }
    let only_corrupt = || {
        assert_eq!(
            v.codes().into_iter().collect::<Vec<_>>(),
            ["ARCHIVE_CORRUPT"],
            "{case}: {}",
            v.summary()
        );
    };
    match read_members(bytes) {
        Ok((m, _)) if m.len() < original.len() && original.starts_with(&m) => {
            expect_fail(&v, case, &[], &[]);
            assert!(
                v.has("ARCHIVE_CORRUPT") || v.has("MEMBER_MISSING"),
                "{case}: a pack cut between members is ARCHIVE_CORRUPT or MEMBER_MISSING; {}",
                v.summary()
            );
        }
        Ok((m, _)) if &m == original => only_corrupt(),
        Ok(_) => expect_fail(&v, case, &[], &[]),
        Err(_) => only_corrupt(),
    }
    v
}

/// Truncated and garbled archives, members removed, and 200 random single-byte flips across a
/// whole pack: never a crash, always a verdict, and a failure unless the flip landed where tar
/// ignores it.
#[tokio::test(flavor = "multi_thread")]
async fn damaged_archives_fail_cleanly() {
    let started = Instant::now();
    let (_up, gw) = busy_gateway(1, LOG_TOML).await;
    gw.settled_checkpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let trust = save(dir, "keys.json", &gw.trust_doc().await);
    let args = ["--trusted-keys".as_ref(), trust.as_os_str()];
    let bytes = gw.audit_pack("").await;
    let pack = expect_baseline(dir, "full pack", &bytes, &args);
    let original = &pack.members;
    let (offsets, data_end) = member_offsets(&bytes);
    assert_eq!(offsets.len(), original.len());
    assert!(
        intact(&bytes, original, data_end),
        "an end-of-archive marker"
    );

    // Truncations: inside headers, inside data, exactly between members, just after the last
    // member, inside the end marker.
    let mut cuts = BTreeSet::from([0, 1, 100, 511, 512, 513, bytes.len() - 1, data_end]);
    for &(at, size) in &offsets {
        cuts.extend([at, at + 1, at + 257, at + 511, at + 512 + size / 2]);
        if size % 512 != 0 {
            cuts.insert(at + 512 + size);
        }
    }
    cuts.extend([
        data_end + 1,
        data_end + 512,
        data_end + 600,
        data_end + 1023,
    ]);
    let mut between = 0;
    for &cut in cuts.iter().filter(|&&c| c < bytes.len()) {
        let case = format!("truncated to {cut} of {} bytes", bytes.len());
        let v = expect_damage_handled(dir, &case, &bytes[..cut], original, data_end, &args);
        assert!(!v.ok, "{case}: a truncated pack must fail");
        if offsets.iter().any(|&(at, _)| at == cut) || cut == data_end {
            between += 1;
        }
    }
    // Before each member, and after the last.
    assert_eq!(between, offsets.len() + 1, "cuts exactly between members");

    // Garbage in a header (whole block, name, size and checksum), files that are not tar at all,
    // data after the end-of-archive marker; zero padding after it (tar records) is fine.
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for (k, &(at, _)) in offsets.iter().enumerate() {
        for range in [at..at + 512, at..at + 64, at + 124..at + 156] {
            let mut b = bytes.clone();
            for x in &mut b[range.clone()] {
                *x = rng.next() as u8;
            }
            let case = format!("garbage in member {k}'s header, bytes {range:?}");
            let v = verify(dir, &b, &args);
            expect_fail(&v, &case, &["ARCHIVE_CORRUPT"], &[]);
        }
    }
    let garbage: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
    for (case, b) in [
        ("random bytes", garbage),
        ("JSON, not tar", br#"{"not": "a tar"}"#.to_vec()),
        (
            "gzip magic",
            [&[0x1f, 0x8b, 0x08, 0x00][..], &bytes[..2000]].concat(),
        ),
        ("bytes after the end marker", [&bytes[..], b"more"].concat()),
        ("the pack twice", [&bytes[..], &bytes[..]].concat()),
    ] {
        let v = verify(dir, &b, &args);
        expect_fail(&v, case, &["ARCHIVE_CORRUPT"], &[]);
    }
    let padded = [&bytes[..], &[0u8; 9216][..]].concat();
    expect_pass(
        &verify(dir, &padded, &args),
        "zero record padding after the end marker",
    );

    // A member removed, the archive otherwise well formed. (manifest.json: see
    // `a_pack_without_its_manifest_is_member_missing`.)
    for (name, _) in original.iter().filter(|(n, _)| n != MANIFEST) {
        let mut p = pack.clone();
        p.members.retain(|(n, _)| n != name);
        let v = verify(dir, &p.to_tar(), &args);
        let case = format!("{name} removed");
        if name == "manifest.sig" {
            expect_fail(&v, &case, &[], &[]);
            assert!(
                v.has("MEMBER_MISSING") || v.has("MANIFEST_SIGNATURE"),
                "{case}: {}",
                v.summary()
            );
        } else {
            expect_fail(&v, &case, &["MEMBER_MISSING"], &[]);
        }
    }

    // A manifest claiming an enormous complete range: refused at once, not walked.
    let mut m = pack.manifest();
    m["selection"]["to"] = u64::MAX.into();
    let p = pack.with(MANIFEST, serde_json::to_vec_pretty(&m).unwrap());
    let walk_started = Instant::now();
    let v = verify(dir, &p.to_tar(), &args);
    let case = "a manifest range up to u64::MAX";
    expect_fail(&v, case, &["PACK_MALFORMED", "MANIFEST_SIGNATURE"], &[]);
    assert!(
        walk_started.elapsed() < Duration::from_secs(10),
        "{case}: took {:?}",
        walk_started.elapsed()
    );

    // A member the format does not have: refused even when the manifest lists it.
    let extra = b"nothing to see".to_vec();
    let mut p = pack.clone();
    p.members.push(("notes.txt".into(), extra.clone()));
    let v = verify(dir, &p.to_tar(), &args);
    expect_fail(
        &v,
        "an extra member",
        &["PACK_MALFORMED", "MEMBER_UNLISTED"],
        &[],
    );
    let mut m = p.manifest();
    m["files"].as_array_mut().unwrap().push(serde_json::json!(
        {"name": "notes.txt", "size": extra.len(), "sha256": sha256_hex(&extra)}
    ));
    let p = p.with(MANIFEST, serde_json::to_vec_pretty(&m).unwrap());
    let v = verify(dir, &p.to_tar(), &args);
    let case = "an extra member, listed in the manifest";
    expect_fail(
        &v,
        case,
        &["PACK_MALFORMED", "MANIFEST_SIGNATURE"],
        &["MEMBER_UNLISTED"],
    );

    // 200 single-byte flips at random positions, one at a time.
    let flips_started = Instant::now();
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let (mut passed, mut failed) = (0, 0);
    for n in 0..200 {
        let r = rng.next();
        let pos = (r % bytes.len() as u64) as usize;
        let x = ((r >> 40) as u8).max(1);
        let mut b = bytes.clone();
        b[pos] ^= x;
        // Where it landed: a member's header (and which field), its data, the zero padding
        // after its data, or the end-of-archive marker.
        let place = match offsets.iter().rposition(|&(at, _)| at <= pos) {
            Some(k) if pos < data_end => {
                let (at, size) = offsets[k];
                let name = &original[k].0;
                match pos - at {
                    148..156 => format!("{name}'s header checksum field"),
                    o if o < 512 => format!("{name}'s header, offset {o}"),
                    o if o < 512 + size => format!("{name}'s data, offset {}", o - 512),
                    _ => format!("the padding after {name}"),
                }
            }
            _ => "the end-of-archive marker".to_string(),
        };
        let case = format!("flip #{n}: byte {pos} ^= {x:#04x}, in {place}");
        let v = expect_damage_handled(dir, &case, &b, original, data_end, &args);
        if v.ok {
            // Only bytes tar ignores: padding, or a checksum field still read as the same value.
            assert!(
                place.starts_with("the padding") || place.ends_with("checksum field"),
                "{case}: accepted"
            );
            passed += 1;
        } else {
            failed += 1;
        }
    }
    eprintln!(
        "random flips: {failed} refused, {passed} harmless (tar padding), in {:?}",
        flips_started.elapsed()
    );
    assert!(failed > 100 && passed > 5, "{failed} / {passed}");
    eprintln!("damaged archives: {:?}", started.elapsed());
}

/// A well-formed archive without `manifest.json`: a required member is absent, which the
/// failure-code table of `docs/auditing.md` calls `MEMBER_MISSING` ("a member the manifest
/// lists, or a required one, is absent").
#[test]
fn a_pack_without_its_manifest_is_member_missing() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let no_manifest = Pack {
        members: vec![
            ("manifest.sig".into(), b"{}".to_vec()),
            (TRUST.into(), b"{}".to_vec()),
            (ENTRIES.into(), Vec::new()),
            ("proofs.json".into(), b"{}".to_vec()),
        ],
        mtime: 0,
    }
    .to_tar();
    let end_marker_only = vec![0u8; 1024];
    let mut wrong = Vec::new();
    for (case, bytes) in [
        (
            "a tar holding every member but manifest.json",
            &no_manifest[..],
        ),
        (
            "an empty tar (only the end-of-archive marker)",
            &end_marker_only[..],
        ),
    ] {
        let v = verify(dir, bytes, &[]);
        expect_fail(&v, case, &[], &[]);
        if !v.has("MEMBER_MISSING") {
            wrong.push(format!("{case}: {}", v.summary()));
        }
    }
    assert!(
        wrong.is_empty(),
        "manifest.json absent must be MEMBER_MISSING:\n{}",
        wrong.join("\n")
    );
}
