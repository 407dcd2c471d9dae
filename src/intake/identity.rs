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
        IdentityKind::Email => email(v),
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

/// An email address as a mail server takes it: an RFC 5322 `addr-spec` (a dot-atom or a
/// quoted-string local part; a domain with a dot, or an address literal), parsed by the
/// `email_address` crate, that the mailer (lettre) can also send to. Normalised so that
/// one mailbox is one value: lower case, and quotes and escapes that change nothing
/// dropped (`"o'brien"@x.ie` is `o'brien@x.ie`, RFC 5321 §4.1.2).
fn email(v: &str) -> Result<String, String> {
    use email_address::{EmailAddress, Options};
    // No address literals (`a@[127.0.0.1]`): the mail relay does not deliver to them, and
    // an acknowledgement that can never be sent is a request no one hears of.
    if v.rsplit_once('@')
        .is_some_and(|(_, d)| d.trim_start().starts_with('['))
    {
        return Err(
            "is not an email address mail can be delivered to (an address literal: a domain name is needed)"
                .into(),
        );
    }
    let opts = Options::default()
        .without_display_text()
        .with_required_tld();
    let parse = |s: &str| {
        EmailAddress::parse_with_options(s, opts).map_err(|e| {
            let why = match e {
                email_address::Error::DomainTooFew => "the domain needs a dot".to_owned(),
                e => e.to_string().trim_end_matches('.').to_lowercase(),
            };
            format!("is not a valid email address ({why})")
        })
    };
    let addr = parse(v)?;
    let out = format!(
        "{}@{}",
        local_part(addr.local_part()),
        addr.domain().to_lowercase()
    );
    // The normal form is itself an address, and one the mailer accepts.
    parse(&out)?;
    if out.parse::<lettre::Address>().is_err() {
        return Err("is not an email address that mail can be sent to".into());
    }
    if out.len() > 254 {
        return Err("is longer than 254 characters".into());
    }
    Ok(out)
}

/// The scripts an address mixes within its local part or within one label of its domain
/// (`fаng`, with a Cyrillic `а`, mixes Cyrillic and Latin), by name, sorted; empty when
/// each part keeps to one script (`fang@例子.中国` does). A person is shown such an
/// address as mixed-script: it is masked like the real one otherwise.
pub fn mixed_scripts(email: &str) -> Vec<&'static str> {
    use unicode_script::{Script, UnicodeScript};
    let (local, domain) = email.rsplit_once('@').unwrap_or((email, ""));
    let mut mixed = std::collections::BTreeSet::new();
    for part in std::iter::once(local).chain(domain.split('.')) {
        let scripts: std::collections::BTreeSet<&'static str> = part
            .chars()
            .map(|c| c.script())
            .filter(|s| !matches!(s, Script::Common | Script::Inherited | Script::Unknown))
            .map(|s| s.full_name())
            .collect();
        if scripts.len() > 1 {
            mixed.extend(scripts);
        }
    }
    mixed.into_iter().collect()
}

/// `o…@example.ie`: the first character of the local part (inside quotes, for a quoted
/// one) and the domain, which follows the last `@` (a quoted local part may hold `@`).
pub fn mask_email(e: &str) -> String {
    match e.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.trim_start_matches('"').chars().take(1).collect();
            let mixed = mixed_scripts(e);
            if mixed.is_empty() {
                format!("{first}…@{domain}")
            } else {
                format!("{first}…@{domain} (mixed scripts: {})", mixed.join(", "))
            }
        }
        None => "…".into(),
    }
}

/// An identity as a reader who may not see it is shown it: an email as
/// [`mask_email`]; a phone number by its last four digits (`…4763`); an employee or
/// customer id by its first character (`E…`).
pub fn mask(kind: IdentityKind, value: &str) -> String {
    match kind {
        IdentityKind::Email => mask_email(value),
        IdentityKind::Phone => {
            let tail: Vec<char> = value.chars().filter(char::is_ascii_digit).collect();
            let tail: String = tail[tail.len().saturating_sub(4)..].iter().collect();
            format!("…{tail}")
        }
        IdentityKind::EmployeeId | IdentityKind::CustomerId => {
            let first: String = value.chars().take(1).collect();
            format!("{first}…")
        }
    }
}

/// Every identity of a set, masked ([`mask`]).
pub fn masked(ids: &crate::policy::Identities) -> crate::policy::Identities {
    ids.iter().map(|(k, v)| (*k, mask(*k, v))).collect()
}

/// A local part in its normal form: lower case; a quoted string unquoted when its content
/// is a dot-atom, else quoted again with only `"` and `\` escaped.
fn local_part(raw: &str) -> String {
    let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
        return raw.to_lowercase();
    };
    let mut content = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => content.extend(chars.next()),
            c => content.push(c),
        }
    }
    let content = content.to_lowercase();
    if !content.contains(['"', '\\']) && email_address::EmailAddress::is_valid_local_part(&content)
    {
        return content;
    }
    let mut quoted = String::with_capacity(content.len() + 2);
    quoted.push('"');
    for c in content.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
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
    // RFC 5322 local parts: every atext character, quoted strings (unneeded quotes and
    // escapes dropped, the rest kept), address literals.
    #[case(IdentityKind::Email, "O'Brien@Example.IE", "o'brien@example.ie")]
    #[case(IdentityKind::Email, "a=b+tag@example.com", "a=b+tag@example.com")]
    #[case(
        IdentityKind::Email,
        "!#$%&'*+-/=?^_`{|}~@example.com",
        "!#$%&'*+-/=?^_`{|}~@example.com"
    )]
    #[case(
        IdentityKind::Email,
        "\"John Doe\"@Example.com",
        "\"john doe\"@example.com"
    )]
    #[case(IdentityKind::Email, "\"o'brien\"@example.ie", "o'brien@example.ie")]
    #[case(IdentityKind::Email, "\"a\\b\"@example.ie", "ab@example.ie")]
    #[case(
        IdentityKind::Email,
        "\"a\\\"b@c\"@example.ie",
        "\"a\\\"b@c\"@example.ie"
    )]
    #[case(
        IdentityKind::Email,
        "\"john..doe\"@example.org",
        "\"john..doe\"@example.org"
    )]
    #[case(IdentityKind::Email, "fang@例子.中国", "fang@例子.中国")]
    fn normalises(#[case] kind: IdentityKind, #[case] raw: &str, #[case] want: &str) {
        assert_eq!(normalize(kind, raw).unwrap(), want);
    }

    #[rstest]
    #[case(IdentityKind::Email, "not-an-email")]
    #[case(IdentityKind::Email, "' OR 1=1 --")]
    #[case(IdentityKind::Email, "x@y.z'); DROP TABLE customers; --")]
    #[case(IdentityKind::Email, "a@localhost")]
    #[case(IdentityKind::Email, "Fang Wang <fang@corp.example>")]
    #[case(IdentityKind::Email, "fang wang@corp.example")]
    #[case(IdentityKind::Email, "a..b@corp.example")]
    #[case(IdentityKind::Email, "\"unbalanced@corp.example")]
    #[case(IdentityKind::Email, "a@b@corp.example")]
    #[case(IdentityKind::Email, "user@[not an ip]")]
    // An address literal: the mail relay does not deliver to one (issue 9, item 12).
    #[case(IdentityKind::Email, "a@[127.0.0.1]")]
    #[case(IdentityKind::Email, "user@[192.0.2.1]")]
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
