//! Policy files: retention rules and data maps; loading, validation and rule resolution.
//!
//! A policy folder holds retention files (`*.toml`) and data maps (`systems/*.toml`);
//! the format is documented in `README.md, "Policy files"`. Loading validates everything and
//! reports every problem at once, each with its file and, where there is one, line and
//! column. Nothing in quietus runs on a policy that did not validate.

pub mod datamap;
pub mod period;
pub mod rules;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use datamap::{Driver, Identities, IdentityKind, OnErase, System, Table};
pub use period::{Jurisdiction, Period, Unit};
pub use rules::{Action, ClockStart, DeadlinePolicy, FollowUp, Rule, StartRule};

use crate::error::{Code, Error};

/// The fideslang default taxonomy (fideslang 3.1.4, Apache-2.0), one key a line.
const FIDESLANG: &str = include_str!("fideslang-categories.txt");

/// The example policies shipped with quietus (the demo installs them).
pub const EXAMPLES: &[(&str, &str)] = &[
    (
        "retention.toml",
        include_str!("../../policies/retention.toml"),
    ),
    (
        "systems/crm.toml",
        include_str!("../../policies/systems/crm.toml"),
    ),
];

/// The kind of a request.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum RequestKind {
    Erasure,
    Exit,
    Access,
}

impl RequestKind {
    pub const ALL: [RequestKind; 3] =
        [RequestKind::Erasure, RequestKind::Exit, RequestKind::Access];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Erasure => "erasure",
            RequestKind::Exit => "exit",
            RequestKind::Access => "access",
        }
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for RequestKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RequestKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown request kind {s:?} (expected erasure, exit or access)"))
    }
}

/// One problem found in a policy folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message),
            (Some(l), None) => write!(f, "{}:{l}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem of a policy folder.
#[derive(Debug, Clone)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl From<Problems> for Error {
    #[track_caller]
    fn from(p: Problems) -> Self {
        let n = p.0.len();
        Error::new(
            Code::Policy,
            format!(
                "invalid policy ({n} problem{}):\n{p}",
                if n == 1 { "" } else { "s" }
            ),
        )
    }
}

/// A validated policy folder.
#[derive(Debug, Clone)]
pub struct Policies {
    pub deadlines: DeadlinePolicy,
    /// Declared (non-fideslang) categories: key -> description.
    pub declared: BTreeMap<String, String>,
    pub rules: Vec<Rule>,
    pub systems: Vec<System>,
    /// SHA-256 over the files' names and contents, hex.
    pub digest: String,
    /// The files read, relative to the folder.
    pub files: Vec<String>,
}

/// A policy source file: its name relative to the folder, and its text.
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

impl Policies {
    /// Read and validate a policy folder.
    pub fn load(dir: &Path) -> Result<Policies, Problems> {
        let files = read_dir(dir)?;
        Policies::from_files(files)
    }

    /// The example policies shipped with quietus.
    pub fn examples() -> Result<Policies, Problems> {
        Policies::from_files(
            EXAMPLES
                .iter()
                .map(|(n, t)| SourceFile {
                    name: (*n).to_owned(),
                    text: (*t).to_owned(),
                })
                .collect(),
        )
    }

    /// Parse and validate a set of files (names relative to the folder; data maps under
    /// `systems/`).
    pub fn from_files(mut files: Vec<SourceFile>) -> Result<Policies, Problems> {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let mut problems = Vec::new();
        let mut deadlines: Option<(DeadlinePolicy, String)> = None;
        let mut declared: BTreeMap<String, (String, String)> = BTreeMap::new();
        let mut rules: Vec<(Rule, String)> = Vec::new();
        let mut systems: Vec<(System, String)> = Vec::new();

        let mut digest = Sha256::new();
        for f in &files {
            digest.update((f.name.len() as u64).to_be_bytes());
            digest.update(f.name.as_bytes());
            digest.update((f.text.len() as u64).to_be_bytes());
            digest.update(f.text.as_bytes());
            if f.name.starts_with("systems/") {
                match toml::from_str::<System>(&f.text) {
                    Ok(s) => systems.push((s, f.name.clone())),
                    Err(e) => problems.push(toml_problem(&f.name, &f.text, &e)),
                }
            } else {
                match toml::from_str::<rules::RetentionFile>(&f.text) {
                    Ok(r) => {
                        if let Some(d) = r.deadlines {
                            if let Some((_, first)) = &deadlines {
                                problems.push(at(&f.name, &f.text, "[deadlines]", format!(
                                    "[deadlines] is declared again (first in {first}); declare it once"
                                )));
                            } else {
                                deadlines = Some((d, f.name.clone()));
                            }
                        }
                        for c in r.categories {
                            let needle = format!("\"{}\"", c.key);
                            if let Some((_, first)) = declared.get(&c.key) {
                                problems.push(at(
                                    &f.name,
                                    &f.text,
                                    &needle,
                                    format!(
                                        "category {} is declared twice (also in {first})",
                                        c.key
                                    ),
                                ));
                            } else {
                                declared.insert(c.key.clone(), (c.description, f.name.clone()));
                            }
                        }
                        rules.extend(r.rules.into_iter().map(|r| (r, f.name.clone())));
                    }
                    Err(e) => problems.push(toml_problem(&f.name, &f.text, &e)),
                }
            }
        }
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        let text_of = |name: &str| -> String {
            files
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.text.clone())
                .unwrap_or_default()
        };

