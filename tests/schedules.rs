//! Schedules under `quietus serve`, on the wall clock, on SQLite and PostgreSQL state
//! stores: every schedule does its work (the retention sweep erases expired rows backup
//! first, with a receipt; expired backups are crypto-shredded; the DPO is reminded), and
//! a tick already past when the daemon first starts is not fired as a catch-up unless
//! `schedule.catch_up` says so.
//!
//! The daemon polls for due work once an hour here (`Env::serve`), so whatever happens
//! while it runs is the schedules' doing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use rstest::rstest;

use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use common::{Backend, CrmKind, ERASURE_TICKET, EXIT_TICKET, Env, StoreKind, ok};
use quietus::store::Pool;

/// Rows the sweep must erase whatever the day: three years is at most 2023-12-02 here.
const OLD: &str = "< '2023-11-01'";

/// `quietus serve`, stopped (SIGTERM) when dropped, also when an assertion fails.
struct Daemon(Option<std::process::Child>);

impl Daemon {
    fn start(env: &Env) -> Daemon {
        Daemon(Some(env.serve().0))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            common::stop(c);
        }
    }
}

fn add_config(env: &Env, text: &str) {
    let mut c = common::read_to_string(&env.config).unwrap();
    c.push_str(text);
    std::fs::write(&env.config, c).unwrap();
}

async fn count(ctx: &quietus::lifecycle::Context, sql: &'static str, bind: &str) -> i64 {
    match &ctx.store.pool {
        Pool::Sqlite(p) => {
            sqlx::query_as::<_, (i64,)>(sql)
                .bind(bind)
                .fetch_one(p)
                .await
                .unwrap()
                .0
        }
        Pool::Postgres(p) => {
            sqlx::query_as::<_, (i64,)>(sql)
                .bind(bind)
                .fetch_one(p)
                .await
                .unwrap()
                .0
        }
    }
}

async fn ticks(ctx: &quietus::lifecycle::Context, name: &str) -> Vec<DateTime<Utc>> {
    let sql = "SELECT tick_at FROM schedule_ticks WHERE name = $1 ORDER BY tick_at";
    let rows: Vec<(DateTime<Utc>,)> = match &ctx.store.pool {
        Pool::Sqlite(p) => sqlx::query_as(sql).bind(name).fetch_all(p).await.unwrap(),
        Pool::Postgres(p) => sqlx::query_as(sql).bind(name).fetch_all(p).await.unwrap(),
    };
    rows.into_iter().map(|r| r.0).collect()
}

fn receipts(env: &Env, prefix: &str) -> Vec<std::path::PathBuf> {
    let c = quietus::config::Config::load(Some(&env.config)).unwrap();
    let dir = c.path(&c.proof.receipts_dir);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect()
}

