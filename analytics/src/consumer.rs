//! The Kafka side: a consumer-group member that reads usage events in batches, stores them, and
//! commits the batch's offsets only after every Cassandra write of the batch succeeded.
//!
//! One batch: decode every message (poison → dead-letter topic), write each event's raw row under
//! its event id, recompute every minute bucket the batch touched from the raw rows, then the hours
//! those minutes are in, then the days (see [`crate::store`]), then commit. A crash anywhere before
//! the commit redelivers the batch, and the idempotent writes converge on the same numbers; late and
//! out-of-order events land in their event-time buckets because buckets are recomputed, not bumped.
//!
//! Cassandra down: the batch is retried with exponential backoff (nothing is committed meanwhile,
//! nothing is skipped); after `max.poll.interval.ms` the group may hand the partitions to another
//! member, which re-reads the batch — again harmless. Poison messages are sent to `<topic>.dlq`
//! (with the reason and origin in headers) before the batch commits, so they never block it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::anomaly::live::{AnomalyRecord, Live};
use crate::anomaly::sink::{self, AnomalyStore};
use crate::buckets::Level;
use crate::event::{decode, Poison, UsageRow};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use tracing::Instrument;

/// Where the consumer reads and how it batches.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub brokers: String,
    pub group: String,
    pub topic: String,
    /// Poison messages go here (`<topic>.dlq` by default).
    pub dlq_topic: String,
    /// At most this many messages per batch.
    pub max_batch: usize,
    /// How long a batch waits for more messages after its first.
    pub linger: Duration,
    /// The first pause after a failed write; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Events older than this (event time against the wall clock) go to the dead-letter topic: their
    /// minute's raw rows may have expired, so recomputing it would lose the others.
    pub max_lateness: Duration,
    /// Raw writes in flight at once.
    pub concurrency: usize,
    /// How long a silent member keeps its partitions: a crashed consumer's batch is redelivered to
    /// another member after this (Kafka's default, 45 s, is long for a role that restarts in ~1 s).
    pub session_timeout: Duration,
    /// How often librdkafka reports its statistics (the consumer-lag gauge's refresh).
    pub stats_interval: Duration,
    /// Detected anomalies are published here (`usage.anomaly` events, see `anomaly::sink`).
    pub anomaly_topic: String,
    /// The anomaly detector's tuning.
    pub anomaly: crate::anomaly::Config,
    /// With no message for this long, quiet partitions' minutes are closed (see
    /// [`Live::tick`]).
    pub idle_tick: Duration,
}

impl ConsumerConfig {
    pub fn new(brokers: &str, group: &str, topic: &str) -> ConsumerConfig {
        ConsumerConfig {
            brokers: brokers.to_owned(),
            group: group.to_owned(),
            topic: topic.to_owned(),
            dlq_topic: format!("{topic}.dlq"),
            max_batch: 1000,
            linger: Duration::from_millis(200),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            max_lateness: Duration::from_secs(30 * 24 * 3600),
            concurrency: 64,
            session_timeout: Duration::from_secs(10),
            stats_interval: Duration::from_secs(5),
            anomaly_topic: sink::ANOMALY_TOPIC.to_owned(),
            anomaly: crate::anomaly::Config::default(),
            idle_tick: Duration::from_secs(10),
        }
    }
}

