//! Hand-rolled Prometheus counters and the `/healthz` and `/metrics` handlers.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::SharedCtx;

/// Hand-rolled Prometheus counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<HashMap<String, HashMap<u16, u64>>>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

impl Metrics {
    pub fn record(&self, endpoint: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(by_status) = map.get_mut(endpoint) {
            *by_status.entry(status).or_insert(0) += 1;
        } else {
            map.insert(endpoint.to_string(), HashMap::from([(status, 1)]));
        }
    }

    pub fn tokens(&self, prompt: u64, completion: u64) {
        crate::control::record_tokens(prompt + completion);
        self.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion, Ordering::Relaxed);
    }

    pub fn render(&self, provider: &str) -> String {
        let mut out = String::with_capacity(1024);
        out.push_str("# HELP stub_requests_total Requests served by the stub, by endpoint and HTTP status.\n");
        out.push_str("# TYPE stub_requests_total counter\n");
        let map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<(&String, u16, u64)> = map
            .iter()
            .flat_map(|(e, s)| s.iter().map(move |(st, n)| (e, *st, *n)))
            .collect();
        rows.sort();
        for (endpoint, status, n) in rows {
            let _ = writeln!(
                out,
                "stub_requests_total{{provider=\"{provider}\",endpoint=\"{}\",status=\"{status}\"}} {n}",
                endpoint.replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
        drop(map);
        out.push_str(
            "# HELP stub_prompt_tokens_total Prompt tokens reported in successful responses.\n",
        );
        out.push_str("# TYPE stub_prompt_tokens_total counter\n");
        let _ = writeln!(
            out,
            "stub_prompt_tokens_total{{provider=\"{provider}\"}} {}",
            self.prompt_tokens.load(Ordering::Relaxed)
        );
        out.push_str("# HELP stub_completion_tokens_total Completion tokens reported in successful responses.\n");
        out.push_str("# TYPE stub_completion_tokens_total counter\n");
        let _ = writeln!(
            out,
            "stub_completion_tokens_total{{provider=\"{provider}\"}} {}",
            self.completion_tokens.load(Ordering::Relaxed)
        );
        out
    }
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn metrics(State(ctx): State<SharedCtx>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ctx.metrics.render(ctx.provider),
    )
        .into_response()
}
