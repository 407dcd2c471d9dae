//! Correctness at the edges (issue 7): a receipt means it happened, and nothing happens
//! that was not approved. Each test reproduces a defect seen on the landed code, on
//! SQLite and PostgreSQL state stores.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{Backend, CrmKind, Env, StoreKind, ok};
use rstest::rstest;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A second system, an HR database whose only mapped table is retained on exit (no
/// erasure, no account): its apply task changes nothing and only captures keys.
async fn add_hr_system(env: &Env) {
    let db = env.path().join("hr.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE contracts (id INTEGER PRIMARY KEY, emp_no TEXT NOT NULL, terms TEXT);
         CREATE INDEX contracts_emp ON contracts (emp_no);
         INSERT INTO contracts (emp_no, terms) VALUES ('E105', 'sales, 2019-2026'), ('E110', 'support');",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    std::fs::write(
        env.path().join("policies/systems/hr.toml"),
        "name = \"hr\"\ndriver = \"sqlite\"\nurl = \"sqlite://hr.db\"\n\n\
         [[table]]\nname = \"contracts\"\nkey = \"id\"\n\
         identity = { employee_id = \"emp_no\" }\n\
         columns = { terms = \"user.employment.contract\" }\n",
    )
    .unwrap();
}

async fn receipts_of(env: &Env, id: &str) -> usize {
    let ctx = env.context().await;
    let n = ctx.store.receipts_of(id).await.unwrap().len();
    ctx.store.close().await;
    n
}

async fn mail_kinds(env: &Env, id: &str) -> Vec<String> {
    let ctx = env.context().await;
    let kinds = ctx
        .store
        .outbox_of(id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.kind.to_string())
        .collect();
    ctx.store.close().await;
    kinds
}

/// The CRM account status of an employee (the demo CRM on SQLite).
async fn account_status(env: &Env, emp_no: &str) -> Option<String> {
    env.crm_value(
        &CrmKind::Sqlite,
        "status",
        &format!("FROM employees WHERE emp_no = '{emp_no}'"),
    )
    .await
}

fn state_of(env: &Env, id: &str, at: &str) -> String {
    let shown = json(&ok(&env.run_at(&["show", id, "--json"], Some(at), None)));
    shown["request"]["state"].as_str().unwrap().to_owned()
}

const FUTURE_EXIT: &str = r#"{"kind":"exit","external_id":"HR-9","subject":{"employee_id":"E105","email":"james.carter@corp.example"},"exit_date":"2026-12-31","successor":{"employee_id":"E200"},"jurisdiction":"PIPL"}"#;

/// Defect 1: an exit with a future exit date completed on the day it was approved (a
/// system with only retained rows had its apply task due at once), with a receipt for an
/// empty task and the completion email, while the account was still active.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn a_future_exit_stays_open_until_its_exit_date_then_completes_once(
    #[case] backend: Backend,
) {
    {
        let store = StoreKind::of(backend).await;
        let env = Env::new(&store).await;
        add_hr_system(&env).await;
        let label = store.label();
        let f = env.write("exit.json", FUTURE_EXIT);
        let at = "2026-12-01T03:00:00Z";
        let id = ok(&env.run_at(&["submit", f.to_str().unwrap()], Some(at), None))
            .trim()
            .to_owned();
        ok(&env.run_at(&["approve", &id], Some(at), None));
        let run = json(&ok(&env.run_at(&["run", "--json"], Some(at), None)));
        assert_eq!(run["completed_requests"], json("[]"), "{label}: {run}");
        assert_eq!(state_of(&env, &id, at), "scheduled", "{label}");
        assert_eq!(
            receipts_of(&env, &id).await,
            0,
            "{label}: no receipt before the work"
        );
        assert!(
            !mail_kinds(&env, &id)
                .await
                .contains(&"completion".to_owned()),
            "{label}: no completion email before the work"
        );
        assert_eq!(
            account_status(&env, "E105").await.as_deref(),
            Some("active"),
            "{label}"
        );
        // A week later: still nothing due.
        let later = "2026-12-08T03:00:00Z";
        ok(&env.run_at(&["run", "--json"], Some(later), None));
        assert_eq!(state_of(&env, &id, later), "scheduled", "{label}");
        // On the exit date (Asia/Shanghai), the work runs and the request completes, with one
        // receipt and one completion email.
        let exit = "2026-12-31T02:00:00Z";
        let run = json(&ok(&env.run_at(&["run", "--json"], Some(exit), None)));
        assert_eq!(
            run["completed_requests"],
            json(&format!("[\"{id}\"]")),
            "{label}: {run}"
        );
        assert_eq!(state_of(&env, &id, exit), "completed", "{label}");
        assert_eq!(receipts_of(&env, &id).await, 1, "{label}");
        let completions = mail_kinds(&env, &id)
            .await
            .into_iter()
            .filter(|k| k == "completion")
            .count();
        assert_eq!(completions, 1, "{label}");
        assert_eq!(
            account_status(&env, "E105").await.as_deref(),
            Some("disabled"),
            "{label}"
        );
        // The receipt covers every task that answered the request, the HR one included.
        let receipt = json(&ok(&env.run_at(&["show", &id, "--json"], Some(exit), None)));
        let tasks = receipt["tasks"].as_array().unwrap();
        assert!(
            tasks
                .iter()
                .any(|t| t["system"] == "hr" && t["state"] == "done"),
            "{label}: {receipt}"
        );
        drop(env);
        store.cleanup().await;
    }
}

