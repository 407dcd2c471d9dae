//! RFC 6962 Merkle trees (as restated in RFC 9162 §2.1): tree heads, inclusion proofs and
//! consistency proofs, and their verification. Tested against the Certificate
//! Transparency reference vectors.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two smaller than `n` (n > 1).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// MTH(D[n]) over leaf hashes; the empty tree is SHA-256 of nothing.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]): the inclusion proof of leaf `index`; `None` when out of range.
pub fn inclusion_proof(index: usize, leaves: &[Hash]) -> Option<Vec<Hash>> {
    fn path(m: usize, d: &[Hash], out: &mut Vec<Hash>) {
        let n = d.len();
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            path(m, &d[..k], out);
            out.push(root(&d[k..]));
        } else {
            path(m - k, &d[k..], out);
            out.push(root(&d[..k]));
        }
    }
    if index >= leaves.len() {
        return None;
    }
    let mut out = Vec::new();
    path(index, leaves, &mut out);
    Some(out)
}

/// PROOF(m, D[n]): the consistency proof between the first `m` leaves and all of them.
pub fn consistency_proof(m: usize, leaves: &[Hash]) -> Option<Vec<Hash>> {
    fn sub(m: usize, d: &[Hash], complete: bool, out: &mut Vec<Hash>) {
        let n = d.len();
        if m == n {
            if !complete {
                out.push(root(d));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            sub(m, &d[..k], complete, out);
            out.push(root(&d[k..]));
        } else {
            sub(m - k, &d[k..], false, out);
            out.push(root(&d[..k]));
        }
    }
    if m == 0 || m > leaves.len() {
        return None;
    }
    let mut out = Vec::new();
    sub(m, leaves, true, &mut out);
    Some(out)
}

/// The frontier (a "compact range") of a tree of `size` leaves: the roots of the perfect
/// subtrees its binary decomposition makes, largest (leftmost) first, one per bit set in
/// `size`. It is all a log needs to append leaves and compute the new root.
pub fn frontier(leaves: &[Hash]) -> Vec<Hash> {
    let mut f = Vec::new();
    for (size, leaf) in leaves.iter().enumerate() {
        push(&mut f, size as u64, *leaf);
    }
    f
}

/// Append one leaf to the frontier of a tree of `size` leaves (a binary counter: equal
/// subtrees merge as the carry runs).
fn push(frontier: &mut Vec<Hash>, size: u64, leaf: Hash) {
    let mut h = leaf;
    let mut s = size;
    while s & 1 == 1 {
        let Some(left) = frontier.pop() else { break };
        h = node_hash(&left, &h);
        s >>= 1;
    }
    frontier.push(h);
}

/// The frontier of the tree of `size` leaves whose frontier is `frontier`, with `leaves`
/// appended; `None` when the frontier does not fit the size.
pub fn extend_frontier(size: u64, frontier: &[Hash], leaves: &[Hash]) -> Option<Vec<Hash>> {
    if !frontier_fits(size, frontier) {
        return None;
    }
    let mut f = frontier.to_vec();
    for (i, leaf) in leaves.iter().enumerate() {
        push(&mut f, size + i as u64, *leaf);
    }
    Some(f)
}

/// The root of a tree given its frontier: the perfect subtrees folded from the right.
pub fn frontier_root(frontier: &[Hash]) -> Hash {
    let mut it = frontier.iter().rev();
    let Some(last) = it.next() else {
        return root(&[]);
    };
    it.fold(*last, |acc, left| node_hash(left, &acc))
}

/// Whether `frontier` has the shape of the frontier of a tree of `size` leaves.
pub fn frontier_fits(size: u64, frontier: &[Hash]) -> bool {
    frontier.len() == size.count_ones() as usize
}

/// What appending leaves to a tree known by its frontier gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extended {
    /// The new tree's size, root and frontier.
    pub size: u64,
    pub root: Hash,
    pub frontier: Vec<Hash>,
    /// The inclusion proof of each new leaf in the new tree, in order.
    pub proofs: Vec<Vec<Hash>>,
}

