//! The server span of each HTTP request (control plane, analytics): an axum middleware
//! ([`server_span`]) continuing the caller's `traceparent`, named `{method} {route template}`, with
//! the OTel HTTP attributes and `error.type` on a 4xx/5xx (so the request is exported at any ratio);
//! the handler runs inside it ([`crate::scope`]) and inside a `tracing` span carrying `trace_id`,
//! `span_id` and `request_id` for the log lines. [`record_route`] (a route layer) reports the
//! matched route template, which the outer middleware cannot see before routing.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use tracing::Instrument;

use crate::context::parse_traceparent;
use crate::span::{scope, Span};

/// Probes and scrapes: never traced (they would drown the traces at a ratio of 1).
const UNTRACED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The matched route template, handed from [`record_route`] to [`server_span`] on the response.
#[derive(Clone, Debug)]
pub struct RouteTemplate(pub String);

/// A route layer: puts the request's matched route template on its response.
pub async fn record_route(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let mut resp = next.run(req).await;
    if let Some(r) = route {
        resp.extensions_mut().insert(RouteTemplate(r));
    }
    resp
}

/// The outermost middleware: one server span per request (see the module docs).
pub async fn server_span(req: Request, next: Next) -> Response {
    if UNTRACED.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let headers = req.headers();
    let parent = headers
        .get("traceparent")
        .and_then(|v| parse_traceparent(v.as_bytes()));
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let mut span = Span::root(method.clone(), SpanKind::Server, parent);
    let ctx = span.context();
    let log_span = tracing::info_span!(
        "request",
        trace_id = %ctx.trace_id_hex(),
        span_id = %ctx.span_id_hex(),
        request_id = tracing::field::Empty,
        method = %method,
    );
    if let Some(rid) = &request_id {
        log_span.record("request_id", rid.as_str());
    }
    let resp = scope(&span, next.run(req)).instrument(log_span).await;
    if span.is_recording() {
        describe(&mut span, &resp, method, path, request_id);
    }
    span.end();
    resp
}

/// The server span's name and attributes once the response is known.
fn describe(
    span: &mut Span,
    resp: &Response,
    method: String,
    path: String,
    request_id: Option<String>,
) {
    let status = resp.status().as_u16();
    let route = resp
        .extensions()
        .get::<RouteTemplate>()
        .map(|r| r.0.clone());
    span.rename(match &route {
        Some(r) => format!("{method} {r}"),
        None => method.clone(),
    });
    span.attr(KeyValue::new("http.request.method", method));
    span.attr(KeyValue::new("url.path", path));
    span.attr(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if let Some(r) = route {
        span.attr(KeyValue::new("http.route", r));
    }
    if let Some(rid) = request_id {
        span.attr(KeyValue::new("leaky.request_id", rid));
    }
    if status >= 400 {
        span.fail(status.to_string(), status >= 500);
    }
}

/// `router` with a server span per request: [`server_span`] outermost (it times the whole answer),
/// [`record_route`] on the routes (it sees the matched template).
pub fn traced(router: axum::Router) -> axum::Router {
    router
        .route_layer(axum::middleware::from_fn(record_route))
        .layer(axum::middleware::from_fn(server_span))
}

/// A client span for a call this request makes to another service (a child of the current span),
/// and the `traceparent` to send with it. `None` outside a traced request.
pub fn client(name: &'static str) -> Option<(Span, String)> {
    let span = crate::span::child(name, SpanKind::Client)?;
    let tp = span.context().traceparent();
    Some((span, tp))
}
