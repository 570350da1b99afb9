//! RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.
//!
//! `leaf_hash(d) = SHA-256(0x00 ‖ d)`, `node_hash(l, r) = SHA-256(0x01 ‖ l ‖ r)`, and the root of
//! `n > 1` leaves splits at the largest power of two below `n`. Roots and proofs for any tree
//! size are computed from the hashes of complete, aligned subtrees ([`Nodes`]): O(log² n)
//! look-ups and at most O(log n) new hashes. [`Tree`] keeps every such hash in memory; the
//! live log's store keeps most of them on disk (see `store`), which is why the algorithms are
//! written once over a look-up that may fail.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly smaller than `n` (n ≥ 2).
pub(crate) fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Where the hashes of complete, aligned subtrees come from: all that roots and proofs need.
///
/// The RFC 6962 algorithms are written once, as the provided methods, over [`Nodes::node`]:
/// [`Tree`] keeps every node in memory (offline readers: audit packs, verification), while
/// the log store keeps the lower levels on disk and only the upper ones and the right edge
/// in memory (`store`), so a node look-up there may fail with an I/O error.
pub trait Nodes {
    /// What a look-up can fail with; a request that does not fit the tree is a [`RangeError`].
    type Error: From<RangeError>;

    /// Number of leaves.
    fn size(&self) -> u64;

    /// Root of the leaves `[index·2^level, (index+1)·2^level)`. Only called for subtrees that
    /// lie wholly below [`Nodes::size`].
    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;

    /// Root of the leaves `[lo, hi)` when they are not a complete subtree: always a right
    /// edge, `hi` being the size of the tree asked about. Computed from nodes unless the
    /// implementation has it at hand (a batch being staged asks for the same few edges once
    /// per audit path).
    fn edge(&self, lo: u64, hi: u64) -> Result<Hash, Self::Error> {
        edge_from_nodes(self, lo, hi)
    }

    /// Root hash of the first `size` leaves.
    fn root(&self, size: u64) -> Result<Hash, Self::Error> {
        check_size(self.size(), size)?;
        if size == 0 {
            Ok(empty_root())
        } else {
            subtree(self, 0, size)
        }
    }

    /// Leaf hash at `index`.
    fn leaf(&self, index: u64) -> Result<Hash, Self::Error> {
        let size = self.size();
        if index >= size {
            return Err(RangeError::Index { index, size }.into());
        }
        self.node(0, index)
    }

    /// RFC 6962 audit path for leaf `index` in the tree of the first `size` leaves.
    fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, Self::Error> {
        check_size(self.size(), size)?;
        if index >= size {
            return Err(RangeError::Index { index, size }.into());
        }
        // Level by level from the leaf: at level `l` the tree has nodes `0..=last`, the last
        // one possibly incomplete (RFC 6962 promotes an unpaired node). The sibling is on the
        // left (always complete), on the right (complete, or the incomplete last one), or
        // absent (the node is the unpaired last one).
        let mut proof = Vec::with_capacity((u64::BITS - (size - 1).leading_zeros()) as usize);
        let (mut i, mut last, mut level) = (index, size - 1, 0u32);
        while last > 0 {
            if i & 1 == 1 {
                proof.push(self.node(level, i - 1)?);
            } else if i < last {
                let lo = (i + 1) << level;
                proof.push(subtree(self, lo, size.min(lo + (1 << level)))?);
            }
            i >>= 1;
            last >>= 1;
            level += 1;
        }
        Ok(proof)
    }

    /// Proof that the leaves at `indices` (strictly increasing, below `size`) belong to the
    /// tree of the first `size` leaves: the hashes of the largest subtrees holding none of
    /// them, left to right. It is the union of the leaves' RFC 6962 audit paths with shared
    /// nodes once; for a contiguous range it has at most about 2·log2(`size`) hashes, so it
    /// also proves that no leaf inside the range is missing. Check with [`verify_multi`].
    fn multi_proof(&self, indices: &[u64], size: u64) -> Result<Vec<Hash>, Self::Error> {
        check_size(self.size(), size)?;
        if let Some(&bad) = indices.iter().find(|&&i| i >= size) {
            return Err(RangeError::Index { index: bad, size }.into());
        }
        if indices.windows(2).any(|w| w[0] >= w[1]) {
            return Err(RangeError::Unsorted.into());
        }
        let mut proof = Vec::new();
        if size > 0 {
            multi(self, indices, 0, size, &mut proof)?;
        }
        Ok(proof)
    }

    /// RFC 6962 consistency proof between the trees of sizes `old` and `new`.
    fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, Self::Error> {
        check_size(self.size(), new)?;
        if old > new {
            return Err(RangeError::Order { old, new }.into());
        }
        let mut proof = Vec::new();
        if old > 0 && old < new {
            subproof(self, old, 0, new, true, &mut proof)?;
        }
        Ok(proof)
    }
}

