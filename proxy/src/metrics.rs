//! Prometheus metrics of the data plane (`leaky_` prefix, base units, bounded labels).
//!
//! Per-request handles are resolved once per config version (`RequestMetrics::new`) and stored in the
//! snapshot, so the hot path increments pre-resolved counters instead of hashing label values.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use std::sync::OnceLock;

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// Every metric family of the proxy, registered in one registry.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub rejections: IntCounterVec,
    pub upstream_retries: IntCounterVec,
    pub reloads: IntCounterVec,
    pub config_version: IntGauge,
    pub config_last_reload_success: IntGauge,
    pub ratelimit_decisions: IntCounterVec,
    pub ratelimit_settlements: IntCounterVec,
    pub tokens: IntCounterVec,
    pub store_degraded: IntGauge,
    pub store_errors: IntCounter,
    pub store_fallbacks: IntCounter,
    pub store_trips: IntCounter,
    pub usage_records_dropped: IntCounter,
    pub usage_events_published: IntCounter,
    pub usage_events_delivery_failures: IntCounter,
    pub usage_events_spooled: IntCounter,
    pub usage_events_dropped: IntCounterVec,
    pub usage_events_queue_depth: IntGauge,
    pub usage_events_spool_bytes: IntGauge,
    pub jwt_revoked_tokens: IntGauge,
    pub trace_spans_dropped: IntCounterVec,
}

/// Every family of the proxy's registry, one per line: name, help, labels.
#[rustfmt::skip]
fn build() -> Result<Metrics, prometheus::Error> {
    let r = Registry::new();
    Ok(Metrics {
        requests: counter_vec(&r, "leaky_requests_total", "Requests answered, by route, provider and status class", &["route", "provider", "status_class"])?,
        duration: histogram_vec(&r, "leaky_request_duration_seconds", "Time from request start to the last response byte", &["route", "provider"])?,
        upstream_duration: histogram_vec(&r, "leaky_upstream_duration_seconds", "Time from sending the upstream request to its response headers", &["provider"])?,
        rejections: counter_vec(&r, "leaky_rejections_total", "Requests refused by the gateway, by route and reason", &["route", "reason"])?,
        upstream_retries: counter_vec(&r, "leaky_upstream_retries_total", "Upstream attempts repeated, by provider and reason", &["provider", "reason"])?,
        reloads: counter_vec(&r, "leaky_config_reloads_total", "Config reloads, by result (success, error)", &["result"])?,
        config_version: gauge(&r, "leaky_config_version", "Version number of the active config snapshot")?,
        config_last_reload_success: gauge(&r, "leaky_config_last_reload_successful", "1 if the last reload attempt succeeded, 0 if the active config is older than a failed edit")?,
        ratelimit_decisions: counter_vec(&r, "leaky_ratelimit_decisions_total", "Rate-limit decisions, by policy and decision (allowed, delayed, soft_exceeded, denied, unavailable)", &["policy", "decision"])?,
        ratelimit_settlements: counter_vec(&r, "leaky_ratelimit_settlements_total", "Settled reservations, by source of the usage (reported, counted, reservation, refunded)", &["source"])?,
        tokens: counter_vec(&r, "leaky_tokens_total", "Tokens used through the gateway, by provider and kind (prompt, completion)", &["provider", "kind"])?,
        store_degraded: gauge(&r, "leaky_ratelimit_store_degraded", "1 while the shared limiter store (Redis) is unavailable and policies follow on_store_error")?,
        store_errors: counter(&r, "leaky_ratelimit_store_errors_total", "Limiter store calls that failed or timed out")?,
        store_fallbacks: counter(&r, "leaky_ratelimit_store_fallbacks_total", "Limiter decisions taken by a fallback mode (fail_open, fail_closed, local)")?,
        store_trips: counter(&r, "leaky_ratelimit_store_breaker_trips_total", "Times the limiter store's breaker opened")?,
        usage_records_dropped: counter(&r, "leaky_usage_records_dropped_total", "Usage records dropped because the usage channel was full")?,
        usage_events_published: counter(&r, "leaky_usage_events_published_total", "Usage events Kafka acknowledged")?,
        usage_events_delivery_failures: counter(&r, "leaky_usage_events_delivery_failures_total", "Usage event deliveries that failed or timed out (the event is spooled or dropped)")?,
        usage_events_spooled: counter(&r, "leaky_usage_events_spooled_total", "Usage events written to the on-disk spool")?,
        usage_events_dropped: counter_vec(&r, "leaky_usage_events_dropped_total", "Usage events dropped, by reason (queue_full, spool_full, no_spool, spool_error)", &["reason"])?,
        usage_events_queue_depth: gauge(&r, "leaky_usage_events_queue_depth", "Usage events waiting for Kafka (publisher channel plus producer in flight)")?,
        usage_events_spool_bytes: gauge(&r, "leaky_usage_events_spool_bytes", "Bytes of usage events in the on-disk spool")?,
        jwt_revoked_tokens: gauge(&r, "leaky_jwt_revoked_tokens", "Revoked access tokens (not yet expired) the jwt filters refuse, as the control plane last pushed them")?,
        trace_spans_dropped: counter_vec(&r, "leaky_trace_spans_dropped_total", "Trace spans dropped before export, by reason (queue_full, export_failed, exporter_gone)", &["reason"])?,
        registry: r,
    })
}

