//! Statements (issue 16, "Reports and billing export"): per org, daily and monthly, in a time zone,
//! with line items per model and price version, totals, and JSON and CSV renderings that are
//! byte-reproducible.
//!
//! - [`api`]: the statement and price routes;
//! - [`period`]: a local day or month as a UTC range;
//! - [`statement`]: lines, rounding and the two renderings (pure);
//! - [`db`]: closed statements, carried adjustments and active orgs in Cassandra;
//! - [`job`]: the periodic closer (a period closes once it is over plus a grace; `IF NOT EXISTS` so
//!   racing replicas agree on one statement) and the `report.generated` event.
//!
//! Counts come from the per-model rollups (hour rows, or minute rows for a zone whose offset is not
//! a whole number of hours), never from the raw events, which expire. A closed statement is frozen:
//! a late event for its period changes the rollups, and the next statement of the same kind for the
//! org carries an adjustment line per (closed period, model, price version) whose current counts
//! differ from the frozen ones plus what earlier statements carried. Once that statement is stored,
//! its adjustments are recorded, so each difference is carried exactly once.

pub mod api;
pub mod db;
pub mod job;
pub mod period;
pub mod statement;

use crate::buckets::{Level, DAY_MS, HOUR_MS};
use crate::prices::PriceBook;
use crate::store::{Dim, Store, StoreError};
use period::Period;
use statement::{Adjust, Statement, Usage};

/// Closed periods this far back (before the new statement's start) are checked for adjustments:
/// the consumer refuses events older than 30 days, and a month is at most 31.
pub const ADJUST_LOOKBACK_MS: i64 = 62 * DAY_MS;

/// The rollup level whose buckets nest in `p`: hours when both ends fall on whole UTC hours.
fn source_level(p: &Period) -> Level {
    if p.start % HOUR_MS == 0 && p.end % HOUR_MS == 0 {
        Level::Hour
    } else {
        Level::Minute
    }
}

/// `org`'s usage in `p` per line, from the rollups.
pub async fn usage(
    store: &Store,
    book: &PriceBook,
    org: &str,
    p: &Period,
) -> Result<Usage, StoreError> {
    let rows = store
        .read(org, source_level(p), Dim::Model, p.start, p.end)
        .await?;
    Ok(statement::group(book, &rows))
}

/// The widest two zones' offsets differ (UTC−12 to UTC+14), with an hour's margin.
pub const ZONE_SHIFT_MS: i64 = 27 * HOUR_MS;

/// `p` as `org` is billed for it, given its closed statements: after a zone change, the first
/// period in the new zone starts where the last statement closed in the old zone ended (before or
/// after the new zone's midnight), so no usage is billed twice or never. Unchanged otherwise —
/// also across a gap of inactive periods in one zone, which [`ZONE_SHIFT_MS`] and the zone check
/// keep from being stretched over.
pub fn align(p: &Period, closed: &[db::Summary]) -> Period {
    let prev = closed
        .iter()
        .filter(|s| s.kind == p.kind.as_str() && s.period < p.label)
        .filter(|s| s.end <= p.end && s.end > p.start - ZONE_SHIFT_MS)
        .max_by_key(|s| s.end);
    match prev {
        Some(s) if s.tz != p.tz.name() => Period {
            start: s.end,
            ..p.clone()
        },
        _ => p.clone(),
    }
}

/// The adjustments a statement for `p` carries: for each closed statement of the same kind before
/// `p` (within [`ADJUST_LOOKBACK_MS`]), the lines whose counts changed since they were frozen and
/// not yet carried. `closed` is the org's closed statements ([`db::list`]).
pub async fn pending_adjustments(
    store: &Store,
    book: &PriceBook,
    org: &str,
    p: &Period,
    closed: Vec<db::Summary>,
) -> Result<Vec<Adjust>, StoreError> {
    let mut out = Vec::new();
    for s in closed {
        if s.kind != p.kind.as_str() || s.period >= p.label {
            continue;
        }
        if s.end < p.start - ADJUST_LOOKBACK_MS {
            continue;
        }
        // The range the statement covered, as it states it (a zone change may have moved its start).
        let cp = Period {
            kind: p.kind,
            label: s.period.clone(),
            tz: s.tz.parse().unwrap_or(chrono_tz::Tz::UTC),
            start: s.start,
            end: s.end,
        };
        let current = usage(store, book, org, &cp).await?;
        let mut frozen = s.snapshot;
        statement::merge(&mut frozen, db::carried(store, org, &cp.label).await?);
        out.extend(statement::adjustments(&cp.label, &current, &frozen));
    }
    Ok(out)
}

/// A statement computed now: its contents, its usage (the snapshot a closed one freezes) and the
/// adjustments it carries.
pub struct Composed {
    pub statement: Statement,
    pub usage: Usage,
    pub adjustments: Vec<Adjust>,
}

/// Computes `org`'s statement for `p` (`closed` only changes its `status`), over `p` as
/// [`align`]ed to the org's closed statements.
pub async fn compose(
    store: &Store,
    book: &PriceBook,
    org: &str,
    p: &Period,
    closed: bool,
) -> Result<Composed, StoreError> {
    let year = p.year();
    let stored = db::list(store, org, &[year - 1, year]).await?;
    let p = &align(p, &stored);
    let usage = usage(store, book, org, p).await?;
    let adjustments = pending_adjustments(store, book, org, p, stored).await?;
    let statement = statement::build(org, p, closed, book, &usage, &adjustments);
    Ok(Composed {
        statement,
        usage,
        adjustments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Tz;
    use period::Kind;

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).map_or(-1, |t| t.timestamp_millis())
    }

    fn closed(label: &str, tz: Tz) -> db::Summary {
        let p = Period::parse(label, tz).unwrap_or_else(|_| Period::containing(Kind::Day, tz, 0));
        db::Summary {
            period: label.into(),
            kind: "day".into(),
            tz: tz.name().into(),
            start: p.start,
            end: p.end,
            snapshot: statement::Usage::new(),
        }
    }

    #[test]
    fn a_zone_change_continues_where_the_old_zone_ended() -> Result<(), crate::query::BadQuery> {
        let nz = chrono_tz::Pacific::Auckland;
        // East (UTC → Auckland): the first Auckland day starts at the UTC day's end, not 13 h before.
        let utc = [closed("2026-10-09", Tz::UTC), closed("2026-10-10", Tz::UTC)];
        let p = align(&Period::parse("2026-10-11", nz)?, &utc);
        assert_eq!(
            (p.start, p.end),
            (ms("2026-10-11T00:00:00Z"), ms("2026-10-11T11:00:00Z"))
        );
        // West (Auckland → UTC): the first UTC day starts at the Auckland day's end, 11 h before.
        let auckland = [closed("2026-10-10", nz)];
        let p = align(&Period::parse("2026-10-11", Tz::UTC)?, &auckland);
        assert_eq!(
            (p.start, p.end),
            (ms("2026-10-10T11:00:00Z"), ms("2026-10-12T00:00:00Z"))
        );
        // The same zone, consecutive or after a gap: unchanged.
        let p = Period::parse("2026-10-12", Tz::UTC)?;
        assert_eq!(align(&p, &utc), p);
        let p = Period::parse("2026-10-11", Tz::UTC)?;
        assert_eq!(align(&p, &utc), p);
        // A statement of another zone long before (over a day of offsets away): unchanged.
        let p = Period::parse("2026-10-20", nz)?;
        assert_eq!(align(&p, &utc), p);
        Ok(())
    }
}
