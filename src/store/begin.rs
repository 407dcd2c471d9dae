//! Every write transaction, on every database quietus writes to (its state store and the
//! target systems), begins here.
//!
//! SQLite starts a plain `BEGIN` as a reader and upgrades it to a writer at its first
//! write. When another connection (another process, or another connection of this one)
//! committed in between, the upgrade cannot wait for the lock: the reader's snapshot is
//! stale, and SQLite answers "database is locked" at once, whatever the busy timeout. A
//! transaction that reads and then writes (most of them) must take the write lock when it
//! begins: `BEGIN IMMEDIATE`, which waits for the busy timeout like any other lock.
//! PostgreSQL and MySQL lock rows, not the database: a plain `BEGIN`.
//!
//! `Pool::begin` is banned elsewhere (clippy.toml), so no transaction can forget this.

/// A pool that begins write transactions.
pub trait BeginWrite {
    type Db: sqlx::Database;
    /// Begin a transaction that may write.
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send;
}

impl BeginWrite for sqlx::SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for sqlx::PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        #[allow(clippy::disallowed_methods)] // the one place a plain BEGIN is right
        self.begin().await
    }
}

impl BeginWrite for sqlx::MySqlPool {
    type Db = sqlx::MySql;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::MySql>, sqlx::Error> {
        #[allow(clippy::disallowed_methods)] // the one place a plain BEGIN is right
        self.begin().await
    }
}
