//! Usage records: one per metered request (request id, principal, model, provider, tokens, status,
//! latency), pushed on a bounded in-process queue that a sink drains to the log (target `usage`, one
//! JSON line each with `--log-format json`). The control plane's consumer will replace the sink.
//!
//! The request path does one lock-free push and never wakes anything: the sink polls the queue every
//! `DRAIN_EVERY` (a wake-up per record cost the proxy a cross-thread futex call per request). A full
//! queue drops the record and counts it in `leaky_usage_records_dropped_total`.

use crossbeam_queue::ArrayQueue;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub request_id: String,
    pub principal: Arc<str>,
    pub user: Arc<str>,
    pub org: Option<Arc<str>>,
    pub tier: Arc<str>,
    pub route: Option<Arc<str>>,
    pub model: String,
    pub provider: Arc<str>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `reported` (the provider's numbers), `counted` (from the streamed text: the stream was cut or
    /// had no usage chunk) or `reservation` (a non-streamed answer without usage, e.g. malformed or
    /// unfinished: the prompt estimate plus the reserved completion, or the counted tokens if more).
    pub source: &'static str,
    pub status: u16,
    pub latency_ms: f64,
}

const CAPACITY: usize = 65_536;
const DRAIN_EVERY: Duration = Duration::from_millis(50);

fn queue() -> Option<&'static Arc<ArrayQueue<UsageRecord>>> {
    static Q: OnceLock<Option<Arc<ArrayQueue<UsageRecord>>>> = OnceLock::new();
    Q.get_or_init(|| {
        let q = Arc::new(ArrayQueue::new(CAPACITY));
        crate::limiter::spawn_background(sink(q.clone())).then_some(q)
    })
    .as_ref()
}

async fn sink(q: Arc<ArrayQueue<UsageRecord>>) {
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    loop {
        tick.tick().await;
        while let Some(r) = q.pop() {
            log(&r);
        }
    }
}

fn log(r: &UsageRecord) {
    tracing::info!(
        target: "usage",
        request_id = %r.request_id,
        principal = %r.principal,
        user = %r.user,
        org = r.org.as_deref().unwrap_or("-"),
        tier = %r.tier,
        route = r.route.as_deref().unwrap_or("-"),
        model = %r.model,
        provider = %r.provider,
        prompt_tokens = r.prompt_tokens,
        completion_tokens = r.completion_tokens,
        total_tokens = r.prompt_tokens + r.completion_tokens,
        source = r.source,
        status = r.status,
        latency_ms = r.latency_ms,
        "usage"
    );
}

pub fn record(r: UsageRecord) {
    let pushed = queue().is_some_and(|q| q.push(r).is_ok());
    if !pushed {
        if let Some(m) = crate::metrics::metrics() {
            m.usage_records_dropped.inc();
        }
    }
}
