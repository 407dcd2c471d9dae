//! The HTTP door and the inbox, against a real `quietus serve` process, on every state
//! store (SQLite, and PostgreSQL when its URL is given).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::{BIN, Backend, ERASURE_TICKET, EXIT_TICKET, Env, StoreKind, ok};
use reqwest::StatusCode;
use rstest::rstest;
use serde_json::Value;

const HR: &str = "hr-token";
const FORM: &str = "form-token";
const DPO: &str = "dpo-token";

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A running `quietus serve`, stopped with SIGTERM when dropped.
struct Server {
    child: Option<Child>,
    base: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(env: &Env) -> Server {
        Server::start_with(env, &[], None)
    }

    /// With environment overrides (`QUIETUS_SERVER__...`), and a file limit (`ulimit -n`)
    /// if `nofile` is given.
    fn start_with(env: &Env, vars: &[(&str, &str)], nofile: Option<u32>) -> Server {
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.envs(vars.iter().copied());
        let mut child = cmd
            .arg("--config")
            .arg(&env.config)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("QUIETUS_CONFIG")
            .env_remove("QUIETUS_NOW")
            .env("QUIETUS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn quietus serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Keep draining stdout after the line, so the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.trim().strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match err_pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) => break addr,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = child.try_wait().unwrap() {
                        std::thread::sleep(Duration::from_millis(200));
                        panic!(
                            "quietus serve exited ({status}) before listening:\n{}",
                            stderr.lock().unwrap()
                        );
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "quietus serve did not print `listening on` within 30 s:\n{}",
                            stderr.lock().unwrap()
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().unwrap();
                    std::thread::sleep(Duration::from_millis(200));
                    panic!(
                        "quietus serve closed its output ({status}) before listening:\n{}",
                        stderr.lock().unwrap()
                    );
                }
            }
        };
        assert!(base.starts_with("http://127.0.0.1:"), "odd address {base}");
        Server {
            child: Some(child),
            base,
            stderr,
        }
    }

    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM, then wait up to `within`; `None` if it is still running then (it is
    /// killed).
    fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.terminate(Duration::from_secs(10));
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
    text: String,
}

async fn answer(res: reqwest::Response) -> Answer {
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        text,
    }
}

async fn post(s: &Server, path: &str, token: Option<&str>, body: impl Into<String>) -> Answer {
    let mut req = client()
        .post(s.url(path))
        .header("content-type", "application/json")
        .body(body.into());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    answer(req.send().await.unwrap()).await
}

async fn get(s: &Server, path: &str, token: Option<&str>) -> Answer {
    let mut req = client().get(s.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    answer(req.send().await.unwrap()).await
}

/// Assert an API error: status, `{"error": {"code", "message"}}`; returns the message.
#[track_caller]
fn api_error(a: &Answer, status: u16, code: &str, label: &str) -> String {
    assert_eq!(
        a.status.as_u16(),
        status,
        "[{label}] status; body: {}",
        a.text
    );
    assert_eq!(
        a.body["error"]["code"], code,
        "[{label}] error code; body: {}",
        a.text
    );
    let msg = a.body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("[{label}] no error message: {}", a.text));
    assert!(!msg.is_empty(), "[{label}] empty error message");
    msg.to_owned()
}

/// The requests `quietus queue --json` lists.
fn queue(env: &Env) -> Vec<Value> {
    let q = json(&ok(&env.run(&["queue", "--json"])));
    q["requests"].as_array().expect("requests array").clone()
}

