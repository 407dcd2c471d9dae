//! The hostile-input catalogue (issue 9, suite 4): inputs at every door a stranger or a
//! careless hand can reach — tickets (`quietus submit`), CSV exit lists and odd files in
//! the inbox, policy files (`quietus policy check`) and the configuration's schedules —
//! each refused with an error that names what and where, never echoing the value, and
//! none of them changing the state store.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::Path;

use common::{Env, StoreKind, fails, ok};

/// The value hidden in inputs; no error may show it.
const SECRET: &str = "zq7secret";

/// How many requests, history entries and outbox messages the store holds.
async fn store_counts(env: &Env) -> (i64, i64, i64) {
    let ctx = env.context().await;
    let quietus::store::Pool::Sqlite(pool) = &ctx.store.pool else {
        unreachable!("a SQLite store")
    };
    let mut out = [0i64; 3];
    for (i, t) in ["requests", "history", "outbox"].iter().enumerate() {
        out[i] = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {t}")))
            .fetch_one(pool)
            .await
            .unwrap();
    }
    ctx.store.close().await;
    (out[0], out[1], out[2])
}

fn ticket(subject: &str, extra: &str) -> String {
    format!(r#"{{"kind":"erasure","subject":{subject}{extra}}}"#)
}

/// Tickets: (what, bytes, words the error must hold).
fn tickets() -> Vec<(&'static str, Vec<u8>, Vec<&'static str>)> {
    let s = SECRET;
    let email = |e: &str| ticket(&format!(r#"{{"email":"{e}"}}"#), "").into_bytes();
    let mut deep = "[".repeat(5000);
    deep.push_str(&"]".repeat(5000));
    vec![
        ("empty file", b"".to_vec(), vec!["malformed"]),
        ("only spaces", b"   \n".to_vec(), vec!["malformed"]),
        (
            "truncated",
            br#"{"kind":"erasure","subject":{"email":"#.to_vec(),
            vec!["malformed", "line 1"],
        ),
        ("top-level list", b"[1,2]".to_vec(), vec!["malformed"]),
        ("top-level number", b"42".to_vec(), vec!["malformed"]),
        ("deep nesting", deep.into_bytes(), vec!["malformed"]),
        (
            "huge",
            {
                let mut v = ticket(r#"{"email":"a@corp.example"}"#, r#","note":""#).into_bytes();
                v.truncate(v.len() - 1);
                v.extend(std::iter::repeat_n(b'x', 1_100_000));
                v.extend(br#""}"#);
                v
            },
            vec!["limit"],
        ),
        (
            "invalid UTF-8",
            {
                let mut v = br#"{"kind":"erasure","subject":{"email":"a"#.to_vec();
                v.extend([0xff, 0xfe]);
                v.extend(br#"@corp.example"}}"#);
                v
            },
            vec!["malformed"],
        ),
        (
            "NUL in a string",
            ticket(r#"{"email":"a\u0000b@corp.example"}"#, "").into_bytes(),
            vec!["subject.email"],
        ),
        (
            "CRLF in an email",
            ticket(&format!(r#"{{"email":"a@corp.example\r\nBcc: {s}@evil.example"}}"#), "")
                .into_bytes(),
            vec!["subject.email"],
        ),
        ("SQL in an email", email(&format!("x@y.z'); DROP TABLE {s}; --")), vec!["subject.email"]),
        ("semicolon in an email", email(&format!("{s};--@corp.example")), vec!["subject.email"]),
        ("no domain", email(s), vec!["subject.email"]),
        ("domain without a dot", email(&format!("{s}@localhost")), vec!["subject.email"]),
        ("address literal", email(&format!("{s}@[127.0.0.1]")), vec!["subject.email"]),
        ("display name", email(&format!("Fang <{s}@corp.example>")), vec!["subject.email"]),
        ("two @", email(&format!("a@{s}@corp.example")), vec!["subject.email"]),
        (
            "phone with SQL",
            ticket(&format!(r#"{{"phone":"+86 138 0013 8000; -- {s}"}}"#), "").into_bytes(),
            vec!["subject.phone"],
        ),
        (
            "phone too short",
            ticket(r#"{"phone":"12"}"#, "").into_bytes(),
            vec!["subject.phone"],
        ),
        (
            "employee id too long",
            ticket(&format!(r#"{{"employee_id":"{}"}}"#, "E".repeat(65)), "").into_bytes(),
            vec!["subject.employee_id", "64"],
        ),
        ("no identity", ticket("{}", "").into_bytes(), vec!["subject"]),
        (
            "unknown identity kind",
            ticket(&format!(r#"{{"passport":"{s}"}}"#), "").into_bytes(),
            vec!["subject.passport"],
        ),
        (
            "unknown kind",
            format!(r#"{{"kind":"{s}","subject":{{"email":"a@corp.example"}}}}"#).into_bytes(),
            vec!["kind"],
        ),
        (
            "unknown field",
            ticket(r#"{"email":"a@corp.example"}"#, r#","colour":"red""#).into_bytes(),
            vec!["colour"],
        ),
        (
            "unknown jurisdiction",
            ticket(r#"{"email":"a@corp.example"}"#, &format!(r#","jurisdiction":"{s}""#))
                .into_bytes(),
            vec!["jurisdiction"],
        ),
        (
            "unsupported locale",
            ticket(r#"{"email":"a@corp.example"}"#, r#","locale":"xx-YY""#).into_bytes(),
            vec!["locale"],
        ),
        (
            "external id on two lines",
            ticket(r#"{"email":"a@corp.example"}"#, r#","external_id":"T-1\nT-2""#).into_bytes(),
            vec!["external_id", "one line"],
        ),
        (
            "control characters in a note",
            ticket(r#"{"email":"a@corp.example"}"#, r#","note":"a\u001b[2Jb""#).into_bytes(),
            vec!["note", "control"],
        ),
        (
            "note too long",
            ticket(
                r#"{"email":"a@corp.example"}"#,
                &format!(r#","note":"{}""#, "n".repeat(2001)),
            )
            .into_bytes(),
            vec!["note", "2000"],
        ),
        (
            "exit without an exit date",
            br#"{"kind":"exit","subject":{"employee_id":"E100"},"successor":{"employee_id":"E200"}}"#
                .to_vec(),
            vec!["exit_date"],
        ),
        (
            "exit date not a date",
            format!(
                r#"{{"kind":"exit","subject":{{"employee_id":"E100"}},"exit_date":"{s}","successor":{{"employee_id":"E200"}}}}"#
            )
            .into_bytes(),
            vec!["exit_date"],
        ),
        (
            "exit date in year 9999",
            br#"{"kind":"exit","subject":{"employee_id":"E100"},"exit_date":"9999-12-31","successor":{"employee_id":"E200"}}"#
                .to_vec(),
            vec!["exit_date", "plausible"],
        ),
        (
            "subject is a string",
            ticket(&format!(r#""{s}@corp.example""#), "").into_bytes(),
            vec!["subject", "map"],
        ),
        (
            "an email twice",
            ticket(
                &format!(r#"{{"email":"a@corp.example","email":"{s}@corp.example"}}"#),
                "",
            )
            .into_bytes(),
            vec!["email", "twice"],
        ),
        (
            "copy is a string",
            ticket(r#"{"email":"a@corp.example"}"#, &format!(r#","copy":"{s}""#)).into_bytes(),
            vec!["copy", "boolean"],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_tickets_are_refused_naming_the_place_and_change_nothing() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let before = store_counts(&env).await;
    let cases = tickets();
    for (what, bytes, words) in &cases {
        let f = env.path().join("hostile.json");
        std::fs::write(&f, bytes).unwrap();
        let out = env.run(&["submit", f.to_str().unwrap()]);
        assert!(!out.status.success(), "{what}: accepted");
        let e = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !e.contains(SECRET),
            "{what}: the error shows the value: {e}"
        );
        assert!(
            e.len() < 2000,
            "{what}: the error is {} bytes long",
            e.len()
        );
        for w in words {
            assert!(e.contains(w), "{what}: the error does not say {w:?}: {e}");
        }
        assert!(
            e.contains("hostile.json"),
            "{what}: the error names no file: {e}"
        );
    }
    assert_eq!(store_counts(&env).await, before, "the store changed");
    assert!(cases.len() >= 35, "{} ticket cases", cases.len());
}

/// CSV exit lists: (what, the file, words the error must hold).
fn exit_lists() -> Vec<(&'static str, String, Vec<&'static str>)> {
    let s = SECRET;
    let h = "external_id,email,exit_date,successor_employee_id\n";
    let row = |ext: &str, email: &str| format!("{ext},{email},2026-12-31,E200\n");
    vec![
        ("header only", h.to_owned(), vec!["no rows"]),
        (
            "unknown column",
            "external_id,colour\nX,1\n".to_owned(),
            vec!["line 1", "unknown column"],
        ),
        (
            "a column twice",
            "email,email,exit_date\na@corp.example,b@corp.example,2026-12-31\n".to_owned(),
            vec!["line 1", "twice"],
        ),
        (
            "unclosed quote",
            format!(
                "{h}{}X-2,\"{s}@corp.example,2026-12-31,E200\n",
                row("X-1", "a@corp.example")
            ),
            vec!["line 3", "quoted"],
        ),
        (
            "an external id twice",
            format!(
                "{h}{}{}",
                row("X-1", "a@corp.example"),
                row("X-1", "b@corp.example")
            ),
            vec!["line 3", "external_id"],
        ),
        (
            "a bad email on row 2",
            format!(
                "{h}{}{}",
                row("X-1", "a@corp.example"),
                row("X-2", &format!("{s}@"))
            ),
            vec!["line 3", "email"],
        ),
        (
            "a bad date",
            format!("{h}X-1,a@corp.example,31/12/2026,E200\n"),
            vec!["line 2", "exit_date"],
        ),
        (
            "a formula",
            format!("{h}X-1,a@corp.example,2026-12-31,=HYPERLINK(\"http://{s}\")\n"),
            vec!["line 2", "formula"],
        ),
        (
            "a formula in the note",
            format!(
                "external_id,email,exit_date,successor_employee_id,note\nX-1,a@corp.example,2026-12-31,E200,@SUM({s})\n"
            ),
            vec!["line 2", "formula"],
        ),
        (
            "a row with more fields",
            format!("{h}X-1,a@corp.example,2026-12-31,E200,{s}\n"),
            vec!["line 2"],
        ),
        (
            "invalid UTF-8",
            format!("{h}X-1,a@corp.example,2026-12-31,E200\u{0}\n"),
            vec!["line 2"],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_exit_lists_are_refused_whole_and_change_nothing() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let inbox = env.path().join("var/inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let before = store_counts(&env).await;
    let now = chrono::DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
        .unwrap()
        .to_utc();
    let cases = exit_lists();
    for (what, body, words) in &cases {
        std::fs::write(inbox.join("list.csv"), body).unwrap();
        let ctx = env.context().await;
        let out = quietus::intake::inbox::process_once(&ctx, &inbox, now)
            .await
            .unwrap();
        ctx.store.close().await;
        assert_eq!(out.len(), 1, "{what}: {out:?}");
        let e = out[0]
            .error
            .clone()
            .unwrap_or_else(|| panic!("{what}: accepted: {out:?}"));
        assert!(
            !e.contains(SECRET),
            "{what}: the error shows the value: {e}"
        );
        for w in words {
            assert!(e.contains(w), "{what}: the error does not say {w:?}: {e}");
        }
        assert!(
            !inbox.join("list.csv").exists(),
            "{what}: left in the inbox"
        );
    }
    assert_eq!(store_counts(&env).await, before, "the store changed");
}

/// Policy files and schedules: (what, file, text replaced, replacement, words).
fn policies() -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    String,
    Vec<&'static str>,
)> {
    let s = SECRET;
    let r = "policies/retention.toml";
    let c = "policies/systems/crm.toml";
    vec![
        (
            "broken TOML",
            r,
            "[deadlines]",
            "[deadlines".into(),
            vec!["retention.toml"],
        ),
        (
            "an unknown key",
            r,
            "[deadlines]",
            format!("[deadlines]\n{s} = 1"),
            vec!["retention.toml", "unknown"],
        ),
        (
            "a period that overflows",
            r,
            r#"for = "2 years""#,
            r#"for = "99999999999 years""#.into(),
            vec!["retention.toml"],
        ),
        (
            "a period of no unit",
            r,
            r#"for = "2 years""#,
            format!(r#"for = "2 {s}""#),
            vec!["retention.toml"],
        ),
        (
            "a rule id twice",
            r,
            r#"id = "private-content""#,
            r#"id = "contact-data""#.into(),
            vec!["contact-data", "twice"],
        ),
        (
            "an unknown category",
            r,
            r#"categories = ["user.content"]"#,
            r#"categories = ["user.contnet"]"#.into(),
            vec!["user.contnet"],
        ),
        (
            "an unknown action",
            r,
            r#"action = "erase""#,
            format!(r#"action = "{s}""#),
            vec!["retention.toml:", "expected one of"],
        ),
        (
            "an unknown deadline jurisdiction default",
            r,
            r#"default = "PIPL""#,
            format!(r#"default = "{s}""#),
            vec!["retention.toml"],
        ),
        (
            "an unknown time zone",
            r,
            r#"timezone = "Asia/Shanghai""#,
            r#"timezone = "Mars/Olympus""#.into(),
            vec!["retention.toml", "time zone"],
        ),
        (
            "SQL in a table name",
            c,
            r#"name = "employee_roles""#,
            format!(r#"name = "employee_roles; DROP TABLE {s}""#),
            vec!["crm.toml:", "not a plain SQL identifier"],
        ),
        (
            "a quote in a column name",
            c,
            r#"columns = { role = "user.authorization" }"#,
            r#"columns = { "role\"--" = "user.authorization" }"#.into(),
            vec!["crm.toml"],
        ),
        (
            "a reference to a table not mapped",
            c,
            r#"to = "employees.id" }]
columns = { role"#,
            r#"to = "nowhere.id" }]
columns = { role"#
                .into(),
            vec!["crm.toml", "nowhere"],
        ),
        (
            "a reference cycle",
            c,
            r#"references = [{ column = "employee_id", to = "employees.id" }]
columns = { role"#,
            r#"references = [{ column = "employee_id", to = "employee_roles.id" }]
columns = { role"#
                .into(),
            vec!["crm.toml", "cycle"],
        ),
        (
            "an unknown driver",
            c,
            r#"driver = "sqlite""#,
            format!(r#"driver = "{s}""#),
            vec!["crm.toml:", "expected one of"],
        ),
    ]
}

fn edit(env: &Env, file: &str, from: &str, to: &str) -> String {
    let path = env.path().join(file);
    let text = common::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_policy_files_and_schedules_are_refused_naming_the_file() {
    let env = Env::new(&StoreKind::Sqlite).await;
    ok(&env.run(&["policy", "check"]));
    let before = store_counts(&env).await;
    let cases = policies();
    for (what, file, from, to, words) in &cases {
        let saved = edit(&env, file, from, to);
        let e = fails(&env.run(&["policy", "check"]));
        // Nothing runs on policies that do not load.
        fails(&env.run(&["run"]));
        std::fs::write(env.path().join(file), saved).unwrap();
        // (Policy files are the DPO's own text, not personal data: an error may quote
        // them.)
        for w in words {
            assert!(e.contains(w), "{what}: the error does not say {w:?}: {e}");
        }
    }
    // Schedules that never fire, or do not parse.
    for cron in ["0 0 0 30 2 *", "not a cron", "0 0 0 31 4 *"] {
        let config = common::read_to_string(&env.config).unwrap();
        std::fs::write(
            &env.config,
            format!("{config}\n[schedule]\nretention_sweep = \"{cron}\"\n"),
        )
        .unwrap();
        let e = fails(&env.run(&["run"]));
        std::fs::write(&env.config, config).unwrap();
        assert!(e.contains("retention_sweep"), "{cron}: {e}");
    }
    ok(&env.run(&["policy", "check"]));
    assert_eq!(store_counts(&env).await, before, "the store changed");
    assert!(cases.len() >= 14);
}

/// Files in the inbox that are not tickets: each moved aside with a note, none read as
/// one.
#[tokio::test(flavor = "multi_thread")]
async fn odd_files_in_the_inbox_are_moved_aside() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let inbox = env.path().join("var/inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let before = store_counts(&env).await;
    let names = [
        "notes.txt",
        "ticket.JSON.exe",
        "..json",
        "-rf.json",
        "$(reboot).json",
        "a'; DROP TABLE requests; --.json",
    ];
    for n in names {
        std::fs::write(inbox.join(n), format!("{SECRET} is not a ticket")).unwrap();
    }
    let now = chrono::DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
        .unwrap()
        .to_utc();
    let ctx = env.context().await;
    let out = quietus::intake::inbox::process_once(&ctx, &inbox, now)
        .await
        .unwrap();
    ctx.store.close().await;
    // "..json" starts with a dot: a file being written, left alone.
    assert_eq!(out.len(), names.len() - 1, "{out:?}");
    for o in &out {
        let e = o.error.clone().unwrap_or_else(|| panic!("accepted: {o:?}"));
        assert!(!e.contains(SECRET), "{}: {e}", o.file);
    }
    assert_eq!(store_counts(&env).await, before, "the store changed");
    assert!(Path::new(&inbox.join("rejected")).is_dir());
}
