//! The data plane's request path: Gateway, a Pingora `ProxyHttp` whose `request_filter` answers every
//! request itself, and the steps of `handle` (the phase chart is in the crate docs, `lib.rs`).
//!
//! Pingora's own upstream phases are never reached: `request_filter` returns `Ok(true)`.

use crate::balancer::Deployment;
use crate::capture::Capture;
use crate::ctx::{Ctx, Fail};
use crate::exchange::{exchange, Plan, SystemClock, Tenant};
use crate::metering;
use crate::relay::{self, respond_json};
use crate::reload::ConfigState;
use crate::request::{self, BodyBuf};
use crate::snapshot::{CompiledRoute, Snapshot, Upstream};
use crate::trace;
use crate::upstream;
use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode};
use leaky_config::ModelSource;
use leaky_filters::{RejectKind, Rejection, RequestCtx, RequestIdFilter, RequestInfo};
use pingora::connectors::TransportConnector;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;

mod app;
mod cached;
#[cfg(test)]
mod sizes;

pub use app::GatewayApp;

pub struct Gateway {
    state: Arc<ConfigState>,
    transport: TransportConnector,
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: Pingora keeps the context inside its per-connection and per-request futures, which are
    /// moved (copied whole) several times per request; a pointer moves for free (issue 19).
    type CTX = Box<Ctx>;

    fn new_ctx(&self) -> Box<Ctx> {
        Box::new(Ctx::new())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        let snapshot = self.state.snapshot();
        ctx.snapshot = Some(snapshot.clone());
        ctx.trace = crate::trace::begin(session.req_header());
        match self.handle(session, ctx, &snapshot).await {
            Ok(()) => Ok(true),
            Err(Fail::Reject(r)) => {
                reject(session, ctx, &snapshot, r).await?;
                Ok(true)
            }
            Err(Fail::Abort(e)) => Err(e),
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Box<Ctx>,
    ) -> Result<Box<HttpPeer>> {
        // Unreachable: request_filter always answers. Fail closed if that ever changes.
        Error::e_explain(
            ErrorType::InternalError,
            "upstream_peer is not used by this gateway",
        )
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<Ctx>,
    ) -> FailToProxy {
        if !ctx.response.started {
            // Only reachable for downstream errors before any byte was written (e.g. reading the body).
            let code = match e.etype() {
                ErrorType::ReadTimedout => 408,
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            };
            if code > 0 {
                ctx.response.status = code;
                let _ = session.respond_error(code).await;
            }
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<Ctx>) {
        let settle = trace::mark(&ctx.trace);
        ctx.ledger.finish();
        trace::phase(&mut ctx.trace, "finish", settle);
        let status = crate::access_log::complete(session, e, ctx);
        crate::access_log::end_trace(session, e, ctx, status);
    }
}

/// What an admitted request sends upstream: its route, the upstream picked for its model, where
/// it goes, and the body (after metering's rewrites).
pub(crate) struct Outbound<'a> {
    route: &'a CompiledRoute,
    up: Arc<Upstream>,
    at: &'a Located,
    body: Bytes,
}

/// Where the request goes, from its head: the normalized path split at the route's prefix.
struct Located {
    method: Method,
    path: String,
    query: Option<String>,
    /// The declared body length.
    expected_len: Option<u64>,
    /// Byte offset of the part after the route prefix in `path`.
    rest_at: usize,
}

impl Located {
    fn rest(&self) -> &str {
        &self.path[self.rest_at..]
    }
}

impl Gateway {
    pub fn new(state: Arc<ConfigState>) -> Self {
        Gateway {
            state,
            transport: TransportConnector::new(None),
        }
    }

