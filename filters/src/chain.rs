//! The filter trait, the per-request context, and building a route's chain from its YAML specs.

use crate::{
    ApiKeyFilter, JwksCache, JwtFilter, Principal, Rejection, RequestIdFilter, SharedKeyIndex,
};
use async_trait::async_trait;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use leaky_config::{Dialect, FilterConfig};
use std::path::PathBuf;
use std::sync::Arc;

/// The request as filters see it: read-only; changes go through `RequestCtx`.
#[derive(Debug)]
pub struct RequestInfo<'a> {
    pub method: &'a Method,
    /// Path as received, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl RequestInfo<'_> {
    /// The first value of query parameter `name`, undecoded.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query?
            .split('&')
            .find_map(|kv| match kv.split_once('=') {
                Some((k, v)) if k == name => Some(v),
                _ => None,
            })
    }
}

/// Everything a request accumulates on its way through the chain.
#[derive(Debug, Default)]
pub struct RequestCtx {
    /// Set by `request-id`; the proxy mints one if the route has no such filter.
    pub request_id: String,
    /// The caller's W3C `traceparent`, passed upstream unchanged.
    pub traceparent: Option<HeaderValue>,
    /// Set by an auth filter.
    pub principal: Option<Arc<Principal>>,
    /// The request's model, once known (body or path), before `on_request_body`.
    pub model: Option<String>,
    /// Error dialect of the route.
    pub dialect: Option<Dialect>,
    /// Unix seconds at the start of the request (the injected clock for expiry checks).
    pub now_unix: i64,
    /// Headers to add to the upstream request.
    pub upstream_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers to add to the response.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Response status, once known.
    pub status: Option<u16>,
    /// Response body bytes seen so far.
    pub response_bytes: u64,
    /// Route name (a rate-limit dimension).
    pub route: Option<Arc<str>>,
    /// Provider of the chosen upstream, once picked.
    pub provider: Option<Arc<str>>,
    /// The request's token cost estimate, set by the proxy before `on_admit` when the route meters tokens.
    pub cost: Option<leaky_limit::TokenCost>,
    /// Tokens the request used: the provider's report, or counted from what was streamed when the
    /// response was cut. Set before `on_usage` / `on_complete`.
    pub usage: Option<leaky_limit::TokenUsage>,
    /// The per-choice completion cap the proxy must send upstream because the request set none and
    /// a policy enforces its reservation (`enforce_max_tokens`); set by the limiter in `on_admit`.
    pub completion_cap: Option<u64>,
    /// What the rate limiter decided and reserved (settled by `on_usage` or `on_complete`).
    pub limit: Option<Box<crate::rate_limit::Reservation>>,
    /// Shaping delay the limiter asked for before the upstream call.
    pub delay: Option<std::time::Duration>,
}

/// One filter of a chain. Every phase has a pass-through default; implement the ones you need.
#[async_trait]
pub trait Filter: Send + Sync {
    /// The YAML `kind`, for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Request headers arrived (body not read yet). Reject here to answer without reading the body.
    async fn on_request(
        &self,
        _req: &RequestInfo<'_>,
        _ctx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        Ok(())
    }

    /// The body was read and `ctx.model` resolved.
    fn on_request_body(&self, _body: &[u8], _ctx: &mut RequestCtx) -> Result<(), Rejection> {
        Ok(())
    }

    /// Before the exact estimate of a large request: `ctx.cost` holds a lower bound of its cost
    /// (the prompt's floor from its byte length). Refuse here what can never be admitted, so the
    /// exact count (seconds of CPU for a multi-megabyte prompt) is never paid for it. Synchronous
    /// and without store access: only what no bucket state can change.
    fn on_cost_floor(&self, _ctx: &mut RequestCtx) -> Result<(), Rejection> {
        Ok(())
    }

    /// Admission, after `on_request_body` and before the upstream call (`ctx.provider` and `ctx.cost`
    /// known): the rate limiter reserves here.
    async fn on_admit(&self, _ctx: &mut RequestCtx) -> Result<(), Rejection> {
        Ok(())
    }

    /// The provider's usage is known (`ctx.usage`), before the response's last bytes go out, so the
    /// caller's next request already sees it settled.
    async fn on_usage(&self, _ctx: &mut RequestCtx) {}

