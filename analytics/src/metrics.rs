//! The analytics role's Prometheus families (`GET /metrics`), registered once in the process's own
//! registry; counters are updated with atomics, so nothing on the consumer's path can fail for
//! metrics' sake. Names follow DESIGN.md's conventions (`leaky_` prefix, `_total` counters, base
//! units).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every family the role exposes.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Usage events stored (each delivery counts, redeliveries too).
    pub events: IntCounter,
    /// Batches whose writes succeeded and whose offsets were committed.
    pub batches: IntCounter,
    /// Cassandra write attempts that failed and were retried.
    pub write_retries: IntCounter,
    /// Poison messages sent to the dead-letter topic, by reason.
    pub dead_letters: IntCounterVec,
    /// Offset commits that failed (the batch is redelivered, which the idempotent writes absorb).
    pub commit_failures: IntCounter,
    /// Event time to queryable rollup, per event: the consumer's end-to-end lag.
    pub event_lag: Histogram,
    /// Messages between the group's position and the end of its partitions, summed over this
    /// member's partitions (librdkafka's statistics, every few seconds; no extra broker round trip).
    pub consumer_lag: IntGauge,
    /// Distinct anomalies detected by this process, by kind (a re-detected one counts once).
    pub anomalies: IntCounterVec,
    /// Events of a model without a price in effect at their time (cost 0, line flagged `unpriced`).
    pub unpriced_events: IntCounter,
    /// Statements closed and stored by this process (a racing closer that lost counts nothing).
    pub statements_closed: IntCounter,
    /// `report.generated` events published (at least once per closed statement).
    pub reports_published: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let events = IntCounter::new(
            "leaky_analytics_events_total",
            "Usage events written to Cassandra (every delivery)",
        )?;
        let batches = IntCounter::new(
            "leaky_analytics_batches_total",
            "Batches written and committed",
        )?;
        let write_retries = IntCounter::new(
            "leaky_analytics_write_retries_total",
            "Cassandra batch writes retried after a failure",
        )?;
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "leaky_analytics_dead_letters_total",
                "Poison messages sent to the dead-letter topic",
            ),
            &["reason"],
        )?;
        let commit_failures = IntCounter::new(
            "leaky_analytics_commit_failures_total",
            "Kafka offset commits that failed (the batch is redelivered)",
        )?;
        let event_lag = event_lag_histogram()?;
        let consumer_lag = IntGauge::new(
            "leaky_analytics_consumer_lag",
            "Messages not yet consumed on this member's partitions",
        )?;
        let anomalies = anomalies_counter(&registry)?;
        let (unpriced_events, statements_closed, reports_published) =
            statement_counters(&registry)?;
        for c in [&events, &batches, &write_retries, &commit_failures] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(consumer_lag.clone()))?;
        registry.register(Box::new(dead_letters.clone()))?;
        registry.register(Box::new(event_lag.clone()))?;
        leaky_telemetry::register_metrics(&registry)?;
        Ok(Metrics {
            registry,
            events,
            batches,
            write_retries,
            dead_letters,
            commit_failures,
            event_lag,
            consumer_lag,
            anomalies,
            unpriced_events,
            statements_closed,
            reports_published,
        })
    }

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// `leaky_analytics_anomalies_total{kind}`, with every kind present from the start at 0 (a rate()
/// over it needs the series to exist before the first anomaly).
fn anomalies_counter(registry: &Registry) -> Result<IntCounterVec, prometheus::Error> {
    let anomalies = IntCounterVec::new(
        Opts::new(
            "leaky_analytics_anomalies_total",
            "Usage anomalies detected (each distinct anomaly once per process)",
        ),
        &["kind"],
    )?;
    for kind in crate::anomaly::Kind::ALL {
        anomalies.with_label_values(&[kind.as_str()]);
    }
    registry.register(Box::new(anomalies.clone()))?;
    Ok(anomalies)
}

/// The price and statement counters (unpriced events, statements closed, reports published),
/// registered in `registry`.
fn statement_counters(
    registry: &Registry,
) -> Result<(IntCounter, IntCounter, IntCounter), prometheus::Error> {
    let unpriced = IntCounter::new(
        "leaky_analytics_unpriced_events_total",
        "Usage events of a model with no price in effect at their time (costed 0)",
    )?;
    let closed = IntCounter::new(
        "leaky_analytics_statements_closed_total",
        "Statements closed and stored by this process",
    )?;
    let published = IntCounter::new(
        "leaky_analytics_reports_published_total",
        "report.generated events published",
    )?;
    for c in [&unpriced, &closed, &published] {
        registry.register(Box::new(c.clone()))?;
    }
    Ok((unpriced, closed, published))
}

/// `leaky_analytics_event_lag_seconds`: from an event's time to its rollups being written.
fn event_lag_histogram() -> Result<Histogram, prometheus::Error> {
    Histogram::with_opts(
        HistogramOpts::new(
            "leaky_analytics_event_lag_seconds",
            "From an event's time to its rollups being written",
        )
        .buckets(vec![
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
        ]),
    )
}
