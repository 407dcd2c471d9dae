//! Working-day calendars.
//!
//! A [`HolidayCalendar`] knows, for the years it covers, which days are public holidays
//! and which weekend days are adjusted working days (the mainland-China 调休). Years it
//! does not cover count Monday to Friday as working days, and every computation that
//! touches such a year says so in a warning: a missing year is never guessed.
//!
//! The file format (see `calendars/cn.toml`, which is built in):
//!
//! ```toml
//! region = "CN"
//! [[year]]
//! year = 2026
//! source = "where the data comes from"
//! [[year.holiday]]
//! name = "New Year's Day"
//! off = [["2026-01-01", "2026-01-03"]]   # inclusive ranges
//! work = ["2026-01-04"]                  # weekend days that are working days
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

use chrono::{Datelike, NaiveDate, Weekday};
use serde::Deserialize;
use toml::Spanned;

use crate::error::{Code, Error, Result};

/// The built-in mainland-China calendar.
const BUILTIN_TEXT: &str = include_str!("../../calendars/cn.toml");
const BUILTIN_ORIGIN: &str = "built-in calendars/cn.toml";

/// Public holidays and adjusted working days, per covered year.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolidayCalendar {
    region: String,
    /// Covered years and the source of each.
    years: BTreeMap<i32, String>,
    /// Days off (holidays, including the weekend days inside a holiday block).
    off: BTreeSet<NaiveDate>,
    /// Weekend days that are working days.
    work: BTreeSet<NaiveDate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    region: Spanned<String>,
    #[serde(default)]
    year: Vec<YearDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YearDoc {
    year: Spanned<i32>,
    source: String,
    #[serde(default)]
    holiday: Vec<HolidayDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HolidayDoc {
    name: String,
    off: Vec<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    work: Vec<Spanned<String>>,
}

/// Builds error messages that name the origin and, where known, line and column.
struct Origin<'a> {
    text: &'a str,
    name: &'a str,
}

