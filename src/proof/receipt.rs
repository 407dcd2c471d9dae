//! Receipts: the signed evidence of what a set of tasks did.
//!
//! A receipt's body is canonical JSON (RFC 8785): the request (id, kind, jurisdiction,
//! times, approver), per task the system, and per table the action, row count, columns,
//! categories, rule, legal basis and the RFC 6962 Merkle root of the HMAC-SHA-256 row
//! digests (keyed with the backup's own digest key, so that once the backup is shredded
//! the roots still verify but no longer link to anyone); what was retained, until when and
//! why; the backup's SHA-256, size and expiry; the policy digest; the tool; the re-check.
//! No personal value appears in it, hashed or plain. The body is signed with ed25519 and
//! appended to the log; the receipt carries its inclusion proof and the signed checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use super::log::LogProof;
use super::merkle::{self, Hash};
use super::note::{Checkpoint, KeyPair, PublicKey};
use crate::backup::{self, Record};
use crate::error::{Code, Error, Result};

pub const FORMAT: u32 = 1;

/// The body of a receipt of work: a request's completion (the tasks that answered it and
/// what was kept), a later retention follow-up, or a sweep (no request). Issuing builds
/// this; readers (`verify --backup`, `--recheck`, the completion email) read it back typed.
/// The signature covers the canonical JSON of the body as received, so the receipt keeps
/// the body as JSON and this is a view of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkBody {
    pub quietus_receipt: u32,
    pub id: String,
    pub issued_at: chrono::DateTime<chrono::Utc>,
    pub tool: String,
    pub policy_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestDoc>,
    #[serde(default)]
    pub retained: Vec<RetainedDoc>,
    #[serde(default)]
    pub tasks: Vec<TaskDoc>,
}

/// The request a receipt is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestDoc {
    pub id: String,
    pub kind: crate::policy::RequestKind,
    pub jurisdiction: crate::policy::Jurisdiction,
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub approved_at: Option<chrono::DateTime<chrono::Utc>>,
    pub approved_by: Option<String>,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Rows kept under a retention rule, until when, and what then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetainedDoc {
    pub system: String,
    pub table: String,
    pub rows: u64,
    pub rule: String,
    pub basis: String,
    pub until: chrono::NaiveDate,
    pub then: Option<crate::policy::FollowUp>,
    pub categories: Vec<String>,
}

/// One task a receipt covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDoc {
    pub id: String,
    pub kind: crate::store::tasks::TaskKind,
    pub system: String,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub recheck: Option<String>,
    pub backup: Option<BackupDoc>,
    #[serde(default)]
    pub changes: Vec<ChangeDoc>,
    /// Manual tasks: who confirmed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_by: Option<String>,
}

/// The backup a task wrote before it changed anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupDoc {
    pub id: String,
    pub sha256: String,
    pub size: i64,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// What a task did to one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeDoc {
    pub table: String,
    pub action: crate::policy::Action,
    /// Rows in the backup (hashed into `merkle_root`).
    pub rows: u64,
    /// Rows changed by this run of the task (the rest were found already changed).
    pub changed: Option<u64>,
    pub columns: Vec<String>,
    pub categories: Vec<String>,
    pub rule: Option<String>,
    pub basis: Option<String>,
    pub merkle_root: String,
}

impl WorkBody {
    /// The typed view of a receipt body (an error names what does not fit).
    pub fn of(body: &Value) -> Result<WorkBody> {
        serde_json::from_value(body.clone()).map_err(|e| {
            Error::new(
                Code::Io,
                format!("the receipt body is not a receipt of work: {e}"),
            )
        })
    }
}

/// A receipt as written to a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receipt {
    pub body: Value,
    pub signature: Signature,
    pub log: LogProof,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Signature {
    /// `NAME+HASH` of the signing key.
    pub key: String,
    /// Base64 ed25519 signature over the canonical body.
    pub ed25519: String,
}

/// RFC 8785 canonical JSON.
pub fn canonical(v: &Value) -> Result<String> {
    serde_jcs::to_string(v).map_err(|e| Error::new(Code::Internal, format!("canonical JSON: {e}")))
}

/// HMAC-SHA-256 of a backed-up row's canonical JSON.
pub fn row_digest(key: &[u8], rec: &Record) -> Result<Hash> {
    let json = canonical_record(rec);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .map_err(|_| Error::new(Code::Internal, "HMAC key"))?;
    mac.update(json.as_bytes());
    Ok(mac.finalize().into_bytes().into())
}

