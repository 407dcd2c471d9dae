//! Email: every template in both locales, operator overrides, the outbox on SQLite and
//! PostgreSQL, the file transport (exactly once, also across a crash), and lettre's SMTP
//! transport against a real SMTP server on loopback that is stopped for a while.
//!
//! The SMTP server is `tests/support/smtp_sink.py` (aiosmtpd: Debian's python3-aiosmtpd
//! or `pip install aiosmtpd`). Without aiosmtpd at build time the SMTP test is compiled
//! ignored, with the reason (see `build.rs`); with `QUIETUS_TEST_REQUIRE_SERVERS=1` it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use quietus::store::BeginWrite as _;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{Backend, Env, StoreKind};
use mail_parser::MimeHeaders;
use quietus::config::{SmtpConfig, SmtpTls};
use quietus::intake::{self, Source};
use quietus::mail::{
    self, Concerns, MailAttachment, Mailer, MessageKind, NewMail, SendSummary, Transport, render,
};
use quietus::policy::RequestKind;
use quietus::store::{Pool, Store};
use rstest::rstest;
use serde_json::{Value, json};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

const XSS: &str = "<script>alert(1)</script>";

/// Variables for every kind, with a hostile string in a variable each template prints.
fn vars(kind: MessageKind) -> Value {
    let rid = format!("REQ1{XSS}");
    match kind {
        MessageKind::Acknowledgement => json!({
            "request_id": rid, "received": "2026-11-24", "deadline": "2026-12-24",
            "verify_needed": true
        }),
        MessageKind::Verification => json!({
            "request_id": rid, "verify_url": "https://privacy.example.com/verify/tok?a=1&b=2",
            "expires": "2026-11-27"
        }),
        MessageKind::Approval => json!({
            "request_id": rid, "scheduled": "2026-11-30", "deadline": "2026-12-24"
        }),
        MessageKind::Refusal => json!({
            "request_id": rid, "reasons": ["The data is needed to defend a legal claim (rule legal-claims).", XSS],
            "jurisdiction": "GDPR", "authority": "the Data Protection Commission"
        }),
        MessageKind::Extension => json!({
            "request_id": rid, "deadline": "2027-02-24", "original_deadline": "2026-12-24",
            "reason": format!("Many systems hold data for this request {XSS}"), "jurisdiction": "GDPR"
        }),
        MessageKind::Completion => json!({
            "request_id": rid, "completed": "2026-12-01",
            "erased": [
                {"category": "contact", "system": "crm", "count": 3},
                {"category": format!("marketing{XSS}"), "system": "crm", "count": 12}
            ],
            "kept": [
                {"category": "invoices", "system": "billing", "until": "2036-12-31",
                 "basis": "statutory retention of accounting records", "rule": "invoices-10y"}
            ],
            "backups_until": "2027-03-01", "receipt_filename": "receipt.json"
        }),
        MessageKind::ExportReady => json!({
            "request_id": rid, "download_url": "https://privacy.example.com/export/abc",
            "expires": "2026-12-08 12:00 UTC"
        }),
        MessageKind::Reminder => json!({
            "request_id": rid, "deadline": "2026-12-24", "days_left": -2, "state": "pending_review",
            "jurisdiction": "GDPR"
        }),
        MessageKind::FailureAlert => json!({
            "request_id": rid, "task_id": "TASK1", "system": "crm", "attempts": 5,
            "error": format!("connection refused {XSS}")
        }),
        MessageKind::ManualTask => json!({
            "request_id": rid, "task_id": "TASK2", "system": "paper-archive", "due": "2026-12-10",
            "action": format!("Destroy the HR file folder of category hr-records {XSS}"),
            "rule": "hr-2y", "basis": "PRC Labor Contract Law Art. 50",
            "confirm_url": "https://privacy.example.com/tasks/TASK2/confirm",
            "confirm_command": "quietus task confirm TASK2"
        }),
        MessageKind::Restored => json!({
            "request_id": rid, "restored": "2027-01-04", "reason": format!("erased by mistake {XSS}"),
            "lost": [{"backup": "B1", "task": "T1", "kind": "apply", "shredded": "2027-01-02"}]
        }),
    }
}

fn has_chinese(s: &str) -> bool {
    s.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
}

