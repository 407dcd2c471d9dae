//! Nothing happens that was not approved: a plan is blocked when the data map names a
//! column the database lacks, or when the successor of an exit is the leaver under
//! another identity; execution carries out exactly the approved plan, and when the
//! policies change the plan after approval, the request goes back to the DPO with the
//! difference (or, once completed, its follow-up needs attention) — never a quieter
//! erasure than approved.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{CrmKind, EXIT_TICKET, Env, StoreKind, fails, ok, stdout};
use serde_json::Value;

/// When tickets are submitted and approved (before the exit date).
const SUBMIT_AT: &str = "2026-12-01T03:00:00Z";
/// When the work runs (the day after the exit date: the exit's tasks are due).
const RUN_AT: &str = "2027-01-01T03:00:00Z";

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// SQLite state store on every CRM database, and the PostgreSQL state store on the
/// SQLite CRM.
async fn setups() -> Vec<(StoreKind, CrmKind)> {
    let mut v: Vec<(StoreKind, CrmKind)> = CrmKind::all()
        .await
        .into_iter()
        .map(|c| (StoreKind::Sqlite, c))
        .collect();
    if let Some(db) = common::Db::postgres().await {
        v.push((StoreKind::Postgres(db), CrmKind::Sqlite));
    }
    v
}

async fn env_for(store: &StoreKind, crm: &CrmKind) -> Env {
    let env = Env::new(store).await;
    env.use_crm(crm).await;
    let text = std::fs::read_to_string(&env.config).unwrap();
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
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

const EMPLOYEE_COLUMNS: &str = r#"mobile = "user.contact.phone_number" }"#;

// ---------------------------------------------------------------------------------------
// Item 18: the successor is the leaver, known by another identity.

#[tokio::test(flavor = "multi_thread")]
async fn a_successor_who_is_the_leaver_under_another_identity_blocks_the_plan() {
    for (store, crm) in setups().await {
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
