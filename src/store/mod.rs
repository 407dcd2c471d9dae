//! The state store: SQLite (default, embedded, WAL) or PostgreSQL, with the same
//! behaviour. One migrations folder per dialect (`migrations/sqlite`, `migrations/postgres`),
//! embedded and applied at start. Queries are written once, with `$N` placeholders that
//! both drivers accept, and run on whichever pool is configured (no `Any` driver).
//!
//! The store speaks in plain rows; `lifecycle` gives them meaning.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::error::{Code, Error, Result};
use crate::lifecycle::state::State;
use crate::policy::{IdentityKind, Jurisdiction, RequestKind};

pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Which database holds the state.
#[derive(Debug, Clone)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Run the same code on whichever pool the store has. The body is compiled once per
/// driver, so queries stay typed without an `Any` driver.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite($pool) => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}

/// The state store.
#[derive(Debug, Clone)]
pub struct Store {
    pub pool: Pool,
    /// How many archive ids the orphan-archive check asked about (see
    /// [`Store::archive_ids_asked`]).
    archive_ids_asked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Wakes this process's workers when a transaction made work (see [`wake`]).
    wake: std::sync::Arc<wake::Wake>,
    /// This process's tickets waiting to be committed together (see [`insert`]).
    grouped: std::sync::Arc<insert::Grouped>,
}

/// A request as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RequestRow {
    pub id: String,
    pub kind: RequestKind,
    pub external_id: Option<String>,
    pub ticket_digest: String,
    pub state: State,
    pub held_from: Option<State>,
    pub jurisdiction: Jurisdiction,
    pub locale: String,
    pub source: String,
    pub requested_by: Option<String>,
    pub exit_date: Option<NaiveDate>,
    pub wants_copy: bool,
    pub received_at: DateTime<Utc>,
    pub verified_at: Option<DateTime<Utc>>,
    pub clock_start: Option<NaiveDate>,
    pub due_date: Option<NaiveDate>,
    pub original_due_date: Option<NaiveDate>,
    pub extended_at: Option<DateTime<Utc>>,
    pub extension_reason: Option<String>,
    pub updated_at: DateTime<Utc>,
}

const REQUEST_COLUMNS: &str = "id, kind, external_id, ticket_digest, state, held_from, jurisdiction, locale, \
     source, requested_by, exit_date, wants_copy, received_at, verified_at, clock_start, due_date, original_due_date, \
     extended_at, extension_reason, updated_at";

/// Whose identity a stored identity is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Role {
    /// The person the request is about.
    Subject,
    /// An exit's successor, who takes over the leaver's records.
    Successor,
}

/// An identity of a request's subject (or of an exit's successor).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct IdentityRow {
    pub role: Role,
    pub kind: IdentityKind,
    pub value: String,
}

/// One state change.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct HistoryRow {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub from_state: Option<State>,
    pub to_state: State,
    pub reason: Option<String>,
}

/// A request to insert.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub id: String,
    pub kind: RequestKind,
    pub external_id: Option<String>,
    pub ticket_digest: String,
    pub ticket_body: String,
    pub state: State,
    pub jurisdiction: Jurisdiction,
    pub locale: String,
    pub source: String,
    pub requested_by: Option<String>,
    pub exit_date: Option<NaiveDate>,
    pub wants_copy: bool,
    pub received_at: DateTime<Utc>,
    pub verified_at: Option<DateTime<Utc>>,
    pub clock_start: Option<NaiveDate>,
    pub due_date: Option<NaiveDate>,
    pub verify_token_sha256: Option<String>,
    pub identities: Vec<IdentityRow>,
    pub actor: String,
    /// Messages written in the same transaction (acknowledgement, verification link).
    pub mails: Vec<outbox::NewMail>,
}

/// What inserting a ticket did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    Created(String),
    /// The external id was known, with the same ticket: this is the request.
    Existing(String),
}