/// Defect 7: a request with nothing to change got no receipt and no completion email.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn a_request_with_nothing_to_change_gets_a_receipt_and_one_completion_email(
    #[case] backend: Backend,
) {
    {
        let store = StoreKind::of(backend).await;
        let env = Env::new(&store).await;
        let label = store.label();
        let f = env.write(
            "t.json",
            r#"{"kind":"erasure","external_id":"T-0","subject":{"email":"nobody@example.org"},"jurisdiction":"GDPR"}"#,
        );
        let at = "2026-12-01T03:00:00Z";
        let id = ok(&env.run_at(&["submit", f.to_str().unwrap()], Some(at), None))
            .trim()
            .to_owned();
        ok(&env.run_at(&["approve", &id], Some(at), None));
        let run = json(&ok(&env.run_at(&["run", "--json"], Some(at), None)));
        assert_eq!(
            run["completed_requests"],
            json(&format!("[\"{id}\"]")),
            "{label}: {run}"
        );
        assert_eq!(
            run["receipts"].as_array().unwrap().len(),
            1,
            "{label}: {run}"
        );
        assert_eq!(state_of(&env, &id, at), "completed", "{label}");
        // The receipt verifies, and says nothing was changed.
        let file = run["receipts"][0].as_str().unwrap();
        ok(&env.run_at(&["verify", file], Some(at), None));
        let doc = json(&common::read_to_string(file).unwrap());
        assert_eq!(doc["body"]["tasks"], json("[]"), "{label}: {doc}");
        let completions = mail_kinds(&env, &id)
            .await
            .into_iter()
            .filter(|k| k == "completion")
            .count();
        assert_eq!(completions, 1, "{label}");
        // A second run issues nothing more.
        let again = json(&ok(&env.run_at(&["run", "--json"], Some(at), None)));
        assert_eq!(again["receipts"], json("[]"), "{label}");
        assert_eq!(receipts_of(&env, &id).await, 1, "{label}");
        drop(env);
        store.cleanup().await;
    }
}

