//! End-to-end benchmark of issue 8: quietus through its real doors (HTTP intake, the CLI's
//! approval, the worker of `quietus serve` or one `quietus run`, backups, receipts, file
//! mail) against the raw-SQL floor of the same work, measured in the same run, on a
//! generated CRM of the demo's shape (PostgreSQL, MariaDB or SQLite); plus intake alone,
//! receipt verification, backup writing against the stock `zstd | age`, and the store
//! grown large.
//!
//! ```sh
//! cargo bench --bench e2e                    # the small cases (a few minutes)
//! cargo bench --bench e2e -- --help          # every case and option
//! cargo bench --bench e2e -- serve --requests 1000 --clients 8
//! ```
//!
//! Every case prints one Markdown table row: | case | quietus | floor | ratio | notes |.
//! Databases are created per run as `quietus_bench_…` and dropped at the end (`--keep`
//! keeps them and the run folder).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
// A harness reads whole files it wrote (the product reads through fsx's bounded reads).
#![allow(clippy::disallowed_methods)]

use quietus::store::BeginWrite as _;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, MySqlPool, PgPool, SqlitePool};

const BIN: &str = env!("CARGO_BIN_EXE_quietus");
const HR_TOKEN: &str = "qt_bench_hr_token";
const DPO_TOKEN: &str = "qt_bench_dpo_token";
/// Generated customers get ids from here on (the demo seed's are below 1000).
const BASE: u64 = 1_000_000;
const SEED: u64 = 0x5eed_0008;

const HELP: &str = "\
cargo bench --bench e2e -- [CASE] [OPTIONS]

Cases (default: quick):
  quick      intake, verify, backup, run, serve with 1 and 100 requests
  all        quick, then serve with 1000 requests, instances 1-3, growth
  serve      quietus serve end to end: HTTP intake, approval (API), worker, receipts,
             completion mail; vs the raw-SQL floor (sequential and with --clients)
             (default: 1 request, then 100 with 8 clients; --requests N for one row)
  instances  serve with 1..=N instances on one PostgreSQL store (default 3, 300 requests)
  run        N approved erasures (default 100) carried out by one `quietus run`
  intake     POST /api/v1/requests alone, SQLite store (default 3000 tickets, 8 and 32 clients)
  verify     receipt verification in-process and `quietus verify` vs ed25519 + sha256
  connect    one connection to PostgreSQL (TLS and not) and MariaDB vs a bare TCP connect
  backup     the archive writer on --rows rows vs `zstd -3 | age -r` on the same JSONL
  growth     one small erasure with an empty store vs one grown to --store-size requests,
             log entries and backups (default 100000)

Options:
  --customers N     customers in the generated CRM (10 rows each; default 10000)
  --requests N      requests per case
  --clients N       concurrent HTTP clients and floor clients (default 8)
  --target KIND     postgres | mariadb | sqlite (the CRM; default postgres)
  --store KIND      sqlite | postgres (the state store; default postgres, intake: sqlite)
  --instances N     serve instances (instances case: 1..=N)
  --rows N          backup case rows (default 100000)
  --store-size N    growth case (default 100000)
  --poll S          jobs.poll_seconds of serve (default 1, the smallest allowed)
  --timeout S       give up waiting for completions after S seconds (default 900)
  --strace          also run one `quietus run` of the run case under `strace -c -f`
  --keep            keep the databases and the run folder
  --approve HOW     api | cli: the serve cases approve through the API (default, with
                    --clients clients) or with one `quietus approve` process of every id
";

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Postgres,
    Mariadb,
    Sqlite,
}

impl Kind {
    fn parse(s: &str) -> Kind {
        match s {
            "postgres" | "pg" => Kind::Postgres,
            "mariadb" | "mysql" => Kind::Mariadb,
            "sqlite" => Kind::Sqlite,
            _ => panic!("unknown database kind {s:?} (postgres | mariadb | sqlite)"),
        }
    }
    fn label(self) -> &'static str {
        match self {
            Kind::Postgres => "pg",
            Kind::Mariadb => "mariadb",
            Kind::Sqlite => "sqlite",
        }
    }
}

#[derive(Debug, Clone)]
struct Opts {
    case: String,
    customers: u64,
    requests: Option<usize>,
    clients: usize,
    target: Kind,
    store: Option<Kind>,
    instances: Option<usize>,
    rows: u64,
    store_size: u64,
    poll: u64,
    timeout: u64,
    strace: bool,
    keep: bool,
    approve: Approve,
}

/// How the serve cases approve: through the API (the default) or one CLI process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Approve {
    Api,
    Cli,
}

impl Approve {
    fn parse(s: &str) -> Approve {
        match s {
            "api" => Approve::Api,
            "cli" => Approve::Cli,
            other => panic!("--approve {other}: api or cli"),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Approve::Api => "API",
            Approve::Cli => "`quietus approve`",
        }
    }
}

fn parse_args() -> Opts {
    let mut o = Opts {
        case: "quick".into(),
        customers: 10_000,
        requests: None,
        clients: 8,
        target: Kind::Postgres,
        store: None,
        instances: None,
        rows: 100_000,
        store_size: 100_000,
        poll: 1,
        timeout: 900,
        strace: false,
        keep: false,
        approve: Approve::Api,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match a.as_str() {
            // cargo bench passes --bench to harness = false benches.
            "--bench" => {}
            "--help" | "-h" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            "--customers" => o.customers = val(&a).parse().unwrap(),
            "--requests" => o.requests = Some(val(&a).parse().unwrap()),
            "--clients" => o.clients = val(&a).parse().unwrap(),
            "--target" => o.target = Kind::parse(&val(&a)),
            "--store" => o.store = Some(Kind::parse(&val(&a))),
            "--instances" => o.instances = Some(val(&a).parse().unwrap()),
            "--rows" => o.rows = val(&a).parse().unwrap(),
            "--store-size" => o.store_size = val(&a).parse().unwrap(),
            "--poll" => o.poll = val(&a).parse().unwrap(),
            "--timeout" => o.timeout = val(&a).parse().unwrap(),
            "--strace" => o.strace = true,
            "--keep" => o.keep = true,
            "--approve" => o.approve = Approve::parse(&val(&a)),
            s if !s.starts_with('-') => o.case = s.to_owned(),
            s => panic!("unknown option {s} (see --help)"),
        }
    }
    if let Some(s) = o.store {
        assert!(s != Kind::Mariadb, "MariaDB is a target, not a state store");
    }
    o
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

fn env_url(var: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "{var} is not set (see BENCHMARKS.md: the benchmark needs the test servers' URLs)"
            )
        })
}

fn with_database(admin: &str, db: &str) -> String {
    let (scheme, rest) = admin.split_once("://").unwrap();
    let (authority, _) = rest.split_once('/').unwrap_or((rest, ""));
    format!("{scheme}://{authority}/{db}")
}

fn db_name(what: &str) -> String {
    let n: u32 = rand::rng().random();
    format!("quietus_bench_{what}_{n:08x}")
}

fn sha_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn ms(s: f64) -> String {
    if s < 0.001 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 10.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.1} s")
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn vm_hwm_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .map_or(0.0, |kib: f64| kib / 1024.0)
}

fn row(case: &str, quietus: &str, floor: &str, ratio: &str, notes: &str) {
    println!("| {case} | {quietus} | {floor} | {ratio} | {notes} |");
    std::io::stdout().flush().unwrap();
}

