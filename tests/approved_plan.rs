//! Nothing happens that was not approved: a plan is blocked when the data map names a
//! column the database lacks, or when the successor of an exit is the leaver under
//! another identity; execution carries out exactly the approved plan, and when the
//! policies change the plan after approval, the request goes back to the DPO with the
//! difference (or, once completed, its follow-up needs attention) — never a quieter
//! erasure than approved.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use rstest::rstest;

use common::{Backend, CrmKind, EXIT_TICKET, Env, StoreKind, fails, ok, stdout};
use serde_json::Value;

/// When tickets are submitted and approved (before the exit date).
const SUBMIT_AT: &str = "2026-12-01T03:00:00Z";
/// When the work runs (the day after the exit date: the exit's tasks are due).
const RUN_AT: &str = "2027-01-01T03:00:00Z";

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

async fn env_for(store: &StoreKind, crm: &CrmKind) -> Env {
    let env = Env::new(store).await;
    env.use_crm(crm).await;
    let text = common::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{text}\n[mail]\ndpo = \"dpo@corp.example\"\n"),
    )
    .unwrap();
    env
}

fn submit(env: &Env, name: &str, ticket: &str) -> String {
    let f = env.write(name, ticket);
    ok(&env.run_at(&["submit", f.to_str().unwrap()], Some(SUBMIT_AT), None))
        .trim()
        .to_owned()
}

fn show(env: &Env, id: &str, at: &str) -> Value {
    json(&ok(&env.run_at(&["show", id, "--json"], Some(at), None)))
}

