//! The LAP audit-pack format, version 1: what the gateway exports for auditors and what
//! `lap-verify pack` reads. Byte-level specification: `docs/auditing.md`.
//!
//! A pack is one POSIX tar archive (ustar, uncompressed) whose members are, in this order:
//!
//! | member | content |
//! |---|---|
//! | `manifest.json` | [`Manifest`]: what was selected, the tree size proofs refer to, and the SHA-256 and size of every other member |
//! | `manifest.sig` | [`ManifestSignature`]: Ed25519 by the log (checkpoint) key over the DSSE PAE of `manifest.json` |
//! | `trust.json` | the gateway's `/v1/keys` document at export time |
//! | `checkpoints/NNNNNN.note` | signed checkpoints, increasing tree size (the first covering the range, each batch checkpoint of a batched entry, the anchor); the last one is the anchor |
//! | `entries.txt` | one line per selected log entry: decimal index, one space, the entry bytes (compact JSON: a batched receipt or a receipt envelope), `\n` |
//! | `proofs.json` | [`Proofs`]: one multi-leaf inclusion proof of every entry against the anchor, consistency proofs between the checkpoints |
//!
//! This crate only assembles and splits packs; deciding what goes in is the exporter's job,
//! checking what came out is the verifier's.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

/// `format` of a version-1 manifest.
pub const FORMAT: &str = "lap-audit-pack/1";
/// DSSE payload type under which the manifest is signed.
pub const MANIFEST_PAYLOAD_TYPE: &str = "application/vnd.lap.audit-manifest.v1+json";
pub const MANIFEST: &str = "manifest.json";
pub const MANIFEST_SIG: &str = "manifest.sig";
pub const TRUST: &str = "trust.json";
pub const ENTRIES: &str = "entries.txt";
pub const PROOFS: &str = "proofs.json";
pub const CHECKPOINT_DIR: &str = "checkpoints/";

/// Largest member accepted when reading (a pack of a few million receipts fits).
pub const MAX_MEMBER_BYTES: u64 = 16 << 30;
/// Most members accepted when reading.
pub const MAX_MEMBERS: usize = 1 << 20;

/// What the exporter was asked for, as resolved against the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// First log index of the range (inclusive).
    pub from: u64,
    /// End of the range (exclusive).
    pub to: u64,
    /// The time window asked for, if any (RFC 3339); the range covers it.
    pub since: Option<String>,
    pub until: Option<String>,
    /// Only receipts of this agent / tool, if set.
    pub agent: Option<String>,
    pub tool: Option<String>,
    /// True when every index in `[from, to)` is in the pack (no agent or tool filter).
    pub complete: bool,
}

/// One member listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub name: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the member's bytes.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// The log's origin (also the checkpoint key's name).
    pub origin: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub selection: Selection,
    /// Size of the anchor checkpoint's tree: every proof refers to it.
    pub tree_size: u64,
    /// Number of lines in `entries.txt`.
    pub entries: u64,
    /// Size of the checkpoint the requester already held, when it asked for a proof from it.
    pub since_size: Option<u64>,
    pub files: Vec<FileDigest>,
}

/// The detached signature of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSignature {
    /// Always [`MANIFEST_PAYLOAD_TYPE`].
    pub payload_type: String,
    /// The signing key: the log's verifier key in Go `note` format (`name+id+key`).
    pub key: String,
    /// Base64 Ed25519 signature over `PAE(payload_type, manifest.json bytes)`.
    pub sig: String,
}

/// A hash list, base64 on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    pub tree_size: u64,
    pub hashes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    pub old: u64,
    pub new: u64,
    pub hashes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proofs {
    /// `lap_tlog::merkle::Tree::multi_proof` of every index in `entries.txt`.
    pub inclusion: InclusionProof,
    /// Between each pair of consecutive checkpoints, then from `since_size` to the anchor.
    pub consistency: Vec<ConsistencyProof>,
}

