//! Where anomalies go: a row in Cassandra's `anomalies` table (migration 3), a `usage.anomaly`
//! CloudEvent on Kafka, and back out through the API.
//!
//! Both outputs are idempotent. The row's primary key is `((org, day), ts, subject, kind)`, so the
//! same anomaly detected again (a replay, a redelivery to a new member) overwrites its own row; the
//! event's `id` is derived from the same identity ([`super::live::anomaly_id`]), so a consumer of
//! `leaky.anomalies.v1` recognises a duplicate by its id, as with every topic of the project.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use leaky_wire::event::{Envelope, SPEC_VERSION};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use tokio::sync::OnceCell;

use super::live::AnomalyRecord;
use crate::buckets::DAY_MS;
use crate::error::{db, StoreError};
use crate::store::Store;

/// The CloudEvents `type` of an anomaly.
pub const ANOMALY_TYPE: &str = "usage.anomaly";
/// The default topic anomalies are published on.
pub const ANOMALY_TOPIC: &str = "leaky.anomalies.v1";
/// The version of the event's `data` shape.
pub const ANOMALY_SCHEMA_VERSION: u16 = 1;
/// The longest range one anomalies query may cover (one partition read per UTC day).
pub const MAX_RANGE_DAYS: i64 = 31;

struct Prepared {
    insert: PreparedStatement,
    select: PreparedStatement,
}

/// The `anomalies` table, its statements prepared once on first use.
pub struct AnomalyStore {
    store: Arc<Store>,
    prepared: OnceCell<Prepared>,
}

/// The columns an anomalies read returns.
type Columns = (
    CqlTimestamp,
    String,
    String,
    String,
    f64,
    f64,
    f64,
    f64,
    String,
);

impl AnomalyStore {
    pub fn new(store: Arc<Store>) -> AnomalyStore {
        AnomalyStore {
            store,
            prepared: OnceCell::new(),
        }
    }

    async fn prepared(&self) -> Result<&Prepared, StoreError> {
        self.prepared
            .get_or_try_init(|| async {
                let ks = self.store.keyspace();
                let cols = "ts, subject, kind, id, score, baseline, spread, observed, explanation";
                let insert = format!(
                    "INSERT INTO {ks}.anomalies (org, day, {cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                );
                let select = format!(
                    "SELECT {cols} FROM {ks}.anomalies WHERE org = ? AND day = ? AND ts >= ? AND ts < ?"
                );
                let session = self.store.session();
                let mut insert = session.prepare(insert).await.map_err(db)?;
                insert.set_is_idempotent(true);
                let mut select = session.prepare(select).await.map_err(db)?;
                select.set_is_idempotent(true);
                Ok(Prepared { insert, select })
            })
            .await
    }

    /// Writes `r`'s row (an overwrite when it exists).
    pub async fn write(&self, r: &AnomalyRecord) -> Result<(), StoreError> {
        let p = self.prepared().await?;
        let values = (
            &r.org,
            CqlTimestamp(r.minute_ms.div_euclid(DAY_MS) * DAY_MS),
            CqlTimestamp(r.minute_ms),
            r.key.as_deref().unwrap_or(""),
            &r.kind,
            &r.id,
            r.score,
            r.baseline,
            r.spread,
            r.observed,
            &r.explanation,
        );
        self.store
            .session()
            .execute_unpaged(&p.insert, values)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// `org`'s anomalies with minutes in `[from, to)` (ms), oldest first: one paged read per UTC day.
    pub async fn read(
        &self,
        org: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<AnomalyRecord>, StoreError> {
        let p = self.prepared().await?;
        let mut out = Vec::new();
        let mut day = from.div_euclid(DAY_MS) * DAY_MS;
        while day < to {
            let values = (org, CqlTimestamp(day), CqlTimestamp(from), CqlTimestamp(to));
            let mut rows = self
                .store
                .session()
                .execute_iter(p.select.clone(), values)
                .await
                .map_err(db)?
                .rows_stream::<Columns>()
                .map_err(db)?;
            while let Some(row) = rows.try_next().await.map_err(db)? {
                out.push(record(org, row));
            }
            day += DAY_MS;
        }
        Ok(out)
    }
}

fn record(org: &str, row: Columns) -> AnomalyRecord {
    let (ts, subject, kind, id, score, baseline, spread, observed, explanation) = row;
    AnomalyRecord {
        id,
        org: org.to_owned(),
        key: (!subject.is_empty()).then_some(subject),
        kind,
        minute_ms: ts.0,
        score,
        baseline,
        spread,
        observed,
        explanation,
    }
}

/// The `data` of a `usage.anomaly` event.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AnomalyData {
    pub org: String,
    /// The key, or `null` for the org as a whole.
    pub key: Option<String>,
    pub kind: String,
    /// The anomalous minute's start, RFC 3339 UTC.
    pub minute: String,
    pub score: f64,
    pub baseline: f64,
    pub spread: f64,
    pub observed: f64,
    pub explanation: String,
}

/// `r` as a CloudEvent. Every field derives from the anomaly (`time` is the anomalous minute, not
/// the wall clock), so a duplicate is byte-identical.
pub fn envelope(r: &AnomalyRecord, source: &str) -> Envelope<AnomalyData> {
    let minute = chrono::DateTime::from_timestamp_millis(r.minute_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Envelope {
        specversion: SPEC_VERSION.to_owned(),
        id: r.id.clone(),
        source: source.to_owned(),
        kind: ANOMALY_TYPE.to_owned(),
        time: minute.clone(),
        subject: Some(r.key.clone().unwrap_or_else(|| r.org.clone())),
        datacontenttype: "application/json".to_owned(),
        schemaversion: ANOMALY_SCHEMA_VERSION,
        data: AnomalyData {
            org: r.org.clone(),
            key: r.key.clone(),
            kind: r.kind.clone(),
            minute,
            score: r.score,
            baseline: r.baseline,
            spread: r.spread,
            observed: r.observed,
            explanation: r.explanation.clone(),
        },
    }
}

/// Publishes `r` on `topic`, keyed by org, and waits for the broker's acknowledgement.
pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    source: &str,
    r: &AnomalyRecord,
) -> Result<(), KafkaError> {
    let payload = serde_json::to_vec(&envelope(r, source)).map_err(|e| {
        tracing::warn!(error = %e, "anomaly event encoding failed");
        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::BadMessage)
    })?;
    let record = FutureRecord::to(topic)
        .key(r.org.as_bytes())
        .payload(&payload);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}