/// Append `leaves` to the tree of `size` leaves whose frontier is `frontier`: the new
/// root, frontier and the inclusion proof of each new leaf, from the frontier and the new
/// leaves only (O(new + log size) hashes for the root and frontier, O(log size) more per
/// proof). `None` when the frontier does not fit the size.
///
/// Every node an inclusion proof of a new leaf needs lies either wholly among the new
/// leaves, or is one of the frontier's perfect subtrees, or spans both and is built from
/// them: a perfect subtree of the old leaves that is a node of the new tree and not inside
/// the subtree being proved is always one of the frontier's (the frontier's subtrees are
/// the maximal aligned ones, and nodes of an RFC 6962 tree never straddle them).
pub fn extend(size: u64, frontier: &[Hash], leaves: &[Hash]) -> Option<Extended> {
    if !frontier_fits(size, frontier) {
        return None;
    }
    // The tree as segments: the frontier's subtrees, then each new leaf.
    let mut segments: Vec<(u64, u64, Hash)> = Vec::with_capacity(frontier.len() + leaves.len());
    let mut start = 0u64;
    for (bit, h) in (0..64).rev().filter(|b| size >> b & 1 == 1).zip(frontier) {
        let len = 1u64 << bit;
        segments.push((start, start + len, *h));
        start += len;
    }
    for (i, h) in leaves.iter().enumerate() {
        let at = size + i as u64;
        segments.push((at, at + 1, *h));
    }
    let total = size + leaves.len() as u64;
    let mut tree = Segments {
        segments,
        memo: std::collections::HashMap::new(),
    };
    let root = if total == 0 {
        self::root(&[])
    } else {
        tree.node(0, total)?
    };
    let mut proofs = Vec::with_capacity(leaves.len());
    for i in 0..leaves.len() as u64 {
        let mut out = Vec::new();
        tree.path(size + i, 0, total, &mut out)?;
        proofs.push(out);
    }
    Some(Extended {
        size: total,
        root,
        frontier: extend_frontier(size, frontier, leaves)?,
        proofs,
    })
}

/// A tree known by segments (the old tree's frontier subtrees and the new leaves), with
/// the hashes of the nodes computed so far.
struct Segments {
    segments: Vec<(u64, u64, Hash)>,
    memo: std::collections::HashMap<(u64, u64), Hash>,
}

impl Segments {
    /// The hash of node [a, b); `None` when it cuts a segment (a frontier that does not
    /// belong to this tree).
    fn node(&mut self, a: u64, b: u64) -> Option<Hash> {
        if let Some(h) = self.memo.get(&(a, b)) {
            return Some(*h);
        }
        let at = self.segments.partition_point(|s| s.0 < a);
        let h = match self.segments.get(at) {
            Some(&(sa, sb, h)) if sa == a && sb == b => h,
            Some(&(sa, sb, _)) if sa == a && sb < b && b - a > 1 => {
                let k = split_u64(b - a);
                let left = self.node(a, a + k)?;
                let right = self.node(a + k, b)?;
                node_hash(&left, &right)
            }
            Some(_) | None => return None,
        };
        self.memo.insert((a, b), h);
        Some(h)
    }

    /// PATH(m, D[a..b]) over the segments.
    fn path(&mut self, m: u64, a: u64, b: u64, out: &mut Vec<Hash>) -> Option<()> {
        if b - a <= 1 {
            return Some(());
        }
        let k = split_u64(b - a);
        if m < a + k {
            self.path(m, a, a + k, out)?;
            out.push(self.node(a + k, b)?);
        } else {
            self.path(m, a + k, b, out)?;
            out.push(self.node(a, a + k)?);
        }
        Some(())
    }
}