/// Hash lists are written as the log's JSON proofs write them (base64 of each 32-byte hash).
pub use lap_tlog::json::{decode_hashes, encode_hashes};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The bytes the manifest signature covers.
pub fn signing_message(manifest_json: &[u8]) -> Vec<u8> {
    lap_receipt::dsse::pae(MANIFEST_PAYLOAD_TYPE, manifest_json)
}

/// Name of the `n`-th checkpoint member.
pub fn checkpoint_name(n: usize) -> String {
    format!("{CHECKPOINT_DIR}{n:06}.note")
}

/// Whether `name` is a checkpoint member's name (`checkpoints/` and six digits, `.note`).
pub fn is_checkpoint_name(name: &str) -> bool {
    name.strip_prefix(CHECKPOINT_DIR)
        .and_then(|rest| rest.strip_suffix(".note"))
        .is_some_and(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether a pack may hold a member of this name.
pub fn is_member_name(name: &str) -> bool {
    [MANIFEST, MANIFEST_SIG, TRUST, ENTRIES, PROOFS].contains(&name) || is_checkpoint_name(name)
}

/// Appends one `entries.txt` line.
pub fn push_entry_line(out: &mut Vec<u8>, index: u64, entry: &[u8]) -> Result<(), PackError> {
    if entry.contains(&b'\n') {
        return Err(PackError::Malformed(format!(
            "log entry {index} contains a newline"
        )));
    }
    out.extend_from_slice(index.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(entry);
    out.push(b'\n');
    Ok(())
}

/// One `entries.txt` line, split: `(line number from 1, index, entry bytes)`.
pub type EntryLine<'a> = (usize, Result<(u64, &'a [u8]), EntryLineError>);

/// Why an `entries.txt` line does not have the form `<index> <entry>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EntryLineError {
    #[error("no space after the index")]
    NoSpace,
    /// Empty, not all digits, or with a leading zero: one index has one spelling.
    #[error("the index is not a canonical decimal number")]
    IndexNotCanonical,
}

/// Splits `entries.txt` into lines; each line either parses or says why not.
pub fn entry_lines(text: &[u8]) -> impl Iterator<Item = EntryLine<'_>> {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let lines = if text.is_empty() {
        None
    } else {
        Some(lines_of(body))
    };
    lines
        .into_iter()
        .flatten()
        .enumerate()
        .map(move |(n, line)| {
            let parsed = line
                .iter()
                .position(|&b| b == b' ')
                .ok_or(EntryLineError::NoSpace)
                .and_then(|sp| {
                    let digits = &line[..sp];
                    let canonical = !digits.is_empty()
                        && digits.iter().all(u8::is_ascii_digit)
                        && (digits.len() == 1 || digits[0] != b'0');
                    std::str::from_utf8(digits)
                        .ok()
                        .filter(|_| canonical)
                        .and_then(|d| d.parse::<u64>().ok())
                        .map(|i| (i, &line[sp + 1..]))
                        .ok_or(EntryLineError::IndexNotCanonical)
                });
            (n + 1, parsed)
        })
}

/// `body` split at every newline (what `body.split(|&b| b == b'\n')` gives), searched for with
/// `memchr`: a pack's `entries.txt` is a gigabyte for a million receipts.
fn lines_of(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b'\n', body);
    std::iter::from_fn(move || {
        if start > body.len() {
            return None;
        }
        let end = ends.next().unwrap_or(body.len());
        let line = &body[start..end];
        start = end + 1;
        Some(line)
    })
}

/// Why a pack could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("archive: {0}")]
    Archive(String),
    #[error("pack: {0}")]
    Malformed(String),
    #[error("writing the pack: {0}")]
    Io(#[from] std::io::Error),
    /// The input itself failed (not its contents): a directory, an I/O error.
    #[error("reading the pack: {0}")]
    Unreadable(String),
}

/// The members of a pack other than the manifest and its signature, in archive order.
pub struct Members(pub Vec<(String, Vec<u8>)>);

