//! Connectors to the systems that hold personal data (PostgreSQL, MySQL/MariaDB, SQLite).
//!
//! This part: find how many of a subject's rows each mapped table holds (the
//! "survey" a plan is made from), without reading the rows themselves.

pub mod doctor;
pub mod exec;
pub mod pools;
pub mod sql;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::config::resolve_sqlite_url;
use crate::error::{Code, Error, Result};
use crate::policy::{Driver, Identities, System};
pub use pools::Pools;
pub use sql::{Dialect, Statement};

/// An open connection pool to one target system. Only [`Pools`] opens one: a process keeps
/// one per system. A clone made with [`Target::scoped`] also remembers the catalog it
/// read (see there).
#[derive(Debug, Clone)]
pub struct Target {
    db: Db,
    /// The columns of each table as read within one survey or task; `None`: every
    /// lookup reads the catalog.
    catalog: Option<Arc<std::sync::Mutex<Catalog>>>,
}

/// Each table's columns, by table name.
pub type Catalog = HashMap<String, Vec<sql::Column>>;

/// The pool, by dialect.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    Mysql(MySqlPool),
}

/// Expand `${VAR}` and `${VAR:-default}` from the environment.
pub fn expand_env(s: &str) -> Result<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| Error::new(Code::Config, "unclosed ${ in a system url"))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (std::env::var(name).ok().filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(Error::new(
                    Code::Config,
                    format!("environment variable {name} is not set (a system url needs it)"),
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Target {
    /// Open a pool of at most `max_connections` to `sys` at `url` (its url, expanded).
    /// Relative SQLite paths are relative to `base_dir` (the config file's folder). A
    /// SQLite file that does not exist is an error, never created. Only [`Pools`] calls
    /// this.
    async fn connect(
        sys: &System,
        url: &str,
        base_dir: &Path,
        max_connections: u32,
    ) -> Result<Target> {
        let name = &sys.name;
        let fail = |e: sqlx::Error| {
            Error::new(
                Code::Target,
                format!("cannot connect to system {name}: {e}"),
            )
        };
        match sys.driver {
            Driver::Sqlite => {
                let url = resolve_sqlite_url(url, base_dir);
                let opts = SqliteConnectOptions::from_str(&url)
                    .map_err(|e| Error::new(Code::Config, format!("system {name}: bad url: {e}")))?
                    .create_if_missing(false)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(30));
                if !opts.get_filename().exists() {
                    return Err(Error::new(
                        Code::Target,
                        format!(
                            "system {name}: database file {} does not exist",
                            opts.get_filename().display()
                        ),
                    ));
                }
                let pool = SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .connect_with(opts)
                    .await
                    .map_err(fail)?;
                Ok(Target::new(Db::Sqlite(pool)))
            }
            Driver::Postgres => {
                // Short statements only: no JIT (see the state store's connections).
                let opts = sqlx::postgres::PgConnectOptions::from_str(url)
                    .map_err(fail)?
                    .options([("jit", "off")]);
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(opts)
                    .await
                    .map_err(fail)?;
                Ok(Target::new(Db::Postgres(pool)))
            }
            Driver::Mysql => {
                let pool = MySqlPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await
                    .map_err(fail)?;
                Ok(Target::new(Db::Mysql(pool)))
            }
            Driver::Manual => Err(Error::new(
                Code::Target,
                format!("system {name} is manual: it has no connector"),
            )),
        }
    }

    fn new(db: Db) -> Target {
        Target { db, catalog: None }
    }

    /// Open up to `n` connections now (at most the pool's size) and leave them idle in
    /// the pool (see [`Pools::open_all`]).
    async fn open_connections(&self, n: u32) {
        macro_rules! open {
            ($p:expr) => {{
                let n = n.min($p.options().get_max_connections());
                futures_util::future::join_all((0..n).map(|_| $p.acquire())).await;
            }};
        }
        match &self.db {
            Db::Sqlite(p) => open!(p),
            Db::Postgres(p) => open!(p),
            Db::Mysql(p) => open!(p),
        }
    }

    /// The pool itself.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The same pool, remembering the catalog it reads from now on: for one survey or one
    /// task, which then reads each table's columns once (in one statement for all the
    /// tables [`Target::catalog`] is asked for) instead of at every step. Never kept
    /// longer: the next survey or task reads the catalog again, so a column added to a
    /// table is in the next backup of its rows.
    pub fn scoped(&self) -> Target {
        Target {
            db: self.db.clone(),
            catalog: Some(Arc::default()),
        }
    }

    pub fn dialect(&self) -> Dialect {
        match &self.db {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
            Db::Mysql(_) => Dialect::Mysql,
        }
    }

    /// Run a statement that returns one row of integers.
    pub async fn query_counts(&self, st: &Statement) -> Result<Vec<i64>> {
        macro_rules! run {
            ($pool:expr, $row:ty) => {{
                let mut q = sqlx::query(sqlx::AssertSqlSafe(st.sql.clone()));
                for b in &st.binds {
                    q = q.bind(b.clone());
                }
                let row: $row = q
                    .fetch_one($pool)
                    .await
                    .map_err(|e| Error::new(Code::Target, format!("query failed: {e}")))?;
                use sqlx::Row;
                let mut out = Vec::new();
                for i in 0..row.len() {
                    out.push(row.try_get::<i64, _>(i).map_err(|e| {
                        Error::new(
                            Code::Target,
                            format!("a count came back in an unexpected type: {e}"),
                        )
                    })?);
                }
                out
            }};
        }
        Ok(match &self.db {
            Db::Sqlite(p) => run!(p, sqlx::sqlite::SqliteRow),
            Db::Postgres(p) => run!(p, sqlx::postgres::PgRow),
            Db::Mysql(p) => run!(p, sqlx::mysql::MySqlRow),
        })
    }

    /// Close the pool (only [`Pools::close`]: a pool is shared).
    async fn close(&self) {
        match &self.db {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
            Db::Mysql(p) => p.close().await,
        }
    }
}

/// What a survey found in one table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableCounts {
    /// Rows that belong to the subject (identity or references).
    pub subject_rows: u64,
    /// Rows the subject owns (an exit hands them over).
    pub owned_rows: u64,
}

impl TableCounts {
    fn set(&mut self, c: sql::Counted, n: u64) {
        match c {
            sql::Counted::Subject => self.subject_rows = n,
            sql::Counted::Owned => self.owned_rows = n,
        }
    }
}

/// The successor of an exit, as found in the table the owner columns point at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SuccessorCheck {
    pub table: String,
    pub found: u64,
    pub disabled: u64,
    /// Rows found that belong to the leaver: the successor is the leaver under another
    /// identity.
    pub same_as_subject: u64,
}

