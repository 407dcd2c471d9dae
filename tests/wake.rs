//! Work made anywhere wakes `quietus serve`'s worker at once, not at its next poll: an
//! approval with `quietus approve` in another process (PostgreSQL: `NOTIFY`; SQLite: the
//! database's data version), and what serve's own doors make (a ticket through the API, a
//! manual task confirmed by its link) in serve's own process. The daemon polls once a
//! minute here (`jobs.poll_seconds = 60`), and every wait below is far shorter, so a test
//! passes only when the worker was woken.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Backend, ERASURE_TICKET, Env, StoreKind, ok};
use quietus::mail::MessageKind;
use quietus::store::outbox::OutboxState;
use rstest::rstest;

/// How long a woken worker may take to finish the work: far below the 60 s poll.
const WITHIN: Duration = Duration::from_secs(15);

/// `quietus serve` polling once a minute, stopped (SIGTERM) when dropped; its log is kept
/// in `serve.log` and shown when a wait fails.
struct Daemon {
    child: Option<Child>,
    base: String,
    log: PathBuf,
}

impl Daemon {
    fn start(env: &Env) -> Daemon {
        use std::io::{BufRead, BufReader};
        let log = env.path().join("serve.log");
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&env.config)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("QUIETUS_CONFIG")
            .env_remove("QUIETUS_NOW")
            .env_remove("QUIETUS_JOBS__POLL_SECONDS")
            .env("QUIETUS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn quietus serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(base) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "quietus serve did not start: {line:?}\n{}",
                common::read_to_string(&log).unwrap_or_default()
            );
        };
        Daemon {
            base: base.to_owned(),
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        common::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            common::stop(c);
        }
    }
}

/// An env whose daemon polls for due work once a minute.
async fn env_polling_once_a_minute(kind: &StoreKind) -> Env {
    let env = Env::new(kind).await;
    let mut c = common::read_to_string(&env.config).unwrap();
    c.push_str("[jobs]\npoll_seconds = 60\n");
    std::fs::write(&env.config, c).unwrap();
    env
}

