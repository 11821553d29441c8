//! The idempotent-consumer kit: [`once`] records "event `id` was applied by consumer `c`" in the
//! effect's own transaction (so redelivery is a no-op), and [`Consumer`] runs a Kafka consumer group
//! around a [`Handler`]: decode the CloudEvents envelope, run the effect and [`once`] in one Postgres
//! transaction, commit the Kafka offset only after that transaction committed.
//!
//! Failure rules: an undecodable message (or one the handler rejects) is logged, counted and skipped —
//! its offset is committed, it never blocks the partition. A database failure is retried with
//! backoff and the offset is not committed: the event is neither lost nor skipped. A crash between
//! the Postgres commit and the offset commit redelivers the event, which [`once`] turns into a no-op.
//! Tracing: each message is handled inside a consumer span continuing the `traceparent` header the
//! producer wrote (the relay's span, or the proxy's request span for usage events), with a
//! `db.transaction` child for the effect's transaction; a poison or rejected message fails its span,
//! so it is exported at any sampling ratio. The `tracing` span of the handling carries that span's
//! `trace_id` and `span_id` for the log lines, and events the effect appends to the outbox continue
//! the same trace.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use leaky_wire::event::Envelope;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use serde::de::DeserializeOwned;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;

/// Marks `event_id` as applied by `consumer` on `tx` (the effect's transaction): `true` the first
/// time — apply the effect — and `false` if it already was: skip the effect.
pub async fn once(
    tx: &mut PgConnection,
    consumer: &str,
    event_id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO ledger.processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .execute(tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Why a handler did not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Transient (the database): the event is applied again later; its offset waits.
    #[error("retry: {0}")]
    Retry(String),
    /// The event can never be applied (bad data): logged, counted and skipped like a poison message.
    #[error("rejected: {0}")]
    Reject(String),
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        HandlerError::Retry(e.to_string())
    }
}

/// One consumer's effect.
pub trait Handler: Send + Sync + 'static {
    /// The envelope's `data`.
    type Data: DeserializeOwned + Send + Sync;
    /// The consumer's name in the processed-events table.
    fn name(&self) -> &str;
    /// Applies `event` on `tx`; [`Consumer`] has already checked [`once`] in the same transaction.
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a Envelope<Self::Data>,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// Where a consumer reads.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub brokers: String,
    pub group: String,
    pub topic: String,
    /// The first pause after a failed effect; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl ConsumerConfig {
    pub fn new(brokers: &str, group: &str, topic: &str) -> ConsumerConfig {
        ConsumerConfig {
            brokers: brokers.to_owned(),
            group: group.to_owned(),
            topic: topic.to_owned(),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
        }
    }
}

/// What a consumer has done.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    applied: AtomicU64,
    duplicates: AtomicU64,
    poison: AtomicU64,
    retries: AtomicU64,
    /// Messages not yet consumed on this member's partitions, from librdkafka's statistics.
    lag: AtomicI64,
}

impl ConsumerStats {
    /// Events applied (first delivery).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }
    /// Redeliveries skipped by [`once`].
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
    /// Undecodable or rejected messages skipped.
    pub fn poison(&self) -> u64 {
        self.poison.load(Ordering::Relaxed)
    }
    /// Failed effects retried.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    /// Messages not yet consumed on this member's partitions, as of the last statistics report
    /// ([`STATS_INTERVAL_MS`]; 0 before the first).
    pub fn lag(&self) -> i64 {
        self.lag.load(Ordering::Relaxed)
    }
}

/// How often librdkafka reports statistics, i.e. how fresh `leaky_consumer_lag` is.
pub const STATS_INTERVAL_MS: &str = "5000";

/// Turns librdkafka's periodic statistics into [`ConsumerStats::lag`] (the `LeakyConsumerLag` alert
/// of observability/prometheus/rules/alerts.yml reads it).
pub struct LagContext {
    stats: Arc<ConsumerStats>,
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        self.stats
            .lag
            .store(consumer_lag(&stats), Ordering::Relaxed);
    }
}

impl ConsumerContext for LagContext {}

/// The summed lag of the partitions this member consumes (librdkafka reports -1 while unknown, and
/// an internal partition -1 per topic; both are skipped).
fn consumer_lag(stats: &Statistics) -> i64 {
    stats
        .topics
        .values()
        .flat_map(|t| t.partitions.iter())
        .filter(|(id, p)| **id >= 0 && p.consumer_lag >= 0)
        .map(|(_, p)| p.consumer_lag)
        .sum()
}

/// A consumer-group member running one [`Handler`]: see the module docs.
pub struct Consumer<H: Handler> {
    pool: PgPool,
    kafka: StreamConsumer<LagContext>,
    handler: H,
    config: ConsumerConfig,
    stats: Arc<ConsumerStats>,
}