fn check_size(log_size: u64, size: u64) -> Result<(), RangeError> {
    if size > log_size {
        return Err(RangeError::Size { size, log_size });
    }
    Ok(())
}

/// MTH of leaves `[lo, hi)`; `lo` must be aligned to the largest power of two ≤ `hi - lo`
/// (always the case for the ranges RFC 6962 recursions produce).
pub(crate) fn subtree<N: Nodes + ?Sized>(t: &N, lo: u64, hi: u64) -> Result<Hash, N::Error> {
    let n = hi - lo;
    if n.is_power_of_two() {
        let k = n.trailing_zeros();
        return t.node(k, lo >> k);
    }
    t.edge(lo, hi)
}

/// [`Nodes::edge`] computed from nodes: the complete left part and the rest.
pub(crate) fn edge_from_nodes<N: Nodes + ?Sized>(
    t: &N,
    lo: u64,
    hi: u64,
) -> Result<Hash, N::Error> {
    let k = split(hi - lo);
    Ok(node_hash(
        &subtree(t, lo, lo + k)?,
        &subtree(t, lo + k, hi)?,
    ))
}

fn multi<N: Nodes + ?Sized>(
    t: &N,
    indices: &[u64],
    lo: u64,
    hi: u64,
    out: &mut Vec<Hash>,
) -> Result<(), N::Error> {
    if indices.is_empty() {
        out.push(subtree(t, lo, hi)?);
        return Ok(());
    }
    if hi - lo == 1 {
        return Ok(());
    }
    let mid = lo + split(hi - lo);
    let cut = indices.partition_point(|&i| i < mid);
    multi(t, &indices[..cut], lo, mid, out)?;
    multi(t, &indices[cut..], mid, hi, out)
}

fn subproof<N: Nodes + ?Sized>(
    t: &N,
    m: u64,
    lo: u64,
    hi: u64,
    complete: bool,
    out: &mut Vec<Hash>,
) -> Result<(), N::Error> {
    let n = hi - lo;
    if m == n {
        if !complete {
            out.push(subtree(t, lo, hi)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(t, m, lo, lo + k, complete, out)?;
        out.push(subtree(t, lo + k, hi)?);
    } else {
        subproof(t, m - k, lo + k, hi, false, out)?;
        out.push(subtree(t, lo, lo + k)?);
    }
    Ok(())
}

/// Hashes of all complete aligned subtrees of an append-only sequence of leaves, in memory
/// (about two hashes, 64 bytes, per leaf): for logs read whole (audit packs, verification,
/// tests). The live log keeps its lower levels on disk instead (`store`).
#[derive(Debug, Default, Clone)]
pub struct Tree {
    /// `levels[k][i]` = root of leaves `[i·2^k, (i+1)·2^k)`.
    levels: Vec<Vec<Hash>>,
}

/// A proof request that does not fit the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("index {index} is not below tree size {size}")]
    Index { index: u64, size: u64 },
    #[error("tree size {size} exceeds the log size {log_size}")]
    Size { size: u64, log_size: u64 },
    #[error("consistency from {old} to {new} is not defined (need old ≤ new)")]
    Order { old: u64, new: u64 },
    #[error("leaf indices must be strictly increasing")]
    Unsorted,
}

impl Nodes for Tree {
    type Error = RangeError;

    fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    fn node(&self, level: u32, index: u64) -> Result<Hash, RangeError> {
        self.levels
            .get(level as usize)
            .and_then(|l| l.get(index as usize))
            .copied()
            .ok_or(RangeError::Index {
                index: index << level,
                size: Nodes::size(self),
            })
    }
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// The tree of a log's entries, in log order: each entry becomes the leaf
    /// `leaf_hash(entry)`. The one way to rebuild a tree from entries read back from storage,
    /// an audit pack or a log directory, so every reader hashes entries the same way.
    pub fn from_entries<E: AsRef<[u8]>>(entries: impl IntoIterator<Item = E>) -> Self {
        Self::from_leaf_hashes(entries.into_iter().map(|e| leaf_hash(e.as_ref())))
    }

    /// The tree of leaves whose hashes are already known (e.g. stored next to each entry and
    /// checked when read), in log order.
    pub fn from_leaf_hashes(leaves: impl IntoIterator<Item = Hash>) -> Self {
        let mut tree = Self::new();
        for leaf in leaves {
            tree.push(leaf);
        }
        tree
    }

    pub fn size(&self) -> u64 {
        Nodes::size(self)
    }

    pub fn push(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut k = 0;
        while self.levels[k].len().is_multiple_of(2) {
            let n = self.levels[k].len();
            let parent = node_hash(&self.levels[k][n - 2], &self.levels[k][n - 1]);
            if self.levels.len() == k + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[k + 1].push(parent);
            k += 1;
        }
    }

    /// Forgets leaves at and after `size` (a log cut back at start-up: its upper levels).
    pub fn truncate(&mut self, size: u64) {
        for (k, level) in self.levels.iter_mut().enumerate() {
            level.truncate((size >> k) as usize);
        }
        while self.levels.last().is_some_and(|l| l.is_empty()) && self.levels.len() > 1 {
            self.levels.pop();
        }
    }

    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels.first()?.get(index as usize).copied()
    }

    /// Root hash of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, RangeError> {
        Nodes::root(self, size)
    }

    /// RFC 6962 audit path for leaf `index` in the tree of the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, RangeError> {
        Nodes::inclusion_proof(self, index, size)
    }

    /// [`Nodes::multi_proof`]: the proof that the leaves at `indices` belong to the tree of
    /// the first `size` leaves. Check with [`verify_multi`].
    pub fn multi_proof(&self, indices: &[u64], size: u64) -> Result<Vec<Hash>, RangeError> {
        Nodes::multi_proof(self, indices, size)
    }

    /// RFC 6962 consistency proof between the trees of sizes `old` and `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, RangeError> {
        Nodes::consistency_proof(self, old, new)
    }
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// Computes the root of the tree of `size` leaves from the given leaves (index, leaf hash;
/// strictly increasing indices below `size`, at least one) and a [`Tree::multi_proof`].
/// `None` when the inputs do not fit together (wrong count, order or size); compare the
/// result with a signed root.
pub fn verify_multi(size: u64, leaves: &[(u64, Hash)], proof: &[Hash]) -> Option<Hash> {
    if leaves.is_empty()
        || leaves.iter().any(|&(i, _)| i >= size)
        || leaves.windows(2).any(|w| w[0].0 >= w[1].0)
    {
        return None;
    }
    let mut rest = proof.iter();
    let root = multi_root(leaves, 0, size, &mut rest)?;
    rest.next().is_none().then_some(root)
}

