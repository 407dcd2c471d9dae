//! What a task is and what it comes to: the types and helpers that collecting, executing,
//! exporting, restoring and re-checking share (each of those files imports them from here;
//! none imports another's).

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::backup::TableManifest;
use crate::error::{Code, Error, Result};
use crate::plan::Entry;
use crate::policy::{Action, Table};
use crate::targets::sql::Column;

/// What a task carries out.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskBody {
    pub entries: Vec<Entry>,
    #[serde(default)]
    pub exit_date: Option<NaiveDate>,
    /// Follow-up tasks: the keys of the retained rows per table (captured by the apply
    /// task before anything changed, so they can be found after identities are erased).
    #[serde(default)]
    pub keys: BTreeMap<String, Vec<String>>,
    /// Apply tasks: table -> the follow-up task that will act on its retained rows.
    #[serde(default)]
    pub followups: BTreeMap<String, String>,
    /// Sweep tasks: rows whose sweep date is before this day.
    #[serde(default)]
    pub before: Option<NaiveDate>,
}

/// Where the rows of a part come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Subject,
    Owned,
    Keys(Vec<String>),
    /// Rows whose date column is before a day (the retention sweep).
    Before {
        column: String,
        sql_type: String,
        before: String,
    },
}

/// One table's share of a task.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub(crate) table: Table,
    pub(crate) action: Action,
    pub(crate) key: Column,
    /// Columns backed up (erase: all of them).
    pub(crate) columns: Vec<Column>,
    /// The values an update writes (empty for erase).
    pub(crate) set: Vec<(Column, Option<String>)>,
    pub(crate) source: Source,
}

/// What a finished task did, per table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableResult {
    pub table: String,
    pub action: crate::policy::Action,
    pub backed_up: u64,
    pub changed: u64,
    pub already_done: u64,
    /// The rows of this table in the backup and the Merkle root of their digests, taken
    /// by the read-back that verified the backup before anything changed (the receipt
    /// uses them; tasks finished before this was recorded have none, and their receipt
    /// reads the archive for them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<TableDigest>,
}

/// One table's share of a backup, as the receipt states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDigest {
    pub rows: u64,
    /// Hex.
    pub merkle_root: String,
}

/// The result of a task, stored with it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskResult {
    /// Messages to write with the task's completion (not stored in the result).
    #[serde(skip)]
    pub mails: Vec<crate::store::outbox::NewMail>,
    pub backup: Option<String>,
    pub tables: Vec<TableResult>,
    pub recheck: String,
    pub retained_keys: BTreeMap<String, usize>,
}

/// What running a task came to.
#[derive(Debug)]
pub enum Step {
    Done(TaskResult),
    /// Rows changed since their backup, or new ones appeared: back up again.
    Rebackup(String),
    /// The plan changed since approval: nothing ran, and the request went back to the
    /// DPO (or the task needs attention); recorded already. Why.
    Stopped(String),
    /// The task was no longer this worker's to run when it came to it (a sibling sent its
    /// request back to the DPO and cancelled it, or its lease was lost): nothing was
    /// begun, nothing is recorded. Why.
    Gone(String),
}

pub(crate) fn column(catalog: &[Column], table: &str, name: &str) -> Result<Column> {
    catalog
        .iter()
        .find(|c| c.name == name)
        .cloned()
        .ok_or_else(|| {
            Error::new(
                Code::Target,
                format!("{table}.{name}: the data map names a column the database does not have"),
            )
        })
}

/// The values a row has once an update is applied.
pub(crate) fn after_values(tm: &TableManifest, backed: &[Option<String>]) -> Vec<Option<String>> {
    tm.columns
        .iter()
        .zip(backed)
        .map(|(c, old)| match tm.set.get(&c.name) {
            Some(v) => v.clone(),
            None => old.clone(),
        })
        .collect()
}

/// A task's result as stored, read back typed: what any kind of task records (a task
/// that changes rows its tables and re-check; a manual one who confirmed it).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StoredResult {
    #[serde(default)]
    pub tables: Vec<TableResult>,
    #[serde(default)]
    pub recheck: Option<String>,
    #[serde(default)]
    pub confirmed_by: Option<String>,
}
