//! Shared test set-up: state stores on SQLite and PostgreSQL, target databases on
//! SQLite, PostgreSQL and MariaDB, a demo folder, and the binary.
//!
//! Environment:
//! - `QUIETUS_TEST_POSTGRES_URL`: an admin URL (e.g. `postgres://postgres@127.0.0.1:5432/postgres`);
//!   each test creates and drops a database of its own there.
//! - `QUIETUS_TEST_MYSQL_URL`: the same for MariaDB/MySQL (e.g. `mysql://root@127.0.0.1:3306/mysql`).
//! - `QUIETUS_TEST_REQUIRE_SERVERS=1` (CI): nothing is ignored; what is missing fails.
//!
//! Nothing is skipped at run time: a test that needs a server or a tool runs once per
//! backend (`#[case]`), and `build.rs` compiles the cases whose prerequisite is missing as
//! `#[ignore = "why"]` (cfgs `quietus_test_postgres`, `quietus_test_mysql`,
//! `quietus_test_age`, `quietus_test_smtp`). So `cargo test` counts them as ignored, with
//! the reason, and "passed" means tested. The pattern:
//!
//! ```ignore
//! #[rstest]
//! #[case::sqlite(Backend::Sqlite)]
//! #[cfg_attr(not(quietus_test_postgres), ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL")]
//! #[case::postgres(Backend::Postgres)]
//! #[tokio::test(flavor = "multi_thread")]
//! async fn name(#[case] backend: Backend) {
//!     let kind = StoreKind::of(backend).await;
//! ```
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use quietus::config::Config;
use quietus::lifecycle::Context;

pub const BIN: &str = env!("CARGO_BIN_EXE_quietus");

/// Where a test case runs: the state store or the target database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

/// The admin URL of a server kind. A test that asks for one runs only when it was given
/// (else it is compiled ignored): its absence now is a failure, never a skip.
pub fn server_url(var: &str) -> String {
    match std::env::var(var).ok().filter(|v| !v.is_empty()) {
        Some(u) => u,
        None => panic!(
            "{var} is not set (it was when the tests were built, or QUIETUS_TEST_REQUIRE_SERVERS=1): \
             set it, or rebuild without it to have these tests ignored"
        ),
    }
}

fn random_name(prefix: &str) -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("{prefix}_{n:016x}")
}

fn with_database(admin: &str, db: &str) -> String {
    let (scheme, rest) = admin.split_once("://").expect("url has a scheme");
    let (authority, _) = rest.split_once('/').unwrap_or((rest, ""));
    format!("{scheme}://{authority}/{db}")
}

/// A fresh database on a server, dropped by [`Db::drop_now`].
pub struct Db {
    pub admin: String,
    pub name: String,
    pub url: String,
    pub kind: &'static str,
}

impl Db {
    pub async fn postgres() -> Db {
        Db::postgres_on(server_url("QUIETUS_TEST_POSTGRES_URL")).await
    }

    /// A fresh database on the PostgreSQL server at `admin` (a cluster the test runs
    /// itself, say).
    pub async fn postgres_on(admin: String) -> Db {
        let name = random_name("quietus_test");
        let pool = sqlx::PgPool::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL answers at {admin}: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .expect("create database");
        pool.close().await;
        Db {
            url: with_database(&admin, &name),
            admin,
            name,
            kind: "postgres",
        }
    }

    pub async fn mysql() -> Db {
        let admin = server_url("QUIETUS_TEST_MYSQL_URL");
        let name = random_name("quietus_test");
        let pool = sqlx::MySqlPool::connect(&admin)
            .await
            .expect("MariaDB answers at QUIETUS_TEST_MYSQL_URL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )))
        .execute(&pool)
        .await
        .expect("create database");
        pool.close().await;
        Db {
            url: with_database(&admin, &name),
            admin,
            name,
            kind: "mysql",
        }
    }

    pub async fn drop_now(self) {
        let sql = format!("DROP DATABASE IF EXISTS {}", self.name);
        if self.kind == "postgres" {
            let pool = sqlx::PgPool::connect(&self.admin)
                .await
                .expect("admin connection");
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("{sql} WITH (FORCE)")))
                .execute(&pool)
                .await;
            pool.close().await;
        } else {
            let pool = sqlx::MySqlPool::connect(&self.admin)
                .await
                .expect("admin connection");
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
            pool.close().await;
        }
    }
}

