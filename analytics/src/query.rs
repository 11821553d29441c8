//! The usage query: parameters, which rollup level answers them, and how its rows fold into the
//! caller's buckets. Pure (the rows come from [`crate::store::Store::read`]), so the planning and
//! the folding are unit-tested without Cassandra.
//!
//! Time zones: rollups are kept in UTC. A caller's local day or month is assembled from UTC hours
//! when the zone's offset is a whole number of hours over the range (most zones), from UTC minutes
//! otherwise (India, Nepal, parts of Australia…); in UTC, days come from day rows and months from
//! day rows. Minute rows live as long as raw events (35 days), so a half-hour zone's daily report
//! reaches back that far; whole-hour zones and UTC reach back indefinitely.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Offset, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::buckets::{local_floor, local_next, Granularity, Level, Totals, DAY_MS, HOUR_MS};
use crate::store::{Dim, RollupRow};

/// At most this many buckets in one answer.
pub const MAX_BUCKETS: usize = 10_000;
/// Minute rows are read for at most this long a range.
pub const MAX_MINUTE_RANGE_MS: i64 = 31 * DAY_MS;

/// `GET /v1/orgs/{org}/usage` query string.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UsageParams {
    /// RFC 3339, or a date (`2026-03-01`: local midnight in `tz`). Default: 30 days before `to`.
    pub from: Option<String>,
    /// Exclusive end, same forms. Default: now.
    pub to: Option<String>,
    pub granularity: Option<Granularity>,
    pub group_by: Option<Dim>,
    /// An IANA zone name (`Europe/Berlin`); default UTC.
    pub tz: Option<String>,
    /// Only this key's usage.
    pub key: Option<String>,
    /// Only this model's usage.
    pub model: Option<String>,
    /// Only this provider's usage.
    pub provider: Option<String>,
}

/// Why a query cannot be answered (a 400 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadQuery(pub String);

/// A checked query: what to read and how to fold it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub tz: Tz,
    pub granularity: Granularity,
    /// The caller's buckets, by start; the last entry is the end of the last bucket.
    pub edges: Vec<i64>,
    /// The rollup level read and the dimension read at it.
    pub level: Level,
    pub dim: Dim,
    /// Keep only rows with this dimension value (a filter), if any.
    pub only: Option<String>,
    /// Whether the series is split by the dimension's value.
    pub grouped: bool,
}

impl Plan {
    pub fn from(&self) -> i64 {
        self.edges.first().copied().unwrap_or_default()
    }
    pub fn to(&self) -> i64 {
        self.edges.last().copied().unwrap_or_default()
    }
}

/// Parses an instant: RFC 3339, or a date meaning its local midnight in `tz`.
pub fn parse_instant(s: &str, tz: &Tz) -> Result<i64, BadQuery> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .and_then(|t| tz.from_local_datetime(&t).earliest())
        .map(|t| t.timestamp_millis())
        .ok_or_else(|| BadQuery(format!("{s:?} is neither RFC 3339 nor a YYYY-MM-DD date")))
}

/// The filter a query names (at most one of key, model, provider).
fn filter(p: &UsageParams) -> Result<Option<(Dim, String)>, BadQuery> {
    let named: Vec<(Dim, &String)> = [
        (Dim::Key, p.key.as_ref()),
        (Dim::Model, p.model.as_ref()),
        (Dim::Provider, p.provider.as_ref()),
    ]
    .into_iter()
    .filter_map(|(d, v)| v.map(|v| (d, v)))
    .collect();
    match named.as_slice() {
        [] => Ok(None),
        [(d, v)] => Ok(Some((*d, (*v).clone()))),
        _ => Err(BadQuery(
            "filter on one of key, model, provider at a time".into(),
        )),
    }
}