impl Origin<'_> {
    fn error(&self, span: Option<Range<usize>>, message: impl std::fmt::Display) -> Error {
        match span.and_then(|s| self.line_col(s.start)) {
            Some((line, col)) => Error::new(
                Code::Config,
                format!("{}:{line}:{col}: {message}", self.name),
            ),
            None => Error::new(Code::Config, format!("{}: {message}", self.name)),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> Option<(usize, usize)> {
        let before = self.text.get(..offset)?;
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before.get(line_start..)?.chars().count() + 1;
        Some((line, col))
    }

    fn date(&self, value: &Spanned<String>) -> Result<NaiveDate> {
        NaiveDate::parse_from_str(value.get_ref(), "%Y-%m-%d").map_err(|_| {
            self.error(
                Some(value.span()),
                format!("invalid date {:?}: expected YYYY-MM-DD", value.get_ref()),
            )
        })
    }

    /// Dates belong to the declared year. A holiday block or an adjusted working day may
    /// cross the year boundary (the notice for one year has listed 30-31 December of the
    /// year before, for instance), so the year just before or after is accepted too;
    /// anything farther is a typo.
    fn check_year(&self, value: &Spanned<String>, date: NaiveDate, year: i32) -> Result<()> {
        if (date.year() - year).abs() > 1 {
            return Err(self.error(
                Some(value.span()),
                format!(
                    "date {date} is too far from the year {year} it is declared under \
                     (only the year before or after is allowed)"
                ),
            ));
        }
        Ok(())
    }
}

fn is_weekend(d: NaiveDate) -> bool {
    matches!(d.weekday(), Weekday::Sat | Weekday::Sun)
}

impl HolidayCalendar {
    /// A calendar that covers no year: every day counts Monday to Friday, with warnings.
    pub fn empty(region: impl Into<String>) -> Self {
        HolidayCalendar {
            region: region.into(),
            years: BTreeMap::new(),
            off: BTreeSet::new(),
            work: BTreeSet::new(),
        }
    }

    /// The built-in mainland-China calendar (`calendars/cn.toml`).
    pub fn builtin() -> Result<Self> {
        Self::parse(BUILTIN_TEXT, BUILTIN_ORIGIN)
    }

    /// Read a calendar file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::fsx::read_text_limited(path, crate::fsx::limit::TEXT).map_err(|e| {
            Error::new(
                e.code,
                format!("cannot read the holiday calendar: {}", e.message),
            )
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse and validate a calendar; `origin` names the text in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let o = Origin { text, name: origin };
        let doc: FileDoc = toml::from_str(text).map_err(|e| o.error(e.span(), e.message()))?;

        let region = doc.region.get_ref().trim().to_string();
        if region.is_empty() {
            return Err(o.error(Some(doc.region.span()), "`region` must not be empty"));
        }
        let mut cal = HolidayCalendar::empty(region);

        // Days off first, so that adjusted working days can be checked against all of them.
        for y in &doc.year {
            let year = *y.year.get_ref();
            if cal.years.insert(year, y.source.clone()).is_some() {
                return Err(o.error(Some(y.year.span()), format!("year {year} appears twice")));
            }
            for h in &y.holiday {
                for range in &h.off {
                    let [first, last] = range.get_ref().as_slice() else {
                        return Err(o.error(
                            Some(range.span()),
                            format!(
                                "{:?}: each `off` entry must be a [\"first\", \"last\"] pair \
                                 of dates",
                                h.name
                            ),
                        ));
                    };
                    let (a, b) = (o.date(first)?, o.date(last)?);
                    o.check_year(first, a, year)?;
                    o.check_year(last, b, year)?;
                    if a > b {
                        return Err(o.error(
                            Some(range.span()),
                            format!("{:?}: the range {a}..{b} ends before it starts", h.name),
                        ));
                    }
                    let mut day = a;
                    while day <= b {
                        cal.off.insert(day);
                        match day.succ_opt() {
                            Some(next) => day = next,
                            None => break,
                        }
                    }
                }
            }
        }
        for y in &doc.year {
            let year = *y.year.get_ref();
            for h in &y.holiday {
                for value in &h.work {
                    let day = o.date(value)?;
                    o.check_year(value, day, year)?;
                    if !is_weekend(day) {
                        return Err(o.error(
                            Some(value.span()),
                            format!(
                                "{:?}: {day} is a {:?}; `work` lists only weekend days that \
                                 are working days",
                                h.name,
                                day.weekday()
                            ),
                        ));
                    }
                    if cal.off.contains(&day) {
                        return Err(o.error(
                            Some(value.span()),
                            format!(
                                "{:?}: {day} is listed both as a working day and as a day off",
                                h.name
                            ),
                        ));
                    }
                    cal.work.insert(day);
                }
            }
        }
        Ok(cal)
    }

    /// The region the calendar is for ("CN").
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Where the data for `year` comes from, if the year is covered.
    pub fn source(&self, year: i32) -> Option<&str> {
        self.years.get(&year).map(String::as_str)
    }

    /// Whether the calendar has official data for `year`.
    pub fn covers(&self, year: i32) -> bool {
        self.years.contains_key(&year)
    }

    /// The covered years, in order.
    pub fn years(&self) -> Vec<i32> {
        self.years.keys().copied().collect()
    }

    /// The warning for a year the calendar does not cover.
    pub fn missing_year_warning(year: i32) -> String {
        format!("the holiday calendar has no data for {year}: counted weekends only")
    }

    /// Whether `d` is a working day. Declared days win (a holiday block that spills into
    /// an uncovered year still counts); otherwise Monday to Friday.
    pub fn is_working_day(&self, d: NaiveDate) -> bool {
        if self.work.contains(&d) {
            true
        } else if self.off.contains(&d) {
            false
        } else {
            !is_weekend(d)
        }
    }

    /// The `n`-th working day after `start` (`start` itself is not counted; `n == 0` gives
    /// `start`), and a warning for each year touched that the calendar does not cover.
    ///
    /// An error ([`Code::Deadline`]) when the `n`-th working day would be past the last
    /// supported date: never a date with fewer working days than asked for.
    pub fn add_working_days(&self, start: NaiveDate, n: u32) -> Result<(NaiveDate, Vec<String>)> {
        let mut day = start;
        let mut left = n;
        let mut uncovered = BTreeSet::new();
        while left > 0 {
            let Some(next) = day.succ_opt() else {
                return Err(Error::new(
                    Code::Deadline,
                    format!(
                        "{n} working days after {start} is outside the supported date range \
                         (the last supported date is {day})"
                    ),
                ));
            };
            day = next;
            if !self.covers(day.year()) {
                uncovered.insert(day.year());
            }
            if self.is_working_day(day) {
                left -= 1;
            }
        }
        let warnings = uncovered
            .into_iter()
            .map(Self::missing_year_warning)
            .collect();
        Ok((day, warnings))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn cn() -> HolidayCalendar {
        HolidayCalendar::builtin().unwrap()
    }

    fn parse_err(text: &str) -> String {
        let e = HolidayCalendar::parse(text, "test.toml").unwrap_err();
        assert_eq!(e.code, Code::Config);
        e.message
    }

    #[test]
    fn builtin_covers_2026_only() {
        let cal = cn();
        assert_eq!(cal.region(), "CN");
        assert_eq!(cal.years(), vec![2026]);
        assert!(cal.covers(2026));
        assert!(!cal.covers(2025));
        assert!(!cal.covers(2027));
        assert!(cal.source(2026).is_some_and(|s| s.contains("2026")));
    }

    // Expected values checked by hand against the 2026 State Council notice and a printed
    // 2026 calendar (weekday in the comment).
    #[rstest]
    #[case("2026-01-01", false)] // Thu, New Year
    #[case("2026-01-02", false)] // Fri, New Year
    #[case("2026-01-03", false)] // Sat, New Year
    #[case("2026-01-04", true)] // Sun, adjusted working day
    #[case("2026-01-05", true)] // Mon
    #[case("2026-02-13", true)] // Fri
    #[case("2026-02-14", true)] // Sat, adjusted working day
    #[case("2026-02-15", false)] // Sun, Spring Festival
    #[case("2026-02-16", false)] // Mon, Spring Festival
    #[case("2026-02-20", false)] // Fri, Spring Festival
    #[case("2026-02-23", false)] // Mon, last day of Spring Festival
    #[case("2026-02-24", true)] // Tue
    #[case("2026-02-28", true)] // Sat, adjusted working day
    #[case("2026-03-01", false)] // Sun
    #[case("2026-03-07", false)] // Sat, ordinary weekend
    #[case("2026-04-06", false)] // Mon, Qingming
    #[case("2026-04-07", true)] // Tue
    #[case("2026-05-01", false)] // Fri, Labour Day
    #[case("2026-05-05", false)] // Tue, Labour Day
    #[case("2026-05-06", true)] // Wed
    #[case("2026-05-09", true)] // Sat, adjusted working day
    #[case("2026-06-19", false)] // Fri, Dragon Boat
    #[case("2026-09-20", true)] // Sun, adjusted working day
    #[case("2026-09-25", false)] // Fri, Mid-Autumn
    #[case("2026-09-28", true)] // Mon
    #[case("2026-10-01", false)] // Thu, National Day
    #[case("2026-10-05", false)] // Mon, National Day
    #[case("2026-10-07", false)] // Wed, National Day
    #[case("2026-10-08", true)] // Thu
    #[case("2026-10-10", true)] // Sat, adjusted working day
    #[case("2026-10-11", false)] // Sun
    #[case("2026-12-31", true)] // Thu
    #[case("2027-01-01", true)] // Fri, 2027 uncovered: weekends only
    #[case("2027-01-02", false)] // Sat
    #[case("2025-12-31", true)] // Wed, 2025 uncovered
    fn builtin_working_days(#[case] day: &str, #[case] working: bool) {
        assert_eq!(cn().is_working_day(d(day)), working, "{day}");
    }

    #[rstest]
    // Spring Festival: 11, 12, 13, Sat 14, (15-23 off), 24, 25, 26, 27, Sat 28, 2-6 Mar, 9 Mar.
    #[case("2026-02-10", 15, "2026-03-09")]
    #[case("2026-02-13", 1, "2026-02-14")]
    #[case("2026-02-14", 1, "2026-02-24")]
    #[case("2026-02-27", 1, "2026-02-28")]
    // National Day: Sun 20, 21-24, (25-27 off), 28-30, (1-7 Oct off), 8, 9, Sat 10, 12-15.
    #[case("2026-09-18", 15, "2026-10-15")]
    #[case("2026-09-30", 1, "2026-10-08")]
    // New Year: (1-3 off), Sun 4, 5-9, 12-16, 19-22.
    #[case("2026-01-01", 15, "2026-01-22")]
    #[case("2026-03-02", 0, "2026-03-02")]
    fn adds_working_days_in_2026(#[case] start: &str, #[case] n: u32, #[case] due: &str) {
        let (got, warnings) = cn().add_working_days(d(start), n).unwrap();
        assert_eq!(got, d(due));
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn uncovered_year_counts_weekends_only_and_warns() {
        // 22-25, 28-31 Dec, Fri 1 Jan 2027 (no data: a working day), 4-8, 11 Jan.
        let (got, warnings) = cn().add_working_days(d("2026-12-21"), 15).unwrap();
        assert_eq!(got, d("2027-01-11"));
        assert_eq!(
            warnings,
            vec!["the holiday calendar has no data for 2027: counted weekends only".to_string()]
        );
        // Entirely inside 2026: no warning.
        let (_, warnings) = cn().add_working_days(d("2026-12-01"), 5).unwrap();
        assert!(warnings.is_empty());
        // Two uncovered years, one warning each.
        let (got, warnings) = HolidayCalendar::empty("X")
            .add_working_days(d("2027-12-31"), 1)
            .unwrap();
        assert_eq!(got, d("2028-01-03"));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("2028"));
    }

    #[test]
    fn working_days_past_the_last_date_are_an_error() {
        let e = HolidayCalendar::empty("X")
            .add_working_days(NaiveDate::MAX, 1)
            .unwrap_err();
        assert_eq!(e.code, Code::Deadline);
        assert!(
            e.message.contains("outside the supported date range"),
            "{}",
            e.message
        );
        // Zero working days need no next day.
        let (got, _) = HolidayCalendar::empty("X")
            .add_working_days(NaiveDate::MAX, 0)
            .unwrap();
        assert_eq!(got, NaiveDate::MAX);
    }

    const GOOD: &str = r#"
region = "T"
[[year]]
year = 2026
source = "test"
[[year.holiday]]
name = "A"
off = [["2026-12-31", "2027-01-01"], ["2026-05-01", "2026-05-01"]]
work = ["2027-01-02"]
"#;

    #[test]
    fn spill_into_next_year_is_allowed_but_does_not_cover_it() {
        let cal = HolidayCalendar::parse(GOOD, "good.toml").unwrap();
        assert_eq!(cal.years(), vec![2026]);
        assert!(!cal.is_working_day(d("2027-01-01")));
        assert!(cal.is_working_day(d("2027-01-02")));
        assert!(!cal.is_working_day(d("2026-05-01")));
        let (_, warnings) = cal.add_working_days(d("2026-12-30"), 1).unwrap();
        assert!(warnings[0].contains("2027"));
    }

    #[rstest]
    #[case::bad_date(
        r#"off = [["2026-02-30", "2026-03-01"]]"#,
        "invalid date \"2026-02-30\""
    )]
    #[case::reversed(r#"off = [["2026-03-02", "2026-03-01"]]"#, "ends before it starts")]
    #[case::not_a_pair(r#"off = [["2026-03-02"]]"#, "pair")]
    #[case::far_year(
        r#"off = [["2028-01-01", "2028-01-02"]]"#,
        "too far from the year 2026"
    )]
    #[case::weekday_work(
        r#"off = [["2026-03-02", "2026-03-02"]]
