//! The response cache's Prometheus families (`leaky_cache_*`, bounded labels), registered on first
//! use in the proxy's registry. Per-request handles are resolved once per config version (a
//! route's [`RouteMetrics`]) or once per store ([`StoreMetrics`]); the store gauges (`bytes`,
//! `entries`) and `evictions_total` are copied from the stores' own counters at scrape time.

use super::Outcome;
use crate::metrics::{counter_vec, gauge_vec, histogram_vec, metrics};
use leaky_cache::{BypassReason, StoreStats};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Every `leaky_cache_*` family but `leaky_cache_tokens_total` (in `metrics.rs`, next to the
/// other token counts).
struct Families {
    requests: IntCounterVec,
    bypass: IntCounterVec,
    lookup: HistogramVec,
    unavailable: IntCounterVec,
    stored: IntCounterVec,
    evictions: IntCounterVec,
    bytes: IntGaugeVec,
    entries: IntGaugeVec,
}

#[rustfmt::skip]
fn build(r: &prometheus::Registry) -> Result<Families, prometheus::Error> {
    Ok(Families {
        requests: counter_vec(r, "leaky_cache_requests_total", "Requests on cache-enabled routes, by route, model (the route's models, else other) and result (hit, miss, bypass)", &["route", "model", "result"])?,
        bypass: counter_vec(r, "leaky_cache_bypass_total", "Requests that skipped the response cache (or answers it did not store), by route and reason", &["route", "reason"])?,
        lookup: histogram_vec(r, "leaky_cache_lookup_duration_seconds", "Time of one response-cache lookup, by store (memory, redis)", &["store"])?,
        unavailable: counter_vec(r, "leaky_cache_store_unavailable_total", "Lookups answered as a miss because the store failed or did not answer in time, by store", &["store"])?,
        stored: counter_vec(r, "leaky_cache_stored_total", "Answers stored in the response cache, by store", &["store"])?,
        evictions: counter_vec(r, "leaky_cache_evictions_total", "Entries evicted to stay within the store's byte budget (not expirations), by store", &["store"])?,
        bytes: gauge_vec(r, "leaky_cache_bytes", "Bytes held by the response cache's in-process store", &["store"])?,
        entries: gauge_vec(r, "leaky_cache_entries", "Entries held by the response cache's in-process store", &["store"])?,
    })
}

fn families() -> Option<&'static Families> {
    static F: OnceLock<Option<Families>> = OnceLock::new();
    F.get_or_init(|| match build(&metrics()?.registry) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(error = %e, "cache metrics registration failed");
            None
        }
    })
    .as_ref()
}

/// `[hit, miss, bypass]` of one (route, model).
type Results = [Option<IntCounter>; 3];

fn index(o: Outcome) -> usize {
    match o {
        Outcome::Hit => 0,
        Outcome::Miss => 1,
        Outcome::Bypass => 2,
    }
}

/// One route's handles: results per configured model (any other model counts as `other`) and
/// bypasses per reason.
pub struct RouteMetrics {
    by_model: HashMap<Box<str>, Results>,
    other: Results,
    bypass: [Option<IntCounter>; BypassReason::ALL.len()],
}

impl RouteMetrics {
    pub fn new(route: &str, models: &[&str]) -> Self {
        let f = families();
        let results = |model: &str| -> Results {
            ["hit", "miss", "bypass"].map(|r| {
                f.and_then(|f| {
                    f.requests
                        .get_metric_with_label_values(&[route, model, r])
                        .ok()
                })
            })
        };
        RouteMetrics {
            by_model: models
                .iter()
                .map(|m| (Box::<str>::from(*m), results(m)))
                .collect(),
            other: results("other"),
            bypass: BypassReason::ALL.map(|b| {
                f.and_then(|f| {
                    f.bypass
                        .get_metric_with_label_values(&[route, b.label()])
                        .ok()
                })
            }),
        }
    }

    pub fn count(&self, model: Option<&str>, outcome: Outcome) {
        let results = model
            .and_then(|m| self.by_model.get(m))
            .unwrap_or(&self.other);
        if let Some(c) = &results[index(outcome)] {
            c.inc();
        }
    }

    pub fn count_bypass(&self, reason: BypassReason) {
        let i = BypassReason::ALL.iter().position(|r| *r == reason);
        if let Some(c) = i.and_then(|i| self.bypass[i].as_ref()) {
            c.inc();
        }
    }
}

/// One store's handles.
pub struct StoreMetrics {
    label: &'static str,
    lookup: Option<Histogram>,
    unavailable: Option<IntCounter>,
    stored: Option<IntCounter>,
    /// The store's eviction count at the last scrape (a store replaced by a reload starts at 0:
    /// the family only ever grows by what each store evicted since).
    evictions_seen: AtomicU64,
}

impl StoreMetrics {
    pub fn new(label: &'static str) -> Self {
        let f = families();
        let c = |v: fn(&Families) -> &IntCounterVec| {
            f.and_then(|f| v(f).get_metric_with_label_values(&[label]).ok())
        };
        StoreMetrics {
            label,
            lookup: f.and_then(|f| f.lookup.get_metric_with_label_values(&[label]).ok()),
            unavailable: c(|f| &f.unavailable),
            stored: c(|f| &f.stored),
            evictions_seen: AtomicU64::new(0),
        }
    }

    pub fn observe_lookup(&self, seconds: f64) {
        if let Some(h) = &self.lookup {
            h.observe(seconds);
        }
    }

    pub fn count_unavailable(&self) {
        if let Some(c) = &self.unavailable {
            c.inc();
        }
    }

    pub fn count_stored(&self) {
        if let Some(c) = &self.stored {
            c.inc();
        }
    }

    /// Copies the store's own counters (scrape time).
    pub fn sync(&self, s: &StoreStats, gauges: bool) {
        let Some(f) = families() else {
            return;
        };
        let before = self.evictions_seen.swap(s.evictions, Ordering::Relaxed);
        if let Ok(c) = f.evictions.get_metric_with_label_values(&[self.label]) {
            c.inc_by(s.evictions.saturating_sub(before));
        }
        if !gauges {
            return;
        }
        for (g, v) in [(&f.bytes, s.bytes), (&f.entries, s.entries)] {
            if let Ok(g) = g.get_metric_with_label_values(&[self.label]) {
                g.set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
    }
}
