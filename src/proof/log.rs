//! The transparency log: an append-only RFC 6962 Merkle log of receipts, with a signed
//! checkpoint (C2SP tlog-checkpoint) written with each batch appended, to the state store
//! and to a file that can be copied to a witness. Each checkpoint stores the tree's
//! frontier, so an append costs O(log n), not a read of every leaf.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::merkle::{self, Hash};
use super::note::{Checkpoint, KeyPair, PublicKey};
use crate::error::{Code, Error, Result};
use crate::store::Store;
use crate::store::log::{LogKind, LogTip, NewCheckpoint, NewEntry, NewReceipt, Sealed};

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

/// An entry to append: the canonical body of a receipt, and whose request it is of.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub request_id: Option<&'a str>,
    pub body: &'a str,
}

/// A batch appended: each entry's place and proof, and the batch's checkpoint.
#[derive(Debug, Clone)]
pub struct Appended {
    pub proofs: Vec<LogProof>,
    pub size: u64,
    pub note: String,
    /// How many stored leaf hashes the append read (see [`AppendStats`]).
    pub leaves_read: usize,
}

fn encode_frontier(f: &[Hash]) -> String {
    f.iter().map(hex::encode).collect()
}

fn decode_frontier(s: &str) -> Result<Vec<Hash>> {
    if !s.len().is_multiple_of(64) {
        return Err(Error::new(
            Code::Store,
            "a checkpoint holds a malformed frontier",
        ));
    }
    (0..s.len() / 64)
        .map(|i| decode_hash(s.get(i * 64..(i + 1) * 64).unwrap_or_default()))
        .collect()
}

