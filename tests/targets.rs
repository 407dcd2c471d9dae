//! The demo CRM in all three dialects: the schema and seed load into SQLite, PostgreSQL and
//! MariaDB, and a survey counts the same rows in each (the same as on SQLite), equal to
//! the known cast; identity values that try to inject SQL find nothing and change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use quietus::store::BeginWrite as _;
use std::collections::BTreeMap;
use std::path::Path;

use common::{Backend, Db, OwnTarget};
use quietus::demo::{CRM_SCHEMA_MYSQL, CRM_SCHEMA_POSTGRES, CRM_SEED};
use quietus::policy::{Identities, IdentityKind, System};
use quietus::targets::{Pools, Statement, SuccessorCheck, SystemSurvey, TableCounts, survey};
use rstest::rstest;

/// The shipped data map of the demo CRM.
const CRM_MAP: &str = include_str!("../policies/systems/crm.toml");

/// Every table of the demo CRM and its seeded row count.
const TABLES: [(&str, i64); 11] = [
    ("departments", 8),
    ("employees", 40),
    ("employee_roles", 84),
    ("customers", 120),
    ("contacts", 202),
    ("deals", 150),
    ("follow_ups", 400),
    ("call_notes", 200),
    ("personal_notes", 60),
    ("labour_contracts", 40),
    ("invoices", 164),
];

