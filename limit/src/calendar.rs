//! Calendar window math: the `[start, end)` of the hour, day or month containing an instant, in a
//! time zone, on the injected clock.
//!
//! - Day and month windows start at local midnight (of the day, of the first of the month). A local
//!   day is 23 or 25 hours long across a DST change. A midnight that does not exist (a zone that
//!   springs forward at 00:00) starts the window at the first local time after the gap; a midnight
//!   that happens twice (falling back across 00:00) starts it at the first occurrence, and the
//!   window ends at the first next midnight after `now`.
//! - Hour windows start at the latest local `:00:00` using the UTC offset in force at `now`: the UTC
//!   hour containing `now` for whole-hour-offset zones, shifted by 30 or 45 minutes for
//!   India, Nepal and the like. Across a fall-back the repeated local hour is two windows.
//!
//! Instants before 1970 or after 2262 (outside `Nanos` / `i64` nanoseconds) are clamped.
//!
//! UTC (the default `timezone`) has no offset to look up: its windows are integer arithmetic on the
//! epoch (days to civil dates by Howard Hinnant's algorithms), about 50 instructions instead of the
//! time zone database's thousand, with the same answers (a test compares both paths).

use super::algo::{CalendarWindow, Nanos};
use chrono::{Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike};
use chrono_tz::Tz;

const NS_PER_SEC: u64 = 1_000_000_000;
const NS_PER_HOUR: u64 = 3_600 * NS_PER_SEC;

/// The window containing `now`: `start ≤ now < end`.
pub fn bounds(window: CalendarWindow, tz: Tz, now: Nanos) -> (Nanos, Nanos) {
    if matches!(tz, Tz::UTC | Tz::Etc__UTC) {
        if let Some(b) = utc_bounds(window, now) {
            return b;
        }
    }
    zone_bounds(window, tz, now)
}

const NS_PER_DAY: u64 = 24 * NS_PER_HOUR;
/// Up to here every UTC window ends before `i64::MAX` nanoseconds (2262-04-11), where the general
/// path starts clamping: a month is at most 31 days.
const UTC_FAST_UNTIL: Nanos = i64::MAX as u64 - 32 * NS_PER_DAY;

/// [`bounds`] in UTC without the time zone database; `None` near the end of `Nanos`' range.
fn utc_bounds(window: CalendarWindow, now: Nanos) -> Option<(Nanos, Nanos)> {
    if now > UTC_FAST_UNTIL {
        return None;
    }
    let floor = |unit: u64| {
        let start = now - now % unit;
        (start, start + unit)
    };
    Some(match window {
        CalendarWindow::Hour => floor(NS_PER_HOUR),
        CalendarWindow::Day => floor(NS_PER_DAY),
        CalendarWindow::Month => {
            let (y, m) = civil_from_days(now / NS_PER_DAY);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (
                days_from_civil(y, m) * NS_PER_DAY,
                days_from_civil(ny, nm) * NS_PER_DAY,
            )
        }
    })
}

/// (year, month 1..=12) of day `days` since 1970-01-01 (Hinnant's `civil_from_days`, for days ≥ 0).
fn civil_from_days(days: u64) -> (u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(m <= 2), m)
}