/// Turns librdkafka's periodic statistics into the consumer-lag gauge.
pub struct LagContext {
    gauge: prometheus::IntGauge,
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        self.gauge.set(consumer_lag(&stats));
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

/// A consumer-group member; see the module docs.
pub struct Consumer {
    kafka: StreamConsumer<LagContext>,
    dlq: FutureProducer,
    store: Arc<Store>,
    metrics: Metrics,
    config: ConsumerConfig,
    /// The live anomaly detectors: only this consumer's task locks it, never across an await.
    live: Mutex<Live>,
    anomalies: AnomalyStore,
    /// The price table events are costed with, reloaded every few seconds.
    prices: crate::prices::Prices,
}

/// The CloudEvents `source` of anomaly events.
const ANOMALY_SOURCE: &str = "/leaky-tokens/analytics";
/// Attempts to publish one anomaly event before giving up on it (each send waits up to 10 s).
const PUBLISH_ATTEMPTS: u32 = 3;

/// A poison message on its way to the dead-letter topic.
struct DeadLetter {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    reason: String,
    label: &'static str,
    origin: String,
}

impl Consumer {
    /// Joins `config.group` on `config.topic`: manual commits, from the earliest uncommitted offset.
    pub fn new(
        config: ConsumerConfig,
        store: Arc<Store>,
        metrics: Metrics,
    ) -> Result<Consumer, KafkaError> {
        let context = LagContext {
            gauge: metrics.consumer_lag.clone(),
        };
        let kafka: StreamConsumer<LagContext> = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                config.session_timeout.as_millis().to_string(),
            )
            .set(
                "statistics.interval.ms",
                config.stats_interval.as_millis().to_string(),
            )
            .create_with_context(context)?;
        kafka.subscribe(&[&config.topic])?;
        let dlq: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("enable.idempotence", "true")
            .create()?;
        Ok(Consumer {
            kafka,
            dlq,
            live: Mutex::new(Live::new(config.anomaly.clone())),
            anomalies: AnomalyStore::new(store.clone()),
            store,
            metrics,
            config,
            prices: crate::prices::Prices::default(),
        })
    }

    /// Consumes until the task is dropped.
    pub async fn run(self) {
        loop {
            let batch = self.next_batch().await;
            if batch.is_empty() {
                self.tick().await;
            } else {
                // Tracing (issue 17): the batch's spans, and each sampled message's in its trace.
                let spans = leaky_telemetry::kafka::Batch::start(
                    "analytics.consume",
                    &self.config.group,
                    &batch,
                );
                self.handle(&batch).instrument(spans.log_span()).await;
                spans.finish();
            }
        }
    }

