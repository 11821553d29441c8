//! The control plane's Prometheus exposition at `GET /metrics` (open, like the proxies' admin
//! `/metrics`: it holds no tenant data; names follow DESIGN.md's conventions).
//!
//! Background work counts into plain atomics ([`Stats`], shared through `ApiState`), so nothing on
//! any path can fail for metrics' sake. A scrape builds a fresh registry from those values and from a
//! few database reads (the outbox backlog here; sagas by state in billing's [`Collector`]), each
//! bounded by [`DB_READ_TIMEOUT`]: a slow database shows as `leaky_control_plane_db_up 0`, never as a
//! hung scrape. Contexts add their own families through a [`Collector`] registered at start-up (the
//! process wires them: this module knows no context but the outbox and the consumer kit).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use sqlx::PgPool;

use crate::consume::ConsumerStats;
use crate::outbox::{self, RelayStats};

/// How long a scrape waits for the database (per read).
pub const DB_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// A context's metric families, added to each scrape's registry.
#[async_trait]
pub trait Collector: Send + Sync {
    /// Registers this context's families in `r`. `pool` is given once the schema is ready; each
    /// database read must be bounded by [`DB_READ_TIMEOUT`] and, when it fails, leave its family out.
    async fn collect(&self, r: &Registry, pool: Option<&PgPool>) -> Result<(), prometheus::Error>;
}

/// Counters of the process's background work.
#[derive(Default)]
pub struct Stats {
    /// The outbox relay of this process (zero when it runs none).
    pub outbox: Arc<RelayStats>,
    /// The Kafka consumers this process runs, by name (`leaky-ledger`: the usage consumer), added as
    /// each starts.
    consumers: Mutex<Vec<(String, Arc<ConsumerStats>)>>,
    collectors: Mutex<Vec<Arc<dyn Collector>>>,
    /// The notification delivery worker of this process.
    pub notify: Arc<NotifyStats>,
}

/// What the delivery workers of this process have done (`/metrics`).
#[derive(Debug, Default)]
pub struct NotifyStats {
    counts: [AtomicU64; 8],
    disabled: AtomicU64,
}

/// A notification delivery's result, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryResult {
    Delivered,
    /// Failed; retried later.
    Retry,
    /// Failed for the last time.
    Failed,
    /// Email without SMTP configured.
    Skipped,
}

impl DeliveryResult {
    pub const ALL: [DeliveryResult; 4] = [
        DeliveryResult::Delivered,
        DeliveryResult::Retry,
        DeliveryResult::Failed,
        DeliveryResult::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryResult::Delivered => "delivered",
            DeliveryResult::Retry => "retry",
            DeliveryResult::Failed => "failed",
            DeliveryResult::Skipped => "skipped",
        }
    }
}

/// The two notification channels.
pub const NOTIFY_CHANNELS: [&str; 2] = ["webhook", "email"];

impl NotifyStats {
    fn slot(channel: &str, outcome: DeliveryResult) -> usize {
        let c = usize::from(channel == "email");
        c * 4
            + DeliveryResult::ALL
                .iter()
                .position(|o| *o == outcome)
                .unwrap_or(0)
    }

    pub fn count(&self, channel: &str, outcome: DeliveryResult) {
        self.counts[Self::slot(channel, outcome)].fetch_add(1, Ordering::Relaxed);
    }

    /// Deliveries on `channel` with `outcome` so far.
    pub fn deliveries(&self, channel: &str, outcome: DeliveryResult) -> u64 {
        self.counts[Self::slot(channel, outcome)].load(Ordering::Relaxed)
    }

    pub fn count_disabled(&self) {
        self.disabled.fetch_add(1, Ordering::Relaxed);
    }

    /// Webhook endpoints this process disabled.
    pub fn endpoints_disabled(&self) -> u64 {
        self.disabled.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("outbox", &self.outbox)
            .finish_non_exhaustive()
    }
}

