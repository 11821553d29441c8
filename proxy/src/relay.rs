//! Writing the response: the upstream's answer relayed to the client as it arrives (header filtered,
//! body chunks through the request's usage meter, each read bounded by the route's idle timeout and
//! the exchange's deadline), the settlement before the last bytes, cuts of stalled streams, and the
//! gateway's own JSON answers (model lists, rejections).
//!
//! A failure after the response header went out returns `Fail::Abort` and `fail_to_proxy` writes
//! nothing, so the client sees a truncated response (the connection is closed) rather than a
//! well-formed but incomplete one.

use crate::capture::Capture;
use crate::ctx::{Ctx, Fail};
use crate::exchange::Tenant;
use crate::headers::{self, ConnectionNamed, Returned};
use crate::request;
use crate::response_cache::{Outcome, CACHE_HEADER};
use crate::snapshot::{CompiledRoute, Upstream};
use crate::upstream;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue, InvalidHeaderValue, MaxSizeReached};
use http::StatusCode;
use leaky_config::Dialect;
use leaky_filters::{RejectKind, Rejection};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use std::time::Duration;
use tokio::time::Instant;

const SERVED_MODEL: HeaderName = HeaderName::from_static("x-leaky-served-model");
const CACHE: HeaderName = HeaderName::from_static(CACHE_HEADER);

/// Streams the upstream's response to the client as it arrives. Returns whether the upstream
/// connection can be reused (not after a cut). With a `capture` (a response-cache miss that may be
/// stored), every upstream chunk is teed into it as received, and it is marked complete only when
/// the body ended normally and all of it reached the client.
pub(crate) async fn relay(
    session: &mut Session,
    ctx: &mut Ctx,
    route: &CompiledRoute,
    up: &Upstream,
    resp: &mut upstream::Response,
    mut capture: Option<&mut Capture>,
) -> Result<bool, Fail> {
    if let Some(c) = capture.as_deref_mut() {
        let h = resp.session.head();
        c.on_head(h.status.as_u16(), &h.headers);
    }
    let out = response_head(ctx, route, up, resp)?;
    let deadline = ctx
        .exchange
        .deadline
        .unwrap_or_else(|| Instant::now() + route.total_timeout);
    if let Err(e) = session.write_response_header(Box::new(out), false).await {
        return Err(client_gone(ctx, up, resp, deadline, e).await);
    }
    ctx.response.started = true;
    let mut settled = false;
    while !settled {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = up.idle.min(left);
        // Pingora's timer wheel, armed only when pending: a tokio timer woke the worker (upstream.rs).
        let read = pingora_timeout::timeout(wait, resp.session.read_body_bytes()).await;
        let Ok(read) = read else {
            let reason = if left <= up.idle { "total" } else { "idle" };
            cut(session, ctx, reason, wait).await?;
            return Ok(false);
        };
        // The provider's usage is settled before the last byte goes out, so a caller that sends
        // its next request on receiving this response already sees it in the headers.
        let (chunk, done) = on_read(
            ctx,
            capture.as_deref_mut(),
            resp,
            read.map_err(Fail::Abort)?,
        );
        settled = done;
        let tail = if settled {
            settle(ctx).await
        } else {
            Bytes::new()
        };
        // An empty part builds no write future (each was a few hundred bytes moved for nothing).
        for out in [chunk, tail].into_iter().filter(|b| !b.is_empty()) {
            match forward(session, ctx, out).await {
                Ok(()) => {}
                Err(Fail::Abort(e)) => return Err(client_gone(ctx, up, resp, deadline, e).await),
                Err(f) => return Err(f),
            }
        }
    }
    if let Some(c) = capture {
        c.complete();
    }
    Ok(true)
}

/// A read of the upstream body: the part to forward (what the meter lets through; a capture gets
/// the whole chunk) and whether the body has ended (chunked bodies end with an empty read).
fn on_read(
    ctx: &mut Ctx,
    capture: Option<&mut Capture>,
    resp: &upstream::Response,
    read: Option<Bytes>,
) -> (Bytes, bool) {
    let Some(chunk) = read else {
        return (Bytes::new(), true);
    };
    if let Some(c) = capture {
        c.push(&chunk);
    }
    (ctx.ledger.on_chunk(chunk), resp.session.is_body_done())
}