/// The shipped data map with its driver and url pointed elsewhere.
fn crm_system(driver: &str, url: &str) -> System {
    let mut seen = (false, false);
    let text: Vec<String> = CRM_MAP
        .lines()
        .map(|l| {
            if l.starts_with("driver = ") {
                seen.0 = true;
                format!("driver = {driver:?}")
            } else if l.starts_with("url = ") {
                seen.1 = true;
                format!("url = {url:?}")
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert_eq!(seen, (true, true), "crm.toml has no driver/url line");
    let sys: System = toml::from_str(&text.join("\n")).expect("crm.toml parses");
    assert_eq!(sys.url.as_deref(), Some(url));
    sys
}

/// One copy of the demo CRM.
struct Crm {
    label: &'static str,
    system: System,
    base: tempfile::TempDir,
    db: Option<Db>,
}

/// The demo CRM on one backend.
async fn load(backend: Backend) -> Crm {
    match backend {
        Backend::Sqlite => {
            let base = tempfile::tempdir().unwrap();
            quietus::demo::create_crm_sqlite(&base.path().join("crm.db"))
                .await
                .expect("demo CRM on SQLite");
            Crm {
                label: "sqlite",
                system: crm_system("sqlite", "sqlite://crm.db"),
                base,
                db: None,
            }
        }
        Backend::Postgres => {
            let db = Db::postgres().await;
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            let mut tx = pool.begin_write().await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(CRM_SCHEMA_POSTGRES))
                .execute(&mut *tx)
                .await
                .expect("PostgreSQL schema loads");
            sqlx::raw_sql(sqlx::AssertSqlSafe(CRM_SEED))
                .execute(&mut *tx)
                .await
                .expect("seed loads into PostgreSQL");
            tx.commit().await.unwrap();
            pool.close().await;
            Crm {
                label: "postgres",
                system: crm_system("postgres", &db.url),
                base: tempfile::tempdir().unwrap(),
                db: Some(db),
            }
        }
        Backend::Mysql => {
            let db = Db::mysql().await;
            let pool = sqlx::MySqlPool::connect(&db.url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(CRM_SCHEMA_MYSQL))
                .execute(&pool)
                .await
                .expect("MariaDB schema loads");
            sqlx::raw_sql(sqlx::AssertSqlSafe(CRM_SEED))
                .execute(&pool)
                .await
                .expect("seed loads into MariaDB");
            pool.close().await;
            Crm {
                label: "mysql",
                system: crm_system("mysql", &db.url),
                base: tempfile::tempdir().unwrap(),
                db: Some(db),
            }
        }
    }
}

/// The demo CRM on `backend`, after the same on SQLite (to compare with) when it is a
/// server.
async fn load_with_sqlite(backend: Backend) -> Vec<Crm> {
    let mut out = vec![load(Backend::Sqlite).await];
    if backend != Backend::Sqlite {
        out.push(load(backend).await);
    }
    out
}

async fn drop_all(crms: Vec<Crm>) {
    for c in crms {
        if let Some(db) = c.db {
            db.drop_now().await;
        }
    }
}

/// Row counts of every table, read on a connection of its own.
async fn row_counts(c: &Crm) -> BTreeMap<String, i64> {
    let target = OwnTarget::open(&c.system, c.base.path())
        .await
        .unwrap_or_else(|e| panic!("[{}] connect: {e}", c.label));
    let mut out = BTreeMap::new();
    for (table, _) in TABLES {
        let quoted = target.dialect().quote(table).unwrap();
        let st = Statement {
            sql: format!("SELECT COUNT(*) FROM {quoted}"),
            binds: vec![],
        };
        // A failure is recorded as -1 and asserted after the databases are dropped.
        let n = match target.query_counts(&st).await {
            Ok(n) => n[0],
            Err(e) => {
                eprintln!("[{}] table {table}: {e}", c.label);
                -1
            }
        };
        out.insert(table.to_owned(), n);
    }
    target.close().await;
    out
}

fn seeded_counts() -> BTreeMap<String, i64> {
    TABLES.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
}

fn ids(pairs: &[(IdentityKind, &str)]) -> Identities {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

async fn survey_one(c: &Crm, subject: &Identities, successor: Option<&Identities>) -> SystemSurvey {
    let pools = Pools::new(c.base.path(), 4);
    let mut s = survey(&pools, std::slice::from_ref(&c.system), subject, successor).await;
    pools.close().await;
    assert_eq!(s.len(), 1, "[{}] one system surveyed", c.label);
    s.remove(0)
}

/// A survey that went through (asserted after the databases are dropped).
#[track_caller]
fn surveyed(label: &str, s: &SystemSurvey) {
    assert_eq!(s.system, "crm");
    assert!(!s.manual);
    assert_eq!(s.error, None, "[{label}] survey failed");
}

/// Every mapped table with the given (subject, owned) counts, all others zero.
fn expect(counts: &[(&str, u64, u64)]) -> BTreeMap<String, TableCounts> {
    let mapped = [
        "employees",
        "employee_roles",
        "personal_notes",
        "labour_contracts",
        "customers",
        "contacts",
        "deals",
        "follow_ups",
        "call_notes",
        "invoices",
    ];
    let mut m: BTreeMap<String, TableCounts> = mapped
        .iter()
        .map(|t| ((*t).to_owned(), TableCounts::default()))
        .collect();
    for (t, subject_rows, owned_rows) in counts {
        let c = m.get_mut(*t).expect("a mapped table");
        c.subject_rows = *subject_rows;
        c.owned_rows = *owned_rows;
    }
    m
}

fn leaver() -> Identities {
    ids(&[
        (IdentityKind::Email, "fang.wang@corp.example"),
        (IdentityKind::EmployeeId, "E100"),
    ])
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[cfg_attr(
    not(quietus_test_mysql),
    ignore = "needs MariaDB/MySQL: set QUIETUS_TEST_MYSQL_URL"
)]
#[case::mysql(Backend::Mysql)]
#[tokio::test(flavor = "multi_thread")]
async fn the_demo_crm_surveys_the_same_in_every_dialect(#[case] backend: Backend) {
    let crms = load_with_sqlite(backend).await;
    let e200 = ids(&[(IdentityKind::EmployeeId, "E200")]);
    let e150 = ids(&[(IdentityKind::EmployeeId, "E150")]);
    let olivia = ids(&[(IdentityKind::Email, "olivia.chen@example.com")]);

    let mut results = Vec::new();
    for c in &crms {
        let counts = row_counts(c).await;
        let exit = survey_one(c, &leaver(), Some(&e200)).await;
        let exit_e150 = survey_one(c, &leaver(), Some(&e150)).await;
        let erasure = survey_one(c, &olivia, None).await;
        results.push((c.label, counts, exit, exit_e150, erasure));
    }
    let labels: Vec<&str> = crms.iter().map(|c| c.label).collect();
    drop_all(crms).await;

    let leaver_cast = expect(&[
        ("employees", 1, 0),
        ("employee_roles", 3, 0),
        ("personal_notes", 3, 0),
        ("labour_contracts", 1, 0),
        ("follow_ups", 12, 0),
        ("call_notes", 5, 0),
        ("customers", 0, 5),
        ("deals", 0, 3),
    ]);
    let olivia_cast = expect(&[
        ("customers", 1, 0),
        ("follow_ups", 3, 0),
        ("invoices", 2, 0),
    ]);
    for (label, counts, exit, exit_e150, erasure) in &results {
        for s in [exit, exit_e150, erasure] {
            surveyed(label, s);
        }
        assert_eq!(counts, &seeded_counts(), "[{label}] seeded row counts");
        assert_eq!(exit.tables, leaver_cast, "[{label}] E100's rows");
        assert_eq!(
            exit.successor,
            Some(SuccessorCheck {
                table: "employees".into(),
                found: 1,
                disabled: 0,
                same_as_subject: 0
            }),
            "[{label}] successor E200"
        );
        assert_eq!(exit_e150.tables, leaver_cast, "[{label}] E100's rows");
        assert_eq!(
            exit_e150.successor,
            Some(SuccessorCheck {
                table: "employees".into(),
                found: 1,
                disabled: 1,
                same_as_subject: 0
            }),
            "[{label}] successor E150 (disabled)"
        );
        assert_eq!(erasure.tables, olivia_cast, "[{label}] Olivia's rows");
        assert_eq!(erasure.successor, None, "[{label}]");
    }
    // Identical across dialects (also when the cast above is ever changed).
    for w in results.windows(2) {
        assert_eq!(w[0].2, w[1].2, "{} vs {}", w[0].0, w[1].0);
        assert_eq!(w[0].3, w[1].3, "{} vs {}", w[0].0, w[1].0);
        assert_eq!(w[0].4, w[1].4, "{} vs {}", w[0].0, w[1].0);
    }
    assert_eq!(labels.len(), if backend == Backend::Sqlite { 1 } else { 2 });
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[cfg_attr(
    not(quietus_test_mysql),
    ignore = "needs MariaDB/MySQL: set QUIETUS_TEST_MYSQL_URL"
)]
#[case::mysql(Backend::Mysql)]
#[tokio::test(flavor = "multi_thread")]
async fn identity_values_never_become_sql(#[case] backend: Backend) {
    let crms = vec![load(backend).await];
    let attempts = [
        ids(&[(IdentityKind::Email, "' OR 1=1 --")]),
        ids(&[(IdentityKind::Email, "x@y.z'); DROP TABLE customers; --")]),
        ids(&[(IdentityKind::EmployeeId, "E100' OR '1'='1")]),
        ids(&[(IdentityKind::Phone, "1 OR 1=1")]),
        ids(&[(IdentityKind::CustomerId, "\" OR \"\"=\"")]),
        ids(&[
            (
                IdentityKind::Email,
                "a@b.example`; DROP TABLE employees; --",
            ),
            (IdentityKind::EmployeeId, "E100\\' OR 1=1 #"),
        ]),
    ];
    let mut results = Vec::new();
    for c in &crms {
        let mut surveys = Vec::new();
        for a in &attempts {
            // As the subject, and as an exit's successor.
            surveys.push(survey_one(c, a, Some(a)).await);
        }
        let counts = row_counts(c).await;
        // A real leaver still surveys the same after all that.
        let after = survey_one(c, &leaver(), None).await;
        results.push((c.label, surveys, counts, after));
    }
    drop_all(crms).await;

    for (label, surveys, counts, after) in &results {
        surveyed(label, after);
        for (a, s) in attempts.iter().zip(surveys) {
            surveyed(label, s);
            assert_eq!(s.tables, expect(&[]), "[{label}] {a:?} found rows");
            // Employees are not known by customer_id: then there is nothing to check.
            let looked_up = !a.contains_key(&IdentityKind::CustomerId) || a.len() > 1;
            let succ = s.successor.as_ref();
            assert_eq!(
                succ.map(|c| (c.found, c.disabled)),
                looked_up.then_some((0, 0)),
                "[{label}] {a:?} as a successor"
            );
        }
        assert_eq!(counts, &seeded_counts(), "[{label}] tables changed");
        assert_eq!(after.tables["employees"].subject_rows, 1, "[{label}]");
        assert_eq!(after.tables["customers"].owned_rows, 5, "[{label}]");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_sqlite_file_is_an_error_not_a_new_database() {
    let dir = tempfile::tempdir().unwrap();
    let sys = crm_system("sqlite", "sqlite://absent.db");
    let s = survey(&Pools::new(dir.path(), 4), &[sys], &leaver(), None).await;
    assert_eq!(s.len(), 1);
    let err = s[0].error.as_deref().expect("an error");
    assert!(err.contains("does not exist"), "{err}");
    assert!(!Path::new(&dir.path().join("absent.db")).exists());
}

/// A `fetch_text` runs its query once, on the pool and in a transaction: a query that
/// takes the next value of a sequence advances it by one (the rows of each `SELECT … FOR
/// UPDATE`, catalog lookup and re-check were once read by running the query twice).
#[rstest]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[cfg_attr(
    not(quietus_test_mysql),
    ignore = "needs MariaDB/MySQL: set QUIETUS_TEST_MYSQL_URL"
)]
#[case::mysql(Backend::Mysql)]
#[tokio::test(flavor = "multi_thread")]
async fn fetch_text_runs_its_query_once(#[case] backend: Backend) {
    let (db, driver, next) = match backend {
        Backend::Postgres => (
            Db::postgres().await,
            "postgres",
            "SELECT CAST(nextval('once') AS TEXT)",
        ),
        Backend::Mysql => (
            Db::mysql().await,
            "mysql",
            "SELECT CAST(NEXTVAL(once) AS CHAR)",
        ),
        Backend::Sqlite => unreachable!("SQLite has no sequences"),
    };
    let sys: System = toml::from_str(&format!(
        "name = \"q\"\ndriver = \"{driver}\"\nurl = {:?}\n",
        db.url
    ))
    .unwrap();
    let base = tempfile::tempdir().unwrap();
    let target = connect(&sys, base.path()).await;
    let st = |sql: &str| Statement {
        sql: sql.to_owned(),
        binds: vec![],
    };
    let mut tx = target.begin().await.unwrap();
    tx.execute(&st("CREATE SEQUENCE once")).await.unwrap();
    tx.commit().await.unwrap();

    let on_pool = target.fetch_text(&st(next)).await;
    let mut tx = target.begin().await.unwrap();
    let in_tx = tx.fetch_text(&st(next)).await;
    tx.commit().await.unwrap();
    let after = target.fetch_text(&st(next)).await;
    target.close().await;
    db.drop_now().await;

    let value = |r: &Result<Vec<Vec<Option<String>>>, quietus::error::Error>| {
        r.as_ref().unwrap()[0][0].clone().unwrap()
    };
    assert_eq!(
        value(&on_pool),
        "1",
        "Target::fetch_text ran its query twice"
    );
    assert_eq!(value(&in_tx), "2", "Tx::fetch_text ran its query twice");
    assert_eq!(value(&after), "3");
}

/// A target of its own for a test.
async fn connect(sys: &System, base: &Path) -> OwnTarget {
    OwnTarget::open(sys, base)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", sys.name))
}

/// The target's catalog (its tables' columns and types) is read once per survey and once
/// per task, in one statement for every mapped table, not once per table and step (issue 8:
/// twelve catalog lookups a task were the larger part of a small erasure's round). The
/// demo's two requests are each surveyed when planned and when approved, and each of its
/// tasks reads the catalog when it starts: the statements the target runs (sqlx logs each
/// at debug level) hold at most that many catalog reads.
#[test]
fn the_catalog_is_read_once_per_survey_and_task() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["demo", "--dir"])
        .arg(dir.path().join("d"))
        .env("QUIETUS_LOG", "info,sqlx::query=debug")
        .env("NO_COLOR", "1")
        .env_remove("QUIETUS_CONFIG")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let tasks = log.lines().filter(|l| l.contains("task done")).count();
    let requests = log
        .lines()
        .filter(|l| l.contains("request received"))
        .count();
    assert!(
        tasks >= 3 && requests == 2,
        "{tasks} tasks, {requests} requests"
    );
    let reads = log
        .lines()
        .filter(|l| l.contains("FROM pragma_table_info") && !l.contains("pragma_index_list"))
        .count();
    let budget = 2 * requests + tasks;
    assert!(
        reads <= budget,
        "{reads} catalog reads for {requests} requests and {tasks} tasks (at most {budget})"
    );
}

#[path = "targets/plans.rs"]
mod plans;

/// Rows found by key, as an apply batch finds them, lock them and changes them: a batch of
/// keys is one bound value on SQLite (issue 8: SQLite looks a named parameter up by walking
/// the statement's list of them, so a statement of n keys cost n² steps to bind — a batch
/// of 5 000 keys was slower than ten of 500 — and more than 32 766 keys were refused), and
/// every key matches as the column compares it, in every dialect: the text key `7` finds
/// `7` and not `007`; an integer key given as text finds its row.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[cfg_attr(
    not(quietus_test_mysql),
    ignore = "needs MariaDB/MySQL: set QUIETUS_TEST_MYSQL_URL"
)]
#[case::mysql(Backend::Mysql)]
#[tokio::test(flavor = "multi_thread")]
async fn rows_are_found_by_key_in_batches_of_any_size(#[case] backend: Backend) {
    use quietus::targets::sql::{Dialect, delete_rows, lock_rows, update_rows};
    let base = tempfile::tempdir().unwrap();
    let (db, driver, url) = match backend {
        Backend::Sqlite => {
            let path = base.path().join("keys.db");
            std::fs::File::create(&path).unwrap();
            (None, "sqlite", format!("sqlite://{}", path.display()))
        }
        Backend::Postgres => {
            let db = Db::postgres().await;
            let url = db.url.clone();
            (Some(db), "postgres", url)
        }
        Backend::Mysql => {
            let db = Db::mysql().await;
            let url = db.url.clone();
            (Some(db), "mysql", url)
        }
    };
    let sys: System = toml::from_str(&format!(
        "name = \"keys\"\ndriver = \"{driver}\"\nurl = {url:?}\n\
         [[table]]\nname = \"ints\"\nkey = \"id\"\n\
         [[table]]\nname = \"codes\"\nkey = \"code\"\n"
    ))
    .unwrap();
    let target = connect(&sys, base.path()).await;
    let d = target.dialect();
    let st = |sql: String| Statement { sql, binds: vec![] };
    const N: u64 = 40_000;
    let mut tx = target.begin().await.unwrap();
    tx.execute(&st(
        "CREATE TABLE ints (id BIGINT PRIMARY KEY, v VARCHAR(20))".into(),
    ))
    .await
    .unwrap();
    tx.execute(&st(
        "CREATE TABLE codes (code VARCHAR(20) PRIMARY KEY, v VARCHAR(20))".into(),
    ))
    .await
    .unwrap();
    for start in (1..=N).step_by(1000) {
        let ints: Vec<String> = (start..start + 1000)
            .map(|i| format!("({i}, 'x')"))
            .collect();
        tx.execute(&st(format!(
            "INSERT INTO ints (id, v) VALUES {}",
            ints.join(", ")
        )))
        .await
        .unwrap();
        let codes: Vec<String> = (start..start + 1000)
            .map(|i| format!("('c-{i}', 'x')"))
            .collect();
        tx.execute(&st(format!(
            "INSERT INTO codes (code, v) VALUES {}",
            codes.join(", ")
        )))
        .await
        .unwrap();
    }
    tx.execute(&st(
        "INSERT INTO codes (code, v) VALUES ('7', 'x'), ('007', 'x')".into(),
    ))
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let ints = sys.table("ints").unwrap();
    let codes = sys.table("codes").unwrap();
    let int_cols = target.columns("ints").await.unwrap();
    let code_cols = target.columns("codes").await.unwrap();
    let int_key = int_cols[0].sql_type.clone();
    let code_key = code_cols[0].sql_type.clone();
    let all: Vec<String> = (1..=N).map(|i| i.to_string()).collect();

    let mut tx = target.begin().await.unwrap();
    let lock = lock_rows(d, ints, &int_key, &int_cols[1..], &all).unwrap();
    if d == Dialect::Sqlite {
        assert_eq!(
            lock.binds.len(),
            1,
            "SQLite binds {} values for {N} keys",
            lock.binds.len()
        );
    }
    let rows = tx.fetch_text(&lock).await.unwrap();
    assert_eq!(rows.len() as u64, N, "rows locked by key");
    assert!(rows.iter().all(|r| r[1].as_deref() == Some("x")));
    let seven = tx
        .fetch_text(&lock_rows(d, codes, &code_key, &code_cols[1..], &["7".into()]).unwrap())
        .await
        .unwrap();
    assert_eq!(
        seven,
        vec![vec![Some("7".to_owned()), Some("x".to_owned())]]
    );
    let set = vec![(int_cols[1].clone(), Some("y".to_owned()))];
    let half = &all[..20_000];
    let updated = tx
        .execute(&update_rows(d, ints, &int_key, &set, half).unwrap())
        .await
        .unwrap();
    assert_eq!(updated, 20_000, "rows updated by key");
    let gone = tx
        .execute(&delete_rows(d, codes, &code_key, &["007".into()]).unwrap())
        .await
        .unwrap();
    assert_eq!(gone, 1, "the text key 007 deletes one row");
    let deleted = tx
        .execute(&delete_rows(d, ints, &int_key, &all).unwrap())
        .await
        .unwrap();
    assert_eq!(deleted, N, "rows deleted by key");
    tx.commit().await.unwrap();
    let left = target
        .fetch_text(&st(
            "SELECT code FROM codes WHERE code IN ('7', '007')".into()
        ))
        .await
        .unwrap();
    assert_eq!(left, vec![vec![Some("7".to_owned())]]);
    target.close().await;
    if let Some(db) = db {
        db.drop_now().await;
    }
}

/// The one-statement change of a batch (SQLite) changes a row only when its key and every
/// backed-up column read byte for byte as backed up — exactly the rows the row-by-row
/// comparison of an apply would change, whatever the columns' collation and types: a
/// name that differs in case in a NOCASE column, a NULL that was an empty string, `3`
/// for a REAL `3.0`, a trailing space, a key in another case, a row that is gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_changes_in_one_statement_only_rows_still_as_backed_up() {
    use quietus::targets::sql::{Change, change_rows_as_backed_up, lock_rows};
    let base = tempfile::tempdir().unwrap();
    let path = base.path().join("batch.db");
    std::fs::File::create(&path).unwrap();
    let sys: System = toml::from_str(&format!(
        "name = \"b\"\ndriver = \"sqlite\"\nurl = \"sqlite://{}\"\n\
         [[table]]\nname = \"people\"\nkey = \"id\"\n\
         [[table]]\nname = \"codes\"\nkey = \"code\"\n",
        path.display()
    ))
    .unwrap();
    let target = connect(&sys, base.path()).await;
    let d = target.dialect();
    let st = |sql: &str| Statement {
        sql: sql.to_owned(),
        binds: vec![],
    };
    let mut tx = target.begin().await.unwrap();
    for sql in [
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT COLLATE NOCASE, score REAL, note TEXT)",
        "CREATE TABLE codes (code TEXT COLLATE NOCASE PRIMARY KEY, v TEXT)",
        "INSERT INTO people VALUES (1, 'Ann', 1.5, NULL), (2, 'Bob', 2.0, ''), (3, 'Cy', 3.0, 'x'), \
         (4, 'Di', 4.0, 'y'), (5, 'Ed', 5.0, NULL), (6, 'Flo', 6.25, 'z')",
        "INSERT INTO codes VALUES ('abc', 'x'), ('def', 'y')",
    ] {
        tx.execute(&st(sql)).await.unwrap();
    }
    tx.commit().await.unwrap();

    for (table, change) in [("people", "delete"), ("people", "set"), ("codes", "delete")] {
        let t = sys.table(table).unwrap();
        let cols = target.columns(table).await.unwrap();
        let key_type = cols[0].sql_type.clone();
        let columns = &cols[1..];
        // The rows as a backup holds them (as text), then as this test's backup says.
        let all: Vec<String> = match table {
            "people" => (1..=7).map(|i| i.to_string()).collect(),
            _ => vec!["abc".into(), "def".into()],
        };
        let read = target
            .fetch_text(&lock_rows(d, t, &key_type, columns, &all).unwrap())
            .await
            .unwrap();
        let mut backed: Vec<Vec<Option<String>>> = read.clone();
        let edit = |rows: &mut Vec<Vec<Option<String>>>, key: &str, col: usize, v: Option<&str>| {
            let r = rows
                .iter_mut()
                .find(|r| r[0].as_deref() == Some(key))
                .unwrap();
            r[col] = v.map(str::to_owned);
        };
        match table {
            "people" => {
                edit(&mut backed, "2", 1, Some("bob")); // case, in a NOCASE column
                edit(&mut backed, "2", 3, Some("")); // (as it is)
                edit(&mut backed, "3", 2, Some("3")); // REAL 3.0 read as "3.0"
                edit(&mut backed, "4", 3, Some("y ")); // a trailing space
                edit(&mut backed, "5", 3, Some("")); // NULL backed up as ''
                backed.push(vec![
                    Some("7".into()),
                    Some("Gus".into()),
                    Some("7.0".into()),
                    None,
                ]); // gone
            }
            _ => edit(&mut backed, "def", 0, Some("DEF")), // the key in another case
        }
        // What the row-by-row comparison of an apply would change.
        let want: std::collections::BTreeSet<String> = backed
            .iter()
            .filter(|b| read.contains(b))
            .map(|b| b[0].clone().unwrap())
            .collect();
        let sets = vec![(columns[0].clone(), Some("(erased)".to_owned()))];
        let how = match change {
            "delete" => Change::Delete,
            _ => Change::Set(&sets),
        };
        let rows: Vec<Vec<Option<&str>>> = backed
            .iter()
            .map(|r| r.iter().map(|v| v.as_deref()).collect())
            .collect();
        let stmt = change_rows_as_backed_up(d, t, columns, how, &rows)
            .unwrap()
            .unwrap();
        assert_eq!(
            stmt.binds.len(),
            sets.len() * usize::from(change == "set") + 1
        );
        let mut tx = target.begin().await.unwrap();
        let n = tx.execute(&stmt).await.unwrap();
        let after = tx
            .fetch_text(&lock_rows(d, t, &key_type, columns, &all).unwrap())
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        let changed: std::collections::BTreeSet<String> = read
            .iter()
            .filter(|r| !after.contains(r))
            .map(|r| r[0].clone().unwrap())
            .collect();
        assert_eq!(changed, want, "{table} ({change}): rows changed");
        assert_eq!(n, want.len() as u64, "{table} ({change}): rows counted");
        let expected: &[&str] = match table {
            "people" => &["1", "6"],
            _ => &["abc"],
        };
        assert_eq!(
            want,
            expected.iter().map(|s| (*s).to_owned()).collect(),
            "{table}: the test's backup"
        );
    }
    target.close().await;
}

