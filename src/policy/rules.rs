//! Retention files: deadlines, declared categories and rules.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use super::{Jurisdiction, Period, RequestKind};

/// One `policies/*.toml` file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    pub deadlines: Option<DeadlinePolicy>,
    #[serde(default, rename = "category")]
    pub categories: Vec<DeclaredCategory>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

/// When the response clock starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockStart {
    Receipt,
    Verification,
}

/// `[deadlines]`: response deadlines per jurisdiction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadlinePolicy {
    #[serde(rename = "GDPR")]
    pub gdpr: Period,
    #[serde(rename = "PIPL")]
    pub pipl: Period,
    pub default: Jurisdiction,
    #[serde(with = "tz_serde")]
    pub timezone: chrono_tz::Tz,
    #[serde(default = "default_clock_start")]
    pub clock_start: ClockStart,
}

fn default_clock_start() -> ClockStart {
    ClockStart::Receipt
}

impl DeadlinePolicy {
    pub fn period(&self, j: Jurisdiction) -> Period {
        match j {
            Jurisdiction::Gdpr => self.gdpr,
            Jurisdiction::Pipl => self.pipl,
        }
    }
}

mod tz_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tz: &chrono_tz::Tz, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(tz.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<chrono_tz::Tz, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom(format!("unknown time zone {s:?}")))
    }
}

/// `[[category]]`: a category key beyond the fideslang taxonomy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredCategory {
    pub key: String,
    #[serde(default)]
    pub description: String,
}

/// What a rule does to the data it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Erase,
    Anonymize,
    Retain,
    Reassign,
    Disable,
    Export,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Erase => "erase",
            Action::Anonymize => "anonymize",
            Action::Retain => "retain",
            Action::Reassign => "reassign",
            Action::Disable => "disable",
            Action::Export => "export",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What happens when a retention period ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowUp {
    Erase,
    Anonymize,
}

/// Where a retention period starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartRule {
    RequestDate,
    ExitDate,
    EndOfYear(Box<StartRule>),
}

impl StartRule {
    /// The start date for a request, or `None` when the request lacks the date
    /// (an erasure request has no exit date).
    pub fn resolve(
        &self,
        request_date: NaiveDate,
        exit_date: Option<NaiveDate>,
    ) -> Option<NaiveDate> {
        match self {
            StartRule::RequestDate => Some(request_date),
            StartRule::ExitDate => exit_date,
            StartRule::EndOfYear(inner) => {
                let d = inner.resolve(request_date, exit_date)?;
                NaiveDate::from_ymd_opt(d.year(), 12, 31)
            }
        }
    }
}

impl FromStr for StartRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s {
            "request_date" => Ok(StartRule::RequestDate),
            "exit_date" => Ok(StartRule::ExitDate),
            _ => {
                if let Some(inner) = s
                    .strip_prefix("end_of_year(")
                    .and_then(|r| r.strip_suffix(')'))
                {
                    Ok(StartRule::EndOfYear(Box::new(inner.parse()?)))
                } else {
                    Err(format!(
                        "unknown start rule {s:?}: expected request_date, exit_date, \
                         end_of_year(request_date) or end_of_year(exit_date)"
                    ))
                }
            }
        }
    }
}

impl fmt::Display for StartRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartRule::RequestDate => f.write_str("request_date"),
            StartRule::ExitDate => f.write_str("exit_date"),
            StartRule::EndOfYear(inner) => write!(f, "end_of_year({inner})"),
        }
    }
}

impl<'de> Deserialize<'de> for StartRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for StartRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `[[rule]]`: what happens to some categories, for some request kinds and jurisdictions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    pub categories: Vec<String>,
    #[serde(default)]
    pub kinds: Option<BTreeSet<RequestKind>>,
    #[serde(default)]
    pub jurisdictions: Option<BTreeSet<Jurisdiction>>,
    pub action: Action,
    #[serde(default, rename = "for")]
    pub period: Option<Period>,
    #[serde(default)]
    pub from: Option<StartRule>,
    #[serde(default)]
    pub then: Option<FollowUp>,
    #[serde(default)]
    pub basis: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

impl Rule {
    pub fn applies_to(&self, kind: RequestKind, j: Jurisdiction) -> bool {
        let kind_ok = match &self.kinds {
            Some(k) => k.contains(&kind),
            None => matches!(kind, RequestKind::Erasure | RequestKind::Exit),
        };
        let j_ok = self.jurisdictions.as_ref().is_none_or(|js| js.contains(&j));
        kind_ok && j_ok
    }

    /// How specific the rule is for `category`: the number of segments of its most
    /// specific category that is `category` or an ancestor of it; `None` when it does not
    /// cover `category`.
    pub fn specificity(&self, category: &str) -> Option<usize> {
        self.categories
            .iter()
            .filter(|c| covers(c, category))
            .map(|c| c.split('.').count())
            .max()
    }

    /// An ordering key for "keeps data longer": retain (longer first) > anonymize > the rest.
    pub fn keep_rank(&self) -> (u8, u64) {
        match self.action {
            Action::Retain => (3, self.period.map(|p| p.approx_days()).unwrap_or(0)),
            Action::Anonymize => (2, 0),
            Action::Erase => (0, 0),
            Action::Reassign | Action::Disable | Action::Export => (1, 0),
        }
    }

    /// The legal basis to show, or a plain statement that none was given.
    pub fn basis_text(&self) -> &str {
        self.basis.as_deref().unwrap_or("(no legal basis given)")
    }
}

/// Whether `parent` is `child` or one of its ancestors in the dotted taxonomy.
pub fn covers(parent: &str, child: &str) -> bool {
    child == parent
        || (child.len() > parent.len()
            && child.starts_with(parent)
            && child.as_bytes().get(parent.len()) == Some(&b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_prefixes_respect_segments() {
        assert!(covers("user.contact", "user.contact.email"));
        assert!(covers("user.contact", "user.contact"));
        assert!(!covers("user.contact", "user.contactless"));
        assert!(!covers("user.contact.email", "user.contact"));
    }

    #[test]
    fn start_rules_parse_and_resolve() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let r: StartRule = "end_of_year(exit_date)".parse().unwrap();
        assert_eq!(r.to_string(), "end_of_year(exit_date)");
        assert_eq!(
            r.resolve(d("2026-11-24"), Some(d("2027-03-01"))),
            Some(d("2027-12-31"))
        );
        assert_eq!(r.resolve(d("2026-11-24"), None), None);
        assert!("exit".parse::<StartRule>().is_err());
    }
}