/// `quietus` with a config; output captured; panics on failure.
fn quietus(config: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("QUIETUS_LOG", "warn")
        .env("QUIETUS_ACTOR", "bench-dpo")
        .env_remove("QUIETUS_NOW")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "quietus {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------
// The CRM: the demo schema and seed, plus N generated customers with 10 rows each
// ---------------------------------------------------------------------------------------

enum Pool {
    Pg(PgPool),
    My(MySqlPool),
    Lite(SqlitePool),
}

struct Crm {
    kind: Kind,
    /// The database's name on a server (dropped at the end), or the SQLite file.
    name: String,
    admin: String,
    /// What the data map's `url` says.
    url: String,
    customers: u64,
}

/// The emails of generated customer `i`.
fn email(i: u64) -> String {
    format!("c{i}@bench.example")
}

/// The rows of generated customer `i` (ids from BASE), as SQL literal tuples per table:
/// 1 customer, 6 follow-ups, 2 invoices, 1 deal.
fn customer_rows(i: u64, rng: &mut rand::rngs::StdRng, out: &mut [Vec<Vec<Option<String>>>; 4]) {
    let id = BASE + i;
    let day = |rng: &mut rand::rngs::StdRng| {
        format!(
            "2025-{:02}-{:02}",
            rng.random_range(1..=12),
            rng.random_range(1..=28)
        )
    };
    let owner = rng.random_range(1..=40u64);
    let s = |v: String| Some(v);
    out[0].push(vec![
        s(id.to_string()),
        s(format!("B{i:08}")),
        s("individual".into()),
        s(format!("Bench Customer {i}")),
        None,
        s(email(i)),
        s(format!("+44790{i:08}")),
        s(owner.to_string()),
        s(if rng.random_bool(0.8) {
            "active"
        } else {
            "inactive"
        }
        .into()),
        s(format!("{} 10:00:00", day(rng))),
    ]);
    const CHANNELS: [&str; 4] = ["phone", "wechat", "email", "visit"];
    for j in 0..6 {
        let fid = 10 * BASE + i * 6 + j;
        out[1].push(vec![
            s(fid.to_string()),
            s(id.to_string()),
            s(rng.random_range(1..=40u64).to_string()),
            s(format!(
                "{} {:02}:{:02}:00",
                day(rng),
                rng.random_range(8..19),
                rng.random_range(0..60)
            )),
            s(CHANNELS[rng.random_range(0..4)].into()),
            s(format!(
                "follow-up {fid}: customer asked about the renewal quote {}, call back next week",
                rng.random_range(1000..9999)
            )),
        ]);
    }
    for j in 0..2 {
        let vid = 20 * BASE + i * 2 + j;
        out[2].push(vec![
            s(vid.to_string()),
            s(format!("BINV-{vid}")),
            s(id.to_string()),
            s(format!("Bench Customer {i}")),
            s(format!("{} Bench Road, Flat {}, London", i % 997, j + 1)),
            s(format!(
                "{}.{:02}",
                rng.random_range(100..50_000),
                rng.random_range(0..100)
            )),
            s("CNY".into()),
            s(day(rng)),
        ]);
    }
    let did = 30 * BASE + i;
    let won = rng.random_bool(0.5);
    out[3].push(vec![
        s(did.to_string()),
        s(id.to_string()),
        s(owner.to_string()),
        s(format!("Renewal {i}")),
        s(format!("{}.00", rng.random_range(1000..90_000))),
        s("CNY".into()),
        s(if won { "won" } else { "lost" }.into()),
        s(format!("{} 09:00:00", day(rng))),
        s(day(rng)),
    ]);
}

const TABLES: [(&str, &str); 4] = [
    (
        "customers",
        "id, customer_no, kind, name, company, email, phone, owner_id, status, created_at",
    ),
    (
        "follow_ups",
        "id, customer_id, author_id, happened_at, channel, body",
    ),
    (
        "invoices",
        "id, invoice_no, customer_id, billing_name, billing_address, amount, currency, issued_at",
    ),
    (
        "deals",
        "id, customer_id, owner_id, title, amount, currency, stage, created_at, closed_at",
    ),
];

fn sql_values(rows: &[Vec<Option<String>>]) -> String {
    let mut s = String::new();
    for (n, r) in rows.iter().enumerate() {
        if n > 0 {
            s.push(',');
        }
        s.push('(');
        for (k, v) in r.iter().enumerate() {
            if k > 0 {
                s.push(',');
            }
            match v {
                // Generated values never hold quotes.
                Some(v) => {
                    s.push('\'');
                    s.push_str(v);
                    s.push('\'');
                }
                None => s.push_str("NULL"),
            }
        }
        s.push(')');
    }
    s
}

fn copy_text(rows: &[Vec<Option<String>>]) -> Vec<u8> {
    let mut s = String::new();
    for r in rows {
        for (k, v) in r.iter().enumerate() {
            if k > 0 {
                s.push('\t');
            }
            s.push_str(v.as_deref().unwrap_or("\\N"));
        }
        s.push('\n');
    }
    s.into_bytes()
}

impl Crm {
    async fn create(kind: Kind, customers: u64, dir: &Path) -> Crm {
        let start = Instant::now();
        let crm = match kind {
            Kind::Postgres => {
                let admin = env_url("QUIETUS_TEST_POSTGRES_URL");
                let name = db_name("crm");
                let pool = PgPool::connect(&admin).await.unwrap();
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                Crm {
                    kind,
                    url: with_database(&admin, &name),
                    name,
                    admin,
                    customers,
                }
            }
            Kind::Mariadb => {
                let admin = env_url("QUIETUS_TEST_MYSQL_URL");
                let name = db_name("crm");
                let pool = MySqlPool::connect(&admin).await.unwrap();
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )))
                .execute(&pool)
                .await
                .unwrap();
                pool.close().await;
                Crm {
                    kind,
                    url: with_database(&admin, &name),
                    name,
                    admin,
                    customers,
                }
            }
            Kind::Sqlite => {
                let path = dir.join("crm.db");
                quietus::demo::create_crm_sqlite(&path).await.unwrap();
                Crm {
                    kind,
                    url: format!("sqlite://{}", path.display()),
                    name: path.display().to_string(),
                    admin: String::new(),
                    customers,
                }
            }
        };
        crm.load().await;
        eprintln!(
            "  CRM on {}: {} customers, {} rows generated in {:.1} s",
            kind.label(),
            customers,
            customers * 10,
            start.elapsed().as_secs_f64()
        );
        crm
    }

    async fn pool(&self, max: u32) -> Pool {
        match self.kind {
            Kind::Postgres => Pool::Pg(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(max)
                    .connect(&self.url)
                    .await
                    .unwrap(),
            ),
            Kind::Mariadb => Pool::My(
                sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(max)
                    .connect(&self.url)
                    .await
                    .unwrap(),
            ),
            Kind::Sqlite => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&self.name)
                    .busy_timeout(Duration::from_secs(30));
                Pool::Lite(
                    sqlx::sqlite::SqlitePoolOptions::new()
                        .max_connections(max)
                        .connect_with(opts)
                        .await
                        .unwrap(),
                )
            }
        }
    }

    async fn load(&self) {
        const CHUNK: u64 = 2_000;
        let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
        match self.pool(1).await {
            Pool::Pg(pool) => {
                sqlx::raw_sql(quietus::demo::CRM_SCHEMA_POSTGRES)
                    .execute(&pool)
                    .await
                    .unwrap();
                sqlx::raw_sql(quietus::demo::CRM_SEED)
                    .execute(&pool)
                    .await
                    .unwrap();
                let mut conn = pool.acquire().await.unwrap();
                // Tables in order (customers before their children), each one COPY.
                for (n, (t, cols)) in TABLES.iter().enumerate() {
                    let mut rng_t = rand::rngs::StdRng::seed_from_u64(SEED);
                    let mut copy = conn
                        .copy_in_raw(&format!("COPY {t} ({cols}) FROM STDIN"))
                        .await
                        .unwrap();
                    let mut i = 0;
                    while i < self.customers {
                        let mut out: [Vec<Vec<Option<String>>>; 4] = Default::default();
                        for k in i..(i + CHUNK).min(self.customers) {
                            customer_rows(k, &mut rng_t, &mut out);
                        }
                        copy.send(copy_text(&out[n])).await.unwrap();
                        i += CHUNK;
                    }
                    copy.finish().await.unwrap();
                }
                drop(conn);
                sqlx::raw_sql("ANALYZE").execute(&pool).await.unwrap();
                pool.close().await;
            }
            Pool::My(pool) => {
                sqlx::raw_sql(quietus::demo::CRM_SCHEMA_MYSQL)
                    .execute(&pool)
                    .await
                    .unwrap();
                sqlx::raw_sql(quietus::demo::CRM_SEED)
                    .execute(&pool)
                    .await
                    .unwrap();
                let mut conn = pool.acquire().await.unwrap();
                sqlx::raw_sql("SET SESSION foreign_key_checks = 0, unique_checks = 0")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                self.insert_chunks(&mut rng, CHUNK, async |sql| {
                    sqlx::raw_sql(AssertSqlSafe(sql))
                        .execute(&mut *conn)
                        .await
                        .unwrap();
                })
                .await;
                drop(conn);
                sqlx::raw_sql("ANALYZE TABLE customers, follow_ups, invoices, deals")
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }
            Pool::Lite(pool) => {
                let mut conn = pool.acquire().await.unwrap();
                sqlx::raw_sql("PRAGMA synchronous = OFF")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                self.insert_chunks(&mut rng, 500, async |sql| {
                    sqlx::raw_sql(AssertSqlSafe(sql))
                        .execute(&mut *conn)
                        .await
                        .unwrap();
                })
                .await;
                sqlx::raw_sql("ANALYZE").execute(&mut *conn).await.unwrap();
                drop(conn);
                pool.close().await;
            }
        }
    }

    /// Multi-row INSERTs, every 50 000 customers one transaction.
    async fn insert_chunks(
        &self,
        rng: &mut rand::rngs::StdRng,
        chunk: u64,
        mut exec: impl AsyncFnMut(String),
    ) {
        let mut i = 0;
        exec("BEGIN".into()).await;
        while i < self.customers {
            let mut out: [Vec<Vec<Option<String>>>; 4] = Default::default();
            for k in i..(i + chunk).min(self.customers) {
                customer_rows(k, rng, &mut out);
            }
            for (n, (t, cols)) in TABLES.iter().enumerate() {
                exec(format!(
                    "INSERT INTO {t} ({cols}) VALUES {}",
                    sql_values(&out[n])
                ))
                .await;
            }
            i += chunk;
            if i % 50_000 < chunk && i < self.customers {
                exec("COMMIT".into()).await;
                exec("BEGIN".into()).await;
            }
        }
        exec("COMMIT".into()).await;
    }

    /// Anonymised generated customers among `idx`.
    async fn erased(&self, idx: &[u64]) -> usize {
        let list: Vec<String> = idx.iter().map(|i| (BASE + i).to_string()).collect();
        let sql = format!(
            "SELECT COUNT(*) FROM customers WHERE email IS NULL AND id IN ({})",
            list.join(",")
        );
        let n: i64 = match self.pool(1).await {
            Pool::Pg(p) => sqlx::query_scalar(AssertSqlSafe(sql))
                .fetch_one(&p)
                .await
                .unwrap(),
            Pool::My(p) => sqlx::query_scalar(AssertSqlSafe(sql))
                .fetch_one(&p)
                .await
                .unwrap(),
            Pool::Lite(p) => sqlx::query_scalar(AssertSqlSafe(sql))
                .fetch_one(&p)
                .await
                .unwrap(),
        };
        n as usize
    }

    async fn drop_now(&self) {
        match self.kind {
            Kind::Postgres => drop_pg(&self.admin, &self.name).await,
            Kind::Mariadb => {
                let pool = MySqlPool::connect(&self.admin).await.unwrap();
                let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {}",
                    self.name
                )))
                .execute(&pool)
                .await;
                pool.close().await;
            }
            Kind::Sqlite => {}
        }
    }
}