/// A backed-up row's RFC 8785 canonical JSON, written straight from the row: the same
/// bytes as [`canonical`] of its `serde_json::Value` (a property test holds them equal),
/// without building the value tree first (issue 8: that was a sixth of a large task's
/// CPU). Members sorted by their names' UTF-16 code units (`k`, `t`, `v`, then the
/// columns), no whitespace, strings escaped as RFC 8785 §3.2.2.2 says.
fn canonical_record(rec: &Record) -> String {
    let size: usize = rec
        .v
        .iter()
        .map(|(c, v)| c.len() + v.as_ref().map_or(4, String::len) + 6)
        .sum();
    let mut out = String::with_capacity(rec.k.len() + rec.t.len() + size + 24);
    out.push_str("{\"k\":");
    json_string(&mut out, &rec.k);
    out.push_str(",\"t\":");
    json_string(&mut out, &rec.t);
    out.push_str(",\"v\":{");
    let mut columns: Vec<(&String, &Option<String>)> = rec.v.iter().collect();
    // A BTreeMap orders by code point; UTF-16 differs only past the ASCII range.
    if !columns.iter().all(|(c, _)| c.is_ascii()) {
        columns.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    }
    for (i, (c, v)) in columns.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(&mut out, c);
        out.push(':');
        match v {
            Some(v) => json_string(&mut out, v),
            None => out.push_str("null"),
        }
    }
    out.push_str("}}");
    out
}

/// A JSON string as RFC 8785 writes it: `"` and `\` escaped, the control characters as
/// `\b \t \n \f \r` or `\u00xx` (lowercase hex), everything else as it is.
fn json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0c => "\\f",
            b'\r' => "\\r",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        if escaped.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escaped);
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out.push('"');
}

/// Per-table row counts and Merkle roots of an archive.
pub type Roots = BTreeMap<String, (u64, Hash)>;

/// An archive's manifest, and per table: (row count, Merkle root over the row digests, in
/// archive order). One pass over the archive.
pub fn archive_roots(path: &Path, key_path: &Path) -> Result<(backup::Manifest, Roots)> {
    let mut reader = backup::Reader::open(path, key_path)?;
    let mut roots = RootsBuilder::new(&reader.manifest)?;
    while let Some(rec) = reader.next_row()? {
        roots.add(&rec)?;
    }
    Ok((reader.manifest, roots.finish()))
}

/// The per-table roots of an archive, built row by row as the archive is read (by the
/// read-back that verifies it, so that no pass over the archive is made for them alone).
#[derive(Debug, Clone)]
pub struct RootsBuilder {
    key: Vec<u8>,
    leaves: BTreeMap<String, Vec<Hash>>,
}

impl RootsBuilder {
    pub fn new(manifest: &backup::Manifest) -> Result<RootsBuilder> {
        let key = hex::decode(&manifest.digest_key)
            .map_err(|_| Error::new(Code::Io, "backup: malformed digest key"))?;
        let leaves = manifest
            .tables
            .iter()
            .map(|t| (t.table.clone(), Vec::new()))
            .collect();
        Ok(RootsBuilder { key, leaves })
    }

    pub fn add(&mut self, rec: &backup::Record) -> Result<()> {
        let d = row_digest(&self.key, rec)?;
        self.leaves
            .entry(rec.t.clone())
            .or_default()
            .push(merkle::leaf_hash(&d));
        Ok(())
    }

    pub fn finish(self) -> Roots {
        self.leaves
            .into_iter()
            .map(|(t, l)| (t, (l.len() as u64, merkle::root(&l))))
            .collect()
    }
}

/// Sign a body and attach its place in the log.
pub fn seal(body: Value, key: &KeyPair, log: LogProof) -> Result<Receipt> {
    let c = canonical(&body)?;
    let sig = key.sign_bytes(c.as_bytes());
    Ok(Receipt {
        body,
        signature: Signature {
            key: key.verifier().id(),
            ed25519: B64.encode(sig),
        },
        log,
    })
}

/// One check `verify` made.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub ok: bool,
    pub what: String,
}

/// Record a check: `yes` says what holds, `no` what is wrong.
fn check(out: &mut Vec<Check>, ok: bool, yes: impl Into<String>, no: impl Into<String>) -> bool {
    out.push(Check {
        ok,
        what: if ok { yes.into() } else { no.into() },
    });
    ok
}

fn b64_hash(s: &str) -> Option<Hash> {
    B64.decode(s).ok().and_then(|v| <Hash>::try_from(v).ok())
}