        let Some((deadlines, _)) = deadlines else {
            return Err(Problems(vec![Problem {
                file: files
                    .first()
                    .map(|f| f.name.clone())
                    .unwrap_or_else(|| "(policy folder)".into()),
                line: None,
                column: None,
                message: if files.is_empty() {
                    "no policy files found (expected *.toml and systems/*.toml)".into()
                } else {
                    "no [deadlines] table in any retention file".into()
                },
            }]));
        };
        let known: BTreeSet<&str> = FIDESLANG
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .chain(declared.keys().map(String::as_str))
            .collect();

        // Declared categories must not shadow fideslang keys and must be well-formed.
        for (key, (_, file)) in &declared {
            if !is_category_key(key) {
                problems.push(at(
                    file,
                    &text_of(file),
                    &format!("\"{key}\""),
                    format!(
                        "category key {key:?} is not a dotted lower-case key like business.owner"
                    ),
                ));
            }
        }

        validate::rules(&rules, &known, &text_of, &mut problems);
        validate::systems(&systems, &known, &text_of, &mut problems);
        for (sys, file) in &systems {
            for t in &sys.tables {
                let Some(sw) = &t.sweep else { continue };
                let ok = policies_rule_is_retain(&rules, &sw.rule);
                if !ok {
                    problems.push(at(file, &text_of(file), &format!("\"{}\"", sw.rule), format!(
                        "{}.{}: sweep names rule {:?}, which is not a retain rule with `for` and `then`",
                        sys.name, t.name, sw.rule
                    )));
                }
            }
        }

