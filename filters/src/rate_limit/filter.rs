//! `rate-limit`: reserve before the upstream call on every applicable bucket (all or nothing), settle
//! with the provider's usage, and tell the caller where it stands.
//!
//! ```text
//! on_cost_floor   a lower bound of the cost never fits a policy: 429 before the exact estimate
//! on_admit        charges ─ store.take ─ admitted: headers, shaping delay, a RateLimitHold │
//!                 refused: 429 + Retry-After (none for a prepaid balance: it does not refill)
//! Hold::settle    usage known before the last bytes go out ─ store.adjust (the next request sees it)
//! Hold::finish    not settled yet (client gone, upstream failed) ─ settle what was used, refund the rest
//! drop            never settled (request cancelled) ─ refund everything
//! ```
//!
//! Every decision is counted when it is made, through the [`DecisionSink`] the proxy hands over.

use super::{headers, subject};
use crate::chain::{Filter, RequestCtx};
use crate::hold::{Admission, Hold, Settlement};
use crate::{RejectKind, Rejection};
use async_trait::async_trait;
use leaky_config::{PolicyKind, QuotaWindow, Unit};
use leaky_limit::{
    Adjust, Charge, Charges, Decision, DecisionSink, Deny, Held, Limiter, MemoryStore, Nanos,
    Taken, TokenUsage, UsageSource,
};
use std::sync::Arc;
use std::time::Duration;

pub struct RateLimitFilter {
    limiter: Arc<Limiter>,
    /// The limiter's policies as headers, rendered once.
    headers: headers::Fixed,
    decisions: Option<DecisionSink>,
}

impl RateLimitFilter {
    pub fn new(limiter: Arc<Limiter>) -> Self {
        RateLimitFilter {
            headers: headers::Fixed::new(&limiter),
            limiter,
            decisions: None,
        }
    }

    /// Counts every decision through `sink`.
    pub fn with_decisions(mut self, sink: Option<DecisionSink>) -> Self {
        self.decisions = sink;
        self
    }

    fn count(&self, decisions: impl IntoIterator<Item = (usize, Decision)>) {
        if let Some(sink) = &self.decisions {
            decisions.into_iter().for_each(|(i, d)| sink(i, d));
        }
    }

    fn rejection(
        &self,
        which: &[usize],
        charges: &[Charge],
        index: usize,
        deny: &Deny,
    ) -> Rejection {
        let p = &self.limiter.policies[which[index]];
        let (limit, window) = p.policy.quota_and_window();
        let cost = charges[index].cost;
        let unit = unit_name(p.policy.unit);
        let wait = headers::duration(Duration::from_nanos(deny.retry_after_ns));
        let (kind, message) = match (&p.policy.kind, deny.never_fits) {
            (PolicyKind::Quota { window: w, .. }, _) => {
                let w = match w {
                    QuotaWindow::Hourly => "hourly",
                    QuotaWindow::Daily => "daily",
                    QuotaWindow::Monthly => "monthly",
                };
                (
                    RejectKind::QuotaExceeded,
                    format!(
                        "You exceeded your {w} quota of {limit} {unit} (policy `{}`). It resets in {wait}.",
                        p.name
                    ),
                )
            }
            (PolicyKind::Balance, _) => (
                RejectKind::InsufficientBalance,
                format!(
                    "Your organization's prepaid token balance is too low for this request (policy `{}`): it needs up to {cost} tokens and {} remain. Buy more tokens to continue.",
                    p.name, deny.status.remaining
                ),
            ),
            (_, true) => return self.too_large(which[index], cost),
            (PolicyKind::Concurrent { .. }, false) => (
                RejectKind::RateLimited,
                format!(
                    "Too many concurrent requests (policy `{}`): the limit is {limit} in flight.",
                    p.name
                ),
            ),
            (PolicyKind::Bucket { .. }, false) => (
                kind_for(p.policy.unit),
                format!(
                    "Rate limit reached for {unit} (policy `{}`): limit {limit} per {window}s, requested {cost}. Please try again in {wait}.",
                    p.name
                ),
            ),
        };
        Rejection::new(kind, message)
    }
}

impl RateLimitFilter {
    /// `cost` can never fit policy `policy` (an index into the limiter's policies), whatever its
    /// bucket holds.
    fn too_large(&self, policy: usize, cost: u64) -> Rejection {
        let p = &self.limiter.policies[policy];
        let (limit, window) = p.policy.quota_and_window();
        let unit = unit_name(p.policy.unit);
        Rejection::new(
            kind_for(p.policy.unit),
            format!(
                "Request too large (policy `{}`): it needs {cost} {unit} but the limit is {limit} {unit} per {window}s. Lower `max_tokens` or shorten the prompt.",
                p.name
            ),
        )
    }
}

