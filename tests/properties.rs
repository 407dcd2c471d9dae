//! Property tests (issue 9, suite 5): rule resolution in the policy module, and response
//! deadlines and working-day arithmetic in the lifecycle module.
//!
//! Policies are built through the public loader (`Policies::from_files`) from generated
//! TOML, so every generated policy is one a person could write; deadlines go through
//! `lifecycle::deadline` and `HolidayCalendar` with the date always passed in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Datelike, Days, Months, NaiveDate, TimeZone, Utc, Weekday};
use proptest::prelude::*;
use proptest::sample::subsequence;

use quietus::Code;
use quietus::lifecycle::HolidayCalendar;
use quietus::lifecycle::deadline::{self, PIPL_CAP_DAYS};
use quietus::plan::{self, PlanInput};
use quietus::policy::{
    Action, Jurisdiction, Period, Policies, RequestKind, Rule, SourceFile, Unit,
};
use quietus::targets::{SystemSurvey, TableCounts};

const CASES: u32 = 256;

// ---------------------------------------------------------------------------------------
// Policies: generators
// ---------------------------------------------------------------------------------------

/// The category tree the generated rules draw from: fideslang keys and declared ones,
/// with parents, children and a grandchild, so that inheritance has something to do.
const CATS: &[&str] = &[
    "user",
    "user.contact",
    "user.contact.email",
    "user.contact.address",
    "user.contact.address.city",
    "user.name",
    "user.name.first",
    "user.employment",
    "user.employment.contract",
    "business",
    "business.communication",
];

/// The categories of `CATS` that are not in the fideslang taxonomy.
const DECLARED: &[&str] = &[
    "user.employment",
    "user.employment.contract",
    "business",
    "business.communication",
];

const KINDS: [RequestKind; 3] = [RequestKind::Erasure, RequestKind::Exit, RequestKind::Access];
const JS: [Jurisdiction; 2] = [Jurisdiction::Gdpr, Jurisdiction::Pipl];

#[derive(Debug, Clone)]
enum ActionSpec {
    Erase,
    Anonymize,
    Retain {
        period: Period,
        from: &'static str,
        then: &'static str,
    },
    Reassign,
    Disable,
}

#[derive(Debug, Clone)]
struct RuleSpec {
    cats: Vec<&'static str>,
    kinds: Option<Vec<RequestKind>>,
    js: Option<Vec<Jurisdiction>>,
    action: ActionSpec,
}

fn retention_period() -> impl Strategy<Value = Period> {
    // Periods of about the same length in different units, that the rough length
    // ("which keeps longer") cannot tell apart, half of the time.
    let close = proptest::sample::select(vec![
        Period::new(1, Unit::Years),
        Period::new(12, Unit::Months),
        Period::new(365, Unit::Days),
        Period::new(366, Unit::Days),
        Period::new(52, Unit::Weeks),
        Period::new(1, Unit::Months),
        Period::new(31, Unit::Days),
        Period::new(2, Unit::Months),
        Period::new(61, Unit::Days),
    ]);
    let any = (
        1u32..=40,
        prop_oneof![
            Just(Unit::Days),
            Just(Unit::Weeks),
            Just(Unit::Months),
            Just(Unit::Years)
        ],
    )
        .prop_map(|(n, u)| Period::new(n, u));
    prop_oneof![any, close]
}

fn start_rule() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("request_date"),
        Just("exit_date"),
        Just("end_of_year(request_date)"),
        Just("end_of_year(exit_date)"),
    ]
}

/// Actions as the data map of a table can take them (no reassign, no disable).
fn data_action() -> impl Strategy<Value = ActionSpec> {
    prop_oneof![
        Just(ActionSpec::Erase),
        Just(ActionSpec::Anonymize),
        (
            retention_period(),
            start_rule(),
            prop_oneof![Just("erase"), Just("anonymize")]
        )
            .prop_map(|(period, from, then)| ActionSpec::Retain { period, from, then }),
    ]
}

fn any_action() -> impl Strategy<Value = ActionSpec> {
    prop_oneof![
        4 => data_action(),
        1 => Just(ActionSpec::Reassign),
        1 => Just(ActionSpec::Disable),
    ]
}

fn rule_spec(action: BoxedStrategy<ActionSpec>) -> impl Strategy<Value = RuleSpec> {
    (
        subsequence(CATS, 1..=3),
        proptest::option::weighted(0.3, subsequence(KINDS.to_vec(), 1..=3)),
        proptest::option::weighted(0.3, subsequence(JS.to_vec(), 1..=2)),
        action,
    )
        .prop_map(|(cats, kinds, js, action)| RuleSpec {
            cats,
            kinds,
            js,
            action,
        })
}

/// Rules with distinct ids that are unrelated to their position.
fn rules(action: BoxedStrategy<ActionSpec>) -> impl Strategy<Value = Vec<(String, RuleSpec)>> {
    proptest::collection::vec(rule_spec(action), 1..=8).prop_flat_map(|specs| {
        let n = specs.len();
        Just((0..n).collect::<Vec<usize>>())
            .prop_shuffle()
            .prop_map(move |ids| {
                ids.into_iter()
                    .zip(specs.clone())
                    .map(|(i, s)| (format!("r{i:02}"), s))
                    .collect::<Vec<_>>()
            })
    })
}

