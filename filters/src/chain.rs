//! The filter trait, the per-request context and a route's chain of filters. A leaf: it names no
//! filter; building a chain from its YAML specs is the registry's (`registry.rs`).

use crate::hold::Admission;
use crate::principal::Principal;
use crate::reject::Rejection;
use async_trait::async_trait;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
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

/// What filters know of a request and tell the proxy, from its headers to its admission. Holds a
/// filter takes are not kept here: `on_admit` returns them ([`Admission`]) to the proxy's ledger.
#[derive(Debug, Default)]
pub struct RequestCtx {
    /// Set by `request-id`; the proxy mints one if the route has no such filter.
    pub request_id: String,
    /// Set by an auth filter.
    pub principal: Option<Arc<Principal>>,
    /// The request's model, once known (body or path), before `on_request_body`.
    pub model: Option<String>,
    /// Unix seconds at the start of the request (the injected clock for expiry checks).
    pub now_unix: i64,
    /// Headers to add to the upstream request.
    pub upstream_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers to add to the response.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Route name (a rate-limit dimension).
    pub route: Option<Arc<str>>,
    /// Provider of the chosen upstream, once picked.
    pub provider: Option<Arc<str>>,
    /// The request's token cost estimate, set by the proxy before `on_cost_floor` / `on_admit` when
    /// some filter of the route [wants it](Filter::wants_cost) or a deployment has a `tpm` budget.
    pub cost: Option<leaky_limit::TokenCost>,
}

/// One filter of a chain. Every phase has a pass-through default; implement the ones you need.
/// Only phases some filter uses exist: the response is the proxy's, and what a filter holds until the
/// request ends is a [`Hold`](crate::Hold) it returns from `on_admit`.
#[async_trait]
pub trait Filter: Send + Sync {
    /// The YAML `kind`, for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Whether admission needs the request's token cost (`ctx.cost`): the proxy estimates it, and
    /// tracks the response's usage, only on routes where something needs it.
    fn wants_cost(&self) -> bool {
        false
    }

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
    fn on_cost_floor(&self, _ctx: &RequestCtx) -> Result<(), Rejection> {
        Ok(())
    }

    /// Admission, after `on_request_body` and before the upstream call (`ctx.provider` and `ctx.cost`
    /// known): take what the request holds until it ends and return it (the rate limiter reserves
    /// here). A refusal returns no hold: whatever the filter took is released before it returns.
    async fn on_admit(&self, _ctx: &mut RequestCtx) -> Result<Admission, Rejection> {
        Ok(Admission::default())
    }
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

    /// Some filter's admission needs the request's token cost.
    pub fn wants_cost(&self) -> bool {
        self.filters.iter().any(|f| f.wants_cost())
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

    pub fn on_cost_floor(&self, ctx: &RequestCtx) -> Result<(), Rejection> {
        self.filters.iter().try_for_each(|f| f.on_cost_floor(ctx))
    }

    /// Every filter's admission, in order. On a refusal the holds taken by the filters before it are
    /// dropped here, which releases them.
    pub async fn on_admit(&self, ctx: &mut RequestCtx) -> Result<Admission, Rejection> {
        let mut admission = Admission::default();
        for f in &self.filters {
            admission.merge(f.on_admit(ctx).await?);
        }
        Ok(admission)
    }
}
