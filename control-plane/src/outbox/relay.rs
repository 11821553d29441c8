//! The outbox relay: publishes committed outbox events to Kafka with an idempotent producer
//! (`acks=all`) and marks them sent only after the broker acknowledged them — at least once, never
//! "sent" without the broker having them.
//!
//! A batch is claimed in a transaction with `FOR UPDATE SKIP LOCKED`, so several relays (one per
//! control-plane process) share the work and a row is published by one relay at a time. Per-aggregate
//! order holds across relays too: of the rows it locked, a relay publishes only those with no earlier
//! unsent event of their aggregate outside its batch (an earlier one another relay holds, or holds
//! back, makes it skip the rest of that aggregate until the next round). A failed batch is rolled back whole (nothing marked) and retried after a pause; events
//! of it the broker did take come again (consumers dedupe on the CloudEvents `id`).
//! The relay wakes on the `pg_notify` of [`super::append`], and polls as a fallback.
//!
//! Tracing: an event appended inside a traced span carries its `traceparent`; publishing it opens an
//! `outbox.relay` producer span in that trace (failed when the broker did not take it) and sends
//! that span as the message's `traceparent` header, which the consumers continue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use leaky_wire::event::{Envelope, SPEC_VERSION};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::CHANNEL;

/// How the relay publishes.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Publish every event to this topic instead of its own (tests use one topic each).
    pub topic: Option<String>,
    /// Events claimed per transaction.
    pub batch: i64,
    /// The polling fallback when no notification arrives.
    pub poll_every: Duration,
    /// The pause after a failed batch.
    pub retry_after: Duration,
    /// How long the producer tries one delivery before the batch counts as failed.
    pub delivery_timeout: Duration,
    /// Sent events older than this are deleted.
    pub retention: Duration,
    /// The CloudEvents `source`.
    pub source: String,
}

impl RelayConfig {
    /// The defaults for `brokers`.
    pub fn new(brokers: impl Into<String>) -> RelayConfig {
        RelayConfig {
            brokers: brokers.into(),
            topic: None,
            batch: 100,
            poll_every: Duration::from_secs(1),
            retry_after: Duration::from_secs(1),
            delivery_timeout: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
            source: "/leaky-tokens/control-plane".to_owned(),
        }
    }
}

/// What a relay has done; `/metrics` exports it (`crate::metrics`).
#[derive(Debug, Default)]
pub struct RelayStats {
    published: AtomicU64,
    errors: AtomicU64,
    pruned: AtomicU64,
}

impl RelayStats {
    /// Events published and marked sent.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Batches that failed (broker or database), each retried later.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Sent events deleted after their retention.
    pub fn pruned(&self) -> u64 {
        self.pruned.load(Ordering::Relaxed)
    }
}

/// Why a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("kafka: {0} of {1} deliveries failed")]
    Undelivered(usize, usize),
}

/// One outbox row as the relay reads it (`pub` for the contract tests, which build the published
/// document of a row with [`Relay::envelope`] without a broker).
#[derive(sqlx::FromRow)]
pub struct Row {
    id: Uuid,
    aggregate_type: String,
    aggregate_id: String,
    aggregate_seq: i64,
    topic: String,
    #[sqlx(rename = "type")]
    kind: String,
    payload: serde_json::Value,
    created_at: DateTime<Utc>,
    traceparent: Option<String>,
}

/// One relay: see the module docs.
pub struct Relay {
    pool: PgPool,
    config: RelayConfig,
    producer: FutureProducer,
    stats: Arc<RelayStats>,
}

