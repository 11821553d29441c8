//! The export side, shared by every service (the proxy's request traces included): a bounded queue
//! of kept units and one thread, with its own single-threaded runtime, that batches them, turns them
//! into spans and sends them with `opentelemetry-otlp`'s HTTP/protobuf exporter. The work path only
//! calls [`Pipeline::push`] (`try_send`): a slow or dead collector fills the queue, whose overflow
//! is dropped and counted in `leaky_trace_spans_dropped_total{reason}`, never waited for.
//! [`Pipeline::shutdown`] flushes what is queued within a bounded time.
//!
//! What a queue carries is a [`Unit`]: the control plane's and analytics' units are finished
//! `SpanData` (`Vec<SpanData>`); the proxy queues its compact request record and builds the spans'
//! attribute strings here, on the exporter thread, not on the request path.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::{mpsc, Notify};

/// How a service exports traces.
#[derive(Clone, Debug)]
pub struct Options {
    /// OTLP/HTTP base URL (`http://127.0.0.1:4318`); spans go to `{endpoint}/v1/traces`.
    pub endpoint: String,
    /// Head sampling ratio in [0, 1] for traces without a caller decision. Failures are kept anyway.
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Kept units waiting for export; beyond it, units are dropped (and their spans counted).
    pub queue: usize,
    /// How long the exporter gathers units into one batch.
    pub flush: Duration,
}

impl Options {
    /// The defaults for `service_name` exporting to `endpoint`.
    pub fn new(endpoint: impl Into<String>, service_name: impl Into<String>) -> Options {
        Options {
            endpoint: endpoint.into(),
            sample_ratio: 0.01,
            service_name: service_name.into(),
            queue: 4096,
            flush: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("the OTLP exporter could not be built: {0}")]
    Exporter(String),
    #[error("the trace exporter thread could not start: {0}")]
    Thread(#[from] std::io::Error),
    #[error("tracing was already started")]
    AlreadyStarted,
}

/// One kept unit of work in the export queue: its spans, built on the exporter thread.
pub trait Unit: Send + 'static {
    /// How many spans it holds (what a drop counts).
    fn span_count(&self) -> usize;
    /// Appends its spans to `out`; `scope` is the pipeline's instrumentation scope.
    fn spans(self, scope: &InstrumentationScope, out: &mut Vec<SpanData>);
}

/// Finished spans, as the control plane's and analytics' units are.
impl Unit for Vec<SpanData> {
    fn span_count(&self) -> usize {
        self.len()
    }

    fn spans(mut self, _: &InstrumentationScope, out: &mut Vec<SpanData>) {
        out.append(&mut self);
    }
}

/// How drops are counted: `(reason, spans)`, reason one of `queue_full`, `export_failed`,
/// `exporter_gone` (the proxy counts in its own registry's counter, the services in [`dropped`]'s).
pub type CountDropped = fn(&str, usize);

/// Most units in one export call.
const MAX_BATCH: usize = 512;

/// A running exporter: the sampling threshold and the queue's sending end.
pub struct Pipeline<U> {
    threshold: u64,
    tx: mpsc::Sender<U>,
    scope: InstrumentationScope,
    count_dropped: CountDropped,
    stop: Arc<Notify>,
    /// Signalled by the exporter thread once it flushed after [`Pipeline::shutdown`].
    done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl<U: Unit> Pipeline<U> {
    /// Builds the OTLP exporter and starts its thread. Every drop reason is counted (at 0) from
    /// the start, so an alert can tell "none dropped" from "absent".
    pub fn start(opts: &Options, count_dropped: CountDropped) -> Result<Self, TelemetryError> {
        let exporter = exporter(opts)?;
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let stop = Arc::new(Notify::new());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let scope = InstrumentationScope::builder(opts.service_name.clone())
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let exporting = Exporting {
            exporter,
            scope: scope.clone(),
            flush: opts.flush,
            count_dropped,
        };
        let stopping = stop.clone();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || runtime.block_on(exporting.run(rx, stopping, done_tx)))?;
        for reason in ["queue_full", "export_failed", "exporter_gone"] {
            count_dropped(reason, 0);
        }
        Ok(Pipeline {
            threshold: crate::context::ratio_threshold(opts.sample_ratio),
            tx,
            scope,
            count_dropped,
            stop,
            done: Mutex::new(Some(done_rx)),
        })
    }

    /// Head sampling: a trace id whose low 63 bits fall below this is sampled.
    pub fn threshold(&self) -> u64 {
        self.threshold
    }

    /// The spans' instrumentation scope (the service's name and this crate's version).
    pub fn scope(&self) -> &InstrumentationScope {
        &self.scope
    }

    /// Queues a kept unit without waiting; a full or closed queue drops it (counted by spans).
    pub fn push(&self, unit: U) {
        if let Err(e) = self.tx.try_send(unit) {
            let (reason, u) = match e {
                mpsc::error::TrySendError::Full(u) => ("queue_full", u),
                mpsc::error::TrySendError::Closed(u) => ("exporter_gone", u),
            };
            (self.count_dropped)(reason, u.span_count());
        }
    }

