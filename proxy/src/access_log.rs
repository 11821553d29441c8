//! The completion phase: the chain's `on_complete`, request metrics, and one structured log line per
//! request (target `access`). Runs for every request, answered or failed.

use crate::service::Ctx;
use leaky_wire::{UsageRecord, UsageSource};
use pingora::proxy::Session;
use pingora::Error;
use std::sync::Arc;

pub fn complete(session: &Session, e: Option<&Error>, ctx: &mut Ctx) {
    // Free the bulkhead slots now rather than when Pingora drops the context.
    if let Some(h) = &mut ctx.holds {
        h.release_slot();
    }
    ctx.tenant_permit = None;
    let status = match ctx.status() {
        0 => session.response_written().map_or(0, |r| r.status.as_u16()),
        s => s,
    };
    let seconds = ctx.elapsed_seconds();
    let reserved = crate::metering::reserved_completion(ctx);
    if let Some(m) = &ctx.metering {
        // Not settled in the response loop: the client left mid-stream or the upstream broke. Settle
        // with what was generated so far (counted from the chunks that went out); a non-streamed
        // answer that never completed settles as its reservation.
        if !m.is_settled() {
            ctx.req.usage = m.usage(reserved);
        }
    }
    // The deployment's `tpm` charge becomes the tokens used.
    let used = ctx.req.usage.map_or(0, |u| u.prompt + u.completion);
    if let Some(h) = &mut ctx.holds {
        h.settle(crate::balancer::now_ms(), used);
    }
    let snapshot = ctx.snapshot();
    let route = ctx
        .route_index()
        .and_then(|i| snapshot.and_then(|s| s.routes().get(i)));
    match (ctx.upstream(), route, snapshot) {
        (Some(up), _, _) => up.metrics.observe(status, seconds),
        (None, Some(r), _) => r.metrics.observe(status, seconds),
        (None, None, Some(s)) => s.unmatched.observe(status, seconds),
        (None, None, None) => {}
    }
    if let Some(r) = route {
        r.chain.on_complete(&ctx.req);
    }
    account(ctx, status, seconds);
    let principal = ctx.req.principal.as_ref();
    tracing::info!(
        target: "access",
        request_id = %ctx.req.request_id,
        method = %session.req_header().method,
        path = %session.req_header().uri.path(),
        route = route.map_or("none", |r| &*r.name),
        provider = ctx.upstream().map_or("none", |u| &*u.provider),
        deployment = ctx.deployment().map_or("-", |d| &*d.name),
        attempts = ctx.attempts,
        failed_attempts = ctx.trail.as_deref(),
        served_model = ctx.served_model.as_deref(),
        cut = ctx.cut,
        principal = principal.map_or("-", |p| &*p.id),
        user = principal.map_or("-", |p| &*p.user),
        tier = principal.map_or("-", |p| &*p.tier),
        model = ctx.req.model.as_deref().unwrap_or("-"),
        status,
        latency_ms = seconds * 1000.0,
        upstream_ms = ctx.upstream_seconds().map(|s| s * 1000.0),
        request_bytes = ctx.request_bytes(),
        response_bytes = ctx.req.response_bytes,
        reject = ctx.reject_reason().unwrap_or("-"),
        error = e.map(|e| e.to_string()),
        config_version = snapshot.map_or(0, |s| s.version),
        "request"
    );
}

/// Rate-limit decisions and token counts in metrics, and the request's usage record.
fn account(ctx: &Ctx, status: u16, seconds: f64) {
    if let (Some(s), Some(r)) = (ctx.snapshot(), ctx.req.limit.as_deref()) {
        for (policy, decision) in &r.decisions {
            s.count_decision(*policy, *decision);
        }
    }
    let (Some(_), Some(snapshot)) = (&ctx.metering, ctx.snapshot()) else {
        return;
    };
    let usage = ctx.req.usage.unwrap_or_default();
    let source = ctx.req.usage.map_or(UsageSource::Refunded, |u| {
        crate::usage_log::source(u.source)
    });
    crate::metrics::count_settlement(source.as_str());
    if let Some(up) = ctx.upstream() {
        up.metrics.count_tokens(usage.prompt, usage.completion);
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
        provider: ctx.upstream().map_or_else(dash, |u| u.provider.clone()),
        prompt_tokens: usage.prompt,
        completion_tokens: usage.completion,
        source,
        status,
        latency_ms: seconds * 1000.0,
    });
}
