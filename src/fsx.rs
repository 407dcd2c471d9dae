//! The one place quietus creates files and folders, and reads files a person names.
//!
//! Everything quietus writes may hold personal data or secrets (the state store, mail in
//! the outbox, exports, backups and their keys, receipts, the inbox's copies), so every
//! file is created owner-only (0600) and every folder 0700, whatever the process umask:
//! the mode is given to `open(2)` / `mkdir(2)` themselves, and a file that already
//! existed is narrowed to 0600 when it is written. A test (tests/modes.rs) refuses
//! `std::fs::write`, `File::create`, `create_dir_all` and `OpenOptions` anywhere else in
//! `src/`.
//!
//! Reads of files a person names (tickets, receipts, checkpoints, keys, config and
//! policy files) go through [`read_limited`]: at most the limit plus one byte is read,
//! from a file, a pipe or a device alike, so `/dev/zero` is an error, not a memory leak.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Code, Error, Result};

/// The mode of every file quietus creates.
pub const FILE_MODE: u32 = 0o600;
/// The mode of every folder quietus creates.
pub const DIR_MODE: u32 = 0o700;

/// Create `path` and any missing parents, each 0700. An existing folder is left as it is.
pub fn create_dir_private(path: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(DIR_MODE);
    }
    b.create(path)
}

/// Narrow an existing folder to 0700 (one quietus owns, such as the demo's).
pub fn make_dir_private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn options() -> std::fs::OpenOptions {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(FILE_MODE);
    }
    opts
}

fn narrow(f: &File) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    #[cfg(not(unix))]
    let _ = f;
    Ok(())
}

/// Create (or truncate) `path` for writing, 0600.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    let f = options().create(true).truncate(true).open(path)?;
    narrow(&f)?;
    Ok(f)
}

/// Create `path` for writing, 0600; an error if it exists.
pub fn create_new_private(path: &Path) -> std::io::Result<File> {
    options().create_new(true).open(path)
}

/// Open `path` for appending (created 0600 if missing, narrowed to 0600 if not).
pub fn append_private(path: &Path) -> std::io::Result<File> {
    let f = options().create(true).append(true).open(path)?;
    narrow(&f)?;
    Ok(f)
}

/// Open an existing file for writing (not created, not truncated).
pub fn open_write(path: &Path) -> std::io::Result<File> {
    options().open(path)
}