fn external_ids(reqs: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = reqs
        .iter()
        .map(|r| r["external_id"].as_str().unwrap_or("").to_owned())
        .collect();
    v.sort();
    v
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn one_ticket_by_every_door_is_one_request(#[case] backend: Backend) {
    {
        let kind = StoreKind::of(backend).await;
        let label = kind.label();
        let env = Env::new(&kind).await;
        let server = Server::start(&env);

        // HTTP twice, then the CLI.
        let first = post(&server, "/api/v1/requests", Some(HR), EXIT_TICKET).await;
        assert_eq!(
            first.status,
            StatusCode::CREATED,
            "[{label}] {}",
            first.text
        );
        assert_eq!(first.body["created"], true, "[{label}] {}", first.text);
        assert_eq!(first.body["state"], "pending_review", "[{label}]");
        let id = first.body["id"].as_str().expect("id").to_owned();
        assert!(!id.is_empty());
        let second = post(&server, "/api/v1/requests", Some(HR), EXIT_TICKET).await;
        assert_eq!(second.status, StatusCode::OK, "[{label}] {}", second.text);
        assert_eq!(second.body["created"], false, "[{label}]");
        assert_eq!(second.body["id"], id.as_str(), "[{label}]");
        let f = env.write("exit.json", EXIT_TICKET);
        let cli = json(&ok(&env.run(&["submit", f.to_str().unwrap(), "--json"])));
        assert_eq!(cli["created"], false, "[{label}] {cli}");
        assert_eq!(cli["id"], id.as_str(), "[{label}] {cli}");
        let q = queue(&env);
        assert_eq!(q.len(), 1, "[{label}] {q:?}");
        assert_eq!(q[0]["id"], id.as_str(), "[{label}]");

        // The CLI first, then HTTP.
        let f = env.write("erasure.json", ERASURE_TICKET);
        let cli = json(&ok(&env.run(&["submit", f.to_str().unwrap(), "--json"])));
        assert_eq!(cli["created"], true, "[{label}] {cli}");
        let eid = cli["id"].as_str().unwrap().to_owned();
        assert_ne!(eid, id);
        let http = post(&server, "/api/v1/requests", Some(HR), ERASURE_TICKET).await;
        assert_eq!(http.status, StatusCode::OK, "[{label}] {}", http.text);
        assert_eq!(http.body["created"], false, "[{label}]");
        assert_eq!(http.body["id"], eid.as_str(), "[{label}]");
        let q = queue(&env);
        assert_eq!(q.len(), 2, "[{label}] {q:?}");
        assert_eq!(external_ids(&q), ["HR-7", "T-1"], "[{label}]");

        drop(server);
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
async fn the_same_external_id_with_another_ticket_is_a_conflict(#[case] backend: Backend) {
    {
        let kind = StoreKind::of(backend).await;
        let label = kind.label();
        let env = Env::new(&kind).await;
        let server = Server::start(&env);
        let first = post(&server, "/api/v1/requests", Some(HR), EXIT_TICKET).await;
        assert_eq!(
            first.status,
            StatusCode::CREATED,
            "[{label}] {}",
            first.text
        );
        let id = first.body["id"].as_str().unwrap().to_owned();

        let other = EXIT_TICKET.replace("2026-12-31", "2026-11-30");
        assert_ne!(other, EXIT_TICKET);
        let a = post(&server, "/api/v1/requests", Some(HR), other).await;
        api_error(&a, 409, "external_id_conflict", label);
        let other = EXIT_TICKET.replace("\"E200\"", "\"E205\"");
        assert_ne!(other, EXIT_TICKET);
        let a = post(&server, "/api/v1/requests", Some(HR), other).await;
        api_error(&a, 409, "external_id_conflict", label);

        let q = queue(&env);
        assert_eq!(q.len(), 1, "[{label}] {q:?}");
        // The stored request is the first ticket, unchanged.
        let shown = get(&server, &format!("/api/v1/requests/{id}"), Some(DPO)).await;
        assert_eq!(shown.status, StatusCode::OK, "[{label}] {}", shown.text);
        assert_eq!(
            shown.body["request"]["exit_date"], "2026-12-31",
            "[{label}]"
        );
        assert_eq!(
            shown.body["request"]["successor"]["employee_id"], "E200",
            "[{label}] {}",
            shown.text
        );
        // A unique prefix of the id names it too; what names no request is not found.
        let short = get(
            &server,
            &format!("/api/v1/requests/{}", &id[..6]),
            Some(DPO),
        )
        .await;
        assert_eq!(short.status, StatusCode::OK, "[{label}] {}", short.text);
        assert_eq!(short.body["request"]["id"], id.as_str(), "[{label}]");
        let none = get(&server, "/api/v1/requests/0000000000000000", Some(DPO)).await;
        api_error(&none, 404, "not_found", label);

        drop(server);
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
async fn tokens_and_roles(#[case] backend: Backend) {
    {
        let kind = StoreKind::of(backend).await;
        let label = kind.label();
        let env = Env::new(&kind).await;
        let server = Server::start(&env);

        let a = post(&server, "/api/v1/requests", None, ERASURE_TICKET).await;
        api_error(&a, 401, "unauthorized", label);
        let a = post(
            &server,
            "/api/v1/requests",
            Some("not-a-token"),
            ERASURE_TICKET,
        )
        .await;
        api_error(&a, 401, "unauthorized", label);
        // A token that is a configured hash, not the secret, is no token.
        let a = post(
            &server,
            "/api/v1/requests",
            Some(&common::sha(HR)),
            ERASURE_TICKET,
        )
        .await;
        api_error(&a, 401, "unauthorized", label);
        assert!(
            queue(&env).is_empty(),
            "[{label}] refused calls stored something"
        );

        // Self-service: stored, but unverified until the email link is followed.
        let a = post(&server, "/api/v1/requests", Some(FORM), ERASURE_TICKET).await;
        assert_eq!(a.status, StatusCode::CREATED, "[{label}] {}", a.text);
        assert_eq!(a.body["created"], true, "[{label}]");
        assert_eq!(a.body["state"], "unverified", "[{label}] {}", a.text);
        let id = a.body["id"].as_str().unwrap().to_owned();
        let token = a.body["verify_token"]
            .as_str()
            .unwrap_or_else(|| panic!("[{label}] no verify_token: {}", a.text))
            .to_owned();

        // Listing is for the DPO and auditors only.
        let a = get(&server, "/api/v1/requests", Some(HR)).await;
        api_error(&a, 403, "forbidden", label);
        let a = get(&server, "/api/v1/requests", Some(FORM)).await;
        api_error(&a, 403, "forbidden", label);
        let a = get(&server, &format!("/api/v1/requests/{id}"), Some(HR)).await;
        api_error(&a, 403, "forbidden", label);
        let a = get(&server, "/api/v1/requests", None).await;
        api_error(&a, 401, "unauthorized", label);
        let a = get(&server, "/api/v1/requests", Some(DPO)).await;
        assert_eq!(a.status, StatusCode::OK, "[{label}] {}", a.text);
        let list = a.body["requests"].as_array().unwrap();
        assert_eq!(list.len(), 1, "[{label}] {}", a.text);
        assert_eq!(list[0]["id"], id.as_str());
        assert_eq!(list[0]["state"], "unverified");

        // The verification link moves it on; a wrong token does not.
        let a = post(&server, "/api/v1/verify", None, r#"{"token":"nope"}"#).await;
        api_error(&a, 404, "not_found", label);
        let a = post(
            &server,
            "/api/v1/verify",
            None,
            serde_json::json!({ "token": token }).to_string(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "[{label}] {}", a.text);
        assert_eq!(a.body["id"], id.as_str());
        assert_eq!(a.body["state"], "pending_review", "[{label}] {}", a.text);

        drop(server);
        kind.cleanup().await;
    }
}

async fn crm_customers(crm: &Path) -> i64 {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(crm)
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM customers")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_changes_nothing(#[case] backend: Backend) {
    {
        let kind = StoreKind::of(backend).await;
        let label = kind.label();
        let env = Env::new(&kind).await;
        let server = Server::start(&env);
        assert_eq!(crm_customers(&env.path().join("crm.db")).await, 120);

        // Over the body limit (65536 by default): a valid ticket padded with a long note.
        let pad = "x".repeat(70_000);
        let big = format!(
            r#"{{"kind":"erasure","external_id":"BIG-1","subject":{{"email":"big@example.com"}},"note":"{pad}"}}"#
        );
        assert!(big.len() > 70_000);
        let a = post(&server, "/api/v1/requests", Some(HR), big).await;
        api_error(&a, 413, "too_large", label);

        let a = post(
            &server,
            "/api/v1/requests",
            Some(HR),
            r#"{"kind":"erasure","subject":{"email":"a@b.example"}"#,
        )
        .await;
        let msg = api_error(&a, 400, "ticket_invalid", label);
        assert!(
            msg.contains("line 1") && msg.contains("column"),
            "[{label}] malformed JSON should name line and column: {msg}"
        );

        let cases: [(&str, &str); 5] = [
            (
                r#"{"kind":"forget","external_id":"K-1","subject":{"email":"a@b.example"}}"#,
                "kind",
            ),
            (
                r#"{"kind":"erasure","external_id":"E-1","subject":{"email":"not-an-email"}}"#,
                "subject.email",
            ),
            (
                r#"{"kind":"exit","external_id":"X-1","subject":{"employee_id":"E100"},"exit_date":"2026-12-31"}"#,
                "successor",
            ),
            (
                r#"{"kind":"exit","external_id":"X-2","subject":{"employee_id":"E100"},"exit_date":"2026-02-30","successor":{"employee_id":"E200"}}"#,
                "exit_date",
            ),
            (
                r#"{"kind":"erasure","external_id":"I-1","subject":{"email":"x@y.z'); DROP TABLE customers; --"}}"#,
                "subject.email",
            ),
        ];
        for (body, names) in cases {
            let a = post(&server, "/api/v1/requests", Some(HR), body).await;
            let msg = api_error(&a, 400, "ticket_invalid", label);
            assert!(
                msg.contains(names),
                "[{label}] message for {body} should name {names}: {msg}"
            );
        }
        // Not JSON at all, and an empty body.
        for body in ["kind=erasure&email=a@b.example", ""] {
            let a = post(&server, "/api/v1/requests", Some(HR), body).await;
            api_error(&a, 400, "ticket_invalid", label);
        }

        let q = queue(&env);
        assert!(q.is_empty(), "[{label}] bad input stored requests: {q:?}");
        assert_eq!(
            crm_customers(&env.path().join("crm.db")).await,
            120,
            "[{label}] the CRM changed"
        );
        // The server is still well after all that.
        let h = get(&server, "/healthz", None).await;
        assert_eq!(h.status, StatusCode::OK, "[{label}]");

        drop(server);
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
async fn healthz_and_security_headers(#[case] backend: Backend) {
    {
        let kind = StoreKind::of(backend).await;
        let label = kind.label();
        let env = Env::new(&kind).await;
        let server = Server::start(&env);
        let h = get(&server, "/healthz", None).await;
        assert_eq!(h.status, StatusCode::OK, "[{label}] {}", h.text);
        assert_eq!(h.body["status"], "ok", "[{label}] {}", h.text);
        assert_eq!(
            h.headers
                .get("x-content-type-options")
                .and_then(|v| v.to_str().ok()),
            Some("nosniff"),
            "[{label}] /healthz headers: {:?}",
            h.headers
        );
        // Errors carry the headers too.
        let e = get(&server, "/api/v1/requests", None).await;
        assert_eq!(e.status, StatusCode::UNAUTHORIZED, "[{label}]");
        assert_eq!(
            e.headers
                .get("x-content-type-options")
                .and_then(|v| v.to_str().ok()),
            Some("nosniff"),
            "[{label}] error headers: {:?}",
            e.headers
        );
        let c = post(&server, "/api/v1/requests", Some(HR), ERASURE_TICKET).await;
        assert_eq!(c.status, StatusCode::CREATED, "[{label}]");
        assert_eq!(
            c.headers
                .get("x-content-type-options")
                .and_then(|v| v.to_str().ok()),
            Some("nosniff"),
            "[{label}] created headers: {:?}",
            c.headers
        );
        drop(server);
        kind.cleanup().await;
    }
}

/// Write `name` into `dir` as an inbox client should: a hidden temp file, then a rename.
fn drop_file(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Files (not folders) directly in `dir`.
fn files_in(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Wait (up to 20 s) until the inbox holds no file.
fn wait_for_empty_inbox(inbox: &Path, server: &Server, label: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = files_in(inbox);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "[{label}] the inbox still holds {left:?} after 20 s; server log:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn one_ending_with(files: &[String], suffix: &str, label: &str) -> String {
    let found: Vec<&String> = files.iter().filter(|f| f.ends_with(suffix)).collect();
    assert_eq!(found.len(), 1, "[{label}] *{suffix} in {files:?}");
    found[0].clone()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn inbox_files_are_taken_whole_or_rejected_with_a_reason(#[case] backend: Backend) {
    {
        let kind = StoreKind::of(backend).await;
        let label = kind.label();
        let env = Env::new(&kind).await;
        let inbox: PathBuf = env.path().join("var/inbox");
        std::fs::create_dir_all(&inbox).unwrap();
        let server = Server::start(&env);

        let good_json = r#"{"kind":"erasure","external_id":"INBOX-1","subject":{"email":"olivia.chen@example.com"},"jurisdiction":"GDPR"}"#;
        let bad_json = r#"{"kind":"erasure","external_id":"INBOX-2","subject":{"email":"#;
        let good_csv = "external_id,employee_id,email,exit_date,successor_employee_id\n\
                        HR-CSV-1,E115,sophie.turner@corp.example,2026-12-31,E200\n\
                        HR-CSV-2,E135,daniel.hughes@corp.example,2027-01-15,E200\n";
        let bad_csv = "external_id,employee_id,exit_date,successor_employee_id\n\
                       HR-BAD-1,E145,2026-12-31,E200\n\
                       HR-BAD-2,E170,31/12/2026,E200\n\
                       HR-BAD-3,E190,2027-01-31,E200\n";
        drop_file(&inbox, "good.json", good_json);
        drop_file(&inbox, "bad.json", bad_json);
        drop_file(&inbox, "leavers.csv", good_csv);
        drop_file(&inbox, "broken-list.csv", bad_csv);
        wait_for_empty_inbox(&inbox, &server, label);
        // Our own temp files were renamed away; nothing else is left behind.
        assert!(files_in(&inbox).is_empty());

        let done = files_in(&inbox.join("done"));
        let rejected = files_in(&inbox.join("rejected"));
        assert_eq!(done.len(), 2, "[{label}] done: {done:?}");
        one_ending_with(&done, "-good.json", label);
        one_ending_with(&done, "-leavers.csv", label);
        assert_eq!(rejected.len(), 4, "[{label}] rejected: {rejected:?}");
        let bad = one_ending_with(&rejected, "-bad.json", label);
        let note = common::read_to_string(inbox.join("rejected").join(format!("{bad}.error.txt")))
            .unwrap_or_else(|e| panic!("[{label}] no error note beside {bad}: {e}"));
        assert!(
            note.contains("bad.json") && note.contains("malformed") && note.contains("line 1"),
            "[{label}] bad.json note: {note}"
        );
        assert!(note.contains("ticket_invalid"), "[{label}] {note}");
        let broken = one_ending_with(&rejected, "-broken-list.csv", label);
        let note =
            common::read_to_string(inbox.join("rejected").join(format!("{broken}.error.txt")))
                .unwrap_or_else(|e| panic!("[{label}] no error note beside {broken}: {e}"));
        assert!(
            note.contains("broken-list.csv: line 3") && note.contains("exit_date"),
            "[{label}] broken-list.csv note: {note}"
        );
        // The rejected files are kept as they were sent.
        assert_eq!(
            common::read_to_string(inbox.join("rejected").join(&broken)).unwrap(),
            bad_csv
        );

        // One from the JSON, two from the good list, none from the broken list.
        let q = queue(&env);
        assert_eq!(
            external_ids(&q),
            ["HR-CSV-1", "HR-CSV-2", "INBOX-1"],
            "[{label}] {q:?}"
        );
        for r in &q {
            assert_eq!(r["state"], "pending_review", "[{label}] {r}");
        }
        let leavers: Vec<&Value> = q.iter().filter(|r| r["kind"] == "exit").collect();
        assert_eq!(leavers.len(), 2, "[{label}]");

        // The same good file again: accepted (it is the same request), nothing new.
        std::thread::sleep(Duration::from_millis(1100)); // a new stamp for done/
        drop_file(&inbox, "good.json", good_json);
        wait_for_empty_inbox(&inbox, &server, label);
        let done = files_in(&inbox.join("done"));
        assert_eq!(
            done.iter().filter(|f| f.ends_with("-good.json")).count(),
            2,
            "[{label}] done: {done:?}"
        );
        assert_eq!(files_in(&inbox.join("rejected")).len(), 4, "[{label}]");
        let again = queue(&env);
        assert_eq!(again.len(), 3, "[{label}] {again:?}");
        assert_eq!(external_ids(&again), external_ids(&q));

        drop(server);
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
async fn sigterm_shuts_down_gracefully(#[case] backend: Backend) {
    {
        let kind = StoreKind::of(backend).await;
        let label = kind.label();
        let env = Env::new(&kind).await;
        let mut server = Server::start(&env);
        let h = get(&server, "/healthz", None).await;
        assert_eq!(h.status, StatusCode::OK, "[{label}]");
        let url = server.url("/healthz");
        let started = Instant::now();
        let status = server.terminate(Duration::from_secs(10));
        let status = status.unwrap_or_else(|| {
            panic!(
                "[{label}] quietus serve still ran 10 s after SIGTERM:\n{}",
                server.stderr()
            )
        });
        assert!(
            status.success(),
            "[{label}] exit status after SIGTERM: {status}\n{}",
            server.stderr()
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        // It no longer answers.
        assert!(client().get(url).send().await.is_err(), "[{label}]");
        kind.cleanup().await;
    }
}

// ---- Slow clients, the connection cap, and the API's errors (issue 9, items 3 and 15).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Read until the server closes the connection: when it did, and what it sent; `None` if
/// it is still open after `wait`.
async fn read_until_closed(s: &mut TcpStream, wait: Duration) -> Option<(Duration, String)> {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = wait.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some((
                    started.elapsed(),
                    String::from_utf8_lossy(&got).into_owned(),
                ));
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

const ONE_SECOND_TIMEOUTS: [(&str, &str); 2] = [
    ("QUIETUS_SERVER__HEADER_TIMEOUT_SECONDS", "1"),
    ("QUIETUS_SERVER__BODY_TIMEOUT_SECONDS", "1"),
];

#[tokio::test(flavor = "multi_thread")]
async fn silent_idle_and_slow_header_connections_are_closed() {
    let kind = StoreKind::of(Backend::Sqlite).await;
    let env = Env::new(&kind).await;
    let server = Server::start_with(&env, &ONE_SECOND_TIMEOUTS, None);
    let addr = server.addr();

    // Opens and sends nothing.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let (after, _) = read_until_closed(&mut silent, Duration::from_secs(8))
        .await
        .expect("a silent connection is still open after 8 s");
    assert!(after < Duration::from_secs(4), "closed after {after:?}");

    // Half a request head, then nothing.
    let mut partial = TcpStream::connect(&addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (after, _) = read_until_closed(&mut partial, Duration::from_secs(8))
        .await
        .expect("a partial header is still open after 8 s");
    assert!(after < Duration::from_secs(4), "closed after {after:?}");

    // A head dribbled a byte at a time, each in time for any per-read timeout.
    let dribbled = TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = dribbled.into_split();
    let writer = tokio::spawn(async move {
        for b in
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
        {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a dribbled header is still open after 8 s");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    writer.abort();

    // Answered, then kept alive and idle: closed too.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (after, text) = read_until_closed(&mut idle, Duration::from_secs(8))
        .await
        .expect("an idle kept-alive connection is still open after 8 s");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(after < Duration::from_secs(4), "closed after {after:?}");

    // And the server still answers.
    let h = get(&server, "/healthz", None).await;
    assert_eq!(h.status, StatusCode::OK);
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_body_is_cut_with_408() {
    let kind = StoreKind::of(Backend::Sqlite).await;
    let env = Env::new(&kind).await;
    let server = Server::start_with(&env, &ONE_SECOND_TIMEOUTS, None);
    let addr = server.addr();
    let head = format!(
        "POST /api/v1/requests HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {HR}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        ERASURE_TICKET.len()
    );

    // A part of the body, then nothing.
    let mut stalled = TcpStream::connect(&addr).await.unwrap();
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled
        .write_all(&ERASURE_TICKET.as_bytes()[..10])
        .await
        .unwrap();
    let (after, text) = read_until_closed(&mut stalled, Duration::from_secs(8))
        .await
        .expect("a stalled body is still open after 8 s");
    assert!(after < Duration::from_secs(4), "answered after {after:?}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""code":"timeout""#), "{text}");

    // The body a byte at a time: the limit is for the whole body, not for each read.
    let dribbled = TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = dribbled.into_split();
    let body = ERASURE_TICKET.as_bytes().to_vec();
    let head2 = head.clone();
    let writer = tokio::spawn(async move {
        if wr.write_all(head2.as_bytes()).await.is_err() {
            return;
        }
        for b in body {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    assert!(queue(&env).is_empty(), "a cut body was stored");
    let h = get(&server, "/healthz", None).await;
    assert_eq!(h.status, StatusCode::OK);
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_the_connection_cap_a_request_waits_and_is_answered() {
    let kind = StoreKind::of(Backend::Sqlite).await;
    let env = Env::new(&kind).await;
    let server = Server::start_with(
        &env,
        &[
            ("QUIETUS_SERVER__HEADER_TIMEOUT_SECONDS", "2"),
            ("QUIETUS_SERVER__MAX_CONNECTIONS", "3"),
        ],
        None,
    );
    let addr = server.addr();
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let h = get(&server, "/healthz", None).await;
    let waited = started.elapsed();
    assert_eq!(h.status, StatusCode::OK, "{}", h.text);
    // It waited for a silent one to be closed (2 s after it opened), then was answered.
    assert!(
        waited > Duration::from_millis(1000) && waited < Duration::from_secs(8),
        "answered after {waited:?}"
    );
    drop(silent);
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_beyond_the_file_limit_leave_the_inbox_working() {
    let kind = StoreKind::of(Backend::Sqlite).await;
    let env = Env::new(&kind).await;
    let inbox: PathBuf = env.path().join("var/inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    // The incident, scaled down: more idle sockets than the process may open files.
    let server = Server::start_with(
        &env,
        &[
            ("QUIETUS_SERVER__HEADER_TIMEOUT_SECONDS", "60"),
            ("QUIETUS_SERVER__MAX_CONNECTIONS", "16"),
        ],
        Some(128),
    );
    let addr = server.addr();
    let mut idle = Vec::new();
    // 120: more than the files left to the process, fewer than the listen queue holds
    // (128), so that every connect completes.
    for _ in 0..120 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fds = std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    drop_file(
        &inbox,
        "flood.json",
        r#"{"kind":"erasure","external_id":"FLOOD-1","subject":{"email":"olivia.chen@example.com"},"jurisdiction":"GDPR"}"#,
    );
    wait_for_empty_inbox(&inbox, &server, "sqlite");
    assert_eq!(
        files_in(&inbox.join("done")).len(),
        1,
        "{}",
        server.stderr()
    );
    eprintln!("open files of quietus serve with 120 idle clients: {fds}");
    assert!(fds > 0 && fds < 100, "quietus serve holds {fds} files");
    // Once the idle ones go, the API answers at once.
    drop(idle);
    let started = Instant::now();
    let h = get(&server, "/healthz", None).await;
    assert_eq!(h.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_api_error_is_json() {
    let kind = StoreKind::of(Backend::Sqlite).await;
    let env = Env::new(&kind).await;
    let server = Server::start(&env);
    let a = get(
        &server,
        "/api/v1/requests?state=unverified&state=pending_review",
        Some(DPO),
    )
    .await;
    api_error(&a, 400, "usage", "repeated query parameter");
    let a = get(&server, "/api/v1/requests?state=nonsense", Some(DPO)).await;
    api_error(&a, 400, "usage", "unknown state");
    let a = get(&server, "/api/v1/requests/%FF", Some(DPO)).await;
    api_error(&a, 400, "usage", "path not UTF-8");
    let a = get(&server, "/api/v1/verify", None).await;
    api_error(&a, 405, "usage", "GET /api/v1/verify");
    let a = get(&server, "/api/v1/nothing-here", None).await;
    api_error(&a, 404, "not_found", "unknown API path");
    let a = post(&server, "/api/v1/verify", None, "token=abc").await;
    api_error(&a, 400, "ticket_invalid", "verify, not JSON");
    // The page's link with no token is a page that says so, not plain text.
    let a = get(&server, "/verify", None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(
        a.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html")),
        "{:?} {}",
        a.headers,
        a.text
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_scheme_is_case_insensitive() {
    let kind = StoreKind::of(Backend::Sqlite).await;
    let env = Env::new(&kind).await;
    let server = Server::start(&env);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let res = client()
            .get(server.url("/api/v1/requests"))
            .header("authorization", format!("{scheme} {DPO}"))
            .send()
            .await
            .unwrap();
        let a = answer(res).await;
        assert_eq!(a.status, StatusCode::OK, "{scheme}: {}", a.text);
    }
    let res = client()
        .get(server.url("/api/v1/requests"))
        .header("authorization", format!("Basic {DPO}"))
        .send()
        .await
        .unwrap();
    api_error(&answer(res).await, 401, "unauthorized", "Basic");
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submitter_learns_no_other_request_id_from_a_conflict() {
    let kind = StoreKind::of(Backend::Sqlite).await;
    let env = Env::new(&kind).await;
    let server = Server::start(&env);
    let first = post(&server, "/api/v1/requests", Some(HR), ERASURE_TICKET).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let id = first.body["id"].as_str().unwrap().to_owned();
    let v: Value = json(ERASURE_TICKET);
    let ext = v["external_id"].as_str().unwrap().to_owned();
    let other = format!(
        r#"{{"kind":"erasure","external_id":"{ext}","subject":{{"email":"someone.else@example.com"}}}}"#
    );
    let a = post(&server, "/api/v1/requests", Some(FORM), other.clone()).await;
    let msg = api_error(&a, 409, "external_id_conflict", "submitter");
    assert!(!msg.contains(&id), "the submitter was told {id}: {msg}");
    assert!(!a.text.contains(&id), "{}", a.text);
    assert!(!a.text.contains(&id[..8]), "{}", a.text);
    // A trusted door is still told which request it is.
    let a = post(&server, "/api/v1/requests", Some(HR), other).await;
    let msg = api_error(&a, 409, "external_id_conflict", "hr");
    assert!(msg.contains(&id), "{msg}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn verification_is_rate_limited() {
    let kind = StoreKind::of(Backend::Sqlite).await;
    let env = Env::new(&kind).await;
    let server = Server::start_with(
        &env,
        &[("QUIETUS_SERVER__VERIFY_ATTEMPTS_PER_MINUTE", "3")],
        None,
    );
    let a = post(&server, "/api/v1/requests", Some(FORM), ERASURE_TICKET).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let token = a.body["verify_token"].as_str().unwrap().to_owned();
    for i in 0..3 {
        let a = post(
            &server,
            "/api/v1/verify",
            None,
            format!(r#"{{"token":"wrong-{i}"}}"#),
        )
        .await;
        api_error(&a, 404, "not_found", "a wrong token");
    }
    let a = post(&server, "/api/v1/verify", None, r#"{"token":"wrong-4"}"#).await;
    api_error(&a, 429, "rate_limited", "the fourth wrong token");
    assert!(a.headers.get("retry-after").is_some(), "{:?}", a.headers);
    // Even the right token waits now, and the page's form shares the limit.
    let a = post(
        &server,
        "/api/v1/verify",
        None,
        serde_json::json!({ "token": token }).to_string(),
    )
    .await;
    api_error(&a, 429, "rate_limited", "the right token, limited");
    let res = client()
        .post(server.url("/verify"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    drop(server);
}

/// Issue 9, item 15: an auditor sees identities masked; a token with `unmask` may ask
/// for them unmasked, and each such view is in the request's history with its name.
#[tokio::test(flavor = "multi_thread")]
async fn an_auditor_sees_identities_masked_and_each_unmasking_is_recorded() {
    let kind = StoreKind::of(Backend::Sqlite).await;
    let env = Env::new(&kind).await;
    let mut config = common::read_to_string(&env.config).unwrap();
    config.push_str(&format!(
        "[[api.tokens]]\nname = \"audit\"\nrole = \"auditor\"\nsha256 = \"{}\"\n\
         [[api.tokens]]\nname = \"audit-unmask\"\nrole = \"auditor\"\nsha256 = \"{}\"\nunmask = true\n",
        common::sha("audit-token"),
        common::sha("audit-unmask-token")
    ));
    std::fs::write(&env.config, config).unwrap();
    let server = Server::start(&env);
    let made = post(&server, "/api/v1/requests", Some(HR), EXIT_TICKET).await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let id = made.body["id"].as_str().unwrap().to_owned();
    let show = |token: &'static str, query: &'static str| {
        let (server, id) = (&server, id.clone());
        async move {
            get(
                server,
                &format!("/api/v1/requests/{id}{query}"),
                Some(token),
            )
            .await
        }
    };
    let notes = |a: &Answer| -> usize {
        a.body["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["reason"] == "identities shown unmasked to an auditor")
            .count()
    };

    // The DPO sees them.
    let dpo = show(DPO, "").await;
    assert_eq!(dpo.status, StatusCode::OK, "{}", dpo.text);
    let subject = &dpo.body["request"]["subject"];
    assert_eq!(subject["email"], "fang.wang@corp.example", "{}", dpo.text);
    assert_eq!(subject["employee_id"], "E100");

    // An auditor does not, and may not ask to.
    for token in ["audit-token", "audit-unmask-token"] {
        let a = show(token, "").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert!(!a.text.contains("fang.wang"), "{token}: {}", a.text);
        assert!(!a.text.contains("E100"), "{token}: {}", a.text);
        assert!(!a.text.contains("E200"), "{token}: {}", a.text);
        let r = &a.body["request"];
        assert_eq!(r["subject"]["email"], "f…@corp.example", "{}", a.text);
        assert_eq!(r["subject"]["employee_id"], "E…", "{}", a.text);
        assert_eq!(r["successor"]["employee_id"], "E…", "{}", a.text);
        assert_eq!(notes(&a), 0, "viewing masked is not recorded");
    }
    let refused = show("audit-token", "?unmask=true").await;
    let msg = api_error(&refused, 403, "forbidden", "unmask without the permission");
    assert!(msg.contains("api.tokens.unmask"), "{msg}");

    // With the permission, unmasked, and recorded first.
    let a = show("audit-unmask-token", "?unmask=true").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.body["request"]["subject"]["email"],
        "fang.wang@corp.example"
    );
    assert_eq!(notes(&a), 1, "{}", a.text);
    let entry = a.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["reason"] == "identities shown unmasked to an auditor")
        .unwrap()
        .clone();
    assert_eq!(entry["actor"], "audit-unmask", "{entry}");
    let again = show("audit-unmask-token", "?unmask=true").await;
    assert_eq!(notes(&again), 2, "each view is recorded");
    let bad = show("audit-unmask-token", "?unmask=maybe").await;
    api_error(&bad, 400, "usage", "unmask=maybe");
    drop(server);
}

/// Every decision a DPO takes in the CLI can be taken through the API, by the DPO only,
/// with the same rules (a reason where one is needed, only from the states that allow it),
/// recorded in the history with the token that took it; an approval reaches serve's worker.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn a_dpo_decides_through_the_api(#[case] backend: Backend) {
    let kind = StoreKind::of(backend).await;
    let label = kind.label();
    let env = Env::new(&kind).await;
    let server = Server::start(&env);
    let made = post(&server, "/api/v1/requests", Some(HR), ERASURE_TICKET).await;
    assert_eq!(made.status, StatusCode::CREATED, "[{label}] {}", made.text);
    let id = made.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        made.body["state"], "pending_review",
        "[{label}] {}",
        made.text
    );
    let at = |action: &str| format!("/api/v1/requests/{id}/{action}");
    let state = || async {
        let a = get(&server, &format!("/api/v1/requests/{id}"), Some(DPO)).await;
        assert_eq!(a.status, StatusCode::OK, "[{label}] {}", a.text);
        a
    };

    // Only the DPO (or an admin) decides; nothing changes on a refused call.
    for (token, status, code) in [
        (None, 401, "unauthorized"),
        (Some(HR), 403, "forbidden"),
        (Some(FORM), 403, "forbidden"),
    ] {
        let a = post(&server, &at("approve"), token, "").await;
        api_error(&a, status, code, &format!("[{label}] approve by {token:?}"));
    }
    // Bad bodies and paths are refused with the documented error.
    let a = post(&server, &at("approve"), Some(DPO), r#"{"reasn":"typo"}"#).await;
    let msg = api_error(&a, 400, "usage", "unknown field");
    assert!(msg.contains("reasn"), "[{label}] {msg}");
    let a = post(&server, &at("approve"), Some(DPO), "not json").await;
    api_error(&a, 400, "usage", "not JSON");
    let a = post(&server, &at("frobnicate"), Some(DPO), "").await;
    api_error(&a, 404, "not_found", "unknown decision");
    let a = get(&server, &at("approve"), Some(DPO)).await;
    assert_eq!(a.status.as_u16(), 405, "[{label}] GET approve: {}", a.text);
    let a = post(&server, "/api/v1/requests/nosuchid/approve", Some(DPO), "").await;
    api_error(&a, 404, "not_found", "unknown request");
    let a = post(&server, &at("reject"), Some(DPO), "{}").await;
    let msg = api_error(&a, 400, "usage", "reject without a reason");
    assert!(msg.contains("reason"), "[{label}] {msg}");
    let a = post(&server, &at("release"), Some(DPO), "{}").await;
    api_error(
        &a,
        409,
        "illegal_transition",
        "release of a request not on hold",
    );
    let a = post(
        &server,
        &at("extend"),
        Some(DPO),
        r#"{"reason":"x","by":"ages"}"#,
    )
    .await;
    let msg = api_error(&a, 400, "usage", "extend by nonsense");
    assert!(msg.contains("by"), "[{label}] {msg}");
    assert_eq!(state().await.body["request"]["state"], "pending_review");

    // Hold, release, extend, approve: each answered with the request as it is now.
    let a = post(
        &server,
        &at("hold"),
        Some(DPO),
        r#"{"reason":"litigation check"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "[{label}] hold: {}", a.text);
    assert_eq!(
        a.body["request"]["state"], "on_hold",
        "[{label}] {}",
        a.text
    );
    let a = post(&server, &at("approve"), Some(DPO), "").await;
    api_error(&a, 409, "illegal_transition", "approve while on hold");
    let a = post(&server, &at("release"), Some(DPO), "").await;
    assert_eq!(a.status, StatusCode::OK, "[{label}] release: {}", a.text);
    assert_eq!(a.body["request"]["state"], "pending_review", "[{label}]");
    let due = a.body["request"]["due_date"].clone();
    let a = post(
        &server,
        &at("extend"),
        Some(DPO),
        r#"{"reason":"many systems to search","by":"1 month"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "[{label}] extend: {}", a.text);
    assert_ne!(a.body["request"]["due_date"], due, "[{label}] {}", a.text);
    let a = post(
        &server,
        &at("approve"),
        Some(DPO),
        r#"{"reason":"checked"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "[{label}] approve: {}", a.text);
    assert_eq!(
        a.body["request"]["state"], "approved",
        "[{label}] {}",
        a.text
    );
    let a = post(&server, &at("approve"), Some(DPO), "").await;
    api_error(&a, 409, "illegal_transition", "approved twice");

    // Recorded with the token that decided.
    let shown = state().await;
    let history = shown.body["history"].as_array().unwrap();
    for to in ["on_hold", "approved"] {
        let entry = history
            .iter()
            .find(|h| h["to_state"] == to)
            .unwrap_or_else(|| panic!("[{label}] no {to} in {}", shown.text));
        assert_eq!(entry["actor"], "api:dpo", "[{label}] {entry}");
    }

    // serve's worker carries the approval out.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = state().await;
        if s.body["request"]["state"] == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "[{label}] not completed within 60 s: {}\n{}",
            s.text,
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(server);
    kind.cleanup().await;
}
