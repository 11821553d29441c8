//! The completion phase: the chain's `on_complete`, request metrics, and one structured log line per
//! request (target `access`). Runs for every request, answered or failed.

use crate::service::Ctx;
use pingora::proxy::Session;
use pingora::Error;

pub fn complete(session: &Session, e: Option<&Error>, ctx: &mut Ctx) {
    let status = match ctx.status() {
        0 => session.response_written().map_or(0, |r| r.status.as_u16()),
        s => s,
    };
    let seconds = ctx.elapsed_seconds();
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
    let principal = ctx.req.principal.as_ref();
    tracing::info!(
        target: "access",
        request_id = %ctx.req.request_id,
        method = %session.req_header().method,
        path = %session.req_header().uri.path(),
        route = route.map_or("none", |r| &*r.name),
        provider = ctx.upstream().map_or("none", |u| &*u.provider),
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
