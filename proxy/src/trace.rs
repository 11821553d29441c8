//! OpenTelemetry spans of each proxied request: one server span, a child per phase (`auth`,
//! `limit.reserve`, each `upstream.attempt` with its time to first byte, `settle`), GenAI semantic
//! convention attributes, and W3C `traceparent` continued from the caller and sent upstream.
//!
//! **Record first, decide at the end.** With tracing on, a request carries a [`RequestTrace`] (ids,
//! a wall-clock anchor and a few `Instant` pairs); nothing is exported while it runs. In the
//! completion phase ([`finish`]) the request is kept when the head decision sampled it (parent-based:
//! the caller's `sampled` flag, else the trace id against the configured ratio) **or** when it ended
//! in an error (status ≥ 400, a rejection or an abort) — so error traces survive a ratio of 0 without
//! a tail-sampling collector. Kept records go to a bounded queue (`try_send`, never waits); a full
//! queue drops the record and counts its spans in `leaky_trace_spans_dropped_total{reason}`. The
//! queue and its exporter thread are `leaky-telemetry`'s, shared with the control plane and
//! analytics; the thread turns records into spans (`record.rs`) and sends them over OTLP/HTTP.
//!
//! **Off costs nothing.** Without [`init`], [`begin`] is one `OnceLock` load returning `None`: no
//! allocation, no clock read, and every hook is an `if let Some` on that `None`.

use crate::balancer::Outcome;
use crate::wire::UpstreamHead;
use leaky_telemetry::export::Pipeline;
use leaky_wire::trace_context::{
    new_span_id, new_trace_id, parse_traceparent, sampled_by_ratio, SpanContext,
};
use pingora::http::RequestHeader;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;
use tokio::time::Instant;

mod record;

pub use leaky_telemetry::export::{Options as TracingOptions, TelemetryError as TraceError};

/// The process's trace pipeline: the sampling threshold and the exporter's queue of kept requests;
/// drops are counted in the proxy's `leaky_trace_spans_dropped_total{reason}`.
static PIPE: OnceLock<Pipeline<record::Record>> = OnceLock::new();

/// Starts the exporter and turns tracing on for every later request (once per process).
pub fn init(opts: TracingOptions) -> Result<(), TraceError> {
    if PIPE.get().is_some() {
        return Err(TraceError::AlreadyStarted);
    }
    let pipe = Pipeline::start(&opts, crate::metrics::count_dropped_spans)?;
    PIPE.set(pipe).map_err(|_| TraceError::AlreadyStarted)
}

/// Exports the queued requests' spans, waiting at most `within`; `true` once they were sent (or
/// tracing is off). Requests finished later are dropped (`exporter_gone`).
pub fn shutdown(within: std::time::Duration) -> bool {
    PIPE.get().is_none_or(|p| p.shutdown(within))
}

/// Whether requests are traced (the hot path's only question when tracing is off).
pub fn enabled() -> bool {
    PIPE.get().is_some()
}

/// What one request's trace holds until the completion phase decides to keep it.
pub(crate) struct RequestTrace {
    /// The server span: the trace id (continued or new), this request's span id, the head decision.
    pub(crate) span: SpanContext,
    /// The caller's span, when its `traceparent` was valid.
    pub(crate) parent: Option<u64>,
    pub(crate) wall: SystemTime,
    pub(crate) start: Instant,
    pub(crate) phases: Vec<Phase>,
    pub(crate) attempts: Vec<AttemptSpan>,
}

/// One phase's child span (its id is drawn only if the trace is kept: `record.rs`).
pub(crate) struct Phase {
    pub(crate) name: &'static str,
    pub(crate) start: Instant,
    pub(crate) end: Instant,
}

/// One upstream attempt: from sending to its response header (or failure).
#[derive(Debug)]
pub struct AttemptSpan {
    pub(crate) span_id: u64,
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    pub(crate) deployment: Arc<str>,
    /// The status, or the failure (`connect`, `timeout`); spelled out only if the trace is kept.
    pub(crate) outcome: Outcome,
}

/// The trace context the exchange needs to start attempt spans and tell the upstream: the
/// request's server span, whose span id each attempt replaces with its own.
#[derive(Clone, Copy)]
pub struct Parent(SpanContext);