/// Make an SQLite database file `path` owner-only before SQLite opens it: an empty file
/// is created 0600 if none is there (SQLite takes an empty file as a new database, and
/// creates its `-wal`, `-shm` and `-journal` files with the database file's mode).
pub fn create_sqlite_private(path: &Path) -> std::io::Result<()> {
    match create_new_private(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Write `bytes` to `path` (created or truncated), 0600.
pub fn write_private(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    create_private(path)?.write_all(bytes.as_ref())
}

/// Make `path` with `bytes`, 0600 and synced, only if no file is there, and whole or not
/// at all: written to a temporary file beside it first, then linked to its name (which
/// fails with `AlreadyExists` when another got there first). Processes racing to make
/// the same file (instances starting at once make the signing key) then agree on one,
/// and none reads it half written.
pub fn publish_new_private(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let written = (|| {
        let mut f = create_new_private(&tmp)?;
        f.write_all(bytes.as_ref())?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    written?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Remove the file at `path`, if there is one: a file that is not there is not an error.
/// It is looked for first, because a read-only file system answers an unlink with EROFS
/// before it looks for the name: a file never created there is not one left behind.
pub fn remove_if_present(path: &Path) -> std::io::Result<()> {
    if let Err(e) = std::fs::symlink_metadata(path)
        && e.kind() == std::io::ErrorKind::NotFound
    {
        return Ok(());
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Write `bytes` to `path` (created or truncated), 0600, and sync it.
pub fn write_private_synced(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    let mut f = create_private(path)?;
    f.write_all(bytes.as_ref())?;
    f.sync_all()
}

/// Read at most `limit` bytes from `r`; more is an error naming `what` and the limit.
pub fn read_bounded(mut r: impl Read, what: &str, limit: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.by_ref()
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| Error::new(Code::Io, format!("{what}: {e}")))?;
    if buf.len() as u64 > limit {
        return Err(too_large(what, limit));
    }
    Ok(buf)
}

fn too_large(what: &str, limit: u64) -> Error {
    Error::new(
        Code::TooLarge,
        format!("{what} is larger than the limit of {limit} bytes"),
    )
}

/// Read the file, pipe or device at `path`, at most `limit` bytes (reading at most one
/// more); a larger one is a `too_large` error naming the file and the limit.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let what = path.display().to_string();
    let f = File::open(path).map_err(|e| Error::new(Code::Io, format!("{what}: {e}")))?;
    read_bounded(f, &what, limit)
}

/// [`read_limited`], as UTF-8 text.
pub fn read_text_limited(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_limited(path, limit)?)
        .map_err(|_| Error::new(Code::Io, format!("{}: not UTF-8 text", path.display())))
}

/// Open a file to read it piece by piece from async code (a download streamed to its
/// client), never creating it.
pub async fn open_read_async(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::File::open(path).await
}

/// Why [`open_owned_regular`] refused a path.
#[derive(Debug)]
pub enum Refused {
    /// Not a regular file: a symbolic link, a FIFO, a folder, a socket or a device (named).
    NotRegular(&'static str),
    /// A regular file, but owned by another user than the folder's owner.
    NotOwner,
    /// It could not be opened or examined.
    Io(std::io::Error),
}

fn kind(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a folder"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Open `path` for reading only if it is a regular file owned by `owner` (a uid): never
/// through a symbolic link (`O_NOFOLLOW`), never a FIFO or a device (examined before it is
/// opened, `O_NONBLOCK` so that one swapped in meanwhile cannot block, and examined again
/// once open, by the handle).
pub fn open_owned_regular(path: &Path, owner: u32) -> std::result::Result<File, Refused> {
    let before = std::fs::symlink_metadata(path).map_err(Refused::Io)?;
    if !before.file_type().is_file() {
        return Err(Refused::NotRegular(kind(before.file_type())));
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let f = match opts.open(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Refused::NotRegular("a symbolic link"));
        }
        Err(e) => return Err(Refused::Io(e)),
    };
    let meta = f.metadata().map_err(Refused::Io)?;
    if !meta.file_type().is_file() {
        return Err(Refused::NotRegular(kind(meta.file_type())));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if meta.uid() != owner {
            return Err(Refused::NotOwner);
        }
    }
    #[cfg(not(unix))]
    let _ = owner;
    Ok(f)
}

/// Narrow a file quietus has taken over (an inbox file it moved) to 0600, and a folder to
/// 0700; a link, FIFO or other special file is left as it is.
pub fn make_private(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if meta.is_dir() {
            DIR_MODE
        } else if meta.is_file() {
            FILE_MODE
        } else {
            return Ok(());
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = meta;
    Ok(())
}

/// Limits for files a person hands to quietus.
pub mod limit {
    /// Config, policy, calendar and template files.
    pub const TEXT: u64 = 4 * 1024 * 1024;
    /// Receipts and checkpoints.
    pub const RECEIPT: u64 = 16 * 1024 * 1024;
    /// Key files.
    pub const KEY: u64 = 64 * 1024;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_one_byte_past_the_limit() {
        let e = read_limited(Path::new("/dev/zero"), 1000).unwrap_err();
        assert_eq!(e.code, Code::TooLarge);
        assert!(e.message.contains("/dev/zero"), "{}", e.message);
        assert!(e.message.contains("1000 bytes"), "{}", e.message);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_private(&p, b"12345").unwrap();
        assert_eq!(read_limited(&p, 5).unwrap(), b"12345");
        assert_eq!(read_limited(&p, 4).unwrap_err().code, Code::TooLarge);
    }
}