#[test]
fn every_kind_renders_in_both_locales_and_html_is_escaped() {
    for kind in MessageKind::ALL {
        for locale in ["en", "zh-CN"] {
            let r = render(kind, Some(RequestKind::Erasure), locale, &vars(kind), None)
                .unwrap_or_else(|e| panic!("{kind} {locale}: {e}"));
            let what = format!("{kind} {locale}");
            assert!(!r.subject.trim().is_empty(), "{what}: empty subject");
            assert!(!r.subject.contains('\n'), "{what}: subject on two lines");
            assert!(r.text.len() > 40, "{what}: text too short: {}", r.text);
            assert!(r.html.contains("<html"), "{what}: not a page");
            assert!(r.html.contains("&lt;script&gt;"), "{what}: nothing escaped");
            assert!(
                !r.html.contains(XSS),
                "{what}: a variable went into HTML unescaped"
            );
            assert!(r.text.contains("REQ1"), "{what}: no request id in the text");
            assert!(!r.text.contains("\n\n\n"), "{what}: untidy text");
            if locale == "zh-CN" {
                assert!(has_chinese(&r.text), "{what}: text not in Chinese");
                assert!(has_chinese(&r.html), "{what}: HTML not in Chinese");
                assert!(r.html.contains("lang=\"zh-CN\""), "{what}");
            } else {
                assert!(!has_chinese(&r.text), "{what}: Chinese in English text");
            }
        }
    }
}

#[test]
fn every_kind_has_texts_for_every_request_kind_and_access_gets_no_erasure_wording() {
    // The kinds worded by the request's kind; a failure alert (to the DPO, about a task)
    // and a restore (which only undoes erasures and exits) read the same for each.
    for kind in MessageKind::ALL
        .into_iter()
        .filter(|k| k.worded_by_request_kind())
    {
        for locale in ["en", "zh-CN"] {
            let mut seen = Vec::new();
            for request_kind in RequestKind::ALL {
                let mut v = vars(kind);
                if kind == MessageKind::ManualTask && request_kind == RequestKind::Access {
                    // What the caller asks of the owner is the caller's: here, a copy.
                    v["action"] = json!(format!("export personal_notes (user.content) {XSS}"));
                }
                let r = render(kind, Some(request_kind), locale, &v, None)
                    .unwrap_or_else(|e| panic!("{kind} {locale} {request_kind}: {e}"));
                let what = format!("{kind} {locale} {request_kind}");
                assert!(r.text.len() > 40, "{what}: text too short: {}", r.text);
                let to_the_subject = !matches!(
                    kind,
                    MessageKind::Reminder | MessageKind::FailureAlert | MessageKind::ManualTask
                );
                if request_kind == RequestKind::Access && to_the_subject {
                    let copy = if locale == "en" { "copy" } else { "副本" };
                    let copy_zh = "复制";
                    assert!(
                        r.text.contains(copy) || (locale != "en" && r.text.contains(copy_zh)),
                        "{what}: says nothing of a copy:\n{}",
                        r.text
                    );
                }
                if request_kind == RequestKind::Access {
                    for all in [&r.subject, &r.text, &r.html] {
                        let lower = all.to_lowercase();
                        for w in common::ERASURE_WORDING {
                            assert!(!lower.contains(w), "{what}: {w:?} in:\n{all}");
                        }
                    }
                }
                seen.push(r.text);
            }
            // The messages of a request say what it is about, each in its words.
            {
                assert_ne!(seen[0], seen[2], "{kind} {locale}: access reads as erasure");
                assert_ne!(seen[1], seen[2], "{kind} {locale}: access reads as exit");
                assert_ne!(seen[0], seen[1], "{kind} {locale}: exit reads as erasure");
            }
        }
    }
}