/// Fields a transition may set alongside the state.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub held_from: Option<Option<State>>,
    pub verified_at: Option<DateTime<Utc>>,
    pub clock_start: Option<NaiveDate>,
    pub due_date: Option<NaiveDate>,
    pub original_due_date: Option<NaiveDate>,
    pub extended_at: Option<DateTime<Utc>>,
    pub extension_reason: Option<String>,
    /// Messages written in the same transaction as the state change.
    pub mails: Vec<outbox::NewMail>,
    /// The plan approved, saved in the same transaction as the approval.
    pub plan: Option<NewPlan>,
    /// Cancel the request's tasks that are not finished (and drop their leases), in the
    /// same transaction: the plan they carry out is no longer the one to carry out.
    pub cancel_open_tasks: bool,
}

/// A plan to save with a decision.
#[derive(Debug, Clone)]
pub struct NewPlan {
    pub policy_digest: String,
    pub body: String,
}

/// A filter for listing requests.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub states: Vec<State>,
    pub limit: Option<i64>,
}

/// A saved plan.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PlanRow {
    pub created_at: DateTime<Utc>,
    pub policy_digest: String,
    pub body: String,
}

const ID_ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A new request id: 16 characters of Crockford base32 (80 random bits), so a short
/// prefix is enough to name a request on the command line.
pub fn new_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..16)
        .map(|_| char::from(ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())]))
        .collect()
}

/// What a database's tables and first applied migration (version, checksum) say it is.
fn found(tables: &[String], first: Option<(i64, Vec<u8>)>, ours: &Migrator) -> Found {
    let our_first = ours.iter().find(|m| m.migration_type.is_up_migration());
    let ours = matches!(
        (first, our_first),
        (Some((v, sum)), Some(m)) if v == m.version && sum == *m.checksum
    );
    if ours {
        Found::Store
    } else if tables.iter().all(|t| t == MIGRATIONS_TABLE) {
        Found::Empty
    } else {
        Found::Foreign
    }
}

const MIGRATIONS_TABLE: &str = "_sqlx_migrations";
const FIRST_MIGRATION: &str =
    "SELECT version, checksum FROM _sqlx_migrations ORDER BY version LIMIT 1";

/// What a database holds, looked at without changing it. The same statements on either
/// connection type.
macro_rules! inspect {
    ($conn:expr, $tables_sql:expr, $ours:expr) => {
        async {
            // Evaluated once, like every argument.
            let conn = $conn;
            let tables: Vec<String> = sqlx::query_scalar($tables_sql)
                .fetch_all(&mut *conn)
                .await?;
            let first: Option<(i64, Vec<u8>)> = if tables.iter().any(|t| t == MIGRATIONS_TABLE) {
                sqlx::query_as(FIRST_MIGRATION)
                    .fetch_optional(&mut *conn)
                    .await?
            } else {
                None
            };
            Ok::<Found, Error>(found(&tables, first, $ours))
        }
    };
}

/// What a person typed to name a request (on the command line, or in the HTTP API's
/// path): its whole id or the start of one, trimmed and in lower case. Only those doors
/// make one, and only [`Store::resolve`] takes one: everything else names a request by
/// its whole id, found by a search of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPrefix(String);

impl IdPrefix {
    /// Between 1 and 16 characters of the id alphabet (any case, spaces around).
    pub fn parse(typed: &str) -> Result<IdPrefix> {
        let p = typed.trim().to_ascii_lowercase();
        if p.is_empty() || p.len() > 16 || !p.bytes().all(|b| ID_ALPHABET.contains(&b)) {
            // (What was typed is not repeated: it may be anything, an address say.)
            return Err(Error::new(
                Code::NotFound,
                "no such request: a request id is 16 letters and digits (or the start of one)",
            ));
        }
        Ok(IdPrefix(p))
    }