/// Checks `p` against `now` and plans the read.
pub fn plan(p: &UsageParams, now: i64) -> Result<Plan, BadQuery> {
    let tz: Tz = match p.tz.as_deref() {
        None | Some("") => Tz::UTC,
        Some(name) => name
            .parse()
            .map_err(|_| BadQuery(format!("unknown time zone {name:?}")))?,
    };
    let granularity = p.granularity.unwrap_or(Granularity::Day);
    let to =
        p.to.as_deref()
            .map(|s| parse_instant(s, &tz))
            .transpose()?
            .unwrap_or(now);
    let from = match p.from.as_deref() {
        Some(s) => parse_instant(s, &tz)?,
        None => to - 30 * DAY_MS,
    };
    if from >= to {
        return Err(BadQuery("from must be before to".into()));
    }
    let edges = edges(&tz, granularity, from, to)?;
    let filter = filter(p)?;
    let (dim, only, grouped) = match (filter, p.group_by) {
        (Some((d, v)), None) => (d, Some(v), false),
        (Some((d, v)), Some(g)) if g == d => (d, Some(v), true),
        (Some(_), Some(g)) if g != Dim::All => {
            return Err(BadQuery(
                "group_by and a filter must name the same dimension".into(),
            ))
        }
        (Some((d, v)), Some(_)) => (d, Some(v), false),
        (None, g) => (
            g.unwrap_or(Dim::All),
            None,
            g.is_some_and(|g| g != Dim::All),
        ),
    };
    let level = source_level(&tz, granularity, from, to);
    let plan = Plan {
        tz,
        granularity,
        edges,
        level,
        dim,
        only,
        grouped,
    };
    if level == Level::Minute && plan.to() - plan.from() > MAX_MINUTE_RANGE_MS {
        return Err(BadQuery(
            "this granularity and time zone read minute rollups: at most 31 days per query".into(),
        ));
    }
    Ok(plan)
}

/// The caller's bucket edges covering `[from, to)`.
fn edges(tz: &Tz, g: Granularity, from: i64, to: i64) -> Result<Vec<i64>, BadQuery> {
    let mut edges = vec![local_floor(tz, g, from)];
    while let Some(&last) = edges.last() {
        if last >= to {
            break;
        }
        if edges.len() > MAX_BUCKETS {
            return Err(BadQuery(format!(
                "more than {MAX_BUCKETS} buckets: use a coarser granularity or a shorter range"
            )));
        }
        edges.push(local_next(tz, g, last));
    }
    Ok(edges)
}

/// Whether `tz`'s offset is a whole number of hours at `ts`.
fn whole_hours(tz: &Tz, ts: i64) -> bool {
    let at = DateTime::from_timestamp_millis(ts)
        .unwrap_or_default()
        .naive_utc();
    i64::from(tz.offset_from_utc_datetime(&at).fix().local_minus_utc()) * 1000 % HOUR_MS == 0
}

/// The coarsest rollup level whose buckets nest in the caller's.
fn source_level(tz: &Tz, g: Granularity, from: i64, to: i64) -> Level {
    let utc = *tz == Tz::UTC;
    let hourly = whole_hours(tz, from) && whole_hours(tz, to);
    match g {
        Granularity::Minute => Level::Minute,
        _ if !hourly => Level::Minute,
        Granularity::Hour => Level::Hour,
        Granularity::Day | Granularity::Month if utc => Level::Day,
        Granularity::Day | Granularity::Month => Level::Hour,
    }
}

/// One bucket of an answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// The bucket's start, RFC 3339 in the caller's zone.
    pub start: String,
    /// The dimension value (with `group_by`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(flatten)]
    pub totals: Totals,
}

/// The answer of a usage query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    pub org: String,
    pub from: String,
    pub to: String,
    pub granularity: Granularity,
    pub tz: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_by: Option<&'static str>,
    pub total: Totals,
    pub series: Vec<Point>,
}

