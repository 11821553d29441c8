//! The Cassandra side: one [`Store`] holds the session (token-aware default load balancing, paged
//! reads) and every prepared statement; it writes raw events, recomputes rollup buckets from the
//! level below, and reads rollup rows for the query API.
//!
//! Exactly-once in effect without counters: a raw event is written under its event id (a second
//! write of the same event overwrites the same row), and a rollup row is never incremented — it is
//! recomputed from the rows below it and overwritten. Both writes are idempotent, so a redelivered
//! batch, a replay or a retried timeout converge on the same numbers. All statements are marked
//! idempotent, which lets the driver retry them when a connection breaks; a failed write fails the
//! batch, which the consumer writes again whole.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::TryStreamExt;
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlDecimal, CqlTimestamp};

use crate::buckets::{Level, Totals};
pub use crate::error::{db, StoreError};
use crate::event::UsageRow;

/// A rollup dimension: every row of a rollup table is the total of one bucket for one value of one
/// dimension (`all` has the single value `""`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dim {
    All,
    Model,
    Key,
    Provider,
}

impl Dim {
    pub const EVERY: [Dim; 4] = [Dim::All, Dim::Model, Dim::Key, Dim::Provider];

    pub fn as_str(self) -> &'static str {
        match self {
            Dim::All => "all",
            Dim::Model => "model",
            Dim::Key => "key",
            Dim::Provider => "provider",
        }
    }

    /// This dimension's value for a raw event.
    fn of<'a>(self, key: &'a str, model: &'a str, provider: &'a str) -> &'a str {
        match self {
            Dim::All => "",
            Dim::Model => model,
            Dim::Key => key,
            Dim::Provider => provider,
        }
    }
}

/// One rollup row read back: its bucket start, dimension value and sums.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupRow {
    pub bucket: i64,
    pub value: String,
    pub totals: Totals,
    /// The row's write time (µs since the epoch, Cassandra's `writetime`).
    pub written: i64,
}

/// Where to connect and what to call things.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `host:port` of one or more contact points.
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub replication_factor: u32,
    /// A name for this process in `schema_migrations.claimed_by` (unique per process).
    pub owner: String,
    /// Rows per page of a paged read.
    pub page_size: i32,
}

impl StoreConfig {
    pub fn new(nodes: &str, keyspace: &str) -> StoreConfig {
        StoreConfig {
            nodes: nodes.split(',').map(|s| s.trim().to_owned()).collect(),
            keyspace: keyspace.to_owned(),
            replication_factor: 1,
            owner: format!(
                "{}-{}",
                std::process::id(),
                chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
            ),
            page_size: 5000,
        }
    }
}

/// The prepared statements of one rollup table.
struct RollupStatements {
    insert: PreparedStatement,
    select: PreparedStatement,
}

/// The session and its prepared statements.
pub struct Store {
    session: Session,
    keyspace: String,
    insert_event: PreparedStatement,
    select_events: PreparedStatement,
    minute: RollupStatements,
    hour: RollupStatements,
    day: RollupStatements,
    insert_active: PreparedStatement,
}

const SUMS: &str =
    "requests, errors, prompt_tokens, completion_tokens, total_tokens, latency_us, cost";

/// The columns a raw-event read returns.
type EventColumns = (
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    CqlDecimal,
    i64,
);
/// The columns a rollup read returns.
type RollupColumns = (
    CqlTimestamp,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    CqlDecimal,
    i64,
);