/// Append a batch of entries to the log with one signed checkpoint, in one store
/// transaction under the log lock, together with what `seal` makes of the entries' proofs
/// (the receipts that cite them, and their messages). The new root, the frontier and the
/// inclusion proofs come from the latest checkpoint's frontier and the new entries alone:
/// an append reads no other leaf. `worker`: whose claims the receipts carry out; `None`
/// when a claim no longer holds, and nothing was written. The checkpoint file is not
/// written here: see [`publish_checkpoint`], once what cites it is in place.
pub async fn append<F>(
    store: &Store,
    signing: Signing<'_>,
    entries: &[Entry<'_>],
    worker: Option<&str>,
    now: DateTime<Utc>,
    seal: F,
) -> Result<Option<Appended>>
where
    F: FnOnce(&[LogProof]) -> Result<Vec<NewReceipt>>,
{
    let Signing { key, origin, .. } = signing;
    let leaves: Vec<Hash> = entries
        .iter()
        .map(|e| merkle::leaf_hash(e.body.as_bytes()))
        .collect();
    let rows: Vec<NewEntry> = entries
        .iter()
        .zip(&leaves)
        .map(|(e, h)| NewEntry {
            kind: LogKind::Receipt,
            request_id: e.request_id.map(str::to_owned),
            leaf_hash: hex::encode(h),
            body: e.body.to_owned(),
        })
        .collect();
    let mut made: Option<(Vec<LogProof>, u64, String)> = None;
    let stats = store
        .append_log(&rows, worker, now, |tip: &LogTip, first: i64| {
            let from = u64::try_from(tip.from)
                .map_err(|_| Error::new(Code::Store, "a checkpoint has a negative size"))?;
            let tail = tip
                .tail
                .iter()
                .map(|h| decode_hash(h))
                .collect::<Result<Vec<Hash>>>()?;
            // Entries after the latest frontier (a log whose checkpoints predate
            // frontiers: all of them, once) extend it first.
            let frontier = merkle::extend_frontier(from, &decode_frontier(&tip.frontier)?, &tail)
                .ok_or_else(|| {
                Error::new(Code::Store, "a checkpoint's frontier does not fit its size")
            })?;
            let size = from + tail.len() as u64;
            if u64::try_from(first).ok() != Some(size) {
                return Err(Error::new(
                    Code::Internal,
                    "the log's tip moved under its lock",
                ));
            }
            let ext = merkle::extend(size, &frontier, &leaves)
                .ok_or_else(|| Error::new(Code::Internal, "the log's frontier does not fit"))?;
            let cp = Checkpoint {
                origin: origin.to_owned(),
                size: ext.size,
                root: ext.root,
            };
            let note = key.sign_note(&cp.body())?;
            let proofs: Vec<LogProof> = ext
                .proofs
                .iter()
                .enumerate()
                .map(|(j, p)| LogProof {
                    origin: origin.to_owned(),
                    index: size + j as u64,
                    tree_size: ext.size,
                    root: B64.encode(ext.root),
                    inclusion: p.iter().map(|h| B64.encode(h)).collect(),
                    checkpoint: note.clone(),
                })
                .collect();
            let receipts = seal(&proofs)?;
            let checkpoint = NewCheckpoint {
                size: i64::try_from(ext.size)
                    .map_err(|_| Error::new(Code::Internal, "the log is too large"))?,
                root: hex::encode(ext.root),
                note: note.clone(),
                frontier: encode_frontier(&ext.frontier),
            };
            made = Some((proofs, ext.size, note));
            Ok(Sealed {
                checkpoint,
                receipts,
            })
        })
        .await?;
    let (Some(stats), Some((proofs, size, note))) = (stats, made) else {
        return Ok(None);
    };
    Ok(Some(Appended {
        proofs,
        size,
        note,
        leaves_read: stats.leaves_read,
    }))
}

/// Write a checkpoint to the file a witness copies, atomically: under a unique temporary
/// name in the same folder, synced, renamed over the file, the folder synced. Workers
/// finishing out of order never put an older checkpoint over a newer one: under a lock on
/// the folder's lock file, the file is replaced only by a checkpoint at least as large.
pub fn publish_checkpoint(path: &Path, size: u64, note: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        Some(_) | None => PathBuf::from("."),
    };
    crate::fsx::create_dir_private(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", crate::store::new_id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = crate::fsx::create_private(&tmp)?;
        std::io::Write::write_all(&mut f, note.as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    let lock = crate::fsx::append_private(&dir.join(format!(".{name}.lock")))?;
    lock.lock()?;
    let there = crate::fsx::read_text_limited(path, crate::fsx::limit::RECEIPT)
        .ok()
        .and_then(|t| Checkpoint::parse_body(&t).ok())
        .map(|c| c.size);
    if there.is_some_and(|s| s > size) {
        std::fs::remove_file(&tmp)?;
        return Ok(());
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    std::fs::File::open(&dir).and_then(|d| d.sync_all())?;
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

/// A copy of the latest checkpoint kept outside the state store, that the log must be
/// consistent with: the checkpoint file quietus writes, or a witness's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointCopy {
    /// What it is, in messages ("the checkpoint file", "witness copy").
    pub what: &'static str,
    pub path: PathBuf,
}

impl CheckpointCopy {
    /// The checkpoint file and the witnesses' copies a configuration names.
    pub fn of_config(config: &crate::config::Config) -> Vec<CheckpointCopy> {
        std::iter::once(CheckpointCopy {
            what: "the checkpoint file",
            path: config.path(&config.proof.checkpoint_file),
        })
        .chain(config.proof.witnesses.iter().map(|w| CheckpointCopy {
            what: "witness copy",
            path: config.path(w),
        }))
        .collect()
    }
}

/// What `quietus log verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogReport {
    pub entries: u64,
    /// Checkpoints in the state store.
    pub checkpoints: u64,
    /// Copies outside it (the checkpoint file, witnesses' copies) read and signed by the key.
    pub checkpoint_copies: u64,
    pub problems: Vec<String>,
}

/// The request an entry's body names (`request.id`; `None` when it names none).
fn body_request_id(body: &str) -> std::result::Result<Option<String>, &'static str> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|_| "its body is not JSON (altered)")?;
    match v.get("request").map(|r| r.get("id")) {
        None | Some(None | Some(serde_json::Value::Null)) => Ok(None),
        Some(Some(serde_json::Value::String(id))) => Ok(Some(id.clone())),
        Some(Some(
            serde_json::Value::Bool(_)
            | serde_json::Value::Number(_)
            | serde_json::Value::Array(_)
            | serde_json::Value::Object(_),
        )) => Err("its body's request id is not text"),
    }
}

/// Check the whole log: entries contiguous; every column of every entry covered (the
/// leaf hash is the hash of the body, the kind is a kind, the request id is the one the
/// body names, so that the leaf covers it); every stored checkpoint signed by `key`,
/// equal to the tree recomputed from the bodies and consistent with the next; the newest
/// covering every entry. Then each of `copies` (the checkpoint file, witnesses' copies):
/// once the log has entries, it must exist, be signed by `key`, and the log must hold
/// its entries unchanged (a log shorter than a copy was rolled back; one whose first
/// entries no longer hash to its root was rewritten). A log with entries and no
/// checkpoint anywhere does not hold. No message holds an entry's values.
pub async fn verify(
    store: &Store,
    key: &PublicKey,
    copies: &[CheckpointCopy],
) -> Result<LogReport> {
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
        match LogKind::parse(&e.kind) {
            Some(LogKind::Receipt) => {}
            None => r.problems.push(format!(
                "entry {i}: column kind holds no kind of entry (altered)"
            )),
        }
        let computed = merkle::leaf_hash(e.body.as_bytes());
        if hex::encode(computed) != e.leaf_hash {
            r.problems.push(format!(
                "entry {i}: column leaf_hash is not the hash of its body (altered)"
            ));
        }
        match body_request_id(&e.body) {
            Ok(named) if named == e.request_id => {}
            Ok(_) => r.problems.push(format!(
                "entry {i}: column request_id is not the request its body names (altered)"
            )),
            Err(why) => r.problems.push(format!("entry {i}: {why}")),
        }
        leaves.push(computed);
    }
    let n = leaves.len() as u64;
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
    // Each batch of entries is appended with its checkpoint, in one transaction.
    match previous {
        None if n > 0 => r.problems.push(format!(
            "the log has {n} entries but the store holds no checkpoint signed by the key (checkpoints were removed)"
        )),
        Some((size, _)) if size < n => {
            let which = if size + 1 == n {
                format!("entry {size} is")
            } else {
                format!("entries {size} to {} are", n - 1)
            };
            r.problems.push(format!(
                "{which} in no stored checkpoint (appended without one, or its checkpoint was removed)"
            ));
        }
        None | Some(_) => {}
    }
    for c in copies {
        if let Some(p) = check_copy(c, key, &leaves, &mut r.checkpoint_copies) {
            r.problems.push(p);
        }
    }
    if n > 0 && previous.is_none() && r.checkpoint_copies == 0 {
        r.problems.push(format!(
            "the log has {n} entries and no checkpoint anywhere (the store, the checkpoint file, witnesses' copies)"
        ));
    }
    Ok(r)
}

