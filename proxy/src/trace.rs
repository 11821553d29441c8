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
//! exporter thread (`export.rs`) turns records into spans and sends them over OTLP/HTTP.
//!
//! **Off costs nothing.** Without [`init`], [`begin`] is one `OnceLock` load returning `None`: no
//! allocation, no clock read, and every hook is an `if let Some` on that `None`.

use http::HeaderValue;
use pingora::http::RequestHeader;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;
use tokio::time::Instant;

mod export;

pub use export::{shutdown, TraceError, TracingOptions};

/// The process's trace pipeline: the sampling threshold and the exporter's queue.
struct Pipe {
    /// Head sampling: a trace id whose low 63 bits fall below this is sampled.
    threshold: u64,
    queue: export::Queue,
}

static PIPE: OnceLock<Pipe> = OnceLock::new();

/// Starts the exporter and turns tracing on for every later request (once per process).
pub fn init(opts: TracingOptions) -> Result<(), TraceError> {
    let threshold = ratio_threshold(opts.sample_ratio);
    let queue = export::start(opts)?;
    // Every reason shows (at 0) from the start, so an alert can tell "none dropped" from "absent".
    for reason in ["queue_full", "export_failed", "exporter_gone"] {
        crate::metrics::count_dropped_spans(reason, 0);
    }
    PIPE.set(Pipe { threshold, queue })
        .map_err(|_| TraceError::AlreadyStarted)
}

/// Whether requests are traced (the hot path's only question when tracing is off).
pub fn enabled() -> bool {
    PIPE.get().is_some()
}

/// `ratio` in [0, 1] as a threshold on 63 bits of the trace id (OTel's `TraceIdRatioBased`).
fn ratio_threshold(ratio: f64) -> u64 {
    let r = if ratio.is_nan() {
        0.0
    } else {
        ratio.clamp(0.0, 1.0)
    };
    // 2^63 as f64 is exact; the product fits u64 for r ≤ 1.
    (r * 9_223_372_036_854_775_808.0) as u64
}

/// What one request's trace holds until the completion phase decides to keep it.
pub(crate) struct RequestTrace {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    /// The caller's span, when its `traceparent` was valid.
    pub(crate) parent: Option<u64>,
    pub(crate) sampled: bool,
    pub(crate) wall: SystemTime,
    pub(crate) start: Instant,
    pub(crate) phases: Vec<Phase>,
    pub(crate) attempts: Vec<AttemptSpan>,
}

/// One phase's child span.
pub(crate) struct Phase {
    pub(crate) name: &'static str,
    pub(crate) span_id: u64,
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
    /// `200`, `503` … or the failure (`connect`, `timeout`).
    pub(crate) outcome: String,
}

/// The trace context the exchange needs to start attempt spans and tell the upstream.
#[derive(Clone, Copy)]
pub struct Parent {
    trace_id: u128,
    sampled: bool,
}

/// An attempt span started by [`Parent::attempt`], finished by [`AttemptStart::finish`].
pub struct AttemptStart {
    span_id: u64,
    start: Instant,
}

impl Parent {
    /// Starts an attempt span and puts its `traceparent` on the upstream request `head`.
    pub fn attempt(&self, head: &mut RequestHeader) -> AttemptStart {
        let span_id = new_span_id();
        let tp = format_traceparent(self.trace_id, span_id, self.sampled);
        if let Ok(v) = HeaderValue::from_str(&tp) {
            let _ = head.insert_header("traceparent", v);
        }
        AttemptStart {
            span_id,
            start: Instant::now(),
        }
    }
}

impl AttemptStart {
    pub fn finish(self, deployment: &Arc<str>, outcome: String) -> AttemptSpan {
        AttemptSpan {
            span_id: self.span_id,
            start: self.start,
            end: Instant::now(),
            deployment: deployment.clone(),
            outcome,
        }
    }
}

/// A new request's trace: `None` when tracing is off. Continues the caller's valid `traceparent`.
pub(crate) fn begin(head: &RequestHeader) -> Option<Box<RequestTrace>> {
    let pipe = PIPE.get()?;
    let caller = head
        .headers
        .get("traceparent")
        .and_then(|v| parse_traceparent(v.as_bytes()));
    let (trace_id, parent, sampled) = match caller {
        Some(c) => (c.trace_id, Some(c.span_id), c.sampled),
        None => {
            let id = new_trace_id();
            (id, None, (id as u64 & (u64::MAX >> 1)) < pipe.threshold)
        }
    };
    Some(Box::new(RequestTrace {
        trace_id,
        span_id: new_span_id(),
        parent,
        sampled,
        wall: SystemTime::now(),
        start: Instant::now(),
        phases: Vec::with_capacity(3),
        attempts: Vec::new(),
    }))
}

impl RequestTrace {
    pub(crate) fn parent(&self) -> Parent {
        Parent {
            trace_id: self.trace_id,
            sampled: self.sampled,
        }
    }

    /// The `traceparent` naming this request's server span (for the usage event's Kafka header).
    pub(crate) fn traceparent(&self) -> String {
        format_traceparent(self.trace_id, self.span_id, self.sampled)
    }

    pub(crate) fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The server span's id, as logs and Jaeger show it.
    pub(crate) fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
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
            span_id: new_span_id(),
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
    trace.sampled || error
}

/// Queues a kept request's trace for export (never waits; a full queue drops and counts it).
pub(crate) fn finish(trace: Box<RequestTrace>, end: End) {
    if let Some(pipe) = PIPE.get() {
        pipe.queue.push(export::Record { trace, end });
    }
}

/// A W3C `traceparent` (version 00).
struct TraceParent {
    trace_id: u128,
    span_id: u64,
    sampled: bool,
}

/// `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids and version `ff` are invalid (W3C Trace Context).
fn parse_traceparent(v: &[u8]) -> Option<TraceParent> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2) || version.eq_ignore_ascii_case("ff") || !hex(flags, 2) {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if !hex(trace, 32) || !hex(span, 16) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    Some(TraceParent {
        trace_id,
        span_id,
        sampled,
    })
}

fn format_traceparent(trace_id: u128, span_id: u64, sampled: bool) -> String {
    format!(
        "00-{trace_id:032x}-{span_id:016x}-{:02x}",
        u8::from(sampled)
    )
}

fn new_trace_id() -> u128 {
    // uuid's v4 generator (fast-rng) is already in the tree; never zero in practice, and a zero is
    // replaced so the id stays valid.
    uuid::Uuid::new_v4().as_u128().max(1)
}

fn new_span_id() -> u64 {
    (uuid::Uuid::new_v4().as_u128() as u64).max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = parse_traceparent(tp.as_bytes()).unwrap();
        assert_eq!(p.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.span_id, 0x00f067aa0ba902b7);
        assert!(p.sampled);
        assert_eq!(format_traceparent(p.trace_id, p.span_id, true), tp);
        let unsampled =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!unsampled.unwrap().sampled);
    }

    #[test]
    fn refuses_invalid_traceparents() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[test]
    fn ratio_threshold_bounds() {
        assert_eq!(ratio_threshold(0.0), 0);
        assert_eq!(ratio_threshold(f64::NAN), 0);
        assert_eq!(ratio_threshold(-1.0), 0);
        assert_eq!(ratio_threshold(1.0), 1u64 << 63);
        assert_eq!(ratio_threshold(0.5), 1u64 << 62);
        // Every 63-bit value is below the threshold of 1.0: ratio 1 samples everything.
        assert!((u64::MAX >> 1) < ratio_threshold(1.0));
    }
}