fn unit_name(unit: Unit) -> &'static str {
    match unit {
        Unit::Requests => "requests",
        Unit::ConcurrentRequests => "concurrent requests",
        Unit::Tokens => "tokens",
        Unit::PromptTokens => "prompt tokens",
        Unit::CompletionTokens => "completion tokens",
        Unit::Balance => "prepaid tokens",
    }
}

fn kind_for(unit: Unit) -> RejectKind {
    if unit.is_tokens() {
        RejectKind::TokensRateLimited
    } else {
        RejectKind::RateLimited
    }
}

fn total(u: TokenUsage) -> i64 {
    u.prompt.saturating_add(u.completion) as i64
}

impl RateLimitFilter {
    /// The request's charges. On the in-process store, each charge's bucket is found (or created)
    /// as its key is spelled: the store's own key is charged (nothing allocated for an existing
    /// bucket) and the bucket is held from here to the settlement; the clock read then is returned.
    fn resolve(&self, ctx: &RequestCtx) -> (Charges, Vec<Held>, Option<Nanos>) {
        let mut buckets = Vec::new();
        let Some(m) = self.limiter.inline.as_deref() else {
            return (self.limiter.charges(&subject(ctx)), buckets, None);
        };
        let now = (self.limiter.clock)();
        let charges = self.limiter.charges_resolved(&subject(ctx), |key, algo| {
            let (key, bucket) = m.bucket(key, algo, now);
            buckets.push(bucket);
            key
        });
        (charges, buckets, Some(now))
    }

    /// The store could not answer and a `fail_closed` policy applies: the request is refused.
    fn unavailable(&self, which: &[usize], e: &impl std::fmt::Display) -> Rejection {
        tracing::warn!(error = %e, "rate limiter store unavailable; a fail_closed policy refuses the request");
        self.count(which.iter().map(|i| (*i, Decision::Unavailable)));
        Rejection::new(
            RejectKind::Unavailable,
            "The rate limiter cannot check your limits right now; please retry shortly.",
        )
    }
}

#[async_trait]
impl Filter for RateLimitFilter {
    fn kind(&self) -> &'static str {
        "rate-limit"
    }

    fn wants_cost(&self) -> bool {
        true
    }

    fn on_cost_floor(&self, ctx: &RequestCtx) -> Result<(), Rejection> {
        let Some((policy, cost)) = self.limiter.never_fits(&subject(ctx)) else {
            return Ok(());
        };
        self.count([(policy, Decision::Denied)]);
        Err(self.too_large(policy, cost))
    }

    async fn on_admit(&self, ctx: &mut RequestCtx) -> Result<Admission, Rejection> {
        let inline = self.limiter.inline.as_deref();
        let (
            Charges {
                which,
                charges,
                completion,
                cap,
            },
            buckets,
            clock,
        ) = self.resolve(ctx);
        if charges.is_empty() {
            return Ok(Admission::default());
        }
        let now = clock.unwrap_or_else(|| (self.limiter.clock)());
        let (taken, held) = match inline {
            // The in-process store answers at once: no boxed future, no dynamic call.
            Some(m) => {
                let (taken, held) = m.take_in(now, &charges, buckets);
                (Ok(taken), held)
            }
            None => (self.limiter.store.take(now, &charges).await, Vec::new()),
        };
        match taken {
            Ok(Taken::Admitted(admits)) => {
                let statuses = which.iter().zip(&admits).map(|(i, a)| (*i, a.status));
                headers::add(&self.headers, statuses, None, ctx);
                self.count(which.iter().zip(&admits).map(|(i, a)| (*i, decision(a))));
                let delay = admits.iter().map(|a| a.delay_ns).max().unwrap_or(0);
                let hold = RateLimitHold {
                    limiter: self.limiter.clone(),
                    which,
                    charges,
                    held,
                };
                if delay > 0 {
                    // Shaping: the request waits here, holding its reservation (a cancelled wait
                    // drops the hold, which refunds it).
                    tokio::time::sleep(Duration::from_nanos(delay)).await;
                }
                Ok(Admission {
                    holds: vec![Box::new(hold)],
                    completion_cap: cap,
                    reserved_completion: completion,
                })
            }
            Ok(Taken::Denied { index, deny }) => {
                let statuses = std::iter::once((which[index], deny.status));
                headers::add(&self.headers, statuses, Some(&deny), ctx);
                self.count([(which[index], Decision::Denied)]);
                Err(self.rejection(&which, &charges, index, &deny))
            }
            Err(e) => Err(self.unavailable(&which, &e)),
        }
    }
}

