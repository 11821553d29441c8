//! Statement periods: a local day (`2026-11-29`) or month (`2026-11`) in a time zone, as a UTC range.

use chrono::{DateTime, NaiveDate};
use chrono_tz::Tz;
use serde::Serialize;

use crate::buckets::{local_floor, local_next, Granularity};
use crate::query::BadQuery;

/// Daily or monthly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Day,
    Month,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Day => "day",
            Kind::Month => "month",
        }
    }

    fn granularity(self) -> Granularity {
        match self {
            Kind::Day => Granularity::Day,
            Kind::Month => Granularity::Month,
        }
    }

    /// The kind a label names (`YYYY-MM-DD` or `YYYY-MM`).
    pub fn of_label(label: &str) -> Option<Kind> {
        match label.len() {
            10 => Some(Kind::Day),
            7 => Some(Kind::Month),
            _ => None,
        }
    }
}

/// One statement period: `[start, end)` in UTC milliseconds, the local day or month `label` in `tz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub kind: Kind,
    pub label: String,
    pub tz: Tz,
    pub start: i64,
    pub end: i64,
}

impl Period {
    /// The period of `kind` holding `ts` in `tz`.
    pub fn containing(kind: Kind, tz: Tz, ts: i64) -> Period {
        let start = local_floor(&tz, kind.granularity(), ts);
        let end = local_next(&tz, kind.granularity(), start);
        let local = DateTime::from_timestamp_millis(start)
            .unwrap_or_default()
            .with_timezone(&tz);
        let label = match kind {
            Kind::Day => local.format("%Y-%m-%d").to_string(),
            Kind::Month => local.format("%Y-%m").to_string(),
        };
        Period {
            kind,
            label,
            tz,
            start,
            end,
        }
    }

    /// Parses `2026-11` (a month) or `2026-11-29` (a day) in `tz`.
    pub fn parse(label: &str, tz: Tz) -> Result<Period, BadQuery> {
        let bad = || {
            BadQuery(format!(
                "period {label:?} is neither YYYY-MM nor YYYY-MM-DD"
            ))
        };
        let kind = Kind::of_label(label).ok_or_else(bad)?;
        let day = match kind {
            Kind::Day => label.to_owned(),
            Kind::Month => format!("{label}-01"),
        };
        let date = NaiveDate::parse_from_str(&day, "%Y-%m-%d").map_err(|_| bad())?;
        // Local noon of the first day is inside the period whatever the zone's offset (UTC noon is
        // not: it is the next local day in Auckland in summer, +13, or Kiritimati, +14).
        let noon = date
            .and_hms_opt(12, 0, 0)
            .and_then(|t| t.and_local_timezone(tz).earliest())
            .map(|t| t.timestamp_millis())
            .ok_or_else(bad)?;
        let p = Period::containing(kind, tz, noon);
        if p.label != label {
            return Err(bad());
        }
        Ok(p)
    }

    /// The period before this one.
    pub fn prev(&self) -> Period {
        Period::containing(self.kind, self.tz, self.start - 1)
    }

    /// The year the label names (the partition of `statements`).
    pub fn year(&self) -> i32 {
        label_year(&self.label)
    }
}

/// The year of a period label (`2026-11` → 2026).
pub fn label_year(label: &str) -> i32 {
    label.get(..4).and_then(|y| y.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .unwrap_or(-1)
    }

    #[test]
    fn months_and_days_in_a_zone() -> Result<(), BadQuery> {
        let m = Period::parse("2026-10", Tz::UTC)?;
        assert_eq!(
            (m.start, m.end),
            (ms("2026-10-01T00:00:00Z"), ms("2026-11-01T00:00:00Z"))
        );
        let berlin: Tz = "Europe/Berlin".parse().unwrap_or(Tz::UTC);
        let d = Period::parse("2026-10-25", berlin)?;
        // The DST change day lasts 25 hours.
        assert_eq!(
            (d.start, d.end),
            (ms("2026-10-24T22:00:00Z"), ms("2026-10-25T23:00:00Z"))
        );
        assert_eq!(d.prev().label, "2026-10-24");
        // Beyond ±12 h: UTC noon would fall on the next (or previous) local day.
        let nz = Period::parse("2026-10-11", chrono_tz::Pacific::Auckland)?;
        assert_eq!(
            (nz.start, nz.end),
            (ms("2026-10-10T11:00:00Z"), ms("2026-10-11T11:00:00Z"))
        );
        let kiritimati = Period::parse("2026-01", chrono_tz::Pacific::Kiritimati)?;
        assert_eq!(kiritimati.start, ms("2025-12-31T10:00:00Z"));
        assert_eq!(m.prev().label, "2026-09");
        assert!(Period::parse("2026-13", Tz::UTC).is_err());
        assert!(Period::parse("2026-1-01", Tz::UTC).is_err());
        assert_eq!(Kind::of_label("2026-11-29"), Some(Kind::Day));
        assert_eq!(m.year(), 2026);
        Ok(())
    }
}