    /// Whether it is a whole id (16 characters), not only the start of one.
    pub fn is_whole(&self) -> bool {
        self.0.len() == 16
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IdPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `s` has the shape of an id [`new_id`] makes.
pub fn is_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| ID_ALPHABET.contains(&b))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Whether opening the state store may create it. Only `serve`, `demo` and
/// `quietus store init` create one: every other command refuses a store that does not
/// exist, so that a mistyped URL is an error, not an empty queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// A store that exists (its migrations are brought up to date).
    Existing,
    /// A store that exists, or a new one in a missing SQLite file or an empty database.
    CreateIfMissing,
}

/// What opening found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    Existing,
    Created,
}

/// What a database holds, before the migrations run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// A quietus state store: its first applied migration is quietus's first.
    Store,
    /// No tables (a missing SQLite file is created empty).
    Empty,
    /// Tables of something else.
    Foreign,
}

const HOW_TO_CREATE: &str = "check store.url; `quietus store init` creates a store in a new SQLite file or an empty database";

fn not_a_store(why: &str) -> Error {
    Error::new(
        Code::Store,
        format!("no quietus state store here ({why}); {HOW_TO_CREATE}"),
    )
}

/// How a decision's transition went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moved {
    Yes,
    /// The request was no longer in the state the decision was taken on.
    No,
    /// Its work is done and its completion receipt is being issued.
    WorkDone,
}

