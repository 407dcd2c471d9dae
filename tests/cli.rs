//! The DPO's command line, end to end, on SQLite and PostgreSQL state stores.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{BIN, Backend, Db, ERASURE_TICKET, EXIT_TICKET, Env, StoreKind, fails, ok};
use rstest::rstest;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn help_lists_every_command() {
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "serve", "demo", "submit", "queue", "show", "plan", "approve", "reject", "hold", "release",
        "extend", "cancel", "policy",
    ] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(cmd)),
            "--help lacks {cmd}:\n{text}"
        );
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
async fn a_ticket_submitted_twice_is_one_request(#[case] backend: Backend) {
    {
        let kind = StoreKind::of(backend).await;
        let env = Env::new(&kind).await;
        let f = env.write("exit.json", EXIT_TICKET);
        let f = f.to_str().unwrap();
        let first = json(&ok(&env.run(&["submit", f, "--json"])));
        assert_eq!(first["created"], true, "{}", kind.label());
        let again = json(&ok(&env.run(&["submit", f, "--json"])));
        assert_eq!(again["created"], false);
        assert_eq!(again["id"], first["id"]);
        // The same ticket on standard input, keys reordered and the email in capitals.
        let reordered = r#"{"successor":{"employee_id":"E200"},"jurisdiction":"PIPL","exit_date":"2026-12-31","subject":{"employee_id":"E100","email":"Fang.Wang@Corp.Example"},"external_id":"HR-7","kind":"exit"}"#;
        let third = json(&ok(&env.run_at(
            &["submit", "-", "--json"],
            None,
            Some(reordered),
        )));
        assert_eq!(third["id"], first["id"]);
        assert_eq!(third["created"], false);
        let plain = ok(&env.run(&["submit", f]));
        assert_eq!(plain.trim(), first["id"].as_str().unwrap());
        let q = json(&ok(&env.run(&["queue", "--json"])));
        assert_eq!(q["requests"].as_array().unwrap().len(), 1);
        kind.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tickets_are_refused_and_change_nothing() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let cases = [
        (
            "malformed.json",
            r#"{"kind":"erasure","#,
            "malformed.json: malformed ticket",
        ),
        (
            "kind.json",
            r#"{"kind":"forget","subject":{"email":"a@b.example"}}"#,
            "not a request kind",
        ),
        (
            "email.json",
            r#"{"kind":"erasure","subject":{"email":"x@y.z'); DROP TABLE customers; --"}}"#,
            "subject.email is not a valid email",
        ),
        (
            "exit.json",
            r#"{"kind":"exit","subject":{"employee_id":"E100"},"exit_date":"2026-12-31"}"#,
            "needs a successor",
        ),
        (
            "date.json",
            r#"{"kind":"exit","subject":{"employee_id":"E100"},"exit_date":"31.12.2026","successor":{"employee_id":"E200"}}"#,
            "exit_date",
        ),
    ];
    for (name, body, want) in cases {
        let f = env.write(name, body);
        let err = fails(&env.run(&["submit", f.to_str().unwrap()]));
        assert!(err.contains(want), "{name}: {err}");
        assert!(err.contains("ticket_invalid"), "{name}: {err}");
    }
    let big = env.write("big.json", &" ".repeat(1024 * 1024 + 10));
    let err = fails(&env.run(&["submit", big.to_str().unwrap()]));
    assert!(err.contains("too_large"), "{err}");
    let q = json(&ok(&env.run(&["queue", "--json"])));
    assert!(q["requests"].as_array().unwrap().is_empty());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn the_exit_plan_lists_disable_reassign_retain_and_erase_with_real_counts(
    #[case] backend: Backend,
) {
    {
        let kind = StoreKind::of(backend).await;
        let env = Env::new(&kind).await;
        let f = env.write("exit.json", EXIT_TICKET);
        let id = ok(&env.run(&["submit", f.to_str().unwrap()]))
            .trim()
            .to_owned();
        let plan = json(&ok(&env.run(&["plan", &id, "--json"])));
        let entries = plan["entries"].as_array().unwrap();
        let find = |table: &str, action: &str| {
            entries
                .iter()
                .find(|e| e["table"] == table && e["action"] == action)
                .unwrap_or_else(|| panic!("no {action} on {table}: {plan:#}"))
        };
        assert_eq!(find("employees", "disable")["rows"], 1);
        assert_eq!(find("customers", "reassign")["rows"], 5);
        assert_eq!(find("deals", "reassign")["rows"], 3);
        let contract = find("labour_contracts", "retain");
        assert_eq!(contract["due"], "2028-12-31");
        assert!(
            contract["basis"]
                .as_str()
                .unwrap()
                .contains("Labor Contract Law, Art. 50")
        );
        assert_eq!(find("employee_roles", "erase")["rows"], 3);
        assert_eq!(find("personal_notes", "erase")["rows"], 3);
        assert_eq!(find("follow_ups", "retain")["rows"], 12);
        let text = ok(&env.run(&["plan", &id]));
        assert!(
            text.contains("2028-12-31 (Asia/Shanghai) then erase"),
            "{text}"
        );
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
async fn the_dpo_decides_and_illegal_steps_are_clear_errors(#[case] backend: Backend) {
    {
        let kind = StoreKind::of(backend).await;
        let env = Env::new(&kind).await;
        let now = Some("2026-03-02T09:00:00Z");
        let f = env.write("erasure.json", ERASURE_TICKET);
        let id = ok(&env.run_at(&["submit", f.to_str().unwrap()], now, None))
            .trim()
            .to_owned();
        let short = &id[..6];
        ok(&env.run_at(&["hold", short, "--reason", "litigation hold"], now, None));
        let err = fails(&env.run_at(&["approve", short], now, None));
        assert!(
            err.contains("illegal_transition") && err.contains("on_hold"),
            "{err}"
        );
        ok(&env.run_at(&["release", short], now, None));
        // GDPR: one month from 2 March is 2 April; one extension of up to two months.
        let shown = json(&ok(&env.run_at(&["show", short, "--json"], now, None)));
        assert_eq!(shown["request"]["due_date"], "2026-04-02");
        let err = fails(&env.run_at(
            &["extend", short, "--reason", "complex", "--by", "3 months"],
            now,
            None,
        ));
        assert!(err.contains("deadline_rule"), "{err}");
        ok(&env.run_at(
            &[
                "extend",
                short,
                "--reason",
                "many systems to search",
                "--by",
                "2 months",
            ],
            now,
            None,
        ));
        let err = fails(&env.run_at(
            &["extend", short, "--reason", "again", "--by", "1 month"],
            now,
            None,
        ));
        assert!(
            err.contains("deadline_rule") || err.contains("illegal_transition"),
            "{err}"
        );
        let shown = json(&ok(&env.run_at(&["show", short, "--json"], now, None)));
        assert_eq!(shown["request"]["due_date"], "2026-06-02");
        assert_eq!(shown["request"]["original_due_date"], "2026-04-02");
        ok(&env.run_at(&["approve", short], now, None));
        let err = fails(&env.run_at(&["reject", short, "--reason", "too late"], now, None));
        assert!(
            err.contains("illegal_transition") && err.contains("approved"),
            "{err}"
        );
        // reject needs a reason
        let out = env.run_at(&["reject", short], now, None);
        assert!(!out.status.success());
        ok(&env.run_at(
            &["cancel", short, "--reason", "withdrawn by the subject"],
            now,
            None,
        ));
        let err = fails(&env.run_at(&["hold", short, "--reason", "x"], now, None));
        assert!(err.contains("cancelled is final"), "{err}");
        let shown = json(&ok(&env.run_at(&["show", &id, "--json"], now, None)));
        let states: Vec<&str> = shown["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["to_state"].as_str().unwrap())
            .collect();
        assert_eq!(
            states,
            [
                "pending_review",
                "on_hold",
                "pending_review",
                "pending_review",
                "approved",
                "cancelled"
            ],
            "{}",
            kind.label()
        );
        let err = fails(&env.run(&["show", "zzzzzzzz"]));
        assert!(err.contains("not_found"), "{err}");
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
async fn the_queue_puts_overdue_requests_first_when_time_passes(#[case] backend: Backend) {
    {
        let kind = StoreKind::of(backend).await;
        let env = Env::new(&kind).await;
        // GDPR, received 31 January 2026 (Asia/Shanghai): due 28 February.
        let gdpr = env.write("g.json", r#"{"kind":"erasure","external_id":"G","subject":{"email":"a@example.com"},"jurisdiction":"GDPR"}"#);
        let g = ok(&env.run_at(
            &["submit", gdpr.to_str().unwrap()],
            Some("2026-01-31T03:00:00Z"),
            None,
        ))
        .trim()
        .to_owned();
        // PIPL, received 20 February 2026: 15 working days is 13 March.
        let pipl = env.write("p.json", r#"{"kind":"erasure","external_id":"P","subject":{"email":"b@example.com"},"jurisdiction":"PIPL"}"#);
        let p = ok(&env.run_at(
            &["submit", pipl.to_str().unwrap()],
            Some("2026-02-20T03:00:00Z"),
            None,
        ))
        .trim()
        .to_owned();
        let q = json(&ok(&env.run_at(
            &["queue", "--json"],
            Some("2026-03-05T03:00:00Z"),
            None,
        )));
        let reqs = q["requests"].as_array().unwrap();
        assert_eq!(reqs[0]["id"], g.as_str(), "{q:#}");
        assert_eq!(reqs[0]["due_date"], "2026-02-28");
        assert_eq!(reqs[0]["overdue"], true);
        assert_eq!(reqs[0]["days_left"], -5);
        assert_eq!(reqs[1]["id"], p.as_str());
        assert_eq!(reqs[1]["due_date"], "2026-03-13");
        assert_eq!(reqs[1]["overdue"], false);
        let od = json(&ok(&env.run_at(
            &["queue", "--overdue", "--json"],
            Some("2026-03-05T03:00:00Z"),
            None,
        )));
        assert_eq!(od["requests"].as_array().unwrap().len(), 1);
        let text = ok(&env.run_at(&["queue"], Some("2026-03-05T03:00:00Z"), None));
        assert!(text.contains("OVERDUE by 5d"), "{text}");
        assert!(
            !text.contains("a@example.com"),
            "the queue masks emails: {text}"
        );
        kind.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_policy_stops_every_command_and_the_daemon() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let path = env.path().join("policies/retention.toml");
    let text = common::read_to_string(&path)
        .unwrap()
        .replace("action = \"erase\"", "action = \"obliterate\"");
    std::fs::write(&path, text).unwrap();
    let err = fails(&env.run(&["queue"]));
    assert!(
        err.contains("retention.toml:")
            && err.contains("obliterate")
            && err.contains("policy_invalid"),
        "{err}"
    );
    let err = fails(&env.run(&["serve", "--listen", "127.0.0.1:0"]));
    assert!(
        err.contains("retention.toml:") && err.contains("obliterate"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn config_rejects_unknown_keys_takes_env_overrides_and_works_from_anywhere() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let text = common::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{text}\n[server]\nlisten = \"127.0.0.1:0\"\nmax_body = 5\n"),
    )
    .unwrap();
    let err = fails(&env.run(&["queue"]));
    assert!(
        err.contains("max_body") && err.contains("config_invalid"),
        "{err}"
    );
    std::fs::write(&env.config, &text).unwrap();
    // Relative paths are relative to the config file, whatever the working directory.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .current_dir(elsewhere.path())
        .arg("--config")
        .arg(&env.config)
        .args(["queue", "--json"])
        .output()
        .unwrap();
    ok(&out);
    assert!(env.path().join("var/quietus.db").exists());
    // Every key can come from the environment.
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .args(["queue"])
        .env("QUIETUS_POLICIES__DIR", "no-such-folder")
        .output()
        .unwrap();
    let err = fails(&out);
    assert!(err.contains("no-such-folder"), "{err}");
}

/// The binary with this env's config and `QUIETUS_STORE__URL` set to `store`.
fn run_on_store(env: &Env, store: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .args(args)
        .env_remove("QUIETUS_CONFIG")
        .env("QUIETUS_LOG", "warn")
        .env("QUIETUS_STORE__URL", store)
        .output()
        .unwrap()
}

async fn pg_tables(url: &str) -> i64 {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema()")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    n
}

/// A mistyped state-store URL must not look like an empty queue. Only `serve`, `demo` and
/// `store init` create a store; every other command refuses a store that does not exist
/// (a SQLite file that is not there, a database that holds no quietus store, such as the
/// CRM's), names it, and creates nothing.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_does_not_exist_is_refused_and_only_created_on_purpose(
    #[case] backend: Backend,
) {
    {
        let kind = StoreKind::of(backend).await;
        let label = kind.label();
        let env = Env::new(&kind).await;
        let ticket = env.write("t.json", ERASURE_TICKET);
        let ticket = ticket.to_str().unwrap();
        // (URL, how the error names it, a second one for `serve`)
        let (missing, named, for_serve, extra) = match &kind {
            StoreKind::Sqlite => (
                "sqlite://var/quietus-typo.db".to_owned(),
                env.path().join("var/quietus-typo.db").display().to_string(),
                "sqlite://var/served.db".to_owned(),
                Vec::new(),
            ),
            StoreKind::Postgres(_) => {
                let a = Db::postgres().await;
                let b = Db::postgres().await;
                let (ua, na, ub) = (a.url.clone(), a.name.clone(), b.url.clone());
                (ua, na, ub, vec![a, b])
            }
        };
        let mut foreign = vec![missing.clone()];
        if matches!(kind, StoreKind::Sqlite) {
            // Another application's database: the demo CRM.
            foreign.push("sqlite://crm.db".to_owned());
        }
        let crm_file = env.path().join("crm.db");
        let crm_before = common::read(&crm_file).unwrap();
        for url in &foreign {
            for args in [
                vec!["queue"],
                vec!["queue", "--json"],
                vec!["submit", ticket],
                vec!["show", "abcd"],
                vec!["approve", "abcd"],
                vec!["run"],
                vec!["restore", "abcd"],
                vec!["retry", "abcd"],
            ] {
                let err = fails(&run_on_store(&env, url, &args));
                assert!(
                    err.contains("no quietus state store") && err.contains("quietus store init"),
                    "{label}: {args:?} on {url}: {err}"
                );
                if url == &missing {
                    assert!(
                        err.contains(&named),
                        "{label}: {args:?}: the error names the store: {err}"
                    );
                }
            }
        }
        match &kind {
            StoreKind::Sqlite => {
                assert!(
                    !env.path().join("var/quietus-typo.db").exists(),
                    "{label}: nothing created"
                );
                let crm = env
                    .crm_count(
                        &common::CrmKind::Sqlite,
                        "FROM sqlite_master WHERE name IN ('requests', '_sqlx_migrations')",
                    )
                    .await;
                assert_eq!(
                    crm, 0,
                    "{label}: the CRM database was not turned into a store"
                );
                assert!(
                    common::read(&crm_file).unwrap() == crm_before,
                    "{label}: the CRM database file is untouched"
                );
            }
            StoreKind::Postgres(_) => {
                assert_eq!(pg_tables(&missing).await, 0, "{label}: nothing created");
            }
        }

        // `store init` creates it (once; again is fine), and then it is an empty queue.
        let out = ok(&run_on_store(&env, &missing, &["store", "init"]));
        assert!(out.contains("created"), "{label}: {out}");
        let out = ok(&run_on_store(&env, &missing, &["store", "init"]));
        assert!(out.contains("already"), "{label}: {out}");
        let out = ok(&run_on_store(&env, &missing, &["queue"]));
        assert_eq!(out.trim(), "no requests", "{label}");

        // `serve` creates its store, and says so.
        let mut child = std::process::Command::new(BIN)
            .arg("--config")
            .arg(&env.config)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("QUIETUS_LOG", "warn")
            .env("QUIETUS_STORE__URL", &for_serve)
            .env("QUIETUS_JOBS__POLL_SECONDS", "3600")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert!(line.starts_with("listening on"), "{label}: {line}");
        common::stop(child);
        ok(&run_on_store(&env, &for_serve, &["queue"]));

        for db in extra {
            db.drop_now().await;
        }
        kind.cleanup().await;
    }
}

/// Every date or time in `text` is followed by the policy's zone, `(Asia/Shanghai)`.
#[track_caller]
fn assert_dates_labelled(what: &str, text: &str) {
    let re = regex::Regex::new(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?").unwrap();
    for m in re.find_iter(text) {
        assert!(
            text[m.end()..].starts_with(" (Asia/Shanghai)"),
            "{what}: {:?} is not labelled with the policy's zone:\n{text}",
            &text[m.start()..(m.end() + 20).min(text.len())]
        );
    }
}

/// Text parts of every message in the outbox folder, by kind (the `X-Quietus-Kind` is not
/// a header, so: by subject).
fn outbox_texts(env: &Env) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(env.path().join("var/outbox")).unwrap() {
        let raw = common::read(e.unwrap().path()).unwrap();
        let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let subject = msg.subject().unwrap_or_default().to_owned();
        let text = msg.body_text(0).unwrap_or_default().to_string();
        // minijinja escapes `/` in HTML; the reader sees `/`.
        let html = msg.body_html(0).unwrap_or_default().replace("&#x2f;", "/");
        out.push((subject.clone(), text));
        out.push((format!("{subject} (HTML)"), html));
    }
    out
}

/// Dates agree across outputs: plans, tasks, the queue, `show` and every email show each
/// date in the policy's time zone (Asia/Shanghai), labelled. Received at 17:00 UTC on 1
/// December is 2 December there: that is the day of receipt everywhere.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn every_date_a_person_reads_is_in_the_policy_zone_and_labelled(#[case] backend: Backend) {
    const RECEIVED: &str = "2026-12-01T17:00:00Z";
    const RUN: &str = "2027-01-01T03:00:00Z";
    {
        let kind = StoreKind::of(backend).await;
        let label = kind.label();
        let env = Env::new(&kind).await;
        // A system with no connector: its owner is emailed the task, with its due date.
        std::fs::write(
            env.path().join("policies/systems/legacy.toml"),
            "name = \"legacy_erp\"\ndriver = \"manual\"\nowner_email = \"erp-admins@corp.example\"\n\n\
             [[table]]\nname = \"staff\"\nkey = \"id\"\nidentity = { email = \"email\" }\n\
             columns = { email = \"user.contact.email\" }\n",
        )
        .unwrap();
        let exit = env.write("exit.json", EXIT_TICKET);
        let exit = ok(&env.run_at(&["submit", exit.to_str().unwrap()], Some(RECEIVED), None))
            .trim()
            .to_owned();
        let erasure = env.write("erasure.json", ERASURE_TICKET);
        let erasure = ok(&env.run_at(&["submit", erasure.to_str().unwrap()], Some(RECEIVED), None))
            .trim()
            .to_owned();
        let plan = ok(&env.run_at(&["plan", &exit], Some(RECEIVED), None));
        assert_dates_labelled(&format!("{label}: plan"), &plan);
        assert!(
            plan.contains("2026-12-31 (Asia/Shanghai)"),
            "{label}: the exit date:\n{plan}"
        );
        ok(&env.run_at(&["approve", &exit], Some(RECEIVED), None));
        ok(&env.run_at(
            &["extend", &erasure, "--reason", "many systems"],
            Some(RECEIVED),
            None,
        ));
        let q = ok(&env.run_at(&["queue"], Some(RECEIVED), None));
        assert_dates_labelled(&format!("{label}: queue"), &q);
        env.run_at(&["run"], Some(RUN), None);
        // The owner of the system with no connector confirms; the exit completes.
        let shown = json(&ok(&env.run_at(
            &["show", &exit, "--json"],
            Some(RUN),
            None,
        )));
        let manual = shown["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["kind"] == "manual")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        ok(&env.run_at(&["confirm", &manual], Some(RUN), None));
        ok(&env.run_at(&["run"], Some(RUN), None));
        for id in [&exit, &erasure] {
            let shown = ok(&env.run_at(&["show", id], Some(RUN), None));
            // The ticket is shown as it came in.
            let shown: String = shown
                .lines()
                .filter(|l| !l.trim_start().starts_with("ticket:"))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_dates_labelled(&format!("{label}: show"), &shown);
            assert!(
                shown.contains("received:    2026-12-02 01:00 (Asia/Shanghai)"),
                "{label}: {shown}"
            );
        }
        let mails = outbox_texts(&env);
        for (subject, text) in &mails {
            assert_dates_labelled(&format!("{label}: mail {subject:?}"), text);
        }
        let ack = mails
            .iter()
            .find(|(s, t)| s.starts_with("We received") && t.contains(&erasure))
            .unwrap();
        assert!(
            ack.1.contains(" on 2026-12-02 (Asia/Shanghai)"),
            "{label}: {}",
            ack.1
        );
        let manual = mails
            .iter()
            .find(|(s, _)| s.contains("legacy_erp"))
            .unwrap();
        assert!(
            manual.1.contains("by 2026-12-31 (Asia/Shanghai)"),
            "{label}: {}",
            manual.1
        );
        for kind in ["is complete", "need more time", "is approved"] {
            assert!(
                mails.iter().any(|(s, _)| s.contains(kind)),
                "{label}: a message {kind:?}: {:?}",
                mails.iter().map(|(s, _)| s).collect::<Vec<_>>()
            );
        }
        kind.cleanup().await;
    }
}

#[path = "cli/approve_many.rs"]
mod approve_many;