/// A survey counts every table of a system in one statement (issue 8); when that
/// statement fails, the tables are counted one by one again, so that the error names the
/// table it is in — here one whose row-level security policy fails on every row it is
/// asked about (the table and its columns are there, so nothing is missing from the data
/// map; the CRM's role is not the table's owner, so the policy applies to it).
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_survey_that_cannot_count_a_table_names_it() {
    let crm = load(Backend::Postgres).await;
    let db = crm.db.as_ref().unwrap();
    let role = format!("quietus_limited_{:08x}", rand::random::<u32>());
    let admin = sqlx::PgPool::connect(&db.url).await.unwrap();
    for sql in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"),
        "ALTER TABLE call_notes ENABLE ROW LEVEL SECURITY".to_owned(),
        format!("CREATE POLICY quietus_fails ON call_notes TO {role} USING (1 / (id - id) = 1)"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .unwrap();
    }
    let (scheme, rest) = db.url.split_once("://").unwrap();
    let (_, host_db) = rest.split_once('@').unwrap();
    let limited = Crm {
        label: "postgres (limited role)",
        system: crm_system("postgres", &format!("{scheme}://{role}@{host_db}")),
        base: tempfile::tempdir().unwrap(),
        db: None,
    };
    // The leaver wrote call notes: the policy is asked about them; Olivia has none.
    let leaver_survey = survey_one(&limited, &leaver(), None).await;
    let erasure = survey_one(
        &limited,
        &ids(&[(IdentityKind::Email, "olivia.chen@example.com")]),
        None,
    )
    .await;
    for sql in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
    drop_all(vec![crm]).await;
    let e = leaver_survey
        .error
        .as_deref()
        .unwrap_or_else(|| panic!("no error: {leaver_survey:?}"));
    assert!(
        e.contains("crm.call_notes") && e.contains("division by zero"),
        "the error names the table: {e}"
    );
    surveyed("postgres (limited role)", &erasure);
    assert_eq!(erasure.tables["customers"].subject_rows, 1, "{erasure:?}");
}