/// Wait until the message of `kind` about request `id` is sent (its `.eml` file is in the
/// outbox folder); returns how long it took. Fails after [`WITHIN`], with serve's log.
async fn sent(env: &Env, d: &Daemon, id: &str, kind: MessageKind, what: &str) -> Duration {
    let ctx = env.context().await;
    let start = Instant::now();
    loop {
        let rows = ctx.store.outbox_of(id).await.unwrap();
        let row = rows
            .iter()
            .find(|m| m.kind == kind && m.state == OutboxState::Sent);
        if let Some(m) = row
            && env
                .path()
                .join("var/outbox")
                .join(format!("{}.eml", m.id))
                .exists()
        {
            ctx.close().await;
            return start.elapsed();
        }
        if start.elapsed() > WITHIN {
            let states: Vec<String> = rows
                .iter()
                .map(|m| format!("{}: {}", m.kind.as_str(), m.state.as_str()))
                .collect();
            let shown = env.run(&["show", id]);
            ctx.close().await;
            panic!(
                "{what}: no {} message sent within {WITHIN:?} (the worker polls once a minute, so it was not woken)\n\
                 outbox of {id}: {states:?}\n{}\nserve's log:\n{}",
                kind.as_str(),
                common::stdout(&shown),
                d.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Submit the erasure ticket with the CLI; its id.
fn submit(env: &Env, ticket: &str) -> String {
    let f = env.write("ticket.json", ticket);
    ok(&env.run(&["submit", f.to_str().unwrap()]))
        .trim()
        .to_owned()
}

/// Start serve and let its first round of work pass: that round sends the acknowledgement
/// of a request submitted before, and the next round is a minute away.
async fn serve_after_its_first_round(env: &Env, label: &str) -> Daemon {
    let first = submit(
        env,
        r#"{"kind":"erasure","external_id":"FIRST","subject":{"email":"nobody@example.com"},"jurisdiction":"GDPR"}"#,
    );
    let d = Daemon::start(env);
    sent(
        env,
        &d,
        &first,
        MessageKind::Acknowledgement,
        &format!("{label}: serve's first round"),
    )
    .await;
    d
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn an_approval_in_another_process_wakes_serve_at_once(#[case] backend: Backend) {
    let kind = StoreKind::of(backend).await;
    let label = kind.label();
    {
        let env = env_polling_once_a_minute(&kind).await;
        let id = submit(&env, ERASURE_TICKET);
        let d = serve_after_its_first_round(&env, label).await;
        let before = Instant::now();
        ok(&env.run(&["approve", &id]));
        let approved = before.elapsed();
        let took = sent(
            &env,
            &d,
            &id,
            MessageKind::Completion,
            &format!("{label}: after `quietus approve`"),
        )
        .await;
        eprintln!(
            "{label}: completion mail {took:?} after `quietus approve` returned (which took {approved:?})"
        );
        let shown = common::stdout(&env.run(&["show", &id, "--json"]));
        let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(shown["request"]["state"], "completed", "{label}: {shown:#}");
    }
    kind.cleanup().await;
}

/// A system with no connector: its owner confirms by a link (a door of serve's).
const LEGACY: &str = r#"name = "legacy_erp"
driver = "manual"
owner_email = "erp-admins@corp.example"
description = "The old ERP, no database access"

[[table]]
name = "vendors"
key = "id"
identity = { email = "contact_email" }
columns = { contact_email = "user.contact.email" }
"#;

/// The confirmation token in the manual-task message of request `id`.
async fn confirm_token(env: &Env, id: &str) -> String {
    let ctx = env.context().await;
    let m = ctx
        .store
        .outbox_of(id)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.kind == MessageKind::ManualTask)
        .expect("a manual-task message");
    ctx.close().await;
    let i = m
        .body_text
        .find("/confirm?token=")
        .expect("a confirmation link");
    m.body_text[i + "/confirm?token=".len()..]
        .split(char::is_whitespace)
        .next()
        .unwrap()
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
async fn work_made_through_serves_own_doors_wakes_its_worker_at_once(#[case] backend: Backend) {
    let kind = StoreKind::of(backend).await;
    let label = kind.label();
    {
        let env = env_polling_once_a_minute(&kind).await;
        std::fs::write(env.path().join("policies/systems/legacy.toml"), LEGACY).unwrap();
        let d = serve_after_its_first_round(&env, label).await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();

        // A ticket through the API: its acknowledgement goes at once.
        let res = http
            .post(format!("{}/api/v1/requests", d.base))
            .bearer_auth("hr-token")
            .header("content-type", "application/json")
            .body(ERASURE_TICKET)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "{label}: {}", res.text().await.unwrap());
        let created: serde_json::Value = res.json().await.unwrap();
        let id = created["id"].as_str().unwrap().to_owned();
        let took = sent(
            &env,
            &d,
            &id,
            MessageKind::Acknowledgement,
            &format!("{label}: a ticket through the API"),
        )
        .await;
        eprintln!("{label}: acknowledgement {took:?} after the API answered");

        // Approved in another process: the owner of the manual system is asked at once.
        ok(&env.run(&["approve", &id]));
        sent(
            &env,
            &d,
            &id,
            MessageKind::ManualTask,
            &format!("{label}: after `quietus approve`"),
        )
        .await;

        // The owner confirms through serve's link: the request completes, and its
        // completion message goes at once.
        let token = confirm_token(&env, &id).await;
        let res = http
            .post(format!("{}/confirm", d.base))
            .form(&[("token", token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{label}: {}", res.text().await.unwrap());
        let took = sent(
            &env,
            &d,
            &id,
            MessageKind::Completion,
            &format!("{label}: after the owner's confirmation through serve"),
        )
        .await;
        eprintln!("{label}: completion mail {took:?} after the confirmation was answered");
    }
    kind.cleanup().await;
}

#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[tokio::test(flavor = "multi_thread")]
async fn serve_listens_again_when_its_postgresql_connection_is_lost() {
    let kind = StoreKind::of(Backend::Postgres).await;
    {
        let env = env_polling_once_a_minute(&kind).await;
        let StoreKind::Postgres(db) = &kind else {
            unreachable!()
        };
        let id = submit(&env, ERASURE_TICKET);
        let d = serve_after_its_first_round(&env, "postgres").await;
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let listener = |pool: sqlx::PgPool| async move {
            sqlx::query_scalar::<_, i32>(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        };
        let pids = listener(pool.clone()).await;
        assert_eq!(pids.len(), 1, "serve listens on one connection: {pids:?}");
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pids[0])
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(killed);
        // Serve listens again on a new connection...
        let start = Instant::now();
        loop {
            let now = listener(pool.clone()).await;
            if now.len() == 1 && now[0] != pids[0] {
                break;
            }
            assert!(
                start.elapsed() < WITHIN,
                "serve did not listen again within {WITHIN:?}: {now:?}\n{}",
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pool.close().await;
        // ...and an approval in another process still wakes it at once.
        ok(&env.run(&["approve", &id]));
        sent(
            &env,
            &d,
            &id,
            MessageKind::Completion,
            "postgres: after the listening connection was lost",
        )
        .await;
    }
    kind.cleanup().await;
}

/// Whether the store woke this process's workers since the last look (it wakes them
/// before the call that made the work returns, so no waiting is needed).
async fn woke(made: &mut quietus::store::wake::Woken) -> bool {
    tokio::time::timeout(Duration::ZERO, made.wait())
        .await
        .is_ok()
}

/// PostgreSQL: whether a `quietus_work` notification came (`expect`: one is awaited a
/// while; else a short look finds none).
async fn notified(l: &mut Option<sqlx::postgres::PgListener>, expect: bool) -> Option<bool> {
    let l = l.as_mut()?;
    let wait = if expect {
        WITHIN
    } else {
        Duration::from_millis(300)
    };
    match tokio::time::timeout(wait, l.recv()).await {
        Ok(n) => {
            assert_eq!(n.unwrap().channel(), quietus::store::wake::CHANNEL);
            Some(true)
        }
        Err(_) => Some(false),
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
async fn the_store_wakes_the_workers_for_work_and_only_for_work(#[case] backend: Backend) {
    use quietus::lifecycle::Decision;
    let kind = StoreKind::of(backend).await;
    let label = kind.label();
    {
        let env = Env::new(&kind).await;
        let ctx = env.context().await;
        let mut listener = match &kind {
            StoreKind::Postgres(db) => {
                let mut l = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
                l.listen(quietus::store::wake::CHANNEL).await.unwrap();
                Some(l)
            }
            StoreKind::Sqlite => None,
        };
        let mut made = ctx.store.work_made();
        let now = quietus::clock::now();
        let step = async |ctx: &quietus::lifecycle::Context, id: &str, d: Decision| {
            let reason = (d == Decision::Hold).then_some("litigation hold");
            ctx.decide(id, d, "dpo", reason, now).await.unwrap();
        };

        // A ticket: its acknowledgement is a message to send.
        let raw = ERASURE_TICKET;
        let ticket = quietus::intake::parse_ticket(
            raw.as_bytes(),
            "ticket",
            ctx.policies.handover_required(),
        )
        .unwrap();
        let source = quietus::intake::Source {
            door: quietus::intake::Door::Cli,
            actor: "test".into(),
            trusted: true,
        };
        let id = quietus::intake::submit(&ctx, &ticket, raw, &source, now)
            .await
            .unwrap()
            .id;
        assert!(woke(&mut made).await, "{label}: a ticket with a message");
        assert_ne!(notified(&mut listener, true).await, Some(false), "{label}");

        // Held and released back to review: nothing for a worker to do.
        step(&ctx, &id, Decision::Hold).await;
        step(&ctx, &id, Decision::Release).await;
        assert!(
            !woke(&mut made).await,
            "{label}: hold and release in review"
        );
        assert_ne!(notified(&mut listener, false).await, Some(true), "{label}");

        // Approved: work (and the approval's message).
        step(&ctx, &id, Decision::Approve).await;
        assert!(woke(&mut made).await, "{label}: an approval");
        assert_ne!(notified(&mut listener, true).await, Some(false), "{label}");

        // Held: nothing to do; released back to approved: the work again.
        step(&ctx, &id, Decision::Hold).await;
        assert!(!woke(&mut made).await, "{label}: a hold");
        assert_ne!(notified(&mut listener, false).await, Some(true), "{label}");
        step(&ctx, &id, Decision::Release).await;
        assert!(woke(&mut made).await, "{label}: a release to approved");
        assert_ne!(notified(&mut listener, true).await, Some(false), "{label}");
        ctx.close().await;
    }
    kind.cleanup().await;
}

/// SQLite: the watcher wakes the worker on any commit, this process's own too; so an idle
/// daemon must commit nothing, or it would wake itself ten times a second for ever.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_daemon_commits_nothing_so_its_sqlite_watcher_lets_it_sleep() {
    use sqlx::Connection;
    let kind = StoreKind::Sqlite;
    let env = env_polling_once_a_minute(&kind).await;
    let d = serve_after_its_first_round(&env, "sqlite").await;
    // The round that the watcher's start makes passes too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let db = env.path().join("var/quietus.db");
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let version = async |c: &mut sqlx::SqliteConnection| -> i64 {
        sqlx::query_scalar("PRAGMA data_version")
            .fetch_one(c)
            .await
            .unwrap()
    };
    let idle = version(&mut c).await;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            version(&mut c).await,
            idle,
            "an idle serve committed to its store (and so woke itself)\nserve's log:\n{}",
            d.log()
        );
    }
    c.close().await.unwrap();
    kind.cleanup().await;
}
