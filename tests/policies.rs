//! Policy files: every shipped file validates; every kind of mistake is reported with its
//! file and line; plans on the demo CRM are what the law and the policy say.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::Path;

use chrono::{DateTime, NaiveDate, Utc};
use common::{BIN, fails, ok};
use quietus::plan::{PlanInput, make};
use quietus::policy::{Action, Identities, IdentityKind, Jurisdiction, Policies, RequestKind};

fn check(dir: &Path) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["policy", "check"])
        .arg(dir)
        .env("QUIETUS_LOG", "warn")
        .output()
        .expect("quietus runs")
}

#[test]
fn every_shipped_policy_file_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let p = Policies::load(&dir).unwrap_or_else(|e| panic!("shipped policies are invalid:\n{e}"));
    // Every *.toml under policies/ was read.
    let mut on_disk = Vec::new();
    for sub in ["", "systems"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "toml") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                on_disk.push(if sub.is_empty() {
                    name
                } else {
                    format!("{sub}/{name}")
                });
            }
        }
    }
    on_disk.sort();
    assert_eq!(p.files, on_disk);
    // And the embedded copies the demo installs are the same files.
    let embedded = Policies::examples().unwrap();
    assert_eq!(
        embedded.digest, p.digest,
        "policy::EXAMPLES must list every shipped policy file"
    );
    let out = ok(&check(&dir));
    assert!(out.contains(": ok ("), "{out}");
}

/// A copy of the shipped policies with one file changed.
fn broken(file: &str, edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("systems")).unwrap();
    for (name, text) in quietus::policy::EXAMPLES {
        let text = if *name == file {
            edit((*text).to_owned())
        } else {
            (*text).to_owned()
        };
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in file")
        + 1
}

#[test]
fn a_syntax_error_names_file_line_and_column() {
    let dir = broken("retention.toml", |t| {
        t.replace("id = \"private-content\"", "id = \"private-content")
    });
    let text = common::read_to_string(dir.path().join("retention.toml")).unwrap();
    let line = line_of(&text, "id = \"private-content");
    let err = fails(&check(dir.path()));
    assert!(err.contains(&format!("retention.toml:{line}:")), "{err}");
}

#[test]
fn an_unknown_key_names_file_and_line() {
    let dir = broken("retention.toml", |t| {
        t.replace(
            "id = \"private-content\"",
            "id = \"private-content\"\nretension = \"5 years\"",
        )
    });
    let text = common::read_to_string(dir.path().join("retention.toml")).unwrap();
    let line = line_of(&text, "retension");
    let err = fails(&check(dir.path()));
    assert!(
        err.contains(&format!("retention.toml:{line}:")) && err.contains("retension"),
        "{err}"
    );
}

#[test]
fn an_unknown_action_names_file_and_line() {
    let dir = broken("retention.toml", |t| {
        t.replacen("action = \"erase\"", "action = \"shred\"", 1)
    });
    let text = common::read_to_string(dir.path().join("retention.toml")).unwrap();
    let line = line_of(&text, "shred");
    let err = fails(&check(dir.path()));
    assert!(
        err.contains(&format!("retention.toml:{line}:")) && err.contains("shred"),
        "{err}"
    );
}

#[test]
fn an_uncovered_category_names_the_data_map_and_line() {
    let dir = broken("systems/crm.toml", |t| {
        t.replace(
            "columns = { role = \"user.authorization\" }",
            "columns = { role = \"user.authorization\", face = \"user.biometric\" }",
        )
    });
    let text = common::read_to_string(dir.path().join("systems/crm.toml")).unwrap();
    let line = line_of(&text, "user.biometric");
    let err = fails(&check(dir.path()));
    assert!(err.contains(&format!("systems/crm.toml:{line}:")), "{err}");
    assert!(
        err.contains("user.biometric is not covered by any rule"),
        "{err}"
    );
}

#[test]
fn a_misspelt_category_is_an_error_not_a_new_category() {
    let dir = broken("systems/crm.toml", |t| {
        t.replacen("\"user.contact.email\"", "\"user.contact.emial\"", 1)
    });
    let err = fails(&check(dir.path()));
    assert!(
        err.contains("systems/crm.toml:")
            && err.contains("unknown category \"user.contact.emial\""),
        "{err}"
    );
}

#[test]
fn references_must_name_mapped_tables_and_keys() {
    let dir = broken("systems/crm.toml", |t| {
        t.replacen("to = \"employees.id\"", "to = \"employes.id\"", 1)
    });
    let err = fails(&check(dir.path()));
    assert!(
        err.contains("table employes is not in the data map"),
        "{err}"
    );
    let dir = broken("systems/crm.toml", |t| {
        t.replacen("to = \"employees.id\"", "to = \"employees.title\"", 1)
    });
    let err = fails(&check(dir.path()));
    assert!(
        err.contains("neither the key nor an identity column"),
        "{err}"
    );
}