/// A state store to run a test against.
pub enum StoreKind {
    Sqlite,
    Postgres(Db),
}

impl StoreKind {
    /// The state store of a test case (PostgreSQL: a fresh database).
    pub async fn of(backend: Backend) -> StoreKind {
        match backend {
            Backend::Sqlite => StoreKind::Sqlite,
            Backend::Postgres => StoreKind::Postgres(Db::postgres().await),
            Backend::Mysql => panic!("MariaDB is a target system, not a state store"),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres(_) => "postgres",
        }
    }

    pub async fn cleanup(self) {
        if let StoreKind::Postgres(db) = self {
            db.drop_now().await;
        }
    }
}

/// A demo folder: config, example policies, the demo CRM (SQLite), and a state store.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub store_url: String,
}

impl Env {
    pub async fn new(store: &StoreKind) -> Env {
        let store_url = match store {
            StoreKind::Sqlite => "sqlite://var/quietus.db".to_owned(),
            StoreKind::Postgres(db) => db.url.clone(),
        };
        Env::on_store(store_url).await
    }

    /// A demo folder whose state store is at `store_url` (a database of a server the
    /// test runs itself, say), made as `quietus store init` makes it.
    pub async fn on_store(store_url: String) -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("policies/systems")).unwrap();
        for (name, text) in quietus::policy::EXAMPLES {
            std::fs::write(dir.path().join("policies").join(name), text).unwrap();
        }
        quietus::demo::create_crm_sqlite(&dir.path().join("crm.db"))
            .await
            .expect("demo CRM");
        let config = dir.path().join("quietus.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\nurl = \"{store_url}\"\n[inbox]\ndir = \"var/inbox\"\npoll_seconds = 1\n\
                 [[api.tokens]]\nname = \"hr-system\"\nrole = \"hr\"\nsha256 = \"{}\"\n\
                 [[api.tokens]]\nname = \"form\"\nrole = \"submitter\"\nsha256 = \"{}\"\n\
                 [[api.tokens]]\nname = \"dpo\"\nrole = \"dpo\"\nsha256 = \"{}\"\n",
                sha("hr-token"),
                sha("form-token"),
                sha("dpo-token")
            ),
        )
        .unwrap();
        // The store, as `quietus store init` makes it (commands other than serve and demo
        // refuse a store that does not exist).
        let cfg = Config::load(Some(&config)).expect("config");
        let (store, _) = quietus::store::Store::open(
            &cfg.store_url().unwrap(),
            1,
            quietus::store::Open::CreateIfMissing,
        )
        .await
        .expect("state store");
        store.close().await;
        Env {
            dir,
            config,
            store_url,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub async fn context(&self) -> Context {
        let config = Config::load(Some(&self.config)).expect("config");
        quietus::app::App::open(config).await.expect("app").ctx
    }

    /// Run the binary with this env's config.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_at(args, None, None)
    }

    /// Run the binary with `QUIETUS_NOW` set and/or standard input.
    pub fn run_at(&self, args: &[&str], now: Option<&str>, stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("QUIETUS_CONFIG")
            .env("QUIETUS_LOG", "warn");
        match now {
            Some(n) => cmd.env("QUIETUS_NOW", n),
            None => cmd.env_remove("QUIETUS_NOW"),
        };
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn quietus");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("quietus runs")
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

pub fn sha(s: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(s.as_bytes()))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert success and return stdout.
#[track_caller]
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "quietus failed:\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Assert failure and return stderr.
#[track_caller]
pub fn fails(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "quietus should have failed:\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    stderr(o)
}

pub const EXIT_TICKET: &str = r#"{"kind":"exit","external_id":"HR-7","subject":{"email":"fang.wang@corp.example","employee_id":"E100"},"exit_date":"2026-12-31","successor":{"employee_id":"E200"},"jurisdiction":"PIPL"}"#;
pub const ERASURE_TICKET: &str = r#"{"kind":"erasure","external_id":"T-1","subject":{"email":"olivia.chen@example.com"},"jurisdiction":"GDPR"}"#;

/// Words of erasures (and exits) that no message of an access request may hold, in
/// lower case (English and Chinese).
pub const ERASURE_WORDING: [&str; 9] = [
    "eras", "delet", "anonymi", "backup", "destroy", "删除", "匿名", "备份", "销毁",
];

/// A target system a test reads or changes directly, on pools of its own (as a process
/// has them): use it as a [`quietus::targets::Target`]; `close` closes its pool.
pub struct OwnTarget {
    pools: quietus::targets::Pools,
    target: quietus::targets::Target,
}

impl OwnTarget {
    pub async fn open(
        sys: &quietus::policy::System,
        base_dir: &Path,
    ) -> quietus::Result<OwnTarget> {
        let pools = quietus::targets::Pools::new(base_dir, 4);
        let target = pools.get(sys).await?;
        Ok(OwnTarget { pools, target })
    }

    pub async fn close(self) {
        self.pools.close().await;
    }
}

impl std::ops::Deref for OwnTarget {
    type Target = quietus::targets::Target;
    fn deref(&self) -> &quietus::targets::Target {
        &self.target
    }
}

/// Where the demo CRM (the target system) lives in a test.
pub enum CrmKind {
    Sqlite,
    Postgres(Db),
    Mysql(Db),
}

impl CrmKind {
    /// The demo CRM's database of a test case (servers: a fresh database, loaded by
    /// [`Env::use_crm`]).
    pub async fn of(backend: Backend) -> CrmKind {
        match backend {
            Backend::Sqlite => CrmKind::Sqlite,
            Backend::Postgres => CrmKind::Postgres(Db::postgres().await),
            Backend::Mysql => CrmKind::Mysql(Db::mysql().await),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            CrmKind::Sqlite => "sqlite",
            CrmKind::Postgres(_) => "postgres",
            CrmKind::Mysql(_) => "mysql",
        }
    }

    /// (driver, url) for the data map.
    pub fn driver_url(&self) -> (&'static str, String) {
        match self {
            CrmKind::Sqlite => ("sqlite", "sqlite://crm.db".into()),
            CrmKind::Postgres(db) => ("postgres", db.url.clone()),
            CrmKind::Mysql(db) => ("mysql", db.url.clone()),
        }
    }

    /// Load the demo schema and seed into the server database (SQLite: `Env::new` did).
    pub async fn load(&self) {
        match self {
            CrmKind::Sqlite => {}
            CrmKind::Postgres(db) => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                sqlx::raw_sql(quietus::demo::CRM_SCHEMA_POSTGRES)
                    .execute(&pool)
                    .await
                    .unwrap();
                sqlx::raw_sql(quietus::demo::CRM_SEED)
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }
            CrmKind::Mysql(db) => {
                let pool = sqlx::MySqlPool::connect(&db.url).await.unwrap();
                sqlx::raw_sql(quietus::demo::CRM_SCHEMA_MYSQL)
                    .execute(&pool)
                    .await
                    .unwrap();
                sqlx::raw_sql(quietus::demo::CRM_SEED)
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }
        }
    }

    pub async fn cleanup(self) {
        match self {
            CrmKind::Sqlite => {}
            CrmKind::Postgres(db) | CrmKind::Mysql(db) => db.drop_now().await,
        }
    }
}