/// Renders `ts` in `tz` (RFC 3339, seconds).
pub fn render(tz: &Tz, ts: i64) -> String {
    DateTime::from_timestamp_millis(ts)
        .unwrap_or_default()
        .with_timezone(tz)
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Folds rollup rows into the plan's buckets. Without grouping every bucket is present (zeros
/// included, ready for a chart); with grouping only the (bucket, value) pairs that have usage.
pub fn fold(org: &str, plan: &Plan, rows: &[RollupRow]) -> Usage {
    let mut by: BTreeMap<(usize, &str), Totals> = BTreeMap::new();
    let mut total = Totals::default();
    for row in rows {
        if plan.only.as_deref().is_some_and(|v| v != row.value) {
            continue;
        }
        // The bucket holding the row: the last edge at or before it.
        let i = plan.edges.partition_point(|&e| e <= row.bucket);
        if i == 0 || i >= plan.edges.len() {
            continue;
        }
        let group = if plan.grouped { row.value.as_str() } else { "" };
        by.entry((i - 1, group)).or_default().add(&row.totals);
        total.add(&row.totals);
    }
    let point = |i: usize, group: &str, totals: Totals| Point {
        start: render(&plan.tz, plan.edges[i]),
        group: plan.grouped.then(|| group.to_owned()),
        totals,
    };
    let series = if plan.grouped {
        by.into_iter().map(|((i, g), t)| point(i, g, t)).collect()
    } else {
        (0..plan.edges.len() - 1)
            .map(|i| point(i, "", by.remove(&(i, "")).unwrap_or_default()))
            .collect()
    };
    Usage {
        org: org.to_owned(),
        from: render(&plan.tz, plan.from()),
        to: render(&plan.tz, plan.to()),
        granularity: plan.granularity,
        tz: plan.tz.name().to_owned(),
        group_by: plan.grouped.then(|| plan.dim.as_str()),
        total,
        series,
    }
}

/// `GET /v1/orgs/{org}/usage/top-keys` query string.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TopKeysParams {
    pub from: Option<String>,
    pub to: Option<String>,
    /// How many keys (default 10, at most 1000).
    pub limit: Option<usize>,
    /// `total_tokens` (default) or `requests`.
    pub by: Option<String>,
}

/// One key of a top-N answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyUsage {
    pub key_id: String,
    #[serde(flatten)]
    pub totals: Totals,
}

/// The answer of a top-keys query (whole UTC days: it reads day rollups).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopKeys {
    pub org: String,
    pub from: String,
    pub to: String,
    pub by: String,
    pub keys: Vec<KeyUsage>,
}

/// Sums day rows per key and keeps the `limit` largest by `by` (ties by key id, for stable output).
pub fn top_keys(
    org: &str,
    from: i64,
    to: i64,
    p: &TopKeysParams,
    rows: &[RollupRow],
) -> Result<TopKeys, BadQuery> {
    let by = p.by.clone().unwrap_or_else(|| "total_tokens".to_owned());
    let metric: fn(&Totals) -> i64 = match by.as_str() {
        "total_tokens" => |t| t.total_tokens,
        "requests" => |t| t.requests,
        "prompt_tokens" => |t| t.prompt_tokens,
        "completion_tokens" => |t| t.completion_tokens,
        other => return Err(BadQuery(format!("cannot rank by {other:?}"))),
    };
    let mut sums: BTreeMap<&str, Totals> = BTreeMap::new();
    for r in rows {
        sums.entry(r.value.as_str()).or_default().add(&r.totals);
    }
    let mut keys: Vec<KeyUsage> = sums
        .into_iter()
        .map(|(k, totals)| KeyUsage {
            key_id: k.to_owned(),
            totals,
        })
        .collect();
    keys.sort_by(|a, b| {
        metric(&b.totals)
            .cmp(&metric(&a.totals))
            .then(a.key_id.cmp(&b.key_id))
    });
    keys.truncate(p.limit.unwrap_or(10).clamp(1, 1000));
    Ok(TopKeys {
        org: org.to_owned(),
        from: render(&Tz::UTC, from),
        to: render(&Tz::UTC, to),
        by,
        keys,
    })
}

/// The whole UTC days covering `[from, to)` of a top-keys query.
pub fn top_keys_range(p: &TopKeysParams, now: i64) -> Result<(i64, i64), BadQuery> {
    let to =
        p.to.as_deref()
            .map(|s| parse_instant(s, &Tz::UTC))
            .transpose()?
            .unwrap_or(now);
    let from = match p.from.as_deref() {
        Some(s) => parse_instant(s, &Tz::UTC)?,
        None => to - 30 * DAY_MS,
    };
    if from >= to {
        return Err(BadQuery("from must be before to".into()));
    }
    let end = Level::Day.floor(to - 1) + DAY_MS;
    Ok((Level::Day.floor(from), end))
}

/// Now, for handlers.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests;
