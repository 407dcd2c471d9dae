//! Backups past their keep period are crypto-shredded, and so is every archive that no
//! backup record names and no live worker can record any more; a dead worker of this host
//! has its leases released at once.

use chrono::{DateTime, Utc};

use super::{Settings, export, prove, workers};
use crate::error::{Code, Error, Result};
use crate::lifecycle::Context;

/// What an expiry run crypto-shredded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shredded {
    /// Backups past their expiry.
    pub expired: usize,
    /// Archives no backup record names (see [`shred_unrecorded`]).
    pub unrecorded: usize,
}

/// Crypto-shred every backup past its expiry, and record it; and every archive that no
/// backup record names and no live worker can record any more.
pub async fn expire_backups(ctx: &Context, s: &Settings, now: DateTime<Utc>) -> Result<Shredded> {
    let unrecorded = shred_unrecorded_or_say_why(ctx, s, now).await?;
    export::expire(ctx, now).await?;
    let mut expired = 0;
    for b in ctx.store.expired_backups(now).await? {
        let (path, key) = crate::backup::paths(&s.backup_dir, &s.keys_dir, &b.id);
        crate::backup::shred(&path, &key)?;
        ctx.store.backup_shredded(&b.id, now).await?;
        prove::shred_receipt(ctx, &s.prover, &b, now).await?;
        tracing::info!(backup = %b.id, "backup expired and crypto-shredded");
        expired += 1;
    }
    Ok(Shredded {
        expired,
        unrecorded,
    })
}

/// After a worker of this host died: release its leases (its tasks are taken over at
/// once, not when the leases would have expired), write the receipt and checkpoint
/// files it may have left unwritten, then shred the archives no one can record any
/// more. Returns (leases released, archives shredded).
pub async fn recover(ctx: &Context, s: &Settings, now: DateTime<Utc>) -> Result<(u64, usize)> {
    let mut released = 0;
    let gone = workers::gone(&s.workers_dir)?;
    if !gone.is_empty() {
        // Before it is forgotten: should this fail, it is tried again next round.
        prove::restore_files(ctx, &s.prover).await?;
    }
    for gone in gone {
        let (tasks, mails) = ctx.store.release_leases_of(&gone.worker).await?;
        if tasks + mails > 0 {
            tracing::warn!(
                worker = %gone.worker,
                tasks,
                mails,
                "a worker of this host stopped before finishing: its leases are released"
            );
        }
        released += tasks;
        gone.forget()?;
    }
    Ok((released, shred_unrecorded_or_say_why(ctx, s, now).await?))
}

/// [`shred_unrecorded`], where a backup folder that cannot be read (an outage: unmounted,
/// not a folder) does not stop the round: the rest of the work goes on (a task that needs
/// the folder fails with the cause, and is tried again), and the archives are looked for
/// again next round. A failing state store still fails the round.
async fn shred_unrecorded_or_say_why(
    ctx: &Context,
    s: &Settings,
    now: DateTime<Utc>,
) -> Result<usize> {
    match shred_unrecorded(ctx, s, now).await {
        Ok(n) => Ok(n),
        Err(e) if e.code == Code::Io => {
            tracing::error!(code = %e.code, "archives no record names cannot be looked for this round: {}", e.message);
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// Crypto-shred archives that will never be recorded as backups: those whose writer can
/// no longer record them (it stopped, or lost its lease: each archive's intent is
/// recorded before its first byte), and files that no record names at all (the store is
/// asked only about files this worker has not found recorded before: see
/// [`RecordedArchives`]). An archive a live worker is still writing is left alone.
/// Returns how many were shredded.
pub async fn shred_unrecorded(ctx: &Context, s: &Settings, now: DateTime<Utc>) -> Result<usize> {
    let mut n = 0;
    for a in ctx.store.abandoned_archives().await? {
        shred_archive_files(s, &a.id)?;
        ctx.store.archive_shredded(&a, now).await?;
        tracing::warn!(backup = %a.id, task = %a.task_id, "an archive its worker never recorded was crypto-shredded");
        n += 1;
    }
    // The folders first, then the store: an archive's intent is committed before its
    // first file, so any file listed here is named by a record the store then shows.
    let on_disk = archive_ids_on_disk(s)?;
    // Only about archives not found recorded before (see [`RecordedArchives`]); one gone
    // from the folders is forgotten.
    let mut recorded = s.recorded_archives.lock().await;
    recorded.0.retain(|id| on_disk.contains(id));
    let new: Vec<String> = on_disk
        .into_iter()
        .filter(|id| !recorded.0.contains(id))
        .collect();
    if new.is_empty() {
        return Ok(n);
    }
    let live = ctx.store.live_archive_ids_among(&new).await?;
    for id in new {
        if live.contains(&id) {
            recorded.0.insert(id);
            continue;
        }
        shred_archive_files(s, &id)?;
        tracing::warn!(backup = %id, "an archive no record names was crypto-shredded");
        n += 1;
    }
    Ok(n)
}

/// The archives in a worker's backup folders that it already found named by a record (a
/// backup not shredded, or an archive being written), so that [`shred_unrecorded`] asks
/// the state store only about files it has not seen before: all of them at a worker's
/// first round, then those that appeared since. A round thus costs a listing of the
/// folders, not a look at every live backup.
///
/// Why one found recorded needs no second look while it is on disk: a record stops
/// naming an archive only once its files are removed (an expired backup is shredded, then
/// recorded so; an unrecorded archive likewise), and an archive whose writer stopped or
/// lost its lease is found by [`crate::store::Store::abandoned_archives`], asked every
/// round. An archive whose files vanish is forgotten, and asked about again should they
/// ever come back.
#[derive(Debug, Default)]
pub struct RecordedArchives(std::collections::BTreeSet<String>);

/// Ids of the archives, keys and archives being written in the backup folders.
fn archive_ids_on_disk(s: &Settings) -> Result<std::collections::BTreeSet<String>> {
    let mut ids = std::collections::BTreeSet::new();
    for (dir, strip) in [
        (&s.keys_dir, (None, ".key")),
        (&s.backup_dir, (None, ".jsonl.zst.age")),
        (&s.backup_dir, (Some("."), ".tmp")),
    ] {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::new(
                    Code::Io,
                    format!("cannot read {}: {e}", dir.display()),
                ));
            }
        };
        for e in entries {
            let e =
                e.map_err(|e| Error::new(Code::Io, format!("cannot read {}: {e}", dir.display())))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let (prefix, suffix) = strip;
            let rest = match prefix {
                Some(p) => name.strip_prefix(p),
                None => Some(name.as_str()).filter(|n| !n.starts_with('.')),
            };
            // Only names quietus gives archives (a 16-character id): a folder shared with
            // other files (the receipt signing key, say) keeps them.
            if let Some(id) = rest.and_then(|r| r.strip_suffix(suffix))
                && crate::store::is_id(id)
            {
                ids.insert(id.to_owned());
            }
        }
    }
    Ok(ids)
}

/// Crypto-shred an archive's key, and remove the archive and any part of it.
fn shred_archive_files(s: &Settings, id: &str) -> Result<()> {
    let (path, key) = crate::backup::paths(&s.backup_dir, &s.keys_dir, id);
    crate::backup::shred(&path, &key)?;
    let tmp = s.backup_dir.join(format!(".{id}.tmp"));
    crate::fsx::remove_if_present(&tmp)
        .map_err(|e| Error::new(Code::Io, format!("cannot remove {}: {e}", tmp.display())))
}
