//! Cross-service tracing for the control plane and analytics (issue 17): the same model as the
//! proxy's request traces (`leaky_proxy::trace`), for services built on axum, sqlx and rdkafka —
//! and the one OTLP export pipeline of every service, the proxy included.
//!
//! - [`context`]: W3C `traceparent` parsing and formatting, ids;
//! - [`span`]: spans recorded per unit of work and decided when its root ends — head sampling is
//!   parent-based (the caller's flag, else the trace id against `--trace-sample-ratio`), and a unit
//!   with a failed span is exported at any ratio; the current span is a tokio task-local
//!   ([`scope`], [`child`], [`current`]), which is how the outbox learns whose transaction appended
//!   an event;
//! - [`export`]: the bounded queue and the OTLP/HTTP exporter thread, the drop counter, and the
//!   bounded flush at shutdown ([`shutdown`]); its [`export::Pipeline`] is the proxy's too (over
//!   the proxy's request records);
//! - `http` (feature `http`, axum): the server span middleware and client spans for forwarded calls;
//! - `kafka` (feature `kafka`, rdkafka): `traceparent` headers and consumer spans.
//!
//! Both features are on by default; the proxy turns them off (it needs only the export side).
//!
//! Every per-request and per-message `tracing` span made here carries `trace_id` and `span_id` (and
//! `request_id` when there is one), sampled or not: the JSON log lines lift them.
//!
//! Why not the SDK's `TracerProvider` (with `tracing-opentelemetry` on top): its span processors
//! decide span by span, so a failed request's whole unit cannot be kept at a ratio of 0, and its
//! batch processor does not count what it drops in a metric of ours; the bridge would also export
//! every library's `tracing` span. The spans here are few and chosen, like the proxy's.

pub use leaky_wire::trace_context as context;
pub mod export;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod span;

pub use context::{parse_traceparent, SpanContext};
pub use export::{enabled, init, register_metrics, shutdown, Options, TelemetryError};
pub use opentelemetry::trace::SpanKind;
pub use opentelemetry::KeyValue;
pub use span::{child, current, scope, Span};

/// The current span's `traceparent`, if the task runs in one (what the outbox stores).
pub fn current_traceparent() -> Option<String> {
    current().map(|c| c.traceparent())
}
