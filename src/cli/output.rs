//! Printing requests and plans for people.

use chrono::NaiveDate;

use crate::lifecycle::Request;
use crate::policy::IdentityKind;

/// A short, masked form of a subject for lists: enough for a DPO to recognise, not a copy
/// of the identity.
pub fn masked_subject(req: &Request) -> String {
    if let Some(id) = req.subject.get(&IdentityKind::EmployeeId) {
        return format!("employee {id}");
    }
    if let Some(id) = req.subject.get(&IdentityKind::CustomerId) {
        return format!("customer {id}");
    }
    if let Some(e) = req.subject.get(&IdentityKind::Email) {
        return mask_email(e);
    }
    if let Some(p) = req.subject.get(&IdentityKind::Phone) {
        let tail: String = p
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return format!("phone …{tail}");
    }
    "-".into()
}

pub fn mask_email(e: &str) -> String {
    match e.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}…@{domain}")
        }
        None => "…".into(),
    }
}

pub fn days_left_text(req: &Request, today: NaiveDate) -> String {
    match req.days_left(today) {
        None if req.state.deadline_runs() => "clock not started".into(),
        None => "-".into(),
        Some(d) if d < 0 => format!("OVERDUE by {}d", -d),
        Some(0) => "due today".into(),
        Some(d) => format!("{d}d"),
    }
}