/// Defect 17: an exit for someone who left long ago: the follow-up whose retention had
/// already ended ran before its keys were captured, recorded "changed 0" and was done for
/// ever; the contract (national id included) stayed with no open task.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn a_followup_whose_retention_ended_waits_for_its_keys_then_erases_now(
    #[case] backend: Backend,
) {
    {
        let store = StoreKind::of(backend).await;
        let env = Env::new(&store).await;
        let label = store.label();
        let f = env.write(
            "old.json",
            r#"{"kind":"exit","external_id":"HR-OLD","subject":{"employee_id":"E105"},"exit_date":"2023-06-30","successor":{"employee_id":"E200"},"jurisdiction":"PIPL"}"#,
        );
        let at = "2026-12-01T03:00:00Z";
        let id = ok(&env.run_at(&["submit", f.to_str().unwrap()], Some(at), None))
            .trim()
            .to_owned();
        ok(&env.run_at(&["approve", &id], Some(at), None));
        let before = env
            .crm_count(
                &CrmKind::Sqlite,
                "FROM labour_contracts WHERE employee_id = 6",
            )
            .await;
        assert!(before > 0, "{label}: the leaver has a contract");
        let run = json(&ok(&env.run_at(&["run", "--json"], Some(at), None)));
        assert_eq!(run["failed"], 0, "{label}: {run}");
        // The contract's two years ran out in 2025: it goes now, backup first.
        assert_eq!(
            env.crm_count(
                &CrmKind::Sqlite,
                "FROM labour_contracts WHERE employee_id = 6"
            )
            .await,
            0,
            "{label}: the contract whose retention ended is erased"
        );
        let shown = json(&ok(&env.run_at(&["show", &id, "--json"], Some(at), None)));
        let followups: Vec<&Value> = shown["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"] == "followup")
            .collect();
        let contract = followups
            .iter()
            .find(|t| {
                t["body"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("labour_contracts")
            })
            .unwrap_or_else(|| panic!("{label}: a contract follow-up: {shown}"));
        assert_eq!(contract["state"], "done", "{label}: {contract}");
        let result = json(contract["result"].as_str().unwrap());
        assert!(
            result["tables"][0]["changed"].as_u64().unwrap_or(0) > 0,
            "{label}: the follow-up acted on the captured rows: {result}"
        );
        assert_eq!(state_of(&env, &id, at), "completed", "{label}");
        drop(env);
        store.cleanup().await;
    }
}

fn add_dpo(env: &Env) {
    let text = common::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{text}\n[mail]\ndpo = \"dpo@corp.example\"\n"),
    )
    .unwrap();
}

/// An exit carried out on its exit date: (request id).
fn completed_exit(env: &Env) -> String {
    let f = env.write("exit.json", common::EXIT_TICKET);
    let at = "2026-12-01T03:00:00Z";
    let id = ok(&env.run_at(&["submit", f.to_str().unwrap()], Some(at), None))
        .trim()
        .to_owned();
    ok(&env.run_at(&["approve", &id], Some(at), None));
    ok(&env.run_at(&["run"], Some("2026-12-31T02:00:00Z"), None));
    assert_eq!(state_of(env, &id, "2026-12-31T02:00:00Z"), "completed");
    id
}

/// `restore` said "the subject and the DPO are told" whether or not a DPO address was
/// configured: it says who was told (in its JSON too), and no one else.
#[tokio::test(flavor = "multi_thread")]
async fn restore_says_who_was_told_and_no_one_else() {
    for with_dpo in [false, true] {
        let store = StoreKind::of(Backend::Sqlite).await;
        let env = Env::new(&store).await;
        if with_dpo {
            add_dpo(&env);
        }
        let id = completed_exit(&env);
        let at = "2027-01-04T03:00:00Z";
        let said = ok(&env.run_at(
            &[
                "restore",
                &id,
                "--yes",
                "--reason",
                "filed for the wrong person",
            ],
            Some(at),
            None,
        ));
        let kinds = mail_kinds(&env, &id).await;
        let restored = kinds.iter().filter(|k| *k == "restored").count();
        if with_dpo {
            assert_eq!(restored, 2, "{kinds:?}");
            assert!(said.contains("the subject and the DPO are told"), "{said}");
        } else {
            assert_eq!(restored, 1, "only the subject: {kinds:?}");
            assert!(!said.contains("the DPO are told"), "{said}");
            assert!(said.contains("the subject is told"), "{said}");
            assert!(
                said.contains("no DPO is told ([mail] dpo is not set)"),
                "{said}"
            );
        }
        let again = json(&ok(&env.run_at(
            &["restore", &id, "--yes", "--reason", "again", "--json"],
            Some(at),
            None,
        )));
        assert_eq!(again["told"], serde_json::json!([]), "{again}");
    }
}

