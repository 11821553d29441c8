//! The exporter side of request tracing: a bounded queue of kept requests, and one thread with its
//! own single-threaded runtime that batches them, builds the spans (`SpanData`) and sends them with
//! `opentelemetry-otlp`'s HTTP/protobuf exporter. Nothing here runs on Pingora's workers: the request
//! path only calls [`Queue::push`] (`try_send`), and a slow or dead collector fills the queue, whose
//! overflow is dropped and counted, never waited for. At shutdown, [`shutdown`] has the thread
//! export what is queued and waits for it a bounded time.

use super::{AttemptSpan, Phase, RequestTrace};
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;
use std::borrow::Cow;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How the proxy exports traces.
#[derive(Clone, Debug)]
pub struct TracingOptions {
    /// OTLP/HTTP base URL (`http://127.0.0.1:4318`); spans go to `{endpoint}/v1/traces`.
    pub endpoint: String,
    /// Head sampling ratio in [0, 1] for requests without a caller decision. Errors are kept anyway.
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Kept requests waiting for export; beyond it, requests' spans are dropped (and counted).
    pub queue: usize,
    /// How long the exporter gathers requests into one batch.
    pub flush: Duration,
}

impl Default for TracingOptions {
    fn default() -> Self {
        TracingOptions {
            endpoint: "http://127.0.0.1:4318".into(),
            sample_ratio: 0.01,
            service_name: "leaky-proxy".into(),
            queue: 4096,
            flush: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("the OTLP exporter could not be built: {0}")]
    Exporter(String),
    #[error("the trace exporter thread could not start: {0}")]
    Thread(#[from] std::io::Error),
    #[error("tracing was already started")]
    AlreadyStarted,
}

/// Most requests in one export call.
const MAX_BATCH: usize = 512;

/// The request path's end of the export queue.
pub(super) struct Queue(mpsc::Sender<Record>);

/// Tells the exporter thread to flush and stop; it answers on the channel once done.
struct Stop {
    notify: std::sync::Arc<tokio::sync::Notify>,
    done: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

static STOP: std::sync::OnceLock<Stop> = std::sync::OnceLock::new();

/// Exports the queued requests' spans, waiting at most `within`; `true` once they were sent (or
/// tracing is off). Requests finished later are dropped (`exporter_gone`).
pub fn shutdown(within: Duration) -> bool {
    let Some(stop) = STOP.get() else {
        return true;
    };
    let Some(done) = stop.done.lock().ok().and_then(|mut d| d.take()) else {
        return true;
    };
    stop.notify.notify_one();
    done.recv_timeout(within).is_ok()
}

impl Queue {
    /// Queues a kept request without waiting; a full or closed queue drops it (counted by spans).
    pub(super) fn push(&self, record: Record) {
        if let Err(e) = self.0.try_send(record) {
            let (reason, r) = match e {
                mpsc::error::TrySendError::Full(r) => ("queue_full", r),
                mpsc::error::TrySendError::Closed(r) => ("exporter_gone", r),
            };
            crate::metrics::count_dropped_spans(reason, r.span_count());
        }
    }
}

/// Builds the exporter and starts its thread.
pub(super) fn start(opts: TracingOptions) -> Result<Queue, super::TraceError> {
    let endpoint = format!("{}/v1/traces", opts.endpoint.trim_end_matches('/'));
    let client = opentelemetry_http::hyper::HyperClient::with_default_connector(
        Duration::from_secs(10),
        None,
    );
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| super::TraceError::Exporter(e.to_string()))?;
    exporter.set_resource(
        &Resource::builder_empty()
            .with_service_name(opts.service_name.clone())
            .build(),
    );
    let (tx, rx) = mpsc::channel(opts.queue.max(1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let flush = opts.flush;
    let notify = std::sync::Arc::new(tokio::sync::Notify::new());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let stopping = notify.clone();
    std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || {
            runtime.block_on(run(exporter, rx, flush, stopping));
            let _ = done_tx.send(());
        })?;
    let _ = STOP.set(Stop {
        notify,
        done: std::sync::Mutex::new(Some(done_rx)),
    });
    Ok(Queue(tx))
}

/// The exporter loop: wait for one request, gather more for `flush`, export them as one batch;
/// once `stop` is notified, export everything queued and return.
async fn run(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<Record>,
    flush: Duration,
    stop: std::sync::Arc<tokio::sync::Notify>,
) {
    let scope = InstrumentationScope::builder("leaky-proxy")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut stopping = false;
    while !stopping {
        tokio::select! {
            biased;
            () = stop.notified() => stopping = true,
            n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 { break },
        }
        if !stopping {
            tokio::select! {
                biased;
                () = stop.notified() => stopping = true,
                () = tokio::time::sleep(flush) => {}
            }
        }
        // Stopping: take the whole queue (later requests find it closed and count their drops).
        while let Ok(r) = rx.try_recv() {
            batch.push(r);
            if !stopping && batch.len() >= MAX_BATCH {
                break;
            }
        }
        if stopping {
            rx.close();
            while let Ok(r) = rx.try_recv() {
                batch.push(r);
            }
        }
        let spans: Vec<SpanData> = batch.drain(..).flat_map(|r| r.spans(&scope)).collect();
        let n = spans.len();
        if let Err(e) = exporter.export(spans).await {
            crate::metrics::count_dropped_spans("export_failed", n);
            tracing::warn!(error = %e, spans = n, "trace export failed; spans dropped");
        }
    }
}

/// A kept request, as the exporter needs it: the trace's timing plus what the request ended with.
pub(super) struct Record {
    pub(super) trace: Box<RequestTrace>,
    pub(super) end: super::End,
}

impl Record {
    fn span_count(&self) -> usize {
        1 + self.trace.phases.len() + self.trace.attempts.len()
    }

    /// The server span and its children.
    fn spans(self, scope: &InstrumentationScope) -> Vec<SpanData> {
        let (t, e) = (&*self.trace, &self.end);
        let at = |i: Instant| t.wall + i.saturating_duration_since(t.start);
        let end = at(Instant::now().min(t.start + Duration::from_secs(86_400)));
        let mut out = Vec::with_capacity(self.span_count());
        let root_parent = t.parent.unwrap_or(0);
        // OTel HTTP server spans: a 4xx is the caller's error, not the span's (kept, with `error.type`).
        let status = if e.error && (e.status >= 500 || e.status == 0) {
            Status::error(e.reject.unwrap_or("error"))
        } else {
            Status::Unset
        };
        let name = format!(
            "{} {}",
            self.end.method,
            self.end.route.as_deref().unwrap_or("none")
        );
        let mut root = span(t, scope, t.span_id, root_parent, name, SpanKind::Server);
        root.parent_span_is_remote = t.parent.is_some();
        root.start_time = t.wall;
        root.end_time = end;
        root.attributes = attributes(e);
        root.status = status;
        out.push(root);
        for p in &t.phases {
            out.push(phase_span(t, scope, p, at(p.start), at(p.end)));
        }
        for a in &t.attempts {
            out.push(attempt_span(t, scope, a, at(a.start), at(a.end)));
        }
        out
    }
}

/// The server span's attributes: HTTP, GenAI semantic conventions, and ours.
fn attributes(e: &super::End) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new("http.request.method", e.method.clone()),
        KeyValue::new("url.path", e.path.clone()),
        KeyValue::new("http.response.status_code", i64::from(e.status)),
        KeyValue::new("leaky.request_id", e.request_id.clone()),
    ];
    let mut s = |k: &'static str, v: Option<String>| {
        if let Some(v) = v {
            a.push(KeyValue::new(k, v));
        }
    };
    s("http.route", e.route.as_deref().map(str::to_owned));
    s(
        "gen_ai.provider.name",
        e.provider.as_deref().map(str::to_owned),
    );
    s("gen_ai.system", e.provider.as_deref().map(str::to_owned));
    s("gen_ai.request.model", e.model.clone());
    let served = e.served_model.clone().or_else(|| e.model.clone());
    s("gen_ai.response.model", served);
    s("leaky.org", e.org.as_deref().map(str::to_owned));
    s("leaky.reject", e.reject.map(str::to_owned));
    if e.error {
        s("error.type", Some(e.status.to_string()));
    }
    for (k, v) in [
        ("gen_ai.usage.input_tokens", e.usage.map(|u| u.0)),
        ("gen_ai.usage.output_tokens", e.usage.map(|u| u.1)),
    ] {
        if let Some(v) = v {
            a.push(KeyValue::new(k, i64::try_from(v).unwrap_or(i64::MAX)));
        }
    }
    a
}