fn multi_root<'a>(
    leaves: &[(u64, Hash)],
    lo: u64,
    hi: u64,
    proof: &mut impl Iterator<Item = &'a Hash>,
) -> Option<Hash> {
    if leaves.is_empty() {
        return proof.next().copied();
    }
    if hi - lo == 1 {
        return Some(leaves[0].1);
    }
    let mid = lo + split(hi - lo);
    let cut = leaves.partition_point(|&(i, _)| i < mid);
    let left = multi_root(&leaves[..cut], lo, mid, proof)?;
    let right = multi_root(&leaves[cut..], mid, hi, proof)?;
    Some(node_hash(&left, &right))
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty();
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    fr == *old_root && sr == *new_root && snode == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference MTH straight from RFC 6962 §2.1, over raw leaf data.
    fn mth(leaves: &[Vec<u8>]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    /// Reference PATH straight from RFC 6962 §2.1.1, over raw leaf data.
    fn reference_path(m: usize, leaves: &[Vec<u8>]) -> Vec<Hash> {
        let n = leaves.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = split(n as u64) as usize;
        if m < k {
            let mut p = reference_path(m, &leaves[..k]);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = reference_path(m - k, &leaves[k..]);
            p.push(mth(&leaves[..k]));
            p
        }
    }

    fn data(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("leaf {i}").into_bytes()).collect()
    }

    #[test]
    fn known_vector() {
        // RFC 6962 test vector used by certificate-transparency-go: the 8 leaves
        // "", 0x00, 0x10, 0x2021, 0x3031, 0x40414243, 0x5051525354555657, 0x606162...6f.
        let leaves: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x00],
            vec![0x10],
            vec![0x20, 0x21],
            vec![0x30, 0x31],
            vec![0x40, 0x41, 0x42, 0x43],
            vec![0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            (0x60..=0x6f).collect(),
        ];
        let t = Tree::from_entries(&leaves);
        assert_eq!(
            hex::encode(t.root(8).unwrap()),
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn multi_proofs_prove_sets_and_ranges() {
        let d = data(33);
        let t = Tree::from_entries(&d);
        let leaves = |ix: &[u64]| -> Vec<(u64, Hash)> {
            ix.iter().map(|&i| (i, leaf_hash(&d[i as usize]))).collect()
        };
        for size in 1..=33u64 {
            let root = t.root(size).unwrap();
            let mut sets: Vec<Vec<u64>> = (0..size).map(|i| vec![i]).collect();
            for lo in 0..size {
                for hi in lo + 1..=size {
                    sets.push((lo..hi).collect());
                }
            }
            sets.push((0..size).step_by(3).collect());
            sets.push((0..size).filter(|i| i % 7 == 2 || i % 5 == 0).collect());
            for set in sets.iter().filter(|s| !s.is_empty()) {
                let p = t.multi_proof(set, size).unwrap();
                assert_eq!(
                    verify_multi(size, &leaves(set), &p),
                    Some(root),
                    "{set:?}/{size}"
                );
                // A changed leaf changes the root.
                let mut bad = leaves(set);
                bad[0].1 = leaf_hash(b"altered");
                assert_ne!(verify_multi(size, &bad, &p), Some(root));
                // A leaf left out does not verify with the same proof.
                if set.len() > 1 {
                    let fewer = &leaves(set)[1..];
                    assert_ne!(verify_multi(size, fewer, &p), Some(root));
                }
                // Nor does a shifted position.
                if set.len() == 1 && size > 1 {
                    let moved = [((set[0] + 1) % size, leaf_hash(&d[set[0] as usize]))];
                    assert_ne!(verify_multi(size, &moved, &p), Some(root));
                }
            }
            // A contiguous range needs at most two audit paths' worth of hashes.
            let bound = 2 * (64 - size.leading_zeros()) as usize;
            for lo in 0..size {
                let range: Vec<u64> = (lo..size).collect();
                assert!(t.multi_proof(&range, size).unwrap().len() <= bound);
            }
        }
        assert!(t.multi_proof(&[3, 3], 10).is_err());
        assert!(t.multi_proof(&[10], 10).is_err());
        assert_eq!(verify_multi(10, &[], &[]), None);
        let p = t.multi_proof(&[4], 10).unwrap();
        let mut longer = p.clone();
        longer.push(p[0]);
        assert_eq!(verify_multi(10, &leaves(&[4]), &longer), None);
        assert_eq!(verify_multi(10, &leaves(&[4]), &p[1..]), None);
    }

    #[test]
    fn roots_and_proofs_for_every_size() {
        let d = data(70);
        let mut t = Tree::new();
        for (i, l) in d.iter().enumerate() {
            t.push(leaf_hash(l));
            assert_eq!(t.size(), i as u64 + 1);
        }
        for size in 0..=70u64 {
            let root = t.root(size).unwrap();
            assert_eq!(root, mth(&d[..size as usize]), "size {size}");
            for index in 0..size {
                let p = t.inclusion_proof(index, size).unwrap();
                assert_eq!(p, reference_path(index as usize, &d[..size as usize]));
                let leaf = leaf_hash(&d[index as usize]);
                assert!(verify_inclusion(index, size, &leaf, &p, &root));
                assert!(!verify_inclusion(index, size, &leaf_hash(b"x"), &p, &root));
                if size > 1 {
                    assert!(!verify_inclusion(
                        (index + 1) % size,
                        size,
                        &leaf,
                        &p,
                        &root
                    ));
                }
            }
            for old in 0..=size {
                let p = t.consistency_proof(old, size).unwrap();
                let old_root = t.root(old).unwrap();
                assert!(
                    verify_consistency(old, size, &old_root, &root, &p),
                    "{old}->{size}"
                );
                if old > 0 && old < size {
                    let wrong = leaf_hash(b"fork");
                    assert!(!verify_consistency(old, size, &wrong, &root, &p));
                    assert!(!verify_consistency(old, size, &old_root, &wrong, &p));
                }
            }
        }
        assert!(t.root(71).is_err());
        assert!(t.inclusion_proof(5, 5).is_err());
        assert!(t.consistency_proof(6, 5).is_err());
    }

    #[test]
    fn from_entries_hashes_each_entry_as_a_leaf() {
        let d = data(13);
        let t = Tree::from_entries(&d);
        assert_eq!(t.size(), 13);
        for size in 0..=13u64 {
            assert_eq!(
                t.root(size).unwrap(),
                mth(&d[..size as usize]),
                "size {size}"
            );
        }
        let by_hash = Tree::from_leaf_hashes(d.iter().map(|e| leaf_hash(e)));
        assert_eq!(by_hash.root(13), t.root(13));
        let slices: Vec<&[u8]> = d.iter().map(Vec::as_slice).collect();
        assert_eq!(Tree::from_entries(slices).root(13), t.root(13));
        assert_eq!(
            Tree::from_entries(Vec::<Vec<u8>>::new()).root(0).unwrap(),
            empty_root()
        );
    }

    #[test]
    fn truncate_undoes_appends() {
        let d = data(37);
        let mut t = Tree::from_entries(&d);
        let r20 = t.root(20).unwrap();
        t.truncate(20);
        assert_eq!(t.size(), 20);
        assert_eq!(t.root(20).unwrap(), r20);
        for l in &d[20..] {
            t.push(leaf_hash(l));
        }
        assert_eq!(t.root(37).unwrap(), mth(&d));
    }
}
