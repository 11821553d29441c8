//! Shared plumbing: per-router context, metrics, the observing middleware,
//! provider error dialects, latency pacing, streaming bodies and the
//! completion planner used by every provider.

mod errors;
mod latency;
mod metrics;
mod middleware;
mod planner;
mod request;
mod stream;

pub use errors::{ApiError, Dialect, Throttle};
pub use latency::{delay, Pacer};
pub use metrics::{healthz, metrics, Metrics};
pub use middleware::{observe, query_param, Unmatched};
pub use planner::{complete, request_seed, Completion, Finish, Format};
pub use request::{
    bearer, check_key, forced_tokens, json_response, opt_bool, opt_i64, opt_number, opt_u64,
    parse_object, req_str, serialize_response, stop_list,
};
pub use stream::{sse_data, stream_response};

use std::sync::Arc;

use axum::http::HeaderName;

use crate::control::{FaultCounters, FaultPlan, Limiter};
use crate::{Latency, StubOptions};

/// Largest request body the stubs accept.
pub const BODY_LIMIT: usize = 64 * 1024 * 1024;

pub const H_REQUEST_BYTES: HeaderName = HeaderName::from_static("x-stub-request-bytes");
pub const H_SAW_AUTH: HeaderName = HeaderName::from_static("x-stub-saw-authorization");
pub const H_SAW_PATH: HeaderName = HeaderName::from_static("x-stub-saw-path");
pub const H_PROVIDER: HeaderName = HeaderName::from_static("x-stub-provider");
pub const H_COMPLETION_TOKENS: &str = "x-stub-completion-tokens";

/// State shared by every handler of one provider router.
pub struct Ctx {
    pub provider: &'static str,
    pub latency: Latency,
    pub dialect: Dialect,
    pub metrics: Metrics,
    pub faults: FaultPlan,
    pub fault_counters: FaultCounters,
    pub limiter: Limiter,
}

impl Ctx {
    pub fn new(provider: &'static str, dialect: Dialect, opts: &StubOptions) -> Arc<Self> {
        Arc::new(Ctx {
            provider,
            latency: opts.latency,
            dialect,
            metrics: Metrics::default(),
            faults: opts.faults.clone(),
            fault_counters: FaultCounters::default(),
            limiter: Limiter::new(opts.limits, opts.clock.clone()),
        })
    }
}

pub type SharedCtx = Arc<Ctx>;
