//! The one place that reads the wall clock. Everything else takes `now` as an argument,
//! so tests can travel in time (clippy's `disallowed-methods` enforces this).

use chrono::{DateTime, Utc};

/// The current time. Honours `QUIETUS_NOW` (RFC 3339) so that the CLI and the daemon can
/// be run "in the future" by tests and by operators rehearsing a schedule.
#[allow(clippy::disallowed_methods)]
pub fn now() -> DateTime<Utc> {
    if let Ok(s) = std::env::var("QUIETUS_NOW")
        && let Ok(t) = DateTime::parse_from_rfc3339(s.trim())
    {
        return t.with_timezone(&Utc);
    }
    Utc::now()
}
