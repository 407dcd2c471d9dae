//! Execution end to end, checked in the target databases afterwards: the exit and the
//! erasure on the demo CRM (SQLite, PostgreSQL, MariaDB), the backups opened with the
//! stock `age` and `zstd` tools, `quietus restore`, identities that try to inject SQL,
//! and a `quietus run` that has nothing left to do.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{
    Backend, CrmKind, ERASURE_TICKET, EXIT_TICKET, Env, StoreKind, fails, ok, stderr, stdout,
};
use rstest::rstest;
use serde_json::Value;

/// When tickets are submitted and approved (before the exit date).
const SUBMIT_AT: &str = "2026-12-01T03:00:00Z";
/// When the work runs (the day after the exit date: the exit's tasks are due).
const RUN_AT: &str = "2027-01-01T03:00:00Z";

/// A row of a table: column -> value as text (NULL: `None`).
type Row = BTreeMap<String, Option<String>>;
/// Every table of a database: table -> primary key -> row.
type Snapshot = BTreeMap<String, BTreeMap<String, Row>>;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

// ---------------------------------------------------------------------------------------
// The CRM, read directly.

async fn connect(env: &Env, crm: &CrmKind) -> common::OwnTarget {
    let (driver, url) = crm.driver_url();
    let url = if url.starts_with("sqlite:") {
        format!("sqlite://{}", env.path().join("crm.db").display())
    } else {
        url
    };
    let sys: quietus::policy::System = toml::from_str(&format!(
        "name = \"q\"\ndriver = \"{driver}\"\nurl = {url:?}\n"
    ))
    .unwrap();
    common::OwnTarget::open(&sys, env.path()).await.unwrap()
}

async fn rows(t: &quietus::targets::Target, sql: String) -> Vec<Vec<Option<String>>> {
    t.fetch_text(&quietus::targets::Statement { sql, binds: vec![] })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
}

/// Every table of the CRM with every row and column, as the database renders them as text.
async fn snapshot(env: &Env, crm: &CrmKind) -> Snapshot {
    let t = connect(env, crm).await;
    let (list, cast) = match crm {
        CrmKind::Sqlite => (
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
            "TEXT",
        ),
        CrmKind::Postgres(_) => (
            "SELECT CAST(table_name AS TEXT) FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1",
            "TEXT",
        ),
        CrmKind::Mysql(_) => (
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() ORDER BY 1",
            "CHAR",
        ),
    };
    let mut out = Snapshot::new();
    for r in rows(&t, list.to_owned()).await {
        let table = r[0].clone().unwrap();
        let cols: Vec<String> = t
            .columns(&table)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        let key = cols
            .iter()
            .position(|c| c == "id")
            .unwrap_or_else(|| panic!("{table} has no id column"));
        let select: Vec<String> = cols
            .iter()
            .map(|c| format!("CAST({c} AS {cast})"))
            .collect();
        let mut data = BTreeMap::new();
        for row in rows(&t, format!("SELECT {} FROM {table}", select.join(", "))).await {
            let k = row[key].clone().unwrap();
            let row: Row = cols.iter().cloned().zip(row).collect();
            assert!(data.insert(k, row).is_none(), "{table}: duplicate id");
        }
        out.insert(table, data);
    }
    t.close().await;
    assert!(
        out.len() >= 11,
        "the demo CRM has 11 tables: {:?}",
        out.keys()
    );
    out
}

/// The keys of the rows that differ (changed, added or removed), per table.
fn diff(a: &Snapshot, b: &Snapshot) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let tables: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for t in tables {
        let (ra, rb) = (a.get(t), b.get(t));
        let empty = BTreeMap::new();
        let (ra, rb) = (ra.unwrap_or(&empty), rb.unwrap_or(&empty));
        let keys: BTreeSet<&String> = ra.keys().chain(rb.keys()).collect();
        let changed: BTreeSet<String> = keys
            .into_iter()
            .filter(|k| ra.get(*k) != rb.get(*k))
            .cloned()
            .collect();
        if !changed.is_empty() {
            out.insert(t.clone(), changed);
        }
    }
    out
}

/// The columns in which two versions of a row differ.
fn changed_columns(a: &Row, b: &Row) -> BTreeSet<String> {
    a.keys()
        .chain(b.keys())
        .filter(|c| a.get(*c) != b.get(*c))
        .cloned()
        .collect()
}

