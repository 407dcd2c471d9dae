//! Backups: exactly the rows and values a task will change, as JSON lines, compressed with
//! zstd and encrypted with age to a key of their own.
//!
//! An archive is written to a temporary name, synced, renamed, its folder synced, and then
//! read back whole (decrypt, decompress, parse, count, digest) before anything is changed.
//! Each archive has its own age identity in the keys folder; destroying that file
//! (crypto-shredding) makes every copy of the archive unreadable.
//!
//! With the key, an operator opens one with the stock tools:
//! `age -d -i KEYS/ID.key BACKUPS/ID.jsonl.zst.age | zstd -d`.
//!
//! Format (one JSON object a line): a manifest
//! `{"quietus_backup":1,"id",...,"digest_key","tables":[{"table","key","action","columns":[{"name","type"}]}]}`,
//! then one line per row `{"t":TABLE,"k":KEY,"v":{COLUMN:TEXT|null}}`, then a trailer
//! `{"end":true,"rows":N,"rows_sha256":HEX}` (SHA-256 over the row lines).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Code, Error, Result};
use crate::targets::sql::Column;

pub const FORMAT: u32 = 1;

/// What one table's part of a backup is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableManifest {
    pub table: String,
    pub key: Column,
    /// erase | anonymize | reassign | disable (an unknown action does not open).
    pub action: crate::policy::Action,
    /// The columns backed up (for erase: every column of the row).
    pub columns: Vec<Column>,
    /// For updates: the value each changed column gets (null: NULL).
    #[serde(default)]
    pub set: BTreeMap<String, Option<String>>,
}

/// The first line of an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub quietus_backup: u32,
    pub id: String,
    pub request_id: Option<String>,
    pub task_id: String,
    pub system: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Hex key for HMAC row digests; it lives only here, and dies with the archive's key.
    pub digest_key: String,
    pub tables: Vec<TableManifest>,
}

/// One backed-up row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub t: String,
    pub k: String,
    pub v: BTreeMap<String, Option<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trailer {
    end: bool,
    rows: u64,
    rows_sha256: String,
}

/// A finished archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub path: PathBuf,
    pub key_path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub rows: u64,
}

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(Code::Io, format!("backup: {what} {}: {e}", path.display()))
}

/// Where the archive and the key of backup `id` live.
pub fn paths(dir: &Path, keys_dir: &Path, id: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{id}.jsonl.zst.age")),
        keys_dir.join(format!("{id}.key")),
    )
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync folder", dir, e))
}

type Sink = zstd::stream::write::Encoder<'static, age::stream::StreamWriter<BufWriter<File>>>;

/// Writes an archive, row by row.
pub struct Writer {
    sink: Sink,
    tmp: PathBuf,
    path: PathBuf,
    key_path: PathBuf,
    rows: u64,
    hasher: Sha256,
}

impl Writer {
    /// Create the key (synced) and start the archive.
    pub fn create(dir: &Path, keys_dir: &Path, manifest: &Manifest) -> Result<Writer> {
        for d in [dir, keys_dir] {
            crate::fsx::create_dir_private(d).map_err(|e| io("create", d, e))?;
        }
        let (path, key_path) = paths(dir, keys_dir, &manifest.id);
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        let key_text = format!(
            "# quietus backup key for {}\n# public key: {recipient}\n{}\n",
            manifest.id,
            identity.to_string().expose_secret()
        );
        write_private(&key_path, key_text.as_bytes())?;
        sync_dir(keys_dir)?;
        let tmp = dir.join(format!(".{}.tmp", manifest.id));
        let file = crate::fsx::create_private(&tmp).map_err(|e| io("create", &tmp, e))?;
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .map_err(|e| Error::new(Code::Internal, format!("backup: age: {e}")))?;
        let aged = encryptor
            .wrap_output(BufWriter::new(file))
            .map_err(|e| io("encrypt", &tmp, e))?;
        let sink =
            zstd::stream::write::Encoder::new(aged, 3).map_err(|e| io("compress", &tmp, e))?;
        let mut w = Writer {
            sink,
            tmp,
            path,
            key_path,
            rows: 0,
            hasher: Sha256::new(),
        };
        let line = serde_json::to_string(manifest)?;
        w.line(&line)?;
        Ok(w)
    }

    fn line(&mut self, s: &str) -> Result<()> {
        self.sink
            .write_all(s.as_bytes())
            .and_then(|()| self.sink.write_all(b"\n"))
            .map_err(|e| io("write", &self.tmp, e))
    }

