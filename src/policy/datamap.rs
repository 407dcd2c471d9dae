//! Data maps (`policies/systems/*.toml`): which systems, tables and columns hold which
//! categories of personal data, and how a subject's rows are found.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The kind of connector a system needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    Sqlite,
    Postgres,
    Mysql,
    /// No connector: a person confirms each task.
    Manual,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Sqlite => "sqlite",
            Driver::Postgres => "postgres",
            Driver::Mysql => "mysql",
            Driver::Manual => "manual",
        }
    }
}

/// A subject's identities, normalised, one value per kind.
pub type Identities = BTreeMap<IdentityKind, String>;

/// How a subject is known.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum IdentityKind {
    Email,
    Phone,
    EmployeeId,
    CustomerId,
}

impl IdentityKind {
    pub const ALL: [IdentityKind; 4] = [
        IdentityKind::Email,
        IdentityKind::Phone,
        IdentityKind::EmployeeId,
        IdentityKind::CustomerId,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Email => "email",
            IdentityKind::Phone => "phone",
            IdentityKind::EmployeeId => "employee_id",
            IdentityKind::CustomerId => "customer_id",
        }
    }
}

impl fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for IdentityKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IdentityKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown identity kind {s:?} (expected email, phone, employee_id or customer_id)")
            })
    }
}

/// One `policies/systems/*.toml` file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    pub name: String,
    pub driver: Driver,
    /// Connection URL; `${VAR}` and `${VAR:-default}` are expanded from the environment.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// For `driver = "manual"`: who confirms tasks.
    #[serde(default)]
    pub owner_email: Option<String>,
    #[serde(default, rename = "table")]
    pub tables: Vec<Table>,
}

impl System {
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// What erasing a row means for a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnErase {
    #[default]
    Delete,
    Anonymize,
}

/// `[[table]]` of a data map.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    pub name: String,
    pub key: String,
    #[serde(default)]
    pub identity: BTreeMap<IdentityKind, String>,
    /// column -> category
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    #[serde(default)]
    pub account: Option<Account>,
    #[serde(default)]
    pub owner: Option<Owner>,
    #[serde(default)]
    pub references: Vec<Reference>,
    #[serde(default)]
    pub on_erase: OnErase,
    /// column -> replacement value when anonymising (NULL when absent)
    #[serde(default)]
    pub anonymize: BTreeMap<String, String>,
    /// The retention sweep: rows whose `date` column is older than the rule's period are
    /// erased (or anonymised) with no ticket.
    #[serde(default)]
    pub sweep: Option<Sweep>,
}

/// `sweep = { date = "happened_at", rule = "business-communication" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// A date or timestamp column: the retention period counts from it.
    pub date: String,
    /// A `retain` rule: its `for` is the period, its `then` what happens after.
    pub rule: String,
}

/// `account = { ... }`: what disabling a login means.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// column -> value written when disabling
    pub set: BTreeMap<String, String>,
    /// a date column set to the exit date
    #[serde(default)]
    pub departed_at: Option<String>,
    #[serde(default = "default_account_category")]
    pub category: String,
}

fn default_account_category() -> String {
    "user.account".to_owned()
}

/// `owner = { ... }`: records an exit hands over to the successor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    pub column: String,
    /// `table.column` the owner column points at
    pub references: String,
    /// only rows whose column holds one of these values
    #[serde(default)]
    pub when: BTreeMap<String, Vec<String>>,
    #[serde(default = "default_owner_category")]
    pub category: String,
}

fn default_owner_category() -> String {
    "business.owner".to_owned()
}

/// `references = [{ column, to }]`: rows pointing at a subject's row are the subject's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    pub column: String,
    /// `table.column`
    pub to: String,
}

/// Split `table.column`.
pub fn split_target(s: &str) -> Option<(&str, &str)> {
    let (t, c) = s.split_once('.')?;
    (!t.is_empty() && !c.is_empty() && !c.contains('.')).then_some((t, c))
}

/// A plain SQL identifier: `[A-Za-z_][A-Za-z0-9_]*`, at most 63 characters. Nothing else
/// can reach a statement as a name.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 63
}

impl Table {
    /// Every column the data map names for this table.
    pub fn known_columns(&self) -> Vec<&str> {
        let mut cols: Vec<&str> = vec![self.key.as_str()];
        cols.extend(self.identity.values().map(String::as_str));
        cols.extend(self.columns.keys().map(String::as_str));
        if let Some(a) = &self.account {
            cols.extend(a.set.keys().map(String::as_str));
            cols.extend(a.departed_at.as_deref());
        }
        if let Some(o) = &self.owner {
            cols.push(&o.column);
            cols.extend(o.when.keys().map(String::as_str));
        }
        cols.extend(self.references.iter().map(|r| r.column.as_str()));
        cols.extend(self.anonymize.keys().map(String::as_str));
        cols.extend(self.sweep.iter().map(|s| s.date.as_str()));
        cols.sort_unstable();
        cols.dedup();
        cols
    }

    /// Whether `column` can be the target of a reference: the key or an identity column.
    pub fn is_referenceable(&self, column: &str) -> bool {
        self.key == column || self.identity.values().any(|c| c == column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_plain() {
        assert!(is_identifier("owner_id"));
        assert!(is_identifier("_x1"));
        assert!(!is_identifier("1x"));
        assert!(!is_identifier("a;drop table x"));
        assert!(!is_identifier("a\"b"));
        assert!(!is_identifier(""));
        assert!(!is_identifier(&"a".repeat(64)));
    }
}