    /// One request, phase by phase (see the chart in `lib.rs`).
    async fn handle(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        snap: &Arc<Snapshot>,
    ) -> std::result::Result<(), Fail> {
        ctx.req.now_unix = unix_now();
        let (route, at) = locate(session, ctx, snap)?;
        let auth = trace::mark(&ctx.trace);
        let authenticated = authenticate(session, ctx, route, &at).await;
        trace::phase(&mut ctx.trace, "auth", auth);
        authenticated?;
        if at.method == Method::GET && at.rest() == "/models" {
            if let Some(list) = &route.models_list {
                return respond_json(session, ctx, StatusCode::OK, list.clone()).await;
            }
        }
        let body = read_body(session, ctx, at.expected_len, snap.max_body_bytes).await?;
        let (up, early) = resolve(ctx, route, &body, at.rest())?;
        // The cache key is made of the caller's body; admission may rewrite the one sent upstream.
        // (A `Bytes` clone is a reference count, no copy.)
        let original = route.cache.as_ref().map(|_| body.clone());
        let reserve = trace::mark(&ctx.trace);
        // `early` borrows the caller's body (its chat read); admission takes a handle to it.
        let admitted = admit(session, ctx, route, early, body.clone()).await;
        trace::phase(&mut ctx.trace, "limit.reserve", reserve);
        let body = admitted?;
        let out = Outbound {
            route,
            up,
            at: &at,
            body,
        };
        match (&route.cache, original) {
            // Boxed: the cache branch's future is the exchange's plus the cache's own state; inline,
            // it would set the size (and the cost of every move) of every request's future.
            (Some(cache), Some(original)) => {
                Box::pin(self.serve_cached(session, ctx, cache, out, &original)).await
            }
            _ => self.exchange(session, ctx, out, None).await,
        }
    }

    /// The upstream exchange (`exchange.rs`) with this request's inputs, then the relay of its
    /// answer (teed into `capture` when the answer may be cached); what it holds on the deployment
    /// goes to the ledger, its trail to `ctx.exchange`.
    async fn exchange(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        out: Outbound<'_>,
        capture: Option<&mut Capture>,
    ) -> std::result::Result<(), Fail> {
        let (route, at) = (out.route, out.at);
        let deadline = tokio::time::Instant::now() + route.total_timeout;
        ctx.exchange.deadline = Some(deadline);
        let c: &Ctx = ctx;
        let plan = Plan {
            route,
            primary: out.up,
            model: c.req.model.as_deref(),
            rest: at.rest(),
            body: out.body,
            tokens: c.req.cost.map_or(0, |c| {
                c.prompt.saturating_add(c.max_completion.unwrap_or(0))
            }),
            tenant: Tenant::of(c.req.principal.as_deref(), request::client_ip(session)),
            deadline,
            trace: c.trace.as_ref().map(|t| t.parent()),
        };
        let caller = request::Caller {
            session,
            req: &c.req,
            trusted: c
                .snapshot
                .as_ref()
                .map_or(&[][..], |s| &s.config.server.trusted_proxies),
            query: at.query.as_deref(),
            traced: plan.trace.is_some(),
        };
        let head = |up: &Upstream, d: &Deployment, rest: &str, len: usize| {
            request::upstream_head(&caller, up, d, rest, len)
        };
        let result = exchange(&self.transport, &SystemClock, plan, head).await;
        let (mut attempts, answer) = match result {
            Ok(x) => (x.attempts, Ok((x.response, x.holds, x.served_model))),
            Err(f) => (f.attempts, Err(Fail::Reject(f.rejection))),
        };
        trace::adopt(&mut ctx.trace, &mut attempts.spans);
        ctx.exchange.attempts = attempts.count;
        ctx.exchange.trail = attempts.failed;
        ctx.exchange.upstream_seconds = attempts.upstream_seconds;
        let (mut response, holds, served_model) = answer?;
        ctx.exchange.served_model = served_model;
        let up = holds.upstream().clone();
        let deployment = holds.index();
        ctx.ledger.upstream(holds);
        ctx.exchange.upstream = Some(up.clone());
        ctx.req.provider = Some(up.provider.clone());
        let reusable = relay::relay(session, ctx, route, &up, &mut response, capture).await?;
        if reusable {
            if let Some(d) = up.pool.deployments.get(deployment) {
                upstream::release(d, response.session);
            }
        }
        Ok(())
    }
}

/// Path normalization, route match, prefix climb and framing checks.
fn locate<'s>(
    session: &Session,
    ctx: &mut Ctx,
    snap: &'s Snapshot,
) -> std::result::Result<(&'s CompiledRoute, Located), Fail> {
    let head = session.req_header();
    // Routing, filters, the endpoint allow-list, the model in the path and the upstream request all
    // see this one normalized path.
    let normal = match crate::path::normalize(head.uri.path()) {
        Ok(n) => n,
        Err(e) => return Err(bad_path(snap, ctx, head.uri.path(), e)),
    };
    let climbed_to = normal.min_depth;
    let path = normal.path.into_owned();
    let Some((idx, route)) = snap.route(&path) else {
        return Err(unknown_url(&head.method, &path).into());
    };
    ctx.route = Some(idx);
    if climbed_to.is_some_and(|d| d < route.prefix_depth) {
        return Err(Rejection::new(
            RejectKind::InvalidRequest,
            format!(
                "Invalid request path: `..` climbs above the route prefix `{}`.",
                route.prefix
            ),
        )
        .into());
    }
    let expected_len = request::check_framing(&head.headers, snap.max_body_bytes)?;
    let located = Located {
        method: head.method.clone(),
        query: head.uri.query().map(str::to_string),
        expected_len,
        rest_at: route.prefix.len().min(path.len()),
        path,
    };
    Ok((route, located))
}

