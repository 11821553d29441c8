//! The ids on the proxy's log lines about one request: `request_id` always, and `trace_id` /
//! `span_id` (lower-case hex: the trace as the caller's `traceparent` continued it, and this request's
//! server span) whenever tracing is on — every request then carries its ids, sampled or not
//! (`trace.rs`). With tracing off the proxy has no trace ids, and its lines carry `request_id` only.
//!
//! The proxy writes them as explicit fields of each line about a request rather than through a
//! `tracing` span per request: a span would cost an allocation and two thread-local updates per
//! phase on every request, where a field costs nothing until a line is written (the accessors run
//! inside the macro, after the filter said yes). The JSON format lifts the three fields to the
//! line's top level (`src/log_json.rs` in the binary).
//!
//! Lines not about one request (start-up, reloads, a circuit opening, the limiter store degrading,
//! the exporter's drops) carry none of the ids: they name what they are about instead (upstream,
//! store, version).

use crate::ctx::Ctx;

impl Ctx {
    /// `trace_id` of this request's lines (`None`, so no field, when tracing is off).
    pub(crate) fn log_trace_id(&self) -> Option<String> {
        self.trace.as_ref().map(|t| t.span.trace_id_hex())
    }

    /// `span_id` of this request's lines: its server span.
    pub(crate) fn log_span_id(&self) -> Option<String> {
        self.trace.as_ref().map(|t| t.span.span_id_hex())
    }
}

/// The warning for a request whose upstream attempts failed (retried into an answer or not), written
/// when it completes, just before its access line: the attempt trail as `provider/deployment:outcome`,
/// which the access line repeats, at the level operators watch for upstream trouble. Nothing when no
/// attempt failed.
pub(crate) fn failed_attempts(ctx: &Ctx) {
    let Some(trail) = ctx.exchange.trail.as_deref() else {
        return;
    };
    let message = if ctx.exchange.upstream.is_some() {
        "upstream attempt failed; a retry answered"
    } else {
        "upstream attempts failed; no deployment answered"
    };
    tracing::warn!(
        request_id = %ctx.req.request_id,
        trace_id = ctx.log_trace_id(),
        span_id = ctx.log_span_id(),
        attempts = ctx.exchange.attempts,
        failed_attempts = trail,
        route = ctx.req.route.as_deref().unwrap_or("-"),
        model = ctx.req.model.as_deref().unwrap_or("-"),
        "{message}"
    );
}
