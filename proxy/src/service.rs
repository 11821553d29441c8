//! The data plane's request path, as a Pingora `ProxyHttp` whose `request_filter` answers every request
//! itself.
//!
//! ```text
//! request_filter
//!   ├─ snapshot (one ArcSwap load) ─ path normalization (path.rs; 400 if unsafe)
//!   ├─ route match (longest prefix, normalized path) ─ framing check
//!   ├─ chain.on_request            (request-id, auth …)            ─ reject → error in route dialect
//!   ├─ endpoint allow-list         (method + path after the prefix; 404 otherwise)
//!   ├─ body read (≤ max_body_bytes) ─ model (JSON body or path) ─ upstream pick (by model)
//!   ├─ chain.on_request_body       (model allow-list …)
//!   ├─ upstream::send              (pooled h1, stale-connection retry)
//!   ├─ chain.on_response ─ response header ─ body chunks streamed as they arrive (on_response_chunk)
//!   └─ upstream connection back to the pool
//! logging (always)                 chain.on_complete, metrics, one structured log line
//! ```
//!
//! Pingora's own upstream phases are never reached: `request_filter` returns `Ok(true)`. A failure after
//! the response header went out returns `Err` and `fail_to_proxy` writes nothing, so the client sees a
//! truncated response (the connection is closed) rather than a well-formed but incomplete one.

use crate::balancer::Deployment;
use crate::exchange::{exchange, Plan, SystemClock, Tenant, UpstreamHolds};
use crate::headers::{self, ConnectionNamed};
use crate::reload::ConfigState;
use crate::request::{self, BodyBuf};
use crate::snapshot::{CompiledRoute, Snapshot, Upstream};
use crate::upstream;
use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode};
use leaky_config::{Dialect, ModelSource};
use leaky_filters::{RejectKind, Rejection, RequestCtx, RequestIdFilter, RequestInfo};
use leaky_resilience::BulkheadPermit;
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;
use std::time::Instant;

pub struct Gateway {
    state: Arc<ConfigState>,
    pub(crate) transport: TransportConnector,
}

impl Gateway {
    pub fn new(state: Arc<ConfigState>) -> Self {
        Gateway {
            state,
            transport: TransportConnector::new(None),
        }
    }
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    snapshot: Option<Arc<Snapshot>>,
    /// Index into the snapshot's routes.
    route: Option<usize>,
    upstream: Option<Arc<Upstream>>,
    pub req: RequestCtx,
    /// The response header went to the client: failures from here on cannot become error responses.
    response_started: bool,
    status: u16,
    reject_reason: Option<&'static str>,
    pub(crate) upstream_seconds: Option<f64>,
    request_bytes: usize,
    /// Token metering of this request (routes with `rate-limit`).
    pub(crate) metering: Option<crate::metering::Metering>,
    /// What the request holds on the deployment that answered (its bulkhead slot, its `tpm` charge).
    pub(crate) holds: Option<UpstreamHolds>,
    /// The tenant's slot on the route's bulkhead.
    pub(crate) tenant_permit: Option<BulkheadPermit>,
    /// Upstream attempts made (retries and fallbacks included).
    pub(crate) attempts: u32,
    /// Failed attempts as `provider/deployment:outcome`, space-separated (`None` when none failed).
    pub(crate) trail: Option<String>,
    /// The fallback model that answered, when not the requested one.
    pub(crate) served_model: Option<String>,
    /// End of the upstream exchange (route `timeouts.total_ms`).
    pub(crate) deadline: Option<Instant>,
    /// The response is an event stream (a cut can end it with an error event).
    sse: bool,
    /// Why the gateway cut the response after it started (`idle`, `total`).
    pub(crate) cut: Option<&'static str>,
}

