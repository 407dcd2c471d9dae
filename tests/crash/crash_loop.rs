//! The crash loop (issue 9, "the suite that proves it", item 1): `quietus serve` works
//! through an exit and a batch of erasures on the demo CRM while it is SIGKILLed over and
//! over — by failpoints at every step of the flow, in turn (collect, the archive being
//! written, its read-back, before and after the backup is recorded, inside a batch, after
//! a batch, after the apply, the re-check, the receipt, the log append, the checkpoint,
//! the outbox send), and by `kill -9` from outside at random instants — and restarted each
//! time. Then the invariants: every request completed; the CRM exactly as after a clean
//! run of the same work; every changed row in a backup that verifies, with its original
//! values; no row changed twice; one backup per task and no archive unrecorded; one
//! completion receipt and one log entry per request, each receipt and the log verifying;
//! one completion email per request, every message sent once.
//!
//! CI runs a bounded loop (`QUIETUS_CRASH_LOOP_KILLS`, default 20: each failpoint once
//! plus random kills); by hand, `QUIETUS_CRASH_LOOP_KILLS=60` (or more) and
//! `QUIETUS_CRASH_LOOP_SEED=N` to replay a run (the seed is printed).

use super::*;
use rand::{Rng, SeedableRng};

/// The failpoints, in the order of the flow (src/failpoints.rs).
const POINTS: [&str; 13] = [
    "collect",
    "writing_archive",
    "read_back",
    "before_record",
    "after_backup",
    "in_batch",
    "after_batch_1",
    "after_apply",
    "recheck",
    "receipt",
    "log_append",
    "checkpoint",
    "outbox_send",
];

/// The exit and `erasures` contact erasures, submitted through the CLI as of `DECIDED`,
/// not approved (but the exit): (external id, request id), the exit first.
async fn workload(env: &Env, erasures: usize) -> Vec<(String, String)> {
    let mut ids = Vec::new();
    ids.push(("HR-7".to_owned(), submit_and_approve(env)));
    let emails: Vec<String> = env
        .crm_query(
            &CrmKind::Sqlite,
            "SELECT email FROM contacts WHERE email IS NOT NULL GROUP BY email \
             HAVING COUNT(*) = 1 ORDER BY MIN(id)",
        )
        .await
        .into_iter()
        .flatten()
        .take(erasures)
        .collect();
    assert_eq!(emails.len(), erasures, "the demo CRM has enough contacts");
    for (i, email) in emails.iter().enumerate() {
        let ext = format!("C-{i}");
        let ticket = serde_json::json!({
            "kind": "erasure",
            "external_id": ext,
            "subject": { "email": email },
            "jurisdiction": "GDPR",
        });
        let id = submit(env, &format!("erasure-{i}.json"), &ticket.to_string());
        ids.push((ext, id));
    }
    ids
}

/// What the work must end as: the same workload run cleanly by `quietus run`.
struct Clean {
    original: Dump,
    fin: Dump,
    /// (task kind, table) -> rows changed, over all tasks
    changed: BTreeMap<(String, String), u64>,
}

async fn clean_run(erasures: usize) -> Clean {
    let env = Env::new(&StoreKind::Sqlite).await;
    let original = dump(&env, &CrmKind::Sqlite).await;
    let ids = workload(&env, erasures).await;
    for (_, id) in &ids[1..] {
        approve(&env, id);
    }
    let s = json(&ok(&run(&env, &["run", "--json"], Some(NOW), &loop_vars())));
    assert_eq!(s["failed"], 0, "{s}");
    for (_, id) in &ids {
        assert_eq!(request_state(&env, id), "completed", "{s}");
    }
    let fin = dump(&env, &CrmKind::Sqlite).await;
    let mut changed = BTreeMap::new();
    for (_, id) in &ids {
        for t in tasks_of(&env, id).await {
            if t.kind.as_str() == "followup" {
                continue;
            }
            for (table, (_, c, d)) in table_results(&t) {
                assert_eq!(d, 0, "a clean run has nothing already done");
                *changed
                    .entry((t.kind.as_str().to_owned(), table))
                    .or_default() += c;
            }
        }
    }
    Clean {
        original,
        fin,
        changed,
    }
}