/// Compare the log's `leaves` with a checkpoint copy: the problem, if any. `read` counts
/// the copies read and signed by `key`.
fn check_copy(
    c: &CheckpointCopy,
    key: &PublicKey,
    leaves: &[Hash],
    read: &mut u64,
) -> Option<String> {
    let (what, path) = (c.what, c.path.display());
    let n = leaves.len() as u64;
    match c.path.try_exists() {
        Ok(true) => {}
        // An empty log has no checkpoint yet.
        Ok(false) if n == 0 => return None,
        Ok(false) => {
            return Some(format!(
                "{what} {path} is missing, though the log has {n} entries"
            ));
        }
        Err(e) => return Some(format!("{what} {path}: {e}")),
    }
    let note = match crate::fsx::read_text_limited(&c.path, crate::fsx::limit::RECEIPT) {
        Ok(t) => t,
        Err(e) => return Some(format!("{what} {path}: {}", e.message)),
    };
    let cp = match Checkpoint::open(&note, key) {
        Ok(cp) => cp,
        Err(e) => return Some(format!("{what} {path}: {e}")),
    };
    *read += 1;
    if cp.size > n {
        return Some(format!(
            "{what} {path} holds a checkpoint of size {}, but the log has only {n} entries (rolled back)",
            cp.size
        ));
    }
    let size = usize::try_from(cp.size).unwrap_or(usize::MAX);
    if merkle::root(leaves.get(..size).unwrap_or(leaves)) != cp.root {
        return Some(format!(
            "{what} {path}: the log's first {} entries do not hash to its signed root (rewritten)",
            cp.size
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(size: u64) -> String {
        format!("test.example/log\n{size}\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n— sig\n")
    }

    #[test]
    fn an_older_checkpoint_never_replaces_a_newer_file_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log/checkpoint");
        publish_checkpoint(&path, 5, &note(5)).unwrap();
        publish_checkpoint(&path, 7, &note(7)).unwrap();
        // A worker that finished before, writing after.
        publish_checkpoint(&path, 6, &note(6)).unwrap();
        assert_eq!(
            crate::fsx::read_text_limited(&path, u64::MAX).unwrap(),
            note(7)
        );
        publish_checkpoint(&path, 7, &note(7)).unwrap();
        publish_checkpoint(&path, 8, &note(8)).unwrap();
        assert_eq!(
            crate::fsx::read_text_limited(&path, u64::MAX).unwrap(),
            note(8)
        );
        let tmp: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(tmp.is_empty(), "{tmp:?}");
    }

    #[test]
    fn concurrent_writers_of_the_checkpoint_file_all_succeed_and_the_largest_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint");
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let path = &path;
                s.spawn(move || {
                    for i in 0..50u64 {
                        let size = i * 4 + t;
                        publish_checkpoint(path, size, &note(size)).unwrap();
                    }
                });
            }
        });
        assert_eq!(
            crate::fsx::read_text_limited(&path, u64::MAX).unwrap(),
            note(199)
        );
    }
}
