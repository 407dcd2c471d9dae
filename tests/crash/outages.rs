//! Outages of the machine under quietus (issue 9, "Outages"): the disk that holds the
//! backups fills up while an archive is written, the backup folder is read-only, the
//! PostgreSQL state store restarts while `quietus serve` is in the middle of its work,
//! and the CRM's PostgreSQL stops in the middle of an apply. Each time nothing is changed
//! that is not backed up and recorded, nothing is left behind unshredded, the cause is
//! said plainly, and once the fault is gone the work completes exactly as a clean run
//! does.
//!
//! All need root: two mount over the backup folder (a size-limited tmpfs, a read-only
//! bind mount: cfg `quietus_test_mount`), two run a PostgreSQL cluster of their own as
//! the `postgres` user and stop it (cfg `quietus_test_pg_cluster`); see build.rs.

use super::*;

use std::path::{Path, PathBuf};

/// Run a command to its end; panics with its output when it fails.
#[track_caller]
fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} does not run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------
// The disk that holds the backups is full.

/// A tmpfs of a given size mounted on a folder; unmounted when dropped (a failing test
/// leaves no mount behind).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        sh(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0700"))
            .arg("tmpfs")
            .arg(dir));
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }

    /// Make room on the same mount, as an operator frees space: its files stay.
    fn grow(&self, bytes: u64) {
        sh(Command::new("mount")
            .arg("-o")
            .arg(format!("remount,size={bytes}"))
            .arg(&self.dir));
    }

    /// Bytes in use, by `df` (whole 4 KiB pages on tmpfs).
    fn used(&self) -> u64 {
        let out = sh(Command::new("df").args(["-P", "-B1"]).arg(&self.dir));
        let line = out.lines().nth(1).unwrap();
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let st = Command::new("umount").arg(&self.dir).status();
        if !st.is_ok_and(|s| s.success()) {
            // Busy (a child still holds a file): detach it now, gone once released.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

const PAGE: u64 = 4096;

fn pages(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE).max(1)
}

/// The sizes of the `disable` and `apply` archives of a clean run of the exit, and the
/// CRM after it: the disk is sized from them.
async fn archive_sizes() -> (u64, u64) {
    let env = Env::new(&StoreKind::Sqlite).await;
    let id = submit_and_approve(&env);
    run_disable_alone(&env, &[]);
    let s = json(&ok(&run(&env, &["run", "--json"], Some(NOW), &[])));
    assert_eq!(s["done"], 1, "{s}");
    let tasks = tasks_of(&env, &id).await;
    let backups = backups_of(&env, &id).await;
    let size_of = |kind: &str| {
        let t = tasks.iter().find(|t| t.kind.as_str() == kind).unwrap();
        let b = backups.iter().find(|b| b.task_id == t.id).unwrap();
        u64::try_from(b.size).unwrap()
    };
    (size_of("disable"), size_of("apply"))
}

/// The exit's tasks each done once, with one backup each, and the apply's counts those
/// of a clean run with nothing read back again (each row changed once, from its backup).
async fn assert_exit_done_once(env: &Env, id: &str, want: &Reference) {
    let tasks = tasks_of(env, id).await;
    let backups = backups_of(env, id).await;
    for k in ["disable", "apply"] {
        let t = tasks.iter().find(|t| t.kind.as_str() == k).unwrap();
        assert_eq!(t.state.as_str(), "done", "{t:?}");
        let mine: Vec<_> = backups.iter().filter(|b| b.task_id == t.id).collect();
        assert_eq!(mine.len(), 1, "one backup for the {k} task: {mine:?}");
    }
    let apply = tasks.iter().find(|t| t.kind.as_str() == "apply").unwrap();
    let changed: BTreeMap<String, u64> = table_results(apply)
        .into_iter()
        .map(|(t, (backed, c, d))| {
            assert_eq!((backed, d), (c, 0), "{t}: changed once, from its backup");
            (t, c)
        })
        .collect();
    assert_eq!(changed, want.apply_changed);
}

/// The disk of the backup folder (not the keys', which are kept apart) fills up while the
/// exit's `apply` archive is written. The task fails with the cause recorded (the disk is
/// full, and it was the backup), the CRM is unchanged, what was written of the archive is
/// gone and its key shredded, and the request is not completed. Once there is room on the
/// same disk again, the next run carries the exit out exactly as a clean run does, and
/// every backup verifies.
#[cfg_attr(
    not(quietus_test_mount),
    ignore = "needs root to mount a size-limited tmpfs"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_full_backup_disk_fails_the_task_cleanly_and_it_completes_once_there_is_room() {
    let started = Instant::now();
    let want = reference().await;
    let (disable_size, apply_size) = archive_sizes().await;
    // Room for the disable task's archive and nothing more (tmpfs counts whole pages):
    // the apply task's archive gets not one page.
    let room = pages(disable_size) * PAGE;
    assert!(apply_size > 0 && disable_size > 0);

    let env = Env::new(&StoreKind::Sqlite).await;
    let crm = CrmKind::Sqlite;
    let (backup_dir, keys_dir) = backup_dirs(&env);
    assert_eq!(backup_dir, env.path().join("var/backups"));
    assert_ne!(
        keys_dir.parent(),
        Some(backup_dir.as_path()),
        "the keys are not on the small disk"
    );
    let disk = Tmpfs::mount(&backup_dir, room);
    let id = submit_and_approve(&env);

    // The disable task's archive fits.
    run_disable_alone(&env, &[]);
    assert_same(
        "after the disable",
        &dump(&env, &crm).await,
        &want.after_disable,
    );
    let used_after_disable = disk.used();

    // The apply task's does not.
    let out = run(&env, &["run", "--json"], Some(NOW), &[]);
    let s = json(&common::stdout(&out));
    assert_eq!(s["done"], 0, "{s}\n{}", stderr(&out));
    assert_eq!(s["retried"], 1, "{s}\n{}", stderr(&out));
    assert_same(
        "the disk filled up while the backup was written",
        &dump(&env, &crm).await,
        &want.after_disable,
    );
    let tasks = tasks_of(&env, &id).await;
    let apply = tasks.iter().find(|t| t.kind.as_str() == "apply").unwrap();
    assert_eq!(apply.state.as_str(), "pending", "{apply:?}");
    assert!(apply.backup_id.is_none(), "{apply:?}");
    assert!(apply.lease_owner.is_none(), "{apply:?}");
    assert_eq!(apply.attempts, 1, "{apply:?}");
    let why = apply.last_error.clone().unwrap_or_default();
    eprintln!("the recorded cause: {why}\nthe run said: {}", stderr(&out));
    assert!(
        why.contains("No space left on device"),
        "the cause is recorded: {why:?}"
    );
    assert!(
        why.starts_with("backup: ") && why.contains(&backup_dir.display().to_string()),
        "it says the backup could not be written, and where: {why:?}"
    );
    assert_no_personal_data("the recorded cause", &why);
    // Nothing of the archive is left: the disk holds what it held, its key is shredded.
    let backups = backups_of(&env, &id).await;
    assert_eq!(
        backups.len(),
        1,
        "only the disable task's backup: {backups:?}"
    );
    only_recorded_archives(&env, "the disk filled up", &backups);
    assert_eq!(
        disk.used(),
        used_after_disable,
        "the partial archive is gone"
    );
    assert_ne!(request_state(&env, &id), "completed");
    let shown = json(&ok(&run(&env, &["show", &id, "--json"], Some(LATER), &[])));
    let history = shown["history"].to_string();
    assert!(
        history.contains("No space left on device"),
        "the request's history says why: {history}"
    );

    // Room again on the same disk; the next run (after the retry's backoff) finishes.
    disk.grow(64 * 1024 * 1024);
    let out = run(&env, &["run", "--json"], Some(LATER), &[]);
    let s = json(&ok(&out));
    assert_eq!(s["done"], 1, "{s}\n{}", stderr(&out));
    assert_eq!(
        s["completed_requests"],
        serde_json::json!([id]),
        "{s}\n{}",
        stderr(&out)
    );
    assert_eq!(request_state(&env, &id), "completed");
    assert_same("once there was room", &dump(&env, &crm).await, &want.fin);
    let backups = backups_of(&env, &id).await;
    assert_eq!(backups.len(), 2, "{backups:?}");
    assert_exit_done_once(&env, &id, &want).await;
    backed_up(&env, &backups); // every archive verifies, with its recorded digest
    only_recorded_archives(&env, "once there was room", &backups);
    drop(disk);
    eprintln!(
        "full backup disk ({room} B; archives {disable_size} B and {apply_size} B): {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// The PostgreSQL state store restarts.

/// The binaries of the newest PostgreSQL server installed (Debian's layout).
fn postgres_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql (a PostgreSQL server is installed)")
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("a PostgreSQL server in /usr/lib/postgresql/*/bin")
        .1
}

/// A PostgreSQL cluster of the test's own, run as the `postgres` user on a free port of
/// 127.0.0.1, trusting local connections; stopped (immediately) and removed when dropped.
struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PgCluster {
    fn start() -> PgCluster {
        let bin = postgres_bin();
        let dir = tempfile::Builder::new()
            .prefix("quietus-pg-")
            .tempdir()
            .unwrap();
        sh(Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path()));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = PgCluster { dir, bin, port };
        c.pg(
            "initdb",
            &["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        );
        let conf = c.data().join("postgresql.conf");
        let mut text = common::read_to_string(&conf).unwrap();
        text.push_str(&format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nfull_page_writes = off\nmax_connections = 40\n",
            c.dir.path().display()
        ));
        std::fs::write(&conf, text).unwrap();
        c.up();
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A server program, as the `postgres` user, on the data folder.
    fn pg(&self, program: &str, args: &[&str]) -> String {
        sh(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .arg("-D")
            .arg(self.data())
            .args(args)
            .current_dir(self.dir.path()))
    }

    fn up(&self) {
        let log = self.dir.path().join("server.log");
        self.pg(
            "pg_ctl",
            &["-w", "-t", "60", "-l", log.to_str().unwrap(), "start"],
        );
    }

    /// A fast shutdown: sessions are ended, transactions in flight rolled back.
    fn down(&self) {
        self.pg("pg_ctl", &["-w", "-t", "60", "-m", "fast", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process, SIGKILLed when dropped while it still runs: a failing test leaves no
/// daemon behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `SELECT key, COUNT(*) … GROUP BY key` on an env's state store, either kind.
async fn counts(env: &Env, sql: &str) -> BTreeMap<String, i64> {
    let ctx = env.context().await;
    let rows: Vec<(Option<String>, i64)> = match &ctx.store.pool {
        quietus::store::Pool::Sqlite(p) => sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(p)
            .await
            .unwrap(),
        quietus::store::Pool::Postgres(p) => sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(p)
            .await
            .unwrap(),
    };
    ctx.store.close().await;
    rows.into_iter()
        .map(|(k, n)| (k.unwrap_or_else(|| "(none)".into()), n))
        .collect()
}

/// What the invariants of a finished set of erasures are compared on.
#[derive(Debug, PartialEq, Eq)]
struct Finished {
    /// By external id (the request ids differ between runs): receipts, log entries,
    /// moves to `completed`.
    receipts: BTreeMap<String, i64>,
    log_entries: BTreeMap<String, i64>,
    completions: BTreeMap<String, i64>,
    /// By external id: table -> (backed up, changed + already done).
    applied: BTreeMap<String, BTreeMap<String, (u64, u64)>>,
}

async fn finished(env: &Env, ids: &[String]) -> Finished {
    let external = |rid: &str| -> String {
        let i = ids.iter().position(|x| x == rid).unwrap();
        format!("S-{i}")
    };
    let by_external = |m: BTreeMap<String, i64>| -> BTreeMap<String, i64> {
        m.into_iter()
            .map(|(rid, n)| {
                assert!(ids.contains(&rid), "a row of an unknown request {rid}");
                (external(&rid), n)
            })
            .collect()
    };
    let receipts = by_external(
        counts(
            env,
            "SELECT request_id, COUNT(*) FROM receipts GROUP BY request_id",
        )
        .await,
    );
    let log_entries = by_external(
        counts(
            env,
            "SELECT request_id, COUNT(*) FROM log_entries GROUP BY request_id",
        )
        .await,
    );
    let completions = by_external(
        counts(
            env,
            "SELECT request_id, COUNT(*) FROM history WHERE to_state = 'completed' \
             GROUP BY request_id",
        )
        .await,
    );
    let mut applied = BTreeMap::new();
    for rid in ids {
        for t in tasks_of(env, rid).await {
            if t.kind.as_str() != "apply" {
                continue;
            }
            assert_eq!(t.state.as_str(), "done", "{t:?}");
            let r: BTreeMap<String, (u64, u64)> = table_results(&t)
                .into_iter()
                .map(|(table, (b, c, d))| (table, (b, c + d)))
                .collect();
            assert!(
                applied.insert(external(rid), r).is_none(),
                "{rid}: two apply tasks"
            );
        }
    }
    Finished {
        receipts,
        log_entries,
        completions,
        applied,
    }
}

/// Contacts of the demo CRM known by their email, one each.
async fn contact_emails(env: &Env, n: usize) -> Vec<String> {
    let emails: Vec<String> = env
        .crm_query(
            &CrmKind::Sqlite,
            "SELECT email FROM contacts WHERE email IS NOT NULL ORDER BY id",
        )
        .await
        .into_iter()
        .flatten()
        .take(n)
        .collect();
    assert_eq!(emails.len(), n);
    for e in &emails {
        let n = env
            .crm_count(
                &CrmKind::Sqlite,
                &format!("FROM contacts WHERE email = '{e}'"),
            )
            .await;
        assert_eq!(n, 1, "{e} names one contact");
    }
    emails
}

/// The erasures, approved on `env`'s store: their request ids (external ids `S-0`, …).
async fn approve(env: &Env, emails: &[String]) -> Vec<String> {
    let ctx = env.context().await;
    let ids = common::approved_erasures(&ctx, emails, "S", quietus::clock::now()).await;
    ctx.store.close().await;
    ids
}

/// Wait until `cond` holds (checked every 50 ms), or panic after `timeout`.
async fn until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The state store (a PostgreSQL cluster of the test's own) goes away while `quietus
/// serve` is in the middle of carrying out erasures, and comes back: once right after a
/// backup was recorded (`after_backup`, held 4 s), for longer than the store's pool waits
/// for a connection; once inside the transaction that appends the receipts to the log
/// (`log_append`, held 4 s), which the shutdown rolls back. The daemon stays up, says
/// what is wrong while the store is away, and once it is back every request completes:
/// the CRM as after a clean run, one receipt and one log entry per request as a clean run
/// has them, the log verifies, every backup verifies, no task changed a row twice.
#[cfg_attr(
    not(quietus_test_pg_cluster),
    ignore = "needs root and a PostgreSQL server's binaries (/usr/lib/postgresql/*/bin) to run and restart a cluster"
)]
#[tokio::test(flavor = "multi_thread")]
async fn serve_rides_out_a_restart_of_its_postgres_state_store() {
    let started = Instant::now();
    const N: usize = 3;

    // The clean run: the same erasures, on a SQLite store, without an outage.
    let clean = Env::new(&StoreKind::Sqlite).await;
    let emails = contact_emails(&clean, N).await;
    let clean_ids = approve(&clean, &emails).await;
    let s = json(&ok(&run(&clean, &["run", "--json"], None, &[])));
    assert_eq!(s["completed_requests"].as_array().unwrap().len(), N, "{s}");
    let want_crm = dump(&clean, &CrmKind::Sqlite).await;
    let want = finished(&clean, &clean_ids).await;
    for (what, per_request) in [
        ("receipt", &want.receipts),
        ("log entry", &want.log_entries),
        ("move to completed", &want.completions),
    ] {
        assert_eq!(per_request.len(), N, "{what}: {want:?}");
        assert!(
            per_request.values().all(|n| *n == 1),
            "one {what} a request: {want:?}"
        );
    }

    let pg = PgCluster::start();
    let env = Env::on_store(pg.url()).await;
    let crm = CrmKind::Sqlite;
    let original = dump(&env, &crm).await;
    let ids = approve(&env, &emails).await;

    let mut child = quietus(
        &env,
        &["serve", "--listen", "127.0.0.1:0"],
        None,
        &[
            ("QUIETUS_JOBS__POLL_SECONDS", "1"),
            (
                "QUIETUS_FAILPOINTS",
                "after_backup=1*sleep(4000);log_append=1*sleep(4000)",
            ),
        ],
    )
    .spawn()
    .expect("spawn quietus serve");
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    let mut serve = KillOnDrop(child);
    let child = &mut serve.0;
    wait_for_line(&out, "listening on http://", Duration::from_secs(60));
    let mut log: Vec<String> = Vec::new();
    let alive = |child: &mut Child, log: &mut Vec<String>, when: &str| {
        log.extend(err.try_iter());
        assert!(
            child.try_wait().unwrap().is_none(),
            "serve ended {when}:\n{}",
            log.join("\n")
        );
    };

    let store = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let one = |sql: &'static str| {
        let store = store.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&store)
                .await
                .unwrap()
        }
    };

    // 1. A backup is recorded, the worker holds for 4 s before it changes anything: the
    //    store goes away for longer than that plus the pool's 10 s wait.
    until("a backup recorded", Duration::from_secs(30), || {
        let n = one("SELECT COUNT(*) FROM tasks WHERE state = 'backed_up'");
        async move { n.await > 0 }
    })
    .await;
    store.close().await;
    let t = Instant::now();
    pg.down();
    while t.elapsed() < Duration::from_secs(17) {
        alive(child, &mut log, "while the store was down");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    alive(child, &mut log, "while the store was down");
    let while_down = log.len();
    pg.up();
    eprintln!(
        "store down for {:?}; serve said:\n{}",
        t.elapsed(),
        log.join("\n")
    );

    // 2. The receipts' log append: the store shuts down inside its transaction.
    let store = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let in_append = || {
        let store = store.clone();
        async move {
            // The append's transaction, open and idle while the worker holds.
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE state = 'idle in transaction' \
                 AND query LIKE 'SELECT idx, leaf_hash FROM log_entries%' \
                 AND now() - state_change > interval '500 milliseconds'",
            )
            .fetch_one(&store)
            .await
            .unwrap()
                > 0
        }
    };
    until("the receipts' log append", Duration::from_secs(60), || {
        in_append()
    })
    .await;
    store.close().await;
    alive(child, &mut log, "before the second restart");
    let before_second = log.len();
    pg.down();
    tokio::time::sleep(Duration::from_secs(2)).await;
    alive(child, &mut log, "while the store was down again");
    pg.up();

    // Every request completes, soon: nothing waits out a lease or a retry's backoff.
    let store = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM requests r WHERE state = 'completed' \
             AND EXISTS (SELECT 1 FROM receipts c WHERE c.request_id = r.id)",
        )
        .fetch_one(&store)
        .await
        .unwrap();
        if n == i64::try_from(N).unwrap() {
            break;
        }
        alive(child, &mut log, "before the work was done");
        assert!(
            Instant::now() < deadline,
            "{n} of {N} requests completed with a receipt; serve said:\n{}",
            log.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    store.close().await;
    signal(child, "-TERM");
    let status = child.wait().unwrap();
    log.extend(err.try_iter());
    assert!(status.success(), "serve: {status:?}\n{}", log.join("\n"));

    // It said what was wrong while the store was away, and no one's address.
    let said = log[..while_down].join("\n");
    assert!(
        said.contains("the state store cannot be reached"),
        "a clear error while the store was down:\n{said}"
    );
    // The append's transaction was ended by the shutdown (and its round with it).
    let after = log[before_second..].join("\n");
    assert!(
        after.contains("work round failed: the state store cannot be reached"),
        "the append's round failed:\n{after}"
    );
    for e in &emails {
        let line = log.iter().find(|l| l.contains(e.as_str()));
        assert!(line.is_none(), "personal data in the log: {line:?}");
    }
    // A store that cannot be reached is not the tasks' failure: no attempt is counted
    // (their retry budget is for what goes wrong in the task), none waits out a backoff.
    for id in &ids {
        for t in tasks_of(&env, id).await {
            assert_eq!(t.attempts, 0, "{t:?}");
            assert!(t.lease_owner.is_none(), "{t:?}");
        }
        let shown = json(&ok(&run(&env, &["show", id, "--json"], None, &[])));
        let failed = shown["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["to_state"] == "failed")
            .count();
        assert_eq!(failed, 0, "{id}: {:#}", shown["history"]);
    }

    // As a clean run: the CRM, the receipts and log entries, the counts of changes.
    assert_same("after the restarts", &dump(&env, &crm).await, &want_crm);
    assert!(!diff(&original, &want_crm).is_empty());
    assert_eq!(finished(&env, &ids).await, want);
    for id in &ids {
        assert_eq!(request_state(&env, id), "completed", "{id}");
    }
    ok(&run(&env, &["log", "verify"], None, &[]));
    let mut backups = Vec::new();
    for id in &ids {
        backups.extend(backups_of(&env, id).await);
    }
    let saved = backed_up(&env, &backups); // each verifies
    for ((table, key), cols) in changed_rows(&original, &want_crm) {
        let b = saved
            .get(&(table.clone(), key.clone()))
            .unwrap_or_else(|| panic!("{table} id {key} changed but is in no backup"));
        for (c, v) in b {
            assert_eq!(v, &original[&table].value(&key, c), "{table}.{c} of {key}");
        }
        assert!(cols.iter().all(|c| b.contains_key(c)), "{table} id {key}");
    }
    only_recorded_archives(&env, "after the restarts", &backups);
    drop(env);
    drop(pg);
    eprintln!("state store restarts: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// The target database (the CRM) stops in the middle of an apply.

/// The exit run cleanly on a demo CRM (loaded into `crm`), with a SQLite state store:
/// the CRM before, after the disable task and at the end, and the apply task's changes
/// per table.
struct CleanExit {
    original: Dump,
    after_disable: Dump,
    fin: Dump,
    apply_changed: BTreeMap<String, u64>,
}

async fn clean_exit_on(crm: &CrmKind) -> CleanExit {
    let env = Env::new(&StoreKind::Sqlite).await;
    env.use_crm(crm).await;
    let original = dump(&env, crm).await;
    let id = submit_and_approve(&env);
    run_disable_alone(&env, &[]);
    let after_disable = dump(&env, crm).await;
    let s = json(&ok(&run(&env, &["run", "--json"], Some(NOW), &[])));
    assert_eq!(s["done"], 1, "{s}");
    assert_eq!(request_state(&env, &id), "completed");
    let fin = dump(&env, crm).await;
    let tasks = tasks_of(&env, &id).await;
    let apply = tasks.iter().find(|t| t.kind.as_str() == "apply").unwrap();
    let apply_changed: BTreeMap<String, u64> = table_results(apply)
        .into_iter()
        .map(|(t, (b, c, d))| {
            assert_eq!((b, d), (c, 0), "{t}: a clean run changes each row once");
            (t, c)
        })
        .collect();
    assert_eq!(changed_rows(&original, &fin).len(), 15, "as on SQLite");
    CleanExit {
        original,
        after_disable,
        fin,
        apply_changed,
    }
}

/// The CRM's database (PostgreSQL, a cluster of the test's own) is shut down while
/// `quietus serve` is in the middle of the exit's apply, one row a batch: after the
/// second batch committed, the worker holds 5 s (`after_batch_2=1*sleep(5000)`) and the
/// cluster stops (fast: its sessions are ended). The third batch cannot begin: the task
/// fails with a cause that names the system, serve stays up, the request is `failed`
/// (retrying), nothing is lost. A run while the CRM is still down, once the backoff is
/// over, fails again, as clearly. Then the cluster starts again: what changed so far is
/// the two committed batches, each row in the recorded backup with its original values;
/// the next run resumes after the last committed batch and ends the exit as a clean run
/// on the same kind of CRM does, each row changed once, one backup for the apply task,
/// the log verifying.
#[cfg_attr(
    not(quietus_test_pg_cluster),
    ignore = "needs root and a PostgreSQL server's binaries (/usr/lib/postgresql/*/bin) to run and stop a cluster"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_crm_stopped_mid_apply_fails_the_task_clearly_and_the_exit_resumes_once_it_is_back() {
    let started = Instant::now();
    let pg = PgCluster::start();
    // The clean run, on another database of the same cluster.
    let clean_crm = CrmKind::Postgres(Db::postgres_on(pg.url()).await);
    let want = clean_exit_on(&clean_crm).await;

    let env = Env::new(&StoreKind::Sqlite).await;
    let crm = CrmKind::Postgres(Db::postgres_on(pg.url()).await);
    env.use_crm(&crm).await;
    assert_same("before", &dump(&env, &crm).await, &want.original);
    let id = submit_and_approve(&env);
    let one = ("QUIETUS_JOBS__BATCH_SIZE", "1");
    run_disable_alone(&env, &[one]);
    assert_same(
        "after the disable",
        &dump(&env, &crm).await,
        &want.after_disable,
    );
    let tasks = tasks_of(&env, &id).await;
    let apply_id = tasks
        .iter()
        .find(|t| t.kind.as_str() == "apply")
        .unwrap()
        .id
        .clone();

    // The apply, under serve, held after its second batch.
    let mut child = quietus(
        &env,
        &["serve", "--listen", "127.0.0.1:0"],
        Some(NOW),
        &[
            one,
            ("QUIETUS_JOBS__POLL_SECONDS", "1"),
            ("QUIETUS_FAILPOINTS", "after_batch_2=1*sleep(5000)"),
        ],
    )
    .spawn()
    .expect("spawn quietus serve");
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    let mut serve = KillOnDrop(child);
    let child = &mut serve.0;
    wait_for_line(&out, "listening on http://", Duration::from_secs(60));
    let mut log: Vec<String> = Vec::new();
    let alive = |child: &mut Child, log: &mut Vec<String>, when: &str| {
        log.extend(err.try_iter());
        assert!(
            child.try_wait().unwrap().is_none(),
            "serve ended {when}:\n{}",
            log.join("\n")
        );
    };
    let ctx = env.context().await;
    let rows_done =
        |p: Option<String>| -> u64 { p.map(|p| json(&p)["rows"].as_u64().unwrap()).unwrap_or(0) };
    until("two batches committed", Duration::from_secs(30), || {
        let p = ctx.store.apply_progress(&apply_id);
        async { rows_done(p.await.unwrap()) >= 2 }
    })
    .await;
    let t = Instant::now();
    pg.down();
    let stopped_after = rows_done(ctx.store.apply_progress(&apply_id).await.unwrap());
    assert_eq!(stopped_after, 2, "the worker holds after its second batch");

    // The worker wakes to its third batch; the CRM does not answer.
    until("the task failed", Duration::from_secs(40), || {
        let task = ctx.store.task(&apply_id);
        async { task.await.unwrap().attempts > 0 }
    })
    .await;
    let failed_after = t.elapsed();
    // Serve stays up while the CRM is down (rounds every second find nothing due).
    while t.elapsed() < failed_after + Duration::from_secs(3) {
        alive(child, &mut log, "while the CRM was down");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    alive(child, &mut log, "while the CRM was down");
    signal(child, "-TERM");
    let status = child.wait().unwrap();
    log.extend(err.try_iter());
    assert!(status.success(), "serve: {status:?}\n{}", log.join("\n"));
    let said = log.join("\n");
    eprintln!("serve said:\n{said}");

    let apply = ctx.store.task(&apply_id).await.unwrap();
    assert_eq!(apply.state.as_str(), "backed_up", "{apply:?}");
    assert_eq!(apply.attempts, 1, "{apply:?}");
    assert!(apply.lease_owner.is_none(), "{apply:?}");
    let first_why = apply.last_error.clone().unwrap_or_default();
    eprintln!("the recorded cause: {first_why}");
    assert_eq!(request_state(&env, &id), "failed");
    assert_eq!(
        rows_done(ctx.store.apply_progress(&apply_id).await.unwrap()),
        2,
        "the progress of the committed batches is kept"
    );
    ctx.store.close().await;

    // Still down when the retry comes (after the 60 s backoff of a first attempt).
    let out = run(
        &env,
        &["run", "--json"],
        Some("2027-01-01T03:05:00Z"),
        &[one],
    );
    let s = json(&common::stdout(&out));
    assert_eq!(s["done"], 0, "{s}\n{}", stderr(&out));
    assert_eq!(s["retried"], 1, "{s}\n{}", stderr(&out));
    let apply = tasks_of(&env, &id)
        .await
        .into_iter()
        .find(|t| t.id == apply_id)
        .unwrap();
    assert_eq!(apply.state.as_str(), "backed_up", "{apply:?}");
    assert_eq!(apply.attempts, 2, "{apply:?}");
    let second_why = apply.last_error.clone().unwrap_or_default();
    eprintln!(
        "the cause recorded by the retry: {second_why}\nthe run said: {}",
        stderr(&out)
    );
    let down_for = t.elapsed();
    pg.up();

    for (when, why) in [("mid-apply", &first_why), ("at the retry", &second_why)] {
        assert!(
            why.contains("system crm")
                && (why.contains("cannot be reached") || why.contains("cannot connect")),
            "{when}: the cause names the system and what is wrong with it: {why:?}"
        );
        assert!(
            !why.contains("state store"),
            "{when}: it is not the state store: {why:?}"
        );
        assert_no_personal_data(&format!("{when}: the recorded cause"), why);
    }
    assert!(
        said.contains(&first_why),
        "serve said why the task failed:\n{said}"
    );
    assert_no_personal_data("serve's log", &said);
    let shown = json(&ok(&run(&env, &["show", &id, "--json"], Some(LATER), &[])));
    let history = shown["history"].to_string();
    assert!(
        history.contains(&first_why),
        "the request's history says why: {history}"
    );

    // What changed before the stop: the two committed batches, from the recorded backup.
    let backups = backups_of(&env, &id).await;
    assert_eq!(backups.len(), 2, "{backups:?}");
    let apply_backup: Vec<_> = backups
        .iter()
        .filter(|b| Some(b.id.as_str()) == apply.backup_id.as_deref())
        .cloned()
        .collect();
    assert_eq!(apply_backup.len(), 1, "{backups:?}");
    let midway = dump(&env, &crm).await;
    assert_eq!(
        changed_rows(&want.after_disable, &midway).len(),
        2,
        "two rows changed before the stop: {:?}",
        diff(&want.after_disable, &midway)
    );
    assert_changes_backed_up(
        "when the CRM came back",
        &env,
        &apply_backup,
        &want.after_disable,
        &midway,
    );
    only_recorded_archives(&env, "when the CRM came back", &backups);

    // The next run resumes after the committed batches and ends the exit.
    let out = run(
        &env,
        &["run", "--json"],
        Some("2027-01-01T04:00:00Z"),
        &[one],
    );
    let s = json(&ok(&out));
    assert_eq!(s["done"], 1, "{s}\n{}", stderr(&out));
    assert_eq!(
        s["completed_requests"],
        serde_json::json!([id]),
        "{s}\n{}",
        stderr(&out)
    );
    assert_eq!(request_state(&env, &id), "completed");
    let fin = dump(&env, &crm).await;
    assert_same("once the CRM was back", &fin, &want.fin);
    let tasks = tasks_of(&env, &id).await;
    let backups = backups_of(&env, &id).await;
    assert_eq!(backups.len(), 2, "{backups:?}");
    for k in ["disable", "apply"] {
        let t = tasks.iter().find(|t| t.kind.as_str() == k).unwrap();
        assert_eq!(t.state.as_str(), "done", "{t:?}");
        let mine: Vec<_> = backups.iter().filter(|b| b.task_id == t.id).collect();
        assert_eq!(mine.len(), 1, "one backup for the {k} task: {mine:?}");
        assert_eq!(t.backup_id.as_deref(), Some(mine[0].id.as_str()));
    }
    let apply = tasks.iter().find(|t| t.id == apply_id).unwrap();
    let results = table_results(apply);
    let changed: BTreeMap<String, u64> = results
        .iter()
        .map(|(t, &(backed, c, d))| {
            assert_eq!(
                (backed, d),
                (c, 0),
                "{t}: each row changed once, none read back again: {results:?}"
            );
            (t.clone(), c)
        })
        .collect();
    assert_eq!(changed, want.apply_changed);
    assert_changes_backed_up(
        "once the CRM was back",
        &env,
        &backups,
        &want.original,
        &fin,
    );
    only_recorded_archives(&env, "once the CRM was back", &backups);
    ok(&run(&env, &["log", "verify"], None, &[]));
    drop(env);
    drop(pg);
    eprintln!(
        "CRM stopped mid-apply: failed {failed_after:?} after the stop, down {down_for:?}; {:?} in all",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// The backup folder is read-only.

/// A folder bind-mounted on itself, read-only (as root, file modes stop no write: a
/// read-only mount does); unmounted when dropped.
struct ReadOnlyBind {
    dir: PathBuf,
}

impl ReadOnlyBind {
    fn mount(dir: &Path) -> ReadOnlyBind {
        std::fs::create_dir_all(dir).unwrap();
        sh(Command::new("mount").arg("--bind").arg(dir).arg(dir));
        let m = ReadOnlyBind {
            dir: dir.to_path_buf(),
        };
        m.remount("ro");
        m
    }

    /// `ro` or `rw`.
    fn remount(&self, how: &str) {
        sh(Command::new("mount")
            .arg("-o")
            .arg(format!("remount,bind,{how}"))
            .arg(&self.dir));
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        let st = Command::new("umount").arg(&self.dir).status();
        if !st.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// The backup folder is mounted read-only, for the exit's disable task and again for its
/// apply task. Each time the task fails with the cause recorded (the file system is
/// read-only, and it was the backup folder), the CRM is as before the task, no archive
/// or key is left that is not recorded, the request is not completed. Made writable
/// again (the same mount), the next run carries the task out as a clean run does, and
/// every backup verifies.
#[cfg_attr(
    not(quietus_test_mount),
    ignore = "needs root to bind-mount the backup folder read-only"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_backup_folder_fails_the_task_cleanly_and_it_completes_once_writable() {
    let started = Instant::now();
    let want = reference().await;
    let env = Env::new(&StoreKind::Sqlite).await;
    let crm = CrmKind::Sqlite;
    let (backup_dir, keys_dir) = backup_dirs(&env);
    assert_ne!(
        keys_dir.parent(),
        Some(backup_dir.as_path()),
        "the keys are not in the read-only folder"
    );
    let mount = ReadOnlyBind::mount(&backup_dir);
    let id = submit_and_approve(&env);
    let window = ("QUIETUS_SCHEDULE__WINDOW", WINDOW);

    // (kind, when it fails, when it runs again, the CRM before it, the CRM after it)
    let steps = [
        (
            "disable",
            BEFORE_WINDOW,
            "2027-01-01T02:00:00Z",
            &want.original,
            &want.after_disable,
        ),
        ("apply", NOW, LATER, &want.after_disable, &want.fin),
    ];
    for (i, (kind, fails_at, runs_at, before, after)) in steps.into_iter().enumerate() {
        let extra: &[(&str, &str)] = if kind == "disable" { &[window] } else { &[] };
        if i > 0 {
            mount.remount("ro");
        }
        let out = run(&env, &["run", "--json"], Some(fails_at), extra);
        let s = json(&common::stdout(&out));
        assert_eq!(s["done"], 0, "{kind}: {s}\n{}", stderr(&out));
        assert_eq!(s["retried"], 1, "{kind}: {s}\n{}", stderr(&out));
        assert_same(
            &format!("{kind}: the backup folder read-only"),
            &dump(&env, &crm).await,
            before,
        );
        let tasks = tasks_of(&env, &id).await;
        let t = tasks.iter().find(|t| t.kind.as_str() == kind).unwrap();
        assert_eq!(t.state.as_str(), "pending", "{t:?}");
        assert!(t.backup_id.is_none(), "{t:?}");
        assert!(t.lease_owner.is_none(), "{t:?}");
        assert_eq!(t.attempts, 1, "{t:?}");
        let why = t.last_error.clone().unwrap_or_default();
        eprintln!(
            "{kind}: the recorded cause: {why}\nthe run said: {}",
            stderr(&out)
        );
        assert!(
            why.contains("Read-only file system"),
            "{kind}: the cause is recorded: {why:?}"
        );
        assert!(
            why.starts_with("backup: ") && why.contains(&backup_dir.display().to_string()),
            "{kind}: it says the backup could not be written, and where: {why:?}"
        );
        assert_no_personal_data(&format!("{kind}: the recorded cause"), &why);
        let backups = backups_of(&env, &id).await;
        assert_eq!(backups.len(), i, "{kind}: {backups:?}");
        only_recorded_archives(&env, &format!("{kind}: read-only"), &backups);
        // The archive that could not be begun is shredded (its key: nothing else of it
        // was written), and known to be: no false alarm, no archive left to look for.
        for alarm in ["not shredded yet", "cannot be looked for"] {
            assert!(
                !stderr(&out).contains(alarm),
                "{kind}: {alarm:?}:\n{}",
                stderr(&out)
            );
        }
        assert_eq!(
            counts(
                &env,
                "SELECT 'open', COUNT(*) FROM archive_intents i WHERE shredded_at IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM backups b WHERE b.id = i.id)"
            )
            .await,
            BTreeMap::from([("open".to_owned(), 0)]),
            "{kind}: an archive intent is left open"
        );
        assert_ne!(request_state(&env, &id), "completed", "{kind}");
        let shown = json(&ok(&run(&env, &["show", &id, "--json"], Some(LATER), &[])));
        let history = shown["history"].to_string();
        assert!(
            history.contains("Read-only file system"),
            "{kind}: the request's history says why: {history}"
        );

        // Writable again (after the retry's backoff): the task is carried out.
        mount.remount("rw");
        let out = run(&env, &["run", "--json"], Some(runs_at), extra);
        let s = json(&ok(&out));
        assert_eq!(s["done"], 1, "{kind}: {s}\n{}", stderr(&out));
        assert_same(
            &format!("{kind}: once writable"),
            &dump(&env, &crm).await,
            after,
        );
        let backups = backups_of(&env, &id).await;
        assert_eq!(backups.len(), i + 1, "{kind}: {backups:?}");
        only_recorded_archives(&env, &format!("{kind}: once writable"), &backups);
    }

    assert_eq!(request_state(&env, &id), "completed");
    let backups = backups_of(&env, &id).await;
    assert_exit_done_once(&env, &id, &want).await;
    assert_changes_backed_up(
        "once writable",
        &env,
        &backups,
        &want.original,
        &dump(&env, &crm).await,
    ); // every archive verifies, with its recorded digest
    ok(&run(&env, &["log", "verify"], None, &[]));
    drop(mount);
    eprintln!("read-only backup folder: {:?}", started.elapsed());
}