/// The chain's header phase (request id, auth …), then the route's endpoint allow-list.
async fn authenticate(
    session: &Session,
    ctx: &mut Ctx,
    route: &CompiledRoute,
    at: &Located,
) -> std::result::Result<(), Fail> {
    let info = RequestInfo {
        method: &at.method,
        path: &at.path,
        query: at.query.as_deref(),
        headers: &session.req_header().headers,
    };
    route.chain.on_request(&info, &mut ctx.req).await?;
    ensure_request_id(&mut ctx.req);
    // Only the route's endpoints reach the provider with the gateway's credential.
    if !route
        .endpoints
        .allows(&at.method, at.rest(), ctx.req.principal.as_deref())
    {
        return Err(unknown_url(&at.method, &at.path).into());
    }
    Ok(())
}

/// The model (JSON body or path), its upstream, and the chain's body phase (model allow-list …);
/// on a metered route also what the estimate needs ([`metering::Early`]: `None` elsewhere).
///
/// A metered route's small body is read once as a plain chat request ([`leaky_usage::ChatRead`]),
/// for its model now and its token count in admission, once the upstream names the provider; a body that reader does
/// not take is read as before (the model peek, then the general estimate).
fn resolve<'b>(
    ctx: &mut Ctx,
    route: &CompiledRoute,
    body: &'b Bytes,
    rest: &str,
) -> std::result::Result<(Arc<Upstream>, Option<metering::Early<'b>>), Fail> {
    let read = (route.meters
        && route.model_source == ModelSource::Body
        && body.len() <= metering::INLINE_ESTIMATE_BYTES)
        .then(|| leaky_usage::ChatRead::parse(body))
        .flatten();
    let model = match route.model_source {
        ModelSource::Body => match &read {
            Some(read) => read.model().map(str::to_owned),
            None => request::model_from_body(body)?,
        }
        .or_else(|| request::model_from_path(rest)),
        ModelSource::Path => request::model_from_path(rest),
        ModelSource::None => None,
    };
    if let Some(m) = &model {
        request::check_model(m)?;
    }
    let up = pick(route, model.as_deref())?.clone();
    ctx.req.model = model;
    route.chain.on_request_body(body, &mut ctx.req)?;
    let early = route
        .meters
        .then(|| metering::Early::new(route, &up, rest, read));
    ctx.exchange.upstream = Some(up.clone());
    ctx.req.route = Some(route.name.clone());
    ctx.req.provider = Some(up.provider.clone());
    Ok((up, early))
}

/// Metering (the cost estimate) where the route needs it, the chain's admission and the tenant's
/// slot, each hold into the ledger. Returns the body to send (usage and completion cap rewrites).
async fn admit(
    session: &Session,
    ctx: &mut Ctx,
    route: &CompiledRoute,
    early: Option<metering::Early<'_>>,
    body: Bytes,
) -> std::result::Result<Bytes, Fail> {
    let body = if let Some(early) = early {
        let head = session.req_header();
        let (body, meter) = metering::prepare(head, &mut ctx.req, route, early, body).await?;
        if let Some(m) = meter {
            ctx.ledger.meter(m);
        }
        body
    } else {
        body
    };
    let admission = route.chain.on_admit(&mut ctx.req).await?;
    let cap = ctx.ledger.admit(admission);
    let body = ctx.ledger.cap(cap, body);
    let permit = crate::exchange::tenant_slot(
        route,
        ctx.req.principal.as_deref(),
        &mut ctx.req.response_headers,
    )
    .await?;
    ctx.ledger.tenant(permit);
    Ok(body)
}

