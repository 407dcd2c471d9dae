//! Proofs of erasure: receipts from a real run verify offline with only the public key;
//! any changed byte of a receipt, its proof or its checkpoint is caught with a reason; the
//! backup recomputes the Merkle roots; a rewritten log is caught; no personal data leaks
//! into receipts or the log.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BIN, fails, ok};
use mail_parser::MimeHeaders;
use serde_json::Value;

struct Demo {
    _dir: tempfile::TempDir,
    root: PathBuf,
    summary: Value,
}

impl Demo {
    fn new() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("demo");
        let out = Command::new(BIN)
            .args(["demo", "--dir"])
            .arg(&root)
            .arg("--json")
            .env("QUIETUS_LOG", "error")
            .output()
            .unwrap();
        let summary: Value = serde_json::from_str(&ok(&out)).unwrap();
        Demo {
            _dir: dir,
            root,
            summary,
        }
    }

    fn q(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--config")
            .arg(self.root.join("quietus.toml"))
            .args(args)
            .env("QUIETUS_LOG", "error")
            .output()
            .unwrap()
    }

    fn receipts(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.root.join("var/receipts"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    fn verify(&self, receipt: &Path, extra: &[&str]) -> std::process::Output {
        let mut args = vec!["verify", receipt.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.q(&args)
    }
}

fn load(p: &Path) -> Value {
    serde_json::from_str(&common::read_to_string(p).unwrap()).unwrap()
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    p
}

#[test]
fn receipts_verify_and_any_change_is_caught_with_a_reason() {
    let d = Demo::new();
    let receipts = d.receipts();
    assert_eq!(receipts.len(), 2, "one receipt per completed request");
    for r in &receipts {
        let out = ok(&d.verify(r, &[]));
        assert!(out.contains("the receipt holds"), "{out}");
        // Only the public key is needed: verify from another folder with the key file given.
        let elsewhere = tempfile::tempdir().unwrap();
        let pk = d.root.join("var/keys/receipts.pub");
        let out = Command::new(BIN)
            .current_dir(elsewhere.path())
            .args([
                "verify",
                r.to_str().unwrap(),
                "--public-key",
                pk.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        ok(&out);
    }
    let tmp = tempfile::tempdir().unwrap();
    let r = load(&receipts[0]);
    type Change = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "a row count",
            Box::new(|v: &mut Value| v["body"]["tasks"][0]["changes"][0]["rows"] = 99.into()),
            "changed after it was signed",
        ),
        (
            "the request id",
            Box::new(|v: &mut Value| v["body"]["request"]["id"] = "0000000000000000".into()),
            "changed after it was signed",
        ),
        (
            "the signature",
            Box::new(|v: &mut Value| {
                let s = v["signature"]["ed25519"].as_str().unwrap().to_owned();
                let first = if s.starts_with('A') { 'B' } else { 'A' };
                let flipped: String = std::iter::once(first).chain(s.chars().skip(1)).collect();
                v["signature"]["ed25519"] = flipped.into();
            }),
            "does not match the body",
        ),
        (
            "the log index",
            Box::new(|v: &mut Value| v["log"]["index"] = 5.into()),
            "inclusion proof",
        ),
        (
            "the root",
            Box::new(|v: &mut Value| {
                v["log"]["root"] = "dRco73Pz82KYZYErsjNlC5E+WwpILjdUF2i33/WqH6E=".into()
            }),
            "inclusion proof",
        ),
        (
            "the checkpoint",
            Box::new(|v: &mut Value| {
                let c = v["log"]["checkpoint"].as_str().unwrap().replacen(
                    "quietus/log\n",
                    "quietus/logs\n",
                    1,
                );
                v["log"]["checkpoint"] = c.into();
            }),
            "checkpoint",
        ),
    ];
    for (what, change, reason) in cases {
        let mut v = r.clone();
        change(&mut v);
        let p = write(tmp.path(), "r.json", &v);
        let out = d.verify(&p, &[]);
        assert!(
            !out.status.success(),
            "changing {what} must fail verification"
        );
        let text = common::stdout(&out);
        assert!(
            text.contains("FAILED") && text.contains(reason),
            "changing {what}: {text}"
        );
    }
    // Receipts with more than one inclusion step: tamper with a proof hash.
    let last = load(receipts.last().unwrap());
    if !last["log"]["inclusion"].as_array().unwrap().is_empty() {
        let mut v = last.clone();
        v["log"]["inclusion"][0] = "dRco73Pz82KYZYErsjNlC5E+WwpILjdUF2i33/WqH6E=".into();
        let p = write(tmp.path(), "p.json", &v);
        let out = common::stdout(&d.verify(&p, &[]));
        assert!(
            out.contains("FAILED") && out.contains("inclusion proof"),
            "{out}"
        );
    }
}

#[test]
fn the_backup_recomputes_the_merkle_roots_and_a_later_checkpoint_is_consistent() {
    let d = Demo::new();
    for r in d.receipts() {
        let v = load(&r);
        for t in v["body"]["tasks"].as_array().unwrap() {
            let Some(bid) = t["backup"]["id"].as_str() else {
                continue;
            };
            let b = d.root.join(format!("var/backups/{bid}.jsonl.zst.age"));
            let k = d.root.join(format!("var/backup-keys/{bid}.key"));
            let out = ok(&d.verify(
                &r,
                &[
                    "--backup",
                    b.to_str().unwrap(),
                    "--key",
                    k.to_str().unwrap(),
                ],
            ));
            assert!(out.contains("hash to the receipt's Merkle root"), "{out}");
        }
        // The latest checkpoint (a witness's copy) is consistent with every receipt.
        let cp = d.root.join("var/log/checkpoint");
        let out = ok(&d.verify(&r, &["--checkpoint", cp.to_str().unwrap()]));
        assert!(out.contains("consistent"), "{out}");
    }
}

#[test]
fn a_rewritten_log_is_caught() {
    for (what, sql) in [
        ("a removed entry", "DELETE FROM log_entries WHERE idx = 0"),
        (
            "an altered entry",
            "UPDATE log_entries SET body = replace(body, '\"erasure\"', '\"access\"')",
        ),
        (
            "an altered entry with its leaf hash recomputed",
            "UPDATE log_entries SET body = replace(body, 'quietus 0', 'quietus 9'), leaf_hash = 'ab' || substr(leaf_hash, 3)",
        ),
    ] {
        let d = Demo::new();
        ok(&d.q(&["log", "verify"]));
        let db = d.root.join("var/quietus.db");
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
                .await
                .unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        });
        let out = d.q(&["log", "verify"]);
        assert!(!out.status.success(), "{what} must fail log verify");
        assert!(
            common::stdout(&out).contains("FAILED"),
            "{what}: {}",
            common::stdout(&out)
        );
    }
}