fn toml_list<T: std::fmt::Display>(items: &[T]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn kind_str(k: RequestKind) -> &'static str {
    k.as_str()
}

fn render_rule(id: &str, r: &RuleSpec) -> String {
    let mut s = format!(
        "[[rule]]\nid = \"{id}\"\ncategories = {}\n",
        toml_list(&r.cats)
    );
    if let Some(k) = &r.kinds {
        let k: Vec<&str> = k.iter().copied().map(kind_str).collect();
        s.push_str(&format!("kinds = {}\n", toml_list(&k)));
    }
    if let Some(j) = &r.js {
        s.push_str(&format!("jurisdictions = {}\n", toml_list(j)));
    }
    match &r.action {
        ActionSpec::Erase => s.push_str("action = \"erase\"\n"),
        ActionSpec::Anonymize => s.push_str("action = \"anonymize\"\n"),
        ActionSpec::Reassign => s.push_str("action = \"reassign\"\n"),
        ActionSpec::Disable => s.push_str("action = \"disable\"\n"),
        ActionSpec::Retain { period, from, then } => s.push_str(&format!(
            "action = \"retain\"\nfor = \"{period}\"\nfrom = \"{from}\"\nthen = \"{then}\"\n"
        )),
    }
    s.push_str(&format!("basis = \"basis of {id}\"\n\n"));
    s
}

fn head() -> String {
    let mut s = String::from(
        "[deadlines]\nGDPR = \"1 month\"\nPIPL = \"15 working days\"\ndefault = \"PIPL\"\n\
         timezone = \"Asia/Shanghai\"\n\n",
    );
    for c in DECLARED {
        s.push_str(&format!("[[category]]\nkey = \"{c}\"\n\n"));
    }
    s
}

fn file(name: &str, text: String) -> SourceFile {
    SourceFile {
        name: name.to_owned(),
        text,
    }
}

/// A policy folder of one retention file holding `rules` in the given order.
fn policies_of(rules: &[(String, RuleSpec)], extra: Vec<SourceFile>) -> Policies {
    let mut text = head();
    for (id, r) in rules {
        text.push_str(&render_rule(id, r));
    }
    let mut files = vec![file("retention.toml", text)];
    files.extend(extra);
    match Policies::from_files(files) {
        Ok(p) => p,
        Err(e) => panic!("generated policy does not validate:\n{e}"),
    }
}

fn ids(p: &Policies, cat: &str, k: RequestKind, j: Jurisdiction) -> Option<String> {
    p.resolve(cat, k, j).map(|r| r.id.clone())
}

/// Every (category, kind, jurisdiction) a resolution can be asked about.
fn questions() -> impl Iterator<Item = (&'static str, RequestKind, Jurisdiction)> {
    CATS.iter().flat_map(|c| {
        KINDS
            .iter()
            .flat_map(move |k| JS.iter().map(move |j| (*c, *k, *j)))
    })
}

fn parent(cat: &str) -> Option<&str> {
    cat.rfind('.').map(|i| &cat[..i])
}

