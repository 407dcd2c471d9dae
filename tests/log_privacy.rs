//! Nothing at any log level logs row values (issue 9, item 16): the demo at trace level
//! sets up its CRM and carries out an exit and an erasure, and no personal value of the
//! seed CRM (an address, a phone number, a name) appears in what it writes to standard
//! error.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::process::Command;

/// Personal values of the demo's seed CRM: every quoted email address, phone number and
/// name (two or more capitalised words).
fn seed_values() -> Vec<String> {
    let mut out = Vec::new();
    for piece in quietus::demo::CRM_SEED.split('\'').skip(1).step_by(2) {
        let digits = piece.chars().filter(char::is_ascii_digit).count();
        let phone = piece.starts_with('+') && digits >= 8;
        let words: Vec<&str> = piece.split(' ').collect();
        let name = words.len() >= 2
            && words
                .iter()
                .all(|w| w.chars().next().is_some_and(char::is_uppercase));
        if piece.contains('@') || phone || name {
            out.push(piece.to_owned());
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn the_demo_at_trace_level_logs_no_row_value() {
    let values = seed_values();
    assert!(
        values.len() > 50,
        "the seed has personal values: {values:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::BIN)
        .args(["demo", "--dir"])
        .arg(dir.path().join("d"))
        .env("QUIETUS_LOG", "trace")
        .env_remove("QUIETUS_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.lines().count() > 50, "the log is at trace level: {log}");
    let leaked: Vec<&String> = values.iter().filter(|v| log.contains(v.as_str())).collect();
    assert!(
        leaked.is_empty(),
        "{} personal values in the log, e.g. {:?}",
        leaked.len(),
        leaked.iter().take(3).collect::<Vec<_>>()
    );
}