    pub fn write_row(&mut self, r: &Record) -> Result<()> {
        let line = serde_json::to_string(r)?;
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        self.rows += 1;
        self.line(&line)
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Write the trailer, finish, sync, and move the archive to its final name.
    pub fn finish(mut self) -> Result<Written> {
        let trailer = Trailer {
            end: true,
            rows: self.rows,
            rows_sha256: hex::encode(self.hasher.clone().finalize()),
        };
        let line = serde_json::to_string(&trailer)?;
        self.line(&line)?;
        let aged = self
            .sink
            .finish()
            .map_err(|e| io("compress", &self.tmp, e))?;
        let buf = aged.finish().map_err(|e| io("encrypt", &self.tmp, e))?;
        let file = buf
            .into_inner()
            .map_err(|e| io("write", &self.tmp, e.error()))?;
        file.sync_all().map_err(|e| io("sync", &self.tmp, e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| io("rename", &self.tmp, e))?;
        if let Some(d) = self.path.parent() {
            sync_dir(d)?;
        }
        let (sha256, size) = file_sha256(&self.path)?;
        Ok(Written {
            path: self.path,
            key_path: self.key_path,
            sha256,
            size,
            rows: self.rows,
        })
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = crate::fsx::create_new_private(path).map_err(|e| io("create", path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io("write", path, e))
}

/// SHA-256 and size of a file.
pub fn file_sha256(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).map_err(|e| io("open", path, e))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(|e| io("read", path, e))?;
    Ok((hex::encode(h.finalize()), n))
}

fn load_identity(key_path: &Path) -> Result<age::x25519::Identity> {
    let text = crate::fsx::read_text_limited(key_path, crate::fsx::limit::KEY)?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .ok_or_else(|| {
            Error::new(
                Code::Io,
                format!("backup: {} holds no age key", key_path.display()),
            )
        })?;
    age::x25519::Identity::from_str(line).map_err(|e| {
        Error::new(
            Code::Io,
            format!("backup: bad key in {}: {e}", key_path.display()),
        )
    })
}

/// Reads an archive row by row; the trailer is checked when the rows run out.
pub struct Reader {
    lines: std::io::Lines<Box<dyn BufRead + Send>>,
    path: PathBuf,
    pub manifest: Manifest,
    rows: u64,
    hasher: Sha256,
    done: bool,
}

impl Reader {
    pub fn open(path: &Path, key_path: &Path) -> Result<Reader> {
        let identity = load_identity(key_path)?;
        let file = File::open(path).map_err(|e| io("open", path, e))?;
        let decryptor =
            age::Decryptor::new(BufReader::new(file)).map_err(|e| io("decrypt", path, e))?;
        let plain = decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .map_err(|e| io("decrypt", path, e))?;
        let unz = zstd::stream::read::Decoder::new(plain).map_err(|e| io("decompress", path, e))?;
        let reader: Box<dyn BufRead + Send> = Box::new(BufReader::new(unz));
        let mut lines = reader.lines();
        let first = lines
            .next()
            .ok_or_else(|| io("read", path, "empty archive"))?
            .map_err(|e| io("read", path, e))?;
        let manifest: Manifest =
            serde_json::from_str(&first).map_err(|e| io("parse manifest of", path, e))?;
        if manifest.quietus_backup != FORMAT {
            return Err(io(
                "read",
                path,
                format!("unknown backup format {}", manifest.quietus_backup),
            ));
        }
        Ok(Reader {
            lines,
            path: path.to_path_buf(),
            manifest,
            rows: 0,
            hasher: Sha256::new(),
            done: false,
        })
    }

    /// The next row; `Ok(None)` at the end, after the trailer was checked.
    pub fn next_row(&mut self) -> Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let line = match self.lines.next() {
            Some(l) => l.map_err(|e| io("read", &self.path, e))?,
            None => {
                return Err(io(
                    "read",
                    &self.path,
                    "the archive ends without its trailer (truncated)",
                ));
            }
        };
        if line.starts_with("{\"end\"") {
            let t: Trailer =
                serde_json::from_str(&line).map_err(|e| io("parse trailer of", &self.path, e))?;
            let digest = hex::encode(self.hasher.clone().finalize());
            if t.rows != self.rows || t.rows_sha256 != digest {
                return Err(io(
                    "verify",
                    &self.path,
                    format!(
                        "trailer says {} rows ({}), read {} ({digest})",
                        t.rows, t.rows_sha256, self.rows
                    ),
                ));
            }
            self.done = true;
            return Ok(None);
        }
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        self.rows += 1;
        let r: Record =
            serde_json::from_str(&line).map_err(|e| io("parse row of", &self.path, e))?;
        Ok(Some(r))
    }
}

/// Read an archive back whole and check it: rows per table.
pub fn verify(
    path: &Path,
    key_path: &Path,
    expected_sha256: Option<&str>,
) -> Result<BTreeMap<String, u64>> {
    verify_each(path, key_path, expected_sha256, |_, _| Ok(()))
}

/// [`verify`], showing each row to `each` on the way (with the manifest): whatever else
/// needs every row (the receipt's row digests) comes from this one read-back.
pub fn verify_each(
    path: &Path,
    key_path: &Path,
    expected_sha256: Option<&str>,
    mut each: impl FnMut(&Manifest, &Record) -> Result<()>,
) -> Result<BTreeMap<String, u64>> {
    if let Some(want) = expected_sha256 {
        let (got, _) = file_sha256(path)?;
        if got != want {
            return Err(io(
                "verify",
                path,
                "the archive's SHA-256 is not the one recorded",
            ));
        }
    }
    let mut r = Reader::open(path, key_path)?;
    let mut counts: BTreeMap<String, u64> = r
        .manifest
        .tables
        .iter()
        .map(|t| (t.table.clone(), 0))
        .collect();
    while let Some(rec) = r.next_row()? {
        match counts.get_mut(&rec.t) {
            Some(n) => *n += 1,
            None => {
                return Err(io(
                    "verify",
                    path,
                    format!("a row of table {} that the manifest does not list", rec.t),
                ));
            }
        }
        each(&r.manifest, &rec)?;
    }
    Ok(counts)
}

/// Crypto-shred: overwrite and remove the key, then remove the archive.
pub fn shred(path: &Path, key_path: &Path) -> Result<()> {
    if key_path.exists() {
        let len = std::fs::metadata(key_path).map(|m| m.len()).unwrap_or(0);
        let mut f = crate::fsx::open_write(key_path).map_err(|e| io("open", key_path, e))?;
        f.write_all(&vec![0u8; len as usize])
            .and_then(|()| f.sync_all())
            .map_err(|e| io("overwrite", key_path, e))?;
        drop(f);
        std::fs::remove_file(key_path).map_err(|e| io("remove", key_path, e))?;
        if let Some(d) = key_path.parent() {
            sync_dir(d)?;
        }
    }
    if path.exists() {
        std::fs::remove_file(path).map_err(|e| io("remove", path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(id: &str) -> Manifest {
        Manifest {
            quietus_backup: FORMAT,
            id: id.into(),
            request_id: Some("r1".into()),
            task_id: "t1".into(),
            system: "crm".into(),
            created_at: chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap(),
            digest_key: "00".repeat(32),
            tables: vec![TableManifest {
                table: "notes".into(),
                key: Column {
                    name: "id".into(),
                    sql_type: "integer".into(),
                },
                action: crate::policy::Action::Erase,
                columns: vec![Column {
                    name: "body".into(),
                    sql_type: "text".into(),
                }],
                set: BTreeMap::new(),
            }],
        }
    }

    #[test]
    fn round_trip_verify_and_shred() {
        let dir = tempfile::tempdir().unwrap();
        let (b, k) = (dir.path().join("b"), dir.path().join("k"));
        let mut w = Writer::create(&b, &k, &manifest("x1")).unwrap();
        for i in 0..1000 {
            let v = [("body".to_owned(), Some(format!("note {i} 备注")))]
                .into_iter()
                .collect();
            w.write_row(&Record {
                t: "notes".into(),
                k: i.to_string(),
                v,
            })
            .unwrap();
        }
        let written = w.finish().unwrap();
        assert_eq!(written.rows, 1000);
        let counts = verify(&written.path, &written.key_path, Some(&written.sha256)).unwrap();
        assert_eq!(counts["notes"], 1000);
        // The plaintext is not in the file.
        let raw = crate::fsx::read_limited(&written.path, u64::MAX).unwrap();
        assert!(!raw.windows(4).any(|w| w == b"note"));
        // Truncation is detected.
        let cut = dir.path().join("cut");
        std::fs::write(&cut, &raw[..raw.len() - 40]).unwrap();
        assert!(verify(&cut, &written.key_path, None).is_err());
        shred(&written.path, &written.key_path).unwrap();
        assert!(!written.key_path.exists() && !written.path.exists());
    }
}
