//! Time buckets and the sums kept per bucket: pure arithmetic shared by the writer (which bucket an
//! event touches, which partition holds that bucket) and the query side (which partitions a range
//! reads, how source rows fold into the caller's buckets in the caller's time zone).
//!
//! Every instant is milliseconds since the Unix epoch (CQL `timestamp`). Partitions are bounded by
//! time: minute rollups by (org, UTC day), hour rollups by (org, UTC month), day rollups by (org, UTC
//! year), so no partition grows with an org's age.

use chrono::{DateTime, Datelike, NaiveDate, Offset, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// The sums of one bucket. Token and request counts are exact integers; cost is a decimal (0 until
/// the price table exists); latency is summed in microseconds so the mean is exact to 1 µs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub latency_us: i64,
    pub cost: Decimal,
}

impl Totals {
    /// Adds `other` into `self` (saturating: a corrupt row cannot wrap a sum around).
    pub fn add(&mut self, other: &Totals) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
        self.latency_us = self.latency_us.saturating_add(other.latency_us);
        self.cost += other.cost;
    }
}

/// The bucket sizes a rollup table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Minute,
    Hour,
    Day,
}

impl Level {
    /// The start of the UTC bucket holding `ts`.
    pub fn floor(self, ts: i64) -> i64 {
        let size = match self {
            Level::Minute => MINUTE_MS,
            Level::Hour => HOUR_MS,
            Level::Day => DAY_MS,
        };
        ts.div_euclid(size) * size
    }

    /// The length of one bucket.
    pub fn size(self) -> i64 {
        match self {
            Level::Minute => MINUTE_MS,
            Level::Hour => HOUR_MS,
            Level::Day => DAY_MS,
        }
    }

    /// The partition (besides the org) holding the bucket starting at `bucket`: its UTC day for
    /// minutes, its UTC month for hours, its UTC year for days.
    pub fn partition(self, bucket: i64) -> i64 {
        match self {
            Level::Minute => Level::Day.floor(bucket),
            Level::Hour => month_start(bucket),
            Level::Day => year_start(bucket),
        }
    }

    /// The start of the partition after the one starting at `partition`.
    pub fn next_partition(self, partition: i64) -> i64 {
        match self {
            Level::Minute => partition + DAY_MS,
            Level::Hour => month_start(month_start(partition) + 32 * DAY_MS),
            Level::Day => year_start(year_start(partition) + 367 * DAY_MS),
        }
    }

    /// The partitions that hold buckets in `[from, to)`, in order.
    pub fn partitions(self, from: i64, to: i64) -> Vec<i64> {
        let mut out = Vec::new();
        let mut p = self.partition(from);
        while p < to {
            out.push(p);
            p = self.next_partition(p);
        }
        out
    }

    /// The next coarser level, whose buckets are recomputed from this one's.
    pub fn parent(self) -> Option<Level> {
        match self {
            Level::Minute => Some(Level::Hour),
            Level::Hour => Some(Level::Day),
            Level::Day => None,
        }
    }
}

fn utc(ts: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ts).unwrap_or_default()
}

fn date_ms(d: Option<NaiveDate>) -> i64 {
    d.and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or(0)
}

/// The first instant of `ts`'s UTC month.
pub fn month_start(ts: i64) -> i64 {
    let t = utc(ts);
    date_ms(NaiveDate::from_ymd_opt(t.year(), t.month(), 1))
}

/// The first instant of `ts`'s UTC year.
pub fn year_start(ts: i64) -> i64 {
    date_ms(NaiveDate::from_ymd_opt(utc(ts).year(), 1, 1))
}

/// A caller's bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
    Month,
}

/// Where the caller's buckets start, in a time zone: the local start of the minute, hour, day or
/// month holding `ts`, as a UTC instant.
pub fn local_floor<Z: TimeZone>(tz: &Z, g: Granularity, ts: i64) -> i64 {
    let at = utc(ts);
    let size = match g {
        Granularity::Minute => MINUTE_MS,
        Granularity::Hour => HOUR_MS,
        Granularity::Day | Granularity::Month => return local_calendar_floor(tz, g, ts),
    };
    // Minutes and hours are fixed lengths: shift by the offset in force (which may have a half or
    // quarter hour in it), floor, shift back. Unambiguous even in a repeated DST hour.
    let off = i64::from(
        tz.offset_from_utc_datetime(&at.naive_utc())
            .fix()
            .local_minus_utc(),
    ) * 1000;
    (ts + off).div_euclid(size) * size - off
}

/// [`local_floor`] for days and months, whose length in a zone varies (DST, calendar).
fn local_calendar_floor<Z: TimeZone>(tz: &Z, g: Granularity, ts: i64) -> i64 {
    let local = utc(ts).with_timezone(tz).naive_local().date();
    let first = match g {
        Granularity::Month => local.with_day(1),
        _ => Some(local),
    };
    let Some(midnight) = first.and_then(|d| d.and_hms_opt(0, 0, 0)) else {
        return ts;
    };
    match tz.from_local_datetime(&midnight) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
            t.timestamp_millis()
        }
        // A midnight skipped by a DST jump: the day starts at the first instant after the gap.
        chrono::LocalResult::None => tz
            .from_local_datetime(&(midnight + chrono::Duration::hours(1)))
            .earliest()
            .map(|t| t.timestamp_millis())
            .unwrap_or(ts),
    }
}

/// The next local bucket start after `start` (a value [`local_floor`] returned).
pub fn local_next<Z: TimeZone>(tz: &Z, g: Granularity, start: i64) -> i64 {
    let probe = match g {
        Granularity::Minute => start + MINUTE_MS,
        Granularity::Hour => start + HOUR_MS,
        // Local days last 23 to 25 hours and months 28 to 31 days: a point 2 hours past the
        // longest length is always inside the next bucket, never past it.
        Granularity::Day => start + DAY_MS + 2 * HOUR_MS,
        Granularity::Month => start + 31 * DAY_MS + 2 * HOUR_MS,
    };
    local_floor(tz, g, probe).max(start + MINUTE_MS)
}

#[cfg(test)]
mod tests;
