//! Waking the workers when work is made, instead of leaving it to their next poll
//! (`jobs.poll_seconds`).
//!
//! The store wakes them itself, in one place: a transaction that makes work for a worker
//! (an approval, a release or a retry, a request whose work is done and whose receipt is
//! due, a message to send) is committed with [`Store::commit_work`]. That wakes the
//! workers of this process after the commit ([`Wake`]) and, on PostgreSQL, those of every
//! other process too: `pg_notify('quietus_work')` inside the transaction, delivered only
//! when it commits, to the listener [`Store::watch_other_processes`] holds. SQLite has no
//! NOTIFY: there the watcher reads the database's data version (see
//! [`DATA_VERSION_EVERY`]).
//!
//! A wake is only a hint: a worker woken finds what is due the way a poll does, so a wake
//! lost (a dropped connection, a crash between commit and wake) costs at most one poll.

use std::convert::Infallible;
use std::time::Duration;

use sqlx::{ConnectOptions, Connection};
use tokio::sync::watch;

use super::{Pool, Store};
use crate::lifecycle::state::State;

/// The PostgreSQL channel that work-making transactions notify.
pub const CHANNEL: &str = "quietus_work";

/// How often the SQLite watcher reads `PRAGMA data_version`.
///
/// SQLite has no NOTIFY. `PRAGMA data_version`, read on a connection of its own, changes
/// exactly when another connection (of this process or of another) committed a change to
/// the database: it is SQLite's own, documented answer to "did someone else write?". A
/// look is one statement on an idle connection that reads the WAL index in shared memory
/// (no table, no lock a writer waits for), so ten looks a second keep a wake from another
/// process under a tenth of a second while an idle daemon stays near zero CPU (most of
/// a look's cost is waking a thread at all). It also fires on commits that made no work
/// (this process's own, too): the round it starts finds nothing due, as a poll would, and
/// writes nothing, so it does not wake itself again. The alternatives promise less or
/// cost more: the `-wal` file's change events (inotify) need a dependency and a platform,
/// and fire before the commit is visible; a counter table that work-making transactions
/// bump needs a migration, and would still be read this way; reading the WAL index's
/// bytes from the `-shm` file ourselves is cheaper still, but leans on SQLite's internals.
pub const DATA_VERSION_EVERY: Duration = Duration::from_millis(100);

/// How long a watcher that lost its connection waits before it tries again (the workers
/// poll meanwhile).
const RECONNECT_AFTER: Duration = Duration::from_secs(5);

/// The wake signal of one process's workers. Every clone of a [`Store`] shares it.
#[derive(Debug)]
pub struct Wake(watch::Sender<u64>);

impl Default for Wake {
    fn default() -> Self {
        Wake(watch::Sender::new(0))
    }
}

