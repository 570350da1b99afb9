//! Durable, append-only storage of log entries.
//!
//! One file, `entries`, begins with the 8-byte magic `LAPTLOG1` followed by records
//!
//! ```text
//! u32 big-endian length ‖ entry bytes ‖ SHA-256(0x00 ‖ entry)   (the RFC 6962 leaf hash)
//! ```
//!
//! An append writes a whole batch with one `write` and makes it durable with one `fdatasync`
//! before returning (group commit: concurrent callers share the sync). On open, records are
//! re-read and re-hashed, streaming (memory does not grow with the file). A torn tail — the
//! unsynced end of a batch cut short by a crash — is truncated; those entries were never
//! acknowledged, so nothing that was relied on is lost. A damaged record followed by intact
//! ones is not a torn tail: opening fails rather than silently dropping acknowledged entries.
//! The latest signed checkpoint is kept next to the entries (`checkpoint`, replaced
//! atomically) so that a log shorter than, or different from, what was already published is
//! detected at start-up. Every checkpoint is also appended to `checkpoints` (the history audit
//! packs draw on), each as its byte length in decimal, a newline, then the note; an incomplete
//! last record (a crash mid-write) is ignored.
//!
//! The Merkle tree's node hashes and each entry's offset are *derived* data, kept in two more
//! files (`tree`, `offsets`; see `derived`) so that an open log needs about 0.25 bytes of
//! memory per entry instead of about 72: only the levels from 8 up and the right edge of the
//! tree stay in memory. They are never fsynced and never trusted: every open recomputes them
//! from the entries and rewrites what differs, and the saved checkpoint's root is then checked
//! against the tree (`lap-evidence`). Readers see the tree through [`LogStore::with_tree`]: a
//! [`TreeView`] whose look-ups of old nodes are positional reads, so they may fail with I/O
//! errors; the writer's hot path (a batch's root and audit paths) never reads the files.
//!
//! A writer that must sign a tree head *before* its entries are durable (batched evidence:
//! sign, then write, then release) first [`LogStore::stage`]s the batch — the root and every
//! audit path of the tree with the batch appended, computed without the batch becoming
//! visible — and then [`LogStore::append_staged`]s it. Readers of the store (proofs, entries)
//! only ever see entries that are durable.

use crate::derived::{Derived, FileError, Files, Place, Rebuild};
use crate::merkle::{
    edge_from_nodes, empty_root, leaf_hash, node_hash, split, subtree, Hash, Nodes, RangeError,
};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

const MAGIC: &[u8; 8] = b"LAPTLOG1";
/// Largest entry accepted (C2SP tiles bound entries to 64 KiB; receipts are far smaller).
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// Largest record: length, entry, leaf hash.
const MAX_RECORD_BYTES: usize = 4 + MAX_ENTRY_BYTES + 32;
const ENTRIES: &str = "entries";
const CHECKPOINT: &str = "checkpoint";
const HISTORY: &str = "checkpoints";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("log storage I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a LAP log (bad magic)")]
    Magic { path: PathBuf },
    #[error("{path}: record {index} at byte {offset} is damaged and intact records follow it; refusing to truncate acknowledged entries")]
    Corrupt {
        path: PathBuf,
        index: u64,
        offset: u64,
    },
    #[error("{path}: only {intact} intact records but the saved checkpoint covers {covered}; refusing to truncate checkpointed entries")]
    UnderCheckpoint {
        path: PathBuf,
        intact: u64,
        covered: u64,
    },
    #[error("entry of {0} bytes exceeds the {MAX_ENTRY_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("an earlier append failed and could not be rolled back; the log refuses appends until restart")]
    Poisoned,
    #[error("index {index} is not in the log (size {size})")]
    NoSuchEntry { index: u64, size: u64 },
    /// A staged batch no longer fits: the log changed size since it was staged.
    #[error("the batch was staged at index {staged} but the log now holds {size} entries")]
    Stale { staged: u64, size: u64 },
    #[error(transparent)]
    Range(#[from] RangeError),
}

impl From<FileError> for StoreError {
    fn from(e: FileError) -> Self {
        StoreError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// A batch whose place in the tree is computed but which is not written yet
/// ([`LogStore::stage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// Index of the batch's first entry.
    pub first: u64,
    /// Tree size once the batch is appended.
    pub size: u64,
    /// Root of the tree of `size` leaves.
    pub root: Hash,
    /// Leaf hash of each entry, in order.
    pub leaf_hashes: Vec<Hash>,
    /// Audit path of each entry in the tree of `size` leaves (RFC 6962, leaf's sibling first).
    pub paths: Vec<Vec<Hash>>,
}

/// What `open` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub size: u64,
    /// Bytes of torn tail removed (0 after a clean shutdown).
    pub truncated_bytes: u64,
    /// Entries whose derived data (tree nodes, offsets) was missing or differed from what the
    /// entries say and was rewritten (0 after a clean shutdown; the whole log the first time
    /// a log is opened by a version that keeps derived data).
    pub derived_rebuilt: u64,
}

struct State {
    /// The tree's upper levels and right edge, and the open block's offsets.
    derived: Derived,
    /// End of the last durable record.
    end: u64,
}

/// The durable entry store with the Merkle tree over it.
pub struct LogStore {
    dir: PathBuf,
    path: PathBuf,
    writer: Mutex<Option<File>>,
    reader: File,
    files: Files,
    state: RwLock<State>,
}

/// The log's Merkle tree as readers see it ([`LogStore::with_tree`]): durable entries only.
/// Nodes of the upper levels and of the right edge come from memory, older lower ones from
/// the `tree` file, a whole block (16 KB) at a time: the view keeps the last block it read,
/// since an audit path's lower nodes all lie in one block and a multi-leaf proof visits blocks
/// left to right — so a view reads each block at most once per proof, however many of its
/// nodes the proof needs (readers hold the log's state lock meanwhile, which appends wait for).
pub struct TreeView<'a> {
    derived: &'a Derived,
    files: &'a Files,
    /// The last block read: its number and its nodes.
    last: RefCell<Option<(u64, Vec<Hash>)>>,
}

