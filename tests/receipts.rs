//! Receipts are issued exactly once across workers: several workers sharing one state
//! store finish many requests at once, and every request gets exactly one completion
//! receipt, one log entry per receipt, one completion email, and a log that verifies.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeMap;

use common::{Backend, CrmKind, Env, StoreKind};
use rstest::rstest;

/// `n` contacts of the demo CRM known by their email (each email names one contact).
async fn subjects(env: &Env, crm: &CrmKind, n: usize) -> Vec<String> {
    let emails: Vec<String> = env
        .crm_query(
            crm,
            "SELECT email FROM contacts WHERE email IS NOT NULL ORDER BY id",
        )
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut out = Vec::new();
    for e in emails {
        if out.len() == n {
            break;
        }
        let one = env
            .crm_count(crm, &format!("FROM contacts WHERE email = '{e}'"))
            .await;
        if one == 1 && !out.contains(&e) {
            out.push(e);
        }
    }
    assert_eq!(out.len(), n, "the demo CRM has {n} contacts with an email");
    out
}

/// Submit and approve an erasure per email, through the library.
async fn approve_all(env: &Env, emails: &[String]) -> Vec<String> {
    let app = quietus::app::App::open(quietus::config::Config::load(Some(&env.config)).unwrap())
        .await
        .unwrap();
    let ctx = &app.ctx;
    let ids = common::approved_erasures(ctx, emails, "R", quietus::clock::now()).await;
    app.close().await;
    ids
}

