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

/// `o…@example.ie`: the first character of the local part (inside quotes, for a quoted
/// one) and the domain, which follows the last `@` (a quoted local part may hold `@`).
pub fn mask_email(e: &str) -> String {
    match e.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.trim_start_matches('"').chars().take(1).collect();
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

#[cfg(test)]
mod tests {
    use super::mask_email;

    #[test]
    fn masked_addresses_keep_only_the_first_character_and_the_domain() {
        assert_eq!(mask_email("o'brien@example.ie"), "o…@example.ie");
        assert_eq!(mask_email("\"john@home\"@example.com"), "j…@example.com");
        assert_eq!(mask_email("\"a b\"@[192.0.2.1]"), "a…@[192.0.2.1]");
    }
}