    /// Waits for one message, then takes what else arrives within `linger`, up to `max_batch`.
    async fn next_batch(&self) -> Vec<BorrowedMessage<'_>> {
        let mut batch = Vec::new();
        // Cancelling a `recv` that has not returned loses nothing: the message stays queued.
        let first = tokio::time::timeout(self.config.idle_tick, self.kafka.recv()).await;
        match first {
            Ok(Ok(m)) => batch.push(m),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "kafka receive failed");
                tokio::time::sleep(self.config.retry_min).await;
                return batch;
            }
            Err(_) => return batch,
        }
        let deadline = tokio::time::Instant::now() + self.config.linger;
        while batch.len() < self.config.max_batch {
            match tokio::time::timeout_at(deadline, self.kafka.recv()).await {
                Ok(Ok(m)) => batch.push(m),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kafka receive failed");
                    break;
                }
                Err(_) => break,
            }
        }
        batch
    }

    /// Stores a batch (retrying until Cassandra takes it), dead-letters its poison, commits it.
    async fn handle(&self, batch: &[BorrowedMessage<'_>]) {
        let (mut rows, partitions, poison) = self.split(batch);
        let book = self.prices.book(&self.store).await;
        let unpriced = crate::prices::apply(&book, &mut rows);
        self.metrics.unpriced_events.inc_by(unpriced);
        let mut pause = self.config.retry_min;
        while let Err(e) = store_batch(&self.store, &rows, self.config.concurrency).await {
            self.metrics.write_retries.inc();
            tracing::warn!(error = %e, retry_in = ?pause, events = rows.len(), "batch write failed, retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.config.retry_max);
        }
        let now = chrono::Utc::now().timestamp_millis();
        for r in &rows {
            self.metrics
                .event_lag
                .observe((now - r.ts).max(0) as f64 / 1000.0);
        }
        self.metrics.events.inc_by(rows.len() as u64);
        let found = self.detect(&rows, &partitions, now);
        self.emit(&found).await;
        for d in &poison {
            self.dead_letter(d).await;
        }
        self.commit(batch);
        self.metrics.batches.inc();
        // Debug lines (issue 17): inside the batch's log span, so each carries the batch's
        // `trace_id`/`span_id`; a request's event is found by its `request_id`.
        if tracing::enabled!(tracing::Level::DEBUG) {
            for r in &rows {
                tracing::debug!(request_id = %r.request_id, org = %r.org, model = %r.model,
                    "usage event stored");
            }
            tracing::debug!(
                events = rows.len(),
                dead_lettered = poison.len(),
                "usage batch stored"
            );
        }
    }

    /// The batch's storable events, the partition of each, and its poison.
    fn split(&self, batch: &[BorrowedMessage<'_>]) -> (Vec<UsageRow>, Vec<i32>, Vec<DeadLetter>) {
        let oldest = chrono::Utc::now().timestamp_millis()
            - i64::try_from(self.config.max_lateness.as_millis()).unwrap_or(i64::MAX);
        let mut rows = Vec::with_capacity(batch.len());
        let mut partitions = Vec::with_capacity(batch.len());
        let mut poison = Vec::new();
        for m in batch {
            let label = match decode(m.payload()) {
                Ok(row) if row.ts >= oldest => {
                    rows.push(row);
                    partitions.push(m.partition());
                    continue;
                }
                Ok(row) => (
                    format!("event time {} is older than the lateness limit", row.ts),
                    "too_late",
                ),
                Err(p) => (p.to_string(), poison_label(&p)),
            };
            poison.push(DeadLetter {
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                reason: label.0,
                label: label.1,
                origin: format!("{}/{}/{}", m.topic(), m.partition(), m.offset()),
            });
        }
        (rows, partitions, poison)
    }

    /// Feeds the stored events to the anomaly detectors (CPU only: the partition never waits on
    /// detection) and returns the anomalies of the minutes they closed.
    fn detect(&self, rows: &[UsageRow], partitions: &[i32], now_ms: i64) -> Vec<AnomalyRecord> {
        let Ok(mut live) = self.live.lock() else {
            return Vec::new();
        };
        rows.iter()
            .zip(partitions)
            .flat_map(|(r, p)| live.observe(*p, r, now_ms))
            .collect()
    }

    /// No message for `idle_tick`: closes quiet partitions' minutes and emits what that found.
    async fn tick(&self) {
        let now = chrono::Utc::now().timestamp_millis();
        let found = match self.live.lock() {
            Ok(mut live) => live.tick(now),
            Err(_) => Vec::new(),
        };
        self.emit(&found).await;
    }

    /// Stores each anomaly (retried until Cassandra takes it, as the batch's own writes are) and
    /// publishes it (a few attempts: an unreachable or missing anomalies topic must not stall usage
    /// ingestion; the row is stored and served either way). Both outputs are idempotent.
    async fn emit(&self, found: &[AnomalyRecord]) {
        for r in found {
            let mut pause = self.config.retry_min;
            while let Err(e) = self.anomalies.write(r).await {
                tracing::warn!(error = %e, retry_in = ?pause, "anomaly write failed, retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(self.config.retry_max);
            }
            self.publish(r).await;
            self.metrics.anomalies.with_label_values(&[&r.kind]).inc();
            tracing::warn!(org = %r.org, key = ?r.key, kind = %r.kind, minute = r.minute_ms,
                explanation = %r.explanation, "usage anomaly");
        }
    }

    async fn publish(&self, r: &AnomalyRecord) {
        let mut pause = self.config.retry_min;
        for attempt in 1..=PUBLISH_ATTEMPTS {
            let topic = &self.config.anomaly_topic;
            match sink::publish(&self.dlq, topic, ANOMALY_SOURCE, r).await {
                Ok(()) => return,
                Err(e) if attempt == PUBLISH_ATTEMPTS => {
                    tracing::error!(error = %e, topic = %topic, id = %r.id, "anomaly event not published");
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?pause, "anomaly publish failed, retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.config.retry_max);
                }
            }
        }
    }

    /// Sends one poison message to the dead-letter topic, retrying until the broker has it (the
    /// batch does not commit before: a poison message is never lost, only moved aside).
    async fn dead_letter(&self, d: &DeadLetter) {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "leaky-dlq-reason",
                value: Some(&d.reason),
            })
            .insert(Header {
                key: "leaky-dlq-origin",
                value: Some(&d.origin),
            });
        let mut pause = self.config.retry_min;
        loop {
            let mut record =
                FutureRecord::<[u8], [u8]>::to(&self.config.dlq_topic).headers(headers.clone());
            if let Some(k) = &d.key {
                record = record.key(k);
            }
            if let Some(p) = &d.payload {
                record = record.payload(p);
            }
            match self.dlq.send(record, Duration::from_secs(10)).await {
                Ok(_) => break,
                Err((e, _)) => {
                    tracing::warn!(error = %e, retry_in = ?pause, "dead-letter send failed, retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.config.retry_max);
                }
            }
        }
        self.metrics
            .dead_letters
            .with_label_values(&[d.label])
            .inc();
        tracing::warn!(reason = %d.reason, origin = %d.origin, "poison message dead-lettered");
    }

    /// Commits the offset after the last message of each partition in the batch.
    fn commit(&self, batch: &[BorrowedMessage<'_>]) {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for m in batch {
            let e = next.entry((m.topic(), m.partition())).or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                tracing::warn!(error = %e, "offset list");
            }
        }
        if let Err(e) = self.kafka.commit(&tpl, CommitMode::Sync) {
            // Everything is stored: a redelivery after this is absorbed by the idempotent writes.
            self.metrics.commit_failures.inc();
            tracing::warn!(error = %e, "offset commit failed");
        }
    }
}

fn poison_label(p: &Poison) -> &'static str {
    match p {
        Poison::Empty => "empty",
        Poison::Undecodable(_) => "undecodable",
        Poison::WrongType(_) => "wrong_type",
        Poison::UnknownVersion(_) => "unknown_version",
        Poison::BadTime(_) => "bad_time",
    }
}