#[test]
fn templates_say_what_the_law_requires() {
    let refusal = render(
        MessageKind::Refusal,
        Some(RequestKind::Erasure),
        "en",
        &json!({"request_id": "R", "reasons": "no"}),
        None,
    )
    .unwrap();
    // No jurisdiction given: the remedies of both.
    for needle in [
        "Article 77",
        "Article 79",
        "PIPL Article 50",
        "Article 65",
        "- no",
    ] {
        assert!(refusal.text.contains(needle), "{needle}: {}", refusal.text);
    }
    let pipl = render(
        MessageKind::Refusal,
        Some(RequestKind::Erasure),
        "zh-CN",
        &json!({"request_id": "R", "reasons": ["理由"], "jurisdiction": "PIPL"}),
        None,
    )
    .unwrap();
    assert!(
        pipl.text.contains("第五十条") && pipl.text.contains("人民法院"),
        "{}",
        pipl.text
    );
    assert!(!pipl.text.contains("GDPR"), "{}", pipl.text);

    let c = render(
        MessageKind::Completion,
        Some(RequestKind::Erasure),
        "en",
        &vars(MessageKind::Completion),
        None,
    )
    .unwrap();
    for needle in [
        "contact in crm: 3 record(s)",
        "invoices in billing: kept until 2036-12-31",
        "invoices-10y",
        "receipt.json",
        "2027-03-01",
    ] {
        assert!(c.text.contains(needle), "{needle}: {}", c.text);
    }
    let mut exit = vars(MessageKind::Completion);
    exit["handed_over"] = json!([{"category": "business.owner", "system": "crm", "count": 4}]);
    exit["disabled"] = json!([{"category": "user.account", "system": "crm", "count": 1}]);
    let x = render(
        MessageKind::Completion,
        Some(RequestKind::Exit),
        "en",
        &exit,
        None,
    )
    .unwrap();
    for needle in [
        "handed over to your successor:\n- business.owner in crm: 4 record(s)",
        "Accounts we closed:\n- crm: 1 account(s)",
        "contact in crm: 3 record(s)",
    ] {
        assert!(x.text.contains(needle), "{needle}: {}", x.text);
    }
    let nothing = render(
        MessageKind::Completion,
        Some(RequestKind::Erasure),
        "en",
        &json!({"request_id": "R", "completed": "2026-12-01", "erased": [], "kept": []}),
        None,
    )
    .unwrap();
    assert!(
        nothing.text.contains("nothing that needed erasing"),
        "{}",
        nothing.text
    );

    let ack = render(
        MessageKind::Acknowledgement,
        Some(RequestKind::Erasure),
        "en",
        &json!({"request_id": "R", "received": "2026-11-24"}),
        None,
    )
    .unwrap();
    assert!(ack.text.contains("starts once"), "{}", ack.text);

    let v = render(
        MessageKind::Verification,
        Some(RequestKind::Erasure),
        "en",
        &vars(MessageKind::Verification),
        None,
    )
    .unwrap();
    assert!(
        v.text
            .contains("https://privacy.example.com/verify/tok?a=1&b=2")
    );
    // Escaped for an attribute (`/` as `&#x2f;` too, which HTML decodes), never raw.
    assert!(v.html.contains("tok?a=1&amp;b=2\""), "{}", v.html);
    assert!(!v.html.contains("a=1&b=2"), "{}", v.html);

    // A variable a template prints but the caller forgot is an error, not a blank.
    let e = render(
        MessageKind::Verification,
        Some(RequestKind::Erasure),
        "en",
        &json!({"request_id": "R"}),
        None,
    )
    .unwrap_err();
    assert!(e.message.contains("verification"), "{e}");
}

#[test]
fn unknown_locales_fall_back_to_english() {
    let v = vars(MessageKind::Approval);
    let en = render(
        MessageKind::Approval,
        Some(RequestKind::Erasure),
        "en",
        &v,
        None,
    )
    .unwrap();
    assert_eq!(
        render(
            MessageKind::Approval,
            Some(RequestKind::Erasure),
            "fr-FR",
            &v,
            None
        )
        .unwrap(),
        en
    );
    assert_eq!(
        render(
            MessageKind::Approval,
            Some(RequestKind::Erasure),
            "",
            &v,
            None
        )
        .unwrap(),
        en
    );
    let zh = render(
        MessageKind::Approval,
        Some(RequestKind::Erasure),
        "zh-CN",
        &v,
        None,
    )
    .unwrap();
    assert_eq!(
        render(
            MessageKind::Approval,
            Some(RequestKind::Erasure),
            "zh_cn",
            &v,
            None
        )
        .unwrap(),
        zh
    );
}