/// Every run and daemon of the loop: batches of two rows (so that an apply has several),
/// no retention sweep (it would erase old rows of the CRM besides the requests').
fn loop_vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("QUIETUS_JOBS__BATCH_SIZE", "2"),
        ("QUIETUS_JOBS__POLL_SECONDS", "1"),
        ("QUIETUS_SCHEDULE__RETENTION_SWEEP", ""),
    ]
}

struct Daemon {
    child: Child,
    err: mpsc::Receiver<String>,
    out: mpsc::Receiver<String>,
}

/// `quietus serve` with [`loop_vars`], failpoints if given, and batches of `batch` rows.
fn start(env: &Env, failpoints: Option<&str>, batch: &str) -> Daemon {
    let mut vars = loop_vars();
    vars.push(("QUIETUS_JOBS__BATCH_SIZE", batch));
    if let Some(fp) = failpoints {
        vars.push(("QUIETUS_FAILPOINTS", fp));
    }
    let mut child = quietus(env, &["serve", "--listen", "127.0.0.1:0"], Some(NOW), &vars)
        .spawn()
        .expect("spawn quietus serve");
    let err = lines_of(child.stderr.take().unwrap());
    let out = lines_of(child.stdout.take().unwrap());
    Daemon { child, err, out }
}

impl Daemon {
    /// Wait until the process ends, up to `timeout`; `None` if it still runs.
    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it wrote to stderr (after it ended: until the pipe closes).
    fn stderr(&self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(l) = self.err.recv_timeout(Duration::from_secs(5)) {
            lines.push(l);
        }
        lines
    }

    fn kill(&mut self) -> std::process::ExitStatus {
        signal(&self.child, "-KILL");
        self.child.wait().unwrap()
    }
}