    /// Flushes the queued units, waiting at most `within`; `true` when everything queued was
    /// exported (or it was already shut down). Later units are dropped (`exporter_gone`).
    pub fn shutdown(&self, within: Duration) -> bool {
        let done = self.done.lock().ok().and_then(|mut d| d.take());
        let Some(done) = done else {
            return true;
        };
        self.stop.notify_one();
        done.recv_timeout(within).is_ok()
    }
}

fn exporter(opts: &Options) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
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
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    exporter.set_resource(
        &Resource::builder_empty()
            .with_service_name(opts.service_name.clone())
            .build(),
    );
    Ok(exporter)
}

/// The exporter thread's side.
struct Exporting {
    exporter: opentelemetry_otlp::SpanExporter,
    scope: InstrumentationScope,
    flush: Duration,
    count_dropped: CountDropped,
}

impl Exporting {
    /// The exporter loop: wait for a unit, gather more for `flush`, export them as one batch; on
    /// `stop`, export what is queued and signal `done`.
    async fn run<U: Unit>(
        self,
        mut rx: mpsc::Receiver<U>,
        stop: Arc<Notify>,
        done: std::sync::mpsc::Sender<()>,
    ) {
        let mut batch: Vec<U> = Vec::with_capacity(MAX_BATCH);
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
                    () = tokio::time::sleep(self.flush) => {}
                }
            }
            while let Ok(u) = rx.try_recv() {
                batch.push(u);
                if !stopping && batch.len() >= MAX_BATCH {
                    break;
                }
            }
            if stopping {
                // Later units find the queue closed and count their drops (`exporter_gone`).
                rx.close();
                while let Ok(u) = rx.try_recv() {
                    batch.push(u);
                }
            }
            self.export(&mut batch).await;
        }
        let _ = done.send(());
    }

    async fn export<U: Unit>(&self, batch: &mut Vec<U>) {
        let mut spans = Vec::new();
        for u in batch.drain(..) {
            u.spans(&self.scope, &mut spans);
        }
        let n = spans.len();
        if n == 0 {
            return;
        }
        if let Err(e) = self.exporter.export(spans).await {
            (self.count_dropped)("export_failed", n);
            tracing::warn!(error = %e, spans = n, "trace export failed; spans dropped");
        }
    }
}

/// The services' pipeline (the proxy keeps its own, of request records).
static PIPE: OnceLock<Pipeline<Vec<SpanData>>> = OnceLock::new();

/// Starts the exporter and turns tracing on for this process (once).
pub fn init(opts: Options) -> Result<(), TelemetryError> {
    if PIPE.get().is_some() {
        return Err(TelemetryError::AlreadyStarted);
    }
    let pipe = Pipeline::start(&opts, count_dropped)?;
    PIPE.set(pipe).map_err(|_| TelemetryError::AlreadyStarted)
}

/// Whether tracing is on.
pub fn enabled() -> bool {
    PIPE.get().is_some()
}

/// Flushes the queued spans, waiting at most `within`; `true` when everything queued was exported
/// (or tracing is off). Later spans are dropped (counted as `exporter_gone`).
pub fn shutdown(within: Duration) -> bool {
    PIPE.get().is_none_or(|p| p.shutdown(within))
}

/// The head-sampling threshold, `None` when tracing is off.
pub(crate) fn threshold() -> Option<u64> {
    PIPE.get().map(Pipeline::threshold)
}

pub(crate) fn scope() -> InstrumentationScope {
    PIPE.get().map(|p| p.scope().clone()).unwrap_or_default()
}

/// Queues a kept unit without waiting; a full or closed queue drops it (counted by spans).
pub(crate) fn push(spans: Vec<SpanData>) {
    if let Some(pipe) = PIPE.get() {
        pipe.push(spans);
    }
}

fn dropped() -> Option<&'static IntCounterVec> {
    static C: OnceLock<Option<IntCounterVec>> = OnceLock::new();
    C.get_or_init(|| {
        let opts = Opts::new(
            "leaky_trace_spans_dropped_total",
            "Spans not exported, by reason (queue_full, export_failed, exporter_gone).",
        );
        IntCounterVec::new(opts, &["reason"]).ok()
    })
    .as_ref()
}

fn count_dropped(reason: &str, spans: usize) {
    if let Some(c) = dropped().and_then(|c| c.get_metric_with_label_values(&[reason]).ok()) {
        c.inc_by(spans as u64);
    }
}

/// Registers `leaky_trace_spans_dropped_total{reason}` in `r` (the process's one counter, so several
/// registries may show it).
pub fn register_metrics(r: &Registry) -> Result<(), prometheus::Error> {
    match dropped() {
        Some(c) => r.register(Box::new(c.clone())),
        None => Ok(()),
    }
}