/// Several workers, each with a name of its own, run everything due at the same time.
/// `shared`: in one process, on one store connection pool; otherwise each with a pool of
/// its own, as separate instances have.
async fn run_workers(
    env: &Env,
    workers: usize,
    shared: bool,
) -> Vec<quietus::Result<quietus::jobs::RunSummary>> {
    let open = || async {
        quietus::app::App::open(quietus::config::Config::load(Some(&env.config)).unwrap())
            .await
            .unwrap()
    };
    let mut apps = vec![open().await];
    let mut settings = Vec::new();
    for i in 0..workers {
        if i > 0 && !shared {
            apps.push(open().await);
        }
        settings.push((apps.len() - 1, apps[0].worker().unwrap()));
    }
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let runs = settings.iter().map(|(a, s)| {
        let stop = stop.clone();
        let ctx = &apps[*a].ctx;
        async move { quietus::jobs::run_due(ctx, s, &stop, &|_| {}).await }
    });
    let out = futures::future::join_all(runs).await;
    for app in &apps {
        app.close().await;
    }
    out
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_workers_issue_exactly_one_receipt_and_one_email_per_request(
    #[case] backend: Backend,
) {
    let kind = StoreKind::of(backend).await;
    let label = kind.label();
    let env = Env::new(&kind).await;
    // On a server store the CRM is on a server too (four workers writing to one SQLite
    // CRM file is not what this test is about).
    let crm = match backend {
        Backend::Postgres => CrmKind::of(Backend::Postgres).await,
        Backend::Sqlite | Backend::Mysql => CrmKind::Sqlite,
    };
    env.use_crm(&crm).await;
    let emails = subjects(&env, &crm, 40).await;
    let ids = approve_all(&env, &emails).await;

    // Four instances, each with a pool of its own (on SQLite too: every write
    // transaction takes the write lock when it begins, so none meets "database is
    // locked").
    let results = run_workers(&env, 4, false).await;
    let mut completed = 0;
    for r in &results {
        match r {
            Ok(s) => completed += s.completed_requests.len(),
            Err(e) => panic!("{label}: a worker failed: {e}"),
        }
    }
    assert_eq!(completed, ids.len(), "{label}: each request completed once");

    let app = quietus::app::App::open(quietus::config::Config::load(Some(&env.config)).unwrap())
        .await
        .unwrap();
    let ctx = &app.ctx;
    let pk = quietus::proof::keys::public(&app.config, None).unwrap();
    let mut receipts = 0;
    for id in &ids {
        let req = ctx.store.request(id).await.unwrap();
        assert_eq!(
            req.state,
            quietus::lifecycle::State::Completed,
            "{label}: {id}"
        );
        let docs = ctx.store.receipts_of(id).await.unwrap();
        assert_eq!(
            docs.len(),
            1,
            "{label}: request {id} has {} receipts",
            docs.len()
        );
        for (_, doc) in &docs {
            let r: quietus::proof::receipt::Receipt = serde_json::from_str(doc).unwrap();
            let checks = quietus::proof::receipt::verify(&r, &pk, None);
            assert!(
                checks.iter().all(|c| c.ok),
                "{label}: the receipt of {id} does not verify: {checks:?}"
            );
        }
        receipts += docs.len();
        // Exactly one completion email.
        let mails = ctx.store.outbox_of(id).await.unwrap();
        let completions = mails
            .iter()
            .filter(|m| m.kind == quietus::mail::MessageKind::Completion)
            .count();
        assert_eq!(
            completions, 1,
            "{label}: request {id} has {completions} completion emails"
        );
    }
    let entries = ctx.store.log_size().await.unwrap();
    assert_eq!(
        usize::try_from(entries).unwrap(),
        receipts,
        "{label}: one log entry per receipt"
    );
    let copies = quietus::proof::log::CheckpointCopy::of_config(&app.config);
    let report = quietus::proof::log::verify(&ctx.store, &pk, &copies)
        .await
        .unwrap();
    assert!(report.problems.is_empty(), "{label}: {:?}", report.problems);
    // The receipt files: one per receipt; the checkpoint file is the latest one.
    let files = std::fs::read_dir(env.path().join("var/receipts"))
        .unwrap()
        .count();
    assert_eq!(files, receipts, "{label}: one receipt file per receipt");
    let cps = ctx.store.checkpoints().await.unwrap();
    let latest = cps.last().unwrap();
    assert_eq!(latest.size, entries, "{label}");
    let file = common::read_to_string(app.config.path(&app.config.proof.checkpoint_file)).unwrap();
    assert_eq!(
        file, latest.note,
        "{label}: the checkpoint file holds the latest checkpoint"
    );
    let leftovers: BTreeMap<String, u64> = std::fs::read_dir(
        app.config
            .path(&app.config.proof.checkpoint_file)
            .parent()
            .unwrap(),
    )
    .unwrap()
    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
    .filter(|n| n.ends_with(".tmp"))
    .map(|n| (n, 1))
    .collect();
    assert!(
        leftovers.is_empty(),
        "{label}: temporary files left: {leftovers:?}"
    );
    app.close().await;
    drop(env);
    crm.cleanup().await;
    kind.cleanup().await;
}

/// An append reads the latest checkpoint's frontier and no leaf: O(1) rows whatever the
/// log's size. A log whose checkpoints predate frontiers (an older store) has its frontier
/// computed from the leaves once, by the first append.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn an_append_reads_no_leaf_but_once_on_a_log_without_frontiers(#[case] backend: Backend) {
    use base64::Engine;
    use quietus::proof::{log, merkle};
    let kind = StoreKind::of(backend).await;
    let label = kind.label();
    let dir = tempfile::tempdir().unwrap();
    let url = match &kind {
        StoreKind::Sqlite => format!("sqlite://{}", dir.path().join("s.db").display()),
        StoreKind::Postgres(db) => db.url.clone(),
    };
    let (store, _) = quietus::store::Store::open(&url, 2, quietus::store::Open::CreateIfMissing)
        .await
        .unwrap();
    let key = quietus::proof::note::KeyPair::generate("test.example/log").unwrap();
    let file = dir.path().join("log/checkpoint");
    let signing = log::Signing {
        key: &key,
        origin: "test.example/log",
        checkpoint_file: &file,
    };
    let now = quietus::clock::now();
    let append = |bodies: Vec<String>| {
        let (store, file) = (&store, &file);
        async move {
            let entries: Vec<log::Entry<'_>> = bodies
                .iter()
                .map(|b| log::Entry {
                    request_id: None,
                    body: b,
                })
                .collect();
            let started = std::time::Instant::now();
            let a = log::append(store, signing, &entries, None, now, |_| Ok(Vec::new()))
                .await
                .unwrap()
                .unwrap();
            let took = started.elapsed();
            log::publish_checkpoint(file, a.size, &a.note).unwrap();
            for (p, b) in a.proofs.iter().zip(&bodies) {
                let path: Vec<merkle::Hash> = p
                    .inclusion
                    .iter()
                    .map(|h| {
                        base64::engine::general_purpose::STANDARD
                            .decode(h)
                            .unwrap()
                            .try_into()
                            .unwrap()
                    })
                    .collect();
                let root: merkle::Hash = base64::engine::general_purpose::STANDARD
                    .decode(&p.root)
                    .unwrap()
                    .try_into()
                    .unwrap();
                assert!(merkle::verify_inclusion(
                    p.index,
                    p.tree_size,
                    &merkle::leaf_hash(b.as_bytes()),
                    &path,
                    &root
                ));
            }
            (a, took)
        }
    };
    let body = |i: usize| format!("{{\"entry\":{i}}}");
    let n = 10_000;
    let (a, _) = append((0..n).map(body).collect()).await;
    assert_eq!((a.size, a.leaves_read), (n as u64, 0), "{label}");
    let mut with_frontier = Vec::new();
    for i in n..n + 10 {
        let (a, took) = append(vec![body(i)]).await;
        assert_eq!(a.leaves_read, 0, "{label}: an append reads no leaf");
        assert_eq!(a.size, i as u64 + 1);
        with_frontier.push(took);
    }
    // An older store: its checkpoints have no frontier.
    let sql = "UPDATE checkpoints SET frontier = NULL";
    match &store.pool {
        quietus::store::Pool::Sqlite(p) => {
            sqlx::query(sql).execute(p).await.unwrap();
        }
        quietus::store::Pool::Postgres(p) => {
            sqlx::query(sql).execute(p).await.unwrap();
        }
    }
    let (a, from_leaves) = append(vec![body(n + 10)]).await;
    assert_eq!(
        a.leaves_read,
        n + 10,
        "{label}: the frontier is computed once"
    );
    let (a, _) = append(vec![body(n + 11)]).await;
    assert_eq!(a.leaves_read, 0, "{label}: and then kept");
    let pk = key.verifier();
    let copies = [log::CheckpointCopy {
        what: "the checkpoint file",
        path: file.clone(),
    }];
    let report = log::verify(&store, &pk, &copies).await.unwrap();
    assert_eq!(report.checkpoint_copies, 1, "{label}");
    assert!(report.problems.is_empty(), "{label}: {:?}", report.problems);
    assert_eq!(report.entries, n as u64 + 12);
    assert_eq!(common::read_to_string(&file).unwrap(), a.note);
    with_frontier.sort();
    eprintln!(
        "{label}: append of one entry at {n} entries: {:?} (median) from the frontier, {from_leaves:?} reading every leaf",
        with_frontier[with_frontier.len() / 2]
    );
    store.close().await;
    kind.cleanup().await;
}