fn phase_span(
    t: &RequestTrace,
    scope: &InstrumentationScope,
    p: &Phase,
    start: SystemTime,
    end: SystemTime,
) -> SpanData {
    let mut s = span(
        t,
        scope,
        p.span_id,
        t.span_id,
        p.name.into(),
        SpanKind::Internal,
    );
    s.start_time = start;
    s.end_time = end;
    s
}

/// An attempt span: client kind, the deployment, the outcome and the time to first byte.
fn attempt_span(
    t: &RequestTrace,
    scope: &InstrumentationScope,
    a: &AttemptSpan,
    start: SystemTime,
    end: SystemTime,
) -> SpanData {
    let name = "upstream.attempt".to_string();
    let mut s = span(t, scope, a.span_id, t.span_id, name, SpanKind::Client);
    s.start_time = start;
    s.end_time = end;
    let ttfb_ms = end
        .duration_since(start)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    s.attributes = vec![
        KeyValue::new("leaky.deployment", a.deployment.to_string()),
        KeyValue::new("leaky.upstream.outcome", a.outcome.clone()),
        KeyValue::new("leaky.upstream.ttft_ms", ttfb_ms),
    ];
    if let Ok(code) = a.outcome.parse::<i64>() {
        s.attributes
            .push(KeyValue::new("http.response.status_code", code));
        if code >= 500 {
            s.status = Status::error(a.outcome.clone());
        }
    } else {
        s.status = Status::error(a.outcome.clone());
    }
    let mut events = SpanEvents::default();
    events
        .events
        .push(Event::new("first_byte", end, Vec::new(), 0));
    s.events = events;
    s
}

fn span(
    t: &RequestTrace,
    scope: &InstrumentationScope,
    id: u64,
    parent: u64,
    name: String,
    kind: SpanKind,
) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(t.trace_id.to_be_bytes()),
            SpanId::from_bytes(id.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::from_bytes(parent.to_be_bytes()),
        parent_span_is_remote: false,
        span_kind: kind,
        name: Cow::Owned(name),
        start_time: t.wall,
        end_time: t.wall,
        attributes: Vec::new(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scope.clone(),
    }
}