/// Stores `rows` so that storing them again changes nothing: raw rows under their event ids, then
/// every touched minute, hour and day recomputed from the level below, finest first (a coarser
/// bucket reads the finer rows just written).
pub async fn store_batch(
    store: &Store,
    rows: &[UsageRow],
    concurrency: usize,
) -> Result<(), StoreError> {
    let concurrency = concurrency.max(1);
    // Chunks joined in turn rather than a buffered stream: the stream's closure types make the
    // consumer's future fail `Send`'s higher-ranked check (a known rustc limitation).
    for chunk in rows.chunks(concurrency) {
        futures::future::try_join_all(chunk.iter().map(|r| store.insert_event(r))).await?;
    }
    // The orgs active on each event's day and on today (a late event makes its org due a
    // statement now, which carries the adjustment for the closed period).
    let today = chrono::Utc::now().timestamp_millis();
    let active: BTreeSet<(&str, i64)> = rows
        .iter()
        .flat_map(|r| {
            [
                (r.org.as_str(), Level::Day.floor(r.ts)),
                (r.org.as_str(), Level::Day.floor(today)),
            ]
        })
        .collect();
    let marks: Vec<(&str, i64)> = active.into_iter().collect();
    for chunk in marks.chunks(concurrency) {
        futures::future::try_join_all(chunk.iter().map(|&(org, day)| store.mark_active(org, day)))
            .await?;
    }
    let mut touched: BTreeSet<(&str, i64)> = rows
        .iter()
        .map(|r| (r.org.as_str(), Level::Minute.floor(r.ts)))
        .collect();
    let mut level = Level::Minute;
    loop {
        let buckets: Vec<(&str, i64)> = touched.iter().copied().collect();
        for chunk in buckets.chunks(concurrency) {
            let recomputed = chunk.iter().map(|&(org, b)| store.recompute(org, level, b));
            futures::future::try_join_all(recomputed).await?;
        }
        let Some(parent) = level.parent() else { break };
        touched = touched
            .iter()
            .map(|&(org, b)| (org, parent.floor(b)))
            .collect();
        level = parent;
    }
    Ok(())
}
