//! The state store on SQLite and PostgreSQL: migrations up and down, every foreign key
//! indexed, idempotent intake (also under a race), transitions that refuse to overwrite.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{Backend, Env, StoreKind};
use quietus::intake::{self, Source};
use quietus::lifecycle::{Decision, State};
use quietus::store::{POSTGRES_MIGRATIONS, Pool, SQLITE_MIGRATIONS};
use rstest::rstest;

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2026-11-24T09:00:00Z")
        .unwrap()
        .to_utc()
}

const TABLES: [&str; 14] = [
    "requests",
    "tickets",
    "identities",
    "history",
    "plans",
    "tasks",
    "backups",
    "schedule_ticks",
    "log_entries",
    "checkpoints",
    "receipts",
    "outbox",
    "exports",
    "archive_intents",
];

async fn table_names(pool: &Pool) -> Vec<String> {
    let mut names: Vec<String> = match pool {
        Pool::Sqlite(p) => sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%'")
            .fetch_all(p)
            .await
            .unwrap(),
        Pool::Postgres(p) => sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename NOT LIKE '_sqlx%'")
            .fetch_all(p)
            .await
            .unwrap(),
    };
    names.sort();
    names
}

/// Foreign keys whose columns do not lead some index (or the primary key).
async fn unindexed_foreign_keys(pool: &Pool) -> Vec<String> {
    match pool {
        Pool::Postgres(p) => sqlx::query_scalar(
            "SELECT c.conrelid::regclass::text || '(' || c.conname || ')' FROM pg_constraint c \
             WHERE c.contype = 'f' AND NOT EXISTS ( \
               SELECT 1 FROM pg_index i WHERE i.indrelid = c.conrelid \
               AND (i.indkey::int2[])[0:array_length(c.conkey, 1) - 1] = c.conkey)",
        )
        .fetch_all(p)
        .await
        .unwrap(),
        Pool::Sqlite(p) => {
            let mut missing = Vec::new();
            for t in TABLES {
                let fks: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT \"from\" FROM pragma_foreign_key_list('{t}')"
                )))
                .fetch_all(p)
                .await
                .unwrap();
                for (col,) in fks {
                    // First column of every index of the table, and the primary key.
                    let leading: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT ii.name FROM pragma_index_list('{t}') il, pragma_index_info(il.name) ii WHERE ii.seqno = 0 \
                         UNION SELECT name FROM pragma_table_info('{t}') WHERE pk = 1"
                    )))
                    .fetch_all(p)
                    .await
                    .unwrap();
                    if !leading.iter().any(|(c,)| *c == col) {
                        missing.push(format!("{t}({col})"));
                    }
                }
            }
            missing
        }
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
async fn migrations_go_up_and_down_and_every_foreign_key_is_indexed(#[case] backend: Backend) {
    {
        let kind = StoreKind::of(backend).await;
        let env = Env::new(&kind).await;
        let ctx = env.context().await;
        let mut want: Vec<String> = TABLES.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        assert_eq!(table_names(&ctx.store.pool).await, want, "{}", kind.label());
        assert_eq!(
            unindexed_foreign_keys(&ctx.store.pool).await,
            Vec::<String>::new(),
            "{}",
            kind.label()
        );
        match &ctx.store.pool {
            Pool::Sqlite(p) => {
                SQLITE_MIGRATIONS.undo(p, 0).await.unwrap();
                assert!(table_names(&ctx.store.pool).await.is_empty());
                SQLITE_MIGRATIONS.run(p).await.unwrap();
            }
            Pool::Postgres(p) => {
                POSTGRES_MIGRATIONS.undo(p, 0).await.unwrap();
                assert!(table_names(&ctx.store.pool).await.is_empty());
                POSTGRES_MIGRATIONS.run(p).await.unwrap();
            }
        }
        assert_eq!(table_names(&ctx.store.pool).await, want, "{}", kind.label());
        ctx.store.close().await;
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
async fn one_ticket_is_one_request_even_when_sent_at_once(#[case] backend: Backend) {
    {
        let kind = StoreKind::of(backend).await;
        let env = Env::new(&kind).await;
        let ctx = env.context().await;
        let t = intake::parse_ticket(common::ERASURE_TICKET.as_bytes(), "t", true).unwrap();
        let src = Source {
            door: quietus::intake::Door::Cli,
            actor: "test".into(),
            trusted: true,
        };
        // Eight doors at the same moment.
        let subs = futures::future::join_all(
            (0..8).map(|_| intake::submit(&ctx, &t, common::ERASURE_TICKET, &src, now())),
        )
        .await;
        let subs: Vec<_> = subs.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(
            subs.iter().filter(|s| s.created).count(),
            1,
            "{}",
            kind.label()
        );
        assert!(subs.iter().all(|s| s.id == subs[0].id));
        let all = ctx.store.list_requests(&Default::default()).await.unwrap();
        assert_eq!(all.len(), 1);
        // The same external id with another ticket is a conflict, and stores nothing.
        let other = intake::parse_ticket(
            br#"{"kind":"erasure","external_id":"T-1","subject":{"email":"someone.else@example.com"}}"#,
            "t",
            true,
        )
        .unwrap();
        let e = intake::submit(&ctx, &other, "{}", &src, now())
            .await
            .unwrap_err();
        assert_eq!(e.code, quietus::Code::Conflict);
        assert_eq!(
            ctx.store
                .list_requests(&Default::default())
                .await
                .unwrap()
                .len(),
            1
        );
        ctx.store.close().await;
        kind.cleanup().await;
    }
}

/// A ticket with its own external id and address (`k` tells them apart).
fn ticket_k(ext: &str, k: usize) -> String {
    format!(
        r#"{{"kind":"erasure","external_id":"{ext}","subject":{{"email":"person.{k}@example.com"}},"jurisdiction":"GDPR"}}"#
    )
}

/// Tickets handed in while the store's write lock is taken are committed together once it
/// is free, and each caller hears its own answer: a ticket whose external id names
/// another ticket is refused alone, a ticket sent twice is one request. (Before the
/// group commit, every ticket was a transaction of its own: on SQLite each queued on the
/// write lock in SQLite's busy handler, and the intake was one fsync a ticket.)
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn tickets_handed_in_together_are_committed_together_and_answered_each(
    #[case] backend: Backend,
) {
    let kind = StoreKind::of(backend).await;
    let env = Env::new(&kind).await;
    let ctx = std::sync::Arc::new(env.context().await);
    let src = Source {
        door: quietus::intake::Door::Api,
        actor: "api:test".into(),
        trusted: true,
    };
    // Another connection holds the write lock (SQLite) or a lock that stops inserts into
    // requests (PostgreSQL) in an open transaction.
    let (mut sq, mut pg) = (None, None);
    match &ctx.store.pool {
        Pool::Sqlite(p) => {
            let mut c = p.acquire().await.unwrap();
            sqlx::raw_sql("BEGIN IMMEDIATE")
                .execute(&mut *c)
                .await
                .unwrap();
            sq = Some(c);
        }
        Pool::Postgres(p) => {
            let mut c = p.acquire().await.unwrap();
            sqlx::raw_sql("BEGIN; LOCK TABLE requests IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *c)
                .await
                .unwrap();
            pg = Some(c);
        }
    }
    let submit = |body: String| {
        let (ctx, src) = (ctx.clone(), src.clone());
        tokio::spawn(async move {
            let t = intake::parse_ticket(body.as_bytes(), "t", true).unwrap();
            intake::submit(&ctx, &t, &body, &src, now()).await
        })
    };
    // The first waits on the lock; the others arrive while it waits.
    let first = submit(ticket_k("G-0", 0));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut rest: Vec<_> = (1..6)
        .map(|k| submit(ticket_k(&format!("G-{k}"), k)))
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    rest.push(submit(ticket_k("G-1", 99))); // G-1 with another subject: refused
    rest.push(submit(ticket_k("G-2", 2))); // G-2 again, the same ticket
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!first.is_finished(), "the first ticket waits for the lock");
    if let Some(mut c) = sq {
        sqlx::raw_sql("COMMIT").execute(&mut *c).await.unwrap();
    }
    if let Some(mut c) = pg {
        sqlx::raw_sql("COMMIT").execute(&mut *c).await.unwrap();
    }
    let first = first.await.unwrap().unwrap();
    assert!(first.created);
    let mut answers = Vec::new();
    for r in rest {
        answers.push(r.await.unwrap());
    }
    let label = kind.label();
    for (k, a) in answers[..5].iter().enumerate() {
        let a = a
            .as_ref()
            .unwrap_or_else(|e| panic!("{label}: ticket {}: {e}", k + 1));
        assert!(a.created, "{label}: ticket {}", k + 1);
    }
    let refused = answers[5].as_ref().unwrap_err();
    assert_eq!(
        refused.code,
        quietus::Code::Conflict,
        "{label}: {}",
        refused.message
    );
    let again = answers[6].as_ref().unwrap();
    assert!(!again.created, "{label}");
    assert_eq!(again.id, answers[1].as_ref().unwrap().id, "{label}");
    let all = ctx.store.list_requests(&Default::default()).await.unwrap();
    assert_eq!(all.len(), 6, "{label}");
    // One transaction for the first ticket, one for the six that arrived while it waited
    // (PostgreSQL shows it: rows of one transaction share their xmin).
    if let Pool::Postgres(p) = &ctx.store.pool {
        let transactions: i64 =
            sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM requests")
                .fetch_one(p)
                .await
                .unwrap();
        assert_eq!(transactions, 2, "six tickets, one after the other");
    }
    ctx.store.close().await;
    kind.cleanup().await;
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn transitions_record_who_why_and_refuse_what_the_lifecycle_forbids(
    #[case] backend: Backend,
) {
    {
        let kind = StoreKind::of(backend).await;
        let env = Env::new(&kind).await;
        let ctx = env.context().await;
        let t = intake::parse_ticket(common::ERASURE_TICKET.as_bytes(), "t", true).unwrap();
        let src = Source {
            door: quietus::intake::Door::Cli,
            actor: "tester".into(),
            trusted: true,
        };
        let id = intake::submit(&ctx, &t, common::ERASURE_TICKET, &src, now())
            .await
            .unwrap()
            .id;
        let r = ctx
            .decide(
                &id,
                Decision::Hold,
                "dpo:alice",
                Some("litigation hold, case 12"),
                now(),
            )
            .await
            .unwrap();
        assert_eq!(r.state, State::OnHold);
        let e = ctx
            .decide(&id, Decision::Approve, "dpo:alice", None, now())
            .await
            .unwrap_err();
        assert_eq!(e.code, quietus::Code::IllegalTransition, "{}", e.message);
        let r = ctx
            .decide(&id, Decision::Release, "dpo:alice", None, now())
            .await
            .unwrap();
        assert_eq!(r.state, State::PendingReview);
        let r = ctx
            .decide(&id, Decision::Approve, "dpo:bob", None, now())
            .await
            .unwrap();
        assert_eq!(r.state, State::Approved);
        assert!(
            ctx.store.latest_plan(&id).await.unwrap().is_some(),
            "the approved plan is saved"
        );
        let e = ctx
            .decide(
                &id,
                Decision::Reject,
                "dpo:bob",
                Some("changed my mind"),
                now(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, quietus::Code::IllegalTransition);
        let h = ctx.store.history(&id).await.unwrap();
        let steps: Vec<(Option<&str>, &str, &str)> = h
            .iter()
            .map(|x| {
                (
                    x.from_state.map(|s| s.as_str()),
                    x.to_state.as_str(),
                    x.actor.as_str(),
                )
            })
            .collect();
        assert_eq!(
            steps,
            vec![
                (None, "pending_review", "tester"),
                (Some("pending_review"), "on_hold", "dpo:alice"),
                (Some("on_hold"), "pending_review", "dpo:alice"),
                (Some("pending_review"), "approved", "dpo:bob"),
            ],
            "{}",
            kind.label()
        );
        assert_eq!(h[1].reason.as_deref(), Some("litigation hold, case 12"));
        // A stale writer cannot overwrite a newer state.
        let e = ctx
            .store
            .transition(
                &id,
                quietus::lifecycle::State::PendingReview,
                quietus::lifecycle::State::Rejected,
                "x",
                None,
                now(),
                &Default::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, quietus::Code::IllegalTransition);
        ctx.store.close().await;
        kind.cleanup().await;
    }
}

/// Two processes on one SQLite store (here: two connection pools on one file) writing at
/// once never meet "database is locked": a transaction that reads and then writes takes
/// the write lock when it begins (BEGIN IMMEDIATE), so it waits for the other writer
/// (busy_timeout) instead of failing when its read snapshot went stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_on_one_sqlite_store_write_at_once_without_database_is_locked() {
    let kind = StoreKind::of(Backend::Sqlite).await;
    let env = Env::new(&kind).await;
    let a = env.context().await;
    let b = env.context().await;
    let src = Source {
        door: quietus::intake::Door::Cli,
        actor: "test".into(),
        trusted: true,
    };
    let mut ids = Vec::new();
    for (i, who) in ["one@example.com", "two@example.com"].iter().enumerate() {
        let raw =
            format!(r#"{{"kind":"erasure","external_id":"L-{i}","subject":{{"email":"{who}"}}}}"#);
        let t = intake::parse_ticket(raw.as_bytes(), "t", true).unwrap();
        ids.push(intake::submit(&a, &t, &raw, &src, now()).await.unwrap().id);
    }
    // Each note reads the request's state, then writes a history line.
    let writer = |ctx: &quietus::lifecycle::Context, id: String| {
        let store = ctx.store.clone();
        async move {
            let mut failures = Vec::new();
            for k in 0..150 {
                if let Err(e) = store.note(&id, "test", &format!("note {k}"), now()).await {
                    failures.push(e.message);
                }
            }
            failures
        }
    };
    let (fa, fb) = tokio::join!(
        tokio::spawn(writer(&a, ids[0].clone())),
        tokio::spawn(writer(&b, ids[1].clone()))
    );
    let failures: Vec<String> = fa.unwrap().into_iter().chain(fb.unwrap()).collect();
    assert!(
        failures.is_empty(),
        "{} of 300 writes failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    a.store.close().await;
    b.store.close().await;
    kind.cleanup().await;
}

/// The plan of `sql` with `$1` bound to `id`: SQLite's `EXPLAIN QUERY PLAN` details, or
/// PostgreSQL's `EXPLAIN` lines with sequential scans off (so that the plan uses an
/// index whenever the statement allows one, however few rows there are).
async fn plan_of(pool: &Pool, sql: &str, id: &str) -> Vec<String> {
    match pool {
        Pool::Sqlite(p) => {
            let rows: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .bind(id)
                    .fetch_all(p)
                    .await
                    .unwrap();
            rows.into_iter().map(|r| r.3).collect()
        }
        Pool::Postgres(p) => {
            let mut c = p.acquire().await.unwrap();
            sqlx::raw_sql("SET enable_seqscan = off")
                .execute(&mut *c)
                .await
                .unwrap();
            let plan = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
                .bind(id)
                .fetch_all(&mut *c)
                .await
                .unwrap();
            sqlx::raw_sql("RESET enable_seqscan")
                .execute(&mut *c)
                .await
                .unwrap();
            plan
        }
    }
}

/// Issue 8, item 7: the worker looks a request up by its whole id for every task, so that
/// lookup is a search of one key in the primary key, not a scan of every request
/// (SQLite's LIKE is case-insensitive, so `id LIKE 'prefix%'` scans the whole index; on
/// PostgreSQL it is a range scan at best, with a C collation, and a full scan with any
/// other).
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn a_request_is_found_by_its_whole_id_through_the_primary_key(#[case] backend: Backend) {
    {
        let kind = StoreKind::of(backend).await;
        let label = kind.label();
        let env = Env::new(&kind).await;
        let ctx = env.context().await;
        // 33 requests: two of them start with the same character (32 of them).
        let src = Source {
            door: quietus::intake::Door::Cli,
            actor: "test".into(),
            trusted: true,
        };
        let mut ids = Vec::new();
        for i in 0..33 {
            let raw = format!(
                r#"{{"kind":"erasure","external_id":"T-{i}","subject":{{"email":"p{i}@example.com"}},"jurisdiction":"GDPR"}}"#
            );
            let t = intake::parse_ticket(raw.as_bytes(), "t", true).unwrap();
            ids.push(
                intake::submit(&ctx, &t, &raw, &src, now())
                    .await
                    .unwrap()
                    .id,
            );
        }
        let id = &ids[2];

        let plan = plan_of(&ctx.store.pool, &quietus::store::Store::request_sql(), id).await;
        let by_key = match backend {
            Backend::Sqlite => {
                plan.iter().all(|l| l.starts_with("SEARCH requests USING"))
                    && plan.iter().any(|l| l.contains("(id=?)"))
            }
            Backend::Postgres => {
                plan.iter()
                    .any(|l| l.contains("Index Scan using requests_pkey"))
                    && plan.iter().any(|l| l.contains("Index Cond: (id = "))
                    && !plan
                        .iter()
                        .any(|l| l.contains("Seq Scan") || l.contains("Filter"))
            }
            Backend::Mysql => unreachable!("not a state store"),
        };
        assert!(by_key, "{label}: a lookup by id is a scan: {plan:#?}");
        assert_eq!(&ctx.store.request(id).await.unwrap().id, id, "{label}");
        // Inside quietus a request is named by its whole id: a prefix finds nothing.
        let e = ctx.store.request(&id[..6]).await.unwrap_err();
        assert_eq!(e.code, quietus::Code::NotFound, "{label}");
        // What a person types (the CLI, the HTTP API) is resolved first: the whole id, a
        // unique prefix, in any case and with spaces around.
        for typed in [
            id.clone(),
            id[..6].to_owned(),
            format!("  {} ", id[..8].to_ascii_uppercase()),
        ] {
            assert_eq!(
                &ctx.resolve(&typed).await.unwrap(),
                id,
                "{label}: {typed:?}"
            );
        }
        // Nothing else: empty, not of the alphabet, too long, or no request's.
        for typed in ["", "x@example.com", &format!("{id}0"), "0000000000000000"] {
            let e = ctx.resolve(typed).await.unwrap_err();
            assert_eq!(
                e.code,
                quietus::Code::NotFound,
                "{label}: {typed:?}: {}",
                e.message
            );
        }
        // What is not an id is not repeated back: it may be anything, an address say.
        let e = ctx.resolve("x@example.com").await.unwrap_err();
        assert!(!e.message.contains("example"), "{label}: {}", e.message);
        // The start two ids share names neither.
        let shared = ids
            .iter()
            .find(|a| ids.iter().filter(|b| b[..1] == a[..1]).count() > 1)
            .unwrap();
        let e = ctx.resolve(&shared[..1]).await.unwrap_err();
        assert_eq!(e.code, quietus::Code::Ambiguous, "{label}: {}", e.message);
        ctx.store.close().await;
        kind.cleanup().await;
    }
}

/// The state store's PostgreSQL connections run without JIT: its statements are short, and
/// compiling one cost 300 ms whenever the planner's estimate passed `jit_above_cost` (the
/// task lease did, with 100 000 requests in the store: `run` went from 0.2 s to 1.5 s).
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[tokio::test(flavor = "multi_thread")]
async fn the_postgresql_store_runs_without_jit() {
    let kind = StoreKind::of(Backend::Postgres).await;
    let env = Env::new(&kind).await;
    let ctx = env.context().await;
    let Pool::Postgres(p) = &ctx.store.pool else {
        unreachable!("a PostgreSQL store")
    };
    let jit: String = sqlx::query_scalar("SHOW jit").fetch_one(p).await.unwrap();
    assert_eq!(jit, "off");
    ctx.store.close().await;
    kind.cleanup().await;
}