/// Defect 3: `restore` left the follow-ups armed; two years on they deleted the restored
/// (active again) employee's contract.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn restore_records_its_state_cancels_pending_tasks_and_tells_people(
    #[case] backend: Backend,
) {
    {
        let store = StoreKind::of(backend).await;
        let env = Env::new(&store).await;
        add_dpo(&env);
        let label = store.label();
        let id = completed_exit(&env);
        let at = "2027-01-04T03:00:00Z";
        // Without a terminal, a restore must be confirmed with --yes; nothing changes.
        let refused = env.run_at(
            &["restore", &id, "--reason", "filed for the wrong person"],
            Some(at),
            None,
        );
        assert!(!refused.status.success(), "{label}");
        assert!(common::stderr(&refused).contains("--yes"), "{label}");
        assert_eq!(state_of(&env, &id, at), "completed", "{label}");
        // A reason is needed.
        let no_reason = env.run_at(&["restore", &id, "--yes"], Some(at), None);
        assert!(common::stderr(&no_reason).contains("--reason"), "{label}");

        let out = json(&ok(&env.run_at(
            &[
                "restore",
                &id,
                "--yes",
                "--reason",
                "filed for the wrong person",
                "--json",
            ],
            Some(at),
            None,
        )));
        assert_eq!(out["state_changed"], true, "{label}: {out}");
        let shown = json(&ok(&env.run_at(&["show", &id, "--json"], Some(at), None)));
        assert_eq!(shown["request"]["state"], "restored", "{label}");
        let last = shown["history"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["to_state"] == "restored")
            .unwrap()
            .clone();
        assert_eq!(last["from_state"], "completed", "{label}: {last}");
        assert!(
            last["reason"]
                .as_str()
                .unwrap()
                .contains("filed for the wrong person"),
            "{label}: {last}"
        );
        assert!(
            last["actor"].as_str().unwrap().starts_with("cli:"),
            "{label}"
        );
        for t in shown["tasks"].as_array().unwrap() {
            assert!(
                t["state"] == "done" || t["state"] == "cancelled",
                "{label}: no task of a restored request is pending: {t}"
            );
        }
        let q = ok(&env.run_at(&["queue"], Some(at), None));
        assert!(q.contains("restored"), "{label}: {q}");
        let kinds = mail_kinds(&env, &id).await;
        assert_eq!(
            kinds.iter().filter(|k| *k == "restored").count(),
            2,
            "{label}: the subject and the DPO are told: {kinds:?}"
        );
        // Run again, a restore changes nothing more and says so.
        let again = json(&ok(&env.run_at(
            &["restore", &id, "--yes", "--reason", "again", "--json"],
            Some(at),
            None,
        )));
        assert_eq!(again["state_changed"], false, "{label}");
        // Two years and more on, the restored employee's contract is still there.
        let contracts = env
            .crm_count(
                &CrmKind::Sqlite,
                "FROM labour_contracts WHERE employee_id = 5",
            )
            .await;
        assert!(contracts > 0, "{label}");
        ok(&env.run_at(&["run"], Some("2029-01-15T03:00:00Z"), None));
        ok(&env.run_at(&["run"], Some("2030-01-15T03:00:00Z"), None));
        assert_eq!(
            env.crm_count(
                &CrmKind::Sqlite,
                "FROM labour_contracts WHERE employee_id = 5"
            )
            .await,
            contracts,
            "{label}: follow-ups of a restored request never run"
        );
        assert_eq!(
            account_status(&env, "E100").await.as_deref(),
            Some("active"),
            "{label}"
        );
        drop(env);
        store.cleanup().await;
    }
}

