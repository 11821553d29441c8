//! Spans, recorded first and decided at the end.
//!
//! A **unit** is the part of one trace this process produces for one piece of work: an HTTP request, a
//! consumed message, a relayed event. Its root [`Span`] is started by [`Span::root`] (continuing a
//! remote parent when there is one); children ([`Span::child`], [`child`]) buffer their finished
//! `SpanData` in the unit. When the root ends, the unit is kept if the head decision sampled it
//! (parent-based: the caller's flag, else the trace id against the ratio) **or** if any span of it
//! failed ([`Span::fail`]) — so errors are exported at a ratio of 0 without a tail-sampling
//! collector — and handed to the bounded export queue, which never waits.
//!
//! The unit's buffer is a `Mutex` touched once per span end by the unit's own task: it is never
//! contended across requests. With tracing off (no [`crate::init`]), spans still get ids (the log
//! lines carry them) but record nothing.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use opentelemetry::trace::{
    Link, SpanContext as OtelContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::context::{new_span_id, new_trace_id, sampled_by_ratio, SpanContext};
use crate::export;

/// One unit's finished spans, kept or dropped together when its root ends.
struct Unit {
    sampled: bool,
    failed: AtomicBool,
    spans: Mutex<Vec<SpanData>>,
}

/// A span in progress; ended by [`Span::end`] or on drop.
pub struct Span {
    ctx: SpanContext,
    parent: u64,
    parent_remote: bool,
    /// `None` when tracing is off: the span has ids and nothing else.
    unit: Option<Arc<Unit>>,
    root: bool,
    name: Cow<'static, str>,
    kind: SpanKind,
    start: SystemTime,
    attrs: Vec<KeyValue>,
    links: Vec<SpanContext>,
    status: Status,
    ended: bool,
}

tokio::task_local! {
    /// The span the current task works in (set by [`scope`]): what [`child`], [`current`] and the
    /// outbox read.
    static CURRENT: Current;
}

#[derive(Clone)]
struct Current {
    ctx: SpanContext,
    unit: Option<Arc<Unit>>,
}

impl Span {
    /// The root of a new unit: a child of the remote `parent` (same trace, its sampling decision),
    /// else the root of a new trace sampled by the configured ratio.
    pub fn root(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: Option<SpanContext>,
    ) -> Span {
        let threshold = export::threshold();
        let (trace_id, parent_id, sampled) = match parent {
            Some(p) => (p.trace_id, p.span_id, p.sampled),
            None => {
                let id = new_trace_id();
                (id, 0, threshold.is_some_and(|t| sampled_by_ratio(id, t)))
            }
        };
        let unit = threshold.map(|_| {
            Arc::new(Unit {
                sampled,
                failed: AtomicBool::new(false),
                spans: Mutex::new(Vec::new()),
            })
        });
        Span::new(
            SpanContext {
                trace_id,
                span_id: new_span_id(),
                sampled,
            },
            parent_id,
            parent.is_some(),
            unit,
            true,
            name.into(),
            kind,
        )
    }

    /// A child of this span, in its unit.
    pub fn child(&self, name: impl Into<Cow<'static, str>>, kind: SpanKind) -> Span {
        child_in(self.ctx, self.unit.clone(), name.into(), kind)
    }

    fn new(
        ctx: SpanContext,
        parent: u64,
        parent_remote: bool,
        unit: Option<Arc<Unit>>,
        root: bool,
        name: Cow<'static, str>,
        kind: SpanKind,
    ) -> Span {
        Span {
            ctx,
            parent,
            parent_remote,
            unit,
            root,
            name,
            kind,
            start: SystemTime::now(),
            attrs: Vec::new(),
            links: Vec::new(),
            status: Status::Unset,
            ended: false,
        }
    }

    /// Its ids (what goes on the wire and on log lines).
    pub fn context(&self) -> SpanContext {
        self.ctx
    }

    /// Whether its unit is recorded at all (tracing on): attributes need not be built otherwise.
    pub fn is_recording(&self) -> bool {
        self.unit.is_some()
    }

    /// Renames it (e.g. once the route template is known).
    pub fn rename(&mut self, name: impl Into<Cow<'static, str>>) {
        self.name = name.into();
    }

    /// Adds an attribute (ignored when tracing is off).
    pub fn attr(&mut self, kv: KeyValue) {
        if self.unit.is_some() {
            self.attrs.push(kv);
        }
    }