async fn drop_pg(admin: &str, name: &str) {
    let pool = PgPool::connect(admin).await.unwrap();
    let _ = sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&pool)
    .await;
    pool.close().await;
}

/// Which generated customers a case works on: `n` of them, spread over the CRM, the
/// `lane`-th of `lanes` disjoint sets (quietus and the floor get different subjects of
/// the same shape; every run of a case another lane).
fn subjects(customers: u64, n: usize, lane: u64, lanes: u64) -> Vec<u64> {
    let stride = (customers / (n as u64 * lanes)).max(1);
    (0..n as u64)
        .map(|k| (k * lanes + lane) * stride % customers)
        .collect()
}

// ---------------------------------------------------------------------------------------
// The raw-SQL floor of one erasure
// ---------------------------------------------------------------------------------------

const CUSTOMER_JSON: &str = "JSON_OBJECT('id', id, 'customer_no', customer_no, 'kind', kind, 'name', name, 'company', company, 'email', email, 'phone', phone, 'owner_id', owner_id, 'status', status, 'created_at', created_at)";
const FOLLOW_UP_JSON: &str = "JSON_OBJECT('id', id, 'customer_id', customer_id, 'author_id', author_id, 'happened_at', happened_at, 'channel', channel, 'body', body)";
const INVOICE_JSON: &str = "JSON_OBJECT('id', id, 'invoice_no', invoice_no, 'customer_id', customer_id, 'billing_name', billing_name, 'billing_address', billing_address, 'amount', amount, 'currency', currency, 'issued_at', issued_at)";

/// One subject's erasure as raw SQL, in one transaction: read the subject's rows as JSON
/// (the customer locked, its follow-ups and invoices, which the plan retains), write them
/// to a file and fsync it, anonymise the customer row as the data map says, commit.
async fn floor_one(pool: &Pool, dir: &Path, i: u64) {
    let mut lines: Vec<String> = Vec::with_capacity(10);
    let em = email(i);
    macro_rules! body {
        ($tx:expr, $sel_c:expr, $sel_f:expr, $sel_i:expr, $upd:expr) => {{
            let (id, j): (i64, String) = sqlx::query_as($sel_c)
                .bind(&em)
                .fetch_one(&mut *$tx)
                .await
                .unwrap();
            lines.push(j);
            for sel in [$sel_f, $sel_i] {
                let rows: Vec<String> = sqlx::query_scalar(sel)
                    .bind(id)
                    .fetch_all(&mut *$tx)
                    .await
                    .unwrap();
                lines.extend(rows);
            }
            write_synced(&dir.join(format!("{i}.jsonl")), &lines);
            let done = sqlx::query($upd).bind(id).execute(&mut *$tx).await.unwrap();
            assert_eq!(done.rows_affected(), 1);
        }};
    }
    match pool {
        Pool::Pg(p) => {
            let mut tx = p.begin_write().await.unwrap();
            body!(
                tx,
                "SELECT c.id, row_to_json(c)::text FROM customers c WHERE c.email = $1 FOR UPDATE",
                "SELECT row_to_json(f)::text FROM follow_ups f WHERE f.customer_id = $1",
                "SELECT row_to_json(v)::text FROM invoices v WHERE v.customer_id = $1",
                "UPDATE customers SET name = '(erased customer)', email = NULL, phone = NULL WHERE id = $1"
            );
            tx.commit().await.unwrap();
        }
        Pool::My(p) => {
            let mut tx = p.begin_write().await.unwrap();
            let c = format!(
                "SELECT id, CAST({CUSTOMER_JSON} AS CHAR) FROM customers WHERE email = ? FOR UPDATE"
            );
            let f = format!(
                "SELECT CAST({FOLLOW_UP_JSON} AS CHAR) FROM follow_ups WHERE customer_id = ?"
            );
            let v =
                format!("SELECT CAST({INVOICE_JSON} AS CHAR) FROM invoices WHERE customer_id = ?");
            body!(
                tx,
                AssertSqlSafe(c),
                AssertSqlSafe(f.clone()),
                AssertSqlSafe(v.clone()),
                "UPDATE customers SET name = '(erased customer)', email = NULL, phone = NULL WHERE id = ?"
            );
            tx.commit().await.unwrap();
        }
        Pool::Lite(p) => {
            let mut tx = p.begin_with("BEGIN IMMEDIATE").await.unwrap();
            let c = format!("SELECT id, {CUSTOMER_JSON} FROM customers WHERE email = ?");
            let f = format!("SELECT {FOLLOW_UP_JSON} FROM follow_ups WHERE customer_id = ?");
            let v = format!("SELECT {INVOICE_JSON} FROM invoices WHERE customer_id = ?");
            body!(
                tx,
                AssertSqlSafe(c),
                AssertSqlSafe(f.clone()),
                AssertSqlSafe(v.clone()),
                "UPDATE customers SET name = '(erased customer)', email = NULL, phone = NULL WHERE id = ?"
            );
            tx.commit().await.unwrap();
        }
    }
}

fn write_synced(path: &Path, lines: &[String]) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut buf = String::new();
    for l in lines {
        buf.push_str(l);
        buf.push('\n');
    }
    f.write_all(buf.as_bytes()).unwrap();
    f.sync_all().unwrap();
}

struct FloorResult {
    wall: f64,
    /// Per-subject seconds, sorted.
    each: Vec<f64>,
}

impl FloorResult {
    fn per_s(&self) -> f64 {
        self.each.len() as f64 / self.wall
    }
}

/// The floor for `idx`, with `clients` concurrent connections.
async fn floor(crm: &Crm, dir: &Path, idx: &[u64], clients: usize) -> FloorResult {
    let dir = dir.join(format!("floor-{clients}-{}", idx.first().unwrap_or(&0)));
    std::fs::create_dir_all(&dir).unwrap();
    let pool = Arc::new(crm.pool(clients as u32).await);
    // Connect every client before the clock starts, as quietus's pools are.
    floor_one(&pool, &dir, idx[0]).await;
    let idx: Arc<Vec<u64>> = Arc::new(idx[1..].to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (pool, idx, next, dir) = (pool.clone(), idx.clone(), next.clone(), dir.clone());
        tasks.push(tokio::spawn(async move {
            let mut each = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = idx.get(k) else { break };
                let t = Instant::now();
                floor_one(&pool, &dir, i).await;
                each.push(t.elapsed().as_secs_f64());
            }
            each
        }));
    }
    let mut each = Vec::new();
    for t in tasks {
        each.extend(t.await.unwrap());
    }
    let wall = start.elapsed().as_secs_f64();
    match Arc::try_unwrap(pool).ok().unwrap() {
        Pool::Pg(p) => p.close().await,
        Pool::My(p) => p.close().await,
        Pool::Lite(p) => p.close().await,
    }
    FloorResult {
        wall,
        each: sorted(each),
    }
}

// ---------------------------------------------------------------------------------------
// quietus instances: folders, configs, the state store
// ---------------------------------------------------------------------------------------