impl Nodes for TreeView<'_> {
    type Error = StoreError;

    fn size(&self) -> u64 {
        self.derived.size()
    }

    fn node(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        match self.derived.node(level, index) {
            Place::Memory(h) => Ok(h),
            Place::Disk { block, at } => {
                let mut last = self.last.borrow_mut();
                if !matches!(&*last, Some((b, _)) if *b == block) {
                    *last = Some((block, self.files.read_nodes(block)?));
                }
                last.as_ref()
                    .and_then(|(_, nodes)| nodes.get(at))
                    .copied()
                    .ok_or_else(|| self.absent(level, index))
            }
            Place::Absent => Err(self.absent(level, index)),
        }
    }
}

impl TreeView<'_> {
    fn absent(&self, level: u32, index: u64) -> StoreError {
        RangeError::Index {
            index: index << level,
            size: self.derived.size(),
        }
        .into()
    }
}

impl TreeView<'_> {
    pub fn size(&self) -> u64 {
        Nodes::size(self)
    }

    /// Root hash of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, StoreError> {
        Nodes::root(self, size)
    }

    /// Leaf hash of entry `index`.
    pub fn leaf(&self, index: u64) -> Result<Hash, StoreError> {
        Nodes::leaf(self, index)
    }

    /// RFC 6962 audit path for leaf `index` in the tree of the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        Nodes::inclusion_proof(self, index, size)
    }

    /// [`Nodes::multi_proof`] of `indices` in the tree of the first `size` leaves.
    pub fn multi_proof(&self, indices: &[u64], size: u64) -> Result<Vec<Hash>, StoreError> {
        Nodes::multi_proof(self, indices, size)
    }

    /// RFC 6962 consistency proof between the trees of sizes `old` and `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        Nodes::consistency_proof(self, old, new)
    }
}

/// The tree with a staged batch appended, from what memory holds: the log's right edge (the
/// frontier of its size: the roots of the complete subtrees, one per set bit of the size,
/// that tile it) and the nodes computed from the batch. Every node the batch's root and audit
/// paths need is one or the other — a subtree that ends at or before the batch's first leaf
/// and is a node of such a root or path is a frontier subtree — so this view never reads the
/// derived files, and a request for any other node is an error, not a disk read.
struct Extended {
    first: u64,
    size: u64,
    /// `frontier[k]`: node `(first >> k) - 1` of level `k` when bit `k` of `first` is set.
    frontier: Vec<Option<Hash>>,
    /// `new[k][j]`: node `(first >> k) + j` of level `k`.
    new: Vec<Vec<Hash>>,
    /// The root of every right edge `[lo, size)` that is not a complete subtree, by `lo`
    /// (increasing): computed once, asked for by the root and by every audit path.
    edges: Vec<(u64, Hash)>,
}

impl Nodes for Extended {
    type Error = RangeError;

    fn size(&self) -> u64 {
        self.size
    }

    fn node(&self, level: u32, index: u64) -> Result<Hash, RangeError> {
        let start = self.first >> level;
        let found = if index >= start {
            self.new
                .get(level as usize)
                .and_then(|l| l.get((index - start) as usize))
                .copied()
        } else if index + 1 == start {
            self.frontier.get(level as usize).copied().flatten()
        } else {
            None
        };
        found.ok_or(RangeError::Index {
            index: index << level,
            size: self.size,
        })
    }

    fn edge(&self, lo: u64, hi: u64) -> Result<Hash, RangeError> {
        match self.edges.binary_search_by_key(&lo, |&(l, _)| l) {
            Ok(i) if hi == self.size => Ok(self.edges[i].1),
            _ => edge_from_nodes(self, lo, hi),
        }
    }
}

