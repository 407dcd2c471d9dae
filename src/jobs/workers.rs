//! Which workers of this host are alive: each holds an exclusive lock on a presence file
//! in `jobs.workers_dir` for as long as it runs. The operating system drops the lock
//! when the process ends, however it ends (SIGKILL, a crash, a power cut), so a presence
//! file whose lock can be taken belongs to a worker that is gone: its leases can be
//! released at once instead of being waited out.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Code, Error, Result};

const SUFFIX: &str = ".worker";

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(
        Code::Io,
        format!("worker presence: {what} {}: {e}", path.display()),
    )
}

/// This worker's presence: the lock is held until it is dropped (or the process ends).
#[derive(Debug)]
pub struct Presence {
    path: PathBuf,
    _file: File,
}

impl Presence {
    /// Announce `worker` in `dir`. The file is locked before it gets its final name, so a
    /// presence file seen unlocked is never one still being made.
    pub fn announce(dir: &Path, worker: &str) -> Result<Presence> {
        crate::fsx::create_dir_private(dir).map_err(|e| io("create", dir, e))?;
        let name = crate::store::new_id();
        let tmp = dir.join(format!(".{name}.tmp"));
        let path = dir.join(format!("{name}{SUFFIX}"));
        let mut file = crate::fsx::create_private(&tmp).map_err(|e| io("create", &tmp, e))?;
        file.try_lock().map_err(|e| io("lock", &tmp, e))?;
        file.write_all(format!("{worker}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("rename", &tmp, e))?;
        Ok(Presence { path, _file: file })
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        // The lock goes with the file handle, right after.
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(
                "worker presence: cannot remove {}: {e}",
                self.path.display()
            );
        }
    }
}

/// A worker of this host that is gone. Its presence file stays locked by us until
/// [`Gone::forget`], so no one else acts on it meanwhile.
#[derive(Debug)]
pub struct Gone {
    pub worker: String,
    path: PathBuf,
    _file: File,
}

impl Gone {
    /// Remove its presence file, once its leases are released.
    pub fn forget(self) -> Result<()> {
        std::fs::remove_file(&self.path).map_err(|e| io("remove", &self.path, e))
    }
}

/// The workers of this host (sharing `dir`) that are gone.
pub fn gone(dir: &Path) -> Result<Vec<Gone>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io("read", dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_presence = name.ends_with(SUFFIX);
        // A file a worker died making before it had its final name.
        let is_unfinished = name.starts_with('.') && name.ends_with(".tmp");
        if !is_presence && !is_unfinished {
            continue;
        }
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // just forgotten
            Err(e) => return Err(io("open", &path, e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => continue, // alive
            Err(std::fs::TryLockError::Error(e)) => return Err(io("lock", &path, e)),
        }
        if is_unfinished {
            std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
            continue;
        }
        // A worker's name: a few bytes; never more than a small bound is read.
        let bytes = crate::fsx::read_bounded(&mut file, &path.display().to_string(), 4096)?;
        let worker = String::from_utf8_lossy(&bytes).trim().to_owned();
        if worker.is_empty() {
            std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
            continue;
        }
        out.push(Gone {
            worker,
            path,
            _file: file,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_worker_is_not_gone_and_a_dropped_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = Presence::announce(dir.path(), "host:1:a").unwrap();
        assert!(gone(dir.path()).unwrap().is_empty(), "a holds its lock");
        drop(a);
        assert!(gone(dir.path()).unwrap().is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // A file nobody holds: its worker is gone.
        std::fs::write(dir.path().join(format!("x{SUFFIX}")), "host:2:b\n").unwrap();
        let g = gone(dir.path()).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].worker, "host:2:b");
        // Held by us until forgotten.
        assert!(gone(dir.path()).unwrap().is_empty());
        for g in g {
            g.forget().unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