impl Stats {
    /// Registers a consumer's counters under `name` (its consumer group).
    pub fn add_consumer(&self, name: &str, stats: Arc<ConsumerStats>) {
        let mut consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        consumers.push((name.to_owned(), stats));
    }

    /// Adds a context's families to every later scrape.
    pub fn add_collector(&self, collector: Arc<dyn Collector>) {
        let mut collectors = self.collectors.lock().unwrap_or_else(|e| e.into_inner());
        collectors.push(collector);
    }

    fn collectors(&self) -> Vec<Arc<dyn Collector>> {
        self.collectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The exposition text of `stats` and `backlog` (without the collectors' families).
/// The whole exposition: `stats`, the outbox backlog and every collector, reading the database
/// (`pool`, none before migrations) within [`DB_READ_TIMEOUT`] for the backlog.
pub async fn exposition(stats: &Stats, pool: Option<&PgPool>) -> Result<String, prometheus::Error> {
    let backlog = match pool {
        Some(pool) => tokio::time::timeout(DB_READ_TIMEOUT, outbox::backlog(pool))
            .await
            .ok()
            .and_then(Result::ok),
        None => None,
    };
    let r = registry(stats, backlog)?;
    for c in stats.collectors() {
        c.collect(&r, pool).await?;
    }
    encode(&r)
}

pub fn render(
    stats: &Stats,
    backlog: Option<outbox::Backlog>,
) -> Result<String, prometheus::Error> {
    encode(&registry(stats, backlog)?)
}

fn registry(
    stats: &Stats,
    backlog: Option<outbox::Backlog>,
) -> Result<Registry, prometheus::Error> {
    let r = Registry::new();
    leaky_telemetry::register_metrics(&r)?;
    outbox_metrics(&r, stats, backlog)?;
    consumer_metrics(&r, stats)?;
    Ok(r)
}

/// `r` in the text format.
pub fn encode(r: &Registry) -> Result<String, prometheus::Error> {
    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// `leaky_consumer_*_total{consumer}` of every consumer this process runs.
fn consumer_metrics(r: &Registry, stats: &Stats) -> Result<(), prometheus::Error> {
    let consumers = stats
        .consumers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let family = |name: &str, help: &str, read: fn(&ConsumerStats) -> u64| {
        let v = IntCounterVec::new(Opts::new(name, help), &["consumer"])?;
        for (consumer, s) in &consumers {
            v.with_label_values(&[consumer.as_str()]).inc_by(read(s));
        }
        r.register(Box::new(v))
    };
    family(
        "leaky_consumer_applied_total",
        "Events a consumer applied (first delivery)",
        ConsumerStats::applied,
    )?;
    family(
        "leaky_consumer_duplicates_total",
        "Redeliveries a consumer skipped",
        ConsumerStats::duplicates,
    )?;
    family(
        "leaky_consumer_poison_total",
        "Undecodable or rejected messages a consumer skipped",
        ConsumerStats::poison,
    )?;
    family(
        "leaky_consumer_retries_total",
        "Failed effects a consumer retried",
        ConsumerStats::retries,
    )?;
    let lag = IntGaugeVec::new(
        Opts::new(
            "leaky_consumer_lag",
            "Messages not yet consumed on a consumer's partitions (librdkafka statistics, every 5 s)",
        ),
        &["consumer"],
    )?;
    for (consumer, s) in &consumers {
        lag.with_label_values(&[consumer.as_str()]).set(s.lag());
    }
    r.register(Box::new(lag))
}

fn outbox_metrics(
    r: &Registry,
    stats: &Stats,
    backlog: Option<outbox::Backlog>,
) -> Result<(), prometheus::Error> {
    let relay = &stats.outbox;
    counter(
        r,
        "leaky_outbox_published_total",
        "Outbox events the broker acknowledged and the relay marked sent",
        relay.published(),
    )?;
    counter(
        r,
        "leaky_outbox_relay_errors_total",
        "Relay batches that failed (broker or database); each is retried",
        relay.errors(),
    )?;
    counter(
        r,
        "leaky_outbox_pruned_total",
        "Sent outbox events deleted after their retention",
        relay.pruned(),
    )?;
    notify_counters(r, &stats.notify)?;
    let db_up = IntGauge::new(
        "leaky_control_plane_db_up",
        "1 if this scrape could read PostgreSQL in time",
    )?;
    r.register(Box::new(db_up.clone()))?;
    if let Some(b) = backlog {
        db_up.set(1);
        let unsent = IntGauge::new(
            "leaky_outbox_unsent_events",
            "Committed outbox events not yet published",
        )?;
        unsent.set(b.unsent);
        r.register(Box::new(unsent))?;
        let lag = Gauge::new(
            "leaky_outbox_lag_seconds",
            "Age of the oldest unpublished outbox event (0 when none)",
        )?;
        lag.set(b.oldest_age_seconds);
        r.register(Box::new(lag))?;
    }
    Ok(())
}

/// `leaky_notify_deliveries_total{channel,result}` and `leaky_webhook_endpoints_disabled_total`.
fn notify_counters(r: &Registry, n: &NotifyStats) -> Result<(), prometheus::Error> {
    let opts = Opts::new(
        "leaky_notify_deliveries_total",
        "Notification delivery attempts by channel (webhook, email) and result (delivered, retry, failed, skipped)",
    );
    let v = IntCounterVec::new(opts, &["channel", "result"])?;
    for channel in NOTIFY_CHANNELS {
        for o in DeliveryResult::ALL {
            v.with_label_values(&[channel, o.as_str()])
                .inc_by(n.deliveries(channel, o));
        }
    }
    r.register(Box::new(v))?;
    counter(
        r,
        "leaky_webhook_endpoints_disabled_total",
        "Webhook endpoints disabled after repeated failed deliveries",
        n.endpoints_disabled(),
    )
}

/// Registers counter `name` at `value`.
pub fn counter(r: &Registry, name: &str, help: &str, value: u64) -> Result<(), prometheus::Error> {
    let c = IntCounter::new(name, help)?;
    c.inc_by(value);
    r.register(Box::new(c))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_relay_counters_and_the_backlog_only_when_read() {
        let stats = Stats::default();
        let text = render(&stats, None).unwrap();
        assert!(text.contains("leaky_outbox_published_total 0"), "{text}");
        assert!(text.contains("leaky_control_plane_db_up 0"), "{text}");
        assert!(!text.contains("leaky_outbox_lag_seconds"), "{text}");
        stats.notify.count("email", DeliveryResult::Skipped);
        let text = render(&stats, None).unwrap();
        assert!(
            text.contains(r#"leaky_notify_deliveries_total{channel="email",result="skipped"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("leaky_webhook_endpoints_disabled_total 0"),
            "{text}"
        );
        let backlog = outbox::Backlog {
            unsent: 3,
            oldest_age_seconds: 1.5,
        };
        let text = render(&stats, Some(backlog)).unwrap();
        assert!(text.contains("leaky_outbox_unsent_events 3"), "{text}");
        assert!(text.contains("leaky_outbox_lag_seconds 1.5"), "{text}");
        assert!(text.contains("leaky_control_plane_db_up 1"), "{text}");
    }

    #[test]
    fn renders_the_consumers_counters() {
        let stats = Stats::default();
        stats.add_consumer("leaky-ledger", Arc::default());
        let text = render(&stats, None).unwrap();
        for line in [
            "leaky_consumer_applied_total{consumer=\"leaky-ledger\"} 0",
            "leaky_consumer_duplicates_total{consumer=\"leaky-ledger\"} 0",
            "leaky_consumer_poison_total{consumer=\"leaky-ledger\"} 0",
            "leaky_consumer_retries_total{consumer=\"leaky-ledger\"} 0",
            "leaky_consumer_lag{consumer=\"leaky-ledger\"} 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