async fn read_body(
    session: &mut Session,
    ctx: &mut Ctx,
    expected: Option<u64>,
    max: u64,
) -> std::result::Result<Bytes, Fail> {
    if session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        session
            .write_continue_response()
            .await
            .map_err(Fail::Abort)?;
    }
    let mut buf = BodyBuf::new(expected, max);
    while let Some(chunk) = session.read_request_body().await.map_err(Fail::Abort)? {
        if let Err(r) = buf.push(&chunk) {
            // The rest of the body is unread: this connection cannot carry another request.
            session.set_keepalive(None);
            return Err(r.into());
        }
    }
    let body = buf.finish();
    ctx.request_bytes = body.len();
    Ok(body)
}

/// Writes a rejection in the route's dialect (OpenAI's when no route matched).
async fn reject(session: &mut Session, ctx: &mut Ctx, snap: &Snapshot, r: Rejection) -> Result<()> {
    ensure_request_id(&mut ctx.req);
    ctx.response.reject_reason = Some(r.kind.label());
    let route_name = ctx.route().map_or("none", |r| &*r.name);
    crate::metrics::count_rejection(route_name, r.kind.label());
    if ctx.response.started {
        return Error::e_explain(
            ErrorType::InternalError,
            format!("failed after the response started: {}", r.message),
        );
    }
    let body = Bytes::from(r.render(relay::dialect(ctx), &ctx.req.request_id));
    let status = StatusCode::from_u16(r.status_in(relay::dialect(ctx)))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let written = respond_json(session, ctx, status, body).await;
    drain_or_close(session, ctx, snap, r.kind).await;
    match written {
        Ok(()) => Ok(()),
        Err(Fail::Abort(e)) => Err(e),
        Err(Fail::Reject(_)) => Ok(()),
    }
}

/// A request refused before its body was read leaves that body on the connection (called after the
/// error response is written). A small declared body is drained so the keep-alive connection
/// survives. Anything else is drained for at most `LINGER` and the connection closed: closing with
/// unread bytes makes the kernel send a reset, and a client still uploading (an 11 MiB body refused
/// by its Content-Length) would see "connection reset" instead of the 413 already sent.
async fn drain_or_close(session: &mut Session, ctx: &Ctx, snap: &Snapshot, kind: RejectKind) {
    const KEEPALIVE_DRAIN_LIMIT: u64 = 64 * 1024;
    const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
    if ctx.request_bytes > 0 || session.is_body_done() {
        return;
    }
    let head = &session.req_header().headers;
    let declared = head
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let keep_alive = kind != RejectKind::PayloadTooLarge
        && !head.contains_key(http::header::TRANSFER_ENCODING)
        && declared.is_some_and(|n| n <= KEEPALIVE_DRAIN_LIMIT.min(snap.max_body_bytes));
    if keep_alive && session.drain_request_body().await.is_ok() {
        return;
    }
    session.set_keepalive(None);
    let _ = tokio::time::timeout(LINGER, session.drain_request_body()).await;
}

fn pick<'a>(
    route: &'a CompiledRoute,
    model: Option<&str>,
) -> std::result::Result<&'a Arc<Upstream>, Rejection> {
    route.pick(model).ok_or_else(|| match model {
        None => Rejection::new(
            RejectKind::InvalidRequest,
            "You must provide a model parameter.",
        )
        .with_param("model"),
        Some(m) => Rejection::new(
            RejectKind::ModelNotFound,
            format!("The model `{m}` does not exist or is not served by this gateway."),
        )
        .with_param("model"),
    })
}

/// 404 for a path no route serves, or an endpoint the route does not allow (indistinguishable on purpose).
fn unknown_url(method: &Method, path: &str) -> Rejection {
    Rejection::new(
        RejectKind::NotFound,
        format!("Unknown request URL: {method} {path}."),
    )
}

/// A path that cannot be normalized safely: 400, in the dialect of the route its raw form falls under.
fn bad_path(snap: &Snapshot, ctx: &mut Ctx, raw: &str, e: crate::path::PathError) -> Fail {
    if let Some((idx, _)) = snap.route(raw) {
        ctx.route = Some(idx);
    }
    Rejection::new(
        RejectKind::InvalidRequest,
        format!("Invalid request path: {e}."),
    )
    .into()
}

fn ensure_request_id(req: &mut RequestCtx) {
    if req.request_id.is_empty() {
        req.request_id = RequestIdFilter::mint();
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
