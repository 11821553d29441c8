//! `concurrency`: at most `max` requests in flight per key (or user, or org) on a route. Admission
//! takes a slot and returns it as a [`Hold`]; the slot comes back when the request ends, however it
//! ends: settled, finished from the completion phase, or dropped with a cancelled request.
//!
//! The count lives in the filter, so it is per process and per config version: after a reload the
//! new chain counts from zero while the requests admitted before it finish on the old count.

use crate::chain::{Filter, RequestCtx};
use crate::hold::{Admission, Hold, Settlement};
use crate::{RejectKind, Rejection};
use async_trait::async_trait;
use dashmap::DashMap;
use leaky_config::{ConcurrencyConfig, ConcurrencyScope};
use std::sync::Arc;

/// Requests in flight per scope value. aHash, keyed per process like SipHash at a fraction of its
/// cost: looked up twice a request.
type Inflight = DashMap<Arc<str>, u32, ahash::RandomState>;

pub struct ConcurrencyFilter {
    max: u32,
    scope: ConcurrencyScope,
    inflight: Arc<Inflight>,
}

impl ConcurrencyFilter {
    pub fn from_config(spec: &ConcurrencyConfig) -> Self {
        ConcurrencyFilter {
            max: spec.max.get(),
            scope: spec.scope,
            inflight: Arc::default(),
        }
    }

    /// Whose cap the request counts against.
    fn key(&self, ctx: &RequestCtx) -> Arc<str> {
        let Some(p) = ctx.principal.as_deref() else {
            return Arc::from("-");
        };
        match self.scope {
            ConcurrencyScope::Key => p.id.clone(),
            ConcurrencyScope::User => p.user.clone(),
            ConcurrencyScope::Org => p.org.clone().unwrap_or_else(|| p.user.clone()),
        }
    }

    fn scope_name(&self) -> &'static str {
        match self.scope {
            ConcurrencyScope::Key => "key",
            ConcurrencyScope::User => "user",
            ConcurrencyScope::Org => "organization",
        }
    }
}

#[async_trait]
impl Filter for ConcurrencyFilter {
    fn kind(&self) -> &'static str {
        "concurrency"
    }

    async fn on_admit(&self, ctx: &mut RequestCtx) -> Result<Admission, Rejection> {
        let key = self.key(ctx);
        {
            let mut n = self.inflight.entry(key.clone()).or_insert(0);
            if *n >= self.max {
                drop(n);
                ctx.response_headers.push((
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                ));
                return Err(Rejection::new(
                    RejectKind::RateLimited,
                    format!(
                        "Too many concurrent requests for this {} (at most {} at once). Retry when one finishes.",
                        self.scope_name(),
                        self.max
                    ),
                ));
            }
            *n += 1;
        }
        Ok(Admission::hold(Box::new(Slot {
            inflight: self.inflight.clone(),
            key,
        })))
    }
}

/// One request's slot; given back when dropped (settling or finishing drops it).
struct Slot {
    inflight: Arc<Inflight>,
    key: Arc<str>,
}

#[async_trait]
impl Hold for Slot {
    async fn settle(self: Box<Self>, _outcome: &Settlement) {}

    fn finish(self: Box<Self>, _outcome: &Settlement) {}
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The last slot of a key removes its entry: the table holds only keys with requests in flight.
        self.inflight.remove_if_mut(&self.key, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{AuthMethod, Principal};

    fn filter(max: u32, scope: ConcurrencyScope) -> ConcurrencyFilter {
        ConcurrencyFilter::from_config(&ConcurrencyConfig {
            max: std::num::NonZeroU32::new(max).unwrap(),
            scope,
        })
    }

    fn ctx(key: &str, org: &str) -> RequestCtx {
        RequestCtx {
            principal: Some(Arc::new(Principal {
                id: key.into(),
                user: format!("user-{key}").into(),
                org: Some(org.into()),
                tier: "pro".into(),
                roles: Arc::from(Vec::new()),
                models: Arc::from(Vec::new()),
                method: AuthMethod::ApiKey,
            })),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_key_over_its_cap_is_refused_until_a_request_ends() {
        let f = filter(2, ConcurrencyScope::Key);
        let a = f.on_admit(&mut ctx("k", "o")).await.unwrap();
        let b = f.on_admit(&mut ctx("k", "o")).await.unwrap();
        let mut c = ctx("k", "o");
        let e = f.on_admit(&mut c).await.unwrap_err();
        assert_eq!((e.kind, e.status()), (RejectKind::RateLimited, 429));
        assert!(e.message.contains("at most 2 at once"), "{}", e.message);
        assert_eq!(c.response_headers[0].0, http::header::RETRY_AFTER);
        // Another key has its own cap.
        let _other = f.on_admit(&mut ctx("j", "o")).await.unwrap();
        // Finished, settled or dropped: each gives its slot back.
        let done = Settlement::default();
        a.holds.into_iter().for_each(|h| h.finish(&done));
        let c = f.on_admit(&mut ctx("k", "o")).await.unwrap();
        for h in b.holds {
            h.settle(&done).await;
        }
        drop(c);
        assert!(
            !f.inflight.contains_key("k"),
            "no entry left for an idle key"
        );
        let _d = f.on_admit(&mut ctx("k", "o")).await.unwrap();
    }

    #[tokio::test]
    async fn an_org_scope_caps_every_key_of_the_org() {
        let f = filter(1, ConcurrencyScope::Org);
        let _a = f.on_admit(&mut ctx("k1", "acme")).await.unwrap();
        let e = f.on_admit(&mut ctx("k2", "acme")).await.unwrap_err();
        assert!(e.message.contains("organization"), "{}", e.message);
        let _b = f.on_admit(&mut ctx("k3", "globex")).await.unwrap();
    }
}