/// The client's response header: the upstream's, filtered, plus the gateway's own. Tells the ledger
/// the upstream's status (its meter starts tracking usage on a success).
///
/// The upstream's header map is taken and filtered in place (a successful answer's map already
/// lacks what `Returned::drops` names, `upstream/h1.rs`), then handed over whole
/// (`headers::response_head`): the kept headers are not hashed into a second map.
fn response_head(
    ctx: &mut Ctx,
    route: &CompiledRoute,
    up: &Upstream,
    resp: &mut upstream::Response,
) -> Result<ResponseHeader, Fail> {
    let status = resp.session.head().status;
    let bad = |e: &dyn std::fmt::Display| {
        Fail::Reject(Rejection::new(
            RejectKind::BadGateway,
            format!("The upstream response header was invalid: {e}"),
        ))
    };
    let full = |e: MaxSizeReached| bad(&e);
    let mut h = resp.session.take_headers();
    let gone = not_returned(&h, up.returned(route));
    for name in &gone {
        h.remove(name);
    }
    if !h.contains_key(header::CONTENT_LENGTH)
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
    {
        h.try_insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        )
        .map_err(full)?;
    }
    ctx.ledger.on_response(status.as_u16(), &h);
    ctx.response.sse = h
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let served = ctx.exchange.served_model.as_deref();
    if let Some(m) = served.or(ctx.req.model.as_deref()) {
        if let Ok(v) = HeaderValue::from_str(m) {
            h.try_insert(SERVED_MODEL, v).map_err(full)?;
        }
    }
    for (name, value) in own_headers(ctx).map_err(|e| bad(&e))? {
        h.try_insert(name, value).map_err(full)?;
    }
    ctx.response.status = status.as_u16();
    Ok(headers::response_head(status, h))
}

/// The names in the upstream's headers `h` that do not go back to the client: those the route's
/// policy does not return and those the answer's own `Connection` lists (hop-by-hop).
fn not_returned(h: &HeaderMap, returned: Returned<'_>) -> Vec<HeaderName> {
    let hop = ConnectionNamed::of(h);
    h.keys()
        .filter(|name| !returned.keeps(name) || hop.contains(name))
        .cloned()
        .collect()
}

/// A write to the client failed (it left). A non-streamed answer is still read to its end
/// through the usage meter, each read bounded by the idle timeout and the exchange's deadline,
/// so the tenant is charged the provider's reported usage (the provider bills the whole answer
/// whether or not anyone reads it); without one it settles as the reservation. A stream is left
/// to the completion phase, which settles what was generated so far. Returns the abort.
async fn client_gone(
    ctx: &mut Ctx,
    up: &Upstream,
    resp: &mut upstream::Response,
    deadline: Instant,
    e: Box<Error>,
) -> Fail {
    if ctx.ledger.drains_when_client_leaves() {
        while !resp.session.is_body_done() {
            let wait = up
                .idle
                .min(deadline.saturating_duration_since(Instant::now()));
            let read = tokio::time::timeout(wait, resp.session.read_body_bytes()).await;
            let Ok(Ok(Some(chunk))) = read else {
                break;
            };
            ctx.ledger.on_chunk(chunk);
        }
        let _ = settle(ctx).await;
    }
    Fail::Abort(e)
}

/// The upstream went quiet (`idle`) or ran out of time (`total`) mid-response. An event stream ends
/// with an error event in its own format and a clean end of body; any other body cannot be
/// completed and the connection is closed (the client sees a truncated response).
async fn cut(
    session: &mut Session,
    ctx: &mut Ctx,
    reason: &'static str,
    waited: Duration,
) -> Result<(), Fail> {
    ctx.response.cut = Some(reason);
    if let Some(d) = ctx.deployment() {
        let client = request::client_ip(session);
        let tenant = Tenant::of(ctx.req.principal.as_deref(), client).hash();
        d.state
            .record_stream_failure(crate::balancer::now_ms(), tenant);
        crate::metrics::bump(|m| &m.stream_cuts, &[&d.label, reason]);
        tracing::warn!(request_id = %ctx.req.request_id, trace_id = ctx.log_trace_id(), span_id = ctx.log_span_id(),
            upstream = %d.label, reason, waited_ms = waited.as_millis() as u64, "upstream response stalled; cut");
    }
    let tail = settle(ctx).await;
    forward(session, ctx, tail).await?;
    if !ctx.response.sse {
        return Err(Fail::Abort(Error::explain(
            ErrorType::ReadTimedout,
            format!("upstream response {reason} timeout"),
        )));
    }
    let message = match reason {
        "idle" => format!(
            "The upstream stream stalled: no data for {} ms.",
            waited.as_millis()
        ),
        _ => "The upstream response exceeded the route's total timeout.".to_string(),
    };
    let event = request::stream_error_event(dialect(ctx), &ctx.req.request_id, &message);
    forward(session, ctx, event).await?;
    session
        .write_response_body(None, true)
        .await
        .map_err(Fail::Abort)
}