/// Registers `m` in `r` and hands it back.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: M,
) -> Result<M, prometheus::Error> {
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    registered(r, IntCounter::new(name, help)?)
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    registered(r, IntGauge::new(name, help)?)
}

pub(crate) fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    registered(r, IntCounterVec::new(Opts::new(name, help), labels)?)
}

pub(crate) fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<prometheus::IntGaugeVec, prometheus::Error> {
    registered(
        r,
        prometheus::IntGaugeVec::new(Opts::new(name, help), labels)?,
    )
}

/// A latency histogram (`LATENCY_BUCKETS`).
pub(crate) fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<HistogramVec, prometheus::Error> {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    registered(r, HistogramVec::new(opts, labels)?)
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

/// The process-wide metrics; `None` only if registration failed (a bug: names collide), in which case
/// the proxy serves without metrics rather than not at all.
pub fn metrics() -> Option<&'static Metrics> {
    METRICS
        .get_or_init(|| match build() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(error = %e, "metrics registration failed; serving without metrics");
                None
            }
        })
        .as_ref()
}

/// Copies the limiter store's guard counters into the registry (at scrape time: they are atomics in
/// the guard, not touched per request by this module).
pub fn sync_store_stats(stats: Option<leaky_limit::GuardStats>) {
    let (Some(m), Some(s)) = (metrics(), stats) else {
        return;
    };
    m.store_degraded.set(i64::from(s.degraded));
    for (c, v) in [
        (&m.store_errors, s.errors_total),
        (&m.store_fallbacks, s.fallbacks_total),
        (&m.store_trips, s.trips_total),
    ] {
        c.inc_by(v.saturating_sub(c.get()));
    }
}

