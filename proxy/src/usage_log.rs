//! Usage records: one per metered request (request id, principal, model, provider, tokens, status,
//! latency), sent on a bounded in-process channel to a sink that writes them to the log (target
//! `usage`, one JSON line each with `--log-format json`). The control plane's consumer will replace the
//! sink; the request path only does a non-blocking `try_send` (a full channel drops and counts).

use std::sync::OnceLock;
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub request_id: String,
    pub principal: String,
    pub user: String,
    pub org: String,
    pub tier: String,
    pub route: String,
    pub model: String,
    pub provider: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `reported` (the provider's numbers) or `counted` (from the streamed text; the stream was cut).
    pub source: &'static str,
    pub status: u16,
    pub latency_ms: f64,
}

const CAPACITY: usize = 65_536;

fn channel() -> Option<&'static mpsc::Sender<UsageRecord>> {
    static TX: OnceLock<Option<mpsc::Sender<UsageRecord>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel(CAPACITY);
        crate::limiter::spawn_background(sink(rx)).then_some(tx)
    })
    .as_ref()
}

async fn sink(mut rx: mpsc::Receiver<UsageRecord>) {
    while let Some(r) = rx.recv().await {
        tracing::info!(
            target: "usage",
            request_id = %r.request_id,
            principal = %r.principal,
            user = %r.user,
            org = %r.org,
            tier = %r.tier,
            route = %r.route,
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
}

pub fn record(r: UsageRecord) {
    let sent = channel().is_some_and(|tx| tx.try_send(r).is_ok());
    if !sent {
        if let Some(m) = crate::metrics::metrics() {
            m.usage_records_dropped.inc();
        }
    }
}
