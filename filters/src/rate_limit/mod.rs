//! The `rate-limit` filter: the chain's face of the limit engine (`leaky-limit`). It describes the
//! request to the engine as a [`Subject`], reserves on admission, settles with the usage, and renders
//! the outcome as headers and refusals in the caller's terms.

mod filter;
mod headers;

pub use filter::{Decision, RateLimitFilter, Reservation};

use crate::chain::RequestCtx;
use leaky_limit::Subject;

/// The limiter's view of `ctx`: borrows only, so it costs nothing per decision.
pub(crate) fn subject(ctx: &RequestCtx) -> Subject<'_> {
    let p = ctx.principal.as_deref();
    Subject {
        key: p.map(|p| &*p.id),
        user: p.map(|p| &*p.user),
        org: p.and_then(|p| p.org.as_deref()),
        tier: p.map(|p| &*p.tier),
        model: ctx.model.as_deref(),
        provider: ctx.provider.as_deref(),
        route: ctx.route.as_deref(),
        cost: ctx.cost,
    }
}
