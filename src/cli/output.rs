//! Printing requests and plans for people, and the one way the CLI writes to standard
//! output: [`crate::outln!`] / [`crate::out!`] (clippy's `print_stdout` refuses
//! `println!` in the crate). A reader that went away (`quietus show ID | head -c 10`) is
//! not an error: the rest of the output is dropped without a word, and the command
//! finishes what it was doing (its work never depends on whether anyone reads) and exits
//! with its own status.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::NaiveDate;

use crate::lifecycle::Request;
use crate::policy::IdentityKind;

/// Standard output could not be written (its reader went away, or it failed): the rest
/// of the output is dropped.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Write to standard output; see the module documentation.
pub fn emit(args: std::fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    // Control characters other than line breaks and tabs are written out (`\u{1b}`): no
    // value shown (a name quietus did not choose) moves the cursor or clears the screen.
    let text = std::fmt::format(args);
    let shown = if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        let lines: Vec<String> = text
            .split('\n')
            .map(|l| {
                l.split('\t')
                    .map(|p| crate::text::escaped(p).into_owned())
                    .collect::<Vec<_>>()
                    .join("\t")
            })
            .collect();
        lines.join("\n")
    } else {
        text
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(shown.as_bytes()).and_then(|()| out.flush()) {
        CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: cannot write to standard output: {e}");
        }
    }
}

/// `print!` through [`emit`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::emit(format_args!($($arg)*))
    };
}

/// `println!` through [`emit`].
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::output::emit(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::emit(format_args!("{}\n", format_args!($($arg)*)))
    };
}

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
        return crate::intake::identity::mask_email(e);
    }
    if let Some(p) = req.subject.get(&IdentityKind::Phone) {
        return format!(
            "phone {}",
            crate::intake::identity::mask(IdentityKind::Phone, p)
        );
    }
    "-".into()
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
    use crate::intake::identity::mask_email;

    #[test]
    fn masked_addresses_keep_only_the_first_character_and_the_domain() {
        assert_eq!(mask_email("o'brien@example.ie"), "o…@example.ie");
        assert_eq!(mask_email("\"john@home\"@example.com"), "j…@example.com");
        // A look-alike (a Cyrillic а in "fang") is not masked like the real address.
        assert_eq!(mask_email("fang@corp.example"), "f…@corp.example");
        assert_eq!(
            mask_email("f\u{430}ng@corp.example"),
            "f…@corp.example (mixed scripts: Cyrillic, Latin)"
        );
        assert_eq!(
            mask_email("fang@c\u{43e}rp.example"),
            "f…@c\u{43e}rp.example (mixed scripts: Cyrillic, Latin)"
        );
        // One script per part is not mixed: an internationalised domain.
        assert_eq!(mask_email("fang@例子.中国"), "f…@例子.中国");
    }
}