fn submit_at(env: &Env, ticket: &str, at: &str) -> String {
    let f = env.write("ticket.json", ticket);
    ok(&env.run_at(&["submit", f.to_str().unwrap()], Some(at), None))
        .trim()
        .to_owned()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn each_schedule_does_its_work_under_serve(#[case] backend: Backend) {
    {
        let kind = StoreKind::of(backend).await;
        let label = kind.label();
        let env = Env::new(&kind).await;
        add_config(
            &env,
            "\n[schedule]\nretention_sweep = \"*/2 * * * * *\"\nbackup_expiry = \"*/2 * * * * *\"\n\
             reminders = \"*/2 * * * * *\"\n[mail]\ndpo = \"dpo@corp.example\"\n",
        );
        let crm = CrmKind::Sqlite;

        // A backup that expires 30 s from now: an erasure carried out 90 days ago, less 30 s.
        let expires = (quietus::clock::now() + chrono::Duration::seconds(30))
            .with_nanosecond(0)
            .unwrap();
        let past = (expires - chrono::Duration::days(90)).to_rfc3339();
        let erased = submit_at(&env, ERASURE_TICKET, &past);
        ok(&env.run_at(&["approve", &erased], Some(&past), None));
        ok(&env.run_at(&["run"], Some(&past), None));
        // A request left waiting since then: overdue, so the DPO is reminded of it.
        let waiting = submit_at(&env, EXIT_TICKET, &past);

        let ctx = env.context().await;
        let backups = ctx.store.backups_of(&erased).await.unwrap();
        assert_eq!(backups.len(), 1, "{label}: {backups:?}");
        assert_eq!(backups[0].expires_at, expires, "{label}");
        let (bdir, kdir) = quietus::config::Config::load(Some(&env.config))
            .unwrap()
            .backup_dirs();
        let (archive, key) = quietus::backup::paths(&bdir, &kdir, &backups[0].id);
        assert!(archive.exists() && key.exists(), "{label}");
        let old_follow_ups = env
            .crm_count(&crm, &format!("FROM follow_ups WHERE happened_at {OLD}"))
            .await;
        let old_call_notes = env
            .crm_count(&crm, &format!("FROM call_notes WHERE happened_at {OLD}"))
            .await;
        assert!(old_follow_ups > 0 && old_call_notes > 0, "{label}");
        assert!(receipts(&env, "sweep-").is_empty(), "{label}");

        let daemon = Daemon::start(&env);
        let started = quietus::clock::now();
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut swept, mut shredded, mut reminded) = (false, false, false);
        while !(swept && shredded && reminded) {
            if Instant::now() > deadline {
                panic!(
                    "{label}: within 120 s under serve: swept {swept}, expired backup shredded {shredded}, DPO reminded {reminded}"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            swept = env
                .crm_count(&crm, &format!("FROM follow_ups WHERE happened_at {OLD}"))
                .await
                == 0
                && env
                    .crm_count(&crm, &format!("FROM call_notes WHERE happened_at {OLD}"))
                    .await
                    == 0
                && !receipts(&env, "sweep-").is_empty();
            shredded = ctx.store.backups_of(&erased).await.unwrap()[0]
                .shredded_at
                .is_some();
            reminded = count(
                &ctx,
                "SELECT COUNT(*) FROM outbox WHERE kind = 'reminder' AND state = 'sent' AND request_id = $1",
                &waiting,
            )
            .await
                > 0;
        }
        drop(daemon);

        // The backup expired while the daemon ran, not before it started.
        if started < expires {
            assert!(
                !archive.exists() && !key.exists(),
                "{label}: crypto-shredded"
            );
        } else {
            eprintln!(
                "{label}: the set-up took longer than 30 s; the backup expired before serve started"
            );
        }
        // The sweep erased backup first: every swept row is in a verified backup.
        let sql = "SELECT id, sha256 FROM backups WHERE request_id IS NULL";
        let sweep_backups: Vec<(String, String)> = match &ctx.store.pool {
            Pool::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
            Pool::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
        };
        let mut backed = std::collections::BTreeMap::<String, u64>::new();
        for (id, sha) in &sweep_backups {
            let (p, k) = quietus::backup::paths(&bdir, &kdir, id);
            for (t, n) in quietus::backup::verify(&p, &k, Some(sha)).unwrap() {
                *backed.entry(t).or_default() += n;
            }
        }
        assert!(
            backed.get("follow_ups").copied().unwrap_or(0)
                >= u64::try_from(old_follow_ups).unwrap()
                && backed.get("call_notes").copied().unwrap_or(0)
                    >= u64::try_from(old_call_notes).unwrap(),
            "{label}: {backed:?}"
        );
        // Its receipts verify.
        for r in receipts(&env, "sweep-") {
            ok(&env.run(&["verify", r.to_str().unwrap()]));
        }
        for name in ["retention_sweep", "backup_expiry", "reminders"] {
            assert!(!ticks(&ctx, name).await.is_empty(), "{label}: {name} fired");
        }
        ctx.store.close().await;
        drop(env);
        kind.cleanup().await;
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn a_tick_already_past_at_first_start_is_not_fired_unless_catch_up_is_configured(
    #[case] backend: Backend,
) {
    {
        let kind = StoreKind::of(backend).await;
        let label = kind.label();
        let env = Env::new(&kind).await;
        let crm = CrmKind::Sqlite;
        // The sweep's daily tick was an hour ago; reminders tick every second (they show
        // that the daemon's schedules are being looked at).
        let missed = (quietus::clock::now() - chrono::Duration::hours(1))
            .with_nanosecond(0)
            .unwrap();
        add_config(
            &env,
            &format!(
                "\n[schedule]\nretention_sweep = \"{} {} {} * * *\"\nbackup_expiry = \"\"\nreminders = \"* * * * * *\"\n",
                missed.second(),
                missed.minute(),
                missed.hour()
            ),
        );
        let old = env
            .crm_count(&crm, &format!("FROM follow_ups WHERE happened_at {OLD}"))
            .await;
        assert!(old > 0);

        let ctx = env.context().await;
        let daemon = Daemon::start(&env);
        let deadline = Instant::now() + Duration::from_secs(60);
        // A reminders tick: the daemon has looked at its schedules (the sweep's first).
        while ticks(&ctx, "reminders").await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{label}: reminders did not tick under serve"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(daemon);
        assert_eq!(
            ticks(&ctx, "retention_sweep").await,
            Vec::<DateTime<Utc>>::new(),
            "{label}: the sweep's tick of an hour ago was fired at first start"
        );
        assert_eq!(
            count(&ctx, "SELECT COUNT(*) FROM tasks WHERE kind = $1", "sweep").await,
            0,
            "{label}"
        );
        assert_eq!(
            env.crm_count(&crm, &format!("FROM follow_ups WHERE happened_at {OLD}"))
                .await,
            old,
            "{label}"
        );

        // Configured to catch up: the missed tick fires at start.
        let c = common::read_to_string(&env.config)
            .unwrap()
            .replace("[schedule]\n", "[schedule]\ncatch_up = true\n");
        std::fs::write(&env.config, c).unwrap();
        let daemon = Daemon::start(&env);
        let deadline = Instant::now() + Duration::from_secs(60);
        while env
            .crm_count(&crm, &format!("FROM follow_ups WHERE happened_at {OLD}"))
            .await
            > 0
        {
            assert!(
                Instant::now() < deadline,
                "{label}: the missed sweep was not caught up"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(daemon);
        assert_eq!(
            ticks(&ctx, "retention_sweep").await,
            vec![missed],
            "{label}"
        );
        ctx.store.close().await;
        drop(env);
        kind.cleanup().await;
    }
}
