//! The log's derived data: the Merkle tree's node hashes and each entry's byte offset, kept on
//! disk next to `entries` so that the memory an open log needs does not grow with the log.
//!
//! Why: keeping every level of the tree and an offset per entry in memory costs about 72 bytes
//! per entry (72 MB per million receipts, growing for as long as the gateway runs). Here the
//! leaves are grouped in *blocks* of [`BLOCK`] = 256 consecutive leaves. A complete block's
//! nodes below its root (levels 0–7: 256 + 128 + … + 2 = 510 hashes) and its 256 entry offsets
//! are written to two files when the block completes:
//!
//! ```text
//! tree     block b at byte b·16320: level 0's 256 hashes, then level 1's 128, …, level 7's 2
//! offsets  block b at byte b·2048: the byte offset in `entries` of each of its 256 entries,
//!          u64 big-endian
//! ```
//!
//! and read back with positional reads. Why blocks rather than C2SP tlog-tiles (one file per
//! 256 hashes of one level every 8 levels): these files are private to the store and never
//! served, so they keep what a reader needs together — the lower part of any audit path lies in
//! one block, one read — and two append-only files need no directory of tiles to manage.
//!
//! Memory holds only what cannot be read from a complete block: the roots of the complete
//! blocks and every level above them (one hash per 128 leaves, about 0.25 bytes per entry) and
//! the open block's nodes and offsets (at most 510 hashes and 256 offsets). The log's right
//! edge is therefore always in memory: its frontier — the complete subtrees that tile it, one
//! per set bit of its size — lies above level 7 or inside the open block, and the frontier is
//! all that an append, a new root or a fresh batch's audit paths need of the existing tree.
//! Only proofs and reads of older entries touch the files, through the page cache.
//!
//! Invariants (tested in `store`):
//!
//! 1. Derived data is never trusted: it is written without `fsync` (after a crash it may be
//!    missing, short, torn or stale) and at every start each block is recomputed from the
//!    entries' leaf hashes (which are themselves checked against the entries) and compared
//!    with what is stored; a block that differs or is missing is rewritten, and the files are
//!    cut to the complete blocks of the log. What the files say is then exactly what the
//!    entries say.
//! 2. While the log is open, every block below the number of complete blocks held in memory
//!    is in the files, and readers read no other: a block is written before the append that
//!    completes it is acknowledged and counted (a failed write fails the append, which is
//!    rolled back; if the rollback fails too, the store refuses appends until restart).

use crate::merkle::{node_hash, Hash, Nodes, Tree};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Levels kept on disk: a block is a complete subtree of height 8.
pub(crate) const HEIGHT: u32 = 8;
/// Leaves per block.
pub(crate) const BLOCK: u64 = 1 << HEIGHT;
/// Hashes of a block below its root (levels 0 to `HEIGHT - 1`).
const BLOCK_NODES: usize = 2 * BLOCK as usize - 2;
const NODES_BYTES: u64 = BLOCK_NODES as u64 * 32;
const OFFSETS_BYTES: u64 = BLOCK * 8;
/// File names in the log directory.
pub(crate) const TREE_FILE: &str = "tree";
pub(crate) const OFFSETS_FILE: &str = "offsets";

/// Position of level `k`'s first node within a block's stored nodes.
fn level_start(k: u32) -> usize {
    2 * BLOCK as usize - ((2 * BLOCK as usize) >> k)
}

/// A complete block, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Block {
    /// Levels 0 to `HEIGHT - 1`, in that order.
    nodes: Vec<Hash>,
    /// Level `HEIGHT`: not stored in the block (memory holds it).
    root: Hash,
    offsets: Vec<u64>,
}

impl Block {
    fn nodes_bytes(&self) -> Vec<u8> {
        self.nodes.iter().flatten().copied().collect()
    }

    fn offsets_bytes(&self) -> Vec<u8> {
        self.offsets.iter().flat_map(|o| o.to_be_bytes()).collect()
    }
}

/// The nodes and entry offsets of the block being filled (fewer than [`BLOCK`] leaves).
#[derive(Debug, Clone)]
pub(crate) struct OpenBlock {
    /// `levels[k]`: the complete level-`k` nodes of the block, for `k < HEIGHT`.
    levels: Vec<Vec<Hash>>,
    offsets: Vec<u64>,
}

impl Default for OpenBlock {
    fn default() -> Self {
        Self {
            levels: vec![Vec::new(); HEIGHT as usize],
            offsets: Vec::new(),
        }
    }
}

impl OpenBlock {
    fn len(&self) -> u64 {
        self.offsets.len() as u64
    }