/// An attempt span started by [`Parent::attempt`], finished by [`AttemptStart::finish`].
pub struct AttemptStart {
    span_id: u64,
    start: Instant,
}

impl Parent {
    /// Starts an attempt span and puts its `traceparent` on the upstream request `head` (built
    /// without the caller's: `request::upstream_head` of a traced request).
    pub fn attempt(&self, head: &mut UpstreamHead) -> AttemptStart {
        let span_id = new_span_id();
        head.append_traceparent(&SpanContext { span_id, ..self.0 }.traceparent_bytes());
        AttemptStart {
            span_id,
            start: Instant::now(),
        }
    }
}

impl AttemptStart {
    pub fn finish(self, deployment: &Arc<str>, outcome: Outcome) -> AttemptSpan {
        AttemptSpan {
            span_id: self.span_id,
            start: self.start,
            end: Instant::now(),
            deployment: deployment.clone(),
            outcome,
        }
    }
}

/// The W3C trace context header, a constant so a lookup does not parse the name (issue 19).
pub(crate) const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// A new request's trace: `None` when tracing is off. Continues the caller's valid `traceparent`.
pub(crate) fn begin(head: &RequestHeader) -> Option<Box<RequestTrace>> {
    let pipe = PIPE.get()?;
    let caller = head
        .headers
        .get(&TRACEPARENT)
        .and_then(|v| parse_traceparent(v.as_bytes()));
    let (trace_id, parent, sampled) = match caller {
        Some(c) => (c.trace_id, Some(c.span_id), c.sampled),
        None => {
            let id = new_trace_id();
            (id, None, sampled_by_ratio(id, pipe.threshold()))
        }
    };
    Some(Box::new(RequestTrace {
        span: SpanContext {
            trace_id,
            span_id: new_span_id(),
            sampled,
        },
        parent,
        wall: SystemTime::now(),
        start: Instant::now(),
        phases: Vec::with_capacity(3),
        attempts: Vec::new(),
    }))
}

impl RequestTrace {
    pub(crate) fn parent(&self) -> Parent {
        Parent(self.span)
    }
}

/// The start of a phase, read only when the request is traced.
pub(crate) fn mark(trace: &Option<Box<RequestTrace>>) -> Option<Instant> {
    trace.as_ref().map(|_| Instant::now())
}

/// Takes the exchange's attempt spans into the request's trace.
pub(crate) fn adopt(trace: &mut Option<Box<RequestTrace>>, attempts: &mut Vec<AttemptSpan>) {
    if let Some(t) = trace.as_mut() {
        t.attempts.append(attempts);
    }
}

/// Records the phase `name` from `since` (a [`mark`]) to now.
pub(crate) fn phase(
    trace: &mut Option<Box<RequestTrace>>,
    name: &'static str,
    since: Option<Instant>,
) {
    if let (Some(t), Some(start)) = (trace.as_mut(), since) {
        t.phases.push(Phase {
            name,
            start,
            end: Instant::now(),
        });
    }
}

/// How a request ended, as the completion phase saw it (`access_log::end_trace` fills it in).
pub(crate) struct End {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) status: u16,
    /// Status ≥ 400, a rejection, or an abort.
    pub(crate) error: bool,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) provider: Option<Arc<str>>,
    pub(crate) model: Option<String>,
    pub(crate) served_model: Option<String>,
    /// Settled usage: (prompt, completion) tokens.
    pub(crate) usage: Option<(u64, u64)>,
    pub(crate) request_id: String,
    pub(crate) org: Option<Arc<str>>,
    pub(crate) reject: Option<&'static str>,
}

/// Whether a finished request's trace is kept: head-sampled, or ended in an error.
pub(crate) fn keeps(trace: &RequestTrace, error: bool) -> bool {
    trace.span.sampled || error
}

/// Queues a kept request's trace for export (never waits; a full queue drops and counts it).
pub(crate) fn finish(trace: Box<RequestTrace>, end: End) {
    if let Some(pipe) = PIPE.get() {
        pipe.push(record::Record { trace, end });
    }
}