/// Prometheus text exposition of every metric.
pub fn render() -> String {
    use prometheus::Encoder;
    let Some(m) = metrics() else {
        return String::new();
    };
    let mut buf = Vec::new();
    if prometheus::TextEncoder::new()
        .encode(&m.registry.gather(), &mut buf)
        .is_err()
    {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// Pre-resolved handles for one (route, provider) pair.
#[derive(Clone)]
pub struct RequestMetrics {
    /// Indexed by status class 1..=5 (index 0 for anything else).
    by_class: [Option<IntCounter>; 6],
    duration: Option<Histogram>,
    upstream: Option<Histogram>,
    /// `leaky_tokens_total{provider, kind="prompt"|"completion"}`.
    tokens: [Option<IntCounter>; 2],
}

impl RequestMetrics {
    pub fn new(route: &str, provider: &str) -> Self {
        let Some(m) = metrics() else {
            return RequestMetrics {
                by_class: Default::default(),
                duration: None,
                upstream: None,
                tokens: Default::default(),
            };
        };
        let class = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];
        RequestMetrics {
            by_class: class.map(|c| {
                m.requests
                    .get_metric_with_label_values(&[route, provider, c])
                    .ok()
            }),
            duration: m
                .duration
                .get_metric_with_label_values(&[route, provider])
                .ok(),
            upstream: m
                .upstream_duration
                .get_metric_with_label_values(&[provider])
                .ok(),
            tokens: ["prompt", "completion"]
                .map(|k| m.tokens.get_metric_with_label_values(&[provider, k]).ok()),
        }
    }

    pub fn observe(&self, status: u16, seconds: f64) {
        let i = match status / 100 {
            c @ 1..=5 => c as usize,
            _ => 0,
        };
        if let Some(c) = &self.by_class[i] {
            c.inc();
        }
        if let Some(h) = &self.duration {
            h.observe(seconds);
        }
    }

    pub fn count_tokens(&self, prompt: u64, completion: u64) {
        for (c, n) in self.tokens.iter().zip([prompt, completion]) {
            if let (Some(c), true) = (c, n > 0) {
                c.inc_by(n);
            }
        }
    }

    pub fn observe_upstream(&self, seconds: f64) {
        if let Some(h) = &self.upstream {
            h.observe(seconds);
        }
    }
}

/// The `leaky_ratelimit_decisions_total` counter of one policy and decision.
pub fn decision_counter(policy: &str, decision: &str) -> Option<IntCounter> {
    metrics()?
        .ratelimit_decisions
        .get_metric_with_label_values(&[policy, decision])
        .ok()
}

/// `leaky_trace_spans_dropped_total{reason}`: spans of kept requests that never reached the exporter
/// or the collector (off the request path except for `queue_full`, a single counter add).
pub fn count_dropped_spans(reason: &str, spans: usize) {
    if let Some(c) = metrics().and_then(|m| {
        m.trace_spans_dropped
            .get_metric_with_label_values(&[reason])
            .ok()
    }) {
        c.inc_by(spans as u64);
    }
}

/// `leaky_ratelimit_settlements_total{source}`: three counters, resolved once.
pub fn count_settlement(source: &'static str) {
    static COUNTERS: OnceLock<Option<[IntCounter; 4]>> = OnceLock::new();
    const SOURCES: [&str; 4] = ["reported", "counted", "reservation", "refunded"];
    let counters = COUNTERS.get_or_init(|| {
        let m = metrics()?;
        let c = |s: &str| {
            m.ratelimit_settlements
                .get_metric_with_label_values(&[s])
                .ok()
        };
        Some([
            c(SOURCES[0])?,
            c(SOURCES[1])?,
            c(SOURCES[2])?,
            c(SOURCES[3])?,
        ])
    });
    if let (Some(cs), Some(i)) = (counters, SOURCES.iter().position(|s| *s == source)) {
        cs[i].inc();
    }
}

pub fn count_rejection(route: &str, reason: &str) {
    if let Some(m) = metrics() {
        m.rejections.with_label_values(&[route, reason]).inc();
    }
}

pub fn count_retry(provider: &str, reason: &str) {
    if let Some(m) = metrics() {
        m.upstream_retries
            .with_label_values(&[provider, reason])
            .inc();
    }
}

/// Upstream resilience: circuits, health, retries, bulkheads, fallbacks, stream cuts.
pub struct ResilienceMetrics {
    pub circuit_state: prometheus::IntGaugeVec,
    pub transitions: IntCounterVec,
    pub healthy: prometheus::IntGaugeVec,
    pub cooldowns: IntCounterVec,
    pub attempts: IntCounterVec,
    pub budget_exhausted: IntCounterVec,
    pub bulkhead_rejected: IntCounterVec,
    pub bulkhead_queued: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub stream_cuts: IntCounterVec,
}

#[rustfmt::skip]
fn build_resilience(registry: &Registry) -> Result<ResilienceMetrics, prometheus::Error> {
    let r = registry;
    Ok(ResilienceMetrics {
        circuit_state: gauge_vec(r, "leaky_circuit_state", "Circuit breaker state per deployment (provider/name): 0 closed, 1 open, 2 half-open", &["upstream"])?,
        transitions: counter_vec(r, "leaky_circuit_transitions_total", "Circuit breaker state changes per deployment", &["upstream", "from", "to"])?,
        healthy: gauge_vec(r, "leaky_upstream_healthy", "1 while a deployment passes its active health check (always 1 without one)", &["upstream"])?,
        cooldowns: counter_vec(r, "leaky_upstream_cooldowns_total", "Times a deployment was skipped for its 429 retry-after", &["upstream"])?,
        attempts: counter_vec(r, "leaky_upstream_attempts_total", "Upstream attempts per deployment by outcome (ok, connect, timeout, 429, 5xx)", &["upstream", "outcome"])?,
        budget_exhausted: counter_vec(r, "leaky_retry_budget_exhausted_total", "Retries not made because the route's retry budget was spent", &["route"])?,
        bulkhead_rejected: counter_vec(r, "leaky_bulkhead_rejected_total", "Requests refused by a full bulkhead, by scope (tenant, deployment) and reason (queue_full, queue_timeout)", &["scope", "reason"])?,
        bulkhead_queued: counter_vec(r, "leaky_bulkhead_queued_total", "Requests that waited in a bulkhead queue, by scope", &["scope"])?,
        fallbacks: counter_vec(r, "leaky_fallbacks_total", "Requests served by a fallback model after the primary pool was exhausted", &["route", "from", "to"])?,
        stream_cuts: counter_vec(r, "leaky_upstream_stream_cuts_total", "Responses cut by the gateway after they started (idle, total)", &["upstream", "reason"])?,
    })
}

/// The resilience metric families (registered on first use in the proxy's registry).
pub fn resilience() -> Option<&'static ResilienceMetrics> {
    static R: OnceLock<Option<ResilienceMetrics>> = OnceLock::new();
    R.get_or_init(|| {
        let m = metrics()?;
        match build_resilience(&m.registry) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, "resilience metrics registration failed");
                None
            }
        }
    })
    .as_ref()
}

