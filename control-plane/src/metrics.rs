//! The control plane's Prometheus exposition at `GET /metrics` (open, like the proxies' admin
//! `/metrics`: it holds no tenant data; names follow DESIGN.md's conventions).
//!
//! Background work counts into plain atomics ([`Stats`], shared through `ApiState`), so nothing on
//! any path can fail for metrics' sake. A scrape builds a fresh registry from those values and from a
//! few database reads (the outbox backlog), bounded by [`DB_READ_TIMEOUT`]: a slow database shows as
//! `leaky_control_plane_db_up 0`, never as a hung scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::http::{ApiState, Problem, ProblemKind};
use crate::outbox::{self, RelayStats};

/// How long a scrape waits for the database.
pub const DB_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters of the process's background work.
#[derive(Debug, Default)]
pub struct Stats {
    /// The outbox relay of this process (zero when it runs none).
    pub outbox: Arc<RelayStats>,
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

/// `GET /metrics`: Prometheus text format.
pub async fn serve(State(state): State<ApiState>) -> Response {
    let backlog = if state.is_migrated() {
        tokio::time::timeout(DB_READ_TIMEOUT, outbox::backlog(&state.pool))
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    match render(&state.stats, backlog) {
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
pub fn render(
    stats: &Stats,
    backlog: Option<outbox::Backlog>,
) -> Result<String, prometheus::Error> {
    let r = Registry::new();
    let relay = &stats.outbox;
    counter(
        &r,
        "leaky_outbox_published_total",
        "Outbox events the broker acknowledged and the relay marked sent",
        relay.published(),
    )?;
    counter(
        &r,
        "leaky_outbox_relay_errors_total",
        "Relay batches that failed (broker or database); each is retried",
        relay.errors(),
    )?;
    counter(
        &r,
        "leaky_outbox_pruned_total",
        "Sent outbox events deleted after their retention",
        relay.pruned(),
    )?;
    notify_counters(&r, &stats.notify)?;
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
    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
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
}
