//! The `rate-limit` filter: the chain's face of the limit engine (`leaky-limit`). It describes the
//! request to the engine as a [`Subject`], reserves on admission, settles with the usage, and renders
//! the outcome as headers and refusals in the caller's terms.

mod filter;
mod headers;

pub use filter::RateLimitFilter;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuthMethod, Principal};
    use leaky_limit::TokenCost;
    use std::sync::Arc;

    #[test]
    fn subject_borrows_the_principal_and_the_request() {
        let cost = TokenCost {
            prompt: 3,
            max_completion: None,
            choices: 1,
        };
        let mut ctx = RequestCtx {
            model: Some("gpt-4o".into()),
            provider: Some("openai".into()),
            route: Some("v1".into()),
            cost: Some(cost),
            ..Default::default()
        };
        let anonymous = subject(&ctx);
        assert_eq!(
            (anonymous.key, anonymous.user, anonymous.org, anonymous.tier),
            (None, None, None, None)
        );
        ctx.principal = Some(Arc::new(Principal {
            id: "k1".into(),
            user: "u1".into(),
            org: Some("acme".into()),
            tier: "pro".into(),
            roles: Arc::from(Vec::new()),
            models: Arc::from(Vec::new()),
            method: AuthMethod::ApiKey,
        }));
        assert_eq!(
            subject(&ctx),
            Subject {
                key: Some("k1"),
                user: Some("u1"),
                org: Some("acme"),
                tier: Some("pro"),
                model: Some("gpt-4o"),
                provider: Some("openai"),
                route: Some("v1"),
                cost: Some(cost),
            }
        );
    }
}