/// How far the work is: approved requests not completed, messages not sent.
async fn left(pool: &sqlx::SqlitePool) -> (i64, i64) {
    let (r,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM requests WHERE state NOT IN ('completed', 'pending_review')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let (m,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE state <> 'sent'")
        .fetch_one(pool)
        .await
        .unwrap();
    (r, m)
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_killed_over_and_over_loses_nothing_and_does_nothing_twice() {
    let started = Instant::now();
    let target: usize = std::env::var("QUIETUS_CRASH_LOOP_KILLS")
        .ok()
        .map(|v| v.parse().expect("QUIETUS_CRASH_LOOP_KILLS is a number"))
        .unwrap_or(20);
    assert!(target >= POINTS.len(), "at least one kill per failpoint");
    let seed: u64 = std::env::var("QUIETUS_CRASH_LOOP_SEED")
        .ok()
        .map(|v| v.parse().expect("QUIETUS_CRASH_LOOP_SEED is a number"))
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("crash loop: {target} kills, QUIETUS_CRASH_LOOP_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    // Enough work that the daemon (which finishes a request in a few milliseconds) is
    // still busy at the last kill.
    // Requests arrive as it works: three more are approved before each life, so that
    // work never runs out and no life gets through much of it (the daemon finishes an
    // erasure in a few milliseconds).
    let erasures = (3 * target).min(190);
    let want = clean_run(erasures).await;
    let env = Env::new(&StoreKind::Sqlite).await;
    let crm = CrmKind::Sqlite;
    assert_same("before", &dump(&env, &crm).await, &want.original);
    let ids = workload(&env, erasures).await;
    let mut to_approve = ids[1..].iter().map(|(_, id)| id.as_str());
    let store = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        env.path().join("var/quietus.db").display()
    ))
    .await
    .unwrap();

    // The loop. First each failpoint in the order of the flow, at its first hit, while
    // the work has hardly begun; then, turn about, a `kill -9` from outside at a random
    // instant and a random failpoint at a random one of its first three hits.
    let mut fired: BTreeMap<&str, usize> = BTreeMap::new();
    let mut outside = 0usize;
    let mut missed: Vec<String> = Vec::new();
    let mut kills = 0usize;
    let mut life = 0usize;
    while kills < target {
        let mut more = 0;
        for id in to_approve.by_ref().take(3) {
            approve(&env, id);
            more += 1;
        }
        let (r, m) = left(&store).await;
        if r == 0 && m == 0 && more == 0 {
            break;
        }
        life += 1;
        if life > POINTS.len() && life.is_multiple_of(2) {
            let mut d = start(&env, None, "2");
            let after = Duration::from_millis(rng.random_range(20..600));
            if let Some(st) = d.wait(after) {
                panic!("serve ended by itself ({st:?}):\n{}", d.stderr().join("\n"));
            }
            let st = d.kill();
            assert_eq!(st.signal(), Some(9), "{st:?}");
            outside += 1;
            kills += 1;
            continue;
        }
        let (point, skip) = match POINTS.get(life - 1) {
            Some(p) => (*p, 0),
            None => (
                POINTS[rng.random_range(0..POINTS.len())],
                rng.random_range(0..3),
            ),
        };
        let fp = if skip == 0 {
            format!("{point}=return(kill)")
        } else {
            format!("{point}={skip}*off->return(kill)")
        };
        let mut d = start(&env, Some(&fp), "2");
        match d.wait(Duration::from_secs(30)) {
            Some(st) => {
                let log = d.stderr();
                assert_eq!(
                    st.signal(),
                    Some(9),
                    "serve with {fp} ended otherwise than killed: {st:?}\n{}",
                    log.join("\n")
                );
                assert!(
                    log.iter()
                        .any(|l| l.contains(&format!("quietus-failpoint: {point}"))),
                    "killed, but not by its failpoint {point}:\n{}",
                    log.join("\n")
                );
                *fired.entry(point).or_default() += 1;
            }
            None => {
                // The first round comes while most of the work waits: each point is
                // reached. Later, the work left may not pass this point any more.
                assert!(
                    life > POINTS.len(),
                    "{fp}: not reached in 30 s with {r} requests and {m} messages left"
                );
                d.kill();
                missed.push(fp);
                outside += 1;
            }
        }
        kills += 1;
        eprintln!("crash loop: life {life}: {r} requests and {m} messages were left");
    }
    let killing = started.elapsed();

    // The last life: no failpoint; it finishes the work and stops on SIGTERM.
    for id in to_approve {
        approve(&env, id);
    }
    let mut d = start(&env, None, "2");
    // Listening: its signal handlers are in place.
    wait_for_line(&d.out, "listening on http://", Duration::from_secs(60));
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let (r, m) = left(&store).await;
        if r == 0 && m == 0 {
            break;
        }
        if let Some(st) = d.child.try_wait().unwrap() {
            panic!("serve ended early ({st:?}):\n{}", d.stderr().join("\n"));
        }
        assert!(
            Instant::now() < until,
            "{r} requests not completed and {m} messages not sent after 120 s:\n{}",
            d.err.try_iter().collect::<Vec<_>>().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal(&d.child, "-TERM");
    let st = d
        .wait(Duration::from_secs(30))
        .expect("serve stops on SIGTERM");
    let log = d.stderr();
    assert!(st.success(), "serve exit {st:?}:\n{}", log.join("\n"));

    eprintln!(
        "crash loop: {kills} kills ({} by failpoints {fired:?}, {outside} from outside; \
         not reached: {missed:?}) in {killing:?}, all done at {:?}",
        kills - outside,
        started.elapsed()
    );
    assert!(kills >= target, "the work ran out after {kills} kills");
    for p in POINTS {
        assert!(
            fired.contains_key(p),
            "failpoint {p} never fired: {fired:?}, not reached: {missed:?}"
        );
    }

    // The CRM: exactly as the clean run left it.
    let fin = dump(&env, &crm).await;
    assert_same("after the crash loop", &fin, &want.fin);

    // Each task done once, its backup its only one, every archive recorded, every change
    // in a backup that verifies with the original values.
    let mut backups = Vec::new();
    let mut changed: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (ext, id) in &ids {
        assert_eq!(request_state(&env, id), "completed", "{ext}");
        let tasks = tasks_of(&env, id).await;
        let mine = backups_of(&env, id).await;
        for t in tasks.iter().filter(|t| t.kind.as_str() != "followup") {
            assert_eq!(t.state.as_str(), "done", "{ext}: {t:?}");
            assert!(t.lease_owner.is_none(), "{ext}: {t:?}");
            let of_task: Vec<_> = mine.iter().filter(|b| b.task_id == t.id).collect();
            assert_eq!(of_task.len(), 1, "{ext}: one backup for {t:?}: {of_task:?}");
            assert_eq!(t.backup_id.as_deref(), Some(of_task[0].id.as_str()));
            for (table, (backed, c, d)) in table_results(t) {
                let key = (t.kind.as_str().to_owned(), table);
                assert!(want.changed.contains_key(&key), "{ext}: {key:?} changed");
                assert_eq!(
                    c + d,
                    backed,
                    "{ext}: {key:?}: changed + already done = backed up"
                );
                *changed.entry(key).or_default() += c + d;
            }
        }
        for t in tasks.iter().filter(|t| t.kind.as_str() == "followup") {
            assert_eq!(t.state.as_str(), "pending", "{ext}: follow-ups wait: {t:?}");
        }
        backups.extend(mine);
    }
    assert_eq!(
        changed, want.changed,
        "rows changed, by task kind and table"
    );
    only_recorded_archives(&env, "after the crash loop", &backups);
    assert_changes_backed_up("after the crash loop", &env, &backups, &want.original, &fin);

    // One move to `completed` per request.
    let completions: Vec<(String, i64)> = sqlx::query_as(
        "SELECT request_id, COUNT(*) FROM history WHERE to_state = 'completed' \
         AND (from_state IS NULL OR from_state <> 'completed') GROUP BY request_id",
    )
    .fetch_all(&store)
    .await
    .unwrap();
    assert_eq!(completions.len(), ids.len(), "{completions:?}");
    assert!(completions.iter().all(|(_, n)| *n == 1), "{completions:?}");

    // One completion receipt per request, one log entry per receipt; each receipt file
    // verifies, and so does the log.
    let receipts: Vec<(String, Option<String>, i64, i64)> =
        sqlx::query_as("SELECT id, request_id, completion, log_idx FROM receipts")
            .fetch_all(&store)
            .await
            .unwrap();
    let wanted: BTreeSet<&str> = ids.iter().map(|(_, id)| id.as_str()).collect();
    let completed: Vec<&str> = receipts
        .iter()
        .filter(|r| r.2 == 1)
        .filter_map(|r| r.1.as_deref())
        .collect();
    assert_eq!(
        completed.len(),
        ids.len(),
        "one completion receipt each: {receipts:?}"
    );
    assert_eq!(completed.iter().copied().collect::<BTreeSet<_>>(), wanted);
    let (entries,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM log_entries")
        .fetch_one(&store)
        .await
        .unwrap();
    assert_eq!(
        entries,
        i64::try_from(receipts.len()).unwrap(),
        "{receipts:?}"
    );
    let idx: BTreeSet<i64> = receipts.iter().map(|r| r.3).collect();
    assert_eq!(idx.len(), receipts.len(), "one log entry per receipt");
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(env.path().join("var/receipts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), receipts.len(), "a file per receipt: {files:?}");
    for f in &files {
        ok(&run(
            &env,
            &["verify", f.to_str().unwrap()],
            Some(LATER),
            &[],
        ));
    }
    ok(&run(&env, &["log", "verify"], Some(LATER), &[]));

    // Mail: one completion message per request; every message sent, as one file, once.
    let outbox: Vec<(String, Option<String>, String, String)> =
        sqlx::query_as("SELECT id, request_id, kind, state FROM outbox")
            .fetch_all(&store)
            .await
            .unwrap();
    let mut completion_mail: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, rid, kind, state) in &outbox {
        assert_eq!(state, "sent", "message {id} ({kind})");
        if kind == "completion" {
            *completion_mail
                .entry(rid.as_deref().expect("a completion is of a request"))
                .or_default() += 1;
        }
    }
    assert_eq!(
        completion_mail.keys().copied().collect::<BTreeSet<_>>(),
        wanted,
        "a completion email for every request"
    );
    assert!(
        completion_mail.values().all(|n| *n == 1),
        "one completion email each: {completion_mail:?}"
    );
    let eml: BTreeSet<String> = std::fs::read_dir(env.path().join("var/outbox"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let want_eml: BTreeSet<String> = outbox.iter().map(|(id, ..)| format!("{id}.eml")).collect();
    assert_eq!(
        eml, want_eml,
        "one file per message, nothing half-written left"
    );
    store.close().await;
}

/// Killed after the receipts and their log entries committed, before their files were
/// written (found by the crash loop: the restart never wrote them): the restart writes
/// the missing receipt file and the checkpoint file from the store.
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_after_the_receipts_committed_leaves_no_receipt_file_unwritten() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let id = submit_and_approve(&env);
    run_disable_alone(&env, &[]);
    run_and_kill_at(&env, "checkpoint", Some(NOW), &[]);
    let dir = env.path().join("var/receipts");
    let files = |dir: &std::path::Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let ctx = env.context().await;
    let stored = ctx.store.receipt_ids().await.unwrap();
    let size = ctx.store.log_size().await.unwrap();
    ctx.store.close().await;
    assert_eq!(stored.len(), 1, "the receipt is stored: {stored:?}");
    assert!(
        files(&dir).iter().all(|f| !f.contains(&stored[0].0)),
        "its file is not written yet"
    );

    // The restart: nothing to do but what the dead worker left.
    let s = json(&ok(&run(&env, &["run", "--json"], Some(LATER), &[])));
    assert_eq!(s["done"], 0, "{s}");
    let want = format!("{id}-{}.json", stored[0].0);
    assert!(files(&dir).contains(&want), "{want} in {:?}", files(&dir));
    ok(&run(
        &env,
        &["verify", dir.join(&want).to_str().unwrap()],
        Some(LATER),
        &[],
    ));
    let checkpoint = common::read_to_string(env.path().join("var/log/checkpoint")).unwrap();
    assert!(
        checkpoint.lines().nth(1) == Some(size.to_string().as_str()),
        "the checkpoint file covers the {size} entries:\n{checkpoint}"
    );
    ok(&run(&env, &["log", "verify"], Some(LATER), &[]));
}

/// `rows` personal notes more for the leaver (employee 5), so that the exit's apply has
/// many batches.
async fn grow_leaver(env: &Env, rows: usize) {
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", env.path().join("crm.db").display()))
            .await
            .unwrap();
    sqlx::query(
        "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < $1) \
         INSERT INTO personal_notes (id, employee_id, created_at, body) \
         SELECT 1000000 + x, 5, '2024-01-01', 'note ' || x FROM g",
    )
    .bind(i64::try_from(rows).unwrap())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

/// The crash loop on one large leaver (issue 9, suite 1: "a 100 000-row leaver"; CI
/// runs 10 000 rows, by hand `QUIETUS_CRASH_LOOP_ROWS=100000`): `serve` killed after a
/// random batch of the apply or from outside at a random instant, again and again, until
/// the exit completes. Each life resumes after the last committed batch; the CRM ends as
/// a clean run leaves it, with one backup for the task, every row changed once.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_leaver_killed_again_and_again_ends_as_a_clean_run() {
    let rows: usize = std::env::var("QUIETUS_CRASH_LOOP_ROWS")
        .ok()
        .map(|v| v.parse().expect("QUIETUS_CRASH_LOOP_ROWS is a number"))
        .unwrap_or(10_000);
    let seed: u64 = std::env::var("QUIETUS_CRASH_LOOP_SEED")
        .ok()
        .map(|v| v.parse().expect("QUIETUS_CRASH_LOOP_SEED is a number"))
        .unwrap_or_else(|| rand::rng().random());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let batches = rows / 500;
    eprintln!("large leaver: {rows} rows ({batches} batches), QUIETUS_CRASH_LOOP_SEED={seed}");
    let started = Instant::now();

    // The clean run.
    let clean = Env::new(&StoreKind::Sqlite).await;
    grow_leaver(&clean, rows).await;
    let original = dump(&clean, &CrmKind::Sqlite).await;
    let cid = submit_and_approve(&clean);
    let t0 = Instant::now();
    let s = json(&ok(&run(&clean, &["run", "--json"], Some(NOW), &[])));
    let clean_took = t0.elapsed();
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(request_state(&clean, &cid), "completed");
    let want = dump(&clean, &CrmKind::Sqlite).await;
    let want_apply = table_results(
        tasks_of(&clean, &cid)
            .await
            .iter()
            .find(|t| t.kind.as_str() == "apply")
            .unwrap(),
    );
    assert_eq!(
        want_apply.get("personal_notes").map(|r| r.1),
        Some(u64::try_from(rows).unwrap() + 3),
        "{want_apply:?}"
    );

    // Killed until it is done.
    let env = Env::new(&StoreKind::Sqlite).await;
    grow_leaver(&env, rows).await;
    let id = submit_and_approve(&env);
    let mut kills = 0;
    let mut by_batch = 0;
    loop {
        if request_state(&env, &id) == "completed" {
            break;
        }
        assert!(kills < 200, "not completed after {kills} kills");
        // After the 2nd to the (batches / 6)th batch of this life (the leaver's `disable`
        // task, first of all, has one batch).
        let fp = format!(
            "after_batch_{}=return(kill)",
            rng.random_range(2..=(batches / 6).max(2))
        );
        let outside = kills % 2 == 1;
        let life = Instant::now();
        let mut d = start(&env, (!outside).then_some(fp.as_str()), "500");
        let ended = if outside {
            // Somewhere in the first half of what a clean run takes.
            d.wait(clean_took.mul_f64(rng.random_range(0.05..0.5)))
        } else {
            d.wait(Duration::from_secs(120))
        };
        match ended {
            Some(st) => {
                let log = d.stderr();
                assert_eq!(st.signal(), Some(9), "{st:?}\n{}", log.join("\n"));
                assert!(
                    log.iter()
                        .any(|l| l.contains("quietus-failpoint: after_batch_")),
                    "{}",
                    log.join("\n")
                );
                by_batch += 1;
            }
            None => {
                d.kill();
            }
        }
        eprintln!(
            "large leaver: life {kills} ({}) ended after {:?}",
            if outside { "kill -9" } else { fp.as_str() },
            life.elapsed()
        );
        kills += 1;
        if kills >= 8 {
            // Enough: let the last life finish.
            let life = Instant::now();
            let mut d = start(&env, None, "500");
            let until = Instant::now() + Duration::from_secs(300);
            while request_state(&env, &id) != "completed" {
                assert!(
                    Instant::now() < until,
                    "not completed 300 s after the last kill"
                );
                assert!(d.child.try_wait().unwrap().is_none(), "serve ended early");
                std::thread::sleep(Duration::from_millis(200));
            }
            d.kill();
            eprintln!(
                "large leaver: the last life finished in {:?}",
                life.elapsed()
            );
            break;
        }
    }
    eprintln!(
        "large leaver: {kills} kills ({by_batch} after a batch), done in {:?}; a clean run took {clean_took:?}",
        started.elapsed()
    );
    assert!(by_batch >= 2, "killed after a batch at least twice");

    let fin = dump(&env, &CrmKind::Sqlite).await;
    assert_same("the large leaver", &fin, &want);
    let tasks = tasks_of(&env, &id).await;
    let backups = backups_of(&env, &id).await;
    let apply = tasks.iter().find(|t| t.kind.as_str() == "apply").unwrap();
    assert_eq!(apply.state.as_str(), "done");
    for (table, (backed, c, d)) in table_results(apply) {
        let w = want_apply[&table];
        assert_eq!(backed, w.0, "{table}: backed up");
        assert_eq!(c + d, w.1, "{table}: changed once");
    }
    let of_apply: Vec<_> = backups.iter().filter(|b| b.task_id == apply.id).collect();
    assert_eq!(of_apply.len(), 1, "one backup for the apply: {of_apply:?}");
    only_recorded_archives(&env, "the large leaver", &backups);
    assert_changes_backed_up("the large leaver", &env, &backups, &original, &fin);
    ok(&run(&env, &["log", "verify"], Some(LATER), &[]));
}
