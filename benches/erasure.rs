//! Benchmark: an exit carried out by quietus (collect, encrypted backup, read-back,
//! batched apply, re-check) against the raw SQL of the same changes, on the demo CRM
//! (SQLite) with a leaver who has N personal notes and a CRM with M other notes; the floor
//! is the issue's: the same reads (as JSON), a durable dump, the same changes, one transaction.
//!
//! `cargo bench --bench erasure` runs every case in a child process of its own, so that
//! peak memory (VmHWM) is measured per case, and prints a Markdown table for
//! BENCHMARKS.md. `cargo bench --bench erasure -- quick` runs the small cases only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
// A harness reads whole files it wrote (the product reads through fsx's bounded reads).
#![allow(clippy::disallowed_methods)]

use quietus::store::BeginWrite as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use quietus::config::Config;
use quietus::intake::{self, Source};
use quietus::lifecycle::Decision;

const CASES: [(u64, u64); 5] = [
    (1_000, 0),
    (10_000, 0),
    (100_000, 0),
    (10_000, 1_000_000),
    (100_000, 1_000_000),
];

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

async fn make_crm(path: &Path, notes: u64, other: u64) {
    quietus::demo::create_crm_sqlite(path).await.unwrap();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let mut tx = pool.begin_write().await.unwrap();
    // E100 is employees.id 5; other notes go to the 39 other employees.
    let mut id = 1_000_000u64;
    for (count, owner) in [(notes, None), (other, Some(()))] {
        let mut left = count;
        while left > 0 {
            let n = left.min(500);
            let mut sql = String::from(
                "INSERT INTO personal_notes (id, employee_id, created_at, body) VALUES ",
            );
            for i in 0..n {
                id += 1;
                let emp = if owner.is_some() { 6 + (id % 30) } else { 5 };
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("({id}, {emp}, '2026-01-01 10:00:00', 'note {id}: call back about the renewal, bring the signed quote')"));
            }
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .unwrap();
            left -= n;
        }
    }
    tx.commit().await.unwrap();
    pool.close().await;
}

/// The leaver's changes as raw SQL, one transaction of six set-based statements.
const CHANGES: [&str; 6] = [
    "UPDATE employees SET status = 'disabled', left_at = '2026-11-24' WHERE id = 5",
    "UPDATE customers SET owner_id = 25 WHERE owner_id = 5 AND status = 'active'",
    "UPDATE deals SET owner_id = 25 WHERE owner_id = 5 AND stage IN ('lead', 'negotiation')",
    "DELETE FROM employee_roles WHERE employee_id = 5",
    "DELETE FROM personal_notes WHERE employee_id = 5",
    "UPDATE employees SET name = '(departed employee)', email = NULL, mobile = NULL WHERE id = 5",
];

/// The rows those changes touch: (table, condition).
const TOUCHED: [(&str, &str); 5] = [
    ("employees", "id = 5"),
    ("customers", "owner_id = 5 AND status = 'active'"),
    ("deals", "owner_id = 5 AND stage IN ('lead', 'negotiation')"),
    ("employee_roles", "employee_id = 5"),
    ("personal_notes", "employee_id = 5"),
];

/// The raw SQL of the same work, in one transaction. With `dump`, it is the issue's
/// floor: the same reads (every touched row as JSON), a durable dump (written and
/// fsynced) and then the same changes. Without, the changes alone.
async fn raw(dir: &Path, dump: bool) -> f64 {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.join("crm.db").display()))
        .await
        .unwrap();
    // Each touched table's rows as one JSON object each (the catalog read before the clock).
    let mut reads = Vec::new();
    for (table, cond) in TOUCHED {
        let cols: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        let pairs: Vec<String> = cols.iter().map(|c| format!("'{c}', {c}")).collect();
        reads.push(format!(
            "SELECT json_object('t', '{table}', 'v', json_object({})) FROM {table} WHERE {cond}",
            pairs.join(", ")
        ));
    }
    let start = Instant::now();
    let mut tx = pool.begin_write().await.unwrap();
    if dump {
        use std::io::Write as _;
        let mut out =
            std::io::BufWriter::new(std::fs::File::create(dir.join("dump.jsonl")).unwrap());
        for sql in &reads {
            let mut rows =
                sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.clone())).fetch(&mut *tx);
            use futures::TryStreamExt as _;
            while let Some(line) = rows.try_next().await.unwrap() {
                out.write_all(line.as_bytes()).unwrap();
                out.write_all(b"\n").unwrap();
            }
        }
        out.into_inner().unwrap().sync_all().unwrap();
    }
    for sql in CHANGES {
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let t = start.elapsed().as_secs_f64();
    pool.close().await;
    t
}