/// A request is `completed` only together with its completion receipt: a worker that
/// stops right after its last task is done (before the receipt) leaves the request
/// running, with nothing for a DPO to hold or cancel; the next round issues the receipt
/// and completes the request in one transaction, and the receipt's completion time is the
/// one in the request's history.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_completes_only_with_its_receipt() {
    use quietus::jobs::task::Step;
    use quietus::lifecycle::{Decision, State};
    let kind = StoreKind::of(Backend::Sqlite).await;
    let env = Env::new(&kind).await;
    let crm = CrmKind::Sqlite;
    env.use_crm(&crm).await;
    let emails = subjects(&env, &crm, 1).await;
    let ids = approve_all(&env, &emails).await;
    let id = &ids[0];
    let app = quietus::app::App::open(quietus::config::Config::load(Some(&env.config)).unwrap())
        .await
        .unwrap();
    let ctx = &app.ctx;
    let s = app.worker().unwrap();
    let now = quietus::clock::now();
    quietus::jobs::schedule_approved(ctx, "quietus", now)
        .await
        .unwrap();
    // Every task of the request, run and recorded done, as a worker does, but the worker
    // stops before it issues the receipt.
    let mut done = 0;
    loop {
        let until = now + chrono::Duration::minutes(5);
        let tasks = ctx
            .store
            .lease(&s.worker, quietus::clock::now(), until, 1, true)
            .await
            .unwrap();
        let Some(task) = tasks.into_iter().next() else {
            break;
        };
        match quietus::jobs::execute::run(ctx, &s, &task, quietus::clock::now())
            .await
            .unwrap()
        {
            Step::Done(mut result) => {
                let mails = std::mem::take(&mut result.mails);
                let stored = serde_json::to_string(&result).unwrap();
                ctx.store
                    .task_done(&task.id, &s.worker, &stored, &mails, quietus::clock::now())
                    .await
                    .unwrap();
                done += 1;
            }
            other => panic!("task {} did not finish: {other:?}", task.id),
        }
    }
    assert!(done > 0, "the erasure has tasks");
    let req = ctx.store.request(id).await.unwrap();
    assert_ne!(
        req.state,
        State::Completed,
        "{id} is completed, but it has no receipt"
    );
    assert!(ctx.store.receipts_of(id).await.unwrap().is_empty());
    // Its work is done: a hold or a cancel now would stop nothing, and is refused.
    for d in [Decision::Hold, Decision::Cancel] {
        let r = ctx
            .decide(id, d, "dpo", Some("changed my mind"), quietus::clock::now())
            .await;
        assert!(r.is_err(), "{d:?} of a request whose work is done: {r:?}");
    }
    // The next round issues the receipt, and only then is the request completed.
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let summary = quietus::jobs::run_due(ctx, &s, &stop, &|_| {})
        .await
        .unwrap();
    assert_eq!(summary.receipts.len(), 1, "{summary:?}");
    let req = ctx.store.request(id).await.unwrap();
    assert_eq!(req.state, State::Completed);
    let docs = ctx.store.receipts_of(id).await.unwrap();
    assert_eq!(docs.len(), 1);
    let r: serde_json::Value = serde_json::from_str(&docs[0].1).unwrap();
    let history = ctx.store.history(id).await.unwrap();
    let completed = history
        .iter()
        .filter(|h| h.to_state == State::Completed)
        .collect::<Vec<_>>();
    assert_eq!(completed.len(), 1, "{history:?}");
    let at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(r["body"]["request"]["completed_at"].clone()).unwrap();
    assert_eq!(at, completed[0].at, "the receipt's completion time");
    app.close().await;
    drop(env);
    kind.cleanup().await;
}