impl Env {
    /// Point the env's data map at `crm` (loading it first).
    pub async fn use_crm(&self, crm: &CrmKind) {
        crm.load().await;
        let (driver, url) = crm.driver_url();
        let path = self.path().join("policies/systems/crm.toml");
        let text: Vec<String> = read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                if l.starts_with("driver = ") {
                    format!("driver = {driver:?}")
                } else if l.starts_with("url = ") {
                    format!("url = {url:?}")
                } else {
                    l.to_owned()
                }
            })
            .collect();
        std::fs::write(&path, text.join("\n")).unwrap();
    }

    /// Run a query on the env's CRM and return the first column of every row as text.
    pub async fn crm_query(&self, crm: &CrmKind, sql: &str) -> Vec<Option<String>> {
        let (_, url) = crm.driver_url();
        let url = if url.starts_with("sqlite:") {
            format!("sqlite://{}", self.path().join("crm.db").display())
        } else {
            url
        };
        let sys: quietus::policy::System = toml::from_str(&format!(
            "name = \"q\"\ndriver = \"{}\"\nurl = {:?}\n",
            crm.driver_url().0,
            url
        ))
        .unwrap();
        let t = OwnTarget::open(&sys, self.path()).await.unwrap();
        let st = quietus::targets::Statement {
            sql: sql.to_owned(),
            binds: vec![],
        };
        let rows = if sql.trim_start().to_ascii_uppercase().starts_with("SELECT") {
            t.fetch_text(&st).await.unwrap()
        } else {
            // Statements that change something run once, in a transaction.
            let mut tx = t.begin().await.unwrap();
            tx.execute(&st).await.unwrap();
            tx.commit().await.unwrap();
            Vec::new()
        };
        t.close().await;
        rows.into_iter()
            .map(|r| r.into_iter().next().flatten())
            .collect()
    }
}

