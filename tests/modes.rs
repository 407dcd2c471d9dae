//! Everything quietus writes is owner-only (issue 9, item 1): 0600 files and 0700 folders,
//! whatever the umask, and no file is created outside `src/fsx.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{BIN, ok};

/// Every path under `root` (itself included) whose mode is not 0600 (files) or 0700
/// (folders), with its mode.
pub fn loose_modes(root: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            if mode != 0o700 {
                bad.push(format!("{:o} {}", mode, p.display()));
            }
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        } else if mode != 0o600 {
            bad.push(format!("{:o} {}", mode, p.display()));
        }
    }
    bad.sort();
    bad
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn everything_the_demo_writes_is_owner_only_under_umask_022() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("demo");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 022; exec \"$0\" demo --dir \"$1\" --json")
        .arg(BIN)
        .arg(&root)
        .env("QUIETUS_LOG", "error")
        .env_remove("QUIETUS_CONFIG")
        .env_remove("QUIETUS_NOW")
        .output()
        .unwrap();
    ok(&out);
    // A later command, under the same umask, writes the signing key's public half again
    // and more state: still owner-only.
    let cfg = root.join("quietus.toml");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 022; exec \"$0\" --config \"$1\" run --json")
        .arg(BIN)
        .arg(&cfg)
        .env("QUIETUS_LOG", "error")
        .env_remove("QUIETUS_NOW")
        .output()
        .unwrap();
    ok(&out);
    let files = files_under(&root);
    let names: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    // What the demo is expected to have written (so that the check covers them).
    for want in ["quietus.db", ".eml", ".json", ".key"] {
        assert!(
            names.iter().any(|n| n.contains(want)),
            "no {want} file under the demo: {names:?}"
        );
    }
    let bad = loose_modes(&root);
    assert!(bad.is_empty(), "not owner-only:\n{}", bad.join("\n"));
}

/// The one code path: nothing in `src/` creates a file or a folder except `src/fsx.rs`
/// (tests inside `src/` excepted: they start at the first `#[cfg(test)]`).
#[test]
fn no_file_is_created_outside_fsx() {
    let banned = [
        "fs::write(",
        "File::create(",
        "create_dir_all(",
        "fs::create_dir(",
        "OpenOptions::new(",
        "DirBuilder::new(",
        "tokio::fs::",
    ];
    let mut found = Vec::new();
    for p in files_under(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))) {
        if p.extension().is_none_or(|e| e != "rs") || p.ends_with("fsx.rs") {
            continue;
        }
        let text = common::read_to_string(&p).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (i, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for b in banned {
                if line.contains(b) {
                    found.push(format!("{}:{}: {}", p.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "files and folders are created through quietus::fsx (owner-only modes):\n{}",
        found.join("\n")
    );
}

/// SQLite creates the `-wal` and `-shm` files with the mode of the database file, which
/// quietus creates 0600 itself (sqlx has no mode option).
#[tokio::test]
async fn the_state_store_and_its_wal_and_shm_are_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("var/quietus.db");
    let url = format!("sqlite://{}", db.display());
    let (store, _) = quietus::store::Store::open(&url, 2, quietus::store::Open::CreateIfMissing)
        .await
        .unwrap();
    // While the store is open (and after a write), the WAL and its index exist.
    let wal = dir.path().join("var/quietus.db-wal");
    let shm = dir.path().join("var/quietus.db-shm");
    assert!(wal.exists() && shm.exists(), "no -wal/-shm while open");
    let bad = loose_modes(&dir.path().join("var"));
    store.close().await;
    assert!(bad.is_empty(), "not owner-only:\n{}", bad.join("\n"));
}