#[test]
fn old_receipts_verify_with_the_old_key_after_a_rotation() {
    let d = Demo::new();
    let old_pub = common::read_to_string(d.root.join("var/keys/receipts.pub")).unwrap();
    let keep = d.root.join("old.pub");
    std::fs::write(&keep, &old_pub).unwrap();
    ok(&d.q(&["keys", "rotate"]));
    let new_pub = common::read_to_string(d.root.join("var/keys/receipts.pub")).unwrap();
    assert_ne!(old_pub, new_pub);
    let r = d.receipts()[0].clone();
    let out = d.verify(&r, &[]);
    assert!(
        common::stdout(&out).contains("not by the given key"),
        "{}",
        common::stdout(&out)
    );
    ok(&d.verify(&r, &["--public-key", keep.to_str().unwrap()]));
    let err = fails(&d.q(&["keys", "init"]));
    assert!(err.contains("exists"), "{err}");
}

#[test]
fn receipts_and_the_log_hold_no_personal_data() {
    let d = Demo::new();
    let mut text = String::new();
    for r in d.receipts() {
        text.push_str(&common::read_to_string(r).unwrap());
    }
    text.push_str(&common::read_to_string(d.root.join("var/log/checkpoint")).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bodies: Vec<String> = rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!(
            "sqlite://{}",
            d.root.join("var/quietus.db").display()
        ))
        .await
        .unwrap();
        let v = sqlx::query_scalar("SELECT body FROM log_entries")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        v
    });
    text.push_str(&bodies.join("\n"));
    for needle in [
        "fang.wang@corp.example",
        "olivia.chen@example.com",
        "+8613800138000",
        "王芳",
        "Wang Fang",
        "Olivia",
        "Chen",
        "E100",
        "ming.li",
    ] {
        assert!(
            !text.contains(needle),
            "{needle} appears in a receipt or the log"
        );
    }
    let _ = &d.summary;
}

#[test]
fn shredding_a_backup_issues_its_own_receipt_and_old_receipts_still_verify() {
    let d = Demo::new();
    let before = d.receipts();
    let later = (quietus::clock::now() + chrono::Duration::days(100)).to_rfc3339();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(d.root.join("quietus.toml"))
        .args(["run", "--json"])
        .env("QUIETUS_NOW", &later)
        .env("QUIETUS_LOG", "error")
        .output()
        .unwrap();
    let summary: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(summary["shredded_backups"], 3, "{summary}");
    let after = d.receipts();
    let new: Vec<&PathBuf> = after.iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(new.len(), 3, "one receipt per shredded backup");
    for r in &new {
        assert_eq!(load(r)["body"]["event"], "backup_crypto_shredded");
        ok(&d.verify(r, &[]));
    }
    assert!(
        std::fs::read_dir(d.root.join("var/backup-keys"))
            .unwrap()
            .next()
            .is_none(),
        "every key destroyed"
    );
    // The completion receipts still verify, but their backups can no longer be opened.
    for r in &before {
        ok(&d.verify(r, &[]));
    }
    ok(&d.q(&["log", "verify"]));
}

