//! The response cache on the request path, after admission (issue 18, `docs/cache.md`):
//!
//! ```text
//! decide (leaky_cache::CachePolicy)
//!  ├─ bypass                 x-leaky-cache: bypass ─ exchange + relay as usual
//!  └─ cache { key, read, store }
//!     ├─ read: lookup        bounded by the store's timeout; unavailable = miss (counted)
//!     │   └─ hit             replay (replay.rs): metered with the route's charge, x-leaky-cache: hit
//!     └─ miss                x-leaky-cache: miss; with `store`: Flights::join
//!         ├─ leader          exchange + relay, teeing the upstream bytes (capture.rs) ─ finish the
//!         │                  flight with the entry ─ store it (spawned, never delaying the answer)
//!         └─ follower        wait ≤ wait_ms for the leader: its entry replayed as a hit, or (none,
//!                            too slow, failed) its own exchange, captured and stored like a leader's
//! ```
//!
//! Routes without `cache` never reach this file: nothing here runs or allocates for them.

use super::{Gateway, Outbound};
use crate::capture::{Answered, Capture};
use crate::ctx::{Ctx, Fail};
use crate::response_cache::{Outcome, RouteCache};
use bytes::Bytes;
use leaky_cache::{Decision, Entry, Join, Key, Leader, RequestFacts};
use pingora::proxy::Session;
use std::sync::Arc;

impl Gateway {
    /// Serves an admitted request on a cache-enabled route; `original` is the body as the caller
    /// sent it (what the key is made of).
    pub(super) async fn serve_cached(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        rc: &RouteCache,
        out: Outbound<'_>,
        original: &Bytes,
    ) -> Result<(), Fail> {
        let (key, read, store) = match decide(session, ctx, &out, original, rc) {
            Decision::Bypass(reason) => {
                ctx.response.cache = Some(Outcome::Bypass);
                rc.count_bypass(ctx.req.model.as_deref(), reason);
                return self.exchange(session, ctx, out, None).await;
            }
            Decision::Cache { key, read, store } => (key, read, store),
        };
        if read {
            if let Some(entry) = rc.lookup(&key).await {
                return hit(session, ctx, rc, &entry).await;
            }
        }
        ctx.response.cache = Some(Outcome::Miss);
        if !store {
            rc.count(ctx.req.model.as_deref(), Outcome::Miss);
            return self.exchange(session, ctx, out, None).await;
        }
        let leader = match rc.flights.join(&key) {
            Join::Leader(l) => Some(l),
            Join::Follower(f) => match f.wait(rc.config().wait).await {
                Some(entry) => return hit(session, ctx, rc, &entry).await,
                // The leader failed, stored nothing or was too slow: this request goes itself.
                None => None,
            },
        };
        rc.count(ctx.req.model.as_deref(), Outcome::Miss);
        self.fill(session, ctx, rc, out, (key, leader)).await
    }

    /// A miss that may be stored: the exchange with its answer captured, then the flight finished
    /// (its followers replay the entry) and the entry stored off the request.
    async fn fill(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        rc: &RouteCache,
        out: Outbound<'_>,
        (key, leader): (Key, Option<Leader>),
    ) -> Result<(), Fail> {
        let max = usize::try_from(rc.config().max_entry_bytes).unwrap_or(usize::MAX);
        let mut capture = Capture::new(max);
        let result = self.exchange(session, ctx, out, Some(&mut capture)).await;
        if capture.is_over() {
            rc.count_too_large();
        }
        let provider = ctx.exchange.upstream.as_ref().map(|u| u.provider.clone());
        let entry = capture
            .into_entry(Answered {
                provider: provider.as_deref().unwrap_or(""),
                served_model: ctx.exchange.served_model.as_deref(),
                usage: ctx.ledger.usage(),
                now_ms: crate::replay::now_ms(),
            })
            .map(Arc::new);
        if let Some(l) = leader {
            l.finish(entry.clone());
        }
        if let Some(e) = entry {
            rc.store_later(key, e);
        }
        result
    }
}

/// The route's policy on this request's facts.
fn decide(
    session: &Session,
    ctx: &Ctx,
    out: &Outbound<'_>,
    original: &Bytes,
    rc: &RouteCache,
) -> Decision {
    let (route, at) = (out.route, out.at);
    let p = ctx.req.principal.as_deref();
    let facts = RequestFacts {
        route: &route.name,
        dialect: route.dialect,
        method: &at.method,
        path: at.rest(),
        query: at.query.as_deref(),
        headers: &session.req_header().headers,
        body: original,
        org: p.and_then(|p| p.org.as_deref()),
        key_id: p.map(|p| &*p.id),
        user: p.map(|p| &*p.user),
        tier: p.map(|p| &*p.tier),
        model: ctx.req.model.as_deref(),
    };
    rc.policy.decide(&facts)
}

/// Answers from `entry`, metered with the route's charge.
async fn hit(
    session: &mut Session,
    ctx: &mut Ctx,
    rc: &RouteCache,
    entry: &Entry,
) -> Result<(), Fail> {
    ctx.response.cache = Some(Outcome::Hit);
    rc.count(ctx.req.model.as_deref(), Outcome::Hit);
    let now = crate::replay::now_ms();
    crate::replay::replay(session, ctx, entry, rc.config().charge, now).await
}