/// Replace `from` (which must be there) with `to` in a policy file.
fn edit(env: &Env, file: &str, from: &str, to: &str) {
    let path = env.path().join("policies").join(file);
    let text = common::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

const EMPLOYEE_COLUMNS: &str = r#"mobile = "user.contact.phone_number" }"#;

// ---------------------------------------------------------------------------------------
// Item 18: the successor is the leaver, known by another identity.

#[rstest]
#[case::sqlite(Backend::Sqlite, Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::crm_postgres(Backend::Sqlite, Backend::Postgres)]
#[cfg_attr(
    not(quietus_test_mysql),
    ignore = "needs MariaDB/MySQL: set QUIETUS_TEST_MYSQL_URL"
)]
#[case::crm_mysql(Backend::Sqlite, Backend::Mysql)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::store_postgres(Backend::Postgres, Backend::Sqlite)]
#[tokio::test(flavor = "multi_thread")]
async fn a_successor_who_is_the_leaver_under_another_identity_blocks_the_plan(
    #[case] store: Backend,
    #[case] crm: Backend,
) {
    {
        let (store, crm) = (StoreKind::of(store).await, CrmKind::of(crm).await);
        let label = format!("store {}, crm {}", store.label(), crm.label());
        let env = env_for(&store, &crm).await;
        // The leaver by employee id, the successor by the same person's work email.
        let id = submit(
            &env,
            "exit.json",
            r#"{"kind":"exit","external_id":"HR-8","subject":{"employee_id":"E100"},"exit_date":"2026-12-31","successor":{"email":"fang.wang@corp.example"},"jurisdiction":"PIPL"}"#,
        );
        let out = env.run_at(&["plan", &id, "--json"], Some(SUBMIT_AT), None);
        assert!(!out.status.success(), "{label}: plan exits 1 when blocked");
        let plan = json(&stdout(&out));
        let blocked: Vec<&str> = plan["blocked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap())
            .collect();
        assert!(
            blocked
                .iter()
                .any(|b| b.contains("successor") && b.contains("leaver")),
            "{label}: {plan:#}"
        );
        assert!(
            !blocked.iter().any(|b| b.contains("fang.wang")),
            "{label}: no identity in the reason: {blocked:?}"
        );
        let err = fails(&env.run_at(&["approve", &id], Some(SUBMIT_AT), None));
        assert!(
            err.contains("plan_blocked") && err.contains("leaver"),
            "{label}: {err}"
        );
        assert_eq!(
            show(&env, &id, SUBMIT_AT)["request"]["state"],
            "pending_review",
            "{label}"
        );
        // Nothing ran: the account is active, the customers still the leaver's.
        let run = env.run_at(&["run", "--json"], Some(RUN_AT), None);
        assert!(run.status.success(), "{label}");
        assert_eq!(
            env.crm_count(
                &crm,
                "FROM employees WHERE emp_no = 'E100' AND status = 'active'"
            )
            .await,
            1,
            "{label}"
        );
        assert_eq!(
            env.crm_count(&crm, "FROM customers WHERE owner_id = 5")
                .await,
            6,
            "{label}"
        );
        store.cleanup().await;
        crm.cleanup().await;
    }
}

// ---------------------------------------------------------------------------------------
// Item 2: mapped columns exist before approval; execution is the approved plan.

#[rstest]
#[case::sqlite(Backend::Sqlite, Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::crm_postgres(Backend::Sqlite, Backend::Postgres)]
#[cfg_attr(
    not(quietus_test_mysql),
    ignore = "needs MariaDB/MySQL: set QUIETUS_TEST_MYSQL_URL"
)]
#[case::crm_mysql(Backend::Sqlite, Backend::Mysql)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::store_postgres(Backend::Postgres, Backend::Sqlite)]
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_naming_a_column_the_database_lacks_is_blocked_and_cannot_be_approved(
    #[case] store: Backend,
    #[case] crm: Backend,
) {
    {
        let (store, crm) = (StoreKind::of(store).await, CrmKind::of(crm).await);
        let label = format!("store {}, crm {}", store.label(), crm.label());
        let env = env_for(&store, &crm).await;
        edit(
            &env,
            "systems/crm.toml",
            EMPLOYEE_COLUMNS,
            r#"mobile = "user.contact.phone_number", nickname = "user.name" }"#,
        );
        let id = submit(&env, "exit.json", EXIT_TICKET);
        let out = env.run_at(&["plan", &id], Some(SUBMIT_AT), None);
        assert!(!out.status.success(), "{label}: plan exits 1 when blocked");
        let text = stdout(&out);
        assert!(
            text.contains("BLOCKED") && text.contains("employees.nickname"),
            "{label}: {text}"
        );
        let err = fails(&env.run_at(&["approve", &id], Some(SUBMIT_AT), None));
        assert!(
            err.contains("plan_blocked") && err.contains("employees.nickname"),
            "{label}: {err}"
        );
        // `doctor` says the same.
        let doctor = env.run_at(&["doctor"], Some(SUBMIT_AT), None);
        assert!(
            stdout(&doctor).contains("employees.nickname"),
            "{label}: {}",
            stdout(&doctor)
        );
        let shown = show(&env, &id, SUBMIT_AT);
        assert_eq!(shown["request"]["state"], "pending_review", "{label}");
        assert!(shown["tasks"].as_array().unwrap().is_empty(), "{label}");
        // With the data map fixed, the plan can be approved.
        edit(
            &env,
            "systems/crm.toml",
            r#", nickname = "user.name" }"#,
            " }",
        );
        ok(&env.run_at(&["approve", &id], Some(SUBMIT_AT), None));
        store.cleanup().await;
        crm.cleanup().await;
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite, Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::crm_postgres(Backend::Sqlite, Backend::Postgres)]
#[cfg_attr(
    not(quietus_test_mysql),
    ignore = "needs MariaDB/MySQL: set QUIETUS_TEST_MYSQL_URL"
)]
#[case::crm_mysql(Backend::Sqlite, Backend::Mysql)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::store_postgres(Backend::Postgres, Backend::Sqlite)]
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_the_policies_changed_after_approval_goes_back_to_the_dpo_and_nothing_runs(
    #[case] store: Backend,
    #[case] crm: Backend,
) {
    {
        let (store, crm) = (StoreKind::of(store).await, CrmKind::of(crm).await);
        let label = format!("store {}, crm {}", store.label(), crm.label());
        let env = env_for(&store, &crm).await;
        let id = submit(&env, "exit.json", EXIT_TICKET);
        ok(&env.run_at(&["approve", &id], Some(SUBMIT_AT), None));
        let approved = show(&env, &id, SUBMIT_AT)["plan"].clone();
        let employees = approved["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["table"] == "employees" && e["action"] == "anonymize")
            .unwrap()
            .clone();
        assert_eq!(
            employees["columns"],
            serde_json::json!(["email", "mobile", "name"]),
            "{label}"
        );
        // After approval, the data map stops listing the mobile number: carried out now,
        // the erasure would be quieter than the one approved.
        edit(
            &env,
            "systems/crm.toml",
            r#", mobile = "user.contact.phone_number" }"#,
            " }",
        );
        let run = env.run_at(&["run", "--json"], Some(RUN_AT), None);
        let summary = json(&stdout(&run));
        assert_eq!(summary["done"], 0, "{label}: {summary:#}");
        assert!(
            summary["completed_requests"].as_array().unwrap().is_empty(),
            "{label}: {summary:#}"
        );
        let shown = show(&env, &id, RUN_AT);
        assert_eq!(
            shown["request"]["state"], "pending_review",
            "{label}: {:#}",
            shown["history"]
        );
        let last = shown["history"].as_array().unwrap().last().unwrap().clone();
        let why = last["reason"].as_str().unwrap();
        assert!(
            why.contains("crm.employees") && why.contains("mobile"),
            "{label}: the difference is in the history: {why}"
        );
        // Nothing changed in the CRM, and nothing is left to run.
        assert_eq!(
            env.crm_count(
                &crm,
                "FROM employees WHERE id = 5 AND status = 'active' AND mobile IS NOT NULL AND email IS NOT NULL"
            )
            .await,
            1,
            "{label}"
        );
        assert_eq!(
            env.crm_count(&crm, "FROM employee_roles WHERE employee_id = 5")
                .await,
            3,
            "{label}"
        );
        for t in shown["tasks"].as_array().unwrap() {
            assert_eq!(t["state"], "cancelled", "{label}: {t:#}");
        }
        let text = ok(&env.run_at(&["show", &id], Some(RUN_AT), None));
        assert!(
            text.contains("mobile") && text.contains("pending_review"),
            "{label}: {text}"
        );
        // The DPO is told.
        let ctx = env.context().await;
        let mails = ctx.store.outbox_of(&id).await.unwrap();
        assert!(
            mails
                .iter()
                .any(|m| m.recipient == "dpo@corp.example" && m.kind.as_str() == "failure_alert"),
            "{label}: {:?}",
            mails
                .iter()
                .map(|m| (&m.recipient, &m.kind))
                .collect::<Vec<_>>()
        );
        ctx.store.close().await;
        // The DPO approves the plan as it is now; it is carried out as approved.
        ok(&env.run_at(&["approve", &id], Some(RUN_AT), None));
        let run = env.run_at(&["run", "--json"], Some(RUN_AT), None);
        let summary = json(&stdout(&run));
        assert!(run.status.success(), "{label}: {summary:#}");
        let shown = show(&env, &id, RUN_AT);
        assert_eq!(shown["request"]["state"], "completed", "{label}");
        assert_eq!(
            env.crm_count(
                &crm,
                "FROM employees WHERE id = 5 AND status = 'disabled' AND email IS NULL AND mobile IS NOT NULL"
            )
            .await,
            1,
            "{label}: exactly the plan approved the second time"
        );
        store.cleanup().await;
        crm.cleanup().await;
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
async fn a_follow_up_whose_rule_changed_after_completion_needs_attention_and_erases_nothing(
    #[case] backend: Backend,
) {
    {
        let store = StoreKind::of(backend).await;
        let label = format!("store {}", store.label());
        let crm = CrmKind::Sqlite;
        let env = env_for(&store, &crm).await;
        let id = submit(&env, "exit.json", EXIT_TICKET);
        ok(&env.run_at(&["approve", &id], Some(SUBMIT_AT), None));
        // A change to the policy files that changes no plan is no reason to stop.
        edit(
            &env,
            "retention.toml",
            "[[rule]]",
            "# reviewed 2026-12\n[[rule]]",
        );
        let summary = json(&ok(&env.run_at(&["run", "--json"], Some(RUN_AT), None)));
        assert_eq!(
            summary["completed_requests"][0],
            id.as_str(),
            "{label}: {summary:#}"
        );
        // Then the labour-contract retention is lengthened; two years on, the contract's
        // follow-up must not erase it under the old rule.
        edit(
            &env,
            "retention.toml",
            "for = \"2 years\"\nfrom = \"exit_date\"",
            "for = \"3 years\"\nfrom = \"exit_date\"",
        );
        let later = "2029-01-02T03:00:00Z";
        let out = env.run_at(&["run", "--json"], Some(later), None);
        assert!(
            !out.status.success(),
            "{label}: run exits 1 when a task needs attention"
        );
        assert_eq!(
            env.crm_count(&crm, "FROM labour_contracts WHERE employee_id = 5")
                .await,
            1,
            "{label}: the contract is kept"
        );
        let shown = show(&env, &id, later);
        assert_eq!(shown["request"]["state"], "completed", "{label}");
        let task = shown["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| {
                t["kind"] == "followup" && t["body"].as_str().unwrap().contains("labour_contracts")
            })
            .unwrap()
            .clone();
        assert_eq!(task["state"], "needs_attention", "{label}: {task:#}");
        let err = task["last_error"].as_str().unwrap();
        assert!(
            err.contains("crm.labour_contracts") && err.contains("2029-12-31"),
            "{label}: {err}"
        );
        let ctx = env.context().await;
        let mails = ctx.store.outbox_of(&id).await.unwrap();
        assert!(
            mails
                .iter()
                .any(|m| m.recipient == "dpo@corp.example" && m.kind.as_str() == "failure_alert"),
            "{label}"
        );
        ctx.store.close().await;
        store.cleanup().await;
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
async fn a_column_dropped_from_the_database_after_approval_stops_the_exit_before_anything_changes(
    #[case] backend: Backend,
) {
    {
        let store = StoreKind::of(backend).await;
        let label = format!("store {}", store.label());
        let crm = CrmKind::Sqlite;
        let env = env_for(&store, &crm).await;
        let id = submit(&env, "exit.json", EXIT_TICKET);
        ok(&env.run_at(&["approve", &id], Some(SUBMIT_AT), None));
        // The CRM drops a mapped column after approval.
        env.crm_query(&crm, "DROP INDEX idx_employees_mobile").await;
        env.crm_query(&crm, "ALTER TABLE employees DROP COLUMN mobile")
            .await;
        let run = env.run_at(&["run", "--json"], Some(RUN_AT), None);
        let summary = json(&stdout(&run));
        assert_eq!(summary["done"], 0, "{label}: {summary:#}");
        // Not even the account was disabled: an exit that cannot be finished is not begun.
        assert_eq!(
            env.crm_count(
                &crm,
                "FROM employees WHERE id = 5 AND status = 'active' AND left_at IS NULL"
            )
            .await,
            1,
            "{label}"
        );
        let shown = show(&env, &id, RUN_AT);
        let errors: Vec<&str> = shown["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["last_error"].as_str())
            .collect();
        assert!(
            !errors.is_empty() && errors.iter().all(|e| e.contains("employees.mobile")),
            "{label}: {errors:?}"
        );
        store.cleanup().await;
    }
}

/// A worker that leased several tasks of one request (on different systems) finds, when
/// it comes to the second, that the first sent the request back to the DPO (the plan
/// changed since approval) and cancelled it: the second does nothing at all — no archive
/// begun, no row read into a backup, nothing shredded afterwards — and says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_cancelled_after_its_lease_begins_nothing() {
    let (store, crm) = (
        StoreKind::of(Backend::Sqlite).await,
        CrmKind::of(Backend::Sqlite).await,
    );
    let env = env_for(&store, &crm).await;
    let id = submit(&env, "exit.json", EXIT_TICKET);
    ok(&env.run_at(&["approve", &id], Some(SUBMIT_AT), None));
    edit(
        &env,
        "systems/crm.toml",
        r#", mobile = "user.contact.phone_number" }"#,
        " }",
    );
    let app = quietus::app::App::open(quietus::config::Config::load(Some(&env.config)).unwrap())
        .await
        .unwrap();
    let ctx = &app.ctx;
    let s = app.worker().unwrap();
    let now = chrono::DateTime::parse_from_rfc3339(RUN_AT)
        .unwrap()
        .to_utc();
    quietus::jobs::schedule_approved(ctx, "quietus", now)
        .await
        .unwrap();
    let until = now + chrono::Duration::minutes(5);
    let first = ctx
        .store
        .lease(&s.worker, now, until, 1, true)
        .await
        .unwrap();
    // Its other tasks were leased by the same worker too (as tasks of one request on
    // other systems are, and run beside it).
    let quietus::store::Pool::Sqlite(pool) = &ctx.store.pool else {
        unreachable!("a SQLite store")
    };
    sqlx::query("UPDATE tasks SET lease_owner = $1, lease_expires_at = $2 WHERE request_id = $3")
        .bind(&s.worker)
        .bind(until)
        .bind(&id)
        .execute(pool)
        .await
        .unwrap();
    let mut leased = first.clone();
    for t in ctx.store.tasks_of(&id).await.unwrap() {
        if t.id != first[0].id && t.state == quietus::jobs::TaskState::Pending {
            leased.push(t);
        }
    }
    assert!(leased.len() >= 2, "the exit has several tasks: {leased:?}");
    let mut summary = quietus::jobs::RunSummary::default();
    // The first finds the difference: the request goes back, its tasks are cancelled.
    quietus::jobs::run_one(ctx, &s, &leased[0], &mut summary)
        .await
        .unwrap();
    assert_eq!(
        ctx.store.request(&id).await.unwrap().state,
        quietus::lifecycle::State::PendingReview
    );
    for t in &leased[1..] {
        quietus::jobs::run_one(ctx, &s, t, &mut summary)
            .await
            .unwrap();
        assert_eq!(summary.retried, 0, "{t:?}: {summary:?}");
        assert_eq!(
            ctx.store.task(&t.id).await.unwrap().state,
            quietus::jobs::TaskState::Cancelled,
            "{t:?}"
        );
    }
    let intents: Vec<(String, String)> = sqlx::query_as("SELECT id, task_id FROM archive_intents")
        .fetch_all(pool)
        .await
        .unwrap();
    assert!(
        intents.is_empty(),
        "archives begun for cancelled tasks: {intents:?}"
    );
    let last = ctx.store.history(&id).await.unwrap();
    let last = last.last().unwrap().reason.clone().unwrap_or_default();
    assert!(
        last.contains("crm.employees") && last.contains("mobile"),
        "the difference is the last word: {last:?}"
    );
    app.close().await;
    assert_eq!(
        env.crm_count(
            &crm,
            "FROM employees WHERE id = 5 AND status = 'active' AND mobile IS NOT NULL AND email IS NOT NULL"
        )
        .await,
        1
    );
    drop(env);
    store.cleanup().await;
    crm.cleanup().await;
}