// ---------------------------------------------------------------------------------------
// Policies: properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Resolution does not depend on the order rules are written in, nor on how they are
    /// split across retention files: the same rules give the same rule for every
    /// category, request kind and jurisdiction, with or without a request's dates.
    #[test]
    fn resolution_is_independent_of_rule_order(
        (rs, shuffled, split) in rules(any_action().boxed()).prop_flat_map(|rs| {
            let n = rs.len();
            (Just(rs.clone()), Just(rs).prop_shuffle(), 0..=n)
        }),
        request_date in date_in((2000, 1, 1), (2100, 12, 31)),
        exit_date in proptest::option::of(date_in((2000, 1, 1), (2100, 12, 31))),
    ) {
        let a = policies_of(&rs, Vec::new());
        // The shuffled rules, the first `split` of them in a second file.
        let (first, second) = shuffled.split_at(split);
        let b = {
            let mut one = head();
            for (id, r) in second {
                one.push_str(&render_rule(id, r));
            }
            let mut two = String::new();
            for (id, r) in first {
                two.push_str(&render_rule(id, r));
            }
            Policies::from_files(vec![file("b.toml", one), file("a.toml", two)])
                .map_err(|e| TestCaseError::fail(e.to_string()))?
        };
        for (c, k, j) in questions() {
            prop_assert_eq!(ids(&a, c, k, j), ids(&b, c, k, j), "{} {} {}", c, k, j);
            let dated = |p: &Policies| {
                p.resolve_on(c, k, j, request_date, exit_date).map(|r| r.id.clone())
            };
            prop_assert_eq!(dated(&a), dated(&b), "{} {} {} on {}", c, k, j, request_date);
        }
    }

    /// The resolved rule covers the category and applies to the request; no applicable
    /// rule covering the category is more specific; among equally specific ones none keeps
    /// data longer (retain > anonymize > the rest, longer periods first). No rule is
    /// returned exactly when no applicable rule covers the category: there is no default.
    #[test]
    fn the_most_specific_then_longest_keeping_rule_wins(rs in rules(any_action().boxed())) {
        let p = policies_of(&rs, Vec::new());
        for (c, k, j) in questions() {
            let applicable: Vec<&Rule> = p
                .rules
                .iter()
                .filter(|r| r.applies_to(k, j) && r.specificity(c).is_some())
                .collect();
            match p.resolve(c, k, j) {
                None => prop_assert!(applicable.is_empty(), "{c} {k} {j}: none, but {applicable:?}"),
                Some(won) => {
                    prop_assert!(won.applies_to(k, j));
                    let s = won.specificity(c);
                    prop_assert!(s.is_some(), "{} does not cover {}", won.id, c);
                    for r in &applicable {
                        prop_assert!(r.specificity(c) <= s, "{c}: {} is more specific than {}", r.id, won.id);
                        if r.specificity(c) == s {
                            prop_assert!(
                                r.keep_rank() <= won.keep_rank(),
                                "{c}: {} keeps longer than {}", r.id, won.id
                            );
                        }
                    }
                }
            }
        }
    }

    /// Resolution for a request's dates differs from the date-free one only between
    /// equally specific retain rules: the same specificity and the same kind of action,
    /// and the very same rule whenever the date-free winner is not a retain rule.
    #[test]
    fn dated_resolution_only_reorders_retentions(
        rs in rules(any_action().boxed()),
        request_date in date_in((2000, 1, 1), (2100, 12, 31)),
        exit_date in proptest::option::of(date_in((2000, 1, 1), (2100, 12, 31))),
    ) {
        let p = policies_of(&rs, Vec::new());
        for (c, k, j) in questions() {
            let plain = p.resolve(c, k, j);
            let dated = p.resolve_on(c, k, j, request_date, exit_date);
            match (plain, dated) {
                (None, None) => {}
                (Some(a), Some(b)) => {
                    prop_assert_eq!(a.specificity(c), b.specificity(c));
                    prop_assert_eq!(a.keep_rank().0, b.keep_rank().0);
                    if a.action != Action::Retain {
                        prop_assert_eq!(&a.id, &b.id);
                    }
                }
                (a, b) => prop_assert!(false, "{c} {k} {j}: {a:?} vs {b:?}"),
            }
        }
    }

    /// A rule naming a category exactly beats any rule that reaches it only through a
    /// parent, whatever the actions; and a category that no rule names inherits its
    /// parent's rule.
    #[test]
    fn children_inherit_unless_named(rs in rules(any_action().boxed())) {
        let p = policies_of(&rs, Vec::new());
        for (c, k, j) in questions() {
            let named = p
                .rules
                .iter()
                .any(|r| r.applies_to(k, j) && r.categories.iter().any(|x| x == c));
            let got = p.resolve(c, k, j);
            if named {
                let won = got.map(|r| r.categories.iter().any(|x| x == c));
                prop_assert_eq!(won, Some(true), "{} {} {}: the exact rule lost", c, k, j);
            } else if let Some(par) = parent(c) {
                prop_assert_eq!(
                    got.map(|r| r.id.clone()),
                    ids(&p, par, k, j),
                    "{} {} {}: not inherited from {}", c, k, j, par
                );
            } else {
                prop_assert!(got.is_none(), "{c}: a top-level category no rule names resolved");
            }
        }
    }

    /// Categories are dotted paths: a rule's category covers a key when it is that key or
    /// one of its ancestors by whole segments, never by a mere string prefix
    /// ("user.contact" does not cover "user.contactless").
    #[test]
    fn coverage_goes_by_whole_segments(
        a in proptest::collection::vec("[a-c]{1,2}", 1..=3),
        b in proptest::collection::vec("[a-c]{1,2}", 1..=4),
    ) {
        let pa = a.join(".");
        let pb = b.join(".");
        let by_segments = b.len() >= a.len() && b[..a.len()] == a[..];
        prop_assert_eq!(quietus::policy::rules::covers(&pa, &pb), by_segments, "{} {}", pa, pb);
    }

    /// A category that is neither in the fideslang taxonomy nor declared is an error
    /// wherever it is used, in a rule or in a data map, and the error names it.
    #[test]
    fn an_unknown_category_is_an_error(
        // No fideslang or declared key has a digit: these are all unknown, and well-formed.
        key in "(user|system|business)(\\.[a-z]{1,6}){0,2}\\.[a-z]{1,6}[0-9]",
        in_map in any::<bool>(),
    ) {
        prop_assert!(!is_known(&key), "the generator made a known key {}", key);
        let mut text = head();
        text.push_str(&render_rule("base", &erase_everything().1));
        let mut files = Vec::new();
        if in_map {
            files.push(file("systems/s.toml", system_toml(&[key.as_str()])));
        } else {
            text.push_str(&format!(
                "[[rule]]\nid = \"bad\"\ncategories = [\"{key}\"]\naction = \"erase\"\n"
            ));
        }
        files.push(file("retention.toml", text));
        match Policies::from_files(files) {
            Ok(_) => prop_assert!(false, "{key} was accepted"),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains(&format!("unknown category \"{key}\"")), "{msg}");
            }
        }
    }
}

/// A rule erasing every category of `CATS` for erasures and exits, so that any data map
/// of them validates.
fn erase_everything() -> (String, RuleSpec) {
    (
        "base".to_owned(),
        RuleSpec {
            cats: vec!["user", "business"],
            kinds: None,
            js: None,
            action: ActionSpec::Erase,
        },
    )
}