    /// Adds a leaf; returns the block when this leaf completes it (the open block is then
    /// empty again).
    pub(crate) fn push(&mut self, leaf: Hash, offset: u64) -> Option<Block> {
        self.levels[0].push(leaf);
        self.offsets.push(offset);
        let mut k = 0;
        while k + 1 < HEIGHT as usize && self.levels[k].len().is_multiple_of(2) {
            let n = self.levels[k].len();
            let parent = node_hash(&self.levels[k][n - 2], &self.levels[k][n - 1]);
            self.levels[k + 1].push(parent);
            k += 1;
        }
        if self.len() < BLOCK {
            return None;
        }
        let top = &self.levels[HEIGHT as usize - 1];
        let root = node_hash(&top[0], &top[1]);
        let nodes = self.levels.iter().flatten().copied().collect();
        let offsets = std::mem::take(&mut self.offsets);
        self.levels.iter_mut().for_each(Vec::clear);
        Some(Block {
            nodes,
            root,
            offsets,
        })
    }

    /// The first `keep` leaves of a stored block, as an open block.
    fn from_block(nodes: &[Hash], offsets: &[u64], keep: u64) -> Self {
        let levels = (0..HEIGHT)
            .map(|k| {
                let start = level_start(k);
                nodes[start..start + (keep >> k) as usize].to_vec()
            })
            .collect();
        Self {
            levels,
            offsets: offsets[..keep as usize].to_vec(),
        }
    }

    fn truncate(&mut self, keep: u64) {
        for (k, level) in self.levels.iter_mut().enumerate() {
            level.truncate((keep >> k) as usize);
        }
        self.offsets.truncate(keep as usize);
    }
}

/// What memory holds of the derived data: the levels from `HEIGHT` up and the open block.
#[derive(Debug, Clone, Default)]
pub(crate) struct Derived {
    /// Level `j` of this tree is level `HEIGHT + j` of the log's: its leaves are the roots of
    /// the complete blocks.
    upper: Tree,
    open: OpenBlock,
}

/// Where a node or an offset is.
pub(crate) enum Place<T> {
    Memory(T),
    /// In complete block `block`, at position `at` of its nodes or offsets.
    Disk {
        block: u64,
        at: usize,
    },
    /// Not in the log.
    Absent,
}

impl Derived {
    pub(crate) fn size(&self) -> u64 {
        self.blocks() * BLOCK + self.open.len()
    }

    /// Complete blocks (all of them in the files).
    pub(crate) fn blocks(&self) -> u64 {
        self.upper.size()
    }

    pub(crate) fn open(&self) -> &OpenBlock {
        &self.open
    }

    /// Makes `open` (the open block after this batch) and the batch's completed `blocks` (in
    /// order, already written) the state.
    pub(crate) fn commit(&mut self, open: OpenBlock, blocks: &[Block]) {
        for b in blocks {
            self.upper.push(b.root);
        }
        self.open = open;
    }

    /// Adds one leaf; returns the block it completes, already counted (write it before any
    /// reader may see it).
    pub(crate) fn push(&mut self, leaf: Hash, offset: u64) -> Option<Block> {
        let block = self.open.push(leaf, offset)?;
        self.upper.push(block.root);
        Some(block)
    }

    /// Where the root of leaves `[index·2^level, (index+1)·2^level)` is.
    pub(crate) fn node(&self, level: u32, index: u64) -> Place<Hash> {
        if level >= HEIGHT {
            return match Nodes::node(&self.upper, level - HEIGHT, index) {
                Ok(h) => Place::Memory(h),
                Err(_) => Place::Absent,
            };
        }
        let per_block = BLOCK >> level;
        let block = index / per_block;
        if block < self.blocks() {
            return Place::Disk {
                block,
                at: level_start(level) + (index % per_block) as usize,
            };
        }
        let open_index = index - self.blocks() * per_block;
        match self.open.levels[level as usize].get(open_index as usize) {
            Some(h) => Place::Memory(*h),
            None => Place::Absent,
        }
    }

    /// Where the byte offset of entry `index` is.
    pub(crate) fn offset(&self, index: u64) -> Place<u64> {
        let block = index / BLOCK;
        if block < self.blocks() {
            return Place::Disk {
                block,
                at: (index % BLOCK) as usize,
            };
        }
        match self
            .open
            .offsets
            .get((index - self.blocks() * BLOCK) as usize)
        {
            Some(o) => Place::Memory(*o),
            None => Place::Absent,
        }
    }

    /// This state cut back to `size` leaves (`size` below the current size); reads the block
    /// that becomes the open one back from the files if it was complete.
    pub(crate) fn truncated(&self, size: u64, files: &Files) -> Result<Self, FileError> {
        let (blocks, keep) = (size / BLOCK, size % BLOCK);
        let open = if blocks < self.blocks() {
            let (nodes, offsets) = files.read_block(blocks)?;
            OpenBlock::from_block(&nodes, &offsets, keep)
        } else {
            let mut open = self.open.clone();
            open.truncate(keep);
            open
        };
        let mut upper = self.upper.clone();
        upper.truncate(blocks);
        Ok(Self { upper, open })
    }
}

/// An I/O error on one of the derived files.
#[derive(Debug)]
pub(crate) struct FileError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The two derived files, open for positional reads and writes.
#[derive(Debug)]
pub(crate) struct Files {
    tree: File,
    tree_path: PathBuf,
    offsets: File,
    offsets_path: PathBuf,
}

fn open_rw(path: &Path) -> Result<File, FileError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| FileError {
            path: path.to_path_buf(),
            source,
        })
}