/// Defect 4: restore refused to undo a retention follow-up whose own backup lived,
/// because the request's first backups had been shredded.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn restore_puts_back_what_lives_and_says_what_cannot_come_back(#[case] backend: Backend) {
    {
        let store = StoreKind::of(backend).await;
        let env = Env::new(&store).await;
        let label = store.label();
        let id = completed_exit(&env);
        // The labour contract's two years end on 2028-12-31: its follow-up erases it,
        // backup first. By then the exit's own backups (90 days) are long shredded.
        let at = "2029-01-02T03:00:00Z";
        ok(&env.run_at(&["run"], Some(at), None));
        assert_eq!(
            env.crm_count(
                &CrmKind::Sqlite,
                "FROM labour_contracts WHERE employee_id = 5"
            )
            .await,
            0,
            "{label}: the follow-up ran"
        );
        let out = env.run_at(
            &[
                "restore",
                &id,
                "--yes",
                "--reason",
                "contract needed in court",
                "--json",
            ],
            Some(at),
            None,
        );
        let rep = json(&common::stdout(&out));
        assert!(
            !out.status.success(),
            "{label}: exit 1 when something cannot come back"
        );
        let lost = rep["lost"].as_array().unwrap();
        assert!(!lost.is_empty(), "{label}: {rep}");
        assert!(
            lost.iter().all(|l| l["kind"] != "followup"),
            "{label}: only the shredded backups are lost: {rep}"
        );
        let restored: u64 = rep["tables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["table"] == "labour_contracts")
            .map(|t| t["restored"].as_u64().unwrap())
            .sum();
        assert!(restored > 0, "{label}: {rep}");
        assert!(
            env.crm_count(
                &CrmKind::Sqlite,
                "FROM labour_contracts WHERE employee_id = 5"
            )
            .await
                > 0,
            "{label}: the contract is back"
        );
        let text = ok(&env.run_at(&["show", &id], Some(at), None));
        assert!(text.contains("restored"), "{label}");
        drop(env);
        store.cleanup().await;
    }
}

/// Defect 11: approval saved the plan outside the state change, so a lost race left an
/// orphan plan behind.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn two_approvals_at_once_save_one_plan(#[case] backend: Backend) {
    use quietus::lifecycle::Decision;
    {
        let store = StoreKind::of(backend).await;
        let env = Env::new(&store).await;
        let label = store.label();
        let f = env.write("t.json", common::ERASURE_TICKET);
        let at = "2026-12-01T03:00:00Z";
        let id = ok(&env.run_at(&["submit", f.to_str().unwrap()], Some(at), None))
            .trim()
            .to_owned();
        let (a, b) = (env.context().await, env.context().await);
        let now = chrono::DateTime::parse_from_rfc3339(at).unwrap().to_utc();
        let (ra, rb) = tokio::join!(
            a.decide(&id, Decision::Approve, "dpo:a", None, now),
            b.decide(&id, Decision::Approve, "dpo:b", None, now)
        );
        assert!(
            ra.is_ok() != rb.is_ok(),
            "{label}: exactly one approval wins"
        );
        let plans: i64 = match &a.store.pool {
            quietus::store::Pool::Sqlite(p) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM plans WHERE request_id = $1")
                    .bind(&id)
                    .fetch_one(p)
                    .await
                    .unwrap()
            }
            quietus::store::Pool::Postgres(p) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM plans WHERE request_id = $1")
                    .bind(&id)
                    .fetch_one(p)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(plans, 1, "{label}: one plan, the approved one");
        a.store.close().await;
        b.store.close().await;
        drop(env);
        store.cleanup().await;
    }
}

