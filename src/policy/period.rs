//! Periods ("2 years", "1 month", "15 working days") and jurisdictions.

use std::fmt;
use std::str::FromStr;

use chrono::{Days, Months, NaiveDate};
use serde::{Deserialize, Serialize};

/// The unit of a [`Period`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Days,
    WorkingDays,
    Weeks,
    Months,
    Years,
}

/// A length of time as people write it in policies and laws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Period {
    pub count: u32,
    pub unit: Unit,
}

impl Period {
    pub const fn new(count: u32, unit: Unit) -> Self {
        Period { count, unit }
    }

    /// `date` + this period by calendar arithmetic: months and years keep the day of the
    /// month, or fall back to the month's last day (31 January + 1 month = 28/29 February).
    /// Working days cannot be added without a calendar: `None`, as on overflow.
    pub fn add_calendar(&self, date: NaiveDate) -> Option<NaiveDate> {
        match self.unit {
            Unit::Days => date.checked_add_days(Days::new(u64::from(self.count))),
            Unit::Weeks => date.checked_add_days(Days::new(u64::from(self.count) * 7)),
            Unit::Months => date.checked_add_months(Months::new(self.count)),
            Unit::Years => date.checked_add_months(Months::new(self.count.checked_mul(12)?)),
            Unit::WorkingDays => None,
        }
    }

    /// `date` - this period, by the same calendar arithmetic as [`Period::add_calendar`].
    pub fn sub_calendar(&self, date: NaiveDate) -> Option<NaiveDate> {
        match self.unit {
            Unit::Days => date.checked_sub_days(Days::new(u64::from(self.count))),
            Unit::Weeks => date.checked_sub_days(Days::new(u64::from(self.count) * 7)),
            Unit::Months => date.checked_sub_months(Months::new(self.count)),
            Unit::Years => date.checked_sub_months(Months::new(self.count.checked_mul(12)?)),
            Unit::WorkingDays => None,
        }
    }

    /// A rough length in days, to compare periods of different units ("which keeps longer").
    pub fn approx_days(&self) -> u64 {
        let n = u64::from(self.count);
        match self.unit {
            Unit::Days => n,
            // 5 working days are about a week.
            Unit::WorkingDays => n * 7 / 5,
            Unit::Weeks => n * 7,
            Unit::Months => n * 31,
            Unit::Years => n * 366,
        }
    }
}

impl FromStr for Period {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid period {s:?}: expected a number and a unit, like \"30 days\", \
                 \"15 working days\", \"2 weeks\", \"1 month\" or \"2 years\""
            )
        };
        let mut words = s.split_whitespace();
        let count: u32 = words.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
        let rest: Vec<&str> = words.collect();
        let unit = match rest.as_slice() {
            ["day" | "days"] => Unit::Days,
            ["working", "day" | "days"] => Unit::WorkingDays,
            ["week" | "weeks"] => Unit::Weeks,
            ["month" | "months"] => Unit::Months,
            ["year" | "years"] => Unit::Years,
            _ => return Err(bad()),
        };
        if count == 0 || count > 100_000 {
            return Err(format!(
                "invalid period {s:?}: the number must be 1 to 100000"
            ));
        }
        Ok(Period { count, unit })
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let one = self.count == 1;
        let unit = match (self.unit, one) {
            (Unit::Days, true) => "day",
            (Unit::Days, false) => "days",
            (Unit::WorkingDays, true) => "working day",
            (Unit::WorkingDays, false) => "working days",
            (Unit::Weeks, true) => "week",
            (Unit::Weeks, false) => "weeks",
            (Unit::Months, true) => "month",
            (Unit::Months, false) => "months",
            (Unit::Years, true) => "year",
            (Unit::Years, false) => "years",
        };
        write!(f, "{} {unit}", self.count)
    }
}

impl Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The law a request is handled under.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[sqlx(type_name = "text")]
pub enum Jurisdiction {
    #[serde(rename = "GDPR")]
    #[sqlx(rename = "GDPR")]
    Gdpr,
    #[serde(rename = "PIPL")]
    #[sqlx(rename = "PIPL")]
    Pipl,
}

impl Jurisdiction {
    pub fn as_str(self) -> &'static str {
        match self {
            Jurisdiction::Gdpr => "GDPR",
            Jurisdiction::Pipl => "PIPL",
        }
    }
}

impl FromStr for Jurisdiction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "GDPR" | "gdpr" => Ok(Jurisdiction::Gdpr),
            "PIPL" | "pipl" => Ok(Jurisdiction::Pipl),
            _ => Err(format!(
                "unknown jurisdiction {s:?} (expected GDPR or PIPL)"
            )),
        }
    }
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_periods() {
        for s in ["1 day", "15 working days", "2 weeks", "1 month", "2 years"] {
            let p: Period = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        assert!("two years".parse::<Period>().is_err());
        assert!("0 days".parse::<Period>().is_err());
        assert!("3 fortnights".parse::<Period>().is_err());
    }

    #[test]
    fn calendar_months_clamp_to_month_end() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let m1 = Period::new(1, Unit::Months);
        assert_eq!(m1.add_calendar(d("2026-01-31")), Some(d("2026-02-28")));
        assert_eq!(m1.add_calendar(d("2028-01-31")), Some(d("2028-02-29")));
        assert_eq!(
            Period::new(2, Unit::Years).add_calendar(d("2028-02-29")),
            Some(d("2030-02-28"))
        );
    }
}