/// Whether `key` is in the fideslang taxonomy or `DECLARED`.
fn is_known(key: &str) -> bool {
    // The loader is the authority: a rule naming the key either validates or not.
    let mut text = head();
    text.push_str(&format!(
        "[[rule]]\nid = \"probe\"\ncategories = [\"{key}\"]\naction = \"erase\"\n"
    ));
    Policies::from_files(vec![file("retention.toml", text)]).is_ok()
}

/// A data map of one system with one table `t`, columns `c0`, `c1`, ... of the given
/// categories.
fn system_toml(cats: &[&str]) -> String {
    let cols: Vec<String> = cats
        .iter()
        .enumerate()
        .map(|(i, c)| format!("c{i} = \"{c}\""))
        .collect();
    format!(
        "name = \"s\"\ndriver = \"sqlite\"\nurl = \"sqlite://s.db\"\n\n[[table]]\nname = \"t\"\n\
         key = \"id\"\nidentity = {{ email = \"email\" }}\ncolumns = {{ {} }}\n",
        cols.join(", ")
    )
}

// ---------------------------------------------------------------------------------------
// Plans: retention and erasure
// ---------------------------------------------------------------------------------------

fn date_in(from: (i32, u32, u32), to: (i32, u32, u32)) -> impl Strategy<Value = NaiveDate> {
    let a = NaiveDate::from_ymd_opt(from.0, from.1, from.2).unwrap();
    let b = NaiveDate::from_ymd_opt(to.0, to.1, to.2).unwrap();
    let span = u64::try_from((b - a).num_days()).unwrap();
    (0..=span).prop_map(move |n| a + Days::new(n))
}

fn survey(rows: u64) -> Vec<SystemSurvey> {
    vec![SystemSurvey {
        system: "s".into(),
        tables: BTreeMap::from([(
            "t".to_owned(),
            TableCounts {
                subject_rows: rows,
                owned_rows: 0,
            },
        )]),
        ..SystemSurvey::default()
    }]
}

fn make_plan(
    p: &Policies,
    kind: RequestKind,
    j: Jurisdiction,
    request_date: NaiveDate,
    exit_date: Option<NaiveDate>,
) -> plan::Plan {
    let input = PlanInput {
        request_id: "q-1".into(),
        kind,
        jurisdiction: j,
        request_date,
        exit_date,
        has_successor: false,
        wants_copy: false,
    };
    let now = Utc.from_utc_datetime(&request_date.and_hms_opt(12, 0, 0).unwrap());
    plan::make(&input, p, &survey(3), now)
}

/// The policies of `rs` (over a base rule that covers everything, so the data map of one
/// table with columns of `cols` validates), the exit date (exits only: `exit_offset`
/// days from the request), and the plan made of them.
fn planned(
    rs: Vec<(String, RuleSpec)>,
    cols: &[&str],
    kind: RequestKind,
    j: Jurisdiction,
    request_date: NaiveDate,
    exit_offset: i64,
) -> (Policies, Option<NaiveDate>, plan::Plan) {
    let mut all = vec![erase_everything()];
    all.extend(rs);
    let p = policies_of(&all, vec![file("systems/s.toml", system_toml(cols))]);
    let exit_date = (kind == RequestKind::Exit)
        .then(|| request_date.checked_add_signed(chrono::TimeDelta::days(exit_offset)))
        .flatten();
    let plan = make_plan(&p, kind, j, request_date, exit_date);
    (p, exit_date, plan)
}