impl Ctx {
    pub fn status(&self) -> u16 {
        self.status
    }
    pub fn elapsed_seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
    pub fn snapshot(&self) -> Option<&Arc<Snapshot>> {
        self.snapshot.as_ref()
    }
    pub fn route_index(&self) -> Option<usize> {
        self.route
    }
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.upstream.as_ref()
    }
    pub fn upstream_seconds(&self) -> Option<f64> {
        self.upstream_seconds
    }
    pub fn request_bytes(&self) -> usize {
        self.request_bytes
    }
    pub fn reject_reason(&self) -> Option<&'static str> {
        self.reject_reason
    }
    /// The deployment that answered.
    pub fn deployment(&self) -> Option<&Deployment> {
        self.holds.as_ref()?.deployment()
    }
}

/// How handling a request ended, short of success.
pub(crate) enum Fail {
    /// Answer with this error in the route's dialect.
    Reject(Rejection),
    /// Nothing more can be written (client gone, or upstream broke mid-body).
    Abort(Box<Error>),
}

impl From<Rejection> for Fail {
    fn from(r: Rejection) -> Self {
        Fail::Reject(r)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            snapshot: None,
            route: None,
            upstream: None,
            req: RequestCtx::default(),
            response_started: false,
            status: 0,
            reject_reason: None,
            upstream_seconds: None,
            request_bytes: 0,
            metering: None,
            holds: None,
            tenant_permit: None,
            attempts: 0,
            trail: None,
            served_model: None,
            deadline: None,
            sse: false,
            cut: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snapshot = self.state.snapshot();
        ctx.snapshot = Some(snapshot.clone());
        match self.handle(session, ctx, &snapshot).await {
            Ok(()) => Ok(true),
            Err(Fail::Reject(r)) => {
                self.reject(session, ctx, &snapshot, r).await?;
                Ok(true)
            }
            Err(Fail::Abort(e)) => Err(e),
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // Unreachable: request_filter always answers. Fail closed if that ever changes.
        Error::e_explain(
            ErrorType::InternalError,
            "upstream_peer is not used by this gateway",
        )
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if !ctx.response_started {
            // Only reachable for downstream errors before any byte was written (e.g. reading the body).
            let code = match e.etype() {
                ErrorType::ReadTimedout => 408,
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            };
            if code > 0 {
                ctx.status = code;
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

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        crate::access_log::complete(session, e, ctx);
    }
}

impl Gateway {
    async fn handle(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        snap: &Arc<Snapshot>,
    ) -> std::result::Result<(), Fail> {
        ctx.req.now_unix = unix_now();
        let head = session.req_header();
        // Routing, filters, the endpoint allow-list, the model in the path and the upstream request all
        // see this one normalized path.
        let normal = match crate::path::normalize(head.uri.path()) {
            Ok(n) => n,
            Err(e) => return Err(bad_path(snap, ctx, head.uri.path(), e)),
        };
        let climbed_to = normal.min_depth;
        let path = normal.path.into_owned();
        let query = head.uri.query().map(str::to_string);
        let method = head.method.clone();

        let Some((idx, route)) = snap.route(&path) else {
            return Err(unknown_url(&method, &path).into());
        };
        ctx.route = Some(idx);
        ctx.req.dialect = Some(route.dialect);
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
        let expected_len =
            request::check_framing(&session.req_header().headers, snap.max_body_bytes)?;

        {
            let head = session.req_header();
            let info = RequestInfo {
                method: &method,
                path: &path,
                query: query.as_deref(),
                headers: &head.headers,
            };
            route.chain.on_request(&info, &mut ctx.req).await?;
        }
        ensure_request_id(&mut ctx.req);
        let rest = &path[route.prefix.len().min(path.len())..];
        // Only the route's endpoints reach the provider with the gateway's credential.
        if !route
            .endpoints
            .allows(&method, rest, ctx.req.principal.as_deref())
        {
            return Err(unknown_url(&method, &path).into());
        }

        if method == Method::GET && rest == "/models" {
            if let Some(list) = &route.models_list {
                return self
                    .respond_json(session, ctx, StatusCode::OK, list.clone())
                    .await;
            }
        }

        let body = self
            .read_body(session, ctx, expected_len, snap.max_body_bytes)
            .await?;
        let model = match route.model_source {
            ModelSource::Body => match request::model_from_body(&body)? {
                Some(m) => Some(m),
                None => request::model_from_path(rest),
            },
            ModelSource::Path => request::model_from_path(rest),
            ModelSource::None => None,
        };
        if let Some(m) = &model {
            request::check_model(m)?;
        }
        let up = pick(route, model.as_deref())?.clone();
        ctx.req.model = model;
        route.chain.on_request_body(&body, &mut ctx.req)?;
        ctx.upstream = Some(up.clone());
        ctx.req.route = Some(route.name.clone());
        ctx.req.provider = Some(up.provider.clone());
        let body = if route.meters {
            crate::metering::prepare(session.req_header(), ctx, route, &up, rest, body).await?
        } else {
            body
        };
        route.chain.on_admit(&mut ctx.req).await?;
        let body = crate::metering::cap(ctx, body);
        ctx.tenant_permit = crate::exchange::tenant_slot(
            route,
            ctx.req.principal.as_deref(),
            &mut ctx.req.response_headers,
        )
        .await?;

        let (mut response, holds) = self
            .exchange(session, ctx, route, up, rest, query.as_deref(), body)
            .await?;
        let up = holds.upstream().clone();
        let deployment = holds.index();
        ctx.upstream = Some(up.clone());
        ctx.req.provider = Some(up.provider.clone());
        ctx.holds = Some(holds);
        let reusable = self.relay(session, ctx, route, &up, &mut response).await?;
        if reusable {
            if let Some(d) = up.pool.deployments.get(deployment) {
                upstream::release(d, response.session).await;
            }
        }
        Ok(())
    }

    /// Runs the upstream exchange (`exchange.rs`) with this request's inputs, and records its trail
    /// (attempts, failed attempts, served model, upstream time) in `ctx` for the access log.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        route: &CompiledRoute,
        primary: Arc<Upstream>,
        rest: &str,
        query: Option<&str>,
        body: Bytes,
    ) -> std::result::Result<(upstream::Response, UpstreamHolds), Fail> {
        let deadline = tokio::time::Instant::now() + route.total_timeout;
        ctx.deadline = Some(deadline.into_std());
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let c: &Ctx = ctx;
        let plan = Plan {
            route,
            primary,
            model: c.req.model.as_deref(),
            rest,
            body,
            tokens: c.req.cost.map_or(0, |c| {
                c.prompt.saturating_add(c.max_completion.unwrap_or(0))
            }),
            tenant: Tenant::of(c.req.principal.as_deref(), client),
            deadline,
        };
        let head = |up: &Upstream, d: &Deployment, rest: &str, len: usize| {
            Self::upstream_request(session, c, up, d, rest, query, len)
        };
        let result = exchange(&self.transport, &SystemClock, plan, head).await;
        let (attempts, answer) = match result {
            Ok(x) => {
                ctx.served_model = x.served_model;
                (x.attempts, Ok((x.response, x.holds)))
            }
            Err(f) => (f.attempts, Err(Fail::Reject(f.rejection))),
        };
        ctx.attempts = attempts.count;
        ctx.trail = attempts.failed;
        ctx.upstream_seconds = attempts.upstream_seconds;
        answer
    }

    async fn read_body(
        &self,
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

    pub(crate) fn upstream_request(
        session: &Session,
        ctx: &Ctx,
        up: &Upstream,
        d: &Deployment,
        rest: &str,
        query: Option<&str>,
        body_len: usize,
    ) -> std::result::Result<RequestHeader, Rejection> {
        let head = session.req_header();
        let path = request::upstream_path(&up.path_prefix, rest, query);
        let internal = |e: Box<Error>| {
            Rejection::new(
                RejectKind::Internal,
                format!("building the upstream request: {e}"),
            )
        };
        let mut req = RequestHeader::build_no_case(
            head.method.clone(),
            path.as_bytes(),
            Some(head.headers.len() + 4),
        )
        .map_err(internal)?;
        let hop = ConnectionNamed::of(&head.headers);
        for (name, value) in head.headers.iter() {
            if up.headers.forwards(name) && !hop.contains(name) {
                req.append_header(name.clone(), value.clone())
                    .map_err(internal)?;
            }
        }
        req.insert_header(http::header::HOST, d.host.clone())
            .map_err(internal)?;
        for (name, value) in d.auth.iter().chain(d.account.iter()) {
            req.insert_header(name.clone(), value.clone())
                .map_err(internal)?;
        }
        if let Some(peer) = session.client_addr().and_then(|a| a.as_inet()) {
            let trusted = ctx
                .snapshot()
                .map_or(&[][..], |s| &s.config.server.trusted_proxies);
            let (xff, fwd) = headers::forwarded_for(&head.headers, peer.ip(), trusted);
            let names = [headers::X_FORWARDED_FOR, http::header::FORWARDED];
            for (name, value) in names.into_iter().zip([xff, fwd]) {
                if let Some(v) = value {
                    req.insert_header(name, v).map_err(internal)?;
                }
            }
        }
        if body_len > 0 || matches!(head.method, Method::POST | Method::PUT | Method::PATCH) {
            req.insert_header(http::header::CONTENT_LENGTH, body_len)
                .map_err(internal)?;
        }
        req.insert_header("x-request-id", ctx.req.request_id.as_str())
            .map_err(internal)?;
        for (name, value) in &ctx.req.upstream_headers {
            req.insert_header(name.clone(), value.clone())
                .map_err(internal)?;
        }
        Ok(req)
    }

    /// Streams the upstream's response to the client as it arrives, each read bounded by the route's
    /// idle timeout and the exchange's deadline. Returns whether the upstream connection can be reused
    /// (not after a cut).
    async fn relay(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &CompiledRoute,
        up: &Upstream,
        resp: &mut upstream::Response,
    ) -> std::result::Result<bool, Fail> {
        let Some(up_head) = resp.session.resp_header() else {
            return Err(Rejection::new(
                RejectKind::BadGateway,
                "The upstream sent no response header.",
            )
            .into());
        };
        let status = up_head.status;
        let bad = |e: Box<Error>| {
            Fail::Reject(Rejection::new(
                RejectKind::BadGateway,
                format!("The upstream response header was invalid: {e}"),
            ))
        };
        let mut out =
            ResponseHeader::build_no_case(status, Some(up_head.headers.len() + 4)).map_err(bad)?;
        let hop = ConnectionNamed::of(&up_head.headers);
        for (name, value) in up_head.headers.iter() {
            // On rate-limited routes the gateway's own limit headers describe the caller; the
            // provider's describe the gateway's upstream key and would contradict them.
            let provider_limit = route.meters && request::is_limit_header(name);
            if up.headers.returns(name) && !hop.contains(name) && !provider_limit {
                out.append_header(name.clone(), value.clone())
                    .map_err(bad)?;
            }
        }
        if !out.headers.contains_key(http::header::CONTENT_LENGTH)
            && status != StatusCode::NO_CONTENT
            && status != StatusCode::NOT_MODIFIED
        {
            out.insert_header(http::header::TRANSFER_ENCODING, "chunked")
                .map_err(bad)?;
        }
        route
            .chain
            .on_response(status.as_u16(), &out.headers, &mut ctx.req);
        if let Some(m) = &mut ctx.metering {
            m.on_response(status.as_u16(), &out.headers);
        }
        ctx.sse = out
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if let Some(m) = ctx.served_model.as_deref().or(ctx.req.model.as_deref()) {
            if let Ok(v) = http::HeaderValue::from_str(m) {
                out.insert_header("x-leaky-served-model", v).map_err(bad)?;
            }
        }
        self.finish_headers(&mut out, ctx).map_err(bad)?;
        ctx.status = status.as_u16();
        let deadline = ctx
            .deadline
            .unwrap_or_else(|| Instant::now() + route.total_timeout);
        if let Err(e) = session.write_response_header(Box::new(out), false).await {
            return Err(self.client_gone(ctx, route, up, resp, deadline, e).await);
        }
        ctx.response_started = true;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = up.idle.min(left);
            let read = tokio::time::timeout(wait, resp.session.read_body_bytes()).await;
            let Ok(read) = read else {
                let reason = if left <= up.idle { "total" } else { "idle" };
                self.cut(session, ctx, route, reason, wait).await?;
                return Ok(false);
            };
            let Some(chunk) = read.map_err(Fail::Abort)? else {
                break;
            };
            let chunk = match &mut ctx.metering {
                Some(m) => m.on_chunk(chunk),
                None => chunk,
            };
            // The provider's usage is settled before the last byte goes out, so a caller that sends
            // its next request on receiving this response already sees it in the headers.
            let tail = if resp.session.is_body_done() {
                self.settle(route, ctx).await
            } else {
                Bytes::new()
            };
            for out in [chunk, tail] {
                match self.forward(session, route, ctx, out).await {
                    Ok(()) => {}
                    Err(Fail::Abort(e)) => {
                        return Err(self.client_gone(ctx, route, up, resp, deadline, e).await)
                    }
                    Err(f) => return Err(f),
                }
            }
        }
        // Chunked bodies end with an empty read: settle here (once) and forward what was held.
        let tail = self.settle(route, ctx).await;
        self.forward(session, route, ctx, tail).await?;
        Ok(true)
    }

    /// A write to the client failed (it left). A non-streamed answer is still read to its end
    /// through the usage tracker, each read bounded by the idle timeout and the exchange's deadline,
    /// so the tenant is charged the provider's reported usage (the provider bills the whole answer
    /// whether or not anyone reads it); without one it settles as the reservation. A stream is left
    /// to the completion phase, which settles what was generated so far. Returns the abort.
    async fn client_gone(
        &self,
        ctx: &mut Ctx,
        route: &CompiledRoute,
        up: &Upstream,
        resp: &mut upstream::Response,
        deadline: Instant,
        e: Box<Error>,
    ) -> Fail {
        let drain = ctx
            .metering
            .as_ref()
            .is_some_and(|m| m.reads_to_the_end() && !m.is_settled());
        if drain {
            while !resp.session.is_body_done() {
                let wait = up
                    .idle
                    .min(deadline.saturating_duration_since(Instant::now()));
                let read = tokio::time::timeout(wait, resp.session.read_body_bytes()).await;
                let (Ok(Ok(Some(chunk))), Some(m)) = (read, ctx.metering.as_mut()) else {
                    break;
                };
                m.on_chunk(chunk);
            }
            let _ = self.settle(route, ctx).await;
        }
        Fail::Abort(e)
    }

    /// The upstream went quiet (`idle`) or ran out of time (`total`) mid-response. An event stream ends
    /// with an error event in its own format and a clean end of body; any other body cannot be
    /// completed and the connection is closed (the client sees a truncated response).
    async fn cut(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &CompiledRoute,
        reason: &'static str,
        waited: std::time::Duration,
    ) -> std::result::Result<(), Fail> {
        ctx.cut = Some(reason);
        if let Some(d) = ctx.deployment() {
            let client = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            let tenant = Tenant::of(ctx.req.principal.as_deref(), client).hash();
            d.state
                .record_stream_failure(crate::balancer::now_ms(), tenant);
            crate::metrics::bump(|m| &m.stream_cuts, &[&d.label, reason]);
            tracing::warn!(upstream = %d.label, reason, waited_ms = waited.as_millis() as u64, "upstream response stalled; cut");
        }
        let tail = self.settle(route, ctx).await;
        self.forward(session, route, ctx, tail).await?;
        if !ctx.sse {
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
        let dialect = ctx.req.dialect.unwrap_or(Dialect::Openai);
        let event = crate::request::stream_error_event(dialect, &ctx.req.request_id, &message);
        self.forward(session, route, ctx, event).await?;
        session
            .write_response_body(None, true)
            .await
            .map_err(Fail::Abort)
    }

    /// The body is complete: hands its usage to the chain (`on_usage`), once, and returns the bytes a
    /// stripping tracker still held.
    async fn settle(&self, route: &CompiledRoute, ctx: &mut Ctx) -> Bytes {
        let reserved = crate::metering::reserved_completion(ctx);
        let Some((held, usage)) = ctx.metering.as_mut().and_then(|m| m.finish_once(reserved))
        else {
            return Bytes::new();
        };
        ctx.req.usage = usage;
        route.chain.on_usage(&mut ctx.req).await;
        held
    }

    /// One body chunk to the client (nothing for an empty one).
    async fn forward(
        &self,
        session: &mut Session,
        route: &CompiledRoute,
        ctx: &mut Ctx,
        chunk: Bytes,
    ) -> std::result::Result<(), Fail> {
        if chunk.is_empty() {
            return Ok(());
        }
        route.chain.on_response_chunk(&chunk, &mut ctx.req);
        session
            .write_response_body(Some(chunk), false)
            .await
            .map_err(Fail::Abort)
    }

    /// Headers every response carries: `x-request-id` and whatever the chain asked for.
    fn finish_headers(&self, out: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        out.insert_header("x-request-id", ctx.req.request_id.as_str())?;
        for (name, value) in ctx.req.response_headers.drain(..) {
            out.insert_header(name, value)?;
        }
        Ok(())
    }

    async fn respond_json(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: StatusCode,
        body: Bytes,
    ) -> std::result::Result<(), Fail> {
        let mut out = ResponseHeader::build_no_case(status, Some(4)).map_err(Fail::Abort)?;
        out.insert_header(http::header::CONTENT_TYPE, "application/json")
            .map_err(Fail::Abort)?;
        out.insert_header(http::header::CONTENT_LENGTH, body.len())
            .map_err(Fail::Abort)?;
        self.finish_headers(&mut out, ctx).map_err(Fail::Abort)?;
        ctx.status = status.as_u16();
        session
            .write_response_header(Box::new(out), false)
            .await
            .map_err(Fail::Abort)?;
        ctx.response_started = true;
        session
            .write_response_body(Some(body), true)
            .await
            .map_err(Fail::Abort)
    }

    /// Writes a rejection in the route's dialect (OpenAI's when no route matched).
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        snap: &Snapshot,
        r: Rejection,
    ) -> Result<()> {
        ensure_request_id(&mut ctx.req);
        ctx.reject_reason = Some(r.kind.label());
        let route_name = ctx
            .route
            .and_then(|i| snap.routes().get(i))
            .map_or("none", |r| &*r.name);
        crate::metrics::count_rejection(route_name, r.kind.label());
        if ctx.response_started {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("failed after the response started: {}", r.message),
            );
        }
        let dialect = ctx.req.dialect.unwrap_or(Dialect::Openai);
        let body = Bytes::from(r.render(dialect, &ctx.req.request_id));
        let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let written = self.respond_json(session, ctx, status, body).await;
        self.drain_or_close(session, ctx, snap, r.kind).await;
        match written {
            Ok(()) => Ok(()),
            Err(Fail::Abort(e)) => Err(e),
            Err(Fail::Reject(_)) => Ok(()),
        }
    }
}

impl Gateway {
    /// A request refused before its body was read leaves that body on the connection (called after the
    /// error response is written). A small declared body is drained so the keep-alive connection
    /// survives. Anything else is drained for at most `LINGER` and the connection closed: closing with
    /// unread bytes makes the kernel send a reset, and a client still uploading (an 11 MiB body refused
    /// by its Content-Length) would see "connection reset" instead of the 413 already sent.
    async fn drain_or_close(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        snap: &Snapshot,
        kind: RejectKind,
    ) {
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
    if let Some((idx, route)) = snap.route(raw) {
        ctx.route = Some(idx);
        ctx.req.dialect = Some(route.dialect);
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