impl Relay {
    /// A relay on `pool`; creating the producer does not connect (an absent broker shows as failed
    /// batches, not here).
    pub fn new(pool: PgPool, config: RelayConfig) -> Result<Relay, KafkaError> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set(
                "message.timeout.ms",
                config.delivery_timeout.as_millis().to_string(),
            )
            .set("reconnect.backoff.max.ms", "1000")
            .set("log_level", "4")
            .create()?;
        Ok(Relay {
            pool,
            config,
            producer,
            stats: Arc::default(),
        })
    }

    /// The same relay counting into `stats` (the process's, which `/metrics` reads).
    pub fn with_stats(mut self, stats: Arc<RelayStats>) -> Relay {
        self.stats = stats;
        self
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Publishes until the task is dropped or aborted.
    pub async fn run(self) {
        let mut listener = self.listen().await;
        let mut pruned = Instant::now();
        loop {
            let pause = match self.drain().await {
                Ok(()) => None,
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "outbox relay: batch failed, nothing marked sent");
                    Some(self.config.retry_after)
                }
            };
            if pruned.elapsed() >= self.config.poll_every {
                pruned = Instant::now();
                self.prune().await;
            }
            match pause {
                // A notification must not cut the pause short: the broker is what we wait for.
                Some(p) => tokio::time::sleep(p).await,
                None => self.wait(&mut listener).await,
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay: LISTEN failed, polling only");
                return None;
            }
        };
        match listener.listen(CHANNEL).await {
            Ok(()) => Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay: LISTEN failed, polling only");
                None
            }
        }
    }

    /// Until a notification (an append committed) or the polling interval.
    async fn wait(&self, listener: &mut Option<PgListener>) {
        let Some(l) = listener.as_mut() else {
            tokio::time::sleep(self.config.poll_every).await;
            return;
        };
        tokio::select! {
            got = l.recv() => if let Err(e) = got {
                // PgListener reconnects on the next recv; the poll covers what was missed.
                tracing::debug!(error = %e, "outbox relay: notification stream broke");
            },
            () = tokio::time::sleep(self.config.poll_every) => {}
        }
    }

    async fn prune(&self) {
        match super::prune(&self.pool, self.config.retention).await {
            Ok(0) => {}
            Ok(n) => {
                self.stats.pruned.fetch_add(n, Ordering::Relaxed);
                tracing::info!(deleted = n, "outbox: pruned sent events");
            }
            Err(e) => tracing::warn!(error = %e, "outbox: pruning failed"),
        }
    }

    /// Publishes batches until the outbox has nothing this relay may claim.
    async fn drain(&self) -> Result<(), RelayError> {
        while self.publish_batch().await? >= self.config.batch {}
        Ok(())
    }

    /// Claims, publishes and marks one batch in one transaction; its size.
    pub async fn publish_batch(&self) -> Result<i64, RelayError> {
        let mut tx = crate::db::begin(&self.pool).await?;
        let rows = claim(&mut tx, self.config.batch).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        self.publish(&rows).await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        sqlx::query("UPDATE outbox.events SET sent_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let n = rows.len() as u64;
        self.stats.published.fetch_add(n, Ordering::Relaxed);
        tracing::debug!(events = n, "outbox relay: published");
        Ok(ids.len() as i64)
    }

    /// Sends every row and waits for every acknowledgement; fails unless all were acknowledged.
    async fn publish(&self, rows: &[Row]) -> Result<(), RelayError> {
        let mut pending = Vec::with_capacity(rows.len());
        for row in rows {
            let doc = serde_json::to_vec(&self.envelope(row)).unwrap_or_default();
            let seq = row.aggregate_seq.to_string();
            let topic = self.config.topic.as_deref().unwrap_or(&row.topic);
            let span = relay_span(row, topic);
            let mut headers = OwnedHeaders::new()
                .insert(Header {
                    key: "aggregate-type",
                    value: Some(row.aggregate_type.as_bytes()),
                })
                .insert(Header {
                    key: "aggregate-seq",
                    value: Some(seq.as_bytes()),
                });
            if let Some(s) = &span {
                headers = leaky_telemetry::kafka::with_traceparent(headers, &s.context());
            }
            let record = FutureRecord::to(topic)
                .key(row.aggregate_id.as_bytes())
                .payload(&doc)
                .headers(headers);
            pending.push((self.producer.send_result(record).map_err(|(e, _)| e)?, span));
        }
        let total = pending.len();
        let mut failed = 0;
        for (delivery, span) in pending {
            if !matches!(delivery.await, Ok(Ok(_))) {
                failed += 1;
                if let Some(mut s) = span {
                    s.fail("undelivered", true);
                }
            }
        }
        match failed {
            0 => Ok(()),
            n => Err(RelayError::Undelivered(n, total)),
        }
    }

    /// The CloudEvents document the relay publishes for `row` (the Kafka message's payload).
    pub fn envelope<'r>(&self, row: &'r Row) -> Envelope<&'r serde_json::Value> {
        Envelope {
            specversion: SPEC_VERSION.to_owned(),
            id: row.id.to_string(),
            source: self.config.source.clone(),
            kind: row.kind.clone(),
            time: row.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            subject: Some(row.aggregate_id.clone()),
            datacontenttype: "application/json".to_owned(),
            schemaversion: 1,
            data: &row.payload,
        }
    }
}

/// The producer span of publishing `row`, in the trace of the span that appended it (none when
/// the event carries no `traceparent`); ended when its delivery is known.
fn relay_span(row: &Row, topic: &str) -> Option<leaky_telemetry::Span> {
    let parent = leaky_telemetry::parse_traceparent(row.traceparent.as_deref()?.as_bytes())?;
    let mut span = leaky_telemetry::Span::root(
        "outbox.relay",
        leaky_telemetry::SpanKind::Producer,
        Some(parent),
    );
    if span.is_recording() {
        use leaky_telemetry::KeyValue;
        span.attr(KeyValue::new("messaging.system", "kafka"));
        span.attr(KeyValue::new("messaging.operation.type", "send"));
        span.attr(KeyValue::new(
            "messaging.destination.name",
            topic.to_owned(),
        ));
        span.attr(KeyValue::new("messaging.message.id", row.id.to_string()));
        span.attr(KeyValue::new("cloudevents.event_type", row.kind.clone()));
    }
    Some(span)
}

/// The oldest unsent events this relay may publish: rows nobody else holds, each the next of its
/// aggregate (so another relay never publishes a later event of an aggregate ahead of an earlier one).
/// Rows locked but held back stay locked to the end of the batch, which only delays them.
async fn claim(conn: &mut PgConnection, limit: i64) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(
        "WITH batch AS MATERIALIZED (
             SELECT id, aggregate_type, aggregate_id, aggregate_seq FROM outbox.events
             WHERE sent_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED)
         SELECT e.id, e.aggregate_type, e.aggregate_id, e.aggregate_seq, e.topic, e.type, e.payload,
                e.created_at, e.traceparent
         FROM outbox.events e JOIN batch b ON b.id = e.id
         WHERE NOT EXISTS (
             SELECT 1 FROM outbox.events o
             WHERE o.sent_at IS NULL AND o.aggregate_type = b.aggregate_type
               AND o.aggregate_id = b.aggregate_id AND o.aggregate_seq < b.aggregate_seq
               AND o.id NOT IN (SELECT id FROM batch))
         ORDER BY e.seq",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}
