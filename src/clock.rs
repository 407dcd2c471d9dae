//! The one place that reads the wall clock. Everything else takes `now` as an argument,
//! so tests can travel in time (clippy's `disallowed-methods` enforces this). Also the one
//! place that turns moments into what people read ([`Zone`]): clippy bans
//! `DateTime::format` elsewhere.

use chrono::{DateTime, Utc};

/// `QUIETUS_NOW` as the process found it, parsed once by [`init`].
static FIXED: std::sync::OnceLock<Option<DateTime<Utc>>> = std::sync::OnceLock::new();

/// `QUIETUS_NOW`: unset or empty is the real clock; anything else must be an RFC 3339
/// time, or it is an error (a mistyped rehearsal must not run destructive work now).
fn parse_env() -> std::result::Result<Option<DateTime<Utc>>, String> {
    let s = match std::env::var("QUIETUS_NOW") {
        Ok(s) => s,
        Err(std::env::VarError::NotPresent) => return Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err("QUIETUS_NOW is not valid UTF-8; expected an RFC 3339 time such as 2026-12-02T10:00:00Z".into());
        }
    };
    if s.trim().is_empty() {
        return Ok(None);
    }
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|e| {
            format!("QUIETUS_NOW is not an RFC 3339 time ({e}); expected e.g. 2026-12-02T10:00:00Z, or unset it for the real clock")
        })
}

/// Read and check `QUIETUS_NOW` once, at process start (the CLI does, before anything
/// runs): an invalid value is an error. Later calls return the first answer.
pub fn init() -> std::result::Result<(), String> {
    let parsed = parse_env()?;
    let _ = FIXED.set(parsed);
    Ok(())
}

/// The current time. Honours `QUIETUS_NOW` (RFC 3339) so that the CLI and the daemon can
/// be run "in the future" by tests and by operators rehearsing a schedule. After [`init`]
/// the value it checked is used; without it (library callers, tests) `QUIETUS_NOW` is read
/// each time, and an invalid value is the real clock only there, never in the binary.
#[allow(clippy::disallowed_methods)]
pub fn now() -> DateTime<Utc> {
    let fixed = match FIXED.get() {
        Some(f) => *f,
        None => parse_env().ok().flatten(),
    };
    fixed.unwrap_or_else(Utc::now)
}

/// The time zone in which people read dates: the policy's (`deadlines.timezone`), the one
/// in which deadlines count days. Every date or time shown to a person (CLI text, emails,
/// web pages) is made here, as a [`Day`] or a [`Time`], so that none is shown in UTC (or
/// unlabelled) by mistake; machine formats (JSON, receipts) keep RFC 3339 UTC times and
/// `YYYY-MM-DD` days of this zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zone(pub chrono_tz::Tz);

/// A day in the policy's zone, shown labelled: `2026-12-02 (Asia/Shanghai)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day {
    pub date: chrono::NaiveDate,
    pub zone: Zone,
}

/// A moment in the policy's zone, shown labelled to the minute: `2026-12-02 01:00 (Asia/Shanghai)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    pub at: DateTime<chrono_tz::Tz>,
}

impl Zone {
    /// The day a moment falls on in this zone.
    pub fn day_of(self, t: DateTime<Utc>) -> Day {
        Day {
            date: t.with_timezone(&self.0).date_naive(),
            zone: self,
        }
    }

    /// A date that is already a day of this zone (a due date, an exit date, a retention end).
    pub fn day(self, date: chrono::NaiveDate) -> Day {
        Day { date, zone: self }
    }

    pub fn time(self, t: DateTime<Utc>) -> Time {
        Time {
            at: t.with_timezone(&self.0),
        }
    }
}

impl std::fmt::Display for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name())
    }
}

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.date.format("%Y-%m-%d"), self.zone)
    }
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        #[allow(clippy::disallowed_methods)] // the one place that formats moments for people
        let shown = self.at.format("%Y-%m-%d %H:%M");
        write!(f, "{shown} ({})", self.at.timezone().name())
    }
}

/// Shown as people read it, also inside email template variables.
impl serde::Serialize for Day {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl serde::Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_times_are_shown_in_the_zone_labelled() {
        let z = Zone(chrono_tz::Asia::Shanghai);
        let t = DateTime::parse_from_rfc3339("2026-12-01T17:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(z.day_of(t).to_string(), "2026-12-02 (Asia/Shanghai)");
        assert_eq!(z.time(t).to_string(), "2026-12-02 01:00 (Asia/Shanghai)");
        let d = chrono::NaiveDate::from_ymd_opt(2028, 12, 1).unwrap();
        assert_eq!(
            serde_json::to_value(z.day(d)).unwrap(),
            "2028-12-01 (Asia/Shanghai)"
        );
    }
}