    /// The upstream's status and headers arrived.
    fn on_response(&self, _status: u16, _headers: &HeaderMap, _ctx: &mut RequestCtx) {}

    /// A response body chunk is about to go to the client.
    fn on_response_chunk(&self, _chunk: &[u8], _ctx: &mut RequestCtx) {}

    /// The request is over, whatever happened. Always runs, once.
    fn on_complete(&self, _ctx: &RequestCtx) {}
}

/// What filters may need from the config version they are built for.
#[derive(Clone)]
pub struct BuildContext {
    /// The live key index (published per version, outside the chains).
    pub keys: Arc<SharedKeyIndex>,
    /// JWKS keys by source, kept across versions.
    pub jwks: Arc<JwksCache>,
    /// Directory relative file paths resolve against.
    pub base_dir: PathBuf,
    /// Names of the configured tiers (a JWT may only claim one of these).
    pub tiers: Arc<std::collections::BTreeSet<String>>,
    /// The config version's compiled limiter (policies + store), shared by every route's `rate-limit`.
    pub limiter: Option<Arc<leaky_limit::Limiter>>,
}

/// A route's filters, in order.
#[derive(Clone, Default)]
pub struct Chain {
    filters: Vec<Arc<dyn Filter>>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.filters.iter().map(|x| x.kind()))
            .finish()
    }
}

impl Chain {
    pub fn new(filters: Vec<Arc<dyn Filter>>) -> Self {
        Chain { filters }
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        self.filters.iter().map(|f| f.kind()).collect()
    }

    pub fn has(&self, kind: &str) -> bool {
        self.filters.iter().any(|f| f.kind() == kind)
    }

    pub async fn on_request(
        &self,
        req: &RequestInfo<'_>,
        ctx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        for f in &self.filters {
            f.on_request(req, ctx).await?;
        }
        Ok(())
    }

    pub fn on_request_body(&self, body: &[u8], ctx: &mut RequestCtx) -> Result<(), Rejection> {
        self.filters
            .iter()
            .try_for_each(|f| f.on_request_body(body, ctx))
    }

    pub fn on_cost_floor(&self, ctx: &mut RequestCtx) -> Result<(), Rejection> {
        self.filters.iter().try_for_each(|f| f.on_cost_floor(ctx))
    }

    pub async fn on_admit(&self, ctx: &mut RequestCtx) -> Result<(), Rejection> {
        for f in &self.filters {
            f.on_admit(ctx).await?;
        }
        Ok(())
    }

    pub async fn on_usage(&self, ctx: &mut RequestCtx) {
        for f in &self.filters {
            f.on_usage(ctx).await;
        }
    }

    pub fn on_response(&self, status: u16, headers: &HeaderMap, ctx: &mut RequestCtx) {
        ctx.status = Some(status);
        self.filters
            .iter()
            .for_each(|f| f.on_response(status, headers, ctx));
    }

    pub fn on_response_chunk(&self, chunk: &[u8], ctx: &mut RequestCtx) {
        ctx.response_bytes += chunk.len() as u64;
        self.filters
            .iter()
            .for_each(|f| f.on_response_chunk(chunk, ctx));
    }

    pub fn on_complete(&self, ctx: &RequestCtx) {
        self.filters.iter().for_each(|f| f.on_complete(ctx));
    }
}

/// The registry: YAML `kind` → filter. Fallible only on I/O (e.g. an unreadable JWKS file), which
/// fails the reload and keeps the previous config serving.
pub fn build_chain(specs: &[FilterConfig], cx: &BuildContext) -> Result<Chain, String> {
    let mut filters: Vec<Arc<dyn Filter>> = Vec::with_capacity(specs.len());
    for spec in specs {
        filters.push(match spec {
            FilterConfig::RequestId(s) => Arc::new(RequestIdFilter::from_config(s)),
            FilterConfig::ApiKey(s) => Arc::new(ApiKeyFilter::from_config(s, cx)),
            FilterConfig::Jwt(s) => {
                Arc::new(JwtFilter::from_config(s, cx).map_err(|e| e.to_string())?)
            }
            FilterConfig::RateLimit => match &cx.limiter {
                Some(l) => Arc::new(crate::rate_limit::RateLimitFilter::new(l.clone())),
                None => return Err("the `rate-limit` filter needs the limiter".into()),
            },
        });
    }
    Ok(Chain { filters })
}