/// Defect 12: an unknown identity role was read as the subject's (`_ => subject`).
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_stored_role_is_an_error_not_the_subject(#[case] backend: Backend) {
    {
        let store = StoreKind::of(backend).await;
        let env = Env::new(&store).await;
        let label = store.label();
        let f = env.write("exit.json", common::EXIT_TICKET);
        let at = "2026-12-01T03:00:00Z";
        let id = ok(&env.run_at(&["submit", f.to_str().unwrap()], Some(at), None))
            .trim()
            .to_owned();
        let ctx = env.context().await;
        let sql =
            "UPDATE identities SET role = 'witness' WHERE request_id = $1 AND role = 'successor'";
        match &ctx.store.pool {
            quietus::store::Pool::Sqlite(p) => {
                sqlx::query(sql).bind(&id).execute(p).await.unwrap();
            }
            quietus::store::Pool::Postgres(p) => {
                sqlx::query(sql).bind(&id).execute(p).await.unwrap();
            }
        }
        ctx.store.close().await;
        let out = env.run_at(&["show", &id], Some(at), None);
        assert!(!out.status.success(), "{label}");
        let err = common::stderr(&out);
        assert!(
            err.contains("witness"),
            "{label}: the error names the value: {err}"
        );
        let approve = env.run_at(&["approve", &id], Some(at), None);
        assert!(!approve.status.success(), "{label}: nothing acts on it");
        drop(env);
        store.cleanup().await;
    }
}

/// Defect 17 (its second half): an exit date years off is refused as implausible, with
/// an error naming the field and the bounds, and nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn an_implausible_exit_date_is_refused_and_nothing_is_stored() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let at = "2026-12-01T03:00:00Z";
    for (n, date) in ["2002-06-30", "2031-01-01"].iter().enumerate() {
        let f = env.write(
            &format!("x{n}.json"),
            &format!(
                r#"{{"kind":"exit","external_id":"HR-X{n}","subject":{{"employee_id":"E105"}},"exit_date":"{date}","successor":{{"employee_id":"E200"}}}}"#
            ),
        );
        let out = env.run_at(&["submit", f.to_str().unwrap()], Some(at), None);
        assert!(!out.status.success(), "{date}");
        let err = common::stderr(&out);
        assert!(
            err.contains("exit_date")
                && err.contains("not plausible")
                && err.contains("ticket_invalid"),
            "{date}: {err}"
        );
    }
    let q = json(&ok(&env.run_at(&["queue", "--json"], Some(at), None)));
    assert_eq!(q["requests"], json("[]"));
    // Within the bounds (three and a half years back) is accepted.
    let f = env.write(
        "ok.json",
        r#"{"kind":"exit","external_id":"HR-OK","subject":{"employee_id":"E105"},"exit_date":"2023-06-30","successor":{"employee_id":"E200"}}"#,
    );
    ok(&env.run_at(&["submit", f.to_str().unwrap()], Some(at), None));
}

/// A legal hold overrides erasure (GDPR Art. 17(3)(e)): the tasks of a held request do
/// not run until it is released; a cancelled request's tasks never run.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn a_held_request_runs_nothing_until_released_and_a_cancelled_one_never(
    #[case] backend: Backend,
) {
    {
        let store = StoreKind::of(backend).await;
        let env = Env::new(&store).await;
        let label = store.label();
        let f = env.write("exit.json", common::EXIT_TICKET);
        let at = "2026-12-01T03:00:00Z";
        let id = ok(&env.run_at(&["submit", f.to_str().unwrap()], Some(at), None))
            .trim()
            .to_owned();
        ok(&env.run_at(&["approve", &id], Some(at), None));
        ok(&env.run_at(&["run"], Some(at), None));
        ok(&env.run_at(
            &["hold", &id, "--reason", "litigation hold, case 12"],
            Some("2026-12-02T03:00:00Z"),
            None,
        ));
        let exit = "2026-12-31T02:00:00Z";
        let run = json(&ok(&env.run_at(&["run", "--json"], Some(exit), None)));
        assert_eq!(run["done"], 0, "{label}: {run}");
        assert_eq!(state_of(&env, &id, exit), "on_hold", "{label}");
        assert_eq!(
            account_status(&env, "E100").await.as_deref(),
            Some("active"),
            "{label}: nothing of a held request runs"
        );
        ok(&env.run_at(&["release", &id], Some(exit), None));
        ok(&env.run_at(&["run"], Some(exit), None));
        assert_eq!(state_of(&env, &id, exit), "completed", "{label}");

        // Cancelled after its tasks were made: they are cancelled with it.
        let f = env.write(
            "exit2.json",
            r#"{"kind":"exit","external_id":"HR-10","subject":{"employee_id":"E105"},"exit_date":"2026-12-31","successor":{"employee_id":"E200"},"jurisdiction":"PIPL"}"#,
        );
        let id2 = ok(&env.run_at(&["submit", f.to_str().unwrap()], Some(at), None))
            .trim()
            .to_owned();
        ok(&env.run_at(&["approve", &id2], Some(at), None));
        ok(&env.run_at(&["run"], Some(at), None));
        ok(&env.run_at(&["cancel", &id2], Some(at), None));
        let run = json(&ok(&env.run_at(&["run", "--json"], Some(exit), None)));
        assert_eq!(run["done"], 0, "{label}: {run}");
        let shown = json(&ok(&env.run_at(
            &["show", &id2, "--json"],
            Some(exit),
            None,
        )));
        for t in shown["tasks"].as_array().unwrap() {
            assert_eq!(t["state"], "cancelled", "{label}: {t}");
        }
        assert_eq!(
            account_status(&env, "E105").await.as_deref(),
            Some("active"),
            "{label}: nothing of a cancelled request runs"
        );
        drop(env);
        store.cleanup().await;
    }
}

