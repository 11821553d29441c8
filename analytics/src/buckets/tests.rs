use super::*;
use chrono_tz::Tz;

fn ms(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .unwrap_or(i64::MIN)
}

#[test]
fn utc_levels_floor_and_partition() {
    let t = ms("2026-03-15T10:42:17.250Z");
    assert_eq!(Level::Minute.floor(t), ms("2026-03-15T10:42:00Z"));
    assert_eq!(Level::Hour.floor(t), ms("2026-03-15T10:00:00Z"));
    assert_eq!(Level::Day.floor(t), ms("2026-03-15T00:00:00Z"));
    assert_eq!(Level::Minute.partition(t), ms("2026-03-15T00:00:00Z"));
    assert_eq!(Level::Hour.partition(t), ms("2026-03-01T00:00:00Z"));
    assert_eq!(Level::Day.partition(t), ms("2026-01-01T00:00:00Z"));
    // Before the epoch floors down, not toward zero.
    assert_eq!(Level::Minute.floor(-1), -MINUTE_MS);
}

#[test]
fn partitions_cover_a_range_in_order() {
    let from = ms("2026-01-30T12:00:00Z");
    let to = ms("2026-03-02T00:00:00Z");
    assert_eq!(
        Level::Hour.partitions(from, to),
        vec![
            ms("2026-01-01T00:00:00Z"),
            ms("2026-02-01T00:00:00Z"),
            ms("2026-03-01T00:00:00Z")
        ]
    );
    assert_eq!(Level::Minute.partitions(from, from + DAY_MS).len(), 2);
    assert_eq!(
        Level::Day.partitions(ms("2025-12-31T00:00:00Z"), ms("2026-01-01T00:00:01Z")),
        vec![ms("2025-01-01T00:00:00Z"), ms("2026-01-01T00:00:00Z")]
    );
}

#[test]
fn local_days_and_months_follow_the_zone() {
    let ny: Tz = "America/New_York".parse().unwrap_or(Tz::UTC);
    // 03:00 UTC on the 15th is still the 14th in New York (UTC-4 in summer).
    let t = ms("2026-07-15T03:00:00Z");
    assert_eq!(
        local_floor(&ny, Granularity::Day, t),
        ms("2026-07-14T04:00:00Z")
    );
    assert_eq!(
        local_floor(&ny, Granularity::Month, t),
        ms("2026-07-01T04:00:00Z")
    );
    // The day of the spring-forward switch lasts 23 hours, the fall-back one 25.
    let spring = ms("2026-03-08T05:00:00Z");
    assert_eq!(
        local_next(&ny, Granularity::Day, spring),
        ms("2026-03-09T04:00:00Z")
    );
    let fall = ms("2026-11-01T04:00:00Z");
    assert_eq!(
        local_next(&ny, Granularity::Day, fall),
        ms("2026-11-02T05:00:00Z")
    );
    // February is short; the next month is still March 1st.
    let feb = local_floor(&ny, Granularity::Month, ms("2026-02-10T12:00:00Z"));
    assert_eq!(
        local_next(&ny, Granularity::Month, feb),
        ms("2026-03-01T05:00:00Z")
    );
}

#[test]
fn half_hour_zones_floor_hours_on_the_half_hour() {
    let kolkata: Tz = "Asia/Kolkata".parse().unwrap_or(Tz::UTC);
    let t = ms("2026-05-01T10:10:00Z"); // 15:40 local
    assert_eq!(
        local_floor(&kolkata, Granularity::Hour, t),
        ms("2026-05-01T09:30:00Z")
    );
    assert_eq!(
        local_floor(&kolkata, Granularity::Day, t),
        ms("2026-04-30T18:30:00Z")
    );
    assert_eq!(
        local_floor(&Tz::UTC, Granularity::Hour, t),
        ms("2026-05-01T10:00:00Z")
    );
}

#[test]
fn totals_add_exactly() {
    let mut a = Totals {
        requests: 1,
        prompt_tokens: 10,
        cost: Decimal::new(125, 3),
        ..Totals::default()
    };
    a.add(&Totals {
        requests: 2,
        errors: 1,
        prompt_tokens: 5,
        completion_tokens: 7,
        total_tokens: 12,
        latency_us: 1500,
        cost: Decimal::new(375, 3),
    });
    assert_eq!((a.requests, a.errors, a.prompt_tokens), (3, 1, 15));
    assert_eq!(a.cost, Decimal::new(5, 1));
}
