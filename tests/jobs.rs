//! Retries, the retry budget, and what the DPO sees when a request needs attention.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{Backend, CrmKind, EXIT_TICKET, Env, StoreKind, ok};
use rstest::rstest;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_keeps_failing_needs_attention_with_its_error_visible() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let text = common::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{text}\n[jobs]\nmax_attempts = 2\n")).unwrap();
    let f = env.write("exit.json", EXIT_TICKET);
    let at = Some("2026-12-01T03:00:00Z");
    let id = ok(&env.run_at(&["submit", f.to_str().unwrap()], at, None))
        .trim()
        .to_owned();
    ok(&env.run_at(&["approve", &id], at, None));
    // After approval, the successor's account is closed: the handover cannot happen.
    env.crm_query(
        &CrmKind::Sqlite,
        "UPDATE employees SET status = 'disabled' WHERE emp_no = 'E200'",
    )
    .await;
    let first = env.run_at(&["run", "--json"], Some("2027-01-01T03:00:00Z"), None);
    let s = json(&common::stdout(&first));
    assert_eq!(s["retried"], 1, "{s}");
    let shown = json(&ok(&env.run_at(
        &["show", &id, "--json"],
        Some("2027-01-01T03:00:00Z"),
        None,
    )));
    assert_eq!(shown["request"]["state"], "failed");
    // Nothing of the apply task changed: it failed before its backup.
    assert_eq!(
        env.crm_count(
            &CrmKind::Sqlite,
            "FROM personal_notes WHERE employee_id = 5"
        )
        .await,
        3
    );
    // The backoff holds the retry back; a day later it is tried again and gives up.
    let again = env.run_at(&["run", "--json"], Some("2027-01-01T03:00:10Z"), None);
    assert_eq!(json(&common::stdout(&again))["retried"], 0);
    let last = env.run_at(&["run", "--json"], Some("2027-01-02T03:00:00Z"), None);
    assert!(
        !last.status.success(),
        "run exits 1 when a task needs attention"
    );
    assert_eq!(json(&common::stdout(&last))["failed"], 1);
    let q = json(&ok(&env.run_at(
        &["queue", "--json"],
        Some("2027-01-02T03:00:00Z"),
        None,
    )));
    let item = &q["requests"][0];
    assert_eq!(item["state"], "needs_attention");
    assert!(
        item["attention"].as_str().unwrap().contains("disabled"),
        "{item}"
    );
    let text = ok(&env.run_at(&["queue"], Some("2027-01-02T03:00:00Z"), None));
    assert!(
        text.contains("needs_attention") && text.contains("! task"),
        "{text}"
    );
    // Once the cause is fixed (the successor's account reopened), the DPO retries it.
    env.crm_query(
        &CrmKind::Sqlite,
        "UPDATE employees SET status = 'active' WHERE emp_no = 'E200'",
    )
    .await;
    let shown = json(&ok(&env.run_at(
        &["show", &id, "--json"],
        Some("2027-01-02T03:00:00Z"),
        None,
    )));
    let stuck = shown["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == "needs_attention")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&env.run_at(&["retry", &stuck], Some("2027-01-02T03:00:00Z"), None));
    let err = common::fails(&env.run_at(&["retry", &stuck], Some("2027-01-02T03:00:00Z"), None));
    assert!(err.contains("does not need attention"), "{err}");
    let run = json(&ok(&env.run_at(
        &["run", "--json"],
        Some("2027-01-02T03:01:00Z"),
        None,
    )));
    assert_eq!(run["completed_requests"][0], id.as_str(), "{run}");
    assert_eq!(
        env.crm_count(
            &CrmKind::Sqlite,
            "FROM customers WHERE owner_id = 25 AND status = 'active'"
        )
        .await,
        8
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_retention_sweep_erases_expired_rows_backup_first_and_only_them() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let crm = CrmKind::Sqlite;
    let old = env
        .crm_count(&crm, "FROM follow_ups WHERE happened_at < '2023-11-24'")
        .await;
    assert!(
        old > 0,
        "the demo CRM has follow-ups older than three years"
    );
    let total = env.crm_count(&crm, "FROM follow_ups").await;
    let out = json(&ok(&env.run_at(
        &["run", "--sweep", "--json"],
        Some("2026-11-24T03:00:00Z"),
        None,
    )));
    assert_eq!(out["failed"], 0, "{out}");
    assert_eq!(
        env.crm_count(&crm, "FROM follow_ups WHERE happened_at < '2023-11-24'")
            .await,
        0
    );
    assert_eq!(env.crm_count(&crm, "FROM follow_ups").await, total - old);
    // Every erased row is in a backup that verifies.
    let ctx = env.context().await;
    let pool = match &ctx.store.pool {
        quietus::store::Pool::Sqlite(p) => p.clone(),
        quietus::store::Pool::Postgres(_) => unreachable!(),
    };
    let backups: Vec<(String, String)> = sqlx::query_as("SELECT id, sha256 FROM backups")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut rows = 0;
    for (id, sha) in backups {
        let (p, k) = quietus::backup::paths(
            &env.path().join("var/backups"),
            &env.path().join("var/backup-keys"),
            &id,
        );
        let counts = quietus::backup::verify(&p, &k, Some(&sha)).unwrap();
        rows += counts.get("follow_ups").copied().unwrap_or(0);
    }
    assert_eq!(rows, u64::try_from(old).unwrap());
    // Swept again the same day, nothing has expired: no task, no empty backup, no receipt
    // for nothing.
    let counts = || async {
        let mut out = Vec::new();
        for sql in [
            "SELECT COUNT(*) FROM tasks WHERE kind = 'sweep'",
            "SELECT COUNT(*) FROM backups",
            "SELECT COUNT(*) FROM receipts",
        ] {
            let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&pool).await.unwrap();
            out.push(n);
        }
        out
    };
    let before = counts().await;
    let again = env.run_at(&["run", "--sweep"], Some("2026-11-24T04:00:00Z"), None);
    let said = ok(&again);
    assert_eq!(
        counts().await,
        before,
        "a sweep with nothing to sweep: {said}"
    );
    assert!(
        said.contains("retention sweep: 0 task(s) created"),
        "{said}"
    );
    ctx.store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_finds_every_lookup_indexed_and_names_a_missing_index() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let out = json(&ok(&env.run(&["doctor", "--json"])));
    let findings = out.as_array().unwrap();
    assert!(findings.iter().all(|f| f["level"] == "ok"), "{out:#}");
    assert!(
        findings
            .iter()
            .any(|f| f["message"] == "personal_notes.employee_id is indexed"),
        "{out:#}"
    );
    env.crm_query(
        &CrmKind::Sqlite,
        "DROP INDEX idx_personal_notes_employee_id",
    )
    .await;
    let out = json(&ok(&env.run(&["doctor", "--json"])));
    let warned: Vec<&Value> = out
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["level"] == "warning")
        .collect();
    assert_eq!(warned.len(), 1, "{out:#}");
    assert!(
        warned[0]["message"]
            .as_str()
            .unwrap()
            .contains("personal_notes.employee_id leads no index")
    );
}