impl SuccessorCheck {
    /// Why records of `system` cannot be handed over to this successor; `None` when they
    /// can (found once, someone other than the leaver, active). Planning and execution
    /// both ask this.
    pub fn problem(&self, system: &str) -> Option<String> {
        let place = format!("{system}.{}", self.table);
        if self.found == 0 {
            Some(format!(
                "the successor was not found in {place}: records cannot be handed over"
            ))
        } else if self.same_as_subject > 0 {
            Some(format!(
                "the successor is the leaver: the successor's identities name the leaver's own row of {place}; name someone else"
            ))
        } else if self.found > 1 {
            Some(format!(
                "the successor's identities match {} rows of {place}: name exactly one person",
                self.found
            ))
        } else if self.disabled > 0 {
            Some(format!(
                "the successor's account in {place} is disabled: choose an active successor"
            ))
        } else {
            None
        }
    }
}

/// What a survey found in one system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SystemSurvey {
    pub system: String,
    /// Why the system could not be surveyed, if it could not.
    pub error: Option<String>,
    pub manual: bool,
    /// What the database lacks of the data map (tables, columns), as `doctor` says it;
    /// nothing is counted then, and a plan made from the survey is blocked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lacking: Vec<String>,
    pub tables: BTreeMap<String, TableCounts>,
    pub successor: Option<SuccessorCheck>,
}

/// Count a subject's rows (and an exit successor's) in every mapped system.
pub async fn survey(
    pools: &Pools,
    systems: &[System],
    subject: &Identities,
    successor: Option<&Identities>,
) -> Vec<SystemSurvey> {
    let mut out = Vec::new();
    for sys in systems {
        let mut s = SystemSurvey {
            system: sys.name.clone(),
            ..SystemSurvey::default()
        };
        if sys.driver == Driver::Manual {
            s.manual = true;
            out.push(s);
            continue;
        }
        match survey_one(pools, sys, subject, successor).await {
            Ok(Surveyed::Counted(tables, succ)) => {
                s.tables = tables;
                s.successor = succ;
            }
            Ok(Surveyed::Lacking(lacks)) => s.lacking = lacks,
            Err(e) => s.error = Some(e.message),
        }
        out.push(s);
    }
    out
}

