//! The per-request context Pingora hands to every phase, and how handling a request ends ([`Fail`]).
//!
//! A leaf module: the phases (`service`, `exchange`, `relay`, `access_log`) all read `Ctx` and none of
//! them imports another through it. Each part has one writer: `req` is the filters' (and the
//! routing step's), `ledger` changes only through its own methods, `exchange` is written by the
//! exchange (`exchange.rs`), `response` by the response writers (`relay.rs`, `service.rs`); the
//! completion phase (`access_log.rs`) only reads, after `Ledger::finish`.

use crate::balancer::Deployment;
use crate::ledger::Ledger;
use crate::snapshot::{CompiledRoute, Snapshot, Upstream};
use leaky_filters::{Rejection, RequestCtx};
use pingora::Error;
use std::sync::Arc;
use tokio::time::Instant;

/// Per-request state.
pub struct Ctx {
    pub(crate) start: Instant,
    /// The config version this request runs on (one `ArcSwap` load).
    pub(crate) snapshot: Option<Arc<Snapshot>>,
    /// Index into the snapshot's routes.
    pub(crate) route: Option<usize>,
    /// What filters know and tell.
    pub req: RequestCtx,
    /// Every hold the request takes, settled once.
    pub(crate) ledger: Ledger,
    /// The upstream side: where the request went and how the attempts went.
    pub(crate) exchange: Exchange,
    /// What went back to the client.
    pub(crate) response: ResponseState,
    /// Request body bytes read.
    pub(crate) request_bytes: usize,
    /// The request's trace while it runs (`None` when tracing is off: see `trace.rs`).
    pub(crate) trace: Option<Box<crate::trace::RequestTrace>>,
}

/// The upstream side of a request, written by the routing step (`upstream`) and the exchange.
#[derive(Default)]
pub struct Exchange {
    /// The upstream picked for the model (after a fallback, the one that answered).
    pub upstream: Option<Arc<Upstream>>,
    /// Upstream attempts made (retries and fallbacks included).
    pub attempts: u32,
    /// Failed attempts as `provider/deployment:outcome`, space-separated (`None` when none failed).
    pub trail: Option<String>,
    /// The fallback model that answered, when not the requested one.
    pub served_model: Option<String>,
    /// Duration of the last attempt up to its response header.
    pub upstream_seconds: Option<f64>,
    /// End of the upstream exchange (route `timeouts.total_ms`).
    pub deadline: Option<Instant>,
}

/// What the client was sent.
#[derive(Default)]
pub struct ResponseState {
    /// The response header went out: failures from here on cannot become error responses.
    pub started: bool,
    pub status: u16,
    /// The response is an event stream (a cut can end it with an error event).
    pub sse: bool,
    /// Why the gateway cut the response after it started (`idle`, `total`).
    pub cut: Option<&'static str>,
    /// Body bytes sent.
    pub bytes: u64,
    /// The rejection's label, when the gateway refused the request.
    pub reject_reason: Option<&'static str>,
    /// How the response cache treated the request (cache-enabled routes; `None` before it
    /// decided, which the `x-leaky-cache` header reports as `bypass`).
    pub cache: Option<crate::response_cache::Outcome>,
}

impl Ctx {
    pub fn new() -> Self {
        Ctx {
            start: Instant::now(),
            snapshot: None,
            route: None,
            req: RequestCtx::default(),
            ledger: Ledger::default(),
            exchange: Exchange::default(),
            response: ResponseState::default(),
            request_bytes: 0,
            trace: None,
        }
    }

    pub fn elapsed_seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// The matched route, if any.
    pub fn route(&self) -> Option<&CompiledRoute> {
        self.snapshot.as_ref()?.routes().get(self.route?)
    }

    /// The deployment that answered.
    pub fn deployment(&self) -> Option<&Deployment> {
        self.exchange
            .upstream
            .as_ref()?
            .pool
            .deployments
            .get(self.ledger.deployment()?)
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Self::new()
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
