//! What each message says: one variant per message kind, each with its variables as a
//! struct, so that a message cannot be composed with another kind's variables (or with a
//! variable its templates do not know). The templates see these fields by name; dates are
//! [`Day`]s and [`Time`]s of the policy's zone, labelled.

use serde::Serialize;

use super::MessageKind;
use crate::clock::{Day, Time};
use crate::error::Result;
use crate::lifecycle::State;
use crate::policy::Jurisdiction;

/// A message to compose.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Message {
    Acknowledgement(Acknowledgement),
    Verification(Verification),
    Approval(Approval),
    Refusal(Refusal),
    Extension(Extension),
    Completion(Completion),
    ExportReady(ExportReady),
    Reminder(Reminder),
    FailureAlert(FailureAlert),
    ManualTask(ManualTask),
    Restored(Restored),
}

impl Message {
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Acknowledgement(_) => MessageKind::Acknowledgement,
            Message::Verification(_) => MessageKind::Verification,
            Message::Approval(_) => MessageKind::Approval,
            Message::Refusal(_) => MessageKind::Refusal,
            Message::Extension(_) => MessageKind::Extension,
            Message::Completion(_) => MessageKind::Completion,
            Message::ExportReady(_) => MessageKind::ExportReady,
            Message::Reminder(_) => MessageKind::Reminder,
            Message::FailureAlert(_) => MessageKind::FailureAlert,
            Message::ManualTask(_) => MessageKind::ManualTask,
            Message::Restored(_) => MessageKind::Restored,
        }
    }

    /// The variables, as the templates read them.
    pub fn vars(&self) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(self)?)
    }
}

/// A request was received (with, for self-service, a verification link to follow).
#[derive(Debug, Clone, Serialize)]
pub struct Acknowledgement {
    pub request_id: String,
    pub received: Day,
    pub deadline: Option<Day>,
    pub verify_needed: bool,
}

/// The subject's link to confirm their identity.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub request_id: String,
    pub verify_url: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub request_id: String,
    pub deadline: Option<Day>,
}

/// A refusal, with its reasons (the remedies come from the templates).
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub request_id: String,
    pub reasons: String,
    pub jurisdiction: Jurisdiction,
}

#[derive(Debug, Clone, Serialize)]
pub struct Extension {
    pub request_id: String,
    pub deadline: Day,
    pub reason: String,
    pub original_deadline: Day,
    pub jurisdiction: Jurisdiction,
}

/// What was done, and what was kept until when and why.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub request_id: Option<String>,
    pub completed: Day,
    pub erased: Vec<Changed>,
    pub handed_over: Vec<Changed>,
    pub disabled: Vec<Changed>,
    pub kept: Vec<Kept>,
    pub backups_until: Option<Day>,
    pub receipt_filename: String,
}

/// Records of some categories in a system.
#[derive(Debug, Clone, Serialize)]
pub struct Changed {
    pub category: String,
    pub system: String,
    pub count: u64,
}

/// Records kept under a rule, until a day.
#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    pub category: String,
    pub until: Day,
    pub basis: String,
    pub system: String,
    pub rule: String,
}

/// An access request's copy is ready behind a link (its passphrase is shown on the page).
#[derive(Debug, Clone, Serialize)]
pub struct ExportReady {
    pub request_id: String,
    pub download_url: String,
    pub expires: Time,
}

/// To the DPO: a deadline near or passed.
#[derive(Debug, Clone, Serialize)]
pub struct Reminder {
    pub request_id: String,
    pub deadline: Option<Day>,
    pub days_left: Option<i64>,
    pub state: State,
    pub jurisdiction: Jurisdiction,
}

/// To the DPO: a task needs attention, or a request went back to review.
#[derive(Debug, Clone, Serialize)]
pub struct FailureAlert {
    pub request_id: Option<String>,
    pub error: String,
    pub task_id: Option<String>,
    pub system: Option<String>,
    pub attempts: Option<i64>,
}

/// To a system's owner: what to do by hand, and how to confirm it.
#[derive(Debug, Clone, Serialize)]
pub struct ManualTask {
    pub request_id: String,
    pub system: String,
    pub task_id: String,
    pub action: String,
    pub due: Day,
    pub confirm_command: String,
    pub confirm_url: String,
}

/// A restore put back what a request changed.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub request_id: String,
    pub restored: Day,
    pub reason: String,
    pub lost: Vec<Lost>,
}

/// A backup that expired before a restore: what it held cannot come back.
#[derive(Debug, Clone, Serialize)]
pub struct Lost {
    pub backup: String,
    pub task: String,
    pub kind: Option<crate::store::tasks::TaskKind>,
    pub shredded: Day,
}
