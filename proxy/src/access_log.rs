//! The completion phase, after the ledger settled what was left (`Ledger::finish`): request metrics,
//! token counts and the usage record, and one structured log line per request (target `access`).
//! Runs for every request, answered or failed; reads the context, writes nothing in it.

use crate::ctx::Ctx;
use leaky_wire::{UsageRecord, UsageSource};
use pingora::proxy::Session;
use pingora::Error;
use std::sync::Arc;

/// Returns the status the client got (0 when nothing was written).
pub fn complete(session: &Session, e: Option<&Error>, ctx: &Ctx) -> u16 {
    let status = match ctx.response.status {
        0 => session.response_written().map_or(0, |r| r.status.as_u16()),
        s => s,
    };
    let seconds = ctx.elapsed_seconds();
    let snapshot = ctx.snapshot.as_ref();
    let route = ctx.route();
    // A cache hit never reached the upstream: its request counts on the route.
    let upstream = ctx
        .exchange
        .upstream
        .as_ref()
        .filter(|_| !ctx.ledger.is_replay());
    match (upstream, route, snapshot) {
        (Some(up), _, _) => up.metrics.observe(status, seconds),
        (None, Some(r), _) => r.metrics.observe(status, seconds),
        (None, None, Some(s)) => s.unmatched.observe(status, seconds),
        (None, None, None) => {}
    }
    // A traced request's usage event names its own span; otherwise the caller's context goes on.
    let tp = match &ctx.trace {
        Some(t) => Some(t.span.traceparent()),
        None => traceparent(session),
    };
    account(ctx, status, seconds, tp);
    crate::log_ids::failed_attempts(ctx);
    let principal = ctx.req.principal.as_ref();
    let ex = &ctx.exchange;
    tracing::info!(
        target: "access",
        request_id = %ctx.req.request_id,
        trace_id = ctx.log_trace_id(),
        span_id = ctx.log_span_id(),
        method = %session.req_header().method,
        path = %session.req_header().uri.path(),
        route = route.map_or("none", |r| &*r.name),
        provider = ex.upstream.as_ref().map_or("none", |u| &*u.provider),
        deployment = ctx.deployment().map_or("-", |d| &*d.name),
        attempts = ex.attempts,
        failed_attempts = ex.trail.as_deref(),
        served_model = ex.served_model.as_deref(),
        cut = ctx.response.cut,
        cache = ctx.response.cache.map(|c| c.label()),
        principal = principal.map_or("-", |p| &*p.id),
        user = principal.map_or("-", |p| &*p.user),
        tier = principal.map_or("-", |p| &*p.tier),
        model = ctx.req.model.as_deref().unwrap_or("-"),
        status,
        latency_ms = seconds * 1000.0,
        upstream_ms = ex.upstream_seconds.map(|s| s * 1000.0),
        request_bytes = ctx.request_bytes,
        response_bytes = ctx.response.bytes,
        reject = ctx.response.reject_reason.unwrap_or("-"),
        error = e.map(|e| e.to_string()),
        config_version = snapshot.map_or(0, |s| s.version),
        "request"
    );
    status
}

/// The trace's end (`trace.rs`): kept when head-sampled or an error, with what the request ended
/// with; the facts are gathered only for a kept trace.
pub fn end_trace(session: &Session, e: Option<&Error>, ctx: &mut Ctx, status: u16) {
    let error = e.is_some() || status >= 400 || ctx.response.reject_reason.is_some();
    let Some(trace) = ctx.trace.take().filter(|t| crate::trace::keeps(t, error)) else {
        return;
    };
    let head = session.req_header();
    let principal = ctx.req.principal.as_deref();
    let end = crate::trace::End {
        method: head.method.as_str().to_owned(),
        path: head.uri.path().to_owned(),
        status,
        error,
        route: ctx.route().map(|r| r.name.clone()),
        provider: ctx.exchange.upstream.as_ref().map(|u| u.provider.clone()),
        model: ctx.req.model.clone(),
        served_model: ctx.exchange.served_model.clone(),
        usage: ctx.ledger.usage().map(|u| (u.prompt, u.completion)),
        request_id: ctx.req.request_id.clone(),
        org: principal.and_then(|p| p.org.clone()),
        reject: ctx.response.reject_reason,
    };
    crate::trace::finish(trace, end);
}

/// The caller's W3C `traceparent`, for the usage event's Kafka header (copied only when present).
fn traceparent(session: &Session) -> Option<String> {
    let v = session
        .req_header()
        .headers
        .get(&crate::trace::TRACEPARENT)?;
    v.to_str().ok().map(str::to_owned)
}

/// Token counts in metrics, and the request's usage record (metered requests).
fn account(ctx: &Ctx, status: u16, seconds: f64, traceparent: Option<String>) {
    let Some(snapshot) = ctx.snapshot.as_ref().filter(|_| ctx.ledger.meters()) else {
        return;
    };
    let settled = ctx.ledger.usage();
    let usage = settled.unwrap_or_default();
    let source = settled.map_or(UsageSource::Refunded, |u| u.source);
    crate::metrics::count_settlement(source.as_str());
    let upstream = ctx.exchange.upstream.as_ref();
    let cached = ctx.ledger.is_replay();
    match upstream {
        // Tokens served from the cache were not generated upstream (they count apart).
        Some(_) if cached => crate::metrics::count_cached_tokens(usage.prompt, usage.completion),
        Some(up) => up.metrics.count_tokens(usage.prompt, usage.completion),
        None => {}
    }
    let p = ctx.req.principal.as_deref();
    let dash = || Arc::<str>::from("-");
    snapshot.usage.record(UsageRecord {
        schema_version: UsageRecord::SCHEMA_VERSION,
        request_id: ctx.req.request_id.clone(),
        principal: p.map_or_else(dash, |p| p.id.clone()),
        user: p.map_or_else(dash, |p| p.user.clone()),
        org: p.and_then(|p| p.org.clone()),
        tier: p.map_or_else(dash, |p| p.tier.clone()),
        route: ctx.req.route.clone(),
        model: ctx.req.model.clone().unwrap_or_default(),
        provider: upstream.map_or_else(dash, |u| u.provider.clone()),
        prompt_tokens: usage.prompt,
        completion_tokens: usage.completion,
        source,
        status,
        latency_ms: seconds * 1000.0,
        cached,
        charged_tokens: ctx.ledger.charged_tokens(),
        traceparent,
    });
}
