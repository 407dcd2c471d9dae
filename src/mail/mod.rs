//! Email: templates, the outbox, transports and the sender.
//!
//! How a message travels:
//! 1. [`compose`] renders a [`MessageKind`] in the recipient's locale ([`render`]) into a
//!    [`NewMail`] with a fresh outbox id;
//! 2. the caller writes it with [`enqueue_in`] inside the transaction of the state change
//!    that causes it (or with `Store::enqueue`), so the change and its message are
//!    committed together or not at all;
//! 3. [`send_due`] leases due messages one at a time, builds each into a MIME message
//!    ([`Mailer::message`]: text and HTML alternatives, attachments, a `Message-ID`
//!    derived from the outbox id), hands it to the [`Transport`] (`.eml` files or SMTP),
//!    and marks it sent, or retries it later with exponential backoff.
//!
//! Messages carry no personal data beyond what the recipient gave: request ids, dates,
//! counts, categories, rule ids and legal bases, never other people's names or addresses.
//! The callers choose the variables; the built-in templates only print those.

mod message;
mod sender;
pub mod templates;
mod transport;
pub mod vars;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use crate::store::outbox::{MailAttachment, NewMail, OutboxRow, backoff, enqueue_in};
pub use message::{build_message, message_id};
pub use sender::{SendSummary, send_due};
pub use templates::{LOCALES, Rendered, render};
pub use transport::{Delivery, DeliveryError, Mailer, Transport};

use crate::error::{Code, Error, Result};
use crate::policy::RequestKind;

/// What a message is about. Each kind has its own templates and variables (all optional
/// unless marked *required*; dates are strings, formatted by the caller). Every template
/// also sees `request_kind` (`erasure`, `exit` or `access`), from the request the message
/// concerns ([`Concerns`]), never from the caller's variables: every kind but
/// `failure_alert` is written in the words of its request's kind, and cannot be rendered
/// without it.
///
/// - `acknowledgement` (to the requester): `request_id`*, `received`*, `deadline`
///   (unset while the clock waits for verification), `verify_needed` (bool).
/// - `verification` (to the requester): `request_id`*, `verify_url`*, `expires`.
/// - `approval` (to the requester): `request_id`*, `scheduled`, `deadline`.
/// - `refusal` (to the requester): `request_id`*, `reasons`* (a list, or one string),
///   `jurisdiction` (`GDPR`, `PIPL`; unset: the remedies of both), `authority` (the
///   competent supervisory authority), `partly` (bool). The remedies are always stated:
///   a complaint to a supervisory authority (GDPR Art. 77; PIPL Art. 65) and a judicial
///   remedy (GDPR Art. 79; PIPL Art. 50).
/// - `extension` (to the requester): `request_id`*, `deadline`* (the new one), `reason`*,
///   `original_deadline`, `jurisdiction`.
/// - `completion` (to the requester; the receipt attached by the caller): `request_id`*,
///   `completed`*, `erased`* (list of `{category, system?, count?}`), `kept`* (list of
///   `{category, until, basis, system?, rule?}`), `backups_until`, `receipt_filename`.
/// - `export_ready` (to the requester): `request_id`*, `download_url`*, `expires`*. It
///   never carries the file's passphrase: the download page shows it once the recipient
///   has typed the address the message went to.
/// - `reminder` (to the DPO): `request_id`*, `deadline`*, `days_left`* (negative when
///   overdue), `state`, `jurisdiction`, `request_url`.
/// - `failure_alert` (to the DPO): `error`*, `request_id` and/or `task_id`, `system`,
///   `attempts`, `request_url`.
/// - `manual_task` (to a system owner): `system`*, `task_id`*, `action`* (what to do, in
///   categories and rule ids; the records themselves are behind the link), `request_id`,
///   `due`, `rule`, `basis`, `confirm_url`, `confirm_command`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum MessageKind {
    Acknowledgement,
    Verification,
    Approval,
    Refusal,
    Extension,
    Completion,
    ExportReady,
    Reminder,
    FailureAlert,
    ManualTask,
    /// A restore put back what a request changed (to the subject and the DPO).
    Restored,
}

impl MessageKind {
    pub const ALL: [MessageKind; 11] = [
        MessageKind::Acknowledgement,
        MessageKind::Verification,
        MessageKind::Approval,
        MessageKind::Refusal,
        MessageKind::Extension,
        MessageKind::Completion,
        MessageKind::ExportReady,
        MessageKind::Reminder,
        MessageKind::FailureAlert,
        MessageKind::ManualTask,
        MessageKind::Restored,
    ];

    /// The stable name (templates, the outbox's `kind` column).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Acknowledgement => "acknowledgement",
            MessageKind::Verification => "verification",
            MessageKind::Approval => "approval",
            MessageKind::Refusal => "refusal",
            MessageKind::Extension => "extension",
            MessageKind::Completion => "completion",
            MessageKind::ExportReady => "export_ready",
            MessageKind::Reminder => "reminder",
            MessageKind::FailureAlert => "failure_alert",
            MessageKind::ManualTask => "manual_task",
            MessageKind::Restored => "restored",
        }
    }
}