work = ["2026-03-03"]"#,
        "Tue"
    )]
    #[case::both(
        r#"off = [["2026-03-07", "2026-03-08"]]
work = ["2026-03-08"]"#,
        "both as a working day and as a day off"
    )]
    #[case::unknown_key(
        r#"off = [["2026-03-02", "2026-03-02"]]
days = 3"#,
        "unknown field"
    )]
    #[case::missing_off(r#"work = ["2026-03-07"]"#, "off")]
    fn rejects_bad_holidays(#[case] holiday: &str, #[case] expected: &str) {
        let text = format!(
            "region = \"T\"\n[[year]]\nyear = 2026\nsource = \"s\"\n[[year.holiday]]\nname = \"H\"\n{holiday}\n"
        );
        let msg = parse_err(&text);
        assert!(msg.contains(expected), "{msg}");
        assert!(msg.starts_with("test.toml:"), "{msg}");
    }

    #[test]
    fn errors_give_line_and_column() {
        let text = "region = \"T\"\n[[year]]\nyear = 2026\nsource = \"s\"\n[[year.holiday]]\n\
                    name = \"H\"\noff = [[\"2026-01-01\", \"2026-13-01\"]]\n";
        let msg = parse_err(text);
        assert!(msg.starts_with("test.toml:7:23: invalid date"), "{msg}");

        let msg = parse_err("region = \"T\"\nyears = 1\n");
        assert!(msg.starts_with("test.toml:2:1:"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");

        let msg = parse_err("region = \n");
        assert!(msg.starts_with("test.toml:1:"), "{msg}");
    }

    #[test]
    fn rejects_duplicate_year_and_empty_region() {
        let msg = parse_err(
            "region = \"T\"\n[[year]]\nyear = 2026\nsource = \"a\"\n[[year]]\nyear = 2026\nsource = \"b\"\n",
        );
        assert!(msg.contains("year 2026 appears twice"), "{msg}");
        assert!(msg.starts_with("test.toml:6:8:"), "{msg}");
        let msg = parse_err("region = \" \"\n");
        assert!(msg.contains("region"), "{msg}");
    }

    #[test]
    fn loads_files_and_names_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cal.toml");
        std::fs::write(&path, GOOD).unwrap();
        let cal = HolidayCalendar::load(&path).unwrap();
        assert!(cal.covers(2026));

        let missing = dir.path().join("nope.toml");
        let e = HolidayCalendar::load(&missing).unwrap_err();
        assert_eq!(e.code, Code::Io);
        assert!(e.message.contains("nope.toml"), "{}", e.message);

        std::fs::write(&path, "region = \"T\"\n[[year]]\nyear = \"x\"\n").unwrap();
        let e = HolidayCalendar::load(&path).unwrap_err();
        assert!(e.message.contains("cal.toml:3:"), "{}", e.message);
    }
}