impl Wake {
    /// Wake every worker of this process that waits (or, when it is busy, make its next
    /// wait return at once).
    pub fn fire(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A worker's end of the wake signal: [`Woken::wait`] returns once work was made since
/// it was made, or since the last wait returned.
#[derive(Debug)]
pub struct Woken(watch::Receiver<u64>);

impl Woken {
    /// Whether work was made since this was made or last asked (or waited), without
    /// waiting.
    pub fn take(&mut self) -> bool {
        let made = self.0.has_changed().unwrap_or(false);
        self.0.mark_unchanged();
        made
    }

    /// Until work is made (at once if some was made since the last wait).
    pub async fn wait(&mut self) {
        if self.0.changed().await.is_err() {
            // The store is gone: nothing wakes this worker any more but its poll.
            std::future::pending::<()>().await;
        }
    }
}

/// Says, inside a transaction, that it makes work (delivered when it commits).
pub(crate) trait Announce {
    fn announce(&mut self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

impl Announce for sqlx::Transaction<'_, sqlx::Postgres> {
    async fn announce(&mut self) -> Result<(), sqlx::Error> {
        // PostgreSQL delivers a notification when (and only if) the transaction commits,
        // once however often it was sent in it. No payload: a woken worker looks.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&mut **self)
            .await
            .map(|_| ())
    }
}

impl Announce for sqlx::Transaction<'_, sqlx::Sqlite> {
    async fn announce(&mut self) -> Result<(), sqlx::Error> {
        // Other processes see the commit itself (`PRAGMA data_version`).
        Ok(())
    }
}

/// Whether a request that enters `state` has work the workers do (schedule its plan, run
/// its tasks, issue its receipts). Every state is named: a new one must be sorted here.
pub(crate) fn worked_on(state: State) -> bool {
    match state {
        State::Approved
        | State::Scheduled
        | State::Running
        | State::Failed
        | State::NeedsAttention
        | State::Completed => true,
        State::Unverified
        | State::PendingReview
        | State::OnHold
        | State::Cancelled
        | State::Rejected
        | State::Restored => false,
    }
}

impl Store {
    /// A worker's end of this process's wake signal; take it before the first look for
    /// work, so that nothing made during that look is missed.
    pub fn work_made(&self) -> Woken {
        Woken(self.wake.0.subscribe())
    }

    /// Commit a transaction; when it made work for the workers (`work`), wake them: this
    /// process's after the commit, other processes' by a notification it commits.
    pub(crate) async fn commit_work<'c, DB>(
        &self,
        mut tx: sqlx::Transaction<'c, DB>,
        work: bool,
    ) -> Result<(), sqlx::Error>
    where
        DB: sqlx::Database,
        sqlx::Transaction<'c, DB>: Announce,
    {
        if work {
            tx.announce().await?;
        }
        tx.commit().await?;
        if work {
            self.wake.fire();
        }
        Ok(())
    }

    /// Until `stop`: wake this process's workers when another process made work. On
    /// PostgreSQL, a listener on [`CHANNEL`] (on a connection of its own, listening again
    /// when the connection is lost); on SQLite, the data version (see
    /// [`DATA_VERSION_EVERY`]). When it cannot watch, the workers still poll.
    pub async fn watch_other_processes(&self, mut stop: watch::Receiver<bool>) {
        tokio::select! {
            _ = self.watch() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    async fn watch(&self) {
        loop {
            let lost = match &self.pool {
                Pool::Postgres(p) => self.listen(p).await,
                Pool::Sqlite(p) => self.watch_data_version(p).await,
            };
            tracing::warn!(
                "cannot watch the state store for work made by other processes ({lost}); \
                 polling, and trying again in {RECONNECT_AFTER:?}"
            );
            tokio::time::sleep(RECONNECT_AFTER).await;
        }
    }

    /// Listen on [`CHANNEL`] on a connection of its own (not one of the pool's), until it
    /// fails; returns why.
    async fn listen(&self, pool: &sqlx::PgPool) -> String {
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with((*pool.connect_options()).clone());
        let why: Result<Infallible, sqlx::Error> = async {
            let mut l = sqlx::postgres::PgListener::connect_with(&own).await?;
            l.listen(CHANNEL).await?;
            // What was made before it listened is looked for now.
            self.wake.fire();
            loop {
                // `None`: the connection was lost and is open again (notifications sent
                // meanwhile are lost, so look).
                let _ = l.try_recv().await?;
                self.wake.fire();
            }
        }
        .await;
        own.close().await;
        let Err(e) = why;
        format!("PostgreSQL listener: {e}")
    }

    /// Read `PRAGMA data_version` every [`DATA_VERSION_EVERY`] on a connection of its own,
    /// until it fails; returns why.
    async fn watch_data_version(&self, pool: &sqlx::SqlitePool) -> String {
        let opts = pool.connect_options();
        if opts.get_filename().as_os_str() == ":memory:" {
            // No other process can open it.
            return std::future::pending().await;
        }
        let why: Result<Infallible, sqlx::Error> = async {
            // Not in the statement log: ten looks a second would drown it.
            let opts = (*opts).clone().disable_statement_logging();
            let mut c = sqlx::SqliteConnection::connect_with(&opts).await?;
            let mut seen: i64 = sqlx::query_scalar("PRAGMA data_version")
                .fetch_one(&mut c)
                .await?;
            // What was committed before it watched is looked for now.
            self.wake.fire();
            let mut every = tokio::time::interval(DATA_VERSION_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let now: i64 = sqlx::query_scalar("PRAGMA data_version")
                    .fetch_one(&mut c)
                    .await?;
                if now != seen {
                    seen = now;
                    self.wake.fire();
                }
            }
        }
        .await;
        let Err(e) = why;
        format!("SQLite data version: {e}")
    }
}