impl Members {
    /// The manifest's `files` list for these members.
    pub fn digests(&self) -> Vec<FileDigest> {
        self.0
            .iter()
            .map(|(name, bytes)| FileDigest {
                name: name.clone(),
                size: bytes.len() as u64,
                sha256: sha256_hex(bytes),
            })
            .collect()
    }
}

/// Writes the archive: manifest, signature, then the members as given.
pub fn write_tar(
    out: impl Write,
    mtime: u64,
    manifest_json: &[u8],
    signature: &ManifestSignature,
    members: &Members,
) -> Result<(), PackError> {
    let sig = serde_json::to_vec(signature).map_err(|e| PackError::Malformed(e.to_string()))?;
    let all = [(MANIFEST, manifest_json), (MANIFEST_SIG, &sig[..])]
        .into_iter()
        .chain(members.0.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
    write_members(out, mtime, all)
}

/// Writes members as given (name, bytes), in order, as a ustar archive of regular files.
fn write_members<'a>(
    out: impl Write,
    mtime: u64,
    members: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<(), PackError> {
    let mut tar = tar::Builder::new(out);
    for (name, bytes) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, bytes)?;
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

/// Reads every member of an archive, in order. Only regular files with relative names are
/// accepted; a truncated or damaged archive is an [`PackError::Archive`] error. The archive
/// must end with its end-of-archive marker (two zero blocks) followed by nothing but zeros, so
/// a pack cut anywhere, even right after its last member, is refused.
pub fn read_tar(input: impl Read) -> Result<Vec<(String, Vec<u8>)>, PackError> {
    read_tar_sized(input, None)
}

/// [`read_tar`] of an input known to be `len` bytes long (a file): no member can hold more
/// than what is left of it, so each is read into one buffer of its size (without `len`, a
/// buffer grows as the bytes arrive, the archive's claim being untrusted).
pub fn read_tar_sized(
    input: impl Read,
    len: Option<u64>,
) -> Result<Vec<(String, Vec<u8>)>, PackError> {
    let input_error = std::rc::Rc::new(std::cell::RefCell::new(None));
    // tar reports both a failing input and a malformed archive as I/O errors: tell them apart
    // by whether the input itself failed.
    let bad = |e: std::io::Error| match input_error.borrow().as_ref() {
        Some(cause) => PackError::Unreadable(format!("{cause}")),
        None => PackError::Archive(e.to_string()),
    };
    let mut archive = tar::Archive::new(Tracking {
        inner: input,
        read: 0,
        zero_run: 0,
        error: input_error.clone(),
    });
    let mut members = Vec::new();
    let mut end_of_members = 0u64;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if members.len() >= MAX_MEMBERS {
            return Err(PackError::Archive("too many members".into()));
        }
        let name = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| PackError::Archive("a member name is not UTF-8".into()))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(PackError::Archive(format!(
                "member {name:?} is not a regular file"
            )));
        }
        let size = entry.size();
        if size > MAX_MEMBER_BYTES {
            return Err(PackError::Archive(format!(
                "member {name:?} is too large ({size} bytes)"
            )));
        }
        end_of_members = entry.raw_file_position() + size.div_ceil(512) * 512;
        // The size is the archive's claim: grow as bytes actually arrive, unless what is left
        // of the input bounds it.
        let room = len.map_or(1 << 20, |len| len.saturating_sub(entry.raw_file_position()));
        let mut bytes = Vec::with_capacity(size.min(room) as usize);
        entry.read_to_end(&mut bytes).map_err(bad)?;
        if bytes.len() as u64 != size {
            return Err(PackError::Archive(format!("member {name:?} is truncated")));
        }
        members.push((name, bytes));
    }
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(bad)?;
    let trailer = rest.read.saturating_sub(end_of_members);
    if trailer < 1024 || rest.zero_run < trailer {
        return Err(PackError::Archive(if rest.zero_run < trailer {
            "data after the end of the archive".into()
        } else {
            "the archive ends without its end-of-archive marker (truncated)".into()
        }));
    }
    Ok(members)
}

