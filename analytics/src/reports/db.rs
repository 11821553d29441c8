//! The statements' tables: `statements` (closed statements, their bytes and frozen lines),
//! `statement_adjustments` (what later statements carried for a closed period) and `active_orgs`
//! (who had usage on a day). Plain queries: the job runs a few per period and org, never per event.

use std::collections::{BTreeMap, BTreeSet};

use futures::TryStreamExt;
use scylla::frame::types::Consistency;
use scylla::statement::Statement as Cql;
use scylla::value::CqlTimestamp;

use crate::reports::period::{label_year, Period};
use crate::reports::statement::{Adjust, LineKey, Tokens, Usage};
use crate::store::{db, Store, StoreError};

/// A closed statement as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub period: String,
    pub kind: String,
    pub tz: String,
    pub json: String,
    pub csv: String,
    /// The lines as frozen at close (what adjustments are measured against).
    pub snapshot: Usage,
    /// The adjustments this statement carries (recorded in `statement_adjustments`).
    pub adjustments: Vec<Adjust>,
    pub event_id: String,
    pub closed_by: String,
    /// Whether its `report.generated` event was acknowledged by the broker.
    pub emitted: bool,
}

/// A closed statement's identity, range and frozen lines, without its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub period: String,
    pub kind: String,
    pub tz: String,
    /// The UTC range `[start, end)` the statement covers, as it states (`from`, `to`): the local
    /// period's, or from where the org's previous statement ended after a zone change.
    pub start: i64,
    pub end: i64,
    pub snapshot: Usage,
}

/// The range a stored statement states; the nominal period's when its JSON names none.
fn stated_range(json: &str, period: &str, tz: &str) -> (i64, i64) {
    let at = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_millis())
    };
    let body: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    match (at(&body["from"]), at(&body["to"])) {
        (Some(start), Some(end)) => (start, end),
        _ => {
            let tz = tz.parse().unwrap_or(chrono_tz::Tz::UTC);
            Period::parse(period, tz).map_or((0, 0), |p| (p.start, p.end))
        }
    }
}

fn encode_usage(u: &Usage) -> String {
    let lines: Vec<(&LineKey, &Tokens)> = u.iter().collect();
    serde_json::to_string(&lines).unwrap_or_default()
}

fn decode_usage(s: &str) -> Usage {
    serde_json::from_str::<Vec<(LineKey, Tokens)>>(s)
        .map(|v| v.into_iter().collect())
        .unwrap_or_default()
}

type StoredColumns = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<bool>,
);

/// `org`'s closed statement for `label`, read at SERIAL (it was written with a lightweight
/// transaction, so this sees the winner of a race).
pub async fn get(store: &Store, org: &str, label: &str) -> Result<Option<Stored>, StoreError> {
    let ks = store.keyspace();
    let mut q = Cql::new(format!(
        "SELECT kind, tz, json, csv, snapshot, adjustments, event_id, period, closed_by, emitted \
         FROM {ks}.statements WHERE org = ? AND year = ? AND period = ?"
    ));
    q.set_consistency(Consistency::Serial);
    let res = store
        .session()
        .query_unpaged(q, (org, label_year(label), label))
        .await
        .map_err(db)?
        .into_rows_result()
        .map_err(db)?;
    let row = res.maybe_first_row::<StoredColumns>().map_err(db)?;
    Ok(row.map(
        |(kind, tz, json, csv, snap, adj, event_id, period, by, emitted)| Stored {
            period,
            kind,
            tz,
            json,
            csv,
            snapshot: decode_usage(&snap),
            adjustments: serde_json::from_str(&adj).unwrap_or_default(),
            event_id,
            closed_by: by.unwrap_or_default(),
            emitted: emitted.unwrap_or(false),
        },
    ))
}

/// Stores `s` unless a statement for its period exists (`IF NOT EXISTS`); the caller reads the
/// winner back with [`get`].
pub async fn insert(store: &Store, org: &str, s: &Stored) -> Result<(), StoreError> {
    let ks = store.keyspace();
    let q = format!(
        "INSERT INTO {ks}.statements (org, year, period, kind, tz, json, csv, snapshot, \
         adjustments, event_id, closed_by, emitted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, false) \
         IF NOT EXISTS"
    );
    let adjustments = serde_json::to_string(&s.adjustments).unwrap_or_default();
    let values = (
        org,
        label_year(&s.period),
        &s.period,
        &s.kind,
        &s.tz,
        &s.json,
        &s.csv,
        encode_usage(&s.snapshot),
        adjustments,
        &s.event_id,
        &s.closed_by,
    );
    store.session().query_unpaged(q, values).await.map_err(db)?;
    Ok(())
}

