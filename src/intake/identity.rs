//! Identities: how a subject is known, normalised so that the same person written two
//! ways is one identity.

pub use crate::policy::Identities;
use crate::policy::IdentityKind;

/// Normalise one identity value, or say why it is not one. Messages do not repeat the
/// value (it is personal data).
pub fn normalize(kind: IdentityKind, raw: &str) -> Result<String, String> {
    let v = raw.trim();
    if v.is_empty() {
        return Err("is empty".into());
    }
    if v.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    match kind {
        IdentityKind::Email => {
            let lower = v.to_lowercase();
            if lower.len() > 254 {
                return Err("is longer than 254 characters".into());
            }
            // One @, a dotted domain, no spaces or quotes: the forms a CRM holds.
            if !email_address::EmailAddress::is_valid(&lower)
                || lower.contains(['"', ' ', '\'', ';', '(', ')', '<', '>', ',', '\\'])
                || !lower.rsplit_once('@').is_some_and(|(_, d)| {
                    d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
                })
            {
                return Err("is not a valid email address".into());
            }
            Ok(lower)
        }
        IdentityKind::Phone => {
            let plus = v.starts_with('+') || v.starts_with("00");
            let body = v
                .strip_prefix('+')
                .or_else(|| v.strip_prefix("00"))
                .unwrap_or(v);
            let mut digits = String::new();
            for c in body.chars() {
                match c {
                    '0'..='9' => digits.push(c),
                    ' ' | '-' | '.' | '(' | ')' | '\u{a0}' => {}
                    _ => return Err("is not a phone number (digits, spaces, dashes, dots, brackets and a leading +)".into()),
                }
            }
            if !(6..=15).contains(&digits.len()) {
                return Err("is not a phone number (6 to 15 digits)".into());
            }
            Ok(if plus { format!("+{digits}") } else { digits })
        }
        IdentityKind::EmployeeId | IdentityKind::CustomerId => {
            if v.chars().count() > 64 {
                return Err("is longer than 64 characters".into());
            }
            Ok(v.to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(
        IdentityKind::Email,
        "  Fang.Wang@Corp.Example ",
        "fang.wang@corp.example"
    )]
    #[case(IdentityKind::Phone, "+86 138-0013-8000", "+8613800138000")]
    #[case(IdentityKind::Phone, "0044 (20) 7946.0018", "+442079460018")]
    #[case(IdentityKind::Phone, "138 0013 8000", "13800138000")]
    #[case(IdentityKind::EmployeeId, " E100 ", "E100")]
    fn normalises(#[case] kind: IdentityKind, #[case] raw: &str, #[case] want: &str) {
        assert_eq!(normalize(kind, raw).unwrap(), want);
    }

    #[rstest]
    #[case(IdentityKind::Email, "not-an-email")]
    #[case(IdentityKind::Email, "' OR 1=1 --")]
    #[case(IdentityKind::Email, "x@y.z'); DROP TABLE customers; --")]
    #[case(IdentityKind::Email, "a@localhost")]
    #[case(IdentityKind::Phone, "12")]
    #[case(IdentityKind::Phone, "+86 138 0013 8000; --")]
    #[case(IdentityKind::EmployeeId, "   ")]
    #[case(IdentityKind::CustomerId, "a\u{0}b")]
    fn rejects(#[case] kind: IdentityKind, #[case] raw: &str) {
        let e = normalize(kind, raw).unwrap_err();
        assert!(
            raw.trim().is_empty() || !e.contains(raw.trim()),
            "the error must not echo the value: {e}"
        );
    }
}