impl<H: Handler> Consumer<H> {
    /// Joins `config.group` on `config.topic` (manual offset commits, from the earliest offset the
    /// group has not committed).
    pub fn new(pool: PgPool, config: ConsumerConfig, handler: H) -> Result<Self, KafkaError> {
        let stats = Arc::<ConsumerStats>::default();
        let context = LagContext {
            stats: stats.clone(),
        };
        let kafka: StreamConsumer<LagContext> = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", STATS_INTERVAL_MS)
            .create_with_context(context)?;
        kafka.subscribe(&[&config.topic])?;
        Ok(Consumer {
            pool,
            kafka,
            handler,
            config,
            stats,
        })
    }

    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    /// Consumes until the task is dropped.
    pub async fn run(self) {
        loop {
            match self.kafka.recv().await {
                Ok(msg) => {
                    let name = self.handler.name();
                    let mut span = leaky_telemetry::kafka::consumer_span("consume", name, &msg);
                    let log_span = span_of(name, &msg, &span.context());
                    let handled = leaky_telemetry::scope(&span, self.handle(&msg));
                    if let Some(failure) = handled.instrument(log_span).await {
                        span.fail(failure, true);
                    }
                    span.end();
                }
                Err(e) => {
                    tracing::warn!(error = %e, consumer = self.handler.name(), "kafka receive failed");
                    tokio::time::sleep(self.config.retry_min).await;
                }
            }
        }
    }

    /// Applies one message (retrying the database until it takes it), then commits its offset;
    /// why it was skipped, if it was (`poison`, `rejected`).
    async fn handle(&self, msg: &BorrowedMessage<'_>) -> Option<&'static str> {
        let decoded = msg
            .payload()
            .ok_or_else(|| "no payload".to_owned())
            .and_then(|p| {
                serde_json::from_slice::<Envelope<H::Data>>(p).map_err(|e| e.to_string())
            });
        let failure = match decoded {
            Ok(event) => {
                tracing::Span::current().record("event_id", event.id.as_str());
                self.apply_until_done(&event).await
            }
            Err(e) => {
                self.stats.poison.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "undecodable message skipped");
                Some("poison")
            }
        };
        if let Err(e) = self.kafka.commit_message(msg, CommitMode::Async) {
            // The effect is durable; a redelivery after this is a no-op.
            tracing::warn!(error = %e, "offset commit failed");
        }
        failure
    }

    async fn apply_until_done(&self, event: &Envelope<H::Data>) -> Option<&'static str> {
        let mut pause = self.config.retry_min;
        loop {
            match self.apply_once(event).await {
                Ok(true) => self.stats.applied.fetch_add(1, Ordering::Relaxed),
                Ok(false) => self.stats.duplicates.fetch_add(1, Ordering::Relaxed),
                Err(HandlerError::Reject(why)) => {
                    tracing::warn!(reason = %why, "event rejected, skipped");
                    self.stats.poison.fetch_add(1, Ordering::Relaxed);
                    return Some("rejected");
                }
                Err(HandlerError::Retry(why)) => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %why, retry_in = ?pause, "effect failed, retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.config.retry_max);
                    continue;
                }
            };
            return None;
        }
    }

    /// The effect and [`once`] in one transaction (a `db.transaction` span, failed when it did not
    /// commit): `Ok(false)` if the event was applied before.
    async fn apply_once(&self, event: &Envelope<H::Data>) -> Result<bool, HandlerError> {
        let span = leaky_telemetry::child("db.transaction", leaky_telemetry::SpanKind::Client);
        let applied = match &span {
            Some(s) => leaky_telemetry::scope(s, self.apply_in_tx(event)).await,
            None => self.apply_in_tx(event).await,
        };
        if let (Some(mut s), Err(e)) = (span, &applied) {
            s.fail(
                match e {
                    HandlerError::Retry(_) => "retry",
                    HandlerError::Reject(_) => "rejected",
                },
                true,
            );
        }
        applied
    }

    async fn apply_in_tx(&self, event: &Envelope<H::Data>) -> Result<bool, HandlerError> {
        let mut tx = self.pool.begin().await?;
        if !once(&mut tx, self.handler.name(), &event.id).await? {
            return Ok(false);
        }
        self.handler.apply(&mut tx, event).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// The W3C `traceparent` header the producer wrote, if any (as written, valid or not).
fn traceparent<M: Message>(msg: &M) -> Option<String> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key == "traceparent")
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
}

/// The `tracing` span of one message: the producer's `traceparent` and the consumer span's ids.
fn span_of(
    consumer: &str,
    msg: &BorrowedMessage<'_>,
    ctx: &leaky_telemetry::SpanContext,
) -> tracing::Span {
    let traceparent = traceparent(msg);
    tracing::info_span!(
        "consume",
        trace_id = %ctx.trace_id_hex(),
        span_id = %ctx.span_id_hex(),
        consumer,
        topic = msg.topic(),
        partition = msg.partition(),
        offset = msg.offset(),
        traceparent = traceparent.as_deref().unwrap_or(""),
        event_id = tracing::field::Empty,
    )
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    use super::*;

    fn message(headers: Option<OwnedHeaders>) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            headers,
        )
    }

    #[test]
    fn traceparent_comes_from_its_header() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "other",
                value: Some("x"),
            })
            .insert(Header {
                key: "traceparent",
                value: Some(tp),
            });
        assert_eq!(traceparent(&message(Some(headers))).as_deref(), Some(tp));
        assert_eq!(traceparent(&message(None)), None);
        let empty = OwnedHeaders::new().insert(Header::<&str> {
            key: "traceparent",
            value: None,
        });
        assert_eq!(traceparent(&message(Some(empty))), None);
    }
}