impl Extended {
    fn new(base: &TreeView<'_>, leaves: Vec<Hash>) -> Result<Self, StoreError> {
        let first = base.size();
        let size = first + leaves.len() as u64;
        let frontier = (0..64)
            .map(|k| {
                let bit = (first >> k) & 1 == 1;
                bit.then(|| base.node(k, (first >> k) - 1)).transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut ext = Self {
            first,
            size,
            frontier,
            new: vec![leaves],
            edges: Vec::new(),
        };
        // Each level's nodes that end after `first`, from the level below.
        for k in 0.. {
            let (lo, hi) = (first >> (k + 1), size >> (k + 1));
            if lo >= hi {
                break;
            }
            let level = (lo..hi)
                .map(|i| Ok(node_hash(&ext.node(k, 2 * i)?, &ext.node(k, 2 * i + 1)?)))
                .collect::<Result<Vec<_>, RangeError>>()?;
            ext.new.push(level);
        }
        // The right edges, from the smallest: each is its complete left part and the next.
        let mut starts = Vec::new();
        let mut lo = 0;
        while size > lo && !(size - lo).is_power_of_two() {
            starts.push(lo);
            lo += split(size - lo);
        }
        let mut right = if size > lo {
            subtree(&ext, lo, size)?
        } else {
            empty_root()
        };
        for &lo in starts.iter().rev() {
            right = node_hash(&subtree(&ext, lo, lo + split(size - lo))?, &right);
            ext.edges.push((lo, right));
        }
        ext.edges.reverse();
        Ok(ext)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, recovering from a crash if needed.
    pub fn open(dir: &Path) -> Result<(Self, Recovery), StoreError> {
        Self::open_keeping(dir, 0)
    }

    /// [`LogStore::open`], knowing that the first `keep` entries were acknowledged and
    /// checkpointed (the caller verified the saved checkpoint): a torn-looking tail that would
    /// leave fewer records is damage, and nothing is truncated.
    pub fn open_keeping(dir: &Path, keep: u64) -> Result<(Self, Recovery), StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        repair_history(dir)?;
        let path = dir.join(ENTRIES);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        let total = file.metadata().map_err(io(&path))?.len();
        let mut head = vec![0u8; (total as usize).min(MAGIC.len())];
        file.read_exact_at(&mut head, 0).map_err(io(&path))?;
        if head.as_slice() != MAGIC {
            // An empty file, or a crash while writing the magic itself (a shorter prefix).
            if total < MAGIC.len() as u64 && MAGIC.starts_with(&head) {
                file.set_len(0).map_err(io(&path))?;
                file.seek(SeekFrom::Start(0)).map_err(io(&path))?;
                file.write_all(MAGIC).map_err(io(&path))?;
                file.sync_all().map_err(io(&path))?;
                sync_dir(dir)?;
            } else {
                return Err(StoreError::Magic { path });
            }
        }
        let total = total.max(MAGIC.len() as u64);

        let files = Files::open(dir)?;
        let mut rebuild = Rebuild::new(&files);
        let scan = scan(&file, total, &path, |offset, _, hash| {
            // The leaf hash was checked against the entry by `scan`.
            Ok(rebuild.push(hash, offset)?)
        })?;
        if let Some((index, offset)) = scan.corrupt_at {
            return Err(StoreError::Corrupt {
                path,
                index,
                offset,
            });
        }
        let (derived, derived_rebuilt) = rebuild.finish()?;
        let pos = scan.end;
        // A torn tail holds only unacknowledged entries, and those are never checkpointed: a
        // log whose intact records stop below its checkpoint is damaged, not torn.
        if derived.size() < keep {
            return Err(StoreError::UnderCheckpoint {
                path,
                intact: derived.size(),
                covered: keep,
            });
        }
        let truncated = total - pos;
        if truncated > 0 {
            file.set_len(pos).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }
        file.seek(SeekFrom::Start(pos)).map_err(io(&path))?;
        let reader = File::open(&path).map_err(io(&path))?;
        let recovery = Recovery {
            size: derived.size(),
            truncated_bytes: truncated,
            derived_rebuilt,
        };
        Ok((
            Self {
                dir: dir.to_path_buf(),
                path,
                writer: Mutex::new(Some(file)),
                reader,
                files,
                state: RwLock::new(State { derived, end: pos }),
            },
            recovery,
        ))
    }

    pub fn size(&self) -> u64 {
        self.state.read().map_or(0, |s| s.derived.size())
    }

    /// Runs `f` on a consistent view of the tree of the durable entries.
    pub fn with_tree<T>(&self, f: impl FnOnce(&TreeView<'_>) -> T) -> T {
        let view = |st: &State| {
            f(&TreeView {
                derived: &st.derived,
                files: &self.files,
                last: RefCell::new(None),
            })
        };
        match self.state.read() {
            Ok(s) => view(&s),
            Err(poisoned) => view(&poisoned.into_inner()),
        }
    }

    /// Appends a batch durably; returns the index of its first entry.
    pub fn append(&self, entries: &[&[u8]]) -> Result<u64, StoreError> {
        let hashes: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
        self.write_batch(entries, &hashes, None)
    }

    /// Computes where `entries` would go — the index of the first, the root of the tree with
    /// all of them appended and each one's audit path in that tree — without writing them
    /// and without readers ever seeing them. Write them with [`LogStore::append_staged`]; a
    /// staged batch that is dropped leaves no trace. Everything this needs of the log's tree
    /// is in memory (its right edge): staging never reads the derived files.
    pub fn stage(&self, entries: &[&[u8]]) -> Result<Staged, StoreError> {
        if let Some(e) = entries.iter().find(|e| e.len() > MAX_ENTRY_BYTES) {
            return Err(StoreError::TooLarge(e.len()));
        }
        let leaf_hashes: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
        let st = self.state.read().map_err(|_| StoreError::Poisoned)?;
        let base = TreeView {
            derived: &st.derived,
            files: &self.files,
            last: RefCell::new(None),
        };
        let mut ext = Extended::new(&base, leaf_hashes)?;
        let (first, size) = (ext.first, ext.size);
        let root = ext.root(size)?;
        let paths = (first..size)
            .map(|i| ext.inclusion_proof(i, size))
            .collect::<Result<Vec<_>, _>>()?;
        let leaf_hashes = std::mem::take(&mut ext.new[0]);
        Ok(Staged {
            first,
            size,
            root,
            leaf_hashes,
            paths,
        })
    }

    /// Appends a batch staged by [`LogStore::stage`] durably (one write, one `fdatasync`);
    /// refuses it if the log changed size since ([`StoreError::Stale`]). `entries` must be
    /// the ones staged.
    pub fn append_staged(&self, staged: &Staged, entries: &[&[u8]]) -> Result<u64, StoreError> {
        if entries.len() != staged.leaf_hashes.len() {
            return Err(StoreError::Stale {
                staged: staged.first,
                size: self.size(),
            });
        }
        self.write_batch(entries, &staged.leaf_hashes, Some(staged.first))
    }

    /// Forgets every entry at and after `size`, durably (used at start-up to discard a tail
    /// that was never acknowledged). A failure stops all appends until restart.
    pub fn truncate_to(&self, size: u64) -> Result<(), StoreError> {
        let mut guard = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let file = guard.as_mut().ok_or(StoreError::Poisoned)?;
        let mut st = self.state.write().map_err(|_| StoreError::Poisoned)?;
        if size >= st.derived.size() {
            return Ok(());
        }
        // Everything that can fail before the first change.
        let offset = self.offset(&st.derived, size)?;
        let derived = st.derived.truncated(size, &self.files)?;
        let cut = file
            .set_len(offset)
            .and_then(|()| file.sync_all())
            .and_then(|()| file.seek(SeekFrom::Start(offset)).map(|_| ()));
        if let Err(e) = cut {
            *guard = None;
            return Err(io(&self.path)(e));
        }
        let blocks = derived.blocks();
        st.derived = derived;
        st.end = offset;
        if let Err(e) = self.files.truncate(blocks) {
            *guard = None;
            return Err(e.into());
        }
        Ok(())
    }

    fn write_batch(
        &self,
        entries: &[&[u8]],
        hashes: &[Hash],
        expect_first: Option<u64>,
    ) -> Result<u64, StoreError> {
        if let Some(e) = entries.iter().find(|e| e.len() > MAX_ENTRY_BYTES) {
            return Err(StoreError::TooLarge(e.len()));
        }
        let mut guard = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let file = guard.as_mut().ok_or(StoreError::Poisoned)?;
        // Only this thread (holding the writer) changes the state, so this copy stays current.
        let (start_end, size, blocks, mut open) = {
            let st = self.state.read().map_err(|_| StoreError::Poisoned)?;
            (
                st.end,
                st.derived.size(),
                st.derived.blocks(),
                st.derived.open().clone(),
            )
        };
        if let Some(staged) = expect_first.filter(|&f| f != size) {
            return Err(StoreError::Stale { staged, size });
        }

        let mut buf = Vec::with_capacity(entries.iter().map(|e| e.len() + 36).sum());
        let mut completed = Vec::new();
        for (e, h) in entries.iter().zip(hashes) {
            completed.extend(open.push(*h, start_end + buf.len() as u64));
            buf.extend_from_slice(&(e.len() as u32).to_be_bytes());
            buf.extend_from_slice(e);
            buf.extend_from_slice(h);
        }
        // The blocks this batch completes are written before it is acknowledged, so a failure
        // to write them fails the append (derived invariant 2).
        let written = file
            .write_all(&buf)
            .map_err(io(&self.path))
            .and_then(|()| Ok(self.files.write(blocks, &completed)?))
            .and_then(|()| file.sync_data().map_err(io(&self.path)));
        if let Err(e) = written {
            // Roll the files back so the next batch starts at a record (and block) boundary;
            // if that fails too, stop accepting appends rather than risk interleaving garbage.
            let rolled = file
                .set_len(start_end)
                .and_then(|()| file.seek(SeekFrom::Start(start_end)).map(|_| ()))
                .is_ok()
                && self.files.truncate(blocks).is_ok();
            if !rolled {
                *guard = None;
            }
            return Err(e);
        }
        let mut st = self.state.write().map_err(|_| StoreError::Poisoned)?;
        let first = st.derived.size();
        st.derived.commit(open, &completed);
        st.end = start_end + buf.len() as u64;
        Ok(first)
    }

    /// Byte offset of entry `index`'s record in `entries`.
    fn offset(&self, derived: &Derived, index: u64) -> Result<u64, StoreError> {
        match derived.offset(index) {
            Place::Memory(o) => Ok(o),
            Place::Disk { block, at } => Ok(self.files.read_offset(block, at)?),
            Place::Absent => Err(StoreError::NoSuchEntry {
                index,
                size: derived.size(),
            }),
        }
    }

    /// Reads entry `index` back from disk.
    pub fn read(&self, index: u64) -> Result<Vec<u8>, StoreError> {
        let offset = {
            let st = self.state.read().map_err(|_| StoreError::Poisoned)?;
            self.offset(&st.derived, index)?
        };
        let mut len = [0u8; 4];
        self.reader
            .read_exact_at(&mut len, offset)
            .map_err(io(&self.path))?;
        let mut data = vec![0u8; u32::from_be_bytes(len) as usize];
        self.reader
            .read_exact_at(&mut data, offset + 4)
            .map_err(io(&self.path))?;
        Ok(data)
    }

    /// The latest saved checkpoint note, if any.
    pub fn load_checkpoint(&self) -> Result<Option<String>, StoreError> {
        read_checkpoint(&self.dir)
    }

    /// Every checkpoint saved so far, oldest first.
    pub fn checkpoint_history(&self) -> Result<Vec<String>, StoreError> {
        read_history(&self.dir)
    }

    /// Appends the checkpoint to the history and replaces the latest one, both durably.
    pub fn save_checkpoint(&self, note: &str) -> Result<(), StoreError> {
        self.append_history(note)?;
        self.replace_checkpoint(note)
    }

    /// Appends the checkpoint to the history, durably (one `fdatasync`). Once this returns,
    /// the checkpoint is durable: at start-up the newer of `checkpoint` and the history's last
    /// record is the one the log must continue (`lap_evidence::durable_checkpoint`), so the
    /// `checkpoint` file may be replaced later ([`LogStore::replace_checkpoint`]).
    pub fn append_history(&self, note: &str) -> Result<(), StoreError> {
        let hist = self.dir.join(HISTORY);
        let mut h = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&hist)
            .map_err(io(&hist))?;
        let before = h.metadata().map_err(io(&hist))?.len();
        let written = h
            .write_all(format!("{}\n{note}", note.len()).as_bytes())
            .and_then(|()| h.sync_data());
        if let Err(e) = written {
            // Cut a partial record so the next append starts at a record boundary (otherwise
            // the repair at the next start would drop every record after it).
            let _ = h.set_len(before);
            return Err(io(&hist)(e));
        }
        Ok(())
    }

    /// Replaces the `checkpoint` file, durably and atomically (written aside, synced, renamed,
    /// directory synced): it never holds a partial note.
    pub fn replace_checkpoint(&self, note: &str) -> Result<(), StoreError> {
        let tmp = self.dir.join("checkpoint.tmp");
        let dst = self.dir.join(CHECKPOINT);
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(note.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
        sync_dir(&self.dir)
    }
}

/// A log directory read without changing it (for auditors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyLog {
    pub entries: Vec<Vec<u8>>,
    /// The RFC 6962 leaf hash of each entry, as stored with it and checked against its bytes
    /// when read (so `Tree::from_leaf_hashes` need not hash the entries again).
    pub leaf_hashes: Vec<Hash>,
    /// Bytes after the last intact record that look like a torn tail (never acknowledged).
    pub torn_bytes: u64,
    /// Index and byte offset of a damaged record followed by intact ones, if any.
    pub corrupt_at: Option<(u64, u64)>,
    pub checkpoint: Option<String>,
    /// Every checkpoint saved, oldest first.
    pub checkpoints: Vec<String>,
}

/// Reads the checkpoint history of a log directory (empty when there is none yet).
pub fn read_history(dir: &Path) -> Result<Vec<String>, StoreError> {
    let path = dir.join(HISTORY);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(parse_history(&bytes).0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Cuts an incomplete last history record (a crash mid-append) so later appends stay readable.
fn repair_history(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(HISTORY);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&path)(e)),
    };
    let valid = parse_history(&bytes).1;
    if valid < bytes.len() {
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        f.set_len(valid as u64).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
    }
    Ok(())
}

/// The notes of a history file and the length of its intact prefix.
fn parse_history(bytes: &[u8]) -> (Vec<String>, usize) {
    let mut notes = Vec::new();
    let mut rest = bytes;
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let Some(len) = std::str::from_utf8(&rest[..nl])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        let Some(note) = rest.get(nl + 1..nl + 1 + len) else {
            break; // torn last record
        };
        match std::str::from_utf8(note) {
            Ok(n) => notes.push(n.to_string()),
            Err(_) => break,
        }
        rest = &rest[nl + 1 + len..];
    }
    (notes, bytes.len() - rest.len())
}