/// Counts the bytes read and how many of the last of them were zero.
struct Tracking<R> {
    inner: R,
    read: u64,
    zero_run: u64,
    /// The input's own read error, if it failed.
    error: std::rc::Rc<std::cell::RefCell<Option<std::io::Error>>>,
}

impl<R: Read> Read for Tracking<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                let copy = std::io::Error::new(e.kind(), e.to_string());
                *self.error.borrow_mut() = Some(copy);
                return Err(e);
            }
        };
        self.read += n as u64;
        match buf[..n].iter().rposition(|&b| b != 0) {
            Some(last) => self.zero_run = (n - 1 - last) as u64,
            None => self.zero_run += n as u64,
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_lines_parse_strictly() {
        let text = b"0 {\"a\":1}\n7 {}\n";
        let lines: Vec<_> = entry_lines(text).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].1.as_ref().unwrap(), &(7, &b"{}"[..]));
        use EntryLineError::*;
        for (bad, why) in [
            (&b"x {}\n"[..], IndexNotCanonical),
            (b"01 {}\n", IndexNotCanonical),
            (b"{}\n", NoSpace),
            (b" {}\n", IndexNotCanonical),
            (b"-1 {}\n", IndexNotCanonical),
        ] {
            assert_eq!(entry_lines(bad).next().unwrap().1, Err(why), "{bad:?}");
        }
        assert_eq!(entry_lines(b"").count(), 0);
        let mut out = Vec::new();
        push_entry_line(&mut out, 12, b"{}").unwrap();
        assert_eq!(out, b"12 {}\n");
        assert!(push_entry_line(&mut out, 1, b"a\nb").is_err());
    }

    #[test]
    fn lines_are_split_as_split_would() {
        for body in [
            &b""[..],
            b"a",
            b"\n",
            b"a\nb",
            b"a\n",
            b"\na",
            b"a\n\nb\n\n",
            b"ab\ncd",
        ] {
            let split: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
            assert_eq!(lines_of(body).collect::<Vec<_>>(), split, "{body:?}");
        }
    }

    #[test]
    fn tar_roundtrip_and_truncation() {
        let members = Members(vec![
            (TRUST.into(), b"{}".to_vec()),
            (ENTRIES.into(), b"0 {}\n".to_vec()),
        ]);
        let sig = ManifestSignature {
            payload_type: MANIFEST_PAYLOAD_TYPE.into(),
            key: "k".into(),
            sig: "s".into(),
        };
        let mut out = Vec::new();
        write_tar(&mut out, 0, b"{\"m\":1}", &sig, &members).unwrap();
        let read = read_tar(&out[..]).unwrap();
        let names: Vec<_> = read.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [MANIFEST, MANIFEST_SIG, TRUST, ENTRIES]);
        assert_eq!(read[3].1, b"0 {}\n");
        for cut in [100, 600, 1100, 1600, out.len() - 1024, out.len() - 1] {
            assert!(read_tar(&out[..cut]).is_err(), "cut at {cut}");
        }
        let mut padded = out.clone();
        padded.extend_from_slice(&[0; 9216]); // GNU tar pads to 10 KiB records
        assert_eq!(read_tar(&padded[..]).unwrap().len(), 4);
        // A header claiming a huge member, with no data: refused, not an allocation abort.
        let mut h = tar::Header::new_ustar();
        h.set_size(15 << 30);
        h.set_mode(0o644);
        h.set_path("entries.txt").unwrap();
        h.set_cksum();
        let mut claim = h.as_bytes().to_vec();
        claim.extend_from_slice(&[0; 1024]);
        assert!(matches!(read_tar(&claim[..]), Err(PackError::Archive(_))));
        let mut trailing = out.clone();
        trailing.extend_from_slice(b"more");
        assert!(read_tar(&trailing[..]).is_err());
        assert_eq!(members.digests()[1].size, 5);
        assert!(is_checkpoint_name(&checkpoint_name(12)));
        for bad in [
            "checkpoints/12.note",
            "checkpoints/00001x.note",
            "checkpoints/000001",
            "x",
        ] {
            assert!(!is_member_name(bad), "{bad}");
        }
    }
}