/// Keys of `table` rows where `col` = `value` (and every `also` column holds its value).
fn keys_where(snap: &Snapshot, table: &str, conds: &[(&str, &str)]) -> BTreeSet<String> {
    snap[table]
        .iter()
        .filter(|(_, r)| {
            conds
                .iter()
                .all(|(c, v)| r.get(*c).cloned().flatten().as_deref() == Some(*v))
        })
        .map(|(k, _)| k.clone())
        .collect()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

// ---------------------------------------------------------------------------------------
// The flow, through the command line.

fn submit(env: &Env, name: &str, ticket: &str) -> String {
    let f = env.write(name, ticket);
    ok(&env.run_at(&["submit", f.to_str().unwrap()], Some(SUBMIT_AT), None))
        .trim()
        .to_owned()
}

fn approve(env: &Env, id: &str) {
    ok(&env.run_at(&["approve", id], Some(SUBMIT_AT), None));
}

/// `quietus run --json` at `RUN_AT`: the summary; the run must succeed.
fn run(env: &Env) -> Value {
    let out = env.run_at(&["run", "--json"], Some(RUN_AT), None);
    assert!(
        out.status.success(),
        "quietus run failed:\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    json(&stdout(&out))
}

fn show(env: &Env, id: &str) -> Value {
    json(&ok(&env.run_at(
        &["show", id, "--json"],
        Some(RUN_AT),
        None,
    )))
}

/// Submit, approve and run a ticket; returns the request id and the run's summary.
fn carry_out(env: &Env, name: &str, ticket: &str) -> (String, Value) {
    let id = submit(env, name, ticket);
    approve(env, &id);
    let summary = run(env);
    (id, summary)
}

#[track_caller]
fn assert_completed(env: &Env, id: &str, summary: &Value) {
    assert_eq!(summary["failed"], 0, "{summary:#}");
    assert_eq!(summary["retried"], 0, "{summary:#}");
    let shown = show(env, id);
    assert_eq!(
        shown["request"]["state"], "completed",
        "request {id}:\n{:#}\n{:#}",
        shown["history"], shown["tasks"]
    );
}

// ---------------------------------------------------------------------------------------
// 1. The exit.

/// E100 leaves on 2026-12-31; E200 (employees.id 25) takes over. Checked in the database.
async fn exit_is_carried_out(store: &StoreKind, crm: &CrmKind) {
    let label = format!("store {}, crm {}", store.label(), crm.label());
    let env = Env::new(store).await;
    env.use_crm(crm).await;
    let before = snapshot(&env, crm).await;
    assert_eq!(before["employees"].len(), 40, "{label}");
    assert_eq!(before["employee_roles"].len(), 84, "{label}");
    assert_eq!(before["personal_notes"].len(), 60, "{label}");
    assert_eq!(before["employees"]["5"]["emp_no"], s("E100"), "{label}");
    assert_eq!(before["employees"]["25"]["emp_no"], s("E200"), "{label}");

    let (id, summary) = carry_out(&env, "exit.json", EXIT_TICKET);
    assert_completed(&env, &id, &summary);
    assert!(
        summary["completed_requests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == &Value::String(id.clone())),
        "{label}: {summary:#}"
    );
    let after = snapshot(&env, crm).await;

    // The account: disabled, departed on the exit date, contact data gone.
    let e = &after["employees"]["5"];
    assert_eq!(e["status"], s("disabled"), "{label}: {e:?}");
    assert_eq!(e["left_at"], s("2026-12-31"), "{label}: {e:?}");
    assert_eq!(e["name"], s("(departed employee)"), "{label}: {e:?}");
    assert_eq!(e["email"], None, "{label}: {e:?}");
    assert_eq!(e["mobile"], None, "{label}: {e:?}");
    assert_eq!(e["emp_no"], s("E100"), "{label}: the business key stays");
    assert_eq!(
        changed_columns(&before["employees"]["5"], e),
        set(&["email", "left_at", "mobile", "name", "status"]),
        "{label}"
    );
    assert_eq!(
        env.crm_count(
            crm,
            "FROM employees WHERE emp_no = 'E100' AND status = 'disabled' AND email IS NULL AND mobile IS NULL"
        )
        .await,
        1,
        "{label}"
    );
    assert_eq!(
        env.crm_value(crm, "left_at", "FROM employees WHERE id = 5")
            .await
            .as_deref(),
        Some("2026-12-31"),
        "{label}"
    );

    // Roles and personal notes: E100's are gone, everybody else's are untouched.
    let roles = keys_where(&before, "employee_roles", &[("employee_id", "5")]);
    let notes = keys_where(&before, "personal_notes", &[("employee_id", "5")]);
    assert_eq!((roles.len(), notes.len()), (3, 3), "{label}");
    assert!(keys_where(&after, "employee_roles", &[("employee_id", "5")]).is_empty());
    assert!(keys_where(&after, "personal_notes", &[("employee_id", "5")]).is_empty());
    assert_eq!(after["employee_roles"].len(), 84 - 3, "{label}");
    assert_eq!(after["personal_notes"].len(), 60 - 3, "{label}");
    assert_eq!(
        env.crm_count(crm, "FROM employee_roles WHERE employee_id = 5")
            .await,
        0,
        "{label}"
    );
    assert_eq!(
        env.crm_count(crm, "FROM personal_notes WHERE employee_id = 5")
            .await,
        0,
        "{label}"
    );

    // Active customers and open deals went to E200; the inactive customer and the won
    // deal stay with E100.
    let active = keys_where(
        &before,
        "customers",
        &[("owner_id", "5"), ("status", "active")],
    );
    let inactive = keys_where(
        &before,
        "customers",
        &[("owner_id", "5"), ("status", "inactive")],
    );
    assert_eq!((active.len(), inactive.len()), (5, 1), "{label}");
    let open: BTreeSet<String> = keys_where(&before, "deals", &[("owner_id", "5")])
        .into_iter()
        .filter(|k| {
            matches!(
                before["deals"][k]["stage"].as_deref(),
                Some("lead" | "negotiation")
            )
        })
        .collect();
    let won = keys_where(&before, "deals", &[("owner_id", "5"), ("stage", "won")]);
    assert_eq!((open.len(), won.len()), (3, 1), "{label}");
    for k in &active {
        assert_eq!(
            after["customers"][k]["owner_id"],
            s("25"),
            "{label}: customer {k}"
        );
        assert_eq!(
            changed_columns(&before["customers"][k], &after["customers"][k]),
            set(&["owner_id"]),
            "{label}: customer {k}"
        );
    }
    for k in &open {
        assert_eq!(after["deals"][k]["owner_id"], s("25"), "{label}: deal {k}");
        assert_eq!(
            changed_columns(&before["deals"][k], &after["deals"][k]),
            set(&["owner_id"]),
            "{label}: deal {k}"
        );
    }
    assert_eq!(
        keys_where(&after, "customers", &[("owner_id", "5")]),
        inactive,
        "{label}"
    );
    assert_eq!(
        keys_where(&after, "deals", &[("owner_id", "5")]),
        won,
        "{label}"
    );
    assert_eq!(
        env.crm_count(
            crm,
            "FROM customers WHERE owner_id = 25 AND status = 'active'"
        )
        .await,
        3 + 5,
        "{label}"
    );

    // Business records and the labour contract stay as they were.
    for (table, col, n) in [
        ("follow_ups", "author_id", 12),
        ("call_notes", "author_id", 5),
        ("labour_contracts", "employee_id", 1),
    ] {
        let k = keys_where(&before, table, &[(col, "5")]);
        assert_eq!(k.len(), n, "{label}: {table}");
        for key in &k {
            assert_eq!(
                before[table][key], after[table][key],
                "{label}: {table} {key}"
            );
        }
        assert_eq!(
            env.crm_count(crm, &format!("FROM {table} WHERE {col} = 5"))
                .await,
            i64::try_from(n).unwrap(),
            "{label}: {table}"
        );
    }

    // Nothing else changed anywhere: exactly these rows differ.
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    expected.insert("employees".into(), set(&["5"]));
    expected.insert("employee_roles".into(), roles);
    expected.insert("personal_notes".into(), notes);
    expected.insert("customers".into(), active);
    expected.insert("deals".into(), open);
    assert_eq!(diff(&before, &after), expected, "{label}");
    assert_eq!(after["employees"].len(), 40, "{label}");

    // The labour contract's follow-up: two years after the exit date, at midnight in
    // Asia/Shanghai.
    let shown = show(&env, &id);
    let tasks = shown["tasks"].as_array().unwrap();
    let contract: Vec<&Value> = tasks
        .iter()
        .filter(|t| {
            t["kind"] == "followup" && t["body"].as_str().unwrap().contains("labour_contracts")
        })
        .collect();
    assert_eq!(contract.len(), 1, "{label}: {tasks:#?}");
    assert_eq!(contract[0]["due_at"], "2028-12-30T16:00:00Z", "{label}");
    assert_eq!(contract[0]["state"], "pending", "{label}");
    let body = json(contract[0]["body"].as_str().unwrap());
    assert_eq!(
        body["keys"]["labour_contracts"],
        serde_json::json!([before["labour_contracts"]
            .iter()
            .find(|(_, r)| r["employee_id"] == s("5"))
            .unwrap()
            .0]),
        "{label}: the contract's key was captured before the exit changed anything"
    );
    // Every task due by now is done; none failed on the way.
    for t in tasks {
        let due = chrono::DateTime::parse_from_rfc3339(t["due_at"].as_str().unwrap()).unwrap();
        let run_at = chrono::DateTime::parse_from_rfc3339(RUN_AT).unwrap();
        if due <= run_at {
            assert_eq!(t["state"], "done", "{label}: {t:#}");
            assert_eq!(t["attempts"].as_i64().unwrap_or(0), 0, "{label}: {t:#}");
        } else {
            assert_eq!(t["state"], "pending", "{label}: {t:#}");
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
#[cfg_attr(
    not(quietus_test_mysql),
    ignore = "needs MariaDB/MySQL: set QUIETUS_TEST_MYSQL_URL"
)]
#[case::mysql(Backend::Mysql)]
#[tokio::test(flavor = "multi_thread")]
async fn the_exit_on_every_crm_database(#[case] backend: Backend) {
    {
        let crm = CrmKind::of(backend).await;
        exit_is_carried_out(&StoreKind::Sqlite, &crm).await;
        crm.cleanup().await;
    }
}

#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[tokio::test(flavor = "multi_thread")]
async fn the_exit_with_a_postgres_state_store() {
    let store = StoreKind::of(Backend::Postgres).await;
    exit_is_carried_out(&store, &CrmKind::Sqlite).await;
    store.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// 2. The erasure of a customer.

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[cfg_attr(
    not(quietus_test_mysql),
    ignore = "needs MariaDB/MySQL: set QUIETUS_TEST_MYSQL_URL"
)]
#[case::mysql(Backend::Mysql)]
#[tokio::test(flavor = "multi_thread")]
async fn the_erasure_of_a_customer_on_every_crm_database(#[case] backend: Backend) {
    {
        let crm = CrmKind::of(backend).await;
        let label = crm.label();
        let env = Env::new(&StoreKind::Sqlite).await;
        env.use_crm(&crm).await;
        let before = snapshot(&env, &crm).await;
        assert_eq!(before["customers"]["42"]["name"], s("Olivia Chen"));
        let emails_before = env
            .crm_count(&crm, "FROM customers WHERE email IS NOT NULL")
            .await;

        let (id, summary) = carry_out(&env, "erasure.json", ERASURE_TICKET);
        assert_completed(&env, &id, &summary);
        let after = snapshot(&env, &crm).await;

        let c = &after["customers"]["42"];
        assert_eq!(c["name"], s("(erased customer)"), "{label}: {c:?}");
        assert_eq!(c["email"], None, "{label}: {c:?}");
        assert_eq!(c["phone"], None, "{label}: {c:?}");
        assert_eq!(
            c["customer_no"],
            s("C-1042"),
            "{label}: the business key stays"
        );
        assert_eq!(
            changed_columns(&before["customers"]["42"], c),
            set(&["email", "name", "phone"]),
            "{label}"
        );
        assert_eq!(after["customers"].len(), 120, "{label}");
        assert_eq!(
            env.crm_count(&crm, "FROM customers WHERE email IS NOT NULL")
                .await,
            emails_before - 1,
            "{label}"
        );
        assert_eq!(
            env.crm_count(
                &crm,
                "FROM customers WHERE email = 'olivia.chen@example.com'"
            )
            .await,
            0,
            "{label}"
        );
        for (table, n) in [("follow_ups", 3), ("invoices", 2)] {
            let k = keys_where(&after, table, &[("customer_id", "42")]);
            assert_eq!(k.len(), n, "{label}: {table} kept");
            for key in &k {
                assert_eq!(before[table][key], after[table][key], "{label}: {table}");
            }
        }
        // Only Olivia's customer row changed.
        let mut expected = BTreeMap::new();
        expected.insert("customers".to_owned(), set(&["42"]));
        assert_eq!(diff(&before, &after), expected, "{label}");
        crm.cleanup().await;
    }
}

// ---------------------------------------------------------------------------------------
// 3. Backups, opened with the stock tools.

/// `age -d -i KEY FILE | zstd -d`, as an operator would: the lines of the plaintext.
fn open_with_stock_tools(key: &std::path::Path, file: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#"set -o pipefail; age -d -i "$0" "$1" | zstd -d"#)
        .arg(key)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "age | zstd failed on {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[cfg_attr(
    not(quietus_test_age),
    ignore = "needs the age and zstd tools on PATH: apt-get install age zstd"
)]
#[tokio::test(flavor = "multi_thread")]
async fn the_exit_backups_open_with_age_and_zstd_and_hold_exactly_the_changed_rows() {
    use sha2::{Digest, Sha256};
    let crm = CrmKind::Sqlite;
    let env = Env::new(&StoreKind::Sqlite).await;
    let before = snapshot(&env, &crm).await;
    let (id, summary) = carry_out(&env, "exit.json", EXIT_TICKET);
    assert_completed(&env, &id, &summary);
    let shown = show(&env, &id);
    let backups = shown["backups"].as_array().unwrap();
    assert!(!backups.is_empty(), "{shown:#}");

    // (table, action) -> key -> backed-up values
    let mut held: BTreeMap<(String, String), BTreeMap<String, Row>> = BTreeMap::new();
    for b in backups {
        let bid = b["id"].as_str().unwrap();
        let file = env.path().join(format!("var/backups/{bid}.jsonl.zst.age"));
        let key = env.path().join(format!("var/backup-keys/{bid}.key"));
        assert!(file.is_file() && key.is_file(), "{bid}: {b:#}");
        let raw = common::read(&file).unwrap();
        assert!(
            raw.starts_with(b"age-encryption.org/v1\n"),
            "{bid}: not age"
        );
        for plain in ["fang.wang", "Wang Fang", "王芳"] {
            assert!(
                !raw.windows(plain.len()).any(|w| w == plain.as_bytes()),
                "{bid}: {plain} readable in the archive"
            );
        }
        let lines = open_with_stock_tools(&key, &file);
        assert!(lines.len() >= 2, "{bid}: {lines:?}");
        let manifest = json(&lines[0]);
        assert_eq!(manifest["quietus_backup"], 1, "{manifest:#}");
        assert_eq!(manifest["id"], bid, "{manifest:#}");
        assert_eq!(manifest["request_id"], id.as_str(), "{manifest:#}");
        assert_eq!(manifest["system"], "crm", "{manifest:#}");
        assert!(manifest["digest_key"].as_str().unwrap().len() >= 32);
        let trailer = json(lines.last().unwrap());
        let row_lines = &lines[1..lines.len() - 1];
        assert_eq!(trailer["end"], true, "{bid}: {trailer}");
        assert_eq!(trailer["rows"], row_lines.len(), "{bid}: {trailer}");
        assert_eq!(b["rows"], row_lines.len(), "{bid}: recorded row count");
        let mut h = Sha256::new();
        for l in row_lines {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        assert_eq!(trailer["rows_sha256"], hex::encode(h.finalize()), "{bid}");
        assert_eq!(
            b["sha256"],
            quietus::backup::file_sha256(&file).unwrap().0,
            "{bid}"
        );
        let actions: BTreeMap<String, String> = manifest["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["table"].as_str().unwrap().to_owned(),
                    t["action"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            actions.len(),
            manifest["tables"].as_array().unwrap().len(),
            "{bid}: a table twice in one manifest"
        );
        for l in row_lines {
            let r = json(l);
            let t = r["t"].as_str().unwrap().to_owned();
            let a = actions
                .get(&t)
                .unwrap_or_else(|| panic!("{bid}: rows of {t} not in the manifest"))
                .clone();
            let v: Row = serde_json::from_value(r["v"].clone()).unwrap();
            let k = r["k"].as_str().unwrap().to_owned();
            assert!(
                held.entry((t, a)).or_default().insert(k, v).is_none(),
                "{bid}: a row twice"
            );
        }
    }

    let counts: BTreeMap<(String, String), usize> =
        held.iter().map(|(k, v)| (k.clone(), v.len())).collect();
    let want: BTreeMap<(String, String), usize> = [
        ("employees", "disable", 1),
        ("employees", "anonymize", 1),
        ("employee_roles", "erase", 3),
        ("personal_notes", "erase", 3),
        ("customers", "reassign", 5),
        ("deals", "reassign", 3),
    ]
    .into_iter()
    .map(|(t, a, n)| ((t.to_owned(), a.to_owned()), n))
    .collect();
    assert_eq!(counts, want, "rows per table and action in the backups");

    let get = |t: &str, a: &str| &held[&(t.to_owned(), a.to_owned())];
    // Erased rows: every column but the key, with the values they had.
    for t in ["personal_notes", "employee_roles"] {
        let rows = get(t, "erase");
        assert_eq!(
            rows.keys().cloned().collect::<BTreeSet<_>>(),
            keys_where(&before, t, &[("employee_id", "5")]),
            "{t}"
        );
        for (k, v) in rows {
            let mut orig = before[t][k].clone();
            orig.remove("id");
            assert_eq!(v, &orig, "{t} {k}: the backup holds the row as it was");
        }
    }
    for v in get("personal_notes", "erase").values() {
        assert!(v["body"].as_deref().is_some_and(|b| !b.is_empty()), "{v:?}");
    }
    // The anonymised employee: the original name, email and mobile.
    let e = &get("employees", "anonymize")["5"];
    let orig = &before["employees"]["5"];
    assert_eq!(
        e,
        &["name", "email", "mobile"]
            .iter()
            .map(|c| ((*c).to_owned(), orig[*c].clone()))
            .collect::<Row>()
    );
    assert_eq!(e["email"], s("fang.wang@corp.example"));
    // The disabled account: its status and departure date before.
    let d = &get("employees", "disable")["5"];
    assert_eq!(
        d,
        &[("status", s("active")), ("left_at", None)]
            .into_iter()
            .map(|(c, v)| (c.to_owned(), v))
            .collect::<Row>()
    );
    // The reassigned records: owner_id 5, and only that column.
    for (t, n) in [("customers", 5), ("deals", 3)] {
        let rows = get(t, "reassign");
        assert_eq!(rows.len(), n);
        for (k, v) in rows {
            assert_eq!(
                v,
                &[("owner_id".to_owned(), s("5"))]
                    .into_iter()
                    .collect::<Row>(),
                "{t} {k}"
            );
            assert_eq!(before[t][k]["owner_id"], s("5"), "{t} {k}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 4. Restore.

fn restore(env: &Env, id: &str, dry_run: bool) -> (Value, std::process::Output) {
    let mut args = vec!["restore", id, "--json", "--yes", "--reason", "a test"];
    if dry_run {
        args.push("--dry-run");
    }
    let out = env.run_at(&args, Some(RUN_AT), None);
    assert!(
        out.status.success(),
        "restore failed:\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    (json(&stdout(&out)), out)
}

fn sum(report: &Value, field: &str) -> u64 {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t[field].as_u64().unwrap())
        .sum()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[cfg_attr(
    not(quietus_test_mysql),
    ignore = "needs MariaDB/MySQL: set QUIETUS_TEST_MYSQL_URL"
)]
#[case::mysql(Backend::Mysql)]
#[tokio::test(flavor = "multi_thread")]
async fn restore_brings_back_every_value_of_the_exit_on_every_crm_database(
    #[case] backend: Backend,
) {
    {
        let crm = CrmKind::of(backend).await;
        let label = crm.label();
        let env = Env::new(&StoreKind::Sqlite).await;
        env.use_crm(&crm).await;
        let before = snapshot(&env, &crm).await;
        let (id, summary) = carry_out(&env, "exit.json", EXIT_TICKET);
        assert_completed(&env, &id, &summary);
        let exited = snapshot(&env, &crm).await;
        assert_ne!(before, exited, "{label}: the exit changed something");
        // 1 + 1 (employee 5: disabled, anonymised) + 3 roles + 3 notes + 5 customers + 3 deals
        let changed = 16;

        let (dry, _) = restore(&env, &id, true);
        assert_eq!(dry["dry_run"], true, "{label}");
        assert_eq!(sum(&dry, "restored"), changed, "{label}: {dry:#}");
        assert_eq!(sum(&dry, "changed_since"), 0, "{label}: {dry:#}");
        assert_eq!(
            snapshot(&env, &crm).await,
            exited,
            "{label}: a dry run changes nothing"
        );

        let (done, _) = restore(&env, &id, false);
        assert_eq!(done["dry_run"], false, "{label}");
        assert_eq!(sum(&done, "restored"), changed, "{label}: {done:#}");
        assert_eq!(sum(&done, "changed_since"), 0, "{label}: {done:#}");
        let restored = snapshot(&env, &crm).await;
        assert_eq!(
            diff(&before, &restored),
            BTreeMap::new(),
            "{label}: every row as before the exit"
        );
        assert_eq!(restored, before, "{label}");
        let history = show(&env, &id)["history"].to_string();
        assert!(history.contains("restored"), "{label}: {history}");

        // Again: nothing to do, and it says so.
        let (again, _) = restore(&env, &id, false);
        assert_eq!(sum(&again, "restored"), 0, "{label}: {again:#}");
        assert_eq!(sum(&again, "already"), changed, "{label}: {again:#}");
        assert_eq!(sum(&again, "changed_since"), 0, "{label}: {again:#}");
        let text = ok(&env.run_at(
            &["restore", &id, "--yes", "--reason", "a test"],
            Some(RUN_AT),
            None,
        ));
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty(), "{label}: {text}");
        for l in lines {
            assert!(l.contains("restored     0;"), "{label}: {l}");
        }
        assert_eq!(snapshot(&env, &crm).await, before, "{label}");
        crm.cleanup().await;
    }
}

// ---------------------------------------------------------------------------------------
// 5. Identities that try to inject SQL.

/// Submit, approve and run `ticket`: the request completes and the CRM is as `before`,
/// every table still there with all its rows and values.
async fn changes_nothing(env: &Env, crm: &CrmKind, before: &Snapshot, name: &str, ticket: &str) {
    let label = crm.label();
    let (id, summary) = carry_out(env, name, ticket);
    assert_eq!(summary["failed"], 0, "{label}: {ticket}: {summary:#}");
    assert_eq!(summary["retried"], 0, "{label}: {ticket}: {summary:#}");
    let shown = show(env, &id);
    assert_eq!(
        shown["request"]["state"], "completed",
        "{label}: {ticket}: {:#}",
        shown["history"]
    );
    assert!(
        shown["backups"].as_array().unwrap().is_empty(),
        "{label}: {ticket}: nothing to back up: {:#}",
        shown["backups"]
    );
    let now = snapshot(env, crm).await;
    assert_eq!(
        now.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "{label}: {ticket}: every table still exists"
    );
    for (t, r) in before {
        assert_eq!(r.len(), now[t].len(), "{label}: {ticket}: rows of {t}");
    }
    assert_eq!(
        diff(before, &now),
        BTreeMap::new(),
        "{label}: {ticket}: nothing changed"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[cfg_attr(
    not(quietus_test_mysql),
    ignore = "needs MariaDB/MySQL: set QUIETUS_TEST_MYSQL_URL"
)]
#[case::mysql(Backend::Mysql)]
#[tokio::test(flavor = "multi_thread")]
async fn identities_that_look_like_sql_change_and_drop_nothing(#[case] backend: Backend) {
    {
        let crm = CrmKind::of(backend).await;
        let label = crm.label();
        let env = Env::new(&StoreKind::Sqlite).await;
        env.use_crm(&crm).await;
        let before = snapshot(&env, &crm).await;

        // Not an email address: refused at intake.
        let f = env.write(
            "drop.json",
            r#"{"kind":"erasure","subject":{"email":"x@y.z'); DROP TABLE customers; --"},"jurisdiction":"GDPR"}"#,
        );
        let err = fails(&env.run_at(&["submit", f.to_str().unwrap()], Some(SUBMIT_AT), None));
        assert!(err.to_lowercase().contains("email"), "{label}: {err}");
        assert!(
            !err.contains("DROP"),
            "{label}: the error echoes the value: {err}"
        );

        for (n, ticket) in [
            r#"{"kind":"erasure","external_id":"INJ-1","subject":{"customer_id":"C-1042' OR '1'='1"},"jurisdiction":"GDPR"}"#,
            r#"{"kind":"erasure","external_id":"INJ-2","subject":{"employee_id":"' OR 1=1 --"},"jurisdiction":"PIPL"}"#,
            r#"{"kind":"erasure","external_id":"INJ-3","subject":{"customer_id":"C-1042\"; DROP TABLE customers; --"},"jurisdiction":"GDPR"}"#,
            r#"{"kind":"erasure","external_id":"INJ-4","subject":{"employee_id":"E100` OR 1=1 #"},"jurisdiction":"PIPL"}"#,
            // Valid addresses (a quoted local part; atext with ' and ;), bound as values.
            r#"{"kind":"erasure","external_id":"INJ-5","subject":{"email":"\"x'); DROP TABLE customers; --\"@example.com"},"jurisdiction":"GDPR"}"#,
            r#"{"kind":"erasure","external_id":"INJ-6","subject":{"email":"olivia.chen'--@example.com"},"jurisdiction":"GDPR"}"#,
        ]
        .iter()
        .enumerate()
        {
            changes_nothing(&env, &crm, &before, &format!("inj{n}.json"), ticket).await;
        }
        crm.cleanup().await;
    }
}

/// Addresses a mail server accepts (RFC 5322: `'`, `=` and the rest of atext, quoted local
/// parts) are taken in, normalised the same way on both sides, matched as bound values on
/// every database, erased, and mailed to.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[cfg_attr(
    not(quietus_test_mysql),
    ignore = "needs MariaDB/MySQL: set QUIETUS_TEST_MYSQL_URL"
)]
#[case::mysql(Backend::Mysql)]
#[tokio::test(flavor = "multi_thread")]
async fn addresses_with_apostrophes_and_quotes_are_erased_on_every_database(
    #[case] backend: Backend,
) {
    // (customer id, the address in the CRM, the address in the ticket)
    let cases = [
        ("42", "o'brien@example.ie", "O'Brien@Example.IE"),
        ("43", "a=b+tag@example.com", "a=b+tag@example.com"),
        ("44", "\"john doe\"@example.com", "\"John Doe\"@example.com"),
        (
            "45",
            "o'brien+'or'1'='1@example.com",
            "O'Brien+'OR'1'='1@example.com",
        ),
    ];
    {
        let crm = CrmKind::of(backend).await;
        let label = crm.label();
        let env = Env::new(&StoreKind::Sqlite).await;
        env.use_crm(&crm).await;
        for (key, stored, _) in &cases {
            // The test's own statement: the value quoted by hand, as SQL literals go.
            let lit = stored.replace('\'', "''");
            env.crm_query(
                &crm,
                &format!("UPDATE customers SET email = '{lit}' WHERE id = {key}"),
            )
            .await;
        }
        let before = snapshot(&env, &crm).await;
        for (key, stored, _) in &cases {
            assert_eq!(before["customers"][*key]["email"], s(stored), "{label}");
        }
        let mut ids = Vec::new();
        for (n, (_, _, given)) in cases.iter().enumerate() {
            let ticket = serde_json::json!({
                "kind": "erasure", "external_id": format!("ADDR-{n}"),
                "subject": {"email": given}, "jurisdiction": "GDPR",
            });
            ids.push(submit(&env, &format!("addr{n}.json"), &ticket.to_string()));
        }
        for id in &ids {
            approve(&env, id);
        }
        let summary = run(&env);
        for id in &ids {
            assert_completed(&env, id, &summary);
        }
        let after = snapshot(&env, &crm).await;
        let mut expected = BTreeMap::new();
        expected.insert(
            "customers".to_owned(),
            cases
                .iter()
                .map(|(k, _, _)| (*k).to_owned())
                .collect::<BTreeSet<_>>(),
        );
        assert_eq!(
            diff(&before, &after),
            expected,
            "{label}: only those customers changed"
        );
        for (key, _, _) in &cases {
            assert_eq!(
                after["customers"][*key]["email"], None,
                "{label}: customer {key}"
            );
        }
        // Every subject was written to at their address: the acknowledgement and the
        // completion went out.
        let mut recipients: BTreeMap<String, usize> = BTreeMap::new();
        for e in std::fs::read_dir(env.path().join("var/outbox")).unwrap() {
            let text = common::read_to_string(e.unwrap().path()).unwrap();
            for l in text.lines().filter(|l| l.starts_with("To: ")) {
                *recipients
                    .entry(l["To: ".len()..].trim().to_owned())
                    .or_default() += 1;
            }
        }
        for (_, stored, _) in &cases {
            assert!(
                recipients.get(*stored).is_some_and(|n| *n >= 2),
                "{label}: messages to {stored}: {recipients:?}"
            );
        }
        crm.cleanup().await;
    }
}

/// An identity matches only the value it names, byte for byte, on every database: not
/// another case (MariaDB's default collations compare case-insensitively).
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[cfg_attr(
    not(quietus_test_mysql),
    ignore = "needs MariaDB/MySQL: set QUIETUS_TEST_MYSQL_URL"
)]
#[case::mysql(Backend::Mysql)]
#[tokio::test(flavor = "multi_thread")]
async fn identities_match_exactly_on_every_database(#[case] backend: Backend) {
    {
        let crm = CrmKind::of(backend).await;
        let env = Env::new(&StoreKind::Sqlite).await;
        env.use_crm(&crm).await;
        let before = snapshot(&env, &crm).await;
        for (n, ticket) in [
            r#"{"kind":"erasure","external_id":"CASE-1","subject":{"customer_id":"c-1042"},"jurisdiction":"GDPR"}"#,
            r#"{"kind":"erasure","external_id":"CASE-2","subject":{"employee_id":"e100"},"jurisdiction":"PIPL"}"#,
        ]
        .iter()
        .enumerate()
        {
            changes_nothing(&env, &crm, &before, &format!("case{n}.json"), ticket).await;
        }
        crm.cleanup().await;
    }
}

// ---------------------------------------------------------------------------------------
// 6. A second `quietus run` has nothing to do.

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn running_again_after_completion_does_nothing(#[case] backend: Backend) {
    {
        let store = StoreKind::of(backend).await;
        let label = store.label();
        let crm = CrmKind::Sqlite;
        let env = Env::new(&store).await;
        let (exit, summary) = carry_out(&env, "exit.json", EXIT_TICKET);
        assert_completed(&env, &exit, &summary);
        assert!(
            summary["done"].as_u64().unwrap() >= 2,
            "{label}: {summary:#}"
        );
        let (erasure, summary) = carry_out(&env, "erasure.json", ERASURE_TICKET);
        assert_completed(&env, &erasure, &summary);
        assert!(
            summary["done"].as_u64().unwrap() >= 1,
            "{label}: {summary:#}"
        );

        let crm_before = snapshot(&env, &crm).await;
        let shown_before: Vec<Value> = [&exit, &erasure].iter().map(|i| show(&env, i)).collect();
        let backups_before: BTreeSet<String> = std::fs::read_dir(env.path().join("var/backups"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();

        for _ in 0..2 {
            let again = run(&env);
            assert_eq!(again["scheduled"], 0, "{label}: {again:#}");
            assert_eq!(again["done"], 0, "{label}: {again:#}");
            assert_eq!(again["retried"], 0, "{label}: {again:#}");
            assert_eq!(again["failed"], 0, "{label}: {again:#}");
            assert_eq!(
                again["completed_requests"],
                serde_json::json!([]),
                "{label}: {again:#}"
            );
        }
        assert_eq!(snapshot(&env, &crm).await, crm_before, "{label}");
        let shown_after: Vec<Value> = [&exit, &erasure].iter().map(|i| show(&env, i)).collect();
        for (b, a) in shown_before.iter().zip(&shown_after) {
            assert_eq!(a["request"], b["request"], "{label}");
            assert_eq!(a["history"], b["history"], "{label}");
            assert_eq!(a["tasks"], b["tasks"], "{label}");
            assert_eq!(a["backups"], b["backups"], "{label}");
        }
        let backups_after: BTreeSet<String> = std::fs::read_dir(env.path().join("var/backups"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(backups_after, backups_before, "{label}: no new archive");
        store.cleanup().await;
    }
}

// ---------------------------------------------------------------------------------------
// One pool per target system for a process's life.

/// Sessions ever established to `db` (`pg_stat_database.sessions`), read once none of
/// them is open any more (a backend's counts reach the statistics as it exits).
async fn sessions_to(db: &common::Db) -> i64 {
    let admin = sqlx::PgPool::connect(&db.admin).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (open,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(&db.name)
                .fetch_one(&admin)
                .await
                .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} sessions to {} stay open",
            db.name
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut c = admin.acquire().await.unwrap();
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *c)
        .await
        .unwrap();
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(sessions, 0)::bigint FROM pg_stat_database WHERE datname = $1",
    )
    .bind(&db.name)
    .fetch_one(&mut *c)
    .await
    .unwrap();
    drop(c);
    admin.close().await;
    n
}

/// Five erasures approved and carried out in one process (surveys, backups, changes,
/// re-checks) open one pool of the CRM, and the CRM's database sees no more connections
/// than that pool holds. (A pool per survey and per task opened two connections each:
/// twenty-odd here.)
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[tokio::test(flavor = "multi_thread")]
async fn one_process_keeps_one_pool_per_target_system() {
    let crm = CrmKind::of(Backend::Postgres).await;
    let env = Env::new(&StoreKind::Sqlite).await;
    env.use_crm(&crm).await;
    let CrmKind::Postgres(db) = &crm else {
        unreachable!("a PostgreSQL CRM")
    };
    let before = sessions_to(db).await;

    let config = quietus::config::Config::load(Some(&env.config)).unwrap();
    let app = quietus::app::App::open(config).await.unwrap();
    let (ctx, settings) = (&app.ctx, app.worker().unwrap());
    let max = ctx.targets.max_connections();
    let emails = [
        "olivia.chen@example.com",
        "iris.xu@example.com",
        "tangbo96@example.cn",
        "huting86@example.cn",
        "tony.lu@example.cn",
    ];
    let ids = common::approved_erasures(ctx, &emails, "P", quietus::clock::now()).await;
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let summary = quietus::jobs::run_due(ctx, &settings, &stop, &|_| {})
        .await
        .unwrap();
    let mut states = Vec::new();
    for id in &ids {
        states.push(ctx.request(id).await.unwrap().state);
    }
    let opened = ctx.targets.opened();
    let admin = sqlx::PgPool::connect(&db.admin).await.unwrap();
    let (open_now,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
            .bind(&db.name)
            .fetch_one(&admin)
            .await
            .unwrap();
    admin.close().await;
    app.close().await;
    let during = sessions_to(db).await - before;
    crm.cleanup().await;

    assert_eq!(summary.failed, 0, "{summary:?}");
    assert!(
        states
            .iter()
            .all(|s| *s == quietus::lifecycle::State::Completed),
        "{states:?}"
    );
    assert!(
        (1..=i64::from(max)).contains(&during),
        "{during} connections were made to the CRM for five erasures (the pool holds {max})"
    );
    assert!(
        (1..=i64::from(max)).contains(&open_now),
        "{open_now} connections open to the CRM after the run (the pool holds {max})"
    );
    assert_eq!(opened, 1, "pools opened for one system");
}