/// Reads a log directory read-only: nothing is truncated or repaired (the derived files are
/// not read either).
pub fn read_only(dir: &Path) -> Result<ReadOnlyLog, StoreError> {
    let log = read_only_in_place(dir)?;
    Ok(ReadOnlyLog {
        entries: log.entries().map(<[u8]>::to_vec).collect(),
        leaf_hashes: log.leaf_hashes,
        torn_bytes: log.torn_bytes,
        corrupt_at: log.corrupt_at,
        checkpoint: log.checkpoint,
        checkpoints: log.checkpoints,
    })
}

/// A log directory read without changing it, its entries left where they are in the
/// `entries` file as read: [`ReadOnlyLog`] without a copy of each entry (a verifier of a
/// million entries holds the file once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyRecords {
    bytes: Vec<u8>,
    /// Where each intact record's entry is in `bytes`: (offset, length).
    spans: Vec<(usize, usize)>,
    /// As [`ReadOnlyLog::leaf_hashes`].
    pub leaf_hashes: Vec<Hash>,
    pub torn_bytes: u64,
    pub corrupt_at: Option<(u64, u64)>,
    pub checkpoint: Option<String>,
    pub checkpoints: Vec<String>,
}

impl ReadOnlyRecords {
    /// How many intact entries.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The intact entries, in log order.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.spans
            .iter()
            .map(|&(offset, len)| &self.bytes[offset..offset + len])
    }
}