/// A daemon that is stopped when dropped, also when a test fails.
struct Serving(std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The text of an HTML page from just after `marker` to the next `<`.
fn html_after<'a>(page: &'a str, marker: &str) -> Option<&'a str> {
    let i = page.find(marker)? + marker.len();
    page[i..].split('<').next()
}

#[rstest]
#[case::sqlite_en(Backend::Sqlite, "en")]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres_zh(Backend::Postgres, "zh-CN")]
#[tokio::test(flavor = "multi_thread")]
async fn an_access_request_gets_its_own_words_and_the_passphrase_only_once_the_address_is_confirmed(
    #[case] backend: Backend,
    #[case] locale: &str,
) {
    use std::io::Read;
    {
        let store = StoreKind::of(backend).await;
        let env = Env::new(&store).await;
        let label = store.label();
        let f = env.write(
            "access.json",
            &format!(
                r#"{{"kind":"access","external_id":"A-1","subject":{{"email":"olivia.chen@example.com"}},"jurisdiction":"GDPR","locale":"{locale}"}}"#
            ),
        );
        let at = Some("2026-11-24T03:00:00Z");
        let id = ok(&env.run_at(&["submit", f.to_str().unwrap()], at, None))
            .trim()
            .to_owned();
        ok(&env.run_at(&["approve", &id], at, None));
        let before = env
            .crm_count(&CrmKind::Sqlite, "FROM customers WHERE email IS NOT NULL")
            .await;
        let run = json(&ok(&env.run_at(&["run", "--json"], at, None)));
        assert_eq!(run["completed_requests"][0], id.as_str(), "{label}: {run}");
        assert_eq!(
            env.crm_count(&CrmKind::Sqlite, "FROM customers WHERE email IS NOT NULL")
                .await,
            before,
            "an export changes nothing"
        );
        // Every message to her speaks of a copy of her data, none of erasure.
        let ctx = env.context().await;
        let mails = ctx.store.outbox_of(&id).await.unwrap();
        let mut kinds: Vec<&str> = mails.iter().map(|m| m.kind.as_str()).collect();
        kinds.sort_unstable();
        assert_eq!(
            kinds,
            ["acknowledgement", "approval", "completion", "export_ready"],
            "{label}"
        );
        for m in &mails {
            for text in [&m.subject, &m.body_text, &m.body_html] {
                let lower = text.to_lowercase();
                for w in common::ERASURE_WORDING {
                    assert!(!lower.contains(w), "{label} {}: {w:?} in\n{text}", m.kind);
                }
            }
        }
        let link = link_in_outbox(&env, "/export/").expect("an export_ready email with a link");
        let token = link.split("/export/").nth(1).unwrap().to_owned();

        let start_serve = |now: &str| {
            use std::io::{BufRead, BufReader};
            let mut child = std::process::Command::new(common::BIN)
                .arg("--config")
                .arg(&env.config)
                .args(["serve", "--listen", "127.0.0.1:0"])
                .env("QUIETUS_LOG", "error")
                .env("QUIETUS_NOW", now)
                .env("QUIETUS_JOBS__POLL_SECONDS", "3600")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let base = line
                .trim()
                .strip_prefix("listening on ")
                .unwrap()
                .to_owned();
            (Serving(child), base)
        };
        let client = reqwest::Client::new();
        let (child, base) = start_serve("2026-11-25T03:00:00Z");
        let page_url = format!("{base}/export/{token}");
        let file_url = format!("{page_url}/file");
        // Opening the link asks for her address and shows no passphrase.
        let resp = client.get(&page_url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{label}");
        let page = resp.text().await.unwrap();
        assert!(
            page.contains("<form") && page.contains("name=\"email\""),
            "{label}: {page}"
        );
        assert!(!page.contains("id=\"passphrase\""), "{label}: {page}");
        // Another address gets nothing.
        let resp = client
            .post(&page_url)
            .form(&[("email", "someone.else@example.com")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{label}");
        assert!(!resp.text().await.unwrap().contains("id=\"passphrase\""));
        // Hers, however typed, shows the passphrase and where the file is.
        let resp = client
            .post(&page_url)
            .form(&[("email", " Olivia.Chen@EXAMPLE.com ")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{label}");
        let page = resp.text().await.unwrap();
        let pass = html_after(&page, "id=\"passphrase\">")
            .unwrap_or_else(|| panic!("{label}: no passphrase shown: {page}"))
            .trim()
            .to_owned();
        assert!(pass.len() >= 20, "{label}: {pass:?}");
        assert!(page.contains(&format!("/export/{token}/file")), "{page}");
        // No message, sent or stored, carries the passphrase.
        for m in &mails {
            assert!(
                !m.body_text.contains(&pass) && !m.body_html.contains(&pass),
                "{label}: the {} message carries the passphrase",
                m.kind
            );
        }
        for e in std::fs::read_dir(env.path().join("var/outbox")).unwrap() {
            let raw = common::read(e.unwrap().path()).unwrap();
            let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
            assert!(!String::from_utf8_lossy(&raw).contains(&pass));
            assert!(!msg.body_text(0).unwrap_or_default().contains(&pass));
            assert!(!msg.body_html(0).unwrap_or_default().contains(&pass));
        }
        // The file, decrypted with it, holds her data and the Art. 15 information.
        let resp = client.get(&file_url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{label}");
        let bytes = resp.bytes().await.unwrap().to_vec();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("Olivia"),
            "the download is encrypted"
        );
        let dec = age::Decryptor::new(&bytes[..]).unwrap();
        let id_pass = age::scrypt::Identity::new(age::secrecy::SecretString::from(pass.clone()));
        let mut r = dec
            .decrypt(std::iter::once(&id_pass as &dyn age::Identity))
            .unwrap();
        let mut html = String::new();
        r.read_to_string(&mut html).unwrap();
        assert!(
            html.contains("Olivia Chen") && html.contains("olivia.chen@example.com"),
            "her data is in it"
        );
        assert!(
            html.contains("GDPR Art. 77") && html.contains("Recipients"),
            "with the Art. 15 information"
        );
        assert!(html.contains("<pre id=\"data\">"), "and a JSON copy");
        // Five wrong addresses in all lock the link, even for the right one.
        for expected in [403, 403, 403, 410] {
            let resp = client
                .post(&page_url)
                .form(&[("email", "guess@example.com")])
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), expected, "{label}");
        }
        let resp = client
            .post(&page_url)
            .form(&[("email", "olivia.chen@example.com")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 410, "{label}: locked");
        assert!(!resp.text().await.unwrap().contains(&pass));
        assert_eq!(client.get(&file_url).send().await.unwrap().status(), 410);
        drop(child);
        // After the expiry the link answers 410; an unknown one 404.
        let (child, base) = start_serve("2026-12-24T03:00:00Z");
        for url in [
            format!("{base}/export/{token}"),
            format!("{base}/export/{token}/file"),
        ] {
            let resp = client.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 410, "{label}: {url}");
        }
        let resp = client
            .get(format!("{base}/export/not-a-token"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        drop(child);
        ctx.store.close().await;
        store.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaver_who_asks_gets_a_copy_taken_before_anything_is_erased() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let f = env.write(
        "exit.json",
        r#"{"kind":"exit","external_id":"HR-9","subject":{"email":"fang.wang@corp.example","employee_id":"E100"},"exit_date":"2026-12-31","successor":{"employee_id":"E200"},"copy":true}"#,
    );
    let at = Some("2027-01-02T03:00:00Z");
    let id = ok(&env.run_at(&["submit", f.to_str().unwrap()], at, None))
        .trim()
        .to_owned();
    let plan = json(&ok(&env.run_at(&["plan", &id, "--json"], at, None)));
    assert!(
        plan["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "export" && e["table"] == "personal_notes"),
        "{plan:#}"
    );
    ok(&env.run_at(&["approve", &id], at, None));
    let run = json(&ok(&env.run_at(&["run", "--json"], at, None)));
    assert_eq!(run["completed_requests"][0], id.as_str(), "{run}");
    // The copy was written while the notes still existed: it has three of them.
    let ctx = env.context().await;
    let tasks = ctx.store.tasks_of(&id).await.unwrap();
    let export = tasks.iter().find(|t| t.kind.as_str() == "export").unwrap();
    let result: Value = serde_json::from_str(export.result.as_deref().unwrap()).unwrap();
    let notes = result["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "personal_notes")
        .unwrap();
    assert_eq!(notes["already_done"], 3, "{result}");
    // Her completion message says, in an exit's words, what was handed over and closed.
    let mails = ctx.store.outbox_of(&id).await.unwrap();
    let done = mails
        .iter()
        .find(|m| m.kind.as_str() == "completion")
        .unwrap();
    for needle in [
        "The exit request",
        "What we erased:",
        "What we handed over to your successor:",
        "Accounts we closed:",
    ] {
        assert!(
            done.body_text.contains(needle),
            "{needle}: {}",
            done.body_text
        );
    }
    let copy = mails
        .iter()
        .find(|m| m.kind.as_str() == "export_ready")
        .unwrap();
    assert!(
        copy.body_text.contains("as you leave"),
        "{}",
        copy.body_text
    );
    assert_eq!(
        env.crm_count(
            &CrmKind::Sqlite,
            "FROM personal_notes WHERE employee_id = 5"
        )
        .await,
        0
    );
    ctx.store.close().await;
    // A copy only goes with exits.
    let bad = env.write(
        "bad.json",
        r#"{"kind":"erasure","subject":{"email":"a@b.example"},"copy":true}"#,
    );
    let err = common::fails(&env.run(&["submit", bad.to_str().unwrap()]));
    assert!(err.contains("copy only go with kind exit"), "{err}");
}

/// The first link in an outbox message whose text contains `marker`.
fn link_in_outbox(env: &Env, marker: &str) -> Option<String> {
    for e in std::fs::read_dir(env.path().join("var/outbox")).ok()? {
        let raw = common::read(e.ok()?.path()).ok()?;
        let msg = mail_parser::MessageParser::default().parse(&raw)?;
        let text = msg.body_text(0).unwrap_or_default().to_string();
        if let Some(i) = text.find(marker) {
            let start = text[..i].rfind("http")?;
            let end = text[i..]
                .find(char::is_whitespace)
                .map(|e| i + e)
                .unwrap_or(text.len());
            return Some(text[start..end].to_owned());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn the_verification_link_confirms_a_self_service_request_by_a_button_not_the_link() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let (child, base) = env.serve();
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{base}/api/v1/requests"))
        .bearer_auth("form-token")
        .body(r#"{"kind":"erasure","external_id":"F-1","subject":{"email":"olivia.chen@example.com"}}"#)
        .send()
        .await
        .unwrap();
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["state"], "unverified");
    let id = created["id"].as_str().unwrap().to_owned();
    // The worker polls once an hour, but a new message wakes it: the link is sent at once.
    let asked = std::time::Instant::now();
    let link = loop {
        if let Some(l) = link_in_outbox(&env, "/verify?token=") {
            break l;
        }
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(15),
            "a verification email with a link"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let token = link.split("token=").nth(1).unwrap().to_owned();
    // Opening the link changes nothing...
    let page = reqwest::get(format!("{base}/verify?token={token}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("<form") && page.contains("Yes, I made this request"),
        "{page}"
    );
    let shown = json(&ok(&env.run(&["show", &id, "--json"])));
    assert_eq!(shown["request"]["state"], "unverified");
    // ...pressing the button does.
    let resp = client
        .post(format!("{base}/verify"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let shown = json(&ok(&env.run(&["show", &id, "--json"])));
    assert_eq!(shown["request"]["state"], "pending_review");
    assert!(
        shown["request"]["due_date"].is_string(),
        "the clock started"
    );
    let resp = client
        .post(format!("{base}/verify"))
        .form(&[("token", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    common::stop(child);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_system_with_no_connector_gets_a_manual_task_its_owner_confirms_by_link() {
    let env = Env::new(&StoreKind::Sqlite).await;
    std::fs::write(
        env.path().join("policies/systems/legacy.toml"),
        r#"name = "legacy_erp"
driver = "manual"
owner_email = "erp-admins@corp.example"
description = "The old ERP, no database access"

[[table]]
name = "vendors"
key = "id"
identity = { email = "contact_email" }
columns = { contact_email = "user.contact.email" }
"#,
    )
    .unwrap();
    let f = env.write("e.json", common::ERASURE_TICKET);
    let id = ok(&env.run(&["submit", f.to_str().unwrap()]))
        .trim()
        .to_owned();
    let plan = json(&ok(&env.run(&["plan", &id, "--json"])));
    assert!(
        plan["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("legacy_erp")),
        "{plan:#}"
    );
    ok(&env.run(&["approve", &id]));
    let run = json(&ok(&env.run(&["run", "--json"])));
    assert!(
        run["completed_requests"].as_array().unwrap().is_empty(),
        "waits for the owner: {run}"
    );
    let shown = json(&ok(&env.run(&["show", &id, "--json"])));
    let manual = shown["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "manual")
        .unwrap()
        .clone();
    assert_eq!(manual["state"], "waiting_confirmation");
    let link = link_in_outbox(&env, "/confirm?token=")
        .expect("an email to the owner with a confirmation link");
    let token = link.split("token=").nth(1).unwrap().to_owned();
    let (child, base) = env.serve();
    let page = reqwest::get(format!("{base}/confirm?token={token}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("legacy_erp") && page.contains("It is done"),
        "{page}"
    );
    let resp = reqwest::Client::new()
        .post(format!("{base}/confirm"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    common::stop(child);
    // Its work is done; the request completes with its receipt (serve's worker may have
    // issued it already; otherwise the next round does).
    ok(&env.run(&["run"]));
    let shown = json(&ok(&env.run(&["show", &id, "--json"])));
    assert_eq!(shown["request"]["state"], "completed");
    // The receipt names who confirmed.
    let ctx = env.context().await;
    let receipts = ctx.store.receipts_of(&id).await.unwrap();
    assert_eq!(receipts.len(), 1);
    assert!(
        receipts[0].1.contains("owner of legacy_erp (email link)"),
        "{}",
        receipts[0].1
    );
    ctx.store.close().await;
}

/// A round of work that fails (here: the store refuses to record a task done) gives the
/// lease of the task it was running back at once: the task is not stranded for the rest of
/// its lease (five minutes by default), and the next round finishes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_round_releases_the_lease_of_its_task() {
    let kind = StoreKind::of(Backend::Sqlite).await;
    let env = Env::new(&kind).await;
    let app = quietus::app::App::open(quietus::config::Config::load(Some(&env.config)).unwrap())
        .await
        .unwrap();
    let ctx = &app.ctx;
    let s = app.worker().unwrap();
    let now = quietus::clock::now();
    let ids = common::approved_erasures(ctx, &["olivia.chen@example.com"], "L", now).await;
    let quietus::store::Pool::Sqlite(pool) = &ctx.store.pool else {
        unreachable!("a SQLite store")
    };
    sqlx::query(
        "CREATE TRIGGER refuse_done BEFORE UPDATE OF state ON tasks WHEN NEW.state = 'done' \
         BEGIN SELECT RAISE(ABORT, 'injected: the store refuses'); END",
    )
    .execute(pool)
    .await
    .unwrap();
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let e = quietus::jobs::run_due(ctx, &s, &stop, &|_| {})
        .await
        .unwrap_err();
    assert!(e.message.contains("injected"), "{e}");
    let leased: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT id, lease_owner FROM tasks WHERE lease_owner IS NOT NULL")
            .fetch_all(pool)
            .await
            .unwrap();
    assert!(leased.is_empty(), "tasks still leased: {leased:?}");
    sqlx::query("DROP TRIGGER refuse_done")
        .execute(pool)
        .await
        .unwrap();
    let summary = quietus::jobs::run_due(ctx, &s, &stop, &|_| {})
        .await
        .unwrap();
    assert!(summary.done > 0, "{summary:?}");
    assert_eq!(
        ctx.store.request(&ids[0]).await.unwrap().state,
        quietus::lifecycle::State::Completed
    );
    app.close().await;
    drop(env);
    kind.cleanup().await;
}

/// A worker runs several tasks at once, but never two tasks of one request on one system
/// (an exit's disable and apply tasks on the CRM wait for each other), in one lease batch
/// or across batches; and with several at once, the exit still completes with one
/// receipt.
#[tokio::test(flavor = "multi_thread")]
async fn two_tasks_of_one_request_on_one_system_never_run_at_once() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let f = env.write("exit.json", EXIT_TICKET);
    let at = "2027-01-04T03:00:00Z";
    let id = ok(&env.run_at(&["submit", f.to_str().unwrap()], Some(at), None))
        .trim()
        .to_owned();
    ok(&env.run_at(&["approve", &id], Some(at), None));
    let app = quietus::app::App::open(quietus::config::Config::load(Some(&env.config)).unwrap())
        .await
        .unwrap();
    let ctx = &app.ctx;
    let now = chrono::DateTime::parse_from_rfc3339(at).unwrap().to_utc();
    quietus::jobs::schedule_approved(ctx, "quietus", now)
        .await
        .unwrap();
    let until = now + chrono::Duration::minutes(5);
    // The leaver's login closes first: a worker taking one task at a time takes the CRM's
    // disable task before its (long) apply task.
    let mut one_by_one = Vec::new();
    loop {
        let t = ctx.store.lease("w0", now, until, 1, true).await.unwrap();
        let Some(t) = t.into_iter().next() else { break };
        one_by_one.push(t.clone());
        if t.system == "crm" {
            assert_eq!(t.kind, quietus::jobs::TaskKind::Disable, "{t:?}");
            break;
        }
    }
    assert!(
        one_by_one.iter().any(|t| t.system == "crm"),
        "{one_by_one:?}"
    );
    for t in &one_by_one {
        ctx.store.release_lease(&t.id, "w0").await.unwrap();
    }
    let first = ctx.store.lease("w1", now, until, 50, true).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for t in &first {
        assert!(
            seen.insert((t.request_id.clone(), t.system.clone())),
            "two tasks of one request on {} in one batch",
            t.system
        );
    }
    // The siblings left behind wait while the leased ones run, for this worker and others.
    let second = ctx.store.lease("w2", now, until, 50, true).await.unwrap();
    for t in &second {
        assert!(
            !seen.contains(&(t.request_id.clone(), t.system.clone())),
            "task {} of {} started beside its sibling",
            t.id,
            t.system
        );
    }
    let open = ctx.store.tasks_of(&id).await.unwrap();
    let per_system = open.iter().filter(|t| t.system == first[0].system).count();
    assert!(
        per_system > 1,
        "the exit has several tasks on {}: {open:?}",
        first[0].system
    );
    for t in first.iter().chain(&second) {
        ctx.store
            .release_lease(&t.id, &t.lease_owner.clone().unwrap())
            .await
            .unwrap();
    }
    app.close().await;
    // Carried out with several tasks at once: completed, one receipt.
    let out = ok(&env.run_at(&["run", "--json"], Some(at), None));
    let v = json(&out);
    assert_eq!(v["completed_requests"], serde_json::json!([id]), "{out}");
    let shown = json(&ok(&env.run_at(&["show", &id, "--json"], Some(at), None)));
    assert_eq!(shown["request"]["state"], "completed", "{shown}");
}

/// Workers leasing at the same moment (lanes of one process, or several instances on one
/// PostgreSQL store) never hold two tasks of one request on one system between them: the
/// check that no sibling is leased and the lease itself are one step for every worker.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn workers_leasing_at_once_never_take_two_siblings(#[case] backend: Backend) {
    let kind = StoreKind::of(backend).await;
    let env = Env::new(&kind).await;
    let f = env.write("exit.json", EXIT_TICKET);
    let at = "2027-01-04T03:00:00Z";
    let id = ok(&env.run_at(&["submit", f.to_str().unwrap()], Some(at), None))
        .trim()
        .to_owned();
    ok(&env.run_at(&["approve", &id], Some(at), None));
    let app = quietus::app::App::open(quietus::config::Config::load(Some(&env.config)).unwrap())
        .await
        .unwrap();
    let ctx = &app.ctx;
    let now = chrono::DateTime::parse_from_rfc3339(at).unwrap().to_utc();
    quietus::jobs::schedule_approved(ctx, "quietus", now)
        .await
        .unwrap();
    let until = now + chrono::Duration::minutes(5);
    for round in 0..40 {
        let leases = (0..4).map(|w| {
            let store = ctx.store.clone();
            async move {
                store
                    .lease(&format!("w{w}"), now, until, 1, true)
                    .await
                    .unwrap()
            }
        });
        let taken: Vec<_> = futures::future::join_all(leases)
            .await
            .into_iter()
            .flatten()
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for t in &taken {
            assert!(
                seen.insert((t.request_id.clone(), t.system.clone())),
                "round {round}: two workers hold tasks of one request on {}: {:?}",
                t.system,
                taken
                    .iter()
                    .map(|t| (&t.id, t.kind, &t.lease_owner))
                    .collect::<Vec<_>>()
            );
        }
        for t in &taken {
            ctx.store
                .release_lease(&t.id, t.lease_owner.as_deref().unwrap())
                .await
                .unwrap();
        }
    }
    app.close().await;
    drop(env);
    kind.cleanup().await;
}

/// A round's lanes lease together (issue 8): the lanes waiting at once take their tasks in
/// one statement, and when it finds fewer than there are lanes waiting, those left over
/// end without asking again. Before, every lane asked on its own: one `quietus run` of one
/// approved erasure on four lanes leased five times (the task, then four times nothing),
/// each under the lease lock, one after another, while the task waited its turn.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn a_rounds_lanes_lease_together(#[case] backend: Backend) {
    let kind = StoreKind::of(backend).await;
    let label = kind.label();
    let env = Env::new(&kind).await;
    let f = env.write("erasure.json", common::ERASURE_TICKET);
    let id = ok(&env.run(&["submit", f.to_str().unwrap()]))
        .trim()
        .to_owned();
    ok(&env.run(&["approve", &id]));
    let out = std::process::Command::new(common::BIN)
        .arg("--config")
        .arg(&env.config)
        .args(["run", "--json"])
        .env_remove("QUIETUS_CONFIG")
        .env_remove("QUIETUS_NOW")
        .env("QUIETUS_JOBS__PARALLEL", "4")
        .env("QUIETUS_LOG", "info,sqlx::query=debug")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "[{label}] {log}");
    let s = json(&String::from_utf8_lossy(&out.stdout));
    let done = s["done"].as_u64().unwrap();
    assert!(done >= 1, "[{label}] {s}");
    assert_eq!(s["completed_requests"][0], id.as_str(), "[{label}] {s}");
    let leases = log
        .lines()
        .filter(|l| {
            l.contains("lease_owner = $1, lease_expires_at = $3, updated_at = $2 WHERE id IN")
        })
        .count() as u64;
    assert!(
        leases <= done + 1,
        "[{label}] {leases} lease statements for {done} task(s) on four lanes (at most {})",
        done + 1
    );
    kind.cleanup().await;
}

/// An approval committed while a round's lanes run is carried out in that round (issue
/// 8): scheduled as soon as the lanes have nothing left, not after the round's closing
/// work and the next round's start. Here the second request is approved the moment the
/// first one's task is taken; before, the round ended with only the first done.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn an_approval_during_a_round_is_carried_out_in_it(#[case] backend: Backend) {
    let kind = StoreKind::of(backend).await;
    let label = kind.label();
    let env = Env::new(&kind).await;
    let app = quietus::app::App::open(quietus::config::Config::load(Some(&env.config)).unwrap())
        .await
        .unwrap();
    let ctx = &app.ctx;
    let s = app.worker().unwrap();
    let now = quietus::clock::now();
    let first = common::approved_erasures(ctx, &["olivia.chen@example.com"], "A", now).await;
    // The second is filed now and approved during the round.
    let raw = r#"{"kind":"erasure","external_id":"B-0","subject":{"email":"alice.brown@example.com"},"jurisdiction":"GDPR"}"#;
    let ticket =
        quietus::intake::parse_ticket(raw.as_bytes(), "ticket", ctx.policies.handover_required())
            .unwrap();
    let source = quietus::intake::Source {
        door: quietus::intake::Door::Cli,
        actor: "test".into(),
        trusted: true,
    };
    let second = quietus::intake::submit(ctx, &ticket, raw, &source, now)
        .await
        .unwrap()
        .id;
    let approved = std::sync::atomic::AtomicBool::new(false);
    let on_task = |_: &quietus::store::TaskRow| {
        if !approved.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(ctx.decide(
                        &second,
                        quietus::lifecycle::Decision::Approve,
                        "dpo",
                        None,
                        quietus::clock::now(),
                    ))
                    .unwrap();
            });
        }
    };
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let summary = quietus::jobs::run_due(ctx, &s, &stop, &on_task)
        .await
        .unwrap();
    assert!(approved.load(std::sync::atomic::Ordering::SeqCst));
    for id in [&first[0], &second] {
        assert!(
            summary.completed_requests.contains(id),
            "[{label}] {id} not completed in the round: {summary:?}"
        );
        assert_eq!(
            ctx.store.request(id).await.unwrap().state,
            quietus::lifecycle::State::Completed,
            "[{label}] {id}"
        );
    }
    assert_eq!(summary.scheduled, 2, "[{label}] {summary:?}");
    assert_eq!(summary.receipts.len(), 2, "[{label}] {summary:?}");
    app.close().await;
    drop(env);
    kind.cleanup().await;
}
