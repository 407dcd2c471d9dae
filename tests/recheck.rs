//! `quietus verify --recheck` asks the live systems again about every table a receipt
//! says was changed: erased rows are absent, anonymised rows hold their replacement
//! values, disabled accounts are disabled, reassigned rows are owned by the successor.
//! A change made behind quietus' back afterwards is caught and named.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use rstest::rstest;

use std::path::{Path, PathBuf};

use common::{Backend, CrmKind, ERASURE_TICKET, EXIT_TICKET, Env, StoreKind, ok, stdout};

const SUBMIT_AT: &str = "2026-12-01T03:00:00Z";
const RUN_AT: &str = "2027-01-01T03:00:00Z";

fn carry_out(env: &Env, name: &str, ticket: &str) -> String {
    let f = env.write(name, ticket);
    let id = ok(&env.run_at(&["submit", f.to_str().unwrap()], Some(SUBMIT_AT), None))
        .trim()
        .to_owned();
    ok(&env.run_at(&["approve", &id], Some(SUBMIT_AT), None));
    ok(&env.run_at(&["run", "--json"], Some(RUN_AT), None));
    id
}

fn receipt_of(env: &Env, id: &str) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(env.path().join("var/receipts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{id}-"))
        })
        .collect();
    assert_eq!(v.len(), 1, "one receipt for {id}: {v:?}");
    v.remove(0)
}

/// `verify --recheck`: (holds, output).
fn recheck(env: &Env, receipt: &Path) -> (bool, String) {
    let out = env.run_at(
        &["verify", receipt.to_str().unwrap(), "--recheck"],
        Some(RUN_AT),
        None,
    );
    (out.status.success(), stdout(&out))
}

#[track_caller]
fn holds(label: &str, r: (bool, String)) -> String {
    assert!(r.0, "{label}: the receipt should hold:\n{}", r.1);
    assert!(r.1.contains("the receipt holds"), "{label}: {}", r.1);
    r.1
}

#[track_caller]
fn caught(label: &str, r: (bool, String), table: &str) {
    assert!(
        !r.0,
        "{label}: the change in {table} should be caught:\n{}",
        r.1
    );
    assert!(
        r.1.lines()
            .any(|l| l.starts_with("FAILED") && l.contains(&format!("crm.{table}"))),
        "{label}: the failure names crm.{table}:\n{}",
        r.1
    );
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
async fn recheck_checks_anonymised_disabled_and_reassigned_tables_of_an_exit(
    #[case] store: Backend,
    #[case] crm: Backend,
) {
    {
        let (store, crm) = (StoreKind::of(store).await, CrmKind::of(crm).await);
        let label = format!("store {}, crm {}", store.label(), crm.label());
        let env = Env::new(&store).await;
        env.use_crm(&crm).await;
        // One customer and one open deal the exit hands over.
        let customer = env
            .crm_value(
                &crm,
                "MIN(id)",
                "FROM customers WHERE owner_id = 5 AND status = 'active'",
            )
            .await
            .unwrap();
        let deal = env
            .crm_value(
                &crm,
                "MIN(id)",
                "FROM deals WHERE owner_id = 5 AND stage IN ('lead', 'negotiation')",
            )
            .await
            .unwrap();
        let id = carry_out(&env, "exit.json", EXIT_TICKET);
        let receipt = receipt_of(&env, &id);
        let text = holds(&label, recheck(&env, &receipt));
        for table in [
            "employees",
            "employee_roles",
            "personal_notes",
            "customers",
            "deals",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with("ok") && l.contains(&format!("crm.{table}"))),
                "{label}: {table} is re-checked:\n{text}"
            );
        }
        // Each change undone behind quietus' back is caught, and named.
        let undo: Vec<(&str, String, String)> = vec![
            (
                "employees",
                "UPDATE employees SET name = 'Fang Wang' WHERE id = 5".into(),
                "UPDATE employees SET name = '(departed employee)' WHERE id = 5".into(),
            ),
            (
                "employees",
                "UPDATE employees SET status = 'active' WHERE id = 5".into(),
                "UPDATE employees SET status = 'disabled' WHERE id = 5".into(),
            ),
            (
                "customers",
                format!("UPDATE customers SET owner_id = 5 WHERE id = {customer}"),
                format!("UPDATE customers SET owner_id = 25 WHERE id = {customer}"),
            ),
            (
                "deals",
                format!("UPDATE deals SET owner_id = 7 WHERE id = {deal}"),
                format!("UPDATE deals SET owner_id = 25 WHERE id = {deal}"),
            ),
            (
                "personal_notes",
                "INSERT INTO personal_notes (id, employee_id, created_at, body) VALUES (9001, 5, '2027-01-01', 'x')".into(),
                "DELETE FROM personal_notes WHERE id = 9001".into(),
            ),
        ];
        for (table, change, back) in &undo {
            env.crm_query(&crm, change).await;
            caught(
                &format!("{label}: {change}"),
                recheck(&env, &receipt),
                table,
            );
            env.crm_query(&crm, back).await;
            holds(&format!("{label}: after {back}"), recheck(&env, &receipt));
        }
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
async fn recheck_checks_the_anonymised_customer_of_an_erasure(
    #[case] store: Backend,
    #[case] crm: Backend,
) {
    {
        let (store, crm) = (StoreKind::of(store).await, CrmKind::of(crm).await);
        let label = format!("store {}, crm {}", store.label(), crm.label());
        let env = Env::new(&store).await;
        env.use_crm(&crm).await;
        let id = carry_out(&env, "erasure.json", ERASURE_TICKET);
        let receipt = receipt_of(&env, &id);
        holds(&label, recheck(&env, &receipt));
        let key = env
            .crm_value(
                &crm,
                "id",
                "FROM customers WHERE name = '(erased customer)' ORDER BY id",
            )
            .await
            .unwrap();
        env.crm_query(
            &crm,
            &format!("UPDATE customers SET email = 'olivia.chen@example.com' WHERE id = {key}"),
        )
        .await;
        caught(&label, recheck(&env, &receipt), "customers");
        env.crm_query(
            &crm,
            &format!("UPDATE customers SET email = NULL WHERE id = {key}"),
        )
        .await;
        holds(&label, recheck(&env, &receipt));
        store.cleanup().await;
        crm.cleanup().await;
    }
}