/// The largest power of two smaller than `n` (n > 1).
fn split_u64(n: u64) -> u64 {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// Verify an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

/// Verify a consistency proof between tree sizes `m` <= `n` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(m: u64, n: u64, root_m: &Hash, root_n: &Hash, proof: &[Hash]) -> bool {
    if m == 0 || m > n {
        return false;
    }
    if m == n {
        return proof.is_empty() && root_m == root_n;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if m.is_power_of_two() {
        path.insert(0, *root_m);
    }
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f_n, mut s_n) = (m - 1, n - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && fr == *root_m && sr == *root_n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Certificate Transparency reference leaves and the tree heads of sizes 0..=8.
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    fn leaves() -> Vec<Hash> {
        LEAVES
            .iter()
            .map(|l| leaf_hash(&hex::decode(l).unwrap()))
            .collect()
    }

    #[test]
    fn tree_heads_match_the_reference() {
        let l = leaves();
        for n in 0..=8 {
            assert_eq!(hex::encode(root(&l[..n])), ROOTS[n], "size {n}");
        }
    }

    #[test]
    fn inclusion_proofs_match_the_reference() {
        let l = leaves();
        let cases: [(usize, usize, &[&str]); 3] = [
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
        ];
        for (i, n, want) in cases {
            let p = inclusion_proof(i, &l[..n]).unwrap();
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(p, want, "leaf {i} of {n}");
            assert!(verify_inclusion(
                i as u64,
                n as u64,
                &l[i],
                &p,
                &h(ROOTS[n])
            ));
        }
    }

    #[test]
    fn consistency_proofs_match_the_reference() {
        let l = leaves();
        let cases: [(usize, usize, &[&str]); 3] = [
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (m, n, want) in cases {
            let p = consistency_proof(m, &l[..n]).unwrap();
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(p, want, "{m} -> {n}");
            assert!(verify_consistency(
                m as u64,
                n as u64,
                &h(ROOTS[m]),
                &h(ROOTS[n]),
                &p
            ));
        }
    }

    fn random_leaves(n: usize, seed: u64) -> Vec<Hash> {
        (0..n as u64)
            .map(|i| leaf_hash(&[seed.to_le_bytes(), i.to_le_bytes()].concat()))
            .collect()
    }

    /// Appending from the frontier gives what the full leaves give: the root, the new
    /// frontier, and each new leaf's inclusion proof (which verifies).
    fn check_extend(old: usize, batch: usize, seed: u64) {
        let all = random_leaves(old + batch, seed);
        let f = frontier(&all[..old]);
        assert!(frontier_fits(old as u64, &f));
        assert_eq!(
            frontier_root(&f),
            root(&all[..old]),
            "root of {old} from its frontier"
        );
        let e = extend(old as u64, &f, &all[old..]).unwrap();
        let n = all.len();
        assert_eq!(e.size, n as u64);
        assert_eq!(e.root, root(&all), "{old} + {batch}");
        assert_eq!(e.frontier, frontier(&all), "{old} + {batch}");
        assert_eq!(frontier_root(&e.frontier), e.root);
        assert_eq!(e.proofs.len(), batch);
        for (j, p) in e.proofs.iter().enumerate() {
            let i = old + j;
            assert_eq!(
                Some(p),
                inclusion_proof(i, &all).as_ref(),
                "leaf {i} of {old} + {batch}"
            );
            assert!(verify_inclusion(i as u64, n as u64, &all[i], p, &e.root));
        }
    }

    #[test]
    fn appending_from_the_frontier_matches_the_full_tree_for_every_small_size() {
        for old in 0..40 {
            for batch in 0..12 {
                check_extend(old, batch, (old * 100 + batch) as u64);
            }
        }
    }

    #[test]
    fn a_frontier_that_does_not_fit_its_size_is_refused() {
        let l = random_leaves(6, 1);
        let f = frontier(&l);
        assert_eq!(f.len(), 2);
        assert!(extend(7, &f, &l[..1]).is_none());
        assert!(extend(4, &f, &l[..1]).is_none());
        assert!(extend(6, &f, &l[..1]).is_some());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        #[test]
        fn appending_from_the_frontier_matches_the_full_tree(
            old in 0usize..1100,
            batch in 0usize..40,
            seed in proptest::num::u64::ANY,
        ) {
            check_extend(old, batch, seed);
        }
    }

    #[test]
    fn every_proof_of_every_size_verifies_and_any_change_breaks_it() {
        let l: Vec<Hash> = (0u8..37)
            .map(|i| leaf_hash(&[i, i.wrapping_mul(7)]))
            .collect();
        for n in 1..=l.len() {
            let r = root(&l[..n]);
            for i in 0..n {
                let p = inclusion_proof(i, &l[..n]).unwrap();
                assert!(
                    verify_inclusion(i as u64, n as u64, &l[i], &p, &r),
                    "leaf {i} of {n}"
                );
                assert!(!verify_inclusion(
                    i as u64,
                    n as u64,
                    &leaf_hash(b"x"),
                    &p,
                    &r
                ));
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_inclusion(i as u64, n as u64, &l[i], &bad, &r));
                }
                assert!(!verify_inclusion(
                    (i + 1) as u64 % n as u64 + n as u64,
                    n as u64,
                    &l[i],
                    &p,
                    &r
                ));
            }
            for m in 1..=n {
                let p = consistency_proof(m, &l[..n]).unwrap();
                assert!(
                    verify_consistency(m as u64, n as u64, &root(&l[..m]), &r, &p),
                    "{m} -> {n}"
                );
                if m < n {
                    let other = leaf_hash(b"rewritten");
                    let mut forged = l[..m].to_vec();
                    forged[m - 1] = other;
                    assert!(
                        !verify_consistency(m as u64, n as u64, &root(&forged), &r, &p),
                        "{m} -> {n} forged"
                    );
                }
            }
        }
    }
}