/// The attachments and text parts of an `.eml` file.
fn eml_parts(path: &Path) -> (String, Vec<(String, Vec<u8>)>, String) {
    let raw = common::read(path).unwrap();
    let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
    let to = msg
        .to()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .unwrap_or_default()
        .to_owned();
    let text = format!(
        "{}\n{}\n{}",
        msg.subject().unwrap_or_default(),
        msg.body_text(0).unwrap_or_default(),
        msg.body_html(0).unwrap_or_default()
    );
    let atts = msg
        .attachments()
        .map(|a| {
            (
                a.attachment_name().unwrap_or_default().to_owned(),
                a.contents().to_vec(),
            )
        })
        .collect();
    (to, atts, text)
}

/// `text` with every run of 40 or more base64 characters (a signature, a hash) blanked:
/// such a run is the encoding of bytes, not anybody's words.
fn without_base64(text: &str) -> String {
    let re = regex::Regex::new(r"[A-Za-z0-9+/]{40,}={0,2}").unwrap();
    re.replace_all(text, "<base64>").into_owned()
}

#[test]
fn base64_runs_are_left_out_of_the_search_and_nothing_else() {
    let sig =
        "83p6hOsADcuzFLd7BHpGb5eQ9dd66n1JHxlu+44qaUYReh3H2OsYEe8AkMHo5sLu4ogfz5to+C6BEQXVhftdBg==";
    assert!(!without_base64(&format!("{{\"ed25519\":\"{sig}\"}}")).contains("+44"));
    for text in [
        "+44 20 7946 0958",
        "\"phone\":\"+447700900123\"",
        "olivia.chen@example.com",
    ] {
        assert_eq!(without_base64(text), text);
    }
}

#[test]
fn the_completion_email_carries_a_receipt_that_verifies_and_no_one_elses_data() {
    let d = Demo::new();
    let outbox = PathBuf::from(d.summary["outbox"].as_str().unwrap());
    let emls: Vec<PathBuf> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        emls.len() >= 4,
        "acknowledgements, approvals and completions: {emls:?}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut verified = 0;
    let people = [
        (
            "fang.wang@corp.example",
            vec![
                "王芳",
                "Wang Fang",
                "+8613800138000",
                "E100",
                "olivia",
                "Olivia",
                "Chen",
                "ming.li",
                "李明",
            ],
        ),
        (
            "olivia.chen@example.com",
            vec![
                "Olivia",
                "Chen",
                "+44",
                "fang.wang",
                "王芳",
                "Wang Fang",
                "E100",
                "ming.li",
            ],
        ),
    ];
    for eml in &emls {
        let (to, atts, text) = eml_parts(eml);
        let (_, forbidden) = people
            .iter()
            .find(|(addr, _)| *addr == to)
            .unwrap_or_else(|| panic!("unexpected recipient {to}"));
        for needle in forbidden {
            assert!(
                !text.contains(needle),
                "{needle} appears in the email to {to}"
            );
        }
        for (name, bytes) in atts {
            assert!(name.ends_with(".json"), "{name}");
            let body = String::from_utf8(bytes).unwrap();
            // The signature, the log root and the checkpoint are base64, which may spell
            // `+44` by chance (it did, once in CI): they are left out of the search.
            let searched = without_base64(&body);
            for needle in forbidden.iter().chain(std::iter::once(&to.as_str())) {
                assert!(
                    !searched.contains(needle),
                    "{needle} appears in the attached receipt"
                );
            }
            let p = tmp.path().join(&name);
            std::fs::write(&p, body).unwrap();
            let out = ok(&d.verify(&p, &[]));
            assert!(out.contains("the receipt holds"), "{out}");
            verified += 1;
        }
    }
    assert_eq!(
        verified, 2,
        "one completion email with its receipt per request"
    );
    for key in ["receipts", "public_key", "outbox"] {
        assert!(!d.summary[key].is_null(), "the demo summary names {key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_serves_the_checkpoint_and_the_public_key() {
    use std::io::{BufRead, BufReader};
    let d = Demo::new();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(d.root.join("quietus.toml"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("QUIETUS_LOG", "error")
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
    let get = |path: &str| {
        let url = format!("{base}{path}");
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    let cp = get("/log/checkpoint").await;
    assert_eq!(
        cp,
        common::read_to_string(d.root.join("var/log/checkpoint")).unwrap()
    );
    assert!(cp.starts_with("quietus/log\n"));
    let pk = get("/keys/receipts.pub").await;
    assert_eq!(
        pk,
        common::read_to_string(d.root.join("var/keys/receipts.pub")).unwrap()
    );
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}