/// The state store of a case.
struct Store {
    kind: Kind,
    /// The URL every instance's config names.
    url: String,
    /// PostgreSQL: the database's name (dropped at the end).
    name: Option<String>,
}

impl Store {
    async fn create(kind: Kind, dir: &Path) -> Store {
        match kind {
            Kind::Postgres => {
                let admin = env_url("QUIETUS_TEST_POSTGRES_URL");
                let name = db_name("store");
                let pool = PgPool::connect(&admin).await.unwrap();
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                Store {
                    kind,
                    url: with_database(&admin, &name),
                    name: Some(name),
                }
            }
            Kind::Sqlite => Store {
                kind,
                url: format!("sqlite://{}", dir.join("store.db").display()),
                name: None,
            },
            Kind::Mariadb => unreachable!(),
        }
    }

    async fn pool(&self) -> StorePool {
        match self.kind {
            Kind::Postgres => StorePool::Pg(PgPool::connect(&self.url).await.unwrap()),
            _ => {
                let path = self.url.strip_prefix("sqlite://").unwrap();
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .busy_timeout(Duration::from_secs(30));
                StorePool::Lite(
                    sqlx::sqlite::SqlitePoolOptions::new()
                        .max_connections(2)
                        .connect_with(opts)
                        .await
                        .unwrap(),
                )
            }
        }
    }

    async fn drop_now(&self) {
        if let Some(name) = &self.name {
            drop_pg(&env_url("QUIETUS_TEST_POSTGRES_URL"), name).await;
        }
    }
}

enum StorePool {
    Pg(PgPool),
    Lite(SqlitePool),
}

fn parse_time(s: &str) -> DateTime<Utc> {
    // RFC 3339, or PostgreSQL's text form ("2026-12-02 19:46:07.697536+00").
    DateTime::parse_from_rfc3339(&s.replacen(' ', "T", 1))
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .unwrap_or_else(|e| panic!("time {s:?}: {e}"))
        .with_timezone(&Utc)
}

impl StorePool {
    async fn count(&self, sql: &'static str) -> i64 {
        match self {
            StorePool::Pg(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            StorePool::Lite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        }
    }

    /// Text columns of every row (times come back as text in both dialects).
    async fn texts(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        use sqlx::Row;
        match self {
            StorePool::Pg(p) => sqlx::query(AssertSqlSafe(sql.to_owned()))
                .fetch_all(p)
                .await
                .unwrap()
                .iter()
                .map(|r| (0..r.len()).map(|k| r.get(k)).collect())
                .collect(),
            StorePool::Lite(p) => sqlx::query(AssertSqlSafe(sql.to_owned()))
                .fetch_all(p)
                .await
                .unwrap()
                .iter()
                .map(|r| (0..r.len()).map(|k| r.get(k)).collect())
                .collect(),
        }
    }

    async fn exec(&self, sql: &str) {
        match self {
            StorePool::Pg(p) => {
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                    .execute(p)
                    .await
                    .unwrap();
            }
            StorePool::Lite(p) => {
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                    .execute(p)
                    .await
                    .unwrap();
            }
        }
    }

    async fn close(self) {
        match self {
            StorePool::Pg(p) => p.close().await,
            StorePool::Lite(p) => p.close().await,
        }
    }

    /// Requests done in the sense of the benchmark: completed, with a receipt, and their
    /// completion mail sent.
    async fn done(&self) -> i64 {
        self.count(
            "SELECT COUNT(*) FROM requests r WHERE r.state = 'completed' \
             AND EXISTS (SELECT 1 FROM receipts x WHERE x.request_id = r.id) \
             AND EXISTS (SELECT 1 FROM outbox o WHERE o.request_id = r.id AND o.kind = 'completion' AND o.state = 'sent')",
        )
        .await
    }

    /// Per request: approved at, completion mail sent at.
    async fn latencies(&self) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let cast = match self {
            StorePool::Pg(_) => "::text",
            StorePool::Lite(_) => "",
        };
        let sql = format!(
            "SELECT (SELECT MIN(h.at){cast} FROM history h WHERE h.request_id = r.id AND h.to_state = 'approved'), \
             (SELECT MIN(o.sent_at){cast} FROM outbox o WHERE o.request_id = r.id AND o.kind = 'completion' AND o.state = 'sent') \
             FROM requests r"
        );
        self.texts(&sql)
            .await
            .into_iter()
            .filter_map(|r| match (&r[0], &r[1]) {
                (Some(a), Some(b)) => Some((parse_time(a), parse_time(b))),
                _ => None,
            })
            .collect()
    }
}

/// One quietus folder: config, policies pointing at the CRM, var/.
struct Instance {
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    base: String,
}