impl MessageKind {
    /// Whether the words of this kind depend on the kind of request it concerns, so that
    /// it cannot be rendered without one. Only failure alerts (to the DPO, about a task,
    /// perhaps of a sweep) read the same for every request kind.
    pub fn worded_by_request_kind(self) -> bool {
        match self {
            MessageKind::Acknowledgement
            | MessageKind::Verification
            | MessageKind::Approval
            | MessageKind::Refusal
            | MessageKind::Extension
            | MessageKind::Completion
            | MessageKind::ExportReady
            | MessageKind::Reminder
            | MessageKind::ManualTask => true,
            // Failure alerts; and restores, which only undo erasures and exits.
            MessageKind::FailureAlert | MessageKind::Restored => false,
        }
    }
}

/// The request a message concerns: its id goes with the message (the outbox's
/// `request_id`), and its kind chooses the message's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concerns<'a> {
    /// A request, by id and kind.
    Request { id: &'a str, kind: RequestKind },
    /// A request known to the sender by its id only: enough for the kinds whose words do
    /// not depend on the request's kind (failure alerts), refused by the others.
    RequestId(&'a str),
    /// No request (a failure alert about a sweep's task).
    NoRequest,
}

impl<'a> Concerns<'a> {
    pub fn request_id(self) -> Option<&'a str> {
        match self {
            Concerns::Request { id, .. } | Concerns::RequestId(id) => Some(id),
            Concerns::NoRequest => None,
        }
    }

    pub fn request_kind(self) -> Option<RequestKind> {
        match self {
            Concerns::Request { kind, .. } => Some(kind),
            Concerns::RequestId(_) | Concerns::NoRequest => None,
        }
    }
}

impl<'a> From<Option<&'a str>> for Concerns<'a> {
    fn from(id: Option<&'a str>) -> Self {
        id.map_or(Concerns::NoRequest, Concerns::RequestId)
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for MessageKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        MessageKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| Error::new(Code::Usage, format!("no message kind {s:?}")))
    }
}

/// Render a message for one recipient into an outbox entry with a fresh id (not yet
/// stored: pass it to [`enqueue_in`] or `Store::enqueue`), in the words of the request
/// it concerns. The locale stored is the one whose templates were used.
pub fn compose(
    kind: MessageKind,
    locale: &str,
    recipient: &str,
    concerns: Concerns<'_>,
    vars: &serde_json::Value,
    attachments: Vec<MailAttachment>,
    templates_dir: Option<&Path>,
) -> Result<NewMail> {
    let recipient = recipient.trim();
    if recipient.parse::<lettre::Address>().is_err() {
        return Err(Error::new(
            Code::Usage,
            format!("mail {kind}: the recipient is not a valid email address"),
        ));
    }
    let used = templates::resolve_locale(locale, kind, templates_dir);
    let r = render(kind, concerns.request_kind(), &used, vars, templates_dir)?;
    Ok(NewMail {
        id: crate::store::new_id(),
        request_id: concerns.request_id().map(str::to_owned),
        kind,
        recipient: recipient.to_owned(),
        locale: used,
        subject: r.subject,
        body_text: r.text,
        body_html: r.html,
        attachments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in MessageKind::ALL {
            assert_eq!(k.as_str().parse::<MessageKind>().unwrap(), k);
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::Value::String(k.as_str().to_owned())
            );
        }
        assert!("nope".parse::<MessageKind>().is_err());
    }

    #[test]
    fn compose_checks_the_recipient() {
        let vars = serde_json::json!({"request_id": "r1", "verify_url": "https://x/v"});
        let about = Concerns::Request {
            id: "r1",
            kind: RequestKind::Erasure,
        };
        let bad = compose(
            MessageKind::Verification,
            "en",
            "not an address",
            about,
            &vars,
            vec![],
            None,
        );
        assert!(bad.is_err());
        let ok = compose(
            MessageKind::Verification,
            "zh",
            "a@example.com",
            about,
            &vars,
            vec![],
            None,
        )
        .unwrap();
        assert_eq!(ok.locale, "zh-CN");
        assert_eq!(ok.kind, MessageKind::Verification);
        assert_eq!(ok.request_id.as_deref(), Some("r1"));
        // Words that depend on the request's kind need it.
        let unknown = compose(
            MessageKind::Verification,
            "en",
            "a@example.com",
            Concerns::RequestId("r1"),
            &vars,
            vec![],
            None,
        )
        .unwrap_err();
        assert_eq!(unknown.code, Code::Internal);
        let alert = serde_json::json!({"error": "boom", "task_id": "t1"});
        let m = compose(
            MessageKind::FailureAlert,
            "en",
            "dpo@example.com",
            Concerns::NoRequest,
            &alert,
            vec![],
            None,
        )
        .unwrap();
        assert_eq!(m.request_id, None);
    }
}
