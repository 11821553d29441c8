//! What a request holds because of the exchange: the tenant's slot on the route (taken before it),
//! the answering deployment's [`UpstreamHolds`] (after it), and the breaker admission of each attempt
//! ([`Admitted`], ended by the attempt's outcome or freed if the attempt is cancelled).

use crate::balancer::{Deployment, DeploymentState, Outcome};
use crate::metrics::bump;
use crate::snapshot::{CompiledRoute, Upstream};
use http::{HeaderName, HeaderValue};
use leaky_filters::{Principal, RejectKind, Rejection};
use leaky_resilience::{BulkheadFull, BulkheadPermit};
use std::sync::Arc;

/// What the request holds on the deployment that answered until its response is relayed and its usage
/// known, as one value its owner keeps and ends once:
/// - the deployment's bulkhead slot ([`release_slot`](Self::release_slot), or on drop);
/// - the tokens charged to the deployment's own `tpm` budget ([`settle`](Self::settle) with the usage;
///   refunded on drop if never settled);
/// - which deployment answered, for the access log and a stream cut's breaker record.
///
/// The breaker admission is not among them: it ends with its attempt, when the header's outcome is
/// recorded; a stream that fails later is recorded on its own (`record_stream_failure`).
pub struct UpstreamHolds {
    upstream: Arc<Upstream>,
    index: usize,
    slot: Option<BulkheadPermit>,
    /// Tokens still charged to the deployment's budget (0 once settled).
    charged: u64,
}

impl UpstreamHolds {
    /// Holds on deployment `index` of `upstream`: its bulkhead slot and `charged` tokens of its budget.
    pub(super) fn new(
        upstream: Arc<Upstream>,
        index: usize,
        slot: BulkheadPermit,
        charged: u64,
    ) -> Self {
        UpstreamHolds {
            upstream,
            index,
            slot: Some(slot),
            charged,
        }
    }

    /// The pool of the stage that answered (a fallback's, after a fallback).
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// The answering deployment's index in `upstream().pool.deployments`.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn deployment(&self) -> Option<&Deployment> {
        self.upstream.pool.deployments.get(self.index)
    }

    /// Frees the deployment's bulkhead slot (the response is relayed).
    pub fn release_slot(&mut self) {
        self.slot = None;
    }

    /// Replaces the charge on the deployment's `tpm` budget by the `used` tokens; once (later calls and
    /// the drop do nothing).
    pub fn settle(&mut self, now_ms: u64, used: u64) {
        if self.charged == 0 {
            return;
        }
        if let Some(d) = self.deployment() {
            d.state.quota.settle(now_ms, self.charged, used);
        }
        self.charged = 0;
    }
}

impl Drop for UpstreamHolds {
    fn drop(&mut self) {
        // Never settled (the request ended without its completion phase): nothing was used.
        self.settle(crate::balancer::now_ms(), 0);
    }
}

/// A breaker admission that must end in an outcome; dropped without one (the request was cancelled),
/// it frees its probe slot.
pub(super) struct Admitted<'a> {
    state: &'a DeploymentState,
    probe: bool,
    done: bool,
}

impl<'a> Admitted<'a> {
    pub(super) fn new(state: &'a DeploymentState, probe: bool) -> Self {
        Admitted {
            state,
            probe,
            done: false,
        }
    }

    pub(super) fn record(mut self, now_ms: u64, outcome: Outcome, tenant: impl FnOnce() -> u64) {
        self.done = true;
        self.state.record(now_ms, self.probe, outcome, tenant);
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.state.cancel(self.probe);
        }
    }
}

/// Takes the tenant's slot on this route's tenant bulkhead, if it has one (held until the request
/// ends). Full: a 429 with `Retry-After: 1` added to `response_headers`.
pub async fn tenant_slot(
    route: &CompiledRoute,
    principal: Option<&Principal>,
    response_headers: &mut Vec<(HeaderName, HeaderValue)>,
) -> Result<Option<BulkheadPermit>, Rejection> {
    let Some(tenants) = &route.tenants else {
        return Ok(None);
    };
    let tenant: Arc<str> = match principal {
        Some(p) => p.org.clone().unwrap_or_else(|| p.user.clone()),
        None => Arc::from("anonymous"),
    };
    let bulkhead = tenants.get(&tenant);
    if let Some(p) = bulkhead.try_acquire() {
        return Ok(Some(p));
    }
    bump(|m| &m.bulkhead_queued, &["tenant"]);
    bulkhead.acquire().await.map(Some).map_err(|full| {
        bump(|m| &m.bulkhead_rejected, &["tenant", full_label(full)]);
        response_headers.push((http::header::RETRY_AFTER, HeaderValue::from_static("1")));
        Rejection::new(
            RejectKind::RateLimited,
            format!(
                "Too many concurrent requests for `{tenant}` on this route (at most {} at once). Retry shortly.",
                tenants.max_concurrent()
            ),
        )
    })
}

pub(super) fn full_label(f: BulkheadFull) -> &'static str {
    match f {
        BulkheadFull::QueueFull => "queue_full",
        BulkheadFull::QueueTimeout => "queue_timeout",
    }
}
