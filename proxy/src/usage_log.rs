//! The usage sink: a bounded in-process queue of [`UsageRecord`]s (one per metered request) and the
//! drain that writes them to the log (target `usage`, one JSON line each with `--log-format json`).
//! The record type is `leaky_wire::UsageRecord`; the control plane's consumer will replace this
//! sink. The queue belongs to the [`Background`](crate::background::Background) service, which
//! drains it while the server runs and once more at shutdown.
//!
//! The request path does one lock-free push and never wakes anything: the background service drains
//! the queue every `DRAIN_EVERY` (a wake-up per record cost the proxy a cross-thread futex call per
//! request). A full queue drops the record and counts it in `leaky_usage_records_dropped_total`.

use crate::events::Events;
use crossbeam_queue::ArrayQueue;
use leaky_wire::UsageRecord;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Records held between two drains: far above what one `DRAIN_EVERY` of traffic produces.
pub const CAPACITY: usize = 65_536;
/// How often the queue is drained to the log.
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// The producer's and the drain's handle to one queue (clones share it).
#[derive(Clone)]
pub struct UsageSink {
    queue: Arc<ArrayQueue<UsageRecord>>,
    /// The Kafka publisher, when `events.kafka` is set (read by the drain only, lock-free).
    events: Arc<OnceLock<Events>>,
}

impl UsageSink {
    pub fn new(capacity: usize) -> Self {
        UsageSink {
            queue: Arc::new(ArrayQueue::new(capacity.max(1))),
            events: Arc::new(OnceLock::new()),
        }
    }

    /// Makes every later drain publish records through `events` too (once; a second is ignored).
    pub fn attach_events(&self, events: Events) {
        if self.events.set(events).is_err() {
            tracing::warn!("usage events publisher already attached");
        }
    }

    /// The attached publisher, for the shutdown flush.
    pub fn events(&self) -> Option<&Events> {
        self.events.get()
    }

    /// Queues `r` for the log (request path: one push, no wake-up); a full queue drops and counts it.
    pub fn record(&self, r: UsageRecord) {
        if self.queue.push(r).is_err() {
            if let Some(m) = crate::metrics::metrics() {
                m.usage_records_dropped.inc();
            }
        }
    }

    /// Writes every queued record to the log (and hands it to the Kafka publisher); returns how many.
    pub fn drain(&self) -> usize {
        let mut n = 0;
        let mut events = self.events.get().map(Events::session);
        while let Some(r) = self.queue.pop() {
            log(&r);
            if let Some(ev) = events.as_mut() {
                ev.offer(&r);
            }
            n += 1;
        }
        n
    }

    /// Records waiting for the next drain.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// One `usage` log line. The fields and their order are what log consumers parse (tests and
/// pipelines): absent values are written `-` like every log line, not `null` as on the wire.
fn log(r: &UsageRecord) {
    let (trace_id, span_id) = traceparent_ids(r.traceparent.as_deref());
    tracing::info!(
        target: "usage",
        schema_version = r.schema_version,
        request_id = %r.request_id,
        trace_id,
        span_id,
        principal = %r.principal,
        user = %r.user,
        org = r.org.as_deref().unwrap_or("-"),
        tier = %r.tier,
        route = r.route.as_deref().unwrap_or("-"),
        model = %r.model,
        provider = %r.provider,
        prompt_tokens = r.prompt_tokens,
        completion_tokens = r.completion_tokens,
        total_tokens = r.total_tokens(),
        source = r.source.as_str(),
        status = r.status,
        latency_ms = r.latency_ms,
        cached = r.cached,
        charged_tokens = r.charged_tokens,
        "usage"
    );
}

/// `trace_id` and `span_id` of the `traceparent` a record carries, when it names this proxy's server
/// span (tracing on: the ids of the request's other lines, `log_ids.rs`); with tracing off it is the
/// caller's, and the line stays without trace ids like the request's other lines.
fn traceparent_ids(traceparent: Option<&str>) -> (Option<&str>, Option<&str>) {
    match traceparent.filter(|_| crate::trace::enabled()) {
        Some(tp) => split_traceparent(tp),
        None => (None, None),
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>` (as the proxy formats its own) → its trace and span ids.
fn split_traceparent(tp: &str) -> (Option<&str>, Option<&str>) {
    match (tp.get(3..35), tp.get(36..52)) {
        (Some(t), Some(s)) if tp.len() == 55 => (Some(t), Some(s)),
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests;