/// Restoring a request that was held after part of its work ran: its tasks are cancelled
/// too (a release cannot re-arm them), the work done gets its receipt, and the subject
/// gets no "completed" email for a request that was undone.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn restoring_a_held_half_done_exit_cancels_its_work_and_sends_no_completion(
    #[case] backend: Backend,
) {
    let store = StoreKind::of(backend).await;
    let env = Env::new(&store).await;
    let label = store.label();
    let f = env.write("exit.json", common::EXIT_TICKET);
    let at = "2026-12-01T03:00:00Z";
    let id = ok(&env.run_at(&["submit", f.to_str().unwrap()], Some(at), None))
        .trim()
        .to_owned();
    ok(&env.run_at(&["approve", &id], Some(at), None));
    // The successor's account closes after approval: the hand-over fails, the disable ran.
    env.crm_query(
        &CrmKind::Sqlite,
        "UPDATE employees SET status = 'disabled' WHERE emp_no = 'E200'",
    )
    .await;
    let exit = "2026-12-31T02:00:00Z";
    env.run_at(&["run"], Some(exit), None);
    assert_eq!(state_of(&env, &id, exit), "failed", "{label}");
    assert_eq!(
        account_status(&env, "E100").await.as_deref(),
        Some("disabled"),
        "{label}"
    );
    ok(&env.run_at(&["hold", &id, "--reason", "leaver stays"], Some(exit), None));
    ok(&env.run_at(
        &[
            "restore",
            &id,
            "--yes",
            "--reason",
            "the leaver stays after all",
        ],
        Some(exit),
        None,
    ));
    assert_eq!(state_of(&env, &id, exit), "restored", "{label}");
    assert_eq!(
        account_status(&env, "E100").await.as_deref(),
        Some("active"),
        "{label}: the account is open again"
    );
    let release = env.run_at(&["release", &id], Some(exit), None);
    assert!(!release.status.success(), "{label}: restored is final");
    env.crm_query(
        &CrmKind::Sqlite,
        "UPDATE employees SET status = 'active' WHERE emp_no = 'E200'",
    )
    .await;
    let run = json(&common::stdout(&env.run_at(
        &["run", "--json"],
        Some("2027-01-05T02:00:00Z"),
        None,
    )));
    assert_eq!(
        run["done"], 0,
        "{label}: nothing of a restored request runs: {run}"
    );
    assert_eq!(
        receipts_of(&env, &id).await,
        1,
        "{label}: the disable is proven"
    );
    let kinds = mail_kinds(&env, &id).await;
    assert!(
        !kinds.contains(&"completion".to_owned()),
        "{label}: no completion email for a restored request: {kinds:?}"
    );
    assert_eq!(
        account_status(&env, "E100").await.as_deref(),
        Some("active"),
        "{label}"
    );
    drop(env);
    store.cleanup().await;
}