/// Marks the statement's `report.generated` as published (a lightweight transaction too: the row
/// was written by one, and mixing plain writes into Paxos-managed rows is unsafe).
pub async fn mark_emitted(store: &Store, org: &str, label: &str) -> Result<(), StoreError> {
    let ks = store.keyspace();
    let q = format!(
        "UPDATE {ks}.statements SET emitted = true WHERE org = ? AND year = ? AND period = ? \
         IF EXISTS"
    );
    store
        .session()
        .query_unpaged(q, (org, label_year(label), label))
        .await
        .map_err(db)?;
    Ok(())
}

/// `org`'s closed statements in `years`, by period.
pub async fn list(store: &Store, org: &str, years: &[i32]) -> Result<Vec<Summary>, StoreError> {
    let ks = store.keyspace();
    let q = format!(
        "SELECT period, kind, tz, snapshot, json FROM {ks}.statements WHERE org = ? AND year = ?"
    );
    let mut out = Vec::new();
    for year in years {
        let mut rows = store
            .session()
            .query_iter(q.clone(), (org, *year))
            .await
            .map_err(db)?
            .rows_stream::<(String, String, String, String, String)>()
            .map_err(db)?;
        while let Some((period, kind, tz, snap, json)) = rows.try_next().await.map_err(db)? {
            let (start, end) = stated_range(&json, &period, &tz);
            out.push(Summary {
                period,
                kind,
                tz,
                start,
                end,
                snapshot: decode_usage(&snap),
            });
        }
    }
    out.sort_by(|a, b| a.period.cmp(&b.period));
    Ok(out)
}

fn price_key(from: Option<i64>) -> String {
    from.map(|f| f.to_string()).unwrap_or_default()
}

/// What statements already carried for closed period `label` (summed over them).
pub async fn carried(store: &Store, org: &str, label: &str) -> Result<Usage, StoreError> {
    let ks = store.keyspace();
    let q = format!(
        "SELECT model, price_from, requests, prompt_tokens, completion_tokens \
         FROM {ks}.statement_adjustments WHERE org = ? AND period = ?"
    );
    let mut rows = store
        .session()
        .query_iter(q, (org, label))
        .await
        .map_err(db)?
        .rows_stream::<(String, String, i64, i64, i64)>()
        .map_err(db)?;
    let mut out = Usage::new();
    while let Some((model, from, requests, prompt, completion)) =
        rows.try_next().await.map_err(db)?
    {
        let key = LineKey {
            model,
            price_from: from.parse().ok(),
        };
        let t = Tokens {
            requests,
            prompt,
            completion,
        };
        crate::reports::statement::merge(&mut out, [(key, t)]);
    }
    Ok(out)
}

/// Records the adjustments statement `carried_in` carries (idempotent: the same rows again).
pub async fn record_carried(
    store: &Store,
    org: &str,
    carried_in: &str,
    adjustments: &[Adjust],
) -> Result<(), StoreError> {
    let ks = store.keyspace();
    let q = format!(
        "INSERT INTO {ks}.statement_adjustments (org, period, carried_in, model, price_from, \
         requests, prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    );
    for a in adjustments {
        let values = (
            org,
            &a.period,
            carried_in,
            &a.key.model,
            price_key(a.key.price_from),
            a.delta.requests,
            a.delta.prompt,
            a.delta.completion,
        );
        store
            .session()
            .query_unpaged(q.clone(), values)
            .await
            .map_err(db)?;
    }
    Ok(())
}

/// The orgs with usage recorded on any UTC day overlapping `p` (sorted, distinct).
pub async fn active_orgs(store: &Store, p: &Period) -> Result<Vec<String>, StoreError> {
    Ok(active_days(store, p.start, p.end)
        .await?
        .into_keys()
        .collect())
}

/// For each org with usage recorded on a UTC day overlapping `[from, to)`, those days (their
/// starts, UTC milliseconds).
pub async fn active_days(
    store: &Store,
    from: i64,
    to: i64,
) -> Result<BTreeMap<String, BTreeSet<i64>>, StoreError> {
    let ks = store.keyspace();
    let q = format!("SELECT org FROM {ks}.active_orgs WHERE day = ?");
    let mut out: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    let mut day = crate::buckets::Level::Day.floor(from);
    while day < to {
        let mut rows = store
            .session()
            .query_iter(q.clone(), (CqlTimestamp(day),))
            .await
            .map_err(db)?
            .rows_stream::<(String,)>()
            .map_err(db)?;
        while let Some((org,)) = rows.try_next().await.map_err(db)? {
            out.entry(org).or_default().insert(day);
        }
        day += crate::buckets::DAY_MS;
    }
    Ok(out)
}