/// The day a retain rule's period ends for a request, if the request has its start date.
fn retention_end(r: &Rule, request: NaiveDate, exit: Option<NaiveDate>) -> Option<NaiveDate> {
    let start = r.from.as_ref()?.resolve(request, exit)?;
    r.period?.add_calendar(start)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// A row with a column under a retain rule is never planned for erasure or
    /// anonymisation: it is planned as one retain entry, due on the latest end of the
    /// retentions of its columns, followed by that rule's `then`. A row with no retained
    /// column is erased or anonymised at once, on the request's immediate date. A retain
    /// rule whose start date the request lacks blocks the plan instead.
    #[test]
    fn a_retained_row_is_not_erased_before_its_retention_ends(
        rs in rules(data_action().boxed()),
        cols in proptest::collection::vec(proptest::sample::select(CATS), 1..=3),
        kind in prop_oneof![Just(RequestKind::Erasure), Just(RequestKind::Exit)],
        j in proptest::sample::select(JS.to_vec()),
        request_date in date_in((2000, 1, 1), (2100, 12, 31)),
        exit_offset in -400i64..=400,
    ) {
        let (p, exit_date, plan) = planned(rs, &cols, kind, j, request_date, exit_offset);
        let immediate = exit_date.map_or(request_date, |e| e.max(request_date));

        let resolved: Vec<&Rule> = cols
            .iter()
            .map(|c| p.resolve_on(c, kind, j, request_date, exit_date).unwrap())
            .collect();
        let retains: Vec<&Rule> = resolved.iter().copied().filter(|r| r.action == Action::Retain).collect();
        let ends: Vec<Option<NaiveDate>> = retains
            .iter()
            .map(|r| retention_end(r, request_date, exit_date))
            .collect();

        if ends.iter().any(Option::is_none) {
            prop_assert!(plan.is_blocked(), "a retention without its start date did not block: {plan:?}");
            prop_assert!(plan.entries.is_empty(), "{:?}", plan.entries);
        } else if let Some(latest) = ends.iter().flatten().max() {
            prop_assert!(!plan.is_blocked(), "{:?}", plan.blocked);
            prop_assert_eq!(plan.entries.len(), 1, "{:?}", plan.entries);
            let e = &plan.entries[0];
            prop_assert_eq!(e.action, Action::Retain);
            prop_assert_eq!(e.due, *latest);
            prop_assert_eq!(e.columns.len(), cols.len());
            let rule = p.rule(&e.rule).unwrap();
            prop_assert_eq!(retention_end(rule, request_date, exit_date), Some(*latest));
            prop_assert_eq!(e.then, rule.then);
        } else {
            prop_assert!(!plan.is_blocked(), "{:?}", plan.blocked);
            prop_assert_eq!(plan.entries.len(), 1, "{:?}", plan.entries);
            let e = &plan.entries[0];
            let want = if resolved.iter().any(|r| r.action == Action::Anonymize) {
                Action::Anonymize
            } else {
                Action::Erase
            };
            prop_assert_eq!(e.action, want);
            prop_assert_eq!(e.due, immediate);
        }
    }

    /// Between equally specific retain rules the one that keeps data longer wins, by the
    /// request's actual dates: a row is retained at least until the end of every retain
    /// rule that is among the most specific for one of its columns (or the plan blocks),
    /// never erased when one of them still holds.
    #[test]
    fn a_row_is_kept_until_every_most_specific_retention_ends(
        rs in rules(data_action().boxed()),
        cols in proptest::collection::vec(proptest::sample::select(CATS), 1..=3),
        kind in prop_oneof![Just(RequestKind::Erasure), Just(RequestKind::Exit)],
        j in proptest::sample::select(JS.to_vec()),
        request_date in date_in((2000, 1, 1), (2100, 12, 31)),
        exit_offset in -400i64..=400,
    ) {
        let (p, exit_date, plan) = planned(rs, &cols, kind, j, request_date, exit_offset);
        if plan.is_blocked() {
            prop_assert!(plan.entries.is_empty(), "{:?}", plan.entries);
            return Ok(());
        }
        for c in &cols {
            let applicable: Vec<&Rule> = p.rules.iter().filter(|r| r.applies_to(kind, j)).collect();
            let best = applicable.iter().filter_map(|r| r.specificity(c)).max();
            for r in applicable.iter().filter(|r| r.action == Action::Retain && r.specificity(c) == best) {
                // Every end is known here: an unknown one blocks (checked above).
                let end = retention_end(r, request_date, exit_date);
                let kept = plan.entries.iter().find(|e| e.action == Action::Retain).map(|e| e.due);
                prop_assert!(
                    kept.is_some() && kept >= end,
                    "{c}: rule {} keeps until {end:?}, the plan keeps until {kept:?} ({:?})",
                    r.id, plan.entries
                );
            }
        }
    }

    /// A mapped category that no rule covers for the request blocks the plan and nothing
    /// is planned for that table: nothing is erased or kept by default.
    #[test]
    fn an_uncovered_category_blocks_the_plan(
        cols in proptest::collection::vec(proptest::sample::select(CATS), 1..=3),
        drop_idx in any::<proptest::sample::Index>(),
        kind in prop_oneof![Just(RequestKind::Erasure), Just(RequestKind::Exit)],
        j in proptest::sample::select(JS.to_vec()),
        request_date in date_in((2000, 1, 1), (2100, 12, 31)),
    ) {
        // One erase rule per top-level category; the data map validates with both.
        let rs = vec![
            ("u".to_owned(), RuleSpec { cats: vec!["user"], kinds: None, js: None, action: ActionSpec::Erase }),
            ("b".to_owned(), RuleSpec { cats: vec!["business"], kinds: None, js: None, action: ActionSpec::Erase }),
        ];
        let mut p = policies_of(&rs, vec![file("systems/s.toml", system_toml(&cols))]);
        // Then the rule covering one mapped column goes (as if the policy had changed).
        let victim = cols[drop_idx.index(cols.len())];
        p.rules.retain(|r| !r.categories.iter().any(|c| quietus::policy::rules::covers(c, victim)));
        let exit = (kind == RequestKind::Exit).then_some(request_date);
        let plan = make_plan(&p, kind, j, request_date, exit);
        prop_assert!(plan.is_blocked());
        prop_assert!(
            plan.blocked.iter().any(|b| b.contains(victim) && b.contains("not covered")),
            "{:?}", plan.blocked
        );
        prop_assert!(plan.entries.is_empty(), "{:?}", plan.entries);
    }
}

// ---------------------------------------------------------------------------------------
// Deadlines and working days
// ---------------------------------------------------------------------------------------

/// A deadline error as a failed case (with its message).
fn fail(e: quietus::Error) -> TestCaseError {
    TestCaseError::fail(e.message)
}

fn cn() -> HolidayCalendar {
    HolidayCalendar::builtin().unwrap()
}

fn any_date() -> impl Strategy<Value = NaiveDate> {
    date_in((1990, 1, 1), (2100, 12, 31))
}

/// Mostly around the covered year 2026, where the holidays are.
fn near_2026() -> impl Strategy<Value = NaiveDate> {
    prop_oneof![
        3 => date_in((2025, 11, 1), (2027, 2, 28)),
        1 => any_date(),
    ]
}