/// [`read_only`] without copying the entries out of the file's bytes.
pub fn read_only_in_place(dir: &Path) -> Result<ReadOnlyRecords, StoreError> {
    let path = dir.join(ENTRIES);
    let file = File::open(&path).map_err(io(&path))?;
    let total = file.metadata().map_err(io(&path))?.len();
    let mut head = [0u8; MAGIC.len()];
    if total < MAGIC.len() as u64 || file.read_exact_at(&mut head, 0).is_err() || &head != MAGIC {
        return Err(StoreError::Magic { path });
    }
    let mut spans = Vec::new();
    let mut leaf_hashes = Vec::new();
    let scan = scan(&file, total, &path, |pos, data, hash| {
        spans.push((pos as usize + 4, data.len()));
        leaf_hashes.push(hash);
        Ok(())
    })?;
    // The intact records, as read (the scan read them through a window).
    let mut bytes = vec![0u8; total as usize];
    file.read_exact_at(&mut bytes, 0).map_err(io(&path))?;
    let corrupt_at = scan.corrupt_at;
    let torn_bytes = if corrupt_at.is_some() {
        0
    } else {
        total - scan.end
    };
    Ok(ReadOnlyRecords {
        bytes,
        spans,
        leaf_hashes,
        torn_bytes,
        corrupt_at,
        checkpoint: read_checkpoint(dir)?,
        checkpoints: read_history(dir)?,
    })
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

enum Parsed {
    Ok { data_len: usize, hash: Hash },
    End,
    Incomplete,
    Damaged { record_len: usize },
    Impossible,
}

/// Where the intact records of an `entries` file end, and the index and offset of a damaged
/// record that cannot be a torn tail (intact records after it, or a length no append writes).
struct Scan {
    end: u64,
    corrupt_at: Option<(u64, u64)>,
}

/// A file read front to back through a window of about a megabyte, so that scanning a log of
/// any size holds one window in memory.
struct Window<'f> {
    file: &'f File,
    len: u64,
    /// File offset of `buf[0]`.
    base: u64,
    buf: Vec<u8>,
}

impl Window<'_> {
    const CHUNK: usize = 1 << 20;

    /// The bytes from `pos` on: at least `MAX_RECORD_BYTES` of them unless the file ends
    /// first. `pos` is at most the file's length.
    fn at(&mut self, pos: u64) -> std::io::Result<&[u8]> {
        let buffered_end = self.base + self.buf.len() as u64;
        let short = pos + MAX_RECORD_BYTES as u64 > buffered_end && buffered_end < self.len;
        if pos < self.base || short {
            let n = (self.len - pos).min(Self::CHUNK.max(MAX_RECORD_BYTES) as u64) as usize;
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, pos)?;
            self.base = pos;
        }
        Ok(&self.buf[(pos - self.base) as usize..])
    }
}

/// Scans the records of an `entries` file of `len` bytes (magic already checked), calling
/// `record(offset, entry, leaf hash)` for each intact one, in order.
fn scan(
    file: &File,
    len: u64,
    path: &Path,
    mut record: impl FnMut(u64, &[u8], Hash) -> Result<(), StoreError>,
) -> Result<Scan, StoreError> {
    let mut window = Window {
        file,
        len,
        base: 0,
        buf: Vec::new(),
    };
    let mut pos = MAGIC.len() as u64;
    let mut count = 0u64;
    let mut corrupt_at = None;
    loop {
        let bytes = window.at(pos).map_err(io(path))?;
        match parse_record(bytes) {
            Parsed::Ok { data_len, hash } => {
                record(pos, &bytes[4..4 + data_len], hash)?;
                count += 1;
                pos += (4 + data_len + 32) as u64;
            }
            Parsed::End | Parsed::Incomplete => break,
            Parsed::Damaged { record_len } => {
                let next = pos + record_len as u64;
                if next < len
                    && matches!(
                        parse_record(window.at(next).map_err(io(path))?),
                        Parsed::Ok { .. }
                    )
                {
                    corrupt_at = Some((count, pos));
                }
                break;
            }
            Parsed::Impossible => {
                corrupt_at = Some((count, pos));
                break;
            }
        }
    }
    Ok(Scan {
        end: pos,
        corrupt_at,
    })
}

/// The latest saved checkpoint note of the log in `dir`, if any (not verified here).
pub fn read_checkpoint(dir: &Path) -> Result<Option<String>, StoreError> {
    let p = dir.join(CHECKPOINT);
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&p)(e)),
    }
}