/// Three instances of `quietus serve` on one PostgreSQL store, one killed with SIGKILL
/// while the work is under way (issue 9, suite 3, in bounded form: 60 requests; by hand
/// `QUIETUS_THREE_INSTANCES_REQUESTS=1000`, on contacts added to the demo CRM): the
/// others take its leases over, and every request completes with exactly one receipt and
/// one completion email, every task done once (one live backup each), every schedule
/// tick fired by one instance; the log verifies.
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_one_killed_do_each_task_once() {
    use std::os::unix::process::ExitStatusExt;
    let kind = StoreKind::of(Backend::Postgres).await;
    let env = Env::new(&kind).await;
    let crm = CrmKind::of(Backend::Postgres).await;
    env.use_crm(&crm).await;
    let n: usize = std::env::var("QUIETUS_THREE_INSTANCES_REQUESTS")
        .ok()
        .map(|v| {
            v.parse()
                .expect("QUIETUS_THREE_INSTANCES_REQUESTS is a number")
        })
        .unwrap_or(60);
    if n > 150 {
        // More subjects than the demo CRM has: contacts of a customer, one email each.
        let CrmKind::Postgres(db) = &crm else {
            unreachable!("a PostgreSQL CRM")
        };
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query(
            "INSERT INTO contacts (id, customer_id, name, email, created_at) \
             SELECT 1000000 + g, (SELECT MIN(id) FROM customers), 'Load ' || g, \
                    'load' || g || '@example.com', '2020-01-01' \
             FROM generate_series(1, $1) g",
        )
        .bind(i32::try_from(n).unwrap())
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let started = std::time::Instant::now();
    let emails = subjects(&env, &crm, n).await;
    let ids = approve_all(&env, &emails).await;
    let prepared = started.elapsed();
    let spawn = |n: usize| {
        std::process::Command::new(common::BIN)
            .arg("--config")
            .arg(&env.config)
            .arg("serve")
            .env_remove("QUIETUS_CONFIG")
            .env_remove("QUIETUS_NOW")
            .env("QUIETUS_LOG", "error")
            .env("QUIETUS_SERVER__LISTEN", "127.0.0.1:0")
            .env("QUIETUS_JOBS__POLL_SECONDS", "1")
            .env("QUIETUS_SCHEDULE__RETENTION_SWEEP", "*/2 * * * * *")
            .env("QUIETUS_INBOX__POLL_SECONDS", "3600")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(env.path().join(format!("serve-{n}.log"))).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("instance {n}: {e}"))
    };
    let mut instances: Vec<std::process::Child> = (0..3).map(spawn).collect();
    let ctx = env.context().await;
    async fn completed(ctx: &quietus::lifecycle::Context, ids: &[String]) -> usize {
        let mut n = 0;
        for id in ids {
            if ctx.store.request(id).await.unwrap().state == quietus::lifecycle::State::Completed {
                n += 1;
            }
        }
        n
    }
    // Killed once a sixth of the work is done.
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_secs(120 + u64::try_from(n / 4).unwrap());
    while completed(&ctx, &ids).await < (n / 6).max(10) {
        assert!(std::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let victim = &mut instances[0];
    victim.kill().unwrap();
    assert_eq!(victim.wait().unwrap().signal(), Some(9));
    let halfway = completed(&ctx, &ids).await;
    while completed(&ctx, &ids).await < ids.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} completed after the kill (at {halfway})",
            completed(&ctx, &ids).await,
            ids.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Let a sweep tick or two pass with the two left, then stop them.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    for (n, i) in instances.iter_mut().enumerate().skip(1) {
        let st = std::process::Command::new("kill")
            .args(["-TERM", &i.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let st = i.wait().unwrap();
        let log = common::read_to_string(env.path().join(format!("serve-{n}.log"))).unwrap();
        // An instance that lost the race to make the signing key once exited 1 here
        // (see `instances_starting_at_once_make_one_signing_key`).
        assert!(
            st.success(),
            "surviving instance {n} stopped with {st:?}:\n{log}"
        );
    }
    assert!(
        halfway < ids.len(),
        "the kill came before the end ({halfway})"
    );
    for id in &ids {
        assert_eq!(
            ctx.store.receipts_of(id).await.unwrap().len(),
            1,
            "{id}: receipts"
        );
        let mails = ctx.store.outbox_of(id).await.unwrap();
        let completions = mails
            .iter()
            .filter(|m| m.kind == quietus::mail::MessageKind::Completion)
            .count();
        assert_eq!(completions, 1, "{id}: completion emails");
        let tasks = ctx.store.tasks_of(id).await.unwrap();
        let live: Vec<_> = ctx
            .store
            .backups_of(id)
            .await
            .unwrap()
            .into_iter()
            .filter(|b| b.shredded_at.is_none())
            .collect();
        for t in tasks
            .iter()
            .filter(|t| t.kind != quietus::jobs::TaskKind::Followup)
        {
            assert_eq!(t.state, quietus::jobs::TaskState::Done, "{id}: {t:?}");
            let of_task = live.iter().filter(|b| b.task_id == t.id).count();
            assert_eq!(of_task, 1, "{id}: task {} has {of_task} live backups", t.id);
        }
    }
    let quietus::store::Pool::Postgres(pool) = &ctx.store.pool else {
        unreachable!("a PostgreSQL store")
    };
    let ticks: Vec<(String, i64)> =
        sqlx::query_as("SELECT fired_by, COUNT(*) FROM schedule_ticks GROUP BY fired_by")
            .fetch_all(pool)
            .await
            .unwrap();
    let total: i64 = ticks.iter().map(|(_, n)| n).sum();
    assert!(total > 0, "the sweep ticked: {ticks:?}");
    ctx.store.close().await;
    common::ok(&env.run(&["log", "verify"]));
    eprintln!(
        "three instances: {n} requests prepared in {prepared:?}, all completed {:?} later \
         (one instance killed at {halfway} completed)",
        started.elapsed() - prepared
    );
    drop(env);
    crm.cleanup().await;
    kind.cleanup().await;
}

/// Instances that start at once on a fresh deployment (no signing key yet) all start,
/// and all sign with one key: none fails on losing the race to make the key, or on
/// reading a key file another is still writing. (Found as a surviving `serve` of the
/// three-instance test that exited 1 now and then: the three made the key at once.)
/// Sixteen threads load-or-make the key after one barrier, ten times over.
#[test]
fn instances_starting_at_once_make_one_signing_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::sync::Arc::new(quietus::config::Config {
        base_dir: dir.path().to_path_buf(),
        ..Default::default()
    });
    for round in 0..10 {
        let _ = std::fs::remove_dir_all(dir.path().join("var/keys"));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (config, barrier) = (config.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    quietus::proof::keys::load_or_init(&config)
                        .map(|k| k.verifier().to_text())
                        .map_err(|e| e.message)
                })
            })
            .collect();
        let keys: Vec<Result<String, String>> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        let failed: Vec<&String> = keys.iter().filter_map(|k| k.as_ref().err()).collect();
        assert!(failed.is_empty(), "round {round}: {failed:?}");
        let mut distinct: Vec<&String> = keys.iter().filter_map(|k| k.as_ref().ok()).collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 1, "round {round}: one key");
        let public = common::read_to_string(dir.path().join("var/keys/receipts.pub")).unwrap();
        assert_eq!(
            public.trim(),
            distinct[0].trim(),
            "round {round}: its public key"
        );
    }
}

/// A key whose public key file is missing (an instance stopped between making the one and
/// the other, or an operator removed it) gets it back from the key on the next start.
#[test]
fn a_missing_public_key_file_is_made_again_from_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = quietus::config::Config {
        base_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let key = quietus::proof::keys::load_or_init(&config).unwrap();
    let public = dir.path().join("var/keys/receipts.pub");
    std::fs::remove_file(&public).unwrap();
    let again = quietus::proof::keys::load_or_init(&config).unwrap();
    assert_eq!(again.verifier().to_text(), key.verifier().to_text());
    assert_eq!(
        common::read_to_string(&public).unwrap().trim(),
        key.verifier().to_text()
    );
}
