//! Cron schedules: the execution window, and ticks that fire once across all instances.

use std::str::FromStr;

use chrono::{DateTime, Utc};

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
        Ok(Some(Cron {
            expr: expr.to_owned(),
            schedule,
        }))
    }

    /// Whether `t` (to the second) is one of the expression's times: the window is open.
    pub fn includes(&self, t: DateTime<Utc>) -> bool {
        self.schedule.includes(t)
    }

    /// The ticks in `(after, until]`, at most `max` of them.
    pub fn ticks(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        max: usize,
    ) -> Vec<DateTime<Utc>> {
        self.schedule
            .after(&after)
            .take_while(|t| *t <= until)
            .take(max)
            .collect()
    }

    /// The latest tick at or before `t`, looking back at most `lookback`.
    pub fn last_tick(&self, t: DateTime<Utc>, lookback: chrono::Duration) -> Option<DateTime<Utc>> {
        self.ticks(t - lookback, t, 100_000).into_iter().last()
    }
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
        let nightly = Cron::parse_opt("n", "0 0 3 * * *").unwrap().unwrap();
        assert_eq!(
            nightly.last_tick(at("2026-11-24T10:00:00Z"), chrono::Duration::days(1)),
            Some(at("2026-11-24T03:00:00Z"))
        );
        assert_eq!(
            nightly
                .ticks(at("2026-11-24T03:00:00Z"), at("2026-11-26T03:00:00Z"), 10)
                .len(),
            2
        );
    }
}