impl Instance {
    fn new(
        dir: &Path,
        store: &Store,
        crm_url: &str,
        crm_kind: Kind,
        keys: &Path,
        poll: u64,
    ) -> Self {
        std::fs::create_dir_all(dir.join("policies/systems")).unwrap();
        for (name, text) in quietus::policy::EXAMPLES {
            let text = if name.ends_with("crm.toml") {
                let driver = match crm_kind {
                    Kind::Postgres => "postgres",
                    Kind::Mariadb => "mysql",
                    Kind::Sqlite => "sqlite",
                };
                text.lines()
                    .map(|l| {
                        if l.starts_with("driver = ") {
                            format!("driver = {driver:?}")
                        } else if l.starts_with("url = ") {
                            format!("url = {crm_url:?}")
                        } else {
                            l.to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                (*text).to_owned()
            };
            std::fs::write(dir.join("policies").join(name), text).unwrap();
        }
        let config = dir.join("quietus.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\nurl = {:?}\n\n[jobs]\npoll_seconds = {poll}\n\n\
                 [mail]\ntransport = \"file\"\noutbox_dir = \"var/outbox\"\n\n\
                 [proof]\nkey_file = {:?}\npublic_key_file = {:?}\n\n\
                 [[api.tokens]]\nname = \"hr-system\"\nrole = \"hr\"\nsha256 = \"{}\"\n\n\
                 [[api.tokens]]\nname = \"dpo\"\nrole = \"dpo\"\nsha256 = \"{}\"\n",
                store.url,
                keys.join("receipts.key").display().to_string(),
                keys.join("receipts.pub").display().to_string(),
                sha_hex(HR_TOKEN),
                sha_hex(DPO_TOKEN),
            ),
        )
        .unwrap();
        Instance {
            dir: dir.to_owned(),
            config,
            child: None,
            base: String::new(),
        }
    }

    /// Start `quietus serve` on a free port; returns once it listens.
    fn start(&mut self) {
        use std::io::{BufRead, BufReader};
        let log = std::fs::File::create(self.dir.join("serve.log")).unwrap();
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(["serve", "--listen", "127.0.0.1:0"])
            // QUIETUS_BENCH_SERVE_LOG=debug (say) to see serve's steps in serve.log.
            .env(
                "QUIETUS_LOG",
                std::env::var("QUIETUS_BENCH_SERVE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("QUIETUS_NOW")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        self.base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "serve did not start: {line:?}; see {}",
                    self.dir.join("serve.log").display()
                )
            })
            .to_owned();
        self.child = Some(child);
    }

    /// SIGTERM and wait; returns the peak RSS in MiB.
    fn stop(&mut self) -> f64 {
        let Some(mut child) = self.child.take() else {
            return 0.0;
        };
        let rss = vm_hwm_mib(child.id());
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let _ = child.wait();
        rss
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A run folder with a CRM, a store and `n` instance folders (the first made the store
/// and the signing key).
struct Setup {
    crm: Crm,
    store: Store,
    inst: Vec<Instance>,
    dir: PathBuf,
}

impl Setup {
    async fn new(
        root: &Path,
        name: &str,
        o: &Opts,
        store: Kind,
        n: usize,
        customers: u64,
    ) -> Setup {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let crm = Crm::create(o.target, customers, &dir).await;
        let store = Store::create(store, &dir).await;
        let keys = dir.join("keys");
        let inst: Vec<Instance> = (0..n)
            .map(|k| {
                Instance::new(
                    &dir.join(format!("i{k}")),
                    &store,
                    &crm.url,
                    crm.kind,
                    &keys,
                    o.poll,
                )
            })
            .collect();
        quietus(&inst[0].config, &["store", "init"]);
        quietus(&inst[0].config, &["keys", "init"]);
        Setup {
            crm,
            store,
            inst,
            dir,
        }
    }

    async fn cleanup(self, keep: bool) {
        drop(self.inst);
        if !keep {
            self.crm.drop_now().await;
            self.store.drop_now().await;
        }
    }
}

fn erasure_ticket(tag: &str, k: usize, i: u64) -> String {
    format!(
        r#"{{"kind":"erasure","external_id":"BENCH-{tag}-{k}","subject":{{"email":"{}"}},"jurisdiction":"GDPR","locale":"en"}}"#,
        email(i)
    )
}

// ---------------------------------------------------------------------------------------
// The HTTP load generator
// ---------------------------------------------------------------------------------------

struct Posted {
    ids: Vec<String>,
    /// Seconds per POST, sorted.
    each: Vec<f64>,
    wall: f64,
}

/// POST every body to `/api/v1/requests` (round robin over `bases`) with `clients`
/// concurrent clients; every answer must be 201 Created.
async fn post_all(bases: &[String], bodies: Vec<String>, clients: usize) -> Posted {
    let calls = bodies
        .into_iter()
        .map(|b| ("/api/v1/requests".to_owned(), b))
        .collect();
    post_calls(
        bases,
        calls,
        HR_TOKEN,
        reqwest::StatusCode::CREATED,
        clients,
    )
    .await
}

/// Approve every request through `POST /api/v1/requests/{id}/approve`, as the DPO, with
/// `clients` concurrent clients; every answer must be 200.
async fn approve_all(bases: &[String], ids: &[String], clients: usize) -> Posted {
    let calls = ids
        .iter()
        .map(|id| (format!("/api/v1/requests/{id}/approve"), String::new()))
        .collect();
    post_calls(bases, calls, DPO_TOKEN, reqwest::StatusCode::OK, clients).await
}

/// POST each `(path, body)` (round robin over `bases`) with `clients` concurrent clients
/// and `token`; every answer must be `expect`. The ids are the answers' request ids.
async fn post_calls(
    bases: &[String],
    calls: Vec<(String, String)>,
    token: &'static str,
    expect: reqwest::StatusCode,
    clients: usize,
) -> Posted {
    let bodies = calls;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let bodies = Arc::new(bodies);
    let bases = Arc::new(bases.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, bodies, bases, next) =
            (http.clone(), bodies.clone(), bases.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some((path, body)) = bodies.get(k) else {
                    break;
                };
                let base = &bases[k % bases.len()];
                let t = Instant::now();
                let res = http
                    .post(format!("{base}{path}"))
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let status = res.status();
                let v: serde_json::Value = res.json().await.unwrap();
                let dt = t.elapsed().as_secs_f64();
                assert_eq!(status, expect, "{v}");
                let id = v["id"].as_str().or(v["request"]["id"].as_str()).unwrap();
                out.push((k, id.to_owned(), dt));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let wall = start.elapsed().as_secs_f64();
    all.sort_by_key(|(k, _, _)| *k);
    Posted {
        each: sorted(all.iter().map(|x| x.2).collect()),
        ids: all.into_iter().map(|x| x.1).collect(),
        wall,
    }
}

// ---------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------

/// quietus serve end to end with `n` instances, `r` requests and `c` clients.
async fn case_serve(root: &Path, o: &Opts, r: usize, c: usize, n: usize) {
    let store_kind = o.store.unwrap_or(Kind::Postgres);
    assert!(
        n == 1 || store_kind == Kind::Postgres,
        "several instances need a PostgreSQL store"
    );
    let name = format!("serve-{r}-{c}-{n}");
    let mut s = Setup::new(root, &name, o, store_kind, n, o.customers).await;
    for i in &mut s.inst {
        i.start();
    }
    let load_before = loadavg();
    let q_idx = subjects(o.customers, r, 0, 3);
    let bodies: Vec<String> = q_idx
        .iter()
        .enumerate()
        .map(|(k, &i)| erasure_ticket(&name, k, i))
        .collect();
    let bases: Vec<String> = s.inst.iter().map(|i| i.base.clone()).collect();
    let posted = post_all(&bases, bodies, c).await;

    // Approval through the API (or one `quietus approve` of every id, with
    // `--approve cli`), then wait for every completion.
    let store = s.store.pool().await;
    let t_approve = Instant::now();
    match o.approve {
        Approve::Api => {
            approve_all(&bases, &posted.ids, c).await;
        }
        Approve::Cli => {
            let mut args = vec!["approve"];
            args.extend(posted.ids.iter().map(String::as_str));
            quietus(&s.inst[0].config, &args);
        }
    }
    let approve_wall = t_approve.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(o.timeout);
    let mut done = 0;
    while Instant::now() < deadline {
        done = store.done().await;
        if done as usize >= r {
            break;
        }
        tokio::time::sleep(Duration::from_millis(if r == 1 { 20 } else { 200 })).await;
    }
    let waited = t_approve.elapsed().as_secs_f64();
    let rss: Vec<String> = s
        .inst
        .iter_mut()
        .map(|i| format!("{:.0}", i.stop()))
        .collect();

    // What the store says: per request approval -> completion mail; and the files.
    let lat = store.latencies().await;
    let receipts = store.count("SELECT COUNT(*) FROM receipts").await;
    let mails = store
        .count("SELECT COUNT(*) FROM outbox WHERE kind = 'completion' AND state = 'sent'")
        .await;
    let mail_ids = store
        .texts("SELECT id FROM outbox WHERE kind = 'completion' AND state = 'sent'")
        .await;
    store.close().await;
    let on_disk = mail_ids
        .iter()
        .filter(|m| {
            let id = m[0].as_deref().unwrap();
            s.inst
                .iter()
                .any(|i| i.dir.join(format!("var/outbox/{id}.eml")).is_file())
        })
        .count();
    let receipt_files: usize = s
        .inst
        .iter()
        .map(|i| {
            std::fs::read_dir(i.dir.join("var/receipts"))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum();
    let erased = s.crm.erased(&q_idx).await;
    let first_approval = lat.iter().map(|x| x.0).min();
    let last_mail = lat.iter().map(|x| x.1).max();
    let span = match (first_approval, last_mail) {
        (Some(a), Some(b)) => (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6,
        _ => f64::NAN,
    };
    let lats = sorted(
        lat.iter()
            .map(|(a, b)| (*b - *a).num_microseconds().unwrap_or(0) as f64 / 1e6)
            .collect(),
    );
    let q_rate = lat.len() as f64 / span;

    // The floor: other subjects of the same shape, sequentially and with c clients.
    let f_seq = floor(
        &s.crm,
        &s.dir,
        &subjects(o.customers, r.min(200) + 1, 1, 3),
        1,
    )
    .await;
    let f_par = floor(&s.crm, &s.dir, &subjects(o.customers, r + 1, 2, 3), c).await;
    let incomplete = if (done as usize) < r {
        format!("**only {done} of {r} done after {waited:.0} s**; ")
    } else {
        String::new()
    };
    row(
        &format!(
            "serve: {r} erasure(s), {c} clients, {n} instance(s), {} CRM {}k customers, {} store",
            s.crm.kind.label(),
            o.customers / 1000,
            store_kind.label()
        ),
        &format!(
            "{q_rate:.1} req/s (approval→last mail {span:.2} s); approval→mail p50 {} p99 {}",
            ms(pct(&lats, 50.0)),
            ms(pct(&lats, 99.0))
        ),
        &format!(
            "{:.0} req/s ({c} clients); {} / subject sequential",
            f_par.per_s(),
            ms(pct(&f_seq.each, 50.0))
        ),
        &format!(
            "{:.0}× (throughput); {:.0}× (p50 latency)",
            f_par.per_s() / q_rate,
            pct(&lats, 50.0) / pct(&f_seq.each, 50.0)
        ),
        &format!(
            "{incomplete}intake {:.0} tickets/s (p99 {}); approval of {r} ({}): {approve_wall:.2} s; \
             {receipts} receipts ({receipt_files} files), {mails} completion mails ({on_disk} .eml), \
             {erased}/{r} customers anonymised; peak RSS serve {} MiB; load {load_before}",
            r as f64 / posted.wall,
            ms(pct(&posted.each, 99.0)),
            o.approve.label(),
            rss.join("/")
        ),
    );
    s.cleanup(o.keep).await;
}

/// Submit and approve erasures of `idx` in-process (the library, as the CLI does).
async fn submit_approved(config: &Path, tag: &str, idx: &[u64]) -> Vec<String> {
    use quietus::intake::{self, Door, Source};
    let cfg = quietus::config::Config::load(Some(config)).unwrap();
    let app = quietus::app::App::open(cfg).await.unwrap();
    let ctx = &app.ctx;
    let src = Source {
        door: Door::Cli,
        actor: "bench".into(),
        trusted: true,
    };
    let mut ids = Vec::new();
    for (k, &i) in idx.iter().enumerate() {
        let body = erasure_ticket(tag, k, i);
        let t = intake::parse_ticket(body.as_bytes(), "bench", true).unwrap();
        let now = quietus::clock::now();
        let id = intake::submit(ctx, &t, &body, &src, now).await.unwrap().id;
        ctx.decide(
            &id,
            quietus::lifecycle::Decision::Approve,
            "bench",
            None,
            now,
        )
        .await
        .unwrap();
        ids.push(id);
    }
    app.close().await;
    ids
}

struct RunResult {
    wall: f64,
    user: f64,
    sys: f64,
    rss_mib: f64,
    completed: usize,
}

/// One `quietus run --json` under /usr/bin/time (wall, CPU, peak RSS).
fn quietus_run(config: &Path, dir: &Path) -> RunResult {
    let tfile = dir.join("time.txt");
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%e %U %S %M")
        .arg("-o")
        .arg(&tfile)
        .arg(BIN)
        .arg("--config")
        .arg(config)
        .args(["run", "--json"])
        .env(
            "QUIETUS_LOG",
            std::env::var("QUIETUS_BENCH_SERVE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env_remove("QUIETUS_NOW")
        .output()
        .unwrap();
    let wall = start.elapsed().as_secs_f64();
    if std::env::var_os("QUIETUS_BENCH_SERVE_LOG").is_some() {
        std::fs::write(dir.join("run.log"), &out.stderr).unwrap();
    }
    assert!(
        out.status.success(),
        "quietus run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = std::fs::read_to_string(&tfile).unwrap_or_default();
    let f: Vec<f64> = t
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    RunResult {
        wall,
        user: f.get(1).copied().unwrap_or(f64::NAN),
        sys: f.get(2).copied().unwrap_or(f64::NAN),
        rss_mib: f.get(3).copied().unwrap_or(0.0) / 1024.0,
        completed: v["completed_requests"].as_array().map_or(0, Vec::len),
    }
}

/// `n` approved erasures carried out by one `quietus run`, vs the floor of `n` others.
async fn case_run(root: &Path, o: &Opts) {
    let n = o.requests.unwrap_or(100);
    let store_kind = o.store.unwrap_or(Kind::Postgres);
    let s = Setup::new(root, "run", o, store_kind, 1, o.customers).await;
    let cfg = &s.inst[0].config;
    let q_idx = subjects(o.customers, n, 0, 3);
    let t = Instant::now();
    submit_approved(cfg, "run", &q_idx).await;
    let approve = t.elapsed().as_secs_f64();
    let load = loadavg();
    let q = quietus_run(cfg, &s.dir);
    assert_eq!(
        q.completed, n,
        "quietus run completed {} of {n}",
        q.completed
    );
    assert_eq!(s.crm.erased(&q_idx).await, n);
    let f = floor(&s.crm, &s.dir, &subjects(o.customers, n + 1, 1, 3), 1).await;
    row(
        &format!(
            "run: {n} approved erasures, one `quietus run`, {} CRM {}k customers, {} store",
            s.crm.kind.label(),
            o.customers / 1000,
            store_kind.label()
        ),
        &format!(
            "{:.2} s ({} / request); CPU {:.2} s user + {:.2} s sys",
            q.wall,
            ms(q.wall / n as f64),
            q.user,
            q.sys
        ),
        &format!("{:.3} s ({} / subject)", f.wall, ms(f.wall / n as f64)),
        &format!("{:.0}×", q.wall / f.wall),
        &format!(
            "peak RSS {:.0} MiB; submit+approve in-process {approve:.2} s; load {load}",
            q.rss_mib
        ),
    );
    if o.strace {
        let idx = subjects(o.customers, n, 2, 3);
        submit_approved(cfg, "strace", &idx).await;
        let sfile = s.dir.join("strace.txt");
        let t = Instant::now();
        let out = Command::new("strace")
            .args(["-c", "-f", "-o"])
            .arg(&sfile)
            .arg(BIN)
            .arg("--config")
            .arg(cfg)
            .args(["run", "--json"])
            .env("QUIETUS_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success());
        println!(
            "\n`strace -c -f quietus run` of {n} erasures: {:.2} s wall under strace\n\n```",
            t.elapsed().as_secs_f64()
        );
        let text = std::fs::read_to_string(&sfile).unwrap();
        for l in text.lines().take(18) {
            println!("{l}");
        }
        println!("```\n");
    }
    s.cleanup(o.keep).await;
}

/// The intake alone: POST /api/v1/requests, SQLite store, vs the raw INSERTs.
async fn case_intake(root: &Path, o: &Opts, clients: usize) {
    let n = o.requests.unwrap_or(3000);
    let dir = root.join(format!("intake-{clients}"));
    std::fs::create_dir_all(&dir).unwrap();
    let crm = dir.join("crm.db");
    quietus::demo::create_crm_sqlite(&crm).await.unwrap();
    let store_kind = o.store.unwrap_or(Kind::Sqlite);
    let store = Store::create(store_kind, &dir).await;
    let mut inst = Instance::new(
        &dir.join("i0"),
        &store,
        &format!("sqlite://{}", crm.display()),
        Kind::Sqlite,
        &dir.join("keys"),
        3600,
    );
    quietus(&inst.config, &["store", "init"]);
    inst.start();
    let bodies: Vec<String> = (0..n)
        .map(|k| erasure_ticket(&format!("intake{clients}"), k, k as u64))
        .collect();
    // Warm up (connections, first pages) with a few tickets not counted.
    let warm: Vec<String> = (0..clients)
        .map(|k| erasure_ticket("warm", k, 1_000_000 + k as u64))
        .collect();
    post_all(std::slice::from_ref(&inst.base), warm, clients).await;
    let load = loadavg();
    let p = post_all(std::slice::from_ref(&inst.base), bodies.clone(), clients).await;
    let rss = inst.stop();
    // The floor: the same tickets inserted by raw SQL into a SQLite WAL database with the
    // store's settings (synchronous = FULL), one transaction per ticket, `clients` at once:
    // the request, the ticket, its identity, its history line and the acknowledgement mail.
    let f = intake_floor(&dir, &bodies, clients).await;
    row(
        &format!(
            "intake: {n} tickets, {clients} clients, {} store",
            store_kind.label()
        ),
        &format!(
            "{:.0} tickets/s; p50 {} p99 {} max {}",
            n as f64 / p.wall,
            ms(pct(&p.each, 50.0)),
            ms(pct(&p.each, 99.0)),
            ms(pct(&p.each, 100.0))
        ),
        &format!(
            "{:.0} tickets/s; p99 {}",
            n as f64 / f.wall,
            ms(pct(&f.each, 99.0))
        ),
        &format!("{:.1}×", (n as f64 / f.wall) / (n as f64 / p.wall)),
        &format!(
            "floor: 5 raw INSERTs per ticket in one transaction, SQLite WAL; peak RSS serve {rss:.0} MiB; load {load}"
        ),
    );
    drop(inst);
    if !o.keep {
        store.drop_now().await;
    }
}

async fn intake_floor(dir: &Path, bodies: &[String], clients: usize) -> FloorResult {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("floor.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(clients as u32)
        .connect_with(opts)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE requests (id TEXT PRIMARY KEY, external_id TEXT UNIQUE, state TEXT NOT NULL, received_at TEXT NOT NULL);
         CREATE TABLE tickets (request_id TEXT PRIMARY KEY, body TEXT NOT NULL);
         CREATE TABLE identities (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, kind TEXT, value TEXT);
         CREATE INDEX identities_value ON identities (kind, value);
         CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, at TEXT, to_state TEXT);
         CREATE TABLE outbox (id TEXT PRIMARY KEY, request_id TEXT, kind TEXT, body TEXT, state TEXT);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let bodies = Arc::new(bodies.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (pool, bodies, next) = (pool.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut each = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(k) else { break };
                let t = Instant::now();
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                let id = format!("r{k:015}");
                let now = quietus::clock::now().to_rfc3339();
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
                sqlx::query("INSERT INTO requests VALUES (?, ?, 'pending_review', ?)")
                    .bind(&id)
                    .bind(v["external_id"].as_str())
                    .bind(&now)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("INSERT INTO tickets VALUES (?, ?)")
                    .bind(&id)
                    .bind(body)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("INSERT INTO identities (request_id, kind, value) VALUES (?, 'email', ?)")
                    .bind(&id)
                    .bind(v["subject"]["email"].as_str())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("INSERT INTO history (request_id, at, to_state) VALUES (?, ?, 'pending_review')")
                    .bind(&id)
                    .bind(&now)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("INSERT INTO outbox VALUES (?, ?, 'acknowledgement', ?, 'pending')")
                    .bind(format!("m{k:015}"))
                    .bind(&id)
                    .bind("We received your request.")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                each.push(t.elapsed().as_secs_f64());
            }
            each
        }));
    }
    let mut each = Vec::new();
    for t in tasks {
        each.extend(t.await.unwrap());
    }
    let wall = start.elapsed().as_secs_f64();
    pool.close().await;
    FloorResult {
        wall,
        each: sorted(each),
    }
}

/// Receipt verification: in-process (what `quietus verify FILE` does after start-up), the
/// CLI process, and the raw ed25519 verify + SHA-256 of the same bytes.
async fn case_verify(root: &Path) {
    use quietus::proof::receipt::{self, Receipt};
    let dir = root.join("verify");
    let out = Command::new(BIN)
        .args(["demo", "--dir"])
        .arg(&dir)
        .arg("--json")
        .env("QUIETUS_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let path = PathBuf::from(v["receipts"][0].as_str().unwrap());
    let pk_path = PathBuf::from(v["public_key"].as_str().unwrap());
    let config = dir.join("quietus.toml");
    let pk = quietus::proof::note::PublicKey::parse(&std::fs::read_to_string(&pk_path).unwrap())
        .unwrap();
    let iters = 2_000;
    let t = Instant::now();
    for _ in 0..iters {
        let text = std::fs::read_to_string(&path).unwrap();
        let r: Receipt = serde_json::from_str(&text).unwrap();
        let checks = receipt::verify(&r, &pk, None);
        assert!(checks.iter().all(|c| c.ok), "{checks:?}");
    }
    let q = t.elapsed().as_secs_f64() / f64::from(iters);
    // Baseline: read the same file, SHA-256 it, verify one ed25519 signature over it.
    use ed25519_dalek::{Signer, SigningKey, Verifier};
    let sk = SigningKey::from_bytes(&[7u8; 32]);
    let vk = sk.verifying_key();
    let bytes = std::fs::read(&path).unwrap();
    let sig = sk.sign(&bytes);
    let t = Instant::now();
    for _ in 0..iters {
        let b = std::fs::read(&path).unwrap();
        let d = Sha256::digest(&b);
        std::hint::black_box(d);
        vk.verify(&b, &sig).unwrap();
    }
    let base = t.elapsed().as_secs_f64() / f64::from(iters);
    let runs = 10;
    let t = Instant::now();
    for _ in 0..runs {
        let o = quietus(&config, &["verify", path.to_str().unwrap()]);
        assert!(o.contains("the receipt holds"));
    }
    let cli = t.elapsed().as_secs_f64() / f64::from(runs);
    row(
        &format!(
            "verify: one receipt ({} bytes, tree size {})",
            bytes.len(),
            v["run"]["receipts"].as_array().map_or(0, Vec::len)
        ),
        &format!(
            "{} in-process; {} the `quietus verify` process",
            ms(q),
            ms(cli)
        ),
        &format!("{} (read + SHA-256 + ed25519 verify)", ms(base)),
        &format!("{:.1}×", q / base),
        &format!("{iters} iterations; load {}", loadavg()),
    );
}

/// Opening one connection, as quietus opens them (sqlx with the vendored TCP_NODELAY),
/// over TLS as negotiated and without TLS; the floor is a bare TCP connect to the same
/// port. Without TCP_NODELAY the TLS handshake met delayed ACKs (~85 ms a connection).
async fn case_connect() {
    use sqlx::{ConnectOptions, Connection};
    let iters = 50;
    let tcp = |port: u16| async move {
        let mut v = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            v.push(t.elapsed().as_secs_f64());
            drop(s);
        }
        sorted(v)
    };
    let pg = env_url("QUIETUS_TEST_POSTGRES_URL");
    let my = env_url("QUIETUS_TEST_MYSQL_URL");
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "PostgreSQL, TLS (sslmode=require)",
            format!("{pg}?sslmode=require"),
            5432,
        ),
        ("PostgreSQL, no TLS", format!("{pg}?sslmode=disable"), 5432),
        ("MariaDB, no TLS", format!("{my}?ssl-mode=disabled"), 3306),
    ];
    for (label, url, port) in cases {
        let mut v = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            if url.starts_with("postgres") {
                let o: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
                o.connect().await.unwrap().close().await.unwrap();
            } else {
                let o: sqlx::mysql::MySqlConnectOptions = url.parse().unwrap();
                o.connect().await.unwrap().close().await.unwrap();
            }
            v.push(t.elapsed().as_secs_f64());
        }
        let v = sorted(v);
        let floor = tcp(port).await;
        row(
            &format!("connect: {label}"),
            &format!("median {}, p99 {}", ms(pct(&v, 50.0)), ms(pct(&v, 99.0))),
            &format!("{} (bare TCP connect)", ms(pct(&floor, 50.0))),
            &format!("{:.0}×", pct(&v, 50.0) / pct(&floor, 50.0)),
            &format!(
                "{iters} connections, each opened, authenticated and closed; load {}",
                loadavg()
            ),
        );
    }
}

/// The archive writer on `rows` rows vs `zstd -3 | age -r` on the same JSON lines.
async fn case_backup(root: &Path, o: &Opts) {
    use quietus::backup::{Manifest, Record, TableManifest, Writer};
    let dir = root.join("backup");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let records: Vec<Record> = (0..o.rows)
        .map(|i| {
            let mut out: [Vec<Vec<Option<String>>>; 4] = Default::default();
            customer_rows(i, &mut rng, &mut out);
            let r = &out[1][0];
            let names = [
                "id",
                "customer_id",
                "author_id",
                "happened_at",
                "channel",
                "body",
            ];
            Record {
                t: "follow_ups".into(),
                k: r[0].clone().unwrap(),
                v: names
                    .iter()
                    .zip(r)
                    .map(|(n, v)| ((*n).to_owned(), v.clone()))
                    .collect(),
            }
        })
        .collect();
    let col = |name: &str, ty: &str| -> quietus::targets::sql::Column {
        serde_json::from_value(serde_json::json!({"name": name, "type": ty})).unwrap()
    };
    let manifest = Manifest {
        quietus_backup: quietus::backup::FORMAT,
        id: "benchbackup00001".into(),
        request_id: None,
        task_id: "benchtask0000001".into(),
        system: "crm".into(),
        created_at: quietus::clock::now(),
        digest_key: hex::encode([1u8; 32]),
        tables: vec![TableManifest {
            table: "follow_ups".into(),
            key: col("id", "integer"),
            action: serde_json::from_value(serde_json::json!("erase")).unwrap(),
            columns: vec![
                col("id", "integer"),
                col("customer_id", "integer"),
                col("author_id", "integer"),
                col("happened_at", "timestamp"),
                col("channel", "text"),
                col("body", "text"),
            ],
            set: Default::default(),
        }],
    };
    // The same bytes as a plain JSONL file for the stock tools.
    let jsonl = dir.join("rows.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&jsonl).unwrap());
        writeln!(f, "{}", serde_json::to_string(&manifest).unwrap()).unwrap();
        for r in &records {
            writeln!(f, "{}", serde_json::to_string(r).unwrap()).unwrap();
        }
        writeln!(
            f,
            r#"{{"end":true,"rows":{},"rows_sha256":"{}"}}"#,
            o.rows,
            "0".repeat(64)
        )
        .unwrap();
    }
    let raw = std::fs::metadata(&jsonl).unwrap().len();
    let t = Instant::now();
    let mut w = Writer::create(&dir.join("q"), &dir.join("qkeys"), &manifest).unwrap();
    for r in &records {
        w.write_row(r).unwrap();
    }
    let written = w.finish().unwrap();
    let q = t.elapsed().as_secs_f64();
    // Stock: zstd -3 | age -r RECIPIENT -o FILE, then fsync the file.
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let out = dir.join("stock.jsonl.zst.age");
    let t = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -3 -q -c {} | age -r {recipient} -o {}",
            jsonl.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "zstd | age failed (are both installed?)");
    std::fs::File::open(&out).unwrap().sync_all().unwrap();
    let stock = t.elapsed().as_secs_f64();
    let mb = raw as f64 / 1e6;
    row(
        &format!("backup: {} rows ({mb:.1} MB of JSONL)", o.rows),
        &format!(
            "{q:.3} s ({:.0} MB/s; {} bytes; incl. serialising, key file, fsyncs, rename, SHA-256 pass)",
            mb / q,
            written.size
        ),
        &format!(
            "{stock:.3} s ({:.0} MB/s; {} bytes) `zstd -3 | age -r`, fsync",
            mb / stock,
            std::fs::metadata(&out).unwrap().len()
        ),
        &format!("{:.2}× the stock throughput", stock / q),
        &format!("load {}", loadavg()),
    );
}

/// Grow the store by `n` copies of request `tmpl` with every row that hangs off it
/// (ticket, identities, history, plans, tasks, backups aged two days, outbox, the receipt
/// and its log entry).
async fn grow_store(store: &StorePool, tmpl: &str, n: u64) {
    let pg = matches!(store, StorePool::Pg(_));
    let series_from = if pg {
        format!("CROSS JOIN generate_series(0, {}) AS s(i)", n - 1)
    } else {
        "CROSS JOIN s".to_owned()
    };
    let cte = if pg {
        String::new()
    } else {
        format!(
            "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < {n}) "
        )
    };
    let log_size = store.count("SELECT COUNT(*) FROM log_entries").await;
    let tmpl_idx = store
        .texts(&format!(
            "SELECT CAST(MIN(idx) AS TEXT) FROM log_entries WHERE request_id = '{tmpl}'"
        ))
        .await[0][0]
        .clone()
        .unwrap();
    let old = (quietus::clock::now() - chrono::Duration::days(2)).to_rfc3339();
    for (table, filter) in [
        ("requests", format!("x.id = '{tmpl}'")),
        ("tickets", format!("x.request_id = '{tmpl}'")),
        ("identities", format!("x.request_id = '{tmpl}'")),
        ("history", format!("x.request_id = '{tmpl}'")),
        ("plans", format!("x.request_id = '{tmpl}'")),
        ("tasks", format!("x.request_id = '{tmpl}'")),
        ("backups", format!("x.request_id = '{tmpl}'")),
        ("outbox", format!("x.request_id = '{tmpl}'")),
        ("receipts", format!("x.request_id = '{tmpl}'")),
        ("log_entries", format!("x.idx = {tmpl_idx}")),
    ] {
        let cols: Vec<(String, bool)> = if pg {
            store
                .texts(&format!(
                    "SELECT column_name::text, is_identity::text FROM information_schema.columns \
                     WHERE table_schema = 'public' AND table_name = '{table}' ORDER BY ordinal_position"
                ))
                .await
                .into_iter()
                .map(|r| (r[0].clone().unwrap(), r[1].as_deref() == Some("YES")))
                .collect()
        } else {
            store
                .texts(&format!(
                    "SELECT name, CAST(pk AS TEXT) || type FROM pragma_table_info('{table}')"
                ))
                .await
                .into_iter()
                .map(|r| (r[0].clone().unwrap(), r[1].as_deref() == Some("1INTEGER")))
                .collect()
        };
        let suffix = |c: &str| format!("x.{c} || '-g' || CAST(s.i AS TEXT)");
        let (mut names, mut exprs) = (Vec::new(), Vec::new());
        for (c, generated) in cols {
            let e = match c.as_str() {
                _ if generated => continue,
                "id" | "request_id" | "task_id" | "receipt_id" | "external_id" | "backup_id" => {
                    suffix(&c)
                }
                "verify_token_sha256" | "confirm_token_sha256" => "NULL".into(),
                "idx" | "log_idx" => format!("{log_size} + s.i"),
                "created_at" if table == "backups" => format!("'{old}'"),
                _ => format!("x.{c}"),
            };
            names.push(c);
            exprs.push(e);
        }
        let sql = format!(
            "{cte}INSERT INTO {table} ({}) SELECT {} FROM {table} AS x {series_from} WHERE {filter}",
            names.join(", "),
            exprs.join(", ")
        );
        store.exec(&sql).await;
    }
    if pg {
        store.exec("ANALYZE").await;
    }
}

/// One small erasure's `quietus run`, empty store vs grown store.
async fn case_growth(root: &Path, o: &Opts) {
    let store_kind = o.store.unwrap_or(Kind::Postgres);
    let s = Setup::new(root, "growth", o, store_kind, 1, o.customers).await;
    let cfg = &s.inst[0].config;
    let reps = 3;
    let mut lane = 0;
    let mut one = async || {
        let idx = subjects(o.customers, 1, lane, 20);
        lane += 1;
        let id = submit_approved(cfg, &format!("g{lane}"), &idx).await;
        let r = quietus_run(cfg, &s.dir);
        assert_eq!(r.completed, 1);
        (id[0].clone(), r.wall)
    };
    let mut empty = Vec::new();
    let mut tmpl = String::new();
    for _ in 0..reps {
        let (id, w) = one().await;
        tmpl = id;
        empty.push(w);
    }
    let store = s.store.pool().await;
    let t = Instant::now();
    grow_store(&store, &tmpl, o.store_size).await;
    let grow = t.elapsed().as_secs_f64();
    let requests = store.count("SELECT COUNT(*) FROM requests").await;
    let logs = store.count("SELECT COUNT(*) FROM log_entries").await;
    let backups = store.count("SELECT COUNT(*) FROM backups").await;
    store.close().await;
    let mut grown = Vec::new();
    for _ in 0..reps {
        grown.push(one().await.1);
    }
    let (e, g) = (pct(&sorted(empty), 50.0), pct(&sorted(grown), 50.0));
    row(
        &format!(
            "growth: one erasure's `quietus run`, {} store with {requests} requests, {logs} log entries, {backups} backups",
            store_kind.label()
        ),
        &format!("{} (median of {reps})", ms(g)),
        &format!("{} with the empty store (median of {reps})", ms(e)),
        &format!("{:.2}×", g / e),
        &format!(
            "store grown by SQL in {grow:.1} s; {} CRM; load {}",
            s.crm.kind.label(),
            loadavg()
        ),
    );
    s.cleanup(o.keep).await;
}

// ---------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------

async fn versions(o: &Opts) -> String {
    let mut v = String::new();
    if let Ok(p) = PgPool::connect(&env_url("QUIETUS_TEST_POSTGRES_URL")).await {
        let s: String = sqlx::query_scalar("SELECT version()")
            .fetch_one(&p)
            .await
            .unwrap_or_default();
        let ssl: Option<String> = sqlx::query_scalar(
            "SELECT CASE WHEN ssl THEN version ELSE 'no TLS' END FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .fetch_optional(&p)
        .await
        .unwrap_or_default();
        let _ = write!(
            v,
            "PostgreSQL: {} ({}); ",
            s.split(" on ").next().unwrap_or(&s),
            ssl.unwrap_or_default()
        );
        p.close().await;
    }
    if (o.target == Kind::Mariadb || o.case == "all")
        && let Ok(p) = MySqlPool::connect(&env_url("QUIETUS_TEST_MYSQL_URL")).await
    {
        let s: String = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(&p)
            .await
            .unwrap_or_default();
        let _ = write!(v, "MariaDB/MySQL: {s}; ");
        p.close().await;
    }
    let _ = write!(v, "SQLite: {}", sqlx_sqlite_version().await);
    v
}

async fn sqlx_sqlite_version() -> String {
    let p = SqlitePool::connect("sqlite::memory:").await.unwrap();
    let s: String = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(&p)
        .await
        .unwrap();
    p.close().await;
    s
}

fn main() {
    let o = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let root = tempfile::Builder::new()
            .prefix("quietus-bench-")
            .tempdir()
            .unwrap();
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        println!(
            "machine: {cores} cores, Linux {}, load average {}",
            kernel.trim(),
            loadavg()
        );
        println!("versions: {}", versions(&o).await);
        println!(
            "command: cargo bench --bench e2e -- {}",
            std::env::args()
                .skip(1)
                .filter(|a| a != "--bench")
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!("quietus: {BIN}\n");
        println!("| case | quietus | raw-SQL floor (same run) | quietus / floor | notes |");
        println!("|---|---|---|---:|---|");
        let root_path = root.path().to_owned();
        let r = &root_path;
        let c = o.clients;
        let serve_default = |o: &Opts| -> Vec<(usize, usize)> {
            match o.requests {
                Some(n) => vec![(n, c)],
                None => vec![(1, 1), (100, c)],
            }
        };
        match o.case.as_str() {
            "quick" | "all" => {
                for k in [8, 32] {
                    case_intake(r, &o, k).await;
                }
                case_verify(r).await;
                case_connect().await;
                case_backup(r, &o).await;
                case_run(r, &o).await;
                for (n, c) in serve_default(&o) {
                    case_serve(r, &o, n, c, 1).await;
                }
                if o.case == "all" {
                    case_serve(r, &o, 1000, c, 1).await;
                    for n in 1..=o.instances.unwrap_or(3) {
                        case_serve(r, &o, 300, c, n).await;
                    }
                    case_growth(r, &o).await;
                }
            }
            "serve" => {
                for (n, c) in serve_default(&o) {
                    case_serve(r, &o, n, c, o.instances.unwrap_or(1)).await;
                }
            }
            "instances" => {
                let req = o.requests.unwrap_or(300);
                for n in 1..=o.instances.unwrap_or(3) {
                    case_serve(r, &o, req, c, n).await;
                }
            }
            "run" => case_run(r, &o).await,
            "intake" => {
                if o.clients == 8 {
                    for k in [8, 32] {
                        case_intake(r, &o, k).await;
                    }
                } else {
                    case_intake(r, &o, c).await;
                }
            }
            "verify" => case_verify(r).await,
            "connect" => case_connect().await,
            "backup" => case_backup(r, &o).await,
            "growth" => case_growth(r, &o).await,
            other => panic!("unknown case {other:?} (see --help)"),
        }
        if o.keep {
            println!("\nkept {}", root.keep().display());
        }
    });
}
