//! Response deadlines.
//!
//! GDPR (Art. 12(3)): one month by calendar-month arithmetic (same date next month, or
//! that month's last day), extendable once by up to two further months, with the reasons
//! sent to the data subject within the first month. PIPL: a configurable period (15
//! working days by default), never beyond 30 calendar days from the start. Working days
//! are counted on a [`HolidayCalendar`]; years it does not cover count weekends only and
//! say so in [`Deadline::warnings`].
//!
//! All dates are local dates in the controller's time zone ([`local_date`]); the current
//! date is always a parameter.

use chrono::{DateTime, Days, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::error::{Code, Error, Result};
use crate::lifecycle::calendar::HolidayCalendar;
use crate::policy::{Jurisdiction, Period, Unit};

/// PIPL: a response is never due later than this many calendar days after the start.
pub const PIPL_CAP_DAYS: u64 = 30;
/// GDPR: the one extension adds at most this many months to the first deadline.
pub const GDPR_MAX_EXTENSION_MONTHS: u32 = 2;

/// A computed deadline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deadline {
    /// The day the clock started (receipt or verification); not itself counted.
    pub start: NaiveDate,
    /// The last day on which the response is on time.
    pub due: NaiveDate,
    /// Things the reader must know: a year without calendar data, a capped period.
    pub warnings: Vec<String>,
}

/// The calendar date of `t` in the time zone `tz`.
pub fn local_date(t: DateTime<Utc>, tz: Tz) -> NaiveDate {
    t.with_timezone(&tz).date_naive()
}

/// `from` + `by`: working days on the calendar, anything else by calendar arithmetic.
fn add_period(
    from: NaiveDate,
    by: Period,
    cal: &HolidayCalendar,
) -> Result<(NaiveDate, Vec<String>)> {
    match by.unit {
        Unit::WorkingDays => cal.add_working_days(from, by.count),
        Unit::Days | Unit::Weeks | Unit::Months | Unit::Years => by
            .add_calendar(from)
            .map(|d| (d, Vec::new()))
            .ok_or_else(|| {
                Error::new(
                    Code::Deadline,
                    format!("{from} + {by} is outside the supported date range"),
                )
            }),
    }
}

/// The latest possible PIPL due date for a clock started on `start`.
fn pipl_latest(start: NaiveDate) -> Result<NaiveDate> {
    start
        .checked_add_days(Days::new(PIPL_CAP_DAYS))
        .ok_or_else(|| {
            Error::new(
                Code::Deadline,
                format!("{start} + {PIPL_CAP_DAYS} days is outside the supported date range"),
            )
        })
}

/// The first deadline for a request whose clock started on `start`.
///
/// PIPL due dates are capped at `start` + 30 calendar days, with a warning. GDPR periods
/// are computed as given; whether a policy may set them is checked elsewhere.
pub fn initial(
    j: Jurisdiction,
    start: NaiveDate,
    period: Period,
    cal: &HolidayCalendar,
) -> Result<Deadline> {
    let (mut due, mut warnings) = add_period(start, period, cal)?;
    if j == Jurisdiction::Pipl {
        let latest = pipl_latest(start)?;
        if due > latest {
            warnings.push(format!(
                "{period} from {start} would end on {due}, beyond the PIPL limit of \
                 {PIPL_CAP_DAYS} days: the deadline was capped at {latest}"
            ));
            due = latest;
        }
    }
    Ok(Deadline {
        start,
        due,
        warnings,
    })
}

/// Extend a deadline once, by `by`, on `today`.
///
/// Refused (with [`Code::Deadline`]) when the deadline was already extended, when the
/// first deadline has passed (under GDPR the extension and its reasons must reach the data
/// subject within the first period), when a GDPR extension goes beyond two further months,
/// or when a PIPL deadline would go beyond 30 days from `start`.
pub fn extend(
    j: Jurisdiction,
    start: NaiveDate,
    original_due: NaiveDate,
    already_extended: bool,
    by: Period,
    today: NaiveDate,
    cal: &HolidayCalendar,
) -> Result<Deadline> {
    let refuse = |msg: String| Err(Error::new(Code::Deadline, msg));
    if already_extended {
        return refuse(format!(
            "the deadline was already extended once; {j} allows only one extension"
        ));
    }
    if today > original_due {
        return refuse(match j {
            Jurisdiction::Gdpr => format!(
                "too late to extend: under GDPR the extension and its reasons must be sent \
                 to the data subject within the first period, which ended on {original_due} \
                 (today is {today})"
            ),
            Jurisdiction::Pipl => format!(
                "too late to extend: the deadline {original_due} has already passed \
                 (today is {today})"
            ),
        });
    }
    let (due, warnings) = add_period(original_due, by, cal)?;
    if due <= original_due {
        return refuse(format!(
            "an extension of {by} does not move the deadline past {original_due}"
        ));
    }
    match j {
        Jurisdiction::Gdpr => {
            let max = Period::new(GDPR_MAX_EXTENSION_MONTHS, Unit::Months);
            let latest = max.add_calendar(original_due).ok_or_else(|| {
                Error::new(
                    Code::Deadline,
                    format!("{original_due} + {max} is outside the supported date range"),
                )
            })?;
            if due > latest {
                return refuse(format!(
                    "an extension of {by} would move the deadline from {original_due} to \
                     {due}; GDPR allows at most {max} more, until {latest}"
                ));
            }
        }
        Jurisdiction::Pipl => {
            let latest = pipl_latest(start)?;
            if due > latest {
                return refuse(format!(
                    "an extension of {by} would move the deadline to {due}, beyond the PIPL \
                     limit of {PIPL_CAP_DAYS} days from {start}: the latest allowed date is \
                     {latest}"
                ));
            }
        }
    }
    Ok(Deadline {
        start,
        due,
        warnings,
    })
}