async fn with_quietus(dir: &Path) -> f64 {
    std::fs::create_dir_all(dir.join("policies/systems")).unwrap();
    for (name, text) in quietus::policy::EXAMPLES {
        std::fs::write(dir.join("policies").join(name), text).unwrap();
    }
    std::fs::write(
        dir.join("quietus.toml"),
        "[store]\nurl = \"sqlite://var/q.db\"\n",
    )
    .unwrap();
    let config = Config::load(Some(&dir.join("quietus.toml"))).unwrap();
    let (app, _) = quietus::app::App::open_with(config, quietus::store::Open::CreateIfMissing)
        .await
        .unwrap();
    let ctx = &app.ctx;
    let now = quietus::clock::now();
    let today = ctx.today(now);
    let body = format!(
        r#"{{"kind":"exit","external_id":"B-1","subject":{{"employee_id":"E100"}},"exit_date":"{today}","successor":{{"employee_id":"E200"}}}}"#
    );
    let t = intake::parse_ticket(body.as_bytes(), "bench", true).unwrap();
    let src = Source {
        door: quietus::intake::Door::Cli,
        actor: "bench".into(),
        trusted: true,
    };
    let id = intake::submit(ctx, &t, &body, &src, now).await.unwrap().id;
    ctx.decide(&id, Decision::Approve, "bench", None, now)
        .await
        .unwrap();
    let settings = app.worker().unwrap();
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let summary = quietus::jobs::run_due(ctx, &settings, &stop, &|_| {})
        .await
        .unwrap();
    let t = start.elapsed().as_secs_f64();
    assert_eq!(summary.failed, 0);
    assert_eq!(summary.completed_requests, vec![id]);
    t
}

fn child(mode: &str, notes: u64, other: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        make_crm(&dir.path().join("crm.db"), notes, other).await;
        let base = peak_rss_kib();
        let secs = match mode {
            "raw" => raw(dir.path(), false).await,
            "floor" => raw(dir.path(), true).await,
            _ => with_quietus(dir.path()).await,
        };
        let left: i64 = {
            let pool = sqlx::SqlitePool::connect(&format!(
                "sqlite://{}",
                dir.path().join("crm.db").display()
            ))
            .await
            .unwrap();
            let n = sqlx::query_scalar("SELECT COUNT(*) FROM personal_notes WHERE employee_id = 5")
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            n
        };
        assert_eq!(left, 0, "{mode}: notes remain");
        println!(
            "{mode} {notes} {other} {secs:.4} {} {}",
            base,
            peak_rss_kib()
        );
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 5 && args[1] == "--child" {
        child(&args[2], args[3].parse().unwrap(), args[4].parse().unwrap());
        return;
    }
    let quick = args.iter().any(|a| a == "quick");
    let me = std::env::current_exe().unwrap();
    println!(
        "| leaver's notes | other notes | changes alone (s) | floor: reads + dump + changes (s) | quietus (s) | quietus / floor | quietus / changes | peak RSS floor (MiB) | peak RSS quietus (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (notes, other) in CASES {
        if quick && (notes > 10_000 || other > 0) {
            continue;
        }
        let mut row = Vec::new();
        for mode in ["raw", "floor", "quietus"] {
            let out = Command::new(&me)
                .args(["--child", mode, &notes.to_string(), &other.to_string()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default()
                .to_owned();
            let f: Vec<&str> = line.split_whitespace().collect();
            row.push((
                f[3].parse::<f64>().unwrap(),
                f[5].parse::<f64>().unwrap() / 1024.0,
            ));
        }
        println!(
            "| {notes} | {other} | {:.3} | {:.3} | {:.3} | {:.1}× | {:.1}× | {:.0} | {:.0} |",
            row[0].0,
            row[1].0,
            row[2].0,
            row[2].0 / row[1].0,
            row[2].0 / row[0].0,
            row[1].1,
            row[2].1
        );
    }
}