fn decision(a: &leaky_limit::Admit) -> Decision {
    if a.soft_exceeded {
        Decision::SoftExceeded
    } else if a.delay_ns > 0 {
        Decision::Delayed
    } else {
        Decision::Allowed
    }
}

/// What one admitted request reserved on the limiter's buckets: settled once with what it used;
/// dropped unsettled (the request was cancelled), it refunds everything.
struct RateLimitHold {
    limiter: Arc<Limiter>,
    /// The policy of each charge (indexes into the limiter's policies).
    which: Vec<usize>,
    /// What was reserved; empty once settled.
    charges: Vec<Charge>,
    /// On the in-process store, each charge's bucket (else empty).
    held: Vec<Held>,
}

impl RateLimitHold {
    /// The correction of each bucket from what it reserved to what the request used (non-zero ones).
    /// (charge index, charge, delta).
    fn deltas<'a>(
        &'a self,
        outcome: &'a Settlement,
    ) -> impl Iterator<Item = (usize, &'a Charge, i64)> {
        let failed = outcome.failed();
        self.which
            .iter()
            .zip(&self.charges)
            .enumerate()
            .filter_map(move |(n, (i, c))| {
                let reserved = c.cost as i64;
                let used = match (self.limiter.policies[*i].policy.unit, outcome.usage) {
                    _ if failed => 0,
                    (Unit::ConcurrentRequests, _) => 0,
                    (Unit::Requests, _) => 1,
                    (_, None) => 0,
                    (Unit::Tokens | Unit::Balance, Some(u)) => total(u),
                    (Unit::PromptTokens, Some(u)) => u.prompt as i64,
                    (Unit::CompletionTokens, Some(u)) => u.completion as i64,
                };
                // No usage to be had: never less than what this bucket reserved.
                let used = match outcome.usage {
                    Some(u) if !failed && u.source == UsageSource::Reservation => {
                        used.max(reserved)
                    }
                    _ => used,
                };
                let delta = used - reserved;
                (delta != 0).then_some((n, c, delta))
            })
    }

    fn adjusts(&self, outcome: &Settlement) -> Vec<Adjust> {
        self.deltas(outcome)
            .map(|(_, c, delta)| Adjust {
                key: c.key.clone(),
                algo: c.algo.clone(),
                delta,
            })
            .collect()
    }

    /// Settles on the in-process store, bucket by bucket (no `Adjust`s built, no lookups for the
    /// buckets it holds); the clock is read only if some bucket changes.
    fn settle_inline(&self, m: &MemoryStore, outcome: &Settlement) {
        let mut now = None;
        for (n, c, delta) in self.deltas(outcome) {
            let now = *now.get_or_insert_with(|| (self.limiter.clock)());
            match self.held.get(n) {
                Some(b) => b.adjust(now, &c.algo, delta),
                None => m.adjust_one(now, &c.key, &c.algo, delta),
            }
        }
    }

    /// Settles without awaiting: inline on the in-process store, else through the settler queue.
    fn settle_now(&mut self, outcome: &Settlement) {
        if let Some(m) = &self.limiter.inline {
            self.settle_inline(m, outcome);
            self.charges.clear();
            self.held.clear();
            return;
        }
        let adjusts = self.adjusts(outcome);
        self.charges.clear();
        if adjusts.is_empty() {
            return;
        }
        let now = (self.limiter.clock)();
        if let Some(s) = &self.limiter.settler {
            s.send(adjusts);
            return;
        }
        // No settler (tests, tools): a task, if there is a runtime to run it.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("settling usage failed: no runtime");
            return;
        };
        let store = self.limiter.store.clone();
        rt.spawn(async move {
            if let Err(e) = store.adjust(now, &adjusts).await {
                tracing::warn!(error = %e, "settling usage failed");
            }
        });
    }
}

#[async_trait]
impl Hold for RateLimitHold {
    async fn settle(mut self: Box<Self>, outcome: &Settlement) {
        if let Some(m) = &self.limiter.inline {
            self.settle_inline(m, outcome);
            self.charges.clear();
            self.held.clear();
            return;
        }
        let adjusts = self.adjusts(outcome);
        self.charges.clear();
        if adjusts.is_empty() {
            return;
        }
        let now = (self.limiter.clock)();
        if let Err(e) = self.limiter.store.adjust(now, &adjusts).await {
            tracing::warn!(error = %e, "settling usage failed");
        }
    }

    fn finish(mut self: Box<Self>, outcome: &Settlement) {
        self.settle_now(outcome);
    }
}

impl Drop for RateLimitHold {
    fn drop(&mut self) {
        if !self.charges.is_empty() {
            self.settle_now(&Settlement::default());
        }
    }
}
