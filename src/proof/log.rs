//! The transparency log: an append-only RFC 6962 Merkle log of receipts, with a signed
//! checkpoint (C2SP tlog-checkpoint) written after each append, to the state store and to
//! a file that can be copied to a witness.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::merkle::{self, Hash};
use super::note::{Checkpoint, KeyPair, PublicKey};
use crate::error::{Code, Error, Result};
use crate::store::Store;

/// Where an entry sits in the log, and the proof of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogProof {
    pub origin: String,
    pub index: u64,
    pub tree_size: u64,
    /// Base64 root hash of the tree of `tree_size` entries.
    pub root: String,
    /// Base64 hashes of the inclusion proof.
    pub inclusion: Vec<String>,
    /// The signed checkpoint (a C2SP signed note) of that tree.
    pub checkpoint: String,
}

fn decode_hash(hex_str: &str) -> Result<Hash> {
    hex::decode(hex_str)
        .ok()
        .and_then(|v| <Hash>::try_from(v).ok())
        .ok_or_else(|| Error::new(Code::Store, "the log holds a malformed leaf hash"))
}

/// All leaf hashes of the first `size` entries.
pub async fn leaves(store: &Store, size: i64) -> Result<Vec<Hash>> {
    store
        .log_leaf_hashes(size)
        .await?
        .iter()
        .map(|h| decode_hash(h))
        .collect()
}

/// Who signs the log's checkpoints, under which name, and where the latest goes.
#[derive(Debug, Clone, Copy)]
pub struct Signing<'a> {
    pub key: &'a KeyPair,
    pub origin: &'a str,
    pub checkpoint_file: &'a Path,
}

/// Append `body` to the log, checkpoint the new tree, and prove the entry's inclusion.
pub async fn append(
    store: &Store,
    signing: Signing<'_>,
    kind: &str,
    request_id: Option<&str>,
    body: &str,
    now: DateTime<Utc>,
) -> Result<LogProof> {
    let Signing {
        key,
        origin,
        checkpoint_file,
    } = signing;
    let leaf = merkle::leaf_hash(body.as_bytes());
    let idx = store
        .log_append(kind, request_id, &hex::encode(leaf), body, now)
        .await?;
    let all = leaves(store, i64::MAX).await?;
    let size = all.len();
    let root = merkle::root(&all);
    let cp = Checkpoint {
        origin: origin.to_owned(),
        size: size as u64,
        root,
    };
    let note = key.sign_note(&cp.body())?;
    store
        .save_checkpoint(size as i64, &hex::encode(root), &note, now)
        .await?;
    write_atomically(checkpoint_file, note.as_bytes())?;
    let index = usize::try_from(idx).map_err(|_| Error::new(Code::Store, "negative log index"))?;
    let proof = merkle::inclusion_proof(index, &all)
        .ok_or_else(|| Error::new(Code::Internal, "entry not in its own log"))?;
    Ok(LogProof {
        origin: origin.to_owned(),
        index: index as u64,
        tree_size: size as u64,
        root: B64.encode(root),
        inclusion: proof.iter().map(|h| B64.encode(h)).collect(),
        checkpoint: note,
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The consistency proof between two tree sizes of the stored log.
pub async fn consistency(store: &Store, from: u64, to: u64) -> Result<Vec<Hash>> {
    let all = leaves(store, i64::try_from(to).unwrap_or(i64::MAX)).await?;
    if (all.len() as u64) < to {
        return Err(Error::new(
            Code::NotFound,
            format!("the log has {} entries, not {to}", all.len()),
        ));
    }
    merkle::consistency_proof(usize::try_from(from).unwrap_or(usize::MAX), &all).ok_or_else(|| {
        Error::new(
            Code::Usage,
            format!("no consistency proof from {from} to {to}"),
        )
    })
}

/// What `quietus log verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogReport {
    pub entries: u64,
    pub checkpoints: u64,
    pub problems: Vec<String>,
}

/// Check the whole log: entries contiguous, every leaf the hash of its body, every stored
/// checkpoint signed by `key` and equal to the tree recomputed from the bodies, and each
/// checkpoint consistent with the next.
pub async fn verify(store: &Store, key: &PublicKey) -> Result<LogReport> {
    let entries = store.log_entries().await?;
    let mut r = LogReport {
        entries: entries.len() as u64,
        ..LogReport::default()
    };
    let mut leaves = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        if e.idx != i as i64 {
            r.problems.push(format!(
                "entry {i} is missing (the next entry is {})",
                e.idx
            ));
            return Ok(r);
        }
        let computed = merkle::leaf_hash(e.body.as_bytes());
        if hex::encode(computed) != e.leaf_hash {
            r.problems.push(format!(
                "entry {i}: its body does not hash to its recorded leaf hash (altered)"
            ));
        }
        leaves.push(computed);
    }
    let cps = store.checkpoints().await?;
    r.checkpoints = cps.len() as u64;
    let mut previous: Option<(u64, Hash)> = None;
    for c in cps {
        let cp = match Checkpoint::open(&c.note, key) {
            Ok(cp) => cp,
            Err(e) => {
                r.problems
                    .push(format!("checkpoint of size {}: {e}", c.size));
                continue;
            }
        };
        if cp.size != c.size as u64 || hex::encode(cp.root) != c.root {
            r.problems.push(format!(
                "checkpoint of size {}: the stored size or root differs from the signed note",
                c.size
            ));
        }
        let size = usize::try_from(cp.size).unwrap_or(usize::MAX);
        if size > leaves.len() {
            r.problems.push(format!(
                "checkpoint of size {}: the log has only {} entries (entries were removed)",
                cp.size,
                leaves.len()
            ));
            continue;
        }
        if merkle::root(&leaves[..size]) != cp.root {
            r.problems.push(format!(
                "checkpoint of size {}: the entries no longer hash to its signed root (rewritten)",
                cp.size
            ));
        }
        if let Some((psize, proot)) = previous {
            let ok =
                merkle::consistency_proof(usize::try_from(psize).unwrap_or(0), &leaves[..size])
                    .is_some_and(|p| {
                        merkle::verify_consistency(psize, cp.size, &proot, &cp.root, &p)
                    });
            if !ok {
                r.problems.push(format!(
                    "checkpoints {psize} and {} are not consistent",
                    cp.size
                ));
            }
        }
        previous = Some((cp.size, cp.root));
    }
    Ok(r)
}