impl Store {
    /// Open the state store at `url` and apply its migrations; create it only when `open`
    /// allows. What the database holds is looked at first, without changing it: a
    /// database that holds other tables is never touched, let alone made a store.
    pub async fn open(url: &str, max_connections: u32, open: Open) -> Result<(Store, Opened)> {
        let create = open == Open::CreateIfMissing;
        let opened = |found: Found| match (found, create) {
            (Found::Store, _) => Ok(Opened::Existing),
            (Found::Empty, true) => Ok(Opened::Created),
            (Found::Empty, false) => Err(not_a_store("the database is empty")),
            (Found::Foreign, _) => Err(not_a_store(
                "the database holds tables that are not a quietus store; quietus never puts its store beside them",
            )),
        };
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| Error::new(Code::Config, format!("store.url: {e}")))?;
            let file = opts.get_filename().to_path_buf();
            let found = if file.as_os_str() == ":memory:" {
                Found::Empty
            } else if !file.exists() {
                if !create {
                    return Err(not_a_store("the file does not exist"));
                }
                if let Some(parent) = file.parent()
                    && !parent.as_os_str().is_empty()
                {
                    crate::fsx::create_dir_private(parent).map_err(|e| {
                        Error::new(Code::Io, format!("cannot create {}: {e}", parent.display()))
                    })?;
                }
                // Owner-only: the store holds identities, tickets and mail. SQLite gives
                // the -wal and -shm files the database file's mode.
                crate::fsx::create_sqlite_private(&file).map_err(|e| {
                    Error::new(Code::Io, format!("cannot create {}: {e}", file.display()))
                })?;
                Found::Empty
            } else {
                // Read-only, and no journal-mode change: the file may be someone else's.
                use sqlx::Connection;
                let mut c =
                    sqlx::SqliteConnection::connect_with(&opts.clone().read_only(true)).await?;
                let found = inspect!(
                    &mut c,
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                    &SQLITE_MIGRATIONS
                )
                .await;
                c.close().await?;
                found?
            };
            let opened = opened(found)?;
            let opts = opts
                .create_if_missing(create)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(30));
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections.max(1))
                .connect_with(opts)
                .await?;
            SQLITE_MIGRATIONS.run(&pool).await?;
            Ok((
                Store {
                    pool: Pool::Sqlite(pool),
                    archive_ids_asked: Default::default(),
                    wake: Default::default(),
                    grouped: Default::default(),
                },
                opened,
            ))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = sqlx::postgres::PgConnectOptions::from_str(url)
                .map_err(|e| {
                    Error::new(
                        Code::Config,
                        format!("store.url is not a PostgreSQL URL: {e}"),
                    )
                })?
                // Short statements only: JIT compiling them costs 300 ms a statement when
                // the planner's estimate passes jit_above_cost (the task lease did, with
                // 100 000 requests in the store), for nothing.
                .options([("jit", "off")]);
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await
                .map_err(|e| {
                    Error::new(
                        Code::Store,
                        format!("cannot connect to the PostgreSQL state store: {e}"),
                    )
                })?;
            let found = async {
                let mut c = pool.acquire().await?;
                inspect!(
                    &mut *c,
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()",
                    &POSTGRES_MIGRATIONS
                )
                .await
            }
            .await;
            let opened = match found.and_then(opened) {
                Ok(o) => o,
                Err(e) => {
                    pool.close().await;
                    return Err(e);
                }
            };
            POSTGRES_MIGRATIONS.run(&pool).await?;
            Ok((
                Store {
                    pool: Pool::Postgres(pool),
                    archive_ids_asked: Default::default(),
                    wake: Default::default(),
                    grouped: Default::default(),
                },
                opened,
            ))
        } else {
            Err(Error::new(
                Code::Config,
                "store.url must start with sqlite: or postgres: (MySQL is supported as a target, not as the state store)",
            ))
        }
    }

    pub fn dialect(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }

    /// Open up to `n` connections now (at most the pool's size), all at once, and leave
    /// them idle in the pool: a long-running process's first requests then find them
    /// made instead of each waiting for one (on PostgreSQL a TLS handshake, and a look-up
    /// of the type `text` by name that sqlx makes once per connection, on the first
    /// statement that binds one of the store's enums: done here with one such statement).
    /// One that cannot be made now is made when it is needed.
    pub async fn open_connections(&self, n: usize) {
        on_pool!(self, p => {
            let n = n.min(usize::try_from(p.options().get_max_connections()).unwrap_or(1));
            let conns = futures_util::future::join_all((0..n).map(|_| async {
                let mut c = p.acquire().await?;
                sqlx::query("SELECT $1")
                    .bind(State::Approved)
                    .execute(&mut *c)
                    .await?;
                Ok::<_, sqlx::Error>(c)
            }))
            .await;
            if let Some(Err(e)) = conns.iter().find(|c| c.is_err()) {
                tracing::debug!("a store connection was not opened ahead: {e}");
            }
        })
    }

    /// The statement [`Store::request`] runs, `$1` the whole id: a search of one key in
    /// the primary key (public for the test that shows the database plans it so).
    pub fn request_sql() -> String {
        format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = $1")
    }

    /// A request by its whole id (as [`new_id`] made it). Every lookup inside quietus is
    /// this one; what a person types is resolved first, by [`Store::resolve`].
    pub async fn request(&self, id: &str) -> Result<RequestRow> {
        let sql = Store::request_sql();
        let row: Option<RequestRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(id).fetch_optional(pool).await?
        });
        row.ok_or_else(|| Error::new(Code::NotFound, format!("no request {id}")))
    }

    /// The whole id of the request a person named: by its whole id (a search of one key)
    /// or by a unique prefix of it (a scan: only the command line and the HTTP API, once
    /// per command or call).
    pub async fn resolve(&self, named: &IdPrefix) -> Result<String> {
        let ids: Vec<String> = if named.is_whole() {
            on_pool!(self, pool => {
                sqlx::query_scalar("SELECT id FROM requests WHERE id = $1")
                    .bind(named.as_str()).fetch_all(pool).await?
            })
        } else {
            on_pool!(self, pool => {
                sqlx::query_scalar("SELECT id FROM requests WHERE id LIKE $1 ORDER BY id LIMIT 2")
                    .bind(format!("{}%", named.as_str())).fetch_all(pool).await?
            })
        };
        match <[String; 1]>::try_from(ids) {
            Ok([id]) => Ok(id),
            Err(ids) if ids.is_empty() => {
                Err(Error::new(Code::NotFound, format!("no request {named}")))
            }
            Err(_) => Err(Error::new(
                Code::Ambiguous,
                format!("{named} is the start of more than one request id; give more of it"),
            )),
        }
    }

    pub async fn list_requests(&self, filter: &ListFilter) -> Result<Vec<RequestRow>> {
        let mut sql = format!("SELECT {REQUEST_COLUMNS} FROM requests");
        if !filter.states.is_empty() {
            let marks: Vec<String> = (1..=filter.states.len()).map(|i| format!("${i}")).collect();
            sql.push_str(&format!(" WHERE state IN ({})", marks.join(", ")));
        }
        sql.push_str(" ORDER BY received_at, id");
        if let Some(l) = filter.limit {
            sql.push_str(&format!(" LIMIT {}", l.max(0)));
        }
        let rows: Vec<RequestRow> = on_pool!(self, pool => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()));
            for s in &filter.states {
                q = q.bind(*s);
            }
            q.fetch_all(pool).await?
        });
        Ok(rows)
    }

    pub async fn identities(&self, request_id: &str) -> Result<Vec<IdentityRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT role, kind, value FROM identities WHERE request_id = $1 ORDER BY id")
                .bind(request_id).fetch_all(pool).await?
        }))
    }

    /// The identities of many requests in a few queries (500 ids each), by request id.
    pub async fn identities_of(
        &self,
        request_ids: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<IdentityRow>>> {
        let mut out: std::collections::HashMap<String, Vec<IdentityRow>> =
            std::collections::HashMap::new();
        for chunk in request_ids.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT request_id, role, kind, value FROM identities WHERE request_id IN ({}) ORDER BY id",
                marks.join(", ")
            );
            let rows: Vec<(String, Role, IdentityKind, String)> = on_pool!(self, pool => {
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()));
                for id in chunk {
                    q = q.bind(id);
                }
                q.fetch_all(pool).await?
            });
            for (rid, role, kind, value) in rows {
                out.entry(rid)
                    .or_default()
                    .push(IdentityRow { role, kind, value });
            }
        }
        Ok(out)
    }

    pub async fn ticket(&self, request_id: &str) -> Result<String> {
        let row: (String,) = on_pool!(self, pool => {
            sqlx::query_as("SELECT body FROM tickets WHERE request_id = $1").bind(request_id).fetch_one(pool).await?
        });
        Ok(row.0)
    }

    pub async fn history(&self, request_id: &str) -> Result<Vec<HistoryRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT at, actor, from_state, to_state, reason FROM history WHERE request_id = $1 ORDER BY id")
                .bind(request_id).fetch_all(pool).await?
        }))
    }

    /// Move a request from `from` to `to`, recording who and why, if and only if it is
    /// still in `from` (a concurrent change makes this fail rather than overwrite it).
    #[allow(clippy::too_many_arguments)]
    pub async fn transition(
        &self,
        id: &str,
        from: State,
        to: State,
        actor: &str,
        reason: Option<&str>,
        now: DateTime<Utc>,
        c: &Changes,
    ) -> Result<()> {
        let changed: Moved = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write().await?;
                let n = sqlx::query(
                    "UPDATE requests SET state = $3, updated_at = $4, \
                     held_from = CASE WHEN $5 THEN $6 ELSE held_from END, \
                     verified_at = COALESCE($7, verified_at), \
                     clock_start = COALESCE($8, clock_start), \
                     due_date = COALESCE($9, due_date), \
                     original_due_date = COALESCE($10, original_due_date), \
                     extended_at = COALESCE($11, extended_at), \
                     extension_reason = COALESCE($12, extension_reason) \
                     WHERE id = $1 AND state = $2 AND ($13 OR receipt_due = $14)",
                )
                .bind(id).bind(from).bind(to).bind(now)
                .bind(c.held_from.is_some()).bind(c.held_from.flatten())
                .bind(c.verified_at).bind(c.clock_start).bind(c.due_date).bind(c.original_due_date)
                .bind(c.extended_at).bind(&c.extension_reason)
                // A request whose work is done and whose receipt is being issued changes
                // state only by completing (an extension, which keeps it, still may).
                .bind(from == to).bind(false)
                .execute(&mut *tx).await?
                .rows_affected();
                if n == 0 {
                    let due: Option<(bool,)> = sqlx::query_as("SELECT receipt_due FROM requests WHERE id = $1 AND state = $2")
                        .bind(id).bind(from).fetch_optional(&mut *tx).await?;
                    if due.is_some_and(|(d,)| d) {
                        tx.rollback().await?;
                        return Ok::<Moved, sqlx::Error>(Moved::WorkDone);
                    }
                }
                if n == 1 {
                    sqlx::query("INSERT INTO history (request_id, at, actor, from_state, to_state, reason) VALUES ($1, $2, $3, $4, $5, $6)")
                        .bind(id).bind(now).bind(actor).bind(from).bind(to).bind(reason)
                        .execute(&mut *tx).await?;
                    for m in &c.mails {
                        outbox::enqueue_in(&mut tx, m, now).await?;
                    }
                    if let Some(p) = &c.plan {
                        sqlx::query("INSERT INTO plans (request_id, created_at, policy_digest, body) VALUES ($1, $2, $3, $4)")
                            .bind(id).bind(now).bind(&p.policy_digest).bind(&p.body).execute(&mut *tx).await?;
                    }
                    if c.cancel_open_tasks {
                        use tasks::TaskState as S;
                        sqlx::query("UPDATE tasks SET state = $3, lease_owner = NULL, lease_expires_at = NULL, updated_at = $2 \
                                     WHERE request_id = $1 AND state IN ($4, $5, $6, $7, $8)")
                            .bind(id).bind(now).bind(S::Cancelled)
                            .bind(S::WaitingKeys).bind(S::Pending).bind(S::BackedUp).bind(S::NeedsAttention).bind(S::WaitingConfirmation)
                            .execute(&mut *tx).await?;
                    }
                }
                // An approval or a release to work, or a message to send, wakes the workers.
                let work = n == 1 && (!c.mails.is_empty() || (from != to && wake::worked_on(to)));
                self.commit_work(tx, work).await?;
                Ok::<Moved, sqlx::Error>(if n == 1 { Moved::Yes } else { Moved::No })
            }.await?
        });
        if changed == Moved::Yes {
            Ok(())
        } else if changed == Moved::WorkDone {
            Err(Error::new(
                Code::IllegalTransition,
                format!(
                    "request {id}: its work is done and its completion receipt is being issued; it can no longer be {}",
                    to.as_str()
                ),
            ))
        } else {
            Err(Error::new(
                Code::IllegalTransition,
                format!("request {id} is no longer {from}: it changed meanwhile; look again"),
            ))
        }
    }

    /// The request whose verification token has this SHA-256, if it is still unverified.
    pub async fn request_by_verify_token(&self, sha256: &str) -> Result<Option<RequestRow>> {
        let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE verify_token_sha256 = $1");
        Ok(
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(sha256).fetch_optional(pool).await?),
        )
    }

    pub async fn latest_plan(&self, request_id: &str) -> Result<Option<PlanRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT created_at, policy_digest, body FROM plans WHERE request_id = $1 ORDER BY id DESC LIMIT 1")
                .bind(request_id).fetch_optional(pool).await?
        }))
    }
}

// After the macro, so that it is in scope there.
mod begin;
mod insert;
pub mod tasks;
pub use begin::BeginWrite;
pub use tasks::{NewTask, TaskRow};
pub mod backups;
pub use backups::BackupRow;
pub mod history;
pub mod log;
pub mod outbox;
pub mod restore;
pub use outbox::{MailAttachment, NewMail, OutboxRow};
pub mod exports;
pub mod recovery;
pub mod ticks;
pub mod wake;