#[test]
fn reference_cycles_are_refused() {
    let dir = broken("systems/crm.toml", |t| {
        t.replacen(
            "identity = { email = \"email\", employee_id = \"emp_no\", phone = \"mobile\" }",
            "identity = { email = \"email\", employee_id = \"emp_no\", phone = \"mobile\" }\nreferences = [{ column = \"id\", to = \"personal_notes.id\" }]",
            1,
        )
    });
    let err = fails(&check(dir.path()));
    assert!(err.contains("references form a cycle"), "{err}");
}

#[test]
fn identifiers_cannot_carry_sql() {
    let dir = broken("systems/crm.toml", |t| {
        t.replacen(
            "name = \"personal_notes\"",
            "name = \"personal_notes; DROP TABLE employees\"",
            1,
        )
    });
    let err = fails(&check(dir.path()));
    assert!(err.contains("is not a plain SQL identifier"), "{err}");
}

#[test]
fn a_retain_rule_needs_its_period() {
    let dir = broken("retention.toml", |t| {
        t.replacen("for = \"2 years\"\n", "", 1)
    });
    let err = fails(&check(dir.path()));
    assert!(err.contains("retain needs `for`"), "{err}");
}

#[test]
fn rule_resolution_most_specific_then_longest() {
    let p = Policies::examples().unwrap();
    let r = |c: &str, k| p.resolve(c, k, Jurisdiction::Pipl).map(|r| r.id.as_str());
    assert_eq!(
        r("user.contact.email", RequestKind::Erasure),
        Some("contact-data")
    );
    assert_eq!(
        r("user.employment.contract", RequestKind::Exit),
        Some("labour-contract")
    );
    assert_eq!(r("business.owner", RequestKind::Exit), Some("handover"));
    assert_eq!(
        r("business.owner", RequestKind::Erasure),
        None,
        "handover is for exits only"
    );
    assert_eq!(r("user.biometric", RequestKind::Erasure), None);
    // Between equally specific rules, the one that keeps longer wins.
    let mut with_extra = Policies::examples().unwrap();
    let mut keep = with_extra.rule("contact-data").unwrap().clone();
    keep.id = "keep-contacts".into();
    keep.action = Action::Retain;
    keep.period = Some("1 year".parse().unwrap());
    keep.from = Some("request_date".parse().unwrap());
    keep.then = Some(quietus::policy::FollowUp::Erase);
    with_extra.rules.push(keep);
    assert_eq!(
        with_extra
            .resolve(
                "user.contact.email",
                RequestKind::Erasure,
                Jurisdiction::Gdpr
            )
            .map(|r| r.id.as_str()),
        Some("keep-contacts")
    );
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn demo_survey(
    subject: Identities,
    successor: Option<Identities>,
) -> (Policies, Vec<quietus::targets::SystemSurvey>) {
    let dir = tempfile::tempdir().unwrap();
    quietus::demo::create_crm_sqlite(&dir.path().join("crm.db"))
        .await
        .unwrap();
    let p = Policies::examples().unwrap();
    let pools = quietus::targets::Pools::new(dir.path(), 4);
    let s = quietus::targets::survey(&pools, &p.systems, &subject, successor.as_ref()).await;
    pools.close().await;
    (p, s)
}

fn ids(pairs: &[(IdentityKind, &str)]) -> Identities {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

#[tokio::test]
async fn the_demo_exit_plan_disables_hands_over_retains_and_erases() {
    let (p, survey) = demo_survey(
        ids(&[
            (IdentityKind::Email, "fang.wang@corp.example"),
            (IdentityKind::EmployeeId, "E100"),
        ]),
        Some(ids(&[(IdentityKind::EmployeeId, "E200")])),
    )
    .await;
    let input = PlanInput {
        request_id: "r1".into(),
        kind: RequestKind::Exit,
        jurisdiction: Jurisdiction::Pipl,
        request_date: NaiveDate::from_ymd_opt(2026, 11, 24).unwrap(),
        exit_date: NaiveDate::from_ymd_opt(2026, 12, 31),
        has_successor: true,
        wants_copy: false,
    };
    let plan = make(&input, &p, &survey, at("2026-11-24T02:00:00Z"));
    assert!(plan.blocked.is_empty(), "{:?}", plan.blocked);
    let mut plan_json = serde_json::to_value(&plan).unwrap();
    plan_json["policy_digest"] = "(digest)".into();
    // The plan keeps the data map it was made with (execution checks it still holds).
    let data_map = plan_json
        .as_object_mut()
        .unwrap()
        .remove("data_map")
        .unwrap();
    assert_eq!(
        data_map["crm"],
        serde_json::to_value(&p.system("crm").unwrap().tables).unwrap()
    );
    insta::assert_json_snapshot!("demo_exit_plan", plan_json);
    // Time travel: a request made after the exit acts at once, and the contract is kept
    // two years from the exit date regardless.
    let late = PlanInput {
        request_date: NaiveDate::from_ymd_opt(2027, 2, 1).unwrap(),
        ..input.clone()
    };
    let plan = make(&late, &p, &survey, at("2027-02-01T02:00:00Z"));
    let contract = plan
        .entries
        .iter()
        .find(|e| e.table == "labour_contracts")
        .unwrap();
    assert_eq!(contract.due, NaiveDate::from_ymd_opt(2028, 12, 31).unwrap());
    let notes = plan
        .entries
        .iter()
        .find(|e| e.table == "personal_notes")
        .unwrap();
    assert_eq!(notes.due, NaiveDate::from_ymd_opt(2027, 2, 1).unwrap());
}

#[tokio::test]
async fn exits_without_a_usable_successor_are_blocked() {
    let leaver = ids(&[(IdentityKind::EmployeeId, "E100")]);
    let input = PlanInput {
        request_id: "r1".into(),
        kind: RequestKind::Exit,
        jurisdiction: Jurisdiction::Pipl,
        request_date: NaiveDate::from_ymd_opt(2026, 11, 24).unwrap(),
        exit_date: NaiveDate::from_ymd_opt(2026, 12, 31),
        has_successor: true,
        wants_copy: false,
    };
    for (succ, want) in [("E150", "disabled"), ("E999", "not found")] {
        let (p, survey) = demo_survey(
            leaver.clone(),
            Some(ids(&[(IdentityKind::EmployeeId, succ)])),
        )
        .await;
        let plan = make(&input, &p, &survey, at("2026-11-24T02:00:00Z"));
        assert!(
            plan.blocked.iter().any(|b| b.contains(want)),
            "{succ}: {:?}",
            plan.blocked
        );
    }
}

#[tokio::test]
async fn an_erasure_needing_an_exit_date_is_blocked_not_guessed() {
    // An erasure request by a former employee: the contract rule counts from the exit
    // date, which an erasure ticket does not have.
    let (p, survey) = demo_survey(ids(&[(IdentityKind::EmployeeId, "E150")]), None).await;
    let input = PlanInput {
        request_id: "r2".into(),
        kind: RequestKind::Erasure,
        jurisdiction: Jurisdiction::Gdpr,
        request_date: NaiveDate::from_ymd_opt(2026, 11, 24).unwrap(),
        exit_date: None,
        has_successor: false,
        wants_copy: false,
    };
    let plan = make(&input, &p, &survey, at("2026-11-24T02:00:00Z"));
    assert!(
        plan.blocked
            .iter()
            .any(|b| b.contains("labour_contracts") && b.contains("exit_date")),
        "{:?}",
        plan.blocked
    );
}

#[tokio::test]
async fn the_demo_erasure_plan_anonymises_and_keeps_business_records() {
    let (p, survey) = demo_survey(
        ids(&[(IdentityKind::Email, "olivia.chen@example.com")]),
        None,
    )
    .await;
    let input = PlanInput {
        request_id: "r3".into(),
        kind: RequestKind::Erasure,
        jurisdiction: Jurisdiction::Gdpr,
        request_date: NaiveDate::from_ymd_opt(2026, 11, 24).unwrap(),
        exit_date: None,
        has_successor: false,
        wants_copy: false,
    };
    let plan = make(&input, &p, &survey, at("2026-11-24T02:00:00Z"));
    let got: Vec<(String, Action, u64)> = plan
        .entries
        .iter()
        .map(|e| (e.table.clone(), e.action, e.rows))
        .collect();
    assert_eq!(
        got,
        vec![
            ("customers".into(), Action::Anonymize, 1),
            ("follow_ups".into(), Action::Retain, 3),
            ("invoices".into(), Action::Retain, 2),
        ]
    );
    let inv = &plan.entries[2];
    assert_eq!(inv.due, NaiveDate::from_ymd_opt(2056, 12, 31).unwrap());
    assert!(inv.basis.contains("Accounting"));
}

#[test]
fn rows_that_others_point_at_are_anonymised_not_deleted() {
    let dir = broken("systems/crm.toml", |t| {
        t.replace(
            "on_erase = \"anonymize\"\nanonymize = { name = \"(erased contact)\" }",
            "",
        )
    });
    let err = fails(&check(dir.path()));
    assert!(
        err.contains("crm.contacts: call_notes.contact_id point at its rows")
            && err.contains("on_erase = \"anonymize\""),
        "{err}"
    );
}