#[test]
fn operator_templates_win_over_the_built_in_ones() {
    let dir = tempfile::tempdir().unwrap();
    let en = dir.path().join("en");
    std::fs::create_dir_all(&en).unwrap();
    std::fs::write(
        en.join("approval.subject.txt"),
        "Approved: {{ request_id }}\n",
    )
    .unwrap();
    std::fs::write(
        en.join("approval.html"),
        "<p>ACME approves {{ request_id }} in {{ locale }}</p>",
    )
    .unwrap();
    let v = json!({"request_id": "R<1>"});
    let r = render(
        MessageKind::Approval,
        Some(RequestKind::Erasure),
        "en",
        &v,
        Some(dir.path()),
    )
    .unwrap();
    assert_eq!(r.subject, "Approved: R<1>");
    assert_eq!(r.html, "<p>ACME approves R&lt;1&gt; in en</p>");
    // The text template was not overridden: the built-in one, which sees the new subject.
    assert!(
        r.text.contains("We have checked your request R<1>"),
        "{}",
        r.text
    );
    // Another locale is untouched.
    let zh = render(
        MessageKind::Approval,
        Some(RequestKind::Erasure),
        "zh-CN",
        &v,
        Some(dir.path()),
    )
    .unwrap();
    assert!(has_chinese(&zh.subject));

    // An operator's own locale.
    let de = dir.path().join("de");
    std::fs::create_dir_all(&de).unwrap();
    for (name, text) in [
        ("approval.subject.txt", "Genehmigt: {{ request_id }}"),
        (
            "approval.txt",
            "Ihre Anfrage {{ request_id }} ist genehmigt.",
        ),
        ("approval.html", "<p>{{ subject }}</p>"),
    ] {
        std::fs::write(de.join(name), text).unwrap();
    }
    let r = render(
        MessageKind::Approval,
        Some(RequestKind::Erasure),
        "de",
        &v,
        Some(dir.path()),
    )
    .unwrap();
    assert_eq!(r.subject, "Genehmigt: R<1>");
    assert_eq!(r.html, "<p>Genehmigt: R&lt;1&gt;</p>");
    let m = mail::compose(
        MessageKind::Approval,
        "de",
        "a@example.com",
        Concerns::Request {
            id: "R1",
            kind: RequestKind::Erasure,
        },
        &v,
        vec![],
        Some(dir.path()),
    )
    .unwrap();
    assert_eq!(m.locale, "de");

    // A broken override is reported with its name.
    std::fs::write(en.join("approval.txt"), "{% if %}").unwrap();
    let e = render(
        MessageKind::Approval,
        Some(RequestKind::Erasure),
        "en",
        &v,
        Some(dir.path()),
    )
    .unwrap_err();
    assert!(e.message.contains("en/approval.txt"), "{e}");
}

fn receipt() -> MailAttachment {
    MailAttachment {
        filename: "receipt.json".into(),
        content_type: "application/json".into(),
        content: br#"{"request":"REQ1","merkle_root":"00ff"}"#.to_vec(),
    }
}

fn new_mail(kind: MessageKind, to: &str, request_id: Option<&str>, attach: bool) -> NewMail {
    let mut v = vars(kind);
    if let Some(rid) = request_id {
        v["request_id"] = json!(rid);
    }
    let atts = if attach { vec![receipt()] } else { vec![] };
    let about = Concerns::Request {
        id: request_id.unwrap_or("REQ1"),
        kind: RequestKind::Erasure,
    };
    let mut m = mail::compose(kind, "zh-CN", to, about, &v, atts, None).unwrap();
    // Some tests want messages that belong to no request in the store.
    m.request_id = request_id.map(str::to_owned);
    m
}

/// A request whose subject gave no email address, so that intake itself queues no message
/// and the outbox holds only what a test puts there.
async fn a_request(env: &Env, ctx: &quietus::lifecycle::Context, now: DateTime<Utc>) -> String {
    let _ = env;
    const TICKET: &str = r#"{"kind":"erasure","external_id":"T-1","subject":{"customer_id":"C-1042"},"jurisdiction":"GDPR"}"#;
    let ticket = intake::parse_ticket(TICKET.as_bytes(), "t", true).unwrap();
    let src = Source {
        door: quietus::intake::Door::Cli,
        actor: "tester".into(),
        trusted: true,
    };
    intake::submit(ctx, &ticket, TICKET, &src, now)
        .await
        .unwrap()
        .id
}