/// Increments `vec{labels}` (off the per-request fast path: failures, retries, rejections).
pub fn bump(vec: impl Fn(&ResilienceMetrics) -> &IntCounterVec, labels: &[&str]) {
    if let Some(c) = resilience().and_then(|m| vec(m).get_metric_with_label_values(labels).ok()) {
        c.inc();
    }
}

/// Token estimates of large request bodies (`metering::prepare`).
pub struct EstimateMetrics {
    /// `leaky_estimate_offloaded_total`: estimates run on the bounded pool.
    pub offloaded: IntCounter,
    /// `leaky_estimate_bound_rejections_total`: requests refused from the byte bound of their
    /// prompt, before any exact count.
    pub bound_rejections: IntCounter,
}

/// The estimate counters (registered on first use in the proxy's registry).
pub fn estimates() -> Option<&'static EstimateMetrics> {
    static E: OnceLock<Option<EstimateMetrics>> = OnceLock::new();
    E.get_or_init(|| {
        let registry = &metrics()?.registry;
        let counter = |name: &str, help: &str| -> Option<IntCounter> {
            let c = IntCounter::new(name, help).ok()?;
            registry.register(Box::new(c.clone())).ok()?;
            Some(c)
        };
        Some(EstimateMetrics {
            offloaded: counter(
                "leaky_estimate_offloaded_total",
                "Token estimates of large bodies run on the bounded estimate pool",
            )?,
            bound_rejections: counter(
                "leaky_estimate_bound_rejections_total",
                "Requests refused because a lower bound of their cost can never fit a limit, before an exact count",
            )?,
        })
    })
    .as_ref()
}

/// One listener's connection counters, resolved once when the listener is built: the connection
/// path increments pre-resolved handles (one atomic per connection, one per refusal).
pub struct ListenerMetrics {
    /// `leaky_connections_open{listener}`.
    pub open: IntGauge,
    /// `leaky_connections_refused_total{listener,reason}`, indexed like [`REFUSAL_REASONS`].
    pub refused: [IntCounter; 7],
    /// The `listener` label, for the series only a TLS listener has (`cert_expiry`).
    name: String,
}