/// Verify a receipt offline: the signature (with `key`, never a key from the receipt),
/// the inclusion proof, the checkpoint's signature and that it is this tree; with
/// `later` (a checkpoint and the consistency proof to it) that the log was not
/// rewritten since. Stops at the first failure; every check made is returned.
pub fn verify(r: &Receipt, key: &PublicKey, later: Option<(&str, &[Hash])>) -> Vec<Check> {
    let mut out = Vec::new();
    let Ok(c) = canonical(&r.body) else {
        check(
            &mut out,
            false,
            "",
            "the receipt body is not JSON that can be made canonical",
        );
        return out;
    };
    if !check(
        &mut out,
        r.signature.key == key.id(),
        format!("signed by key {}", key.id()),
        format!(
            "the receipt was signed by key {}, not by the given key {}",
            r.signature.key,
            key.id()
        ),
    ) {
        return out;
    }
    let sig_ok = B64
        .decode(&r.signature.ed25519)
        .is_ok_and(|s| key.verify_bytes(c.as_bytes(), &s));
    if !check(
        &mut out,
        sig_ok,
        "the ed25519 signature matches the body",
        "the ed25519 signature does not match the body: the receipt was changed after it was signed",
    ) {
        return out;
    }
    let leaf = merkle::leaf_hash(c.as_bytes());
    let proof: Option<Vec<Hash>> = r.log.inclusion.iter().map(|h| b64_hash(h)).collect();
    let root = b64_hash(&r.log.root);
    let (Some(proof), Some(root)) = (proof, root) else {
        check(
            &mut out,
            false,
            "",
            "the log proof is malformed (not base64 SHA-256 hashes)",
        );
        return out;
    };
    let incl = merkle::verify_inclusion(r.log.index, r.log.tree_size, &leaf, &proof, &root);
    if !check(
        &mut out,
        incl,
        format!(
            "included in the log at index {} of {} entries (inclusion proof)",
            r.log.index, r.log.tree_size
        ),
        format!(
            "the inclusion proof does not lead from this body at index {} to the root of {} entries: the proof or the root was changed",
            r.log.index, r.log.tree_size
        ),
    ) {
        return out;
    }
    match Checkpoint::open(&r.log.checkpoint, key) {
        Ok(cp) => {
            let same = cp.size == r.log.tree_size && cp.root == root && cp.origin == r.log.origin;
            if !check(
                &mut out,
                same,
                format!(
                    "the signed checkpoint is of this tree ({} entries, origin {})",
                    cp.size, cp.origin
                ),
                format!(
                    "the signed checkpoint ({} entries, origin {}) is not of this tree ({} entries, origin {})",
                    cp.size, cp.origin, r.log.tree_size, r.log.origin
                ),
            ) {
                return out;
            }
        }
        Err(e) => {
            check(
                &mut out,
                false,
                "",
                format!("the receipt's checkpoint: {e}"),
            );
            return out;
        }
    }
    if let Some((note, consistency)) = later {
        match Checkpoint::open(note, key) {
            Ok(cp) => {
                let ok = if cp.size == r.log.tree_size {
                    cp.root == root
                } else {
                    cp.size > r.log.tree_size
                        && merkle::verify_consistency(
                            r.log.tree_size,
                            cp.size,
                            &root,
                            &cp.root,
                            consistency,
                        )
                };
                check(
                    &mut out,
                    ok,
                    format!(
                        "the given checkpoint ({} entries) is consistent with the receipt's: nothing was rewritten",
                        cp.size
                    ),
                    format!(
                        "the given checkpoint ({} entries) is NOT consistent with the receipt's tree: the log was rewritten",
                        cp.size
                    ),
                );
            }
            Err(e) => {
                check(&mut out, false, "", format!("the given checkpoint: {e}"));
            }
        }
    }
    out
}

/// Recompute every Merkle root from the backup and compare them with the receipt's.
pub fn verify_backup(r: &Receipt, archive: &Path, key_path: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let (manifest, roots) = match archive_roots(archive, key_path) {
        Ok(r) => r,
        Err(e) => {
            check(
                &mut out,
                false,
                "",
                format!("the backup could not be read: {}", e.message),
            );
            return out;
        }
    };
    let id = manifest.id;
    let body = match WorkBody::of(&r.body) {
        Ok(b) => b,
        Err(e) => {
            check(&mut out, false, "", e.message);
            return out;
        }
    };
    let Some(task) = body
        .tasks
        .iter()
        .find(|t| t.backup.as_ref().is_some_and(|b| b.id == id))
    else {
        check(
            &mut out,
            false,
            "",
            format!("the receipt covers no task with backup {id}"),
        );
        return out;
    };
    for ch in &task.changes {
        let table = ch.table.as_str();
        let got = roots
            .get(table)
            .map(|(_, h)| hex::encode(h))
            .unwrap_or_default();
        let rows = roots.get(table).map(|(n, _)| *n).unwrap_or(0);
        check(
            &mut out,
            got == ch.merkle_root && rows == ch.rows,
            format!("{table}: {rows} rows in the backup hash to the receipt's Merkle root"),
            format!(
                "{table}: the backup's {rows} rows do not hash to the receipt's Merkle root (or count)"
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        // Quotes, backslashes, every control character, the BMP above the surrogates
        // (which sorts after astral characters in UTF-16), astral characters, and any.
        prop_oneof![
            "[\"\\\\\\x00-\\x1f\\x7f a-z]{0,12}",
            "[\\u{e000}-\\u{ffff}\\u{10000}-\\u{10ffff}a]{0,6}",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// The row's canonical JSON written directly is the canonical JSON of its value.
        #[test]
        fn a_rows_canonical_json_is_rfc_8785(
            t in text(),
            k in text(),
            v in proptest::collection::btree_map(text(), proptest::option::of(text()), 0..6),
        ) {
            let rec = Record { t, k, v };
            let value = serde_json::to_value(&rec).unwrap();
            prop_assert_eq!(canonical_record(&rec), canonical(&value).unwrap());
        }
    }
}
