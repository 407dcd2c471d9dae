//! Cron schedules: the execution window, and the schedules whose ticks fire once across
//! all instances (`ScheduleName`).

use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::config::{ScheduleConfig, ScheduleName};
use crate::error::{Code, Error, Result};

/// A parsed cron expression (with seconds).
#[derive(Debug, Clone)]
pub struct Cron {
    pub expr: String,
    schedule: cron::Schedule,
}

impl Cron {
    /// Parse; blank means "no schedule".
    pub fn parse_opt(key: &str, expr: &str) -> Result<Option<Cron>> {
        let expr = expr.trim();
        if expr.is_empty() {
            return Ok(None);
        }
        let schedule = cron::Schedule::from_str(expr).map_err(|e| {
            Error::new(
                Code::Config,
                format!("{key}: invalid cron expression {expr:?}: {e}"),
            )
        })?;
        // One that parses but names no time that exists (30 February) would never fire:
        // a sweep configured and never run.
        if schedule
            .after(&DateTime::<Utc>::UNIX_EPOCH)
            .next()
            .is_none()
        {
            return Err(Error::new(
                Code::Config,
                format!(
                    "{key}: the cron expression {expr:?} never fires (it names no date that exists)"
                ),
            ));
        }
        Ok(Some(Cron {
            expr: expr.to_owned(),
            schedule,
        }))
    }

    /// Whether `t` (to the second) is one of the expression's times: the window is open.
    pub fn includes(&self, t: DateTime<Utc>) -> bool {
        self.schedule.includes(t)
    }

    /// The latest tick in `(after, until]`.
    pub fn latest_in(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&after)
            .take_while(|t| *t <= until)
            .last()
    }

    /// The first tick after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.after(&t).next()
    }
}

/// A schedule that ticks: which one, and when.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: ScheduleName,
    pub cron: Cron,
}

/// The configured schedules (blank ones are off).
pub fn from_config(c: &ScheduleConfig) -> Result<Vec<Schedule>> {
    let mut out = Vec::new();
    for name in ScheduleName::ALL {
        if let Some(cron) = Cron::parse_opt(&format!("schedule.{name}"), name.expr(c))? {
            out.push(Schedule { name, cron });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn windows_and_ticks() {
        let w = Cron::parse_opt("w", "* * 1-4 * * *").unwrap().unwrap();
        assert!(w.includes(at("2026-11-24T01:30:00Z")));
        assert!(!w.includes(at("2026-11-24T05:00:00Z")));
        assert!(Cron::parse_opt("w", "  ").unwrap().is_none());
        assert!(Cron::parse_opt("w", "every night").is_err());
        let e = Cron::parse_opt("schedule.retention_sweep", "0 0 0 30 2 *").unwrap_err();
        assert!(e.message.contains("never fires"), "{}", e.message);
        let nightly = Cron::parse_opt("n", "0 0 3 * * *").unwrap().unwrap();
        assert_eq!(
            nightly.latest_in(at("2026-11-23T10:00:00Z"), at("2026-11-24T10:00:00Z")),
            Some(at("2026-11-24T03:00:00Z"))
        );
        // (after, until]: a tick at `after` is not in it, one at `until` is.
        assert_eq!(
            nightly.latest_in(at("2026-11-24T03:00:00Z"), at("2026-11-25T02:59:59Z")),
            None
        );
        assert_eq!(
            nightly.latest_in(at("2026-11-24T03:00:00Z"), at("2026-11-25T03:00:00Z")),
            Some(at("2026-11-25T03:00:00Z"))
        );
        assert_eq!(
            nightly.next_after(at("2026-11-24T03:00:00Z")),
            Some(at("2026-11-25T03:00:00Z"))
        );
    }
}