impl Store {
    /// Connects, applies the migrations, and prepares every statement.
    pub async fn connect(cfg: &StoreConfig) -> Result<Store, StoreError> {
        let session = SessionBuilder::new()
            .known_nodes(&cfg.nodes)
            .connection_timeout(Duration::from_secs(5))
            .build()
            .await
            .map_err(db)?;
        crate::schema::migrate(&session, &cfg.keyspace, cfg.replication_factor, &cfg.owner).await?;
        let ks = &cfg.keyspace;
        let insert_event = prepare(
            &session,
            format!(
                "INSERT INTO {ks}.events (org, day, ts, event_id, request_id, key_id, model, provider, \
                 status, {SUMS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            cfg.page_size,
        )
        .await?;
        let select_events = prepare(
            &session,
            format!(
                "SELECT key_id, model, provider, {SUMS}, writetime(requests) FROM {ks}.events \
                 WHERE org = ? AND day = ? AND ts >= ? AND ts < ?"
            ),
            cfg.page_size,
        )
        .await?;
        let insert_active = prepare(
            &session,
            format!("INSERT INTO {ks}.active_orgs (day, org) VALUES (?, ?)"),
            cfg.page_size,
        )
        .await?;
        Ok(Store {
            insert_active,
            minute: rollup_statements(&session, ks, "rollup_minute", cfg.page_size).await?,
            hour: rollup_statements(&session, ks, "rollup_hour", cfg.page_size).await?,
            day: rollup_statements(&session, ks, "rollup_day", cfg.page_size).await?,
            session,
            keyspace: ks.clone(),
            insert_event,
            select_events,
        })
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    fn rollup(&self, level: Level) -> &RollupStatements {
        match level {
            Level::Minute => &self.minute,
            Level::Hour => &self.hour,
            Level::Day => &self.day,
        }
    }

    /// Writes one raw event under its id (idempotent: a redelivery overwrites the same row).
    pub async fn insert_event(&self, e: &UsageRow) -> Result<(), StoreError> {
        let t = &e.totals;
        let day = CqlTimestamp(Level::Day.floor(e.ts));
        let values = (
            &e.org,
            day,
            CqlTimestamp(e.ts),
            &e.event_id,
            &e.request_id,
            &e.key_id,
            &e.model,
            &e.provider,
            e.status,
            t.requests,
            t.errors,
            t.prompt_tokens,
            t.completion_tokens,
            t.total_tokens,
            t.latency_us,
            to_cql(t.cost),
        );
        self.session
            .execute_unpaged(&self.insert_event, values)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Records that `org` had usage (or a late event arrived for it) on the UTC day holding `ts`:
    /// the statement job closes periods for the orgs recorded in them (idempotent).
    pub async fn mark_active(&self, org: &str, ts: i64) -> Result<(), StoreError> {
        let day = CqlTimestamp(Level::Day.floor(ts));
        self.session
            .execute_unpaged(&self.insert_active, (day, org))
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Recomputes `org`'s bucket at `level` starting at `bucket` from the level below (raw events
    /// for minutes) and overwrites its rows, one per dimension value.
    pub async fn recompute(&self, org: &str, level: Level, bucket: i64) -> Result<(), StoreError> {
        let computed = self.sum_bucket(org, level, bucket).await?;
        self.write_bucket(org, level, bucket, &computed).await
    }

    /// What `org`'s bucket at `level` starting at `bucket` sums to now, from the level below.
    pub async fn sum_bucket(
        &self,
        org: &str,
        level: Level,
        bucket: i64,
    ) -> Result<Computed, StoreError> {
        match level {
            Level::Minute => self.sum_events(org, bucket).await,
            Level::Hour => self.sum_rollups(org, Level::Minute, bucket, HOUR).await,
            Level::Day => self.sum_rollups(org, Level::Hour, bucket, DAY).await,
        }
    }

    /// Overwrites the bucket's rows with `computed`, stamped with the newest write time among the
    /// rows it was computed from. Cassandra keeps the cell with the highest timestamp whatever the
    /// order writes arrive in, and a later computation has seen every row an earlier one saw plus
    /// newer ones, so two members recomputing the same bucket at once (a rebalance hand-over) cannot
    /// leave the staler result behind.
    pub async fn write_bucket(
        &self,
        org: &str,
        level: Level,
        bucket: i64,
        computed: &Computed,
    ) -> Result<(), StoreError> {
        let part = CqlTimestamp(level.partition(bucket));
        let insert = &self.rollup(level).insert;
        let writes = computed.sums.iter().map(|((dim, value), t)| {
            let values = (
                org,
                part,
                dim.as_str(),
                CqlTimestamp(bucket),
                value.as_str(),
                t.requests,
                t.errors,
                t.prompt_tokens,
                t.completion_tokens,
                t.total_tokens,
                t.latency_us,
                to_cql(t.cost),
                computed.written,
            );
            self.session.execute_unpaged(insert, values)
        });
        futures::future::try_join_all(writes).await.map_err(db)?;
        Ok(())
    }

    /// The sums of `org`'s raw events in the minute starting at `minute`, per dimension value.
    async fn sum_events(&self, org: &str, minute: i64) -> Result<Computed, StoreError> {
        let day = CqlTimestamp(Level::Day.floor(minute));
        let range = (CqlTimestamp(minute), CqlTimestamp(minute + MINUTE));
        let mut rows = self
            .session
            .execute_iter(self.select_events.clone(), (org, day, range.0, range.1))
            .await
            .map_err(db)?
            .rows_stream::<EventColumns>()
            .map_err(db)?;
        let mut out = Computed::default();
        while let Some((key, model, provider, rq, er, p, c, tt, lat, cost, written)) =
            rows.try_next().await.map_err(db)?
        {
            out.written = out.written.max(written);
            let t = Totals {
                requests: rq,
                errors: er,
                prompt_tokens: p,
                completion_tokens: c,
                total_tokens: tt,
                latency_us: lat,
                cost: from_cql(&cost),
            };
            for dim in Dim::EVERY {
                let v = dim.of(&key, &model, &provider).to_owned();
                out.sums.entry((dim, v)).or_default().add(&t);
            }
        }
        Ok(out)
    }

    /// The sums of `org`'s `level` rollup rows in `[start, start + len)`, per dimension value.
    async fn sum_rollups(
        &self,
        org: &str,
        level: Level,
        start: i64,
        len: i64,
    ) -> Result<Computed, StoreError> {
        let mut out = Computed::default();
        for dim in Dim::EVERY {
            for row in self.read(org, level, dim, start, start + len).await? {
                out.written = out.written.max(row.written);
                out.sums
                    .entry((dim, row.value))
                    .or_default()
                    .add(&row.totals);
            }
        }
        Ok(out)
    }

    /// `org`'s `level` rollup rows of `dim` with buckets in `[from, to)`, paged, partition by
    /// partition, in bucket order.
    pub async fn read(
        &self,
        org: &str,
        level: Level,
        dim: Dim,
        from: i64,
        to: i64,
    ) -> Result<Vec<RollupRow>, StoreError> {
        let mut out = Vec::new();
        for part in level.partitions(from, to) {
            let values = (
                org,
                CqlTimestamp(part),
                dim.as_str(),
                CqlTimestamp(from),
                CqlTimestamp(to),
            );
            let mut rows = self
                .session
                .execute_iter(self.rollup(level).select.clone(), values)
                .await
                .map_err(db)?
                .rows_stream::<RollupColumns>()
                .map_err(db)?;
            while let Some((bucket, value, rq, er, p, c, tt, lat, cost, written)) =
                rows.try_next().await.map_err(db)?
            {
                let totals = Totals {
                    requests: rq,
                    errors: er,
                    prompt_tokens: p,
                    completion_tokens: c,
                    total_tokens: tt,
                    latency_us: lat,
                    cost: from_cql(&cost),
                };
                out.push(RollupRow {
                    bucket: bucket.0,
                    value,
                    totals,
                    written,
                });
            }
        }
        Ok(out)
    }
}

const MINUTE: i64 = crate::buckets::MINUTE_MS;
const HOUR: i64 = crate::buckets::HOUR_MS;
const DAY: i64 = crate::buckets::DAY_MS;

/// Sums per (dimension, value), ordered so writes and tests are deterministic.
pub type Sums = BTreeMap<(Dim, String), Totals>;

/// A bucket's sums and the newest write time among the rows they came from (the timestamp its
/// rows are written with: see [`Store::write_bucket`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Computed {
    pub sums: Sums,
    pub written: i64,
}

async fn prepare(
    session: &Session,
    cql: String,
    page: i32,
) -> Result<PreparedStatement, StoreError> {
    let mut p = session.prepare(cql).await.map_err(db)?;
    p.set_is_idempotent(true);
    p.set_page_size(page);
    Ok(p)
}

async fn rollup_statements(
    session: &Session,
    ks: &str,
    table: &str,
    page: i32,
) -> Result<RollupStatements, StoreError> {
    let insert = format!(
        "INSERT INTO {ks}.{table} (org, part, dim, bucket, dim_value, {SUMS}) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
    );
    let select = format!(
        "SELECT bucket, dim_value, {SUMS}, writetime(requests) FROM {ks}.{table} \
         WHERE org = ? AND part = ? AND dim = ? AND bucket >= ? AND bucket < ?"
    );
    Ok(RollupStatements {
        insert: prepare(session, insert, page).await?,
        select: prepare(session, select, page).await?,
    })
}

/// A decimal as CQL's `decimal`: the unscaled value as a minimal big-endian two's complement and
/// the scale.
pub fn to_cql(d: Decimal) -> CqlDecimal {
    let bytes = d.mantissa().to_be_bytes();
    // Drop leading bytes that only repeat the sign.
    let mut start = 0;
    while start < 15 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        let redundant = (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    let scale = i32::try_from(d.scale()).unwrap_or(0);
    CqlDecimal::from_signed_be_bytes_slice_and_exponent(&bytes[start..], scale)
}

/// CQL's `decimal` as a [`Decimal`]; a value out of `Decimal`'s range (never written by this crate)
/// reads as zero rather than failing a whole report.
pub fn from_cql(c: &CqlDecimal) -> Decimal {
    let (bytes, scale) = c.as_signed_be_bytes_slice_and_exponent();
    if bytes.len() > 16 || scale < 0 {
        return Decimal::ZERO;
    }
    let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        0xff
    } else {
        0
    };
    let mut buf = [fill; 16];
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    let mantissa = i128::from_be_bytes(buf);
    Decimal::try_from_i128_with_scale(mantissa, scale.unsigned_abs()).unwrap_or(Decimal::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_round_trip_through_cql() {
        for s in [
            "0",
            "1",
            "-1",
            "0.000125",
            "-127.5",
            "128",
            "255.99",
            "79228162514264.337593543950335",
        ] {
            let d: Decimal = s.parse().unwrap_or_default();
            assert_eq!(from_cql(&to_cql(d)), d, "{s}");
        }
        let minus = to_cql(Decimal::new(-1, 2));
        let (bytes, scale) = minus.as_signed_be_bytes_slice_and_exponent();
        assert_eq!((bytes.to_vec(), scale), (vec![0xff], 2));
        let big = to_cql(Decimal::new(128, 0));
        assert_eq!(
            big.as_signed_be_bytes_slice_and_exponent().0.to_vec(),
            vec![0x00, 0x80]
        );
    }
}