/// The `reason` label values of `leaky_connections_refused_total`.
pub const REFUSAL_REASONS: [&str; 7] = [
    "overloaded",
    "head_timeout",
    "head_too_large",
    "bad_request",
    "unsupported_coding",
    "plain_http",
    "tls_handshake",
];

struct ConnectionFamilies {
    open: prometheus::IntGaugeVec,
    refused: IntCounterVec,
    cert_expiry: prometheus::IntGaugeVec,
}

fn connection_families() -> Option<&'static ConnectionFamilies> {
    static F: OnceLock<Option<ConnectionFamilies>> = OnceLock::new();
    F.get_or_init(|| {
        let registry = &metrics()?.registry;
        let open = prometheus::IntGaugeVec::new(
            Opts::new(
                "leaky_connections_open",
                "Client connections a listener holds (each takes a slot of its max_connections)",
            ),
            &["listener"],
        )
        .ok()?;
        let refused = IntCounterVec::new(
            Opts::new(
                "leaky_connections_refused_total",
                "Connections a listener answered itself and closed: overloaded (503, at its connection limit; a TLS listener closes unanswered), head_timeout (408), head_too_large (431), bad_request (400: no Host, Content-Length with Transfer-Encoding, unparsable head), unsupported_coding (501), plain_http (400: plain HTTP to a TLS listener), tls_handshake (a TLS handshake that failed or did not finish within header_timeout)",
            ),
            &["listener", "reason"],
        )
        .ok()?;
        let cert_expiry = prometheus::IntGaugeVec::new(
            Opts::new(
                "leaky_tls_cert_expiry_timestamp_seconds",
                "When the certificate a TLS listener serves expires (notAfter, Unix seconds); alert well before it",
            ),
            &["listener"],
        )
        .ok()?;
        registry.register(Box::new(open.clone())).ok()?;
        registry.register(Box::new(refused.clone())).ok()?;
        registry.register(Box::new(cert_expiry.clone())).ok()?;
        Some(ConnectionFamilies {
            open,
            refused,
            cert_expiry,
        })
    })
    .as_ref()
}

impl ListenerMetrics {
    /// The handles of listener `name` (`proxy`, `admin`); `None` if the registry is unavailable.
    pub fn new(name: &str) -> Option<Self> {
        let f = connection_families()?;
        let refused = |r: &str| f.refused.get_metric_with_label_values(&[name, r]).ok();
        let mut counters = Vec::with_capacity(REFUSAL_REASONS.len());
        for r in REFUSAL_REASONS {
            counters.push(refused(r)?);
        }
        Some(ListenerMetrics {
            open: f.open.get_metric_with_label_values(&[name]).ok()?,
            refused: counters.try_into().ok()?,
            name: name.to_string(),
        })
    }

    /// `leaky_tls_cert_expiry_timestamp_seconds{listener}`, created only when a listener turns TLS
    /// on, so a plain listener exports no expiry series.
    pub fn cert_expiry(&self) -> Option<IntGauge> {
        connection_families()?
            .cert_expiry
            .get_metric_with_label_values(&[&self.name])
            .ok()
    }
}

/// `leaky_cache_tokens_total{kind}`: tokens answered from the response cache (the original
/// answers' usage), apart from `leaky_tokens_total`, which counts tokens generated upstream.
pub fn count_cached_tokens(prompt: u64, completion: u64) {
    static C: OnceLock<Option<[IntCounter; 2]>> = OnceLock::new();
    let counters = C.get_or_init(|| {
        let m = metrics()?;
        let vec = counter_vec(
            &m.registry,
            "leaky_cache_tokens_total",
            "Tokens answered from the response cache (the original answers' usage), by kind (prompt, completion)",
            &["kind"],
        )
        .ok()?;
        let c = |k: &str| vec.get_metric_with_label_values(&[k]).ok();
        Some([c("prompt")?, c("completion")?])
    });
    if let Some(cs) = counters {
        for (c, n) in cs.iter().zip([prompt, completion]) {
            if n > 0 {
                c.inc_by(n);
            }
        }
    }
}
