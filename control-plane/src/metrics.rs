//! The control plane's Prometheus exposition at `GET /metrics` (open, like the proxies' admin
//! `/metrics`: it holds no tenant data; names follow DESIGN.md's conventions).
//!
//! Background work counts into plain atomics ([`Stats`], shared through `ApiState`), so nothing on
//! any path can fail for metrics' sake. A scrape builds a fresh registry from those values and from a
//! few database reads (the outbox backlog, sagas by state), bounded by [`DB_READ_TIMEOUT`]: a slow database shows as
//! `leaky_control_plane_db_up 0`, never as a hung scrape.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::billing::reconcile::ReconcileStats;
use crate::billing::{self, store};
use crate::consume::ConsumerStats;
use crate::http::{ApiState, Problem, ProblemKind};
use crate::outbox::{self, RelayStats};

/// How long a scrape waits for the database.
pub const DB_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters of the process's background work.
#[derive(Debug, Default)]
pub struct Stats {
    /// The outbox relay of this process (zero when it runs none).
    pub outbox: Arc<RelayStats>,
    /// The balance reconciler of this process (zero when it runs none).
    pub reconcile: Arc<ReconcileStats>,
    /// The Kafka consumers this process runs, by name (`leaky-ledger`: the usage consumer), set once
    /// each starts.
    pub consumers: std::sync::Mutex<Vec<(String, Arc<ConsumerStats>)>>,
}

impl Stats {
    /// Registers a consumer's counters under `name` (its consumer group).
    pub fn add_consumer(&self, name: &str, stats: Arc<ConsumerStats>) {
        let mut consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        consumers.push((name.to_owned(), stats));
    }
}

/// What a scrape read from the database (each `None` when it could not in time).
#[derive(Debug, Clone, Default)]
pub struct DbReads {
    pub backlog: Option<outbox::Backlog>,
    pub sagas: Option<Vec<(&'static str, i64)>>,
}

/// `GET /metrics`: Prometheus text format.
pub async fn serve(State(state): State<ApiState>) -> Response {
    let reads = if state.is_migrated() {
        let read = async {
            DbReads {
                backlog: outbox::backlog(&state.pool).await.ok(),
                sagas: store::saga_counts(&state.pool).await.ok(),
            }
        };
        tokio::time::timeout(DB_READ_TIMEOUT, read)
            .await
            .unwrap_or_default()
    } else {
        DbReads::default()
    };
    match render(&state.stats, &reads) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                TextEncoder::new().format_type().to_owned(),
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: exposition failed");
            Problem::new(ProblemKind::Internal, "the metrics could not be rendered").into_response()
        }
    }
}

/// The exposition text for these values.
pub fn render(stats: &Stats, reads: &DbReads) -> Result<String, prometheus::Error> {
    let r = Registry::new();
    outbox_metrics(&r, stats, reads.backlog.clone())?;
    saga_metrics(&r, reads.sagas.as_deref())?;
    consumer_metrics(&r, stats)?;
    let corrections = IntCounterVec::new(
        Opts::new(
            "leaky_reconcile_corrections_total",
            "Balance mirror corrections by the reconciler (credited, debited_raised, debited_lowered)",
        ),
        &["kind"],
    )?;
    for (kind, n) in stats.reconcile.corrections() {
        corrections.with_label_values(&[kind]).inc_by(n);
    }
    r.register(Box::new(corrections))?;
    counter(
        &r,
        "leaky_reconcile_passes_total",
        "Reconciler passes this process ran",
        stats.reconcile.passes(),
    )?;
    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// Sagas by state (from the database, when read), steps by result, needs-attention moves.
fn saga_metrics(
    r: &Registry,
    sagas: Option<&[(&'static str, i64)]>,
) -> Result<(), prometheus::Error> {
    if let Some(sagas) = sagas {
        let g = IntGaugeVec::new(Opts::new("leaky_sagas", "Sagas by state"), &["state"])?;
        for (state, n) in sagas {
            g.with_label_values(&[state]).set(*n);
        }
        r.register(Box::new(g))?;
    }
    counter(
        r,
        "leaky_saga_needs_attention_total",
        "Sagas this process moved to needs_attention",
        billing::needs_attention_total(),
    )?;
    let steps = IntCounterVec::new(
        Opts::new(
            "leaky_saga_steps_total",
            "Saga step attempts this process finished, by step and result",
        ),
        &["step", "result"],
    )?;
    for (step, result, n) in billing::saga::step_counts() {
        steps.with_label_values(&[step, result]).inc_by(n);
    }
    r.register(Box::new(steps))
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
    )
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

fn counter(r: &Registry, name: &str, help: &str, value: u64) -> Result<(), prometheus::Error> {
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
        let text = render(&stats, &DbReads::default()).unwrap();
        assert!(text.contains("leaky_outbox_published_total 0"), "{text}");
        assert!(text.contains("leaky_control_plane_db_up 0"), "{text}");
        assert!(!text.contains("leaky_outbox_lag_seconds"), "{text}");
        let backlog = outbox::Backlog {
            unsent: 3,
            oldest_age_seconds: 1.5,
        };
        let reads = DbReads {
            backlog: Some(backlog),
            sagas: Some(vec![("running", 2), ("completed", 5)]),
        };
        let text = render(&stats, &reads).unwrap();
        assert!(
            text.contains("leaky_sagas{state=\"completed\"} 5"),
            "{text}"
        );
        assert!(text.contains("leaky_outbox_unsent_events 3"), "{text}");
        assert!(text.contains("leaky_outbox_lag_seconds 1.5"), "{text}");
        assert!(text.contains("leaky_control_plane_db_up 1"), "{text}");
    }

    #[test]
    fn renders_saga_consumer_and_reconcile_families_with_bounded_labels() {
        let stats = Stats::default();
        stats.add_consumer("leaky-ledger", Arc::default());
        let text = render(&stats, &DbReads::default()).unwrap();
        for line in [
            "leaky_consumer_applied_total{consumer=\"leaky-ledger\"} 0",
            "leaky_consumer_duplicates_total{consumer=\"leaky-ledger\"} 0",
            "leaky_consumer_poison_total{consumer=\"leaky-ledger\"} 0",
            "leaky_consumer_retries_total{consumer=\"leaky-ledger\"} 0",
            "leaky_reconcile_corrections_total{kind=\"debited_lowered\"} 0",
            "leaky_saga_needs_attention_total",
            "leaky_saga_steps_total{result=\"failed\",step=\"authorize\"}",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(
            !text.contains("leaky_sagas{"),
            "no saga gauge without a DB read"
        );
        let steps = text
            .lines()
            .filter(|l| l.starts_with("leaky_saga_steps_total{"))
            .count();
        assert_eq!(steps, 16, "8 steps (with `other`) × 2 results");
    }
}