impl Files {
    /// Opens (or creates) the derived files of the log in `dir`; their content is not trusted
    /// until [`Rebuild`] has compared it with the entries.
    pub(crate) fn open(dir: &Path) -> Result<Self, FileError> {
        let tree_path = dir.join(TREE_FILE);
        let offsets_path = dir.join(OFFSETS_FILE);
        Ok(Self {
            tree: open_rw(&tree_path)?,
            offsets: open_rw(&offsets_path)?,
            tree_path,
            offsets_path,
        })
    }

    fn tree_err(&self) -> impl FnOnce(std::io::Error) -> FileError + '_ {
        |source| FileError {
            path: self.tree_path.clone(),
            source,
        }
    }

    fn offsets_err(&self) -> impl FnOnce(std::io::Error) -> FileError + '_ {
        |source| FileError {
            path: self.offsets_path.clone(),
            source,
        }
    }

    /// The nodes of complete block `block` (levels 0 to `HEIGHT - 1`).
    pub(crate) fn read_nodes(&self, block: u64) -> Result<Vec<Hash>, FileError> {
        let mut bytes = vec![0u8; NODES_BYTES as usize];
        self.tree
            .read_exact_at(&mut bytes, block * NODES_BYTES)
            .map_err(self.tree_err())?;
        Ok(bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect())
    }

    /// Offset `at` of complete block `block`.
    pub(crate) fn read_offset(&self, block: u64, at: usize) -> Result<u64, FileError> {
        let mut o = [0u8; 8];
        self.offsets
            .read_exact_at(&mut o, block * OFFSETS_BYTES + at as u64 * 8)
            .map_err(self.offsets_err())?;
        Ok(u64::from_be_bytes(o))
    }

    fn read_block(&self, block: u64) -> Result<(Vec<Hash>, Vec<u64>), FileError> {
        let nodes = self.read_nodes(block)?;
        let mut offsets = vec![0u8; OFFSETS_BYTES as usize];
        self.offsets
            .read_exact_at(&mut offsets, block * OFFSETS_BYTES)
            .map_err(self.offsets_err())?;
        let offsets = offsets
            .chunks_exact(8)
            .map(|c| {
                let mut o = [0u8; 8];
                o.copy_from_slice(c);
                u64::from_be_bytes(o)
            })
            .collect();
        Ok((nodes, offsets))
    }

    /// Whether block `b` is stored exactly as `block` (a short file is a mismatch).
    fn matches(&self, b: u64, block: &Block) -> Result<bool, FileError> {
        match self.read_block(b) {
            Ok((nodes, offsets)) => Ok(nodes == block.nodes && offsets == block.offsets),
            Err(e) if e.source.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes `blocks` as blocks `first`, `first + 1`, … (no `fsync`: derived data).
    pub(crate) fn write(&self, first: u64, blocks: &[Block]) -> Result<(), FileError> {
        if blocks.is_empty() {
            return Ok(());
        }
        let nodes: Vec<u8> = blocks.iter().flat_map(Block::nodes_bytes).collect();
        let offsets: Vec<u8> = blocks.iter().flat_map(Block::offsets_bytes).collect();
        self.tree
            .write_all_at(&nodes, first * NODES_BYTES)
            .map_err(self.tree_err())?;
        self.offsets
            .write_all_at(&offsets, first * OFFSETS_BYTES)
            .map_err(self.offsets_err())
    }

    /// Cuts both files to `blocks` complete blocks.
    pub(crate) fn truncate(&self, blocks: u64) -> Result<(), FileError> {
        self.tree
            .set_len(blocks * NODES_BYTES)
            .map_err(self.tree_err())?;
        self.offsets
            .set_len(blocks * OFFSETS_BYTES)
            .map_err(self.offsets_err())
    }
}

/// Start-up: the derived state rebuilt from the entries' leaf hashes and offsets, in log
/// order, with every complete block compared with the files and rewritten where it differs
/// (invariant 1).
pub(crate) struct Rebuild<'f> {
    files: &'f Files,
    derived: Derived,
    /// Complete blocks that had to be rewritten.
    rewritten: u64,
}

impl<'f> Rebuild<'f> {
    pub(crate) fn new(files: &'f Files) -> Self {
        Self {
            files,
            derived: Derived::default(),
            rewritten: 0,
        }
    }

    /// The next intact entry's leaf hash and byte offset.
    pub(crate) fn push(&mut self, leaf: Hash, offset: u64) -> Result<(), FileError> {
        let b = self.derived.blocks();
        if let Some(block) = self.derived.push(leaf, offset) {
            if !self.files.matches(b, &block)? {
                self.files.write(b, std::slice::from_ref(&block))?;
                self.rewritten += 1;
            }
        }
        Ok(())
    }

    /// The state, and how many entries' derived data had to be rewritten; the files are cut
    /// to the complete blocks (anything after them belongs to entries that are gone).
    pub(crate) fn finish(self) -> Result<(Derived, u64), FileError> {
        self.files.truncate(self.derived.blocks())?;
        Ok((self.derived, self.rewritten * BLOCK))
    }
}