    /// Links another span (a batch span to each message's producer, say).
    pub fn link(&mut self, other: SpanContext) {
        if self.unit.is_some() {
            self.links.push(other);
        }
    }

    /// Marks the work as failed with `error.type` = `kind`: the unit is exported whatever the head
    /// decision. `status_error` also sets the span's status to Error (OTel leaves a server span's
    /// status unset on a 4xx: the caller's error, not ours).
    pub fn fail(&mut self, kind: impl Into<String>, status_error: bool) {
        let Some(unit) = &self.unit else {
            return;
        };
        unit.failed.store(true, Ordering::Relaxed);
        let kind = kind.into();
        if status_error {
            self.status = Status::error(kind.clone());
        }
        self.attrs.push(KeyValue::new("error.type", kind));
    }

    /// Ends it now (a drop ends it too).
    pub fn end(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        let Some(unit) = self.unit.take() else {
            return;
        };
        let data = self.data();
        let Ok(mut spans) = unit.spans.lock() else {
            return;
        };
        spans.push(data);
        if self.root && (unit.sampled || unit.failed.load(Ordering::Relaxed)) {
            export::push(std::mem::take(&mut *spans));
        }
    }

    fn data(&mut self) -> SpanData {
        let mut links = SpanLinks::default();
        links.links = self
            .links
            .iter()
            .map(|l| Link::with_context(otel_context(*l, false)))
            .collect();
        SpanData {
            span_context: otel_context(self.ctx, false),
            parent_span_id: SpanId::from_bytes(self.parent.to_be_bytes()),
            parent_span_is_remote: self.parent_remote,
            span_kind: self.kind.clone(),
            name: std::mem::take(&mut self.name),
            start_time: self.start,
            end_time: SystemTime::now(),
            attributes: std::mem::take(&mut self.attrs),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links,
            status: std::mem::replace(&mut self.status, Status::Unset),
            instrumentation_scope: export::scope(),
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.finish();
    }
}

fn otel_context(c: SpanContext, remote: bool) -> OtelContext {
    OtelContext::new(
        TraceId::from_bytes(c.trace_id.to_be_bytes()),
        SpanId::from_bytes(c.span_id.to_be_bytes()),
        if c.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        remote,
        TraceState::default(),
    )
}

fn child_in(
    parent: SpanContext,
    unit: Option<Arc<Unit>>,
    name: Cow<'static, str>,
    kind: SpanKind,
) -> Span {
    let ctx = SpanContext {
        span_id: new_span_id(),
        ..parent
    };
    Span::new(ctx, parent.span_id, false, unit, false, name, kind)
}

/// Runs `fut` with `span` as the current span of its task (what [`child`] and [`current`] see).
pub async fn scope<F: std::future::Future>(span: &Span, fut: F) -> F::Output {
    let current = Current {
        ctx: span.ctx,
        unit: span.unit.clone(),
    };
    CURRENT.scope(current, fut).await
}

/// A child of the current span (see [`scope`]); `None` outside any.
pub fn child(name: impl Into<Cow<'static, str>>, kind: SpanKind) -> Option<Span> {
    CURRENT
        .try_with(|c| child_in(c.ctx, c.unit.clone(), name.into(), kind))
        .ok()
}

/// The current span's ids, if the task runs in one.
pub fn current() -> Option<SpanContext> {
    CURRENT.try_with(|c| c.ctx).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn children_share_the_trace_and_name_their_parent() {
        let root = Span::root("r", SpanKind::Server, None);
        let rc = root.context();
        let (inner, nested) = scope(&root, async {
            let c = child("db", SpanKind::Internal).unwrap();
            let cc = c.context();
            let nested = scope(&c, async { current().unwrap() }).await;
            (cc, nested)
        })
        .await;
        assert_eq!(inner.trace_id, rc.trace_id);
        assert_ne!(inner.span_id, rc.span_id);
        assert_eq!(nested, inner, "a nested scope sees its own span");
        assert!(current().is_none(), "no span outside a scope");
        assert!(child("x", SpanKind::Internal).is_none());
    }

    #[test]
    fn a_remote_parent_decides_the_trace_and_the_sampling() {
        let parent = SpanContext {
            trace_id: 7,
            span_id: 9,
            sampled: true,
        };
        let s = Span::root("c", SpanKind::Consumer, Some(parent));
        assert_eq!(s.context().trace_id, 7);
        assert!(s.context().sampled);
        assert_eq!(s.parent, 9);
        assert!(s.parent_remote);
    }
}