/// Days from `today` to `due`: 0 on the due day itself, negative once overdue.
pub fn days_left(due: NaiveDate, today: NaiveDate) -> i64 {
    (due - today).num_days()
}

/// Whether `today` is after the due day (the due day itself is on time).
pub fn is_overdue(due: NaiveDate, today: NaiveDate) -> bool {
    today > due
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rstest::rstest;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn p(s: &str) -> Period {
        s.parse().unwrap()
    }

    fn cn() -> HolidayCalendar {
        HolidayCalendar::builtin().unwrap()
    }

    // Month ends and leap years, checked against printed calendars.
    #[rstest]
    #[case("2026-01-31", "2026-02-28")] // 2026 is not a leap year
    #[case("2028-01-31", "2028-02-29")] // 2028 is
    #[case("2026-01-29", "2026-02-28")]
    #[case("2028-01-29", "2028-02-29")]
    #[case("2028-02-29", "2028-03-29")]
    #[case("2026-02-28", "2026-03-28")]
    #[case("2026-03-31", "2026-04-30")]
    #[case("2026-05-31", "2026-06-30")]
    #[case("2026-08-31", "2026-09-30")]
    #[case("2026-12-31", "2027-01-31")]
    #[case("2026-03-15", "2026-04-15")]
    fn gdpr_one_calendar_month(#[case] start: &str, #[case] due: &str) {
        let dl = initial(Jurisdiction::Gdpr, d(start), p("1 month"), &cn()).unwrap();
        assert_eq!(dl.start, d(start));
        assert_eq!(dl.due, d(due));
        assert!(dl.warnings.is_empty());
    }

    // 15 working days on the 2026 calendar (hand-counted, see calendar.rs for the days).
    #[rstest]
    // Spring Festival: Sat 14 Feb and Sat 28 Feb are worked, 15-23 Feb off.
    #[case("2026-02-10", "2026-03-09")]
    #[case("2026-02-06", "2026-03-05")]
    #[case("2026-02-13", "2026-03-12")]
    // National Day: Sun 20 Sep and Sat 10 Oct are worked, 25-27 Sep and 1-7 Oct off.
    #[case("2026-09-18", "2026-10-15")]
    #[case("2026-09-24", "2026-10-22")]
    // Labour Day: 1-5 May off, Sat 9 May worked.
    #[case("2026-04-30", "2026-05-25")]
    // Dragon Boat: Fri 19 Jun off.
    #[case("2026-06-01", "2026-06-23")]
    fn pipl_fifteen_working_days(#[case] start: &str, #[case] due: &str) {
        let dl = initial(Jurisdiction::Pipl, d(start), p("15 working days"), &cn()).unwrap();
        assert_eq!(dl.due, d(due));
        assert!(dl.warnings.is_empty(), "{:?}", dl.warnings);
    }

    #[test]
    fn pipl_into_an_uncovered_year_warns() {
        // 22-25, 28-31 Dec 2026; Fri 1 Jan 2027 counts (no 2027 data); 4-8, 11 Jan.
        let dl = initial(
            Jurisdiction::Pipl,
            d("2026-12-21"),
            p("15 working days"),
            &cn(),
        )
        .unwrap();
        assert_eq!(dl.due, d("2027-01-11"));
        assert_eq!(dl.warnings.len(), 1);
        assert!(
            dl.warnings[0].contains("no data for 2027"),
            "{:?}",
            dl.warnings
        );
        assert!(
            dl.warnings[0].contains("weekends only"),
            "{:?}",
            dl.warnings
        );
    }

    #[rstest]
    // 25 working days from 6 Feb end on 19 Mar; 6 Feb + 30 days is Sun 8 Mar.
    #[case("2026-02-06", "25 working days", "2026-03-08")]
    #[case("2026-02-06", "60 days", "2026-03-08")]
    #[case("2026-01-31", "2 months", "2026-03-02")]
    #[case("2026-12-15", "5 weeks", "2027-01-14")]
    fn pipl_is_capped_at_30_days(#[case] start: &str, #[case] period: &str, #[case] due: &str) {
        let dl = initial(Jurisdiction::Pipl, d(start), p(period), &cn()).unwrap();
        assert_eq!(dl.due, d(due));
        assert!(
            dl.warnings.iter().any(|w| w.contains("capped at")),
            "{:?}",
            dl.warnings
        );
    }

    #[test]
    fn pipl_exactly_30_days_is_not_capped() {
        let dl = initial(Jurisdiction::Pipl, d("2026-02-06"), p("30 days"), &cn()).unwrap();
        assert_eq!(dl.due, d("2026-03-08"));
        assert!(dl.warnings.is_empty());
    }

    #[test]
    fn gdpr_long_periods_are_computed_as_given() {
        let dl = initial(Jurisdiction::Gdpr, d("2026-01-31"), p("3 months"), &cn()).unwrap();
        assert_eq!(dl.due, d("2026-04-30"));
        assert!(dl.warnings.is_empty());
    }

    fn refused(r: Result<Deadline>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.code, Code::Deadline);
        e.message
    }

    #[rstest]
    #[case("2 months", "2026-04-28")]
    #[case("1 month", "2026-03-28")]
    #[case("8 weeks", "2026-04-25")]
    #[case("59 days", "2026-04-28")]
    fn gdpr_extension_within_two_months(#[case] by: &str, #[case] due: &str) {
        // Started 31 Jan 2026, first due 28 Feb 2026; the limit is 28 Apr 2026.
        let dl = extend(
            Jurisdiction::Gdpr,
            d("2026-01-31"),
            d("2026-02-28"),
            false,
            p(by),
            d("2026-02-28"),
            &cn(),
        )
        .unwrap();
        assert_eq!(dl.start, d("2026-01-31"));
        assert_eq!(dl.due, d(due));
    }

    #[rstest]
    #[case("3 months")]
    #[case("9 weeks")] // 2 May
    #[case("60 days")] // 29 Apr
    #[case("1 year")]
    fn gdpr_extension_beyond_two_months_is_refused(#[case] by: &str) {
        let msg = refused(extend(
            Jurisdiction::Gdpr,
            d("2026-01-31"),
            d("2026-02-28"),
            false,
            p(by),
            d("2026-02-10"),
            &cn(),
        ));
        assert!(msg.contains("until 2026-04-28"), "{msg}");
    }

    #[test]
    fn gdpr_extension_after_the_first_period_is_refused() {
        let msg = refused(extend(
            Jurisdiction::Gdpr,
            d("2026-01-31"),
            d("2026-02-28"),
            false,
            p("1 month"),
            d("2026-03-01"),
            &cn(),
        ));
        assert!(msg.contains("within the first period"), "{msg}");
        assert!(msg.contains("2026-02-28"), "{msg}");
    }

    #[rstest]
    #[case(Jurisdiction::Gdpr)]
    #[case(Jurisdiction::Pipl)]
    fn a_second_extension_is_refused(#[case] j: Jurisdiction) {
        let msg = refused(extend(
            j,
            d("2026-03-02"),
            d("2026-03-23"),
            true,
            p("1 day"),
            d("2026-03-10"),
            &cn(),
        ));
        assert!(msg.contains("already extended once"), "{msg}");
    }

    // Started Mon 2 Mar 2026; 15 working days end Mon 23 Mar; the PIPL limit is 1 Apr.
    #[rstest]
    #[case("5 working days", "2026-03-30")]
    #[case("7 working days", "2026-04-01")]
    #[case("9 days", "2026-04-01")]
    #[case("1 week", "2026-03-30")]
    fn pipl_extension_within_30_days(#[case] by: &str, #[case] due: &str) {
        let first = initial(
            Jurisdiction::Pipl,
            d("2026-03-02"),
            p("15 working days"),
            &cn(),
        )
        .unwrap();
        assert_eq!(first.due, d("2026-03-23"));
        let dl = extend(
            Jurisdiction::Pipl,
            first.start,
            first.due,
            false,
            p(by),
            d("2026-03-23"),
            &cn(),
        )
        .unwrap();
        assert_eq!(dl.due, d(due));
    }

    #[rstest]
    #[case("8 working days")] // 2 Apr
    #[case("10 days")] // 2 Apr
    #[case("1 month")] // 23 Apr
    fn pipl_extension_beyond_30_days_is_refused(#[case] by: &str) {
        let msg = refused(extend(
            Jurisdiction::Pipl,
            d("2026-03-02"),
            d("2026-03-23"),
            false,
            p(by),
            d("2026-03-10"),
            &cn(),
        ));
        assert!(msg.contains("latest allowed date is 2026-04-01"), "{msg}");
    }

    #[test]
    fn pipl_extension_after_the_due_date_is_refused() {
        let msg = refused(extend(
            Jurisdiction::Pipl,
            d("2026-03-02"),
            d("2026-03-23"),
            false,
            p("3 days"),
            d("2026-03-24"),
            &cn(),
        ));
        assert!(msg.contains("already passed"), "{msg}");
    }

    #[test]
    fn extension_by_working_days_uses_the_calendar() {
        // Due Wed 30 Sep 2026, +1 working day: 1-7 Oct are off, so Thu 8 Oct.
        let dl = extend(
            Jurisdiction::Pipl,
            d("2026-09-14"),
            d("2026-09-30"),
            false,
            p("1 working day"),
            d("2026-09-30"),
            &cn(),
        )
        .unwrap();
        assert_eq!(dl.due, d("2026-10-08"));
        // Into 2027: the warning is carried.
        let dl = extend(
            Jurisdiction::Gdpr,
            d("2026-11-30"),
            d("2026-12-30"),
            false,
            p("3 working days"),
            d("2026-12-01"),
            &cn(),
        )
        .unwrap();
        assert_eq!(dl.due, d("2027-01-04"));
        assert!(
            dl.warnings.iter().any(|w| w.contains("2027")),
            "{:?}",
            dl.warnings
        );
    }

    #[test]
    fn a_zero_extension_is_refused() {
        let msg = refused(extend(
            Jurisdiction::Gdpr,
            d("2026-01-31"),
            d("2026-02-28"),
            false,
            Period::new(0, Unit::Days),
            d("2026-02-01"),
            &cn(),
        ));
        assert!(msg.contains("does not move"), "{msg}");
    }

    #[rstest]
    #[case("2026-03-10", "2026-03-01", 9, false)]
    #[case("2026-03-10", "2026-03-09", 1, false)]
    #[case("2026-03-10", "2026-03-10", 0, false)]
    #[case("2026-03-10", "2026-03-11", -1, true)]
    #[case("2026-03-01", "2026-02-28", 1, false)]
    #[case("2028-03-01", "2028-02-28", 2, false)]
    #[case("2026-12-31", "2027-01-30", -30, true)]
    fn days_left_and_overdue(
        #[case] due: &str,
        #[case] today: &str,
        #[case] left: i64,
        #[case] overdue: bool,
    ) {
        assert_eq!(days_left(d(due), d(today)), left);
        assert_eq!(is_overdue(d(due), d(today)), overdue);
    }

    #[rstest]
    #[case("2026-03-01T17:00:00Z", chrono_tz::Asia::Shanghai, "2026-03-02")]
    #[case("2026-03-01T15:59:59Z", chrono_tz::Asia::Shanghai, "2026-03-01")]
    #[case("2026-03-01T16:00:00Z", chrono_tz::Asia::Shanghai, "2026-03-02")]
    #[case("2026-03-01T17:00:00Z", chrono_tz::UTC, "2026-03-01")]
    #[case("2026-03-01T23:30:00Z", chrono_tz::Europe::Berlin, "2026-03-02")]
    #[case("2026-07-01T22:30:00Z", chrono_tz::Europe::Berlin, "2026-07-02")]
    #[case("2026-07-01T21:30:00Z", chrono_tz::Europe::Berlin, "2026-07-01")]
    #[case("2026-03-02T03:00:00Z", chrono_tz::America::New_York, "2026-03-01")]
    fn local_dates(#[case] t: &str, #[case] tz: Tz, #[case] date: &str) {
        let t = DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        assert_eq!(local_date(t, tz), d(date));
        // Same instant built another way.
        let again = Utc.timestamp_opt(t.timestamp(), 0).unwrap();
        assert_eq!(local_date(again, tz), d(date));
    }

    #[test]
    fn deadline_serializes_dates_as_iso() {
        let dl = Deadline {
            start: d("2026-01-31"),
            due: d("2026-02-28"),
            warnings: vec!["w".into()],
        };
        let json = serde_json::to_value(&dl).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"start": "2026-01-31", "due": "2026-02-28", "warnings": ["w"]})
        );
    }
}
