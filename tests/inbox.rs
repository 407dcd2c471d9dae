//! The inbox folder, file by file (issue 9, items 1, 5 and 6): one bad file never stops
//! the others, target names are bounded, only regular files owned by the inbox's owner
//! are read, and what quietus keeps of them is owner-only.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Env, StoreKind};
use quietus::intake::inbox::{Outcome, process_once};

fn ticket(ext: &str) -> String {
    format!(
        r#"{{"kind":"erasure","external_id":"{ext}","subject":{{"email":"olivia.chen@example.com"}},"jurisdiction":"GDPR"}}"#
    )
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    };
    v.sort();
    v
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
        .unwrap()
        .to_utc()
}

/// One round, bounded in time (a FIFO opened for reading would block it for ever).
async fn round(env: &Env, inbox: &Path) -> Vec<Outcome> {
    let ctx = env.context().await;
    tokio::time::timeout(Duration::from_secs(20), process_once(&ctx, inbox, now()))
        .await
        .expect("the inbox round finishes")
        .expect("the inbox round succeeds")
}

async fn inbox_env() -> (Env, PathBuf) {
    let env = Env::new(&StoreKind::Sqlite).await;
    let inbox = env.path().join("var/inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    (env, inbox)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_longest_legal_file_name_does_not_wedge_the_inbox() {
    let (env, inbox) = inbox_env().await;
    // 255 bytes: the longest name the file system allows.
    let long_good = format!("{}.json", "a".repeat(250));
    let long_bad = format!("{}.json", "b".repeat(250));
    let long_multibyte = format!("{}.json", "é".repeat(125)); // 250 + 5 bytes
    assert_eq!(long_good.len(), 255);
    std::fs::write(inbox.join(&long_good), ticket("LONG-1")).unwrap();
    std::fs::write(inbox.join(&long_bad), "{ not json").unwrap();
    std::fs::write(inbox.join(&long_multibyte), ticket("LONG-2")).unwrap();
    std::fs::write(inbox.join("z-after.json"), ticket("AFTER-1")).unwrap();
    let out = round(&env, &inbox).await;
    assert_eq!(out.len(), 4, "{out:?}");
    assert!(
        names(&inbox).iter().all(|n| n == "done" || n == "rejected"),
        "left: {:?}",
        names(&inbox)
    );
    let done = names(&inbox.join("done"));
    let rejected = names(&inbox.join("rejected"));
    assert_eq!(done.len(), 3, "{done:?}");
    assert_eq!(rejected.len(), 2, "{rejected:?}"); // the file and its .error.txt
    for n in done.iter().chain(&rejected) {
        assert!(n.len() <= 200, "unbounded name ({} bytes): {n}", n.len());
    }
    // The prefix of the name is kept, so a person can still tell which file it was.
    assert!(done.iter().any(|n| n.contains("aaaaaaaaaa")), "{done:?}");
    assert!(done.iter().any(|n| n.ends_with("z-after.json")), "{done:?}");
    assert!(
        rejected.iter().any(|n| n.ends_with(".error.txt")),
        "{rejected:?}"
    );
    for o in &out {
        if o.file.starts_with('b') {
            assert!(o.error.is_some());
        } else {
            assert_eq!(o.accepted.len(), 1, "{o:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn links_fifos_folders_and_strangers_files_are_moved_aside_unread() {
    let (env, inbox) = inbox_env().await;
    let outside = env.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // A ticket outside the inbox, and a secret.
    std::fs::write(outside.join("ticket.json"), ticket("LINKED-1")).unwrap();
    std::fs::write(outside.join("secret.txt"), "TOP-SECRET-VALUE\n").unwrap();
    std::os::unix::fs::symlink(outside.join("ticket.json"), inbox.join("link.json")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), inbox.join("secret.json")).unwrap();
    std::os::unix::fs::symlink(outside.join("nowhere"), inbox.join("dangling.json")).unwrap();
    let fifo = inbox.join("pipe.json");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::fs::create_dir(inbox.join("folder.json")).unwrap();
    std::fs::write(inbox.join("good.json"), ticket("GOOD-1")).unwrap();
    // A file someone else owns (only when the test may give a file away, as root).
    let stranger = inbox.join("stranger.json");
    std::fs::write(&stranger, ticket("STRANGER-1")).unwrap();
    let gave_away = std::os::unix::fs::chown(&stranger, Some(65534), Some(65534)).is_ok();
    if !gave_away {
        std::fs::remove_file(&stranger).unwrap();
    }

    let out = round(&env, &inbox).await;
    let left: Vec<String> = names(&inbox)
        .into_iter()
        .filter(|n| n != "done" && n != "rejected")
        .collect();
    assert!(left.is_empty(), "left in the inbox for ever: {left:?}");
    let accepted: Vec<&Outcome> = out.iter().filter(|o| !o.accepted.is_empty()).collect();
    assert_eq!(accepted.len(), 1, "{out:?}");
    assert_eq!(accepted[0].file, "good.json");
    let rejected_dir = inbox.join("rejected");
    let rejected = names(&rejected_dir);
    let mut refused = vec![
        "link.json",
        "secret.json",
        "dangling.json",
        "pipe.json",
        "folder.json",
    ];
    if gave_away {
        refused.push("stranger.json");
    }
    for name in refused {
        let moved = rejected
            .iter()
            .find(|n| n.ends_with(&format!("-{name}")))
            .unwrap_or_else(|| panic!("{name} not moved aside: {rejected:?}"));
        let note = common::read_to_string(rejected_dir.join(format!("{moved}.error.txt")))
            .unwrap_or_else(|e| panic!("no note for {name}: {e}"));
        assert!(!note.contains("TOP-SECRET"), "{name}: {note}");
        assert!(!note.contains("olivia"), "{name}: {note}");
        assert!(note.contains("regular file"), "{name}: {note}");
    }
    // What the links pointed at is untouched, and still where it was.
    assert_eq!(
        common::read_to_string(outside.join("secret.txt")).unwrap(),
        "TOP-SECRET-VALUE\n"
    );
    assert!(outside.join("ticket.json").exists());
    let moved_fifo = rejected.iter().find(|n| n.ends_with("-pipe.json")).unwrap();
    assert!(
        std::fs::symlink_metadata(rejected_dir.join(moved_fifo))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_inbox_keeps_is_owner_only() {
    let (env, inbox) = inbox_env().await;
    for (name, text) in [("good.json", ticket("MODE-1")), ("bad.json", "{".into())] {
        let p = inbox.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    round(&env, &inbox).await;
    for sub in ["done", "rejected"] {
        let dir = inbox.join(sub);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{sub}/");
        let files = names(&dir);
        assert!(!files.is_empty());
        for n in files {
            let mode = std::fs::metadata(dir.join(&n))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777;
            assert_eq!(mode, 0o600, "{sub}/{n}: {mode:o}");
        }
    }
}

/// Rows of the demo's kind: a leaver per line (`external_id`, `email`, exit date, successor).
fn exit_row(ext: &str, email: &str) -> String {
    format!("{ext},{email},2026-12-31,E200\n")
}

const EXIT_HEADER: &str = "external_id,email,exit_date,successor_employee_id\n";

/// How many requests the store holds.
async fn requests_stored(env: &Env) -> usize {
    let ctx = env.context().await;
    let n = ctx
        .store
        .list_requests(&quietus::store::ListFilter::default())
        .await
        .unwrap()
        .len();
    ctx.store.close().await;
    n
}

/// A CSV exit list is taken whole or not at all (issue 9, item 4): a row whose
/// `external_id` repeats an earlier row, or names a request made from another ticket,
/// rejects the file with nothing of it stored — the rows before it included; a repeated
/// header column and an unterminated quote are errors too, naming the line.
#[tokio::test(flavor = "multi_thread")]
async fn a_csv_exit_list_is_taken_whole_or_not_at_all() {
    let (env, inbox) = inbox_env().await;
    // An earlier ticket holds HR-9.
    std::fs::write(inbox.join("a-earlier.json"), ticket("HR-9")).unwrap();
    let out = round(&env, &inbox).await;
    assert_eq!(out[0].accepted.len(), 1, "{out:?}");
    assert_eq!(requests_stored(&env).await, 1);
    let cases = [
        (
            "conflict.csv",
            format!(
                "{EXIT_HEADER}{}{}",
                exit_row("HR-1", "fang.wang@corp.example"),
                exit_row("HR-9", "li.na@corp.example")
            ),
            "line 3",
        ),
        (
            "repeated.csv",
            format!(
                "{EXIT_HEADER}{}{}",
                exit_row("HR-2", "fang.wang@corp.example"),
                exit_row("HR-2", "fang.wang@corp.example")
            ),
            "line 3",
        ),
        (
            "header.csv",
            format!(
                "external_id,email,exit_date,email\n{}",
                "HR-3,fang.wang@corp.example,2026-12-31,li.na@corp.example\n"
            ),
            "line 1",
        ),
        (
            "quote.csv",
            format!(
                "{EXIT_HEADER}{}HR-5,\"li.na@corp.example,2026-12-31,E200\n",
                exit_row("HR-4", "fang.wang@corp.example")
            ),
            "line 3",
        ),
    ];
    for (name, body, line) in &cases {
        std::fs::write(inbox.join(name), body).unwrap();
        let out = round(&env, &inbox).await;
        assert_eq!(out.len(), 1, "{name}: {out:?}");
        let e = out[0]
            .error
            .clone()
            .unwrap_or_else(|| panic!("{name} accepted: {out:?}"));
        assert!(e.contains(name) && e.contains(line), "{name}: {e}");
        assert!(
            !e.contains("corp.example"),
            "{name}: the error echoes an address: {e}"
        );
        assert!(out[0].accepted.is_empty(), "{name}: {out:?}");
        assert_eq!(requests_stored(&env).await, 1, "{name}: rows were stored");
    }
    // A good list is taken whole.
    std::fs::write(
        inbox.join("good.csv"),
        format!(
            "{EXIT_HEADER}{}{}",
            exit_row("HR-6", "fang.wang@corp.example"),
            exit_row("HR-7", "li.na@corp.example")
        ),
    )
    .unwrap();
    let out = round(&env, &inbox).await;
    assert_eq!(out[0].accepted.len(), 2, "{out:?}");
    assert_eq!(requests_stored(&env).await, 3);
}

/// Control characters never reach a person raw (issue 9, item 9): an inbox file whose
/// name holds a newline and an ESC sequence is taken, its name shown escaped (as the
/// actor in `show`, and in `done/`); `--actor` and `--reason` with control characters are
/// refused, changing nothing.
#[tokio::test(flavor = "multi_thread")]
async fn control_characters_are_escaped_or_refused_wherever_a_person_reads_them() {
    let (env, inbox) = inbox_env().await;
    let evil = "evil\n\u{1b}[2J\u{1b}[31mred.json";
    std::fs::write(inbox.join(evil), ticket("CTRL-1")).unwrap();
    let out = round(&env, &inbox).await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].accepted.len(), 1, "{out:?}");
    assert!(!out[0].file.chars().any(char::is_control), "{out:?}");
    let id = out[0].accepted[0].id.clone();
    for n in names(&inbox.join("done")) {
        assert!(!n.chars().any(char::is_control), "raw in done/: {n:?}");
    }
    let shown = common::ok(&env.run(&["show", &id]));
    assert!(
        !shown.chars().any(|c| c.is_control() && c != '\n'),
        "show prints control characters: {shown:?}"
    );
    assert!(
        shown.contains("evil\\n"),
        "the name is shown escaped: {shown}"
    );
    let state = |env: &Env| {
        let v: serde_json::Value =
            serde_json::from_str(&common::ok(&env.run(&["show", &id, "--json"]))).unwrap();
        (v["request"].clone(), v["history"].clone())
    };
    let before = state(&env);
    for (args, actor) in [
        (
            vec!["hold", id.as_str(), "--reason", "legal\u{1b}[2J hold"],
            None,
        ),
        (vec!["hold", id.as_str(), "--reason", "legal\rhold"], None),
        (
            vec!["hold", id.as_str(), "--reason", "legal hold"],
            Some("dpo\u{1b}[31m"),
        ),
    ] {
        let mut cmd = std::process::Command::new(common::BIN);
        cmd.arg("--config").arg(&env.config).args(&args);
        cmd.env_remove("QUIETUS_ACTOR");
        if let Some(a) = actor {
            cmd.env("QUIETUS_ACTOR", a);
        }
        let o = cmd.output().unwrap();
        let e = common::fails(&o);
        assert!(e.contains("control character"), "{args:?} {actor:?}: {e}");
        assert!(!e.contains('\u{1b}'), "the error echoes it raw: {e:?}");
    }
    assert!(state(&env) == before, "something changed");
}