        let policies = Policies {
            deadlines,
            declared: declared.into_iter().map(|(k, (d, _))| (k, d)).collect(),
            rules: rules.into_iter().map(|(r, _)| r).collect(),
            systems: systems.iter().map(|(s, _)| s.clone()).collect(),
            digest: hex::encode(digest.finalize()),
            files: files.iter().map(|f| f.name.clone()).collect(),
        };
        if problems.is_empty() {
            // Coverage: every mapped category needs a rule for every kind that reaches it.
            for (sys, file) in &systems {
                validate::coverage(&policies, sys, file, &text_of(file), &mut problems);
            }
        }
        if problems.is_empty() {
            Ok(policies)
        } else {
            Err(Problems(problems))
        }
    }

    /// The rule that governs `category` for a request: the most specific wins; between
    /// equally specific rules, the one that keeps data longer, by the rough length of its
    /// period (see [`Rule::keep_rank`]). Plans use [`Policies::resolve_on`], which counts
    /// retentions from the request's dates.
    pub fn resolve(&self, category: &str, kind: RequestKind, j: Jurisdiction) -> Option<&Rule> {
        self.pick(category, kind, j, |_| None)
    }

    /// The rule that governs `category` for a request with these dates: as
    /// [`Policies::resolve`], but between equally specific retain rules the one whose
    /// retention ends later for this request wins, by calendar arithmetic rather than the
    /// rough length (1 year from the request and 1 year from the end of its year are
    /// equally long, but the second keeps the data longer). A retain rule whose end
    /// cannot be computed (the request lacks its start date, or the end is out of range)
    /// wins over those whose end can: the plan then blocks rather than erase data that
    /// rule may still keep.
    pub fn resolve_on(
        &self,
        category: &str,
        kind: RequestKind,
        j: Jurisdiction,
        request_date: NaiveDate,
        exit_date: Option<NaiveDate>,
    ) -> Option<&Rule> {
        // A retain rule's end for this request; an unknown end sorts after every date.
        let end = |r: &Rule| -> Option<(bool, NaiveDate)> {
            if r.action != Action::Retain {
                return None;
            }
            let until = r
                .from
                .as_ref()
                .and_then(|f| f.resolve(request_date, exit_date))
                .and_then(|start| r.period.and_then(|p| p.add_calendar(start)));
            Some(match until {
                Some(d) => (false, d),
                None => (true, NaiveDate::MIN),
            })
        };
        self.pick(category, kind, j, end)
    }

    /// The one ranking of [`Policies::resolve`] and [`Policies::resolve_on`]: the most
    /// specific rule; then the stronger action; then the later retention end (`end`, where
    /// it is known); then the rough length of the period; then, deterministic between
    /// identical ranks, the first id in order.
    fn pick(
        &self,
        category: &str,
        kind: RequestKind,
        j: Jurisdiction,
        end: impl Fn(&Rule) -> Option<(bool, NaiveDate)>,
    ) -> Option<&Rule> {
        self.rules
            .iter()
            .filter(|r| r.applies_to(kind, j))
            .filter_map(|r| r.specificity(category).map(|s| (s, r)))
            .max_by(|(sa, a), (sb, b)| {
                sa.cmp(sb)
                    .then(a.keep_rank().0.cmp(&b.keep_rank().0))
                    .then(end(a).cmp(&end(b)))
                    .then(a.keep_rank().cmp(&b.keep_rank()))
                    .then(b.id.cmp(&a.id))
            })
            .map(|(_, r)| r)
    }

    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    pub fn system(&self, name: &str) -> Option<&System> {
        self.systems.iter().find(|s| s.name == name)
    }

    /// Whether an exit needs a successor: some rule hands records over.
    pub fn handover_required(&self) -> bool {
        self.systems
            .iter()
            .flat_map(|s| &s.tables)
            .any(|t| t.owner.is_some())
            && self.rules.iter().any(|r| r.action == Action::Reassign)
    }
}

fn policies_rule_is_retain(rules: &[(Rule, String)], id: &str) -> bool {
    rules.iter().any(|(r, _)| {
        r.id == id && r.action == Action::Retain && r.period.is_some() && r.then.is_some()
    })
}

fn is_category_key(k: &str) -> bool {
    !k.is_empty()
        && k.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

fn read_dir(dir: &Path) -> Result<Vec<SourceFile>, Problems> {
    let problem = |file: &Path, message: String| {
        Problems(vec![Problem {
            file: file.display().to_string(),
            line: None,
            column: None,
            message,
        }])
    };
    let mut out = Vec::new();
    for (sub, prefix) in [(dir.to_path_buf(), ""), (dir.join("systems"), "systems/")] {
        let entries = match std::fs::read_dir(&sub) {
            Ok(e) => e,
            Err(e) if prefix.is_empty() => {
                return Err(problem(dir, format!("cannot read the policy folder: {e}")));
            }
            Err(_) => continue, // no systems/ folder: no data maps
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        for p in paths {
            let text = crate::fsx::read_text_limited(&p, crate::fsx::limit::TEXT)
                .map_err(|e| problem(&p, format!("cannot read: {}", e.message)))?;
            let file_name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push(SourceFile {
                name: format!("{prefix}{file_name}"),
                text,
            });
        }
    }
    Ok(out)
}

/// Line and column (1-based) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map(|i| before.len() - i)
        .unwrap_or(before.len() + 1);
    (line, col)
}

fn toml_problem(file: &str, text: &str, e: &toml::de::Error) -> Problem {
    let (line, column) = match e.span() {
        Some(span) => {
            let (l, c) = line_col(text, span.start);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    Problem {
        file: file.to_owned(),
        line,
        column,
        message: e.message().trim().to_owned(),
    }
}

/// A problem located at the first occurrence of `needle` in the file (if any).
pub(super) fn at(file: &str, text: &str, needle: &str, message: String) -> Problem {
    let (line, column) = match text.find(needle) {
        Some(off) => {
            let (l, c) = line_col(text, off);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    Problem {
        file: file.to_owned(),
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn shipped_examples_validate() {
        let p = Policies::examples().map_err(|e| e.to_string()).unwrap();
        assert!(p.rules.iter().any(|r| r.id == "labour-contract"));
        assert_eq!(p.digest.len(), 64);
    }
}