fn parse_record(b: &[u8]) -> Parsed {
    if b.is_empty() {
        return Parsed::End;
    }
    if b.len() < 4 {
        return Parsed::Incomplete;
    }
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    if len > MAX_ENTRY_BYTES {
        // No append ever writes such a length: damage, whatever follows.
        return Parsed::Impossible;
    }
    let record_len = 4 + len + 32;
    if b.len() < record_len {
        return Parsed::Incomplete;
    }
    let data = &b[4..4 + len];
    let stored: Hash = match b[4 + len..record_len].try_into() {
        Ok(h) => h,
        Err(_) => return Parsed::Incomplete,
    };
    if leaf_hash(data) != stored {
        return Parsed::Damaged { record_len };
    }
    Parsed::Ok {
        data_len: len,
        hash: stored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derived::{BLOCK, OFFSETS_FILE, TREE_FILE};
    use crate::merkle::Tree;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lap-tlog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn append_reopen_read() {
        let dir = tmp("reopen");
        let (s, r) = LogStore::open(&dir).unwrap();
        assert_eq!(r.size, 0);
        assert_eq!(s.append(&[b"a", b"bb"]).unwrap(), 0);
        assert_eq!(s.append(&[b"ccc"]).unwrap(), 2);
        let root = s.with_tree(|t| t.root(3).unwrap());
        drop(s);
        let (s, r) = LogStore::open(&dir).unwrap();
        assert_eq!(
            r,
            Recovery {
                size: 3,
                truncated_bytes: 0,
                derived_rebuilt: 0,
            }
        );
        assert_eq!(s.read(1).unwrap(), b"bb");
        assert_eq!(s.with_tree(|t| t.root(3).unwrap()), root);
        assert!(s.read(3).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_staged_batch_is_invisible_until_appended() {
        let dir = tmp("staged");
        let (s, _) = LogStore::open(&dir).unwrap();
        s.append(&[b"a", b"b", b"c"]).unwrap();
        let batch: [&[u8]; 3] = [b"d", b"e", b"f"];
        let staged = s.stage(&batch).unwrap();
        // Nothing changed for readers.
        assert_eq!(s.size(), 3);
        assert!(s.read(3).is_err());
        assert!(s.with_tree(|t| t.root(4)).is_err());
        // The staged root and paths are those of the tree with the batch appended.
        let all: Vec<&[u8]> = vec![b"a", b"b", b"c", b"d", b"e", b"f"];
        let full = Tree::from_entries(&all);
        assert_eq!((staged.first, staged.size), (3, 6));
        assert_eq!(staged.root, full.root(6).unwrap());
        for (k, path) in staged.paths.iter().enumerate() {
            let i = 3 + k as u64;
            assert_eq!(path, &full.inclusion_proof(i, 6).unwrap());
            assert!(crate::merkle::verify_inclusion(
                i,
                6,
                &staged.leaf_hashes[k],
                path,
                &staged.root
            ));
        }
        // A dropped stage leaves no trace; staging again gives the same place.
        assert_eq!(s.stage(&batch).unwrap(), staged);
        assert_eq!(s.append_staged(&staged, &batch).unwrap(), 3);
        assert_eq!(s.with_tree(|t| t.root(6).unwrap()), staged.root);
        // A stage that no longer fits the log is refused.
        let late = s.stage(&[b"g"]).unwrap();
        s.append(&[b"h"]).unwrap();
        assert!(matches!(
            s.append_staged(&late, &[b"g"]),
            Err(StoreError::Stale { staged: 6, size: 7 })
        ));
        drop(s);
        let (s, r) = LogStore::open(&dir).unwrap();
        assert_eq!(r.size, 7);
        assert_eq!(s.read(5).unwrap(), b"f");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncate_to_forgets_a_tail_durably() {
        let dir = tmp("truncate");
        let (s, _) = LogStore::open(&dir).unwrap();
        s.append(&[b"one", b"two", b"three", b"four"]).unwrap();
        let root2 = s.with_tree(|t| t.root(2).unwrap());
        s.truncate_to(2).unwrap();
        assert_eq!(s.size(), 2);
        assert!(s.read(2).is_err());
        assert_eq!(s.with_tree(|t| t.root(2).unwrap()), root2);
        s.truncate_to(5).unwrap();
        assert_eq!(s.size(), 2, "truncating beyond the end changes nothing");
        assert_eq!(s.append(&[b"five"]).unwrap(), 2);
        drop(s);
        let (s, r) = LogStore::open(&dir).unwrap();
        assert_eq!((r.size, r.truncated_bytes), (3, 0));
        assert_eq!(s.read(2).unwrap(), b"five");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_tail_is_truncated_at_every_cut() {
        let dir = tmp("torn");
        let (s, _) = LogStore::open(&dir).unwrap();
        s.append(&[b"one", b"two"]).unwrap();
        drop(s);
        let path = dir.join(ENTRIES);
        let good = std::fs::read(&path).unwrap();
        let record = [&(5u32).to_be_bytes()[..], b"three", &leaf_hash(b"three")].concat();
        for cut in 0..record.len() {
            let mut bytes = good.clone();
            bytes.extend_from_slice(&record[..cut]);
            std::fs::write(&path, &bytes).unwrap();
            let (s, r) = LogStore::open(&dir).unwrap();
            assert_eq!(r.size, 2, "cut {cut}");
            assert_eq!(r.truncated_bytes, cut as u64);
            // The log continues cleanly after recovery.
            assert_eq!(s.append(&[b"four"]).unwrap(), 2);
            drop(s);
            std::fs::write(&path, &good).unwrap();
        }
        // A zero-filled tail (file extended, data never written) is torn too.
        let mut bytes = good.clone();
        bytes.extend_from_slice(&[0u8; 100]);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(LogStore::open(&dir).unwrap().1.size, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damage_before_intact_records_refuses_to_open() {
        let dir = tmp("corrupt");
        let (s, _) = LogStore::open(&dir).unwrap();
        s.append(&[b"one", b"two", b"three"]).unwrap();
        drop(s);
        let path = dir.join(ENTRIES);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[MAGIC.len() + 4] ^= 0xff; // first record's data
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            LogStore::open(&dir),
            Err(StoreError::Corrupt { index: 0, .. })
        ));
        std::fs::write(&path, b"NOTALOG!xxxx").unwrap();
        assert!(matches!(
            LogStore::open(&dir),
            Err(StoreError::Magic { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_impossible_length_is_damage_not_a_torn_tail() {
        let dir = tmp("biglen");
        let (s, _) = LogStore::open(&dir).unwrap();
        s.append(&[b"one", b"two", b"three"]).unwrap();
        drop(s);
        // The last record's length field overwritten with a value no append writes.
        let path = dir.join(ENTRIES);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = MAGIC.len() + (4 + 3 + 32) * 2;
        bytes[last..last + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            LogStore::open(&dir),
            Err(StoreError::Corrupt { index: 2, .. })
        ));
        assert_eq!(read_only(&dir).unwrap().corrupt_at.map(|c| c.0), Some(2));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "nothing was truncated"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_under_the_checkpoint_are_never_truncated_as_a_torn_tail() {
        let dir = tmp("undercp");
        let (s, _) = LogStore::open(&dir).unwrap();
        s.append(&[b"one", b"two", b"three"]).unwrap();
        drop(s);
        // The last record cut short: it looks torn, but the caller knows 3 were checkpointed.
        let path = dir.join(ENTRIES);
        let bytes = std::fs::read(&path).unwrap();
        let cut = &bytes[..bytes.len() - 10];
        std::fs::write(&path, cut).unwrap();
        assert!(matches!(
            LogStore::open_keeping(&dir, 3),
            Err(StoreError::UnderCheckpoint {
                intact: 2,
                covered: 3,
                ..
            })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), cut, "nothing was truncated");
        // Without that knowledge it is an ordinary torn tail.
        assert_eq!(LogStore::open(&dir).unwrap().0.size(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_only_reports_without_repairing() {
        let dir = tmp("ro");
        let (s, _) = LogStore::open(&dir).unwrap();
        s.append(&[b"one", b"two", b"three"]).unwrap();
        drop(s);
        let path = dir.join(ENTRIES);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0, 0, 0, 9, b'x']);
        std::fs::write(&path, &bytes).unwrap();
        let ro = read_only(&dir).unwrap();
        assert_eq!(
            ro.entries,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        assert_eq!(ro.torn_bytes, 5);
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was changed");
        bytes[MAGIC.len() + 5] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            read_only(&dir).unwrap().corrupt_at,
            Some((0, MAGIC.len() as u64))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn entries(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("entry {i}").into_bytes()).collect()
    }

    /// Appends `all` in batches of uneven sizes (so that batches straddle blocks).
    fn append_all(s: &LogStore, all: &[Vec<u8>]) {
        let base = s.size();
        let mut i = 0;
        for len in [1, 2, 3, 250, 7, 300, 1, 512].iter().cycle() {
            if i == all.len() {
                return;
            }
            let end = (i + len).min(all.len());
            let refs: Vec<&[u8]> = all[i..end].iter().map(Vec::as_slice).collect();
            assert_eq!(s.append(&refs).unwrap(), base + i as u64);
            i = end;
        }
    }

    /// Everything a reader can ask of the store agrees with an in-memory tree of `all`.
    fn assert_serves(s: &LogStore, all: &[Vec<u8>]) {
        let n = all.len() as u64;
        let full = Tree::from_entries(all);
        assert_eq!(s.size(), n);
        let b = BLOCK;
        let sizes = [0, 1, 2, b - 1, b, b + 1, 2 * b, 3 * b + 5, n - 1, n];
        let sizes: Vec<u64> = sizes.into_iter().filter(|&x| x <= n).collect();
        s.with_tree(|t| {
            assert_eq!(t.size(), n);
            for &size in &sizes {
                assert_eq!(t.root(size).unwrap(), full.root(size).unwrap(), "{size}");
                for &old in &sizes {
                    if old <= size {
                        assert_eq!(
                            t.consistency_proof(old, size).unwrap(),
                            full.consistency_proof(old, size).unwrap()
                        );
                    }
                }
            }
            for i in (0..n).step_by(37).chain([n - 1]) {
                assert_eq!(t.leaf(i).unwrap(), full.leaf(i).unwrap(), "leaf {i}");
                for &size in sizes.iter().filter(|&&size| i < size) {
                    assert_eq!(
                        t.inclusion_proof(i, size).unwrap(),
                        full.inclusion_proof(i, size).unwrap(),
                        "{i} in {size}"
                    );
                }
            }
            let some: Vec<u64> = (0..n).filter(|i| i % 97 == 3).collect();
            assert_eq!(
                t.multi_proof(&some, n).unwrap(),
                full.multi_proof(&some, n).unwrap()
            );
            assert!(matches!(
                t.root(n + 1),
                Err(StoreError::Range(RangeError::Size { .. }))
            ));
        });
        for (i, e) in all.iter().enumerate() {
            assert_eq!(&s.read(i as u64).unwrap(), e, "entry {i}");
        }
        assert!(matches!(s.read(n), Err(StoreError::NoSuchEntry { .. })));
    }

    fn derived_lens(dir: &Path) -> (u64, u64) {
        let len = |name| std::fs::metadata(dir.join(name)).unwrap().len();
        (len(TREE_FILE), len(OFFSETS_FILE))
    }

    #[test]
    fn the_tree_on_disk_serves_what_the_tree_in_memory_would() {
        let dir = tmp("derived");
        let all = entries(1100);
        let (s, _) = LogStore::open(&dir).unwrap();
        for n in [1, 255, 256, 257, 600] {
            let small = tmp(&format!("derived-{n}"));
            let (s, _) = LogStore::open(&small).unwrap();
            append_all(&s, &all[..n]);
            assert_serves(&s, &all[..n]);
            drop(s);
            std::fs::remove_dir_all(&small).unwrap();
        }
        append_all(&s, &all);
        assert_serves(&s, &all);
        // Four complete blocks are on disk, the open one is in memory.
        assert_eq!(derived_lens(&dir), (4 * 510 * 32, 4 * 256 * 8));
        drop(s);
        let (s, r) = LogStore::open(&dir).unwrap();
        assert_eq!((r.size, r.derived_rebuilt), (1100, 0), "nothing to rebuild");
        assert_serves(&s, &all);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn staging_needs_only_what_memory_holds() {
        let dir = tmp("stagemem");
        let all = entries(1100);
        let (s, _) = LogStore::open(&dir).unwrap();
        append_all(&s, &all[..700]);
        // The derived files vanish behind the store's back: proofs of old entries fail…
        for name in [TREE_FILE, OFFSETS_FILE] {
            OpenOptions::new()
                .write(true)
                .open(dir.join(name))
                .unwrap()
                .set_len(0)
                .unwrap();
        }
        assert!(matches!(
            s.with_tree(|t| t.inclusion_proof(3, 700)),
            Err(StoreError::Io { .. })
        ));
        assert!(matches!(s.read(3), Err(StoreError::Io { .. })));
        // …but batches are staged from memory alone, at every alignment.
        let full = Tree::from_entries(&all);
        let mut first = 700;
        for len in [1, 11, 60, 256, 1] {
            let refs: Vec<&[u8]> = all[first..first + len].iter().map(Vec::as_slice).collect();
            let staged = s.stage(&refs).unwrap();
            let size = (first + len) as u64;
            assert_eq!((staged.first, staged.size), (first as u64, size));
            assert_eq!(staged.root, full.root(size).unwrap());
            for (k, path) in staged.paths.iter().enumerate() {
                let i = (first + k) as u64;
                assert_eq!(path, &full.inclusion_proof(i, size).unwrap(), "{i}/{size}");
            }
            assert_eq!(s.append_staged(&staged, &refs).unwrap(), first as u64);
            first += len;
        }
        let empty = s.stage(&[]).unwrap();
        assert_eq!(empty.root, full.root(first as u64).unwrap());
        drop(s);
        // The next open finds the damage and rebuilds the files from the entries.
        let (s, r) = LogStore::open(&dir).unwrap();
        assert_eq!(r.size, first as u64);
        assert!(r.derived_rebuilt >= 2 * BLOCK, "{r:?}");
        assert_serves(&s, &all[..first]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_missing_or_damaged_derived_files_are_rebuilt_from_the_entries() {
        let dir = tmp("rebuild");
        let all = entries(1100);
        let (s, _) = LogStore::open(&dir).unwrap();
        append_all(&s, &all);
        drop(s);
        let good = (
            std::fs::read(dir.join(TREE_FILE)).unwrap(),
            std::fs::read(dir.join(OFFSETS_FILE)).unwrap(),
        );
        let flip = |mut b: Vec<u8>, at: usize| {
            b[at] ^= 0x40;
            b
        };
        let blocks = 4;
        // What was done, the tree file and offsets file left (`None`: removed), and how many
        // entries' derived data the next open rewrites.
        type Case<'a> = (&'a str, Option<Vec<u8>>, Option<Vec<u8>>, u64);
        let cases: Vec<Case> = vec![
            ("both missing", None, None, blocks * BLOCK),
            ("tree missing", None, Some(good.1.clone()), blocks * BLOCK),
            (
                "tree torn inside block 2",
                Some(good.0[..2 * 16320 + 1000].to_vec()),
                Some(good.1.clone()),
                2 * BLOCK,
            ),
            (
                "offsets torn inside block 3",
                Some(good.0.clone()),
                Some(good.1[..3 * 2048 + 3].to_vec()),
                BLOCK,
            ),
            (
                "a node of block 1 changed",
                Some(flip(good.0.clone(), 16320 + 300 * 32 + 5)),
                Some(good.1.clone()),
                BLOCK,
            ),
            (
                "an offset of block 0 changed",
                Some(good.0.clone()),
                Some(flip(good.1.clone(), 8 * 17 + 7)),
                BLOCK,
            ),
            (
                "zeros where the tree was",
                Some(vec![0; good.0.len()]),
                Some(good.1.clone()),
                blocks * BLOCK,
            ),
            (
                "stale blocks after the end",
                Some([good.0.clone(), good.0[..16320].to_vec()].concat()),
                Some([good.1.clone(), vec![7; 2048 + 8]].concat()),
                0,
            ),
        ];
        for (what, tree, offsets, rebuilt) in cases {
            for (name, bytes) in [(TREE_FILE, tree), (OFFSETS_FILE, offsets)] {
                match bytes {
                    Some(b) => std::fs::write(dir.join(name), b).unwrap(),
                    None => std::fs::remove_file(dir.join(name)).unwrap(),
                }
            }
            let (s, r) = LogStore::open(&dir).unwrap();
            assert_eq!((r.size, r.derived_rebuilt), (1100, rebuilt), "{what}");
            assert_serves(&s, &all);
            drop(s);
            assert_eq!(
                std::fs::read(dir.join(TREE_FILE)).unwrap(),
                good.0,
                "{what}"
            );
            assert_eq!(
                std::fs::read(dir.join(OFFSETS_FILE)).unwrap(),
                good.1,
                "{what}"
            );
        }
        // Derived data of a torn entries tail is dropped with it.
        let (s, _) = LogStore::open(&dir).unwrap();
        append_all(&s, &entries(1300)[1100..]);
        drop(s);
        let path = dir.join(ENTRIES);
        let bytes = std::fs::read(&path).unwrap();
        let one = 4 + b"entry 1299".len() + 32;
        std::fs::write(&path, &bytes[..bytes.len() - 200 * one - 3]).unwrap();
        let (s, r) = LogStore::open(&dir).unwrap();
        assert_eq!(r.size, 1099);
        assert_serves(&s, &all[..1099]);
        drop(s);
        assert_eq!(derived_lens(&dir), (4 * 16320, 4 * 2048));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncating_across_blocks_reads_the_open_block_back() {
        let dir = tmp("truncblocks");
        let all = entries(1100);
        let (s, _) = LogStore::open(&dir).unwrap();
        append_all(&s, &all);
        for size in [1000, 900, 768, 767, 300, 255] {
            s.truncate_to(size as u64).unwrap();
            assert_serves(&s, &all[..size]);
            assert_eq!(
                derived_lens(&dir).0,
                (size as u64 / BLOCK) * 16320,
                "{size}"
            );
        }
        // The log grows again from there, and a restart finds nothing to rebuild.
        append_all(&s, &all[255..]);
        assert_serves(&s, &all);
        drop(s);
        let (s, r) = LogStore::open(&dir).unwrap();
        assert_eq!((r.size, r.derived_rebuilt), (1100, 0));
        assert_serves(&s, &all);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn checkpoint_file_roundtrip() {
        let dir = tmp("cp");
        let (s, _) = LogStore::open(&dir).unwrap();
        assert_eq!(s.load_checkpoint().unwrap(), None);
        s.save_checkpoint("o\n0\nx\n\n— k sig\n").unwrap();
        assert_eq!(
            s.load_checkpoint().unwrap().unwrap(),
            "o\n0\nx\n\n— k sig\n"
        );
        s.save_checkpoint("o\n1\ny\n\n— k sig2\n").unwrap();
        let both = vec!["o\n0\nx\n\n— k sig\n", "o\n1\ny\n\n— k sig2\n"];
        assert_eq!(s.checkpoint_history().unwrap(), both);
        // A record cut short by a crash is ignored; the ones before it stay.
        let hist = dir.join(HISTORY);
        let mut f = OpenOptions::new().append(true).open(&hist).unwrap();
        f.write_all(b"40\no\n2\n").unwrap();
        assert_eq!(read_history(&dir).unwrap(), both);
        assert_eq!(read_only(&dir).unwrap().checkpoints, both);
        drop(s);
        let (s, _) = LogStore::open(&dir).unwrap();
        s.save_checkpoint("o\n3\nz\n\n— k sig3\n").unwrap();
        assert_eq!(
            s.checkpoint_history().unwrap().len(),
            3,
            "appends after a repair are read"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
