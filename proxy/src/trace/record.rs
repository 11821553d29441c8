//! A kept request as the export queue carries it ([`Record`]: the trace's ids and `Instant`s plus
//! how the request ended), and its spans: the server span with the HTTP and GenAI attributes, a
//! child per phase, a client span per upstream attempt. The queue and the exporter thread are
//! `leaky-telemetry`'s ([`leaky_telemetry::export::Pipeline`]); the attribute strings are built
//! there, on the exporter thread, never on the request path, and so are the phase spans' ids and
//! each attempt's outcome label (an unsampled request that ends well draws and spells neither).

use super::{AttemptSpan, Phase, RequestTrace};
use crate::balancer::Outcome;
use leaky_telemetry::export::Unit;
use leaky_wire::trace_context::new_span_id;
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::borrow::Cow;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// A kept request, as the exporter needs it: the trace's timing plus what the request ended with.
pub(super) struct Record {
    pub(super) trace: Box<RequestTrace>,
    pub(super) end: super::End,
}

impl Unit for Record {
    fn span_count(&self) -> usize {
        1 + self.trace.phases.len() + self.trace.attempts.len()
    }

    /// The server span and its children.
    fn spans(self, scope: &InstrumentationScope, out: &mut Vec<SpanData>) {
        let (t, e) = (&*self.trace, &self.end);
        let at = |i: Instant| t.wall + i.saturating_duration_since(t.start);
        let end = at(Instant::now().min(t.start + Duration::from_secs(86_400)));
        out.reserve(self.span_count());
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
        let mut root = span(
            t,
            scope,
            t.span.span_id,
            root_parent,
            name,
            SpanKind::Server,
        );
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
        new_span_id(),
        t.span.span_id,
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
    let mut s = span(t, scope, a.span_id, t.span.span_id, name, SpanKind::Client);
    s.start_time = start;
    s.end_time = end;
    let ttfb_ms = end
        .duration_since(start)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    // `200`, `503` … or the failure (`connect`, `timeout`).
    let outcome = match a.outcome {
        Outcome::Status(code) => code.to_string(),
        o => o.label().to_string(),
    };
    s.attributes = vec![
        KeyValue::new("leaky.deployment", a.deployment.to_string()),
        KeyValue::new("leaky.upstream.outcome", outcome.clone()),
        KeyValue::new("leaky.upstream.ttft_ms", ttfb_ms),
    ];
    match a.outcome {
        Outcome::Status(code) => {
            s.attributes
                .push(KeyValue::new("http.response.status_code", i64::from(code)));
            if code >= 500 {
                s.status = Status::error(outcome);
            }
        }
        _ => s.status = Status::error(outcome),
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
            TraceId::from_bytes(t.span.trace_id.to_be_bytes()),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::End;
    use super::*;
    use std::sync::Arc;

    fn record(attempts: &[Outcome]) -> Record {
        let start = Instant::now();
        let trace = RequestTrace {
            span: leaky_wire::trace_context::SpanContext {
                trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                span_id: 7,
                sampled: true,
            },
            parent: None,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            start,
            phases: ["auth", "limit.reserve", "settle"]
                .into_iter()
                .map(|name| Phase {
                    name,
                    start,
                    end: start,
                })
                .collect(),
            attempts: attempts
                .iter()
                .enumerate()
                .map(|(i, &outcome)| AttemptSpan {
                    span_id: 100 + i as u64,
                    start,
                    end: start + Duration::from_millis(5),
                    deployment: Arc::from("openai/primary"),
                    outcome,
                })
                .collect(),
        };
        let end = End {
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            status: 200,
            error: false,
            route: None,
            provider: None,
            model: None,
            served_model: None,
            usage: None,
            request_id: "r1".into(),
            org: None,
            reject: None,
        };
        Record {
            trace: Box::new(trace),
            end,
        }
    }

    fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn phases_draw_their_own_ids_and_attempts_spell_their_outcome_at_export() {
        let outcomes = [
            Outcome::Connect,
            Outcome::Timeout,
            Outcome::Status(503),
            Outcome::Status(429),
            Outcome::Status(200),
        ];
        let mut out = Vec::new();
        record(&outcomes).spans(&InstrumentationScope::builder("t").build(), &mut out);
        assert_eq!(out.len(), 1 + 3 + outcomes.len());
        let root = out[0].span_context.span_id();
        assert_eq!(root, SpanId::from_bytes(7u64.to_be_bytes()));
        let mut ids: Vec<SpanId> = out.iter().map(|s| s.span_context.span_id()).collect();
        ids.sort_by_key(|id| id.to_bytes());
        ids.dedup();
        assert_eq!(ids.len(), out.len(), "every span has its own id");
        assert!(!ids.contains(&SpanId::INVALID));
        for s in &out[1..] {
            assert_eq!(s.parent_span_id, root, "{} is the request's child", s.name);
        }
        let expect = [
            ("connect", None, true),
            ("timeout", None, true),
            ("503", Some(503), true),
            ("429", Some(429), false),
            ("200", Some(200), false),
        ];
        for (s, (label, code, failed)) in out[4..].iter().zip(expect) {
            let outcome = attr(s, "leaky.upstream.outcome").map(|v| v.as_str().into_owned());
            assert_eq!(outcome.as_deref(), Some(label));
            let status = attr(s, "http.response.status_code");
            assert_eq!(status, code.map(opentelemetry::Value::I64).as_ref());
            let error = match &s.status {
                Status::Error { description } => Some(description.to_string()),
                _ => None,
            };
            assert_eq!(error.as_deref(), failed.then_some(label), "{label}");
        }
    }
}