/// Days since 1970-01-01 of the first of month `m` of year `y` (Hinnant's `days_from_civil`, for
/// dates from 1970).
fn days_from_civil(y: u64, m: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// [`bounds`] through the time zone database: any zone, any instant.
fn zone_bounds(window: CalendarWindow, tz: Tz, now: Nanos) -> (Nanos, Nanos) {
    let at = tz.timestamp_nanos(to_i64(now));
    let local = at.naive_local();
    match window {
        CalendarWindow::Hour => {
            let into_hour = u64::from(local.minute()) * 60 * NS_PER_SEC
                + u64::from(local.second()) * NS_PER_SEC
                + u64::from(local.nanosecond() % 1_000_000_000);
            let start = now.saturating_sub(into_hour);
            (
                start,
                start.saturating_add(NS_PER_HOUR).max(now.saturating_add(1)),
            )
        }
        CalendarWindow::Day => {
            let day = local.date();
            let next = day.succ_opt().unwrap_or(day);
            boundaries(tz, now, day, next)
        }
        CalendarWindow::Month => {
            let first =
                NaiveDate::from_ymd_opt(local.year(), local.month(), 1).unwrap_or(local.date());
            let next = if local.month() == 12 {
                NaiveDate::from_ymd_opt(local.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(local.year(), local.month() + 1, 1)
            }
            .unwrap_or(first);
            boundaries(tz, now, first, next)
        }
    }
}

/// Start of the window containing `now`.
pub fn start(window: CalendarWindow, tz: Tz, now: Nanos) -> Nanos {
    bounds(window, tz, now).0
}

/// End (exclusive) of the window containing `now`.
pub fn end(window: CalendarWindow, tz: Tz, now: Nanos) -> Nanos {
    bounds(window, tz, now).1
}

fn boundaries(tz: Tz, now: Nanos, first: NaiveDate, next: NaiveDate) -> (Nanos, Nanos) {
    let start = local_midnight(tz, first, now, Pick::EarliestAtOrBefore).min(now);
    let end = local_midnight(tz, next, now, Pick::EarliestAfter).max(now.saturating_add(1));
    (start, end)
}

#[derive(Clone, Copy)]
enum Pick {
    /// The earliest occurrence at or before `now` (a window's start).
    EarliestAtOrBefore,
    /// The earliest occurrence after `now` (a window's end).
    EarliestAfter,
}

/// The instant of `date` 00:00 local, resolving DST gaps and folds.
fn local_midnight(tz: Tz, date: NaiveDate, now: Nanos, pick: Pick) -> Nanos {
    let midnight = date.and_time(chrono::NaiveTime::MIN);
    // A nonexistent local time lies in a spring-forward gap: the first valid local time after it
    // is the transition itself. Gaps are whole multiples of 15 minutes in every real zone (the
    // longest, Samoa 2011, skipped a whole day), so stepping 15 minutes lands on the transition.
    let mut naive = midnight;
    for _ in 0..=(4 * 24 * 2) {
        match tz.from_local_datetime(&naive) {
            LocalResult::Single(t) => return from_dt(t),
            LocalResult::Ambiguous(a, b) => {
                let (a, b) = (from_dt(a), from_dt(b));
                let (a, b) = (a.min(b), a.max(b));
                return match pick {
                    Pick::EarliestAtOrBefore => {
                        if a <= now {
                            a
                        } else {
                            b
                        }
                    }
                    Pick::EarliestAfter => {
                        if a > now {
                            a
                        } else {
                            b
                        }
                    }
                };
            }
            LocalResult::None => naive = step(naive),
        }
    }
    // Unreachable for real zones; fall back to reading the naive time as UTC.
    from_naive_utc(midnight)
}

fn step(naive: NaiveDateTime) -> NaiveDateTime {
    naive
        .checked_add_signed(Duration::minutes(15))
        .unwrap_or(naive)
}

fn to_i64(now: Nanos) -> i64 {
    i64::try_from(now).unwrap_or(i64::MAX)
}

fn from_dt<T: TimeZone>(t: chrono::DateTime<T>) -> Nanos {
    match t.timestamp_nanos_opt() {
        Some(n) => u64::try_from(n).unwrap_or(0),
        None if t.timestamp() < 0 => 0,
        None => u64::MAX,
    }
}

fn from_naive_utc(naive: NaiveDateTime) -> Nanos {
    from_dt(naive.and_utc())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn utc(s: &str) -> Nanos {
        let t = chrono::DateTime::parse_from_rfc3339(s).unwrap();
        u64::try_from(t.with_timezone(&Utc).timestamp_nanos_opt().unwrap()).unwrap()
    }

    const H: u64 = NS_PER_HOUR;

    #[test]
    fn day_in_utc() {
        let (s, e) = bounds(CalendarWindow::Day, Tz::UTC, utc("2024-05-17T13:45:00Z"));
        assert_eq!(s, utc("2024-05-17T00:00:00Z"));
        assert_eq!(e, utc("2024-05-18T00:00:00Z"));
    }

    #[test]
    fn day_in_new_york_is_local_midnight() {
        let ny = chrono_tz::America::New_York;
        // 02:00 UTC on the 18th is 22:00 EDT on the 17th.
        let (s, e) = bounds(CalendarWindow::Day, ny, utc("2024-05-18T02:00:00Z"));
        assert_eq!(s, utc("2024-05-17T04:00:00Z"));
        assert_eq!(e, utc("2024-05-18T04:00:00Z"));
    }

    #[test]
    fn new_york_spring_forward_day_is_23_hours() {
        let ny = chrono_tz::America::New_York;
        let (s, e) = bounds(CalendarWindow::Day, ny, utc("2024-03-10T12:00:00Z"));
        assert_eq!(s, utc("2024-03-10T05:00:00Z")); // midnight EST
        assert_eq!(e, utc("2024-03-11T04:00:00Z")); // midnight EDT
        assert_eq!(e - s, 23 * H);
    }

    #[test]
    fn new_york_fall_back_day_is_25_hours() {
        let ny = chrono_tz::America::New_York;
        let (s, e) = bounds(CalendarWindow::Day, ny, utc("2024-11-03T12:00:00Z"));
        assert_eq!(s, utc("2024-11-03T04:00:00Z")); // midnight EDT
        assert_eq!(e, utc("2024-11-04T05:00:00Z")); // midnight EST
        assert_eq!(e - s, 25 * H);
    }

    #[test]
    fn month_starts_on_the_first_local_midnight() {
        let ny = chrono_tz::America::New_York;
        // 2024-03-01T03:00Z is still February 29th in New York.
        let (s, e) = bounds(CalendarWindow::Month, ny, utc("2024-03-01T03:00:00Z"));
        assert_eq!(s, utc("2024-02-01T05:00:00Z"));
        assert_eq!(e, utc("2024-03-01T05:00:00Z"));
        // March has the DST change: 31 days minus one hour.
        let (s, e) = bounds(CalendarWindow::Month, ny, utc("2024-03-15T00:00:00Z"));
        assert_eq!(s, utc("2024-03-01T05:00:00Z"));
        assert_eq!(e, utc("2024-04-01T04:00:00Z"));
        // December rolls into the next year.
        let (s, e) = bounds(CalendarWindow::Month, Tz::UTC, utc("2024-12-31T23:59:59Z"));
        assert_eq!(s, utc("2024-12-01T00:00:00Z"));
        assert_eq!(e, utc("2025-01-01T00:00:00Z"));
    }

    #[test]
    fn hour_is_the_utc_hour_for_whole_hour_zones() {
        let ny = chrono_tz::America::New_York;
        let now = utc("2024-05-17T13:45:10Z");
        assert_eq!(
            bounds(CalendarWindow::Hour, ny, now),
            (utc("2024-05-17T13:00:00Z"), utc("2024-05-17T14:00:00Z"))
        );
        // Both 01:00 local hours of the fall-back day are windows of their own.
        let first = bounds(CalendarWindow::Hour, ny, utc("2024-11-03T05:30:00Z"));
        let second = bounds(CalendarWindow::Hour, ny, utc("2024-11-03T06:30:00Z"));
        assert_eq!(
            first,
            (utc("2024-11-03T05:00:00Z"), utc("2024-11-03T06:00:00Z"))
        );
        assert_eq!(
            second,
            (utc("2024-11-03T06:00:00Z"), utc("2024-11-03T07:00:00Z"))
        );
    }

    #[test]
    fn hour_follows_half_hour_offsets() {
        let kolkata = chrono_tz::Asia::Kolkata; // UTC+05:30
        let (s, e) = bounds(CalendarWindow::Hour, kolkata, utc("2024-05-17T13:45:00Z"));
        assert_eq!(s, utc("2024-05-17T13:30:00Z"));
        assert_eq!(e, utc("2024-05-17T14:30:00Z"));
    }

    #[test]
    fn nonexistent_midnight_starts_at_the_transition() {
        // America/Santiago springs forward at 24:00 -> 01:00 (2024-09-08: 00:00 local does not exist).
        let tz = chrono_tz::America::Santiago;
        let (s, e) = bounds(CalendarWindow::Day, tz, utc("2024-09-08T12:00:00Z"));
        assert_eq!(s, utc("2024-09-08T04:00:00Z")); // 00:00 -04 == 01:00 -03
        assert_eq!(e, utc("2024-09-09T03:00:00Z"));
        // Samoa skipped 2011-12-30 entirely: the 29th ends when the 31st begins.
        let apia = chrono_tz::Pacific::Apia;
        let (s, e) = bounds(CalendarWindow::Day, apia, utc("2011-12-30T05:00:00Z"));
        assert_eq!(e, utc("2011-12-30T10:00:00Z"));
        assert_eq!(e - s, 24 * H);
    }

    /// The UTC fast path answers what the time zone database does, from 1970 to its last instant
    /// and across every month end and leap day in between.
    #[test]
    fn utc_without_the_zone_database_agrees_with_it() {
        let windows = [
            CalendarWindow::Hour,
            CalendarWindow::Day,
            CalendarWindow::Month,
        ];
        let check_in = |tz: Tz, now: Nanos| {
            for w in windows {
                assert_eq!(bounds(w, tz, now), zone_bounds(w, tz, now), "{w:?} {now}");
            }
        };
        let check = |now: Nanos| check_in(Tz::UTC, now);
        // Every day boundary (± 1 ns) and a mid-day instant, 1970 to 2262.
        let mut day = 0;
        while day * NS_PER_DAY <= u64::MAX - NS_PER_DAY {
            let at = day * NS_PER_DAY;
            for now in [at.saturating_sub(1), at, at + 1, at + 13 * NS_PER_HOUR + 7] {
                check(now);
            }
            day += 1;
        }
        // The end of the range, where the fast path hands over.
        for back in 0..(40 * 24) {
            for tz in [Tz::UTC, Tz::Etc__UTC] {
                check_in(tz, u64::MAX - back * NS_PER_HOUR);
                check_in(tz, i64::MAX as u64 - back * NS_PER_HOUR);
                check_in(tz, back * 997 * NS_PER_HOUR);
            }
        }
        assert!(utc_bounds(CalendarWindow::Day, UTC_FAST_UNTIL).is_some());
        assert!(utc_bounds(CalendarWindow::Day, UTC_FAST_UNTIL + 1).is_none());
    }

    #[test]
    fn window_always_contains_now() {
        let zones = [
            Tz::UTC,
            chrono_tz::America::New_York,
            chrono_tz::America::Santiago,
            chrono_tz::Australia::Lord_Howe,
            chrono_tz::Asia::Kathmandu,
            chrono_tz::Pacific::Apia,
        ];
        let mut now = utc("2011-01-01T00:00:00Z");
        let stop = utc("2012-06-01T00:00:00Z");
        while now < stop {
            for tz in zones {
                for w in [
                    CalendarWindow::Hour,
                    CalendarWindow::Day,
                    CalendarWindow::Month,
                ] {
                    let (s, e) = bounds(w, tz, now);
                    assert!(s <= now && now < e, "{tz} {w:?} {now}: {s}..{e}");
                }
            }
            now += 37 * 60 * NS_PER_SEC + 13;
        }
    }
}