impl Env {
    /// `SELECT COUNT(*) <rest>` on the env's CRM (`rest` starts with FROM).
    pub async fn crm_count(&self, crm: &CrmKind, rest: &str) -> i64 {
        let cast = if matches!(crm, CrmKind::Mysql(_)) {
            "CHAR"
        } else {
            "TEXT"
        };
        let v = self
            .crm_query(crm, &format!("SELECT CAST(COUNT(*) AS {cast}) {rest}"))
            .await;
        v.first().cloned().flatten().unwrap().parse().unwrap()
    }

    /// One text value (`expr` is cast to text) of the first matching row, or `None`.
    pub async fn crm_value(&self, crm: &CrmKind, expr: &str, rest: &str) -> Option<String> {
        let cast = if matches!(crm, CrmKind::Mysql(_)) {
            "CHAR"
        } else {
            "TEXT"
        };
        self.crm_query(crm, &format!("SELECT CAST({expr} AS {cast}) {rest}"))
            .await
            .into_iter()
            .next()
            .flatten()
    }
}

impl Env {
    /// Start `quietus serve` on this env's config (workers idle: poll once an hour);
    /// returns the child and its base URL once it listens.
    pub fn serve(&self) -> (std::process::Child, String) {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("QUIETUS_LOG", "error")
            .env("QUIETUS_JOBS__POLL_SECONDS", "3600")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .to_owned();
        (child, base)
    }
}

/// Stop a daemon started by `Env::serve` (SIGTERM) and wait for it.
pub fn stop(mut child: std::process::Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// Submit an erasure per email (external ids `{prefix}-0`, `{prefix}-1`, …) through the
/// library's CLI door, and approve each: the request ids, in order.
pub async fn approved_erasures(
    ctx: &Context,
    emails: &[impl AsRef<str>],
    prefix: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<String> {
    let source = quietus::intake::Source {
        door: quietus::intake::Door::Cli,
        actor: "test".into(),
        trusted: true,
    };
    let mut ids = Vec::new();
    for (i, email) in emails.iter().enumerate() {
        let raw = serde_json::json!({
            "kind": "erasure",
            "external_id": format!("{prefix}-{i}"),
            "subject": { "email": email.as_ref() },
            "jurisdiction": "GDPR",
        })
        .to_string();
        let ticket = quietus::intake::parse_ticket(
            raw.as_bytes(),
            "ticket",
            ctx.policies.handover_required(),
        )
        .unwrap();
        let sub = quietus::intake::submit(ctx, &ticket, &raw, &source, now)
            .await
            .unwrap();
        ctx.decide(
            &sub.id,
            quietus::lifecycle::Decision::Approve,
            "dpo",
            None,
            now,
        )
        .await
        .unwrap();
        ids.push(sub.id);
    }
    ids
}

/// A whole file the test wrote or quietus made, as text. The product reads files only
/// through `fsx`'s bounded reads (clippy bans `std::fs::read_to_string`); tests read
/// through here.
#[allow(clippy::disallowed_methods)]
pub fn read_to_string(path: impl AsRef<std::path::Path>) -> std::io::Result<String> {
    std::fs::read_to_string(path)
}

/// A whole file, as bytes (see [`read_to_string`]).
#[allow(clippy::disallowed_methods)]
pub fn read(path: impl AsRef<std::path::Path>) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}