/// One body chunk to the client (nothing for an empty one).
async fn forward(session: &mut Session, ctx: &mut Ctx, chunk: Bytes) -> Result<(), Fail> {
    if chunk.is_empty() {
        return Ok(());
    }
    ctx.response.bytes += chunk.len() as u64;
    session
        .write_response_body(Some(chunk), false)
        .await
        .map_err(Fail::Abort)
}

/// Headers every response carries: `x-request-id`, whatever the chain asked for, and on a
/// cache-enabled route `x-leaky-cache` (`bypass` until the cache decided: a refusal before it was
/// neither looked up nor stored).
pub(crate) fn finish_headers(out: &mut ResponseHeader, ctx: &mut Ctx) -> pingora::Result<()> {
    let own = own_headers(ctx)
        .map_err(|e| Error::explain(ErrorType::InvalidHTTPHeader, e.to_string()))?;
    for (name, value) in own {
        out.insert_header(name, value)?;
    }
    Ok(())
}

/// The pairs of [`finish_headers`], each to be inserted (replacing) in this order.
fn own_headers(
    ctx: &mut Ctx,
) -> Result<impl Iterator<Item = (HeaderName, HeaderValue)> + '_, InvalidHeaderValue> {
    let id = HeaderValue::from_str(&ctx.req.request_id)?;
    let cache = ctx.route().is_some_and(|r| r.cache.is_some()).then(|| {
        let outcome = ctx.response.cache.unwrap_or(Outcome::Bypass);
        (CACHE, HeaderValue::from_static(outcome.label()))
    });
    let own = std::iter::once((headers::X_REQUEST_ID, id)).chain(cache);
    Ok(own.chain(ctx.req.response_headers.drain(..)))
}

/// The gateway's own JSON answer, whole.
pub(crate) async fn respond_json(
    session: &mut Session,
    ctx: &mut Ctx,
    status: StatusCode,
    body: Bytes,
) -> Result<(), Fail> {
    let mut out = ResponseHeader::build_no_case(status, Some(4)).map_err(Fail::Abort)?;
    out.insert_header(http::header::CONTENT_TYPE, "application/json")
        .map_err(Fail::Abort)?;
    out.insert_header(http::header::CONTENT_LENGTH, body.len())
        .map_err(Fail::Abort)?;
    finish_headers(&mut out, ctx).map_err(Fail::Abort)?;
    ctx.response.status = status.as_u16();
    session
        .write_response_header(Box::new(out), false)
        .await
        .map_err(Fail::Abort)?;
    ctx.response.started = true;
    session
        .write_response_body(Some(body), true)
        .await
        .map_err(Fail::Abort)
}

/// The error dialect of the request's route (OpenAI's when no route matched).
pub(crate) fn dialect(ctx: &Ctx) -> Dialect {
    ctx.route().map_or(Dialect::Openai, |r| r.dialect)
}

/// `Ledger::settle`, timed as the trace's `settle` phase when the request is traced.
async fn settle(ctx: &mut Ctx) -> Bytes {
    let since = crate::trace::mark(&ctx.trace);
    let tail = ctx.ledger.settle().await;
    crate::trace::phase(&mut ctx.trace, "settle", since);
    tail
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_upstreams_map_loses_what_the_client_does_not_get() {
        let policy = headers::HeaderPolicy::new(Dialect::Openai, &[], &[]);
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("content-type", "application/json"),
            ("content-length", "2"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("openai-organization", "org"),
            ("x-stub-provider", "openai"),
            ("x-ratelimit-remaining-tokens", "9"),
            ("x-request-id", "up-1"),
            ("openai-processing-ms", "12"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let gone = |own_limits| {
            let mut names: Vec<String> = not_returned(
                &h,
                Returned {
                    policy: &policy,
                    own_limits,
                },
            )
            .iter()
            .map(|n| n.to_string())
            .collect();
            names.sort();
            names
        };
        let always = [
            "connection",
            "openai-organization",
            "set-cookie",
            "transfer-encoding",
            "x-hop",
            "x-stub-provider",
        ];
        assert_eq!(gone(false), always);
        let mut with_limits = always.to_vec();
        with_limits.push("x-ratelimit-remaining-tokens");
        with_limits.sort();
        assert_eq!(gone(true), with_limits);
        // Removing them leaves exactly the rest, in the map the client's head is built from.
        for name in not_returned(
            &h,
            Returned {
                policy: &policy,
                own_limits: true,
            },
        ) {
            h.remove(&name);
        }
        let mut left: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        left.sort();
        assert_eq!(
            left,
            [
                "content-length",
                "content-type",
                "openai-processing-ms",
                "x-request-id"
            ]
        );
    }
}