/// What surveying one system came to.
enum Surveyed {
    Counted(BTreeMap<String, TableCounts>, Option<SuccessorCheck>),
    /// The database lacks mapped tables or columns: nothing was counted.
    Lacking(Vec<String>),
}

async fn survey_one(
    pools: &Pools,
    sys: &System,
    subject: &Identities,
    successor: Option<&Identities>,
) -> Result<Surveyed> {
    // One survey, one read of the catalog.
    let target = pools.get(sys).await?.scoped();
    let lacks = doctor::lacking(&target, sys).await;
    if !lacks.is_empty() {
        return Ok(Surveyed::Lacking(
            lacks.iter().map(|l| l.message_in(&sys.name)).collect(),
        ));
    }
    let tables = match count_tables(&target, sys, subject).await {
        Ok(tables) => tables,
        // Counted again table by table, so that the error names the table it is in.
        Err(_) => count_each_table(&target, sys, subject).await?,
    };
    let mut succ = None;
    if let Some(ids) = successor {
        // The successor is looked up where the owner columns point.
        let owner_table = sys
            .tables
            .iter()
            .filter_map(|t| t.owner.as_ref())
            .filter_map(|o| crate::policy::datamap::split_target(&o.references).map(|(t, _)| t))
            .next();
        if let Some(tn) = owner_table
            && let Some(t) = sys.table(tn)
            && let Some(st) = sql::count_successor_rows(target.dialect(), sys, t, ids, subject)?
        {
            let counts = target.query_counts(&st).await?;
            succ = Some(SuccessorCheck::from_counts(tn, &counts));
        }
    }
    Ok(Surveyed::Counted(tables, succ))
}

/// Every count of a survey of `sys`, in one statement ([`sql::count_tables`]).
async fn count_tables(
    target: &Target,
    sys: &System,
    subject: &Identities,
) -> Result<BTreeMap<String, TableCounts>> {
    let mut tables: BTreeMap<String, TableCounts> = sys
        .tables
        .iter()
        .map(|t| (t.name.clone(), TableCounts::default()))
        .collect();
    let Some(sql::SurveyCounts {
        statement: st,
        columns: which,
    }) = sql::count_tables(target.dialect(), sys, subject)?
    else {
        return Ok(tables);
    };
    let counts = target.query_counts(&st).await?;
    if counts.len() != which.len() {
        return Err(Error::new(
            Code::Target,
            format!(
                "{}: the survey's counts came back as {} columns, not {}",
                sys.name,
                counts.len(),
                which.len()
            ),
        ));
    }
    for ((t, c), n) in which.iter().zip(counts) {
        tables
            .entry(t.name.clone())
            .or_default()
            .set(*c, n.max(0) as u64);
    }
    Ok(tables)
}

/// The counts of [`count_tables`], one statement each; an error names its table.
async fn count_each_table(
    target: &Target,
    sys: &System,
    subject: &Identities,
) -> Result<BTreeMap<String, TableCounts>> {
    let mut tables = BTreeMap::new();
    for t in &sys.tables {
        let mut counts = TableCounts::default();
        for c in [sql::Counted::Subject, sql::Counted::Owned] {
            if let Some(st) = sql::count_rows(target.dialect(), sys, t, subject, c)? {
                let n = target
                    .query_counts(&st)
                    .await
                    .map_err(|e| e.context(format!("{}.{}", sys.name, t.name)))?;
                counts.set(c, first(&n));
            }
        }
        tables.insert(t.name.clone(), counts);
    }
    Ok(tables)
}

fn first(v: &[i64]) -> u64 {
    v.first().copied().unwrap_or(0).max(0) as u64
}

impl SuccessorCheck {
    /// From the counts of [`sql::count_successor_rows`].
    pub fn from_counts(table: &str, counts: &[i64]) -> SuccessorCheck {
        let n = |i: usize| counts.get(i).copied().unwrap_or(0).max(0) as u64;
        SuccessorCheck {
            table: table.to_owned(),
            found: n(0),
            disabled: n(1),
            same_as_subject: n(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion() {
        assert_eq!(
            expand_env("${QUIETUS_SURELY_UNSET_VAR:-sqlite://crm.db}").unwrap(),
            "sqlite://crm.db"
        );
        assert!(expand_env("${QUIETUS_SURELY_UNSET_VAR}").is_err());
        assert_eq!(expand_env("plain").unwrap(), "plain");
    }
}