fn eml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn parse(bytes: &[u8]) -> mail_parser::Message<'_> {
    mail_parser::MessageParser::default()
        .parse(bytes)
        .expect("a MIME message")
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn the_outbox_is_written_with_the_state_change_or_not_at_all(#[case] backend: Backend) {
    let now = t("2026-11-24T09:00:00Z");
    {
        let kind = StoreKind::of(backend).await;
        let env = Env::new(&kind).await;
        let ctx = env.context().await;
        let rid = a_request(&env, &ctx, now).await;
        let kept = new_mail(
            MessageKind::Acknowledgement,
            "olivia.chen@example.com",
            Some(&rid),
            false,
        );
        let dropped = new_mail(
            MessageKind::Approval,
            "olivia.chen@example.com",
            Some(&rid),
            false,
        );
        match &ctx.store.pool {
            Pool::Sqlite(p) => {
                let mut tx = p.begin_write().await.unwrap();
                mail::enqueue_in(&mut tx, &kept, now).await.unwrap();
                tx.commit().await.unwrap();
                let mut tx = p.begin_write().await.unwrap();
                mail::enqueue_in(&mut tx, &dropped, now).await.unwrap();
                tx.rollback().await.unwrap();
            }
            Pool::Postgres(p) => {
                let mut tx = p.begin_write().await.unwrap();
                mail::enqueue_in(&mut tx, &kept, now).await.unwrap();
                tx.commit().await.unwrap();
                let mut tx = p.begin_write().await.unwrap();
                mail::enqueue_in(&mut tx, &dropped, now).await.unwrap();
                tx.rollback().await.unwrap();
            }
        }
        let rows = ctx.store.outbox_of(&rid).await.unwrap();
        assert_eq!(rows.len(), 1, "{}", kind.label());
        assert_eq!(rows[0].id, kept.id);
        assert_eq!(rows[0].state.as_str(), "pending");
        assert_eq!(rows[0].locale, "zh-CN");
        assert_eq!(rows[0].created_at, now);
        assert!(ctx.store.outbox_mail(&dropped.id).await.is_err());
        // The same id twice is refused.
        assert!(ctx.store.enqueue(&kept, now).await.is_err());
        ctx.store.close().await;
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
async fn the_file_transport_writes_each_message_once(#[case] backend: Backend) {
    let now = t("2026-11-24T09:00:00Z");
    {
        let kind = StoreKind::of(backend).await;
        let env = Env::new(&kind).await;
        let ctx = env.context().await;
        let store: &Store = &ctx.store;
        let rid = a_request(&env, &ctx, now).await;
        let outbox = env.path().join("var/outbox");
        let mailer = Mailer::new(
            Transport::File {
                dir: outbox.clone(),
            },
            "Privacy Team <privacy@corp.example>",
            None,
        )
        .unwrap();
        let to = "olivia.chen@example.com";
        let mails = [
            new_mail(MessageKind::Completion, to, Some(&rid), true),
            new_mail(MessageKind::Acknowledgement, to, Some(&rid), false),
            new_mail(MessageKind::Reminder, "dpo@corp.example", None, false),
        ];
        for m in &mails {
            store.enqueue(m, now).await.unwrap();
        }
        let s = mail::send_due(store, &mailer, "w1", now, 5).await.unwrap();
        assert_eq!(s.sent.len(), 3, "{}: {s:?}", kind.label());
        assert!(s.retrying.is_empty() && s.failed.is_empty());
        let files = eml_files(&outbox);
        assert_eq!(files.len(), 3);

        for m in &mails {
            let bytes = common::read(outbox.join(format!("{}.eml", m.id))).unwrap();
            let msg = parse(&bytes);
            assert_eq!(
                msg.message_id(),
                Some(format!("{}@corp.example", m.id).as_str())
            );
            assert_eq!(msg.subject(), Some(m.subject.as_str()));
            assert_eq!(
                msg.from().unwrap().first().unwrap().address(),
                Some("privacy@corp.example")
            );
            assert_eq!(
                msg.to().unwrap().first().unwrap().address(),
                Some(m.recipient.as_str())
            );
            assert_eq!(msg.date().unwrap().to_timestamp(), now.timestamp());
            assert_eq!(
                msg.header_raw("Auto-Submitted").map(str::trim),
                Some("auto-generated")
            );
            let text = msg.body_text(0).unwrap();
            let html = msg.body_html(0).unwrap();
            assert!(has_chinese(&text), "{text}");
            assert!(html.contains("<html lang=\"zh-CN\">"), "{html}");
            assert_eq!(
                text.replace("\r\n", "\n").trim_end(),
                m.body_text.trim_end()
            );
            let attachments: Vec<_> = msg.attachments().collect();
            if m.kind.as_str() == "completion" {
                assert_eq!(attachments.len(), 1);
                assert_eq!(attachments[0].attachment_name(), Some("receipt.json"));
                assert_eq!(attachments[0].contents(), receipt().content.as_slice());
                assert!(String::from_utf8_lossy(&bytes).contains("multipart/mixed"));
            } else {
                assert!(attachments.is_empty());
                assert!(String::from_utf8_lossy(&bytes).contains("multipart/alternative"));
            }
            // Only the recipient's own address is in the message.
            let all = String::from_utf8_lossy(&bytes).to_string();
            assert!(!all.contains("fang.wang"), "another person's address");
        }
        let rows = store.outbox_of(&rid).await.unwrap();
        assert!(
            rows.iter()
                .all(|r| r.state.as_str() == "sent" && r.sent_at == Some(now))
        );

        // A second pass sends nothing.
        let again = mail::send_due(store, &mailer, "w1", now, 5).await.unwrap();
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(eml_files(&outbox).len(), 3);

        // A crash after the file was written, before it was marked sent: once the lease
        // has expired another sender finds the file and writes nothing.
        let m = new_mail(MessageKind::Approval, to, Some(&rid), false);
        store.enqueue(&m, now).await.unwrap();
        let leased = store
            .lease_mail("crashed", now, now + chrono::Duration::minutes(1), 10)
            .await
            .unwrap();
        assert_eq!(leased.len(), 1);
        mailer.deliver(&leased[0], now).await.unwrap();
        let during = mail::send_due(store, &mailer, "w2", now, 5).await.unwrap();
        assert!(during.is_empty(), "leased elsewhere: {during:?}");
        let later = now + chrono::Duration::minutes(2);
        let s = mail::send_due(store, &mailer, "w2", later, 5)
            .await
            .unwrap();
        assert_eq!(s.sent, vec![m.id.clone()]);
        assert_eq!(eml_files(&outbox).len(), 4);
        // The crashed sender's late mark changes nothing.
        assert!(!store.mail_sent(&m.id, "crashed", later).await.unwrap());
        assert_eq!(
            store.outbox_mail(&m.id).await.unwrap().state.as_str(),
            "sent"
        );

        // A message that cannot be built fails at once (no retry can help).
        let mut bad = new_mail(MessageKind::Approval, to, None, true);
        bad.attachments[0].content_type = "not a type".into();
        store.enqueue(&bad, later).await.unwrap();
        let s = mail::send_due(store, &mailer, "w2", later, 5)
            .await
            .unwrap();
        assert_eq!(s.failed, vec![bad.id.clone()]);
        let row = store.outbox_mail(&bad.id).await.unwrap();
        assert_eq!((row.state.as_str(), row.attempts), ("failed", 1));
        assert!(!row.last_error.unwrap_or_default().contains('@'));
        let counts: HashMap<String, i64> = store
            .outbox_counts()
            .await
            .unwrap()
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect();
        assert_eq!(counts.get("sent"), Some(&4));
        assert_eq!(counts.get("failed"), Some(&1));

        ctx.store.close().await;
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
async fn retries_back_off_and_give_up_after_the_budget(#[case] backend: Backend) {
    let now = t("2026-11-24T09:00:00Z");
    {
        let kind = StoreKind::of(backend).await;
        let env = Env::new(&kind).await;
        let ctx = env.context().await;
        let store: &Store = &ctx.store;
        // A relay that refuses connections: a port nobody listens on.
        let port = free_port();
        let cfg = SmtpConfig {
            host: "127.0.0.1".into(),
            port: Some(port),
            tls: SmtpTls::None,
            timeout_seconds: 5,
            ..SmtpConfig::default()
        };
        let mailer = Mailer::new(
            Transport::smtp(&cfg, None, "quietus.test").unwrap(),
            "quietus <q@quietus.test>",
            None,
        )
        .unwrap();
        let m = new_mail(MessageKind::Reminder, "dpo@corp.example", None, false);
        store.enqueue(&m, now).await.unwrap();
        let mut at = now;
        for attempt in 1..=3 {
            let s = mail::send_due(store, &mailer, "w", at, 3).await.unwrap();
            let row = store.outbox_mail(&m.id).await.unwrap();
            assert_eq!(row.attempts, attempt, "{}", kind.label());
            if attempt < 3 {
                assert_eq!(s.retrying, vec![m.id.clone()]);
                assert_eq!(row.state.as_str(), "pending");
                assert_eq!(row.next_attempt_at, at + mail::backoff(attempt));
                // Not before the backoff has passed.
                assert!(
                    mail::send_due(
                        store,
                        &mailer,
                        "w",
                        at + mail::backoff(attempt) - chrono::Duration::seconds(1),
                        3
                    )
                    .await
                    .unwrap()
                    .is_empty()
                );
                at = row.next_attempt_at;
            } else {
                assert_eq!(s.failed, vec![m.id.clone()]);
                assert_eq!(row.state.as_str(), "failed");
            }
            let err = row.last_error.unwrap();
            assert!(err.contains("SMTP 127.0.0.1:"), "{err}");
        }
        assert!(
            mail::send_due(store, &mailer, "w", at + chrono::Duration::days(30), 3)
                .await
                .unwrap()
                .is_empty()
        );
        ctx.store.close().await;
        kind.cleanup().await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Python interpreter that has aiosmtpd (the test is compiled ignored when there was
/// none at build time: now it must be there).
fn python_with_aiosmtpd() -> String {
    let mut candidates = vec!["python3".to_owned(), "/usr/bin/python3".to_owned()];
    if let Ok(p) = std::env::var("QUIETUS_TEST_PYTHON") {
        candidates.insert(0, p);
    }
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return py;
        }
    }
    panic!("aiosmtpd is not installed (apt-get install python3-aiosmtpd, or pip install aiosmtpd)");
}

/// The SMTP sink of tests/support, killed when dropped.
struct SmtpSink(Child);

impl SmtpSink {
    fn start(python: &str, port: u16, dir: &Path) -> SmtpSink {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py");
        let child = Command::new(python)
            .arg(script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the SMTP sink");
        let mut sink = SmtpSink(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = sink.0.try_wait().unwrap() {
                panic!("the SMTP sink exited: {status}");
            }
            assert!(Instant::now() < deadline, "the SMTP sink does not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        sink
    }

    fn stop(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Delivered messages by Message-ID: how many copies of each.
fn delivered(dir: &Path) -> HashMap<String, usize> {
    let mut by_id = HashMap::new();
    for f in eml_files(dir) {
        let bytes = common::read(&f).unwrap();
        let id = parse(&bytes).message_id().expect("a Message-ID").to_owned();
        *by_id.entry(id).or_insert(0) += 1;
    }
    by_id
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    all(quietus_test_smtp, not(quietus_test_postgres)),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[cfg_attr(
    not(quietus_test_smtp),
    ignore = "needs aiosmtpd: apt-get install python3-aiosmtpd (QUIETUS_TEST_PYTHON names the interpreter)"
)]
#[tokio::test(flavor = "multi_thread")]
async fn smtp_to_a_real_server_on_loopback_loses_nothing_and_sends_nothing_twice(
    #[case] backend: Backend,
) {
    let python = python_with_aiosmtpd();
    let start = t("2026-11-24T09:00:00Z");
    {
        let kind = StoreKind::of(backend).await;
        let env = Env::new(&kind).await;
        let ctx = env.context().await;
        let store: &Store = &ctx.store;
        let rid = a_request(&env, &ctx, start).await;
        let received = env.path().join("received");
        let port = free_port();
        let cfg = SmtpConfig {
            host: "127.0.0.1".into(),
            port: Some(port),
            tls: SmtpTls::None,
            timeout_seconds: 10,
            ..SmtpConfig::default()
        };
        let mailer = Mailer::new(
            Transport::smtp(&cfg, None, "quietus.test").unwrap(),
            "Privacy Team <privacy@corp.example>",
            Some("quietus.test"),
        )
        .unwrap();
        let sink = SmtpSink::start(&python, port, &received);

        // One message, read back as delivered.
        let to = "olivia.chen@example.com";
        let first = new_mail(MessageKind::Completion, to, Some(&rid), true);
        store.enqueue(&first, start).await.unwrap();
        let s = mail::send_due(store, &mailer, "w1", start, 10)
            .await
            .unwrap();
        assert_eq!(s.sent, vec![first.id.clone()], "{}", kind.label());
        let files = eml_files(&received);
        assert_eq!(files.len(), 1);
        let bytes = common::read(&files[0]).unwrap();
        let msg = parse(&bytes);
        assert_eq!(
            msg.message_id(),
            Some(format!("{}@quietus.test", first.id).as_str())
        );
        assert_eq!(msg.subject(), Some(first.subject.as_str()));
        assert!(first.subject.contains(&rid));
        assert_eq!(msg.to().unwrap().first().unwrap().address(), Some(to));
        assert_eq!(
            msg.from().unwrap().first().unwrap().name(),
            Some("Privacy Team")
        );
        assert!(msg.body_text(0).unwrap().contains("receipt.json"));
        assert!(
            msg.body_html(0)
                .unwrap()
                .contains("<strong>2036-12-31</strong>")
        );
        let att: Vec<_> = msg.attachments().collect();
        assert_eq!(att.len(), 1);
        assert_eq!(att[0].contents(), receipt().content.as_slice());

        // A quoted local part is a valid address: the relay takes it as the recipient.
        let quoted = new_mail(
            MessageKind::Approval,
            "\"olivia chen\"@example.com",
            Some(&rid),
            false,
        );
        store.enqueue(&quoted, start).await.unwrap();
        let s = mail::send_due(store, &mailer, "w1", start, 10)
            .await
            .unwrap();
        assert_eq!(s.sent, vec![quoted.id.clone()], "{}: {s:?}", kind.label());
        assert_eq!(eml_files(&received).len(), 2);

        // The server goes away; messages keep coming.
        sink.stop();
        let mut ids = vec![first.id.clone()];
        for i in 0..4 {
            let kind_i = [
                MessageKind::Approval,
                MessageKind::Extension,
                MessageKind::Reminder,
                MessageKind::ManualTask,
            ][i];
            let m = new_mail(kind_i, to, Some(&rid), false);
            store.enqueue(&m, start).await.unwrap();
            ids.push(m.id);
        }
        let mut now = start + chrono::Duration::minutes(1);
        let s = mail::send_due(store, &mailer, "w1", now, 10).await.unwrap();
        assert_eq!((s.sent.len(), s.retrying.len()), (0, 4), "{s:?}");
        for id in &ids[1..] {
            let row = store.outbox_mail(id).await.unwrap();
            assert_eq!((row.state.as_str(), row.attempts), ("pending", 1));
            assert!(row.next_attempt_at > now);
            assert!(
                !row.last_error.unwrap().contains(to),
                "the address in an error"
            );
        }
        // A second try while it is still down, after the backoff.
        now += mail::backoff(1);
        let s = mail::send_due(store, &mailer, "w2", now, 10).await.unwrap();
        assert_eq!(s.retrying.len(), 4, "{s:?}");
        assert_eq!(eml_files(&received).len(), 2);

        // Back up: everything goes out, once.
        let sink = SmtpSink::start(&python, port, &received);
        let mut total = SendSummary::default();
        for _ in 0..20 {
            now += chrono::Duration::minutes(5);
            let s = mail::send_due(store, &mailer, "w3", now, 10).await.unwrap();
            total.sent.extend(s.sent);
            assert!(s.failed.is_empty(), "{:?}", s.failed);
            let pending = store
                .outbox_of(&rid)
                .await
                .unwrap()
                .iter()
                .filter(|r| r.state.as_str() != "sent")
                .count();
            if pending == 0 {
                break;
            }
        }
        sink.stop();
        assert_eq!(total.sent.len(), 4, "{total:?}");
        let by_id = delivered(&received);
        assert_eq!(by_id.len(), 6, "{by_id:?}");
        for id in &ids {
            assert_eq!(
                by_id.get(&format!("{id}@quietus.test")),
                Some(&1),
                "{id}: {by_id:?}"
            );
        }
        assert!(
            store
                .outbox_of(&rid)
                .await
                .unwrap()
                .iter()
                .all(|r| r.state.as_str() == "sent")
        );
        ctx.store.close().await;
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
async fn intake_queues_the_acknowledgement_in_its_own_transaction(#[case] backend: Backend) {
    {
        let kind = StoreKind::of(backend).await;
        let env = Env::new(&kind).await;
        let ctx = env.context().await;
        let now = DateTime::parse_from_rfc3339("2026-11-24T09:00:00Z")
            .unwrap()
            .to_utc();
        let ticket = intake::parse_ticket(common::ERASURE_TICKET.as_bytes(), "t", true).unwrap();
        let src = Source {
            door: quietus::intake::Door::Cli,
            actor: "tester".into(),
            trusted: true,
        };
        let id = intake::submit(&ctx, &ticket, common::ERASURE_TICKET, &src, now)
            .await
            .unwrap()
            .id;
        let rows = ctx.store.outbox_of(&id).await.unwrap();
        assert_eq!(rows.len(), 1, "{}", kind.label());
        assert_eq!(rows[0].kind.as_str(), "acknowledgement");
        assert_eq!(rows[0].recipient, "olivia.chen@example.com");
        // The same ticket again is the same request, and no second acknowledgement.
        intake::submit(&ctx, &ticket, common::ERASURE_TICKET, &src, now)
            .await
            .unwrap();
        assert_eq!(ctx.store.outbox_of(&id).await.unwrap().len(), 1);
        ctx.store.close().await;
        kind.cleanup().await;
    }
}