/// A calendar of random holidays and adjusted working days in 2026 (and a spill into
/// 2027), or the built-in one.
fn calendar() -> impl Strategy<Value = HolidayCalendar> {
    let random = (
        proptest::collection::vec((0u64..380, 0u64..10), 0..8),
        proptest::collection::vec(0u64..380, 0..8),
    )
        .prop_map(|(offs, works)| {
            let base = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
            let mut off = BTreeSet::new();
            let mut ranges = Vec::new();
            for (a, len) in offs {
                let first = base + Days::new(a);
                let last = first + Days::new(len);
                ranges.push(format!("[\"{first}\", \"{last}\"]"));
                let mut d = first;
                while d <= last {
                    off.insert(d);
                    d = d.succ_opt().unwrap();
                }
            }
            let work: Vec<String> = works
                .into_iter()
                .map(|w| base + Days::new(w))
                .filter(|d| matches!(d.weekday(), Weekday::Sat | Weekday::Sun) && !off.contains(d))
                .map(|d| format!("\"{d}\""))
                .collect();
            let mut text =
                String::from("region = \"T\"\n[[year]]\nyear = 2026\nsource = \"generated\"\n");
            text.push_str(&format!(
                "[[year.holiday]]\nname = \"H\"\noff = [{}]\nwork = [{}]\n",
                ranges.join(", "),
                work.join(", ")
            ));
            HolidayCalendar::parse(&text, "generated.toml").unwrap()
        });
    prop_oneof![1 => Just(cn()), 2 => random]
}

/// The days of `(start, end]`, in order. (Not `iter_days`: it never yields the last
/// supported date.)
fn days_after(start: NaiveDate, end: NaiveDate) -> impl Iterator<Item = NaiveDate> {
    std::iter::successors(start.succ_opt(), |d| d.succ_opt()).take_while(move |d| *d <= end)
}

/// Working days in `(start, end]` on `cal`.
fn working_days_between(cal: &HolidayCalendar, start: NaiveDate, end: NaiveDate) -> u32 {
    days_after(start, end)
        .filter(|d| cal.is_working_day(*d))
        .count() as u32
}

fn any_period() -> impl Strategy<Value = Period> {
    prop_oneof![
        (1u32..=400).prop_map(|n| Period::new(n, Unit::Days)),
        (1u32..=60).prop_map(|n| Period::new(n, Unit::WorkingDays)),
        (1u32..=60).prop_map(|n| Period::new(n, Unit::Weeks)),
        (1u32..=24).prop_map(|n| Period::new(n, Unit::Months)),
        (1u32..=5).prop_map(|n| Period::new(n, Unit::Years)),
    ]
}

fn last_day_of_month(year: i32, month: u32) -> u32 {
    let first_next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    };
    first_next.unwrap().pred_opt().unwrap().day()
}

