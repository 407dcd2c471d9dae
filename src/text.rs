//! Text a person reads (a terminal, a log, a page): control characters never reach them
//! raw. Names quietus did not choose (an inbox file's) are shown escaped; words a person
//! types for the record (an actor, a reason) are refused when they hold any.

use std::borrow::Cow;

use crate::error::{Code, Error, Result};

/// `s` with every control character written out (`\n`, `\r`, `\t`, `\u{1b}`), the rest as
/// it is.
pub fn escaped(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Refuse `value` (what a person gave as `what`, e.g. "--reason") if it holds a control
/// character; a line break too unless `lines` allows it. The error says which and where,
/// without the value.
pub fn printable(what: &str, value: &str, lines: bool) -> Result<()> {
    let bad = value
        .char_indices()
        .find(|&(_, c)| c.is_control() && !(lines && c == '\n'));
    match bad {
        None => Ok(()),
        Some((at, c)) => Err(Error::new(
            Code::Usage,
            format!(
                "{what} holds a control character ({}, at byte {at}); write it without one",
                escaped(c.encode_utf8(&mut [0; 4]))
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_written_out() {
        assert_eq!(escaped("plain é"), "plain é");
        assert_eq!(escaped("a\nb\u{1b}[2J\u{7f}"), "a\\nb\\u{1b}[2J\\u{7f}");
        assert!(printable("--reason", "two\nlines", true).is_ok());
        let e = printable("--reason", "two\nlines", false).unwrap_err();
        assert!(e.message.contains("\\n, at byte 3"), "{}", e.message);
        let e = printable("--actor", "x\u{1b}[31m", false).unwrap_err();
        assert!(!e.message.contains('\u{1b}'), "{}", e.message);
    }
}