/// `start` + `n` months, written out: same day of the month, or that month's last day.
fn months_later(start: NaiveDate, n: u32) -> NaiveDate {
    let m0 = start.year() * 12 + start.month0() as i32 + n as i32;
    let (y, m) = (m0.div_euclid(12), m0.rem_euclid(12) as u32 + 1);
    NaiveDate::from_ymd_opt(y, m, start.day().min(last_day_of_month(y, m))).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// The n-th working day after a date is a working day of the calendar, exactly n
    /// working days (holidays and weekends skipped, adjusted weekend working days
    /// counted) lie after the start up to it, and 0 working days is the start itself.
    #[test]
    fn working_days_skip_holidays_and_weekends(
        cal in calendar(),
        start in near_2026(),
        n in 0u32..=60,
    ) {
        let (end, _) = cal.add_working_days(start, n).unwrap();
        prop_assert!(end >= start);
        prop_assert_eq!(working_days_between(&cal, start, end), n);
        if n == 0 {
            prop_assert_eq!(end, start);
        } else {
            prop_assert!(cal.is_working_day(end), "{end} is not a working day");
        }
    }

    /// Adding working days is monotone: a later start, or more days, never gives an
    /// earlier end; one more working day always gives a strictly later end.
    #[test]
    fn working_days_are_monotone(
        cal in calendar(),
        a in near_2026(),
        gap in 0u64..=60,
        n in 0u32..=40,
        more in 0u32..=20,
    ) {
        let b = a + Days::new(gap);
        let (ea, _) = cal.add_working_days(a, n).unwrap();
        let (eb, _) = cal.add_working_days(b, n).unwrap();
        prop_assert!(ea <= eb, "{a}+{n} = {ea}, {b}+{n} = {eb}");
        let (em, _) = cal.add_working_days(a, n + more).unwrap();
        prop_assert!(ea <= em);
        let (e1, _) = cal.add_working_days(a, n + 1).unwrap();
        prop_assert!(ea < e1);
    }

    /// Every year touched that the calendar does not cover is named in a warning, and only
    /// those: a missing year is counted by weekends and said so, never guessed silently.
    #[test]
    fn uncovered_years_are_warned_about(
        cal in calendar(),
        start in near_2026(),
        n in 1u32..=60,
    ) {
        let (end, warnings) = cal.add_working_days(start, n).unwrap();
        let touched: BTreeSet<i32> = days_after(start, end)
            .map(|d| d.year())
            .filter(|y| !cal.covers(*y))
            .collect();
        let want: Vec<String> = touched.into_iter().map(HolidayCalendar::missing_year_warning).collect();
        prop_assert_eq!(warnings, want);
    }

    /// A first deadline is never before the day the clock started, and never on it.
    /// Calendar periods are added by calendar arithmetic; working days on the calendar.
    /// Under PIPL it is never later than 30 calendar days after the start, and when it is
    /// cut short the warning says so; under GDPR the period is applied as given.
    #[test]
    fn first_deadlines_follow_the_period(
        j in proptest::sample::select(JS.to_vec()),
        start in near_2026(),
        period in any_period(),
        cal in calendar(),
    ) {
        let dl = deadline::initial(j, start, period, &cal).map_err(fail)?;
        prop_assert_eq!(dl.start, start);
        prop_assert!(dl.due > start, "{start} + {period} = {}", dl.due);
        let plain = match period.unit {
            Unit::WorkingDays => cal.add_working_days(start, period.count).unwrap().0,
            Unit::Days | Unit::Weeks | Unit::Months | Unit::Years => period.add_calendar(start).unwrap(),
        };
        let cap = start + Days::new(PIPL_CAP_DAYS);
        let capped_warning = dl.warnings.iter().any(|w| w.contains("capped at"));
        match j {
            Jurisdiction::Gdpr => {
                prop_assert_eq!(dl.due, plain);
                prop_assert!(!capped_warning);
            }
            Jurisdiction::Pipl => {
                prop_assert_eq!(dl.due, plain.min(cap));
                prop_assert_eq!(capped_warning, plain > cap, "{:?}", dl.warnings);
            }
        }
        if period.unit == Unit::WorkingDays && dl.due == plain {
            prop_assert_eq!(working_days_between(&cal, start, dl.due), period.count);
        }
    }

    /// GDPR's one month is calendar-month arithmetic: the same day of the next month, or
    /// that month's last day when it is shorter; n months likewise.
    #[test]
    fn gdpr_months_are_calendar_months(start in any_date(), n in 1u32..=24) {
        let dl = deadline::initial(Jurisdiction::Gdpr, start, Period::new(n, Unit::Months), &cn())
            .map_err(fail)?;
        prop_assert_eq!(dl.due, months_later(start, n));
        let next = months_later(start, 1);
        prop_assert!(next.day() == start.day() || next.day() == last_day_of_month(next.year(), next.month()));
    }

    /// PIPL's 15 working days: uncapped, exactly 15 working days of the calendar after the
    /// start; always within 30 calendar days; a later start never gives an earlier due date.
    #[test]
    fn pipl_fifteen_working_days(
        a in near_2026(),
        gap in 0u64..=40,
        cal in calendar(),
    ) {
        let p15 = Period::new(15, Unit::WorkingDays);
        let b = a + Days::new(gap);
        let da = deadline::initial(Jurisdiction::Pipl, a, p15, &cal).map_err(fail)?;
        let db = deadline::initial(Jurisdiction::Pipl, b, p15, &cal).map_err(fail)?;
        prop_assert!(da.due <= db.due, "{a}: {}, {b}: {}", da.due, db.due);
        prop_assert!(da.due <= a + Days::new(PIPL_CAP_DAYS));
        if !da.warnings.iter().any(|w| w.contains("capped at")) {
            prop_assert_eq!(working_days_between(&cal, a, da.due), 15);
        }
    }

    /// A first deadline is monotone in the start date, for every period and jurisdiction.
    #[test]
    fn first_deadlines_are_monotone_in_the_start(
        j in proptest::sample::select(JS.to_vec()),
        a in near_2026(),
        gap in 0u64..=90,
        period in any_period(),
        cal in calendar(),
    ) {
        let b = a + Days::new(gap);
        let da = deadline::initial(j, a, period, &cal).map_err(fail)?;
        let db = deadline::initial(j, b, period, &cal).map_err(fail)?;
        prop_assert!(da.due <= db.due, "{a}: {}, {b}: {}", da.due, db.due);
    }

    /// An extension, when granted, moves the deadline later by exactly the stated period
    /// (from the first due date), never earlier and never to the same day; it stays within
    /// two further months under GDPR and within 30 days of the start under PIPL. It is
    /// refused, with a deadline error, once extended already or after the first due date.
    #[test]
    fn extensions_move_later_by_the_period_within_the_limits(
        j in proptest::sample::select(JS.to_vec()),
        start in near_2026(),
        first in any_period(),
        by in any_period(),
        already in proptest::bool::weighted(0.2),
        today_offset in -40i64..=10,
        cal in calendar(),
    ) {
        let original = deadline::initial(j, start, first, &cal).map_err(fail)?;
        let today = original.due.checked_add_signed(chrono::TimeDelta::days(today_offset)).unwrap();
        let got = deadline::extend(j, start, original.due, already, by, today, &cal);
        let moved = match by.unit {
            Unit::WorkingDays => cal.add_working_days(original.due, by.count).unwrap().0,
            Unit::Days | Unit::Weeks | Unit::Months | Unit::Years => by.add_calendar(original.due).unwrap(),
        };
        let limit = match j {
            Jurisdiction::Gdpr => original.due.checked_add_months(Months::new(2)).unwrap(),
            Jurisdiction::Pipl => start + Days::new(PIPL_CAP_DAYS),
        };
        match got {
            Ok(dl) => {
                prop_assert!(!already && today <= original.due);
                prop_assert_eq!(dl.start, start);
                prop_assert_eq!(dl.due, moved);
                prop_assert!(dl.due > original.due);
                prop_assert!(dl.due <= limit);
            }
            Err(e) => {
                prop_assert_eq!(e.code, Code::Deadline);
                prop_assert!(already || today > original.due || moved > limit, "refused: {}", e.message);
            }
        }
    }

    /// The local date of an instant is monotone in the instant and at most a day away
    /// from its UTC date, in any of the time zones a policy is likely to name.
    #[test]
    fn local_dates_are_monotone_and_near_utc(
        secs in 946_684_800i64..=4_102_444_800,
        later in 0i64..=200_000,
        tz in proptest::sample::select(vec![
            chrono_tz::UTC,
            chrono_tz::Asia::Shanghai,
            chrono_tz::Europe::Berlin,
            chrono_tz::America::New_York,
            chrono_tz::Pacific::Kiritimati,
            chrono_tz::Pacific::Pago_Pago,
        ]),
    ) {
        let t = Utc.timestamp_opt(secs, 0).unwrap();
        let u = Utc.timestamp_opt(secs + later, 0).unwrap();
        let (dt, du) = (deadline::local_date(t, tz), deadline::local_date(u, tz));
        prop_assert!(dt <= du);
        prop_assert!((dt - t.date_naive()).num_days().abs() <= 1);
    }

    /// Near the end of the supported date range, computing a deadline never panics: it
    /// gives a correct deadline or a clear deadline error, never a wrong date.
    #[test]
    fn deadlines_at_the_end_of_the_date_range_are_correct_or_an_error(
        j in proptest::sample::select(JS.to_vec()),
        back in 0u64..=120,
        period in any_period(),
    ) {
        let cal = cn();
        let start = NaiveDate::MAX - Days::new(back);
        match deadline::initial(j, start, period, &cal) {
            Ok(dl) => {
                prop_assert!(dl.due > start);
                let counted = working_days_between(&cal, start, dl.due);
                match (j, period.unit) {
                    (Jurisdiction::Gdpr, Unit::WorkingDays) => prop_assert_eq!(counted, period.count),
                    (Jurisdiction::Gdpr, _) => prop_assert_eq!(Some(dl.due), period.add_calendar(start)),
                    // PIPL: the period, or 30 days when the period is longer.
                    (Jurisdiction::Pipl, _) => {
                        let cap = start + Days::new(PIPL_CAP_DAYS);
                        let plain = match period.unit {
                            Unit::WorkingDays => (counted == period.count).then_some(dl.due),
                            Unit::Days | Unit::Weeks | Unit::Months | Unit::Years => period.add_calendar(start),
                        };
                        match plain {
                            Some(p) if p <= cap => prop_assert_eq!(dl.due, p),
                            Some(_) | None => prop_assert_eq!(dl.due, cap),
                        }
                    }
                }
            }
            Err(e) => prop_assert_eq!(e.code, Code::Deadline, "{}", e.message),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Defects the properties found, as plain tests of the minimal case
// ---------------------------------------------------------------------------------------

/// Found by `deadlines_at_the_end_of_the_date_range_are_correct_or_an_error`: a GDPR
/// period in working days that runs past the last supported date was an `Ok` deadline on
/// the last date, with fewer working days than the period (here: due on the start day).
#[test]
fn working_days_past_the_last_date_are_an_error_not_a_short_deadline() {
    let r = deadline::initial(
        Jurisdiction::Gdpr,
        NaiveDate::MAX,
        Period::new(1, Unit::WorkingDays),
        &cn(),
    );
    let e = r.expect_err("a deadline past the last supported date");
    assert_eq!(e.code, Code::Deadline);
    assert!(e.message.contains("supported"), "{}", e.message);
}

/// Found by `a_row_is_kept_until_every_most_specific_retention_ends`: two equally
/// specific retain rules of the same length but different starts tied on the rough
/// length, and the first id won, though the other keeps the data longer (here until the
/// end of the next year rather than one year from the request).
#[test]
fn the_retention_that_ends_later_wins_a_tie() {
    let text = format!(
        "{}{}{}{}",
        head(),
        "[[rule]]\nid = \"base\"\ncategories = [\"user\", \"business\"]\naction = \"erase\"\n\n",
        "[[rule]]\nid = \"a\"\ncategories = [\"user.employment\"]\naction = \"retain\"\n\
         for = \"1 year\"\nfrom = \"request_date\"\nthen = \"erase\"\n\n",
        "[[rule]]\nid = \"b\"\ncategories = [\"user.employment\"]\naction = \"retain\"\n\
         for = \"1 year\"\nfrom = \"end_of_year(request_date)\"\nthen = \"erase\"\n\n",
    );
    let p = Policies::from_files(vec![
        file("retention.toml", text),
        file("systems/s.toml", system_toml(&["user.employment"])),
    ])
    .unwrap();
    let d = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
    let plan = make_plan(&p, RequestKind::Erasure, Jurisdiction::Gdpr, d, None);
    assert!(!plan.is_blocked(), "{:?}", plan.blocked);
    assert_eq!(plan.entries.len(), 1, "{:?}", plan.entries);
    assert_eq!(plan.entries[0].action, Action::Retain);
    assert_eq!(plan.entries[0].rule, "b");
    assert_eq!(
        plan.entries[0].due,
        NaiveDate::from_ymd_opt(2027, 12, 31).unwrap()
    );
}
