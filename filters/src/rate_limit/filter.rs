//! `rate-limit`: reserve before the upstream call on every applicable bucket (all or nothing), settle
//! with the provider's usage, and tell the caller where it stands.
//!
//! ```text
//! on_cost_floor a lower bound of the cost never fits a policy: 429 before the exact estimate
//! on_admit      charges ─ store.take ─ admitted: headers, shaping delay │ refused: 429 + Retry-After
//! on_usage      usage known before the last bytes go out ─ store.adjust (the next request sees it)
//! on_complete   not settled yet (client gone, upstream failed) ─ settle what was used, refund the rest
//! ```

use super::{headers, subject};
use crate::chain::{Filter, RequestCtx};
use crate::{RejectKind, Rejection};
use async_trait::async_trait;
use leaky_config::{PolicyKind, QuotaWindow, Unit};
use leaky_limit::{Adjust, Charge, Charges, Deny, Limiter, Status, Taken, TokenUsage, UsageSource};
use std::sync::Arc;
use std::time::Duration;

/// What the limiter decided for one policy of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Admitted after a shaping delay.
    Delayed,
    /// Admitted over a soft quota.
    SoftExceeded,
    Denied,
    /// The store could not answer and the policy fails closed.
    Unavailable,
}

impl Decision {
    pub const ALL: [Decision; 5] = [
        Decision::Allowed,
        Decision::Delayed,
        Decision::SoftExceeded,
        Decision::Denied,
        Decision::Unavailable,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Delayed => "delayed",
            Decision::SoftExceeded => "soft_exceeded",
            Decision::Denied => "denied",
            Decision::Unavailable => "unavailable",
        }
    }
}

/// What one request reserved, and what the limiter decided (for metrics and the usage record).
#[derive(Debug, Clone, Default)]
pub struct Reservation {
    /// (index of the policy in `Limiter::policies`, decision).
    pub decisions: Vec<(usize, Decision)>,
    items: Vec<Reserved>,
    pub settled: bool,
    /// The most completion tokens reserved on any bucket: what a request settled from its
    /// reservation ([`UsageSource::Reservation`]) is charged for its completion.
    pub completion: u64,
}

#[derive(Debug, Clone)]
struct Reserved {
    unit: Unit,
    charge: Charge,
}

pub struct RateLimitFilter {
    limiter: Arc<Limiter>,
}

impl RateLimitFilter {
    pub fn new(limiter: Arc<Limiter>) -> Self {
        RateLimitFilter { limiter }
    }

    fn adjusts(&self, r: &Reservation, ctx: &RequestCtx) -> Vec<Adjust> {
        let failed = ctx.status.is_none_or(|s| s >= 500);
        r.items
            .iter()
            .filter_map(|it| {
                let reserved = it.charge.cost as i64;
                let used = match (it.unit, ctx.usage) {
                    _ if failed => 0,
                    (Unit::ConcurrentRequests, _) => 0,
                    (Unit::Requests, _) => 1,
                    (_, None) => 0,
                    (Unit::Tokens, Some(u)) => total(u),
                    (Unit::PromptTokens, Some(u)) => u.prompt as i64,
                    (Unit::CompletionTokens, Some(u)) => u.completion as i64,
                };
                // No usage to be had: never less than what this bucket reserved.
                let used = match ctx.usage {
                    Some(u) if !failed && u.source == UsageSource::Reservation => {
                        used.max(reserved)
                    }
                    _ => used,
                };
                let delta = used - reserved;
                (delta != 0).then(|| Adjust {
                    key: it.charge.key.clone(),
                    algo: it.charge.algo.clone(),
                    delta,
                })
            })
            .collect()
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

#[async_trait]
impl Filter for RateLimitFilter {
    fn kind(&self) -> &'static str {
        "rate-limit"
    }

    fn on_cost_floor(&self, ctx: &mut RequestCtx) -> Result<(), Rejection> {
        let Some((policy, cost)) = self.limiter.never_fits(&subject(ctx)) else {
            return Ok(());
        };
        ctx.limit = Some(Box::new(Reservation {
            decisions: vec![(policy, Decision::Denied)],
            items: Vec::new(),
            completion: 0,
            settled: true,
        }));
        Err(self.too_large(policy, cost))
    }

    async fn on_admit(&self, ctx: &mut RequestCtx) -> Result<(), Rejection> {
        let Charges {
            which,
            charges,
            completion,
            cap,
        } = self.limiter.charges(&subject(ctx));
        if charges.is_empty() {
            return Ok(());
        }
        let now = (self.limiter.clock)();
        match self.limiter.store.take(now, &charges).await {
            Ok(Taken::Admitted(admits)) => {
                let statuses: Vec<(usize, Status)> = which
                    .iter()
                    .zip(&admits)
                    .map(|(i, a)| (*i, a.status))
                    .collect();
                headers::add(&self.limiter, &statuses, None, ctx);
                let delay = admits.iter().map(|a| a.delay_ns).max().unwrap_or(0);
                let decisions = which
                    .iter()
                    .zip(&admits)
                    .map(|(i, a)| {
                        let d = if a.soft_exceeded {
                            Decision::SoftExceeded
                        } else if a.delay_ns > 0 {
                            Decision::Delayed
                        } else {
                            Decision::Allowed
                        };
                        (*i, d)
                    })
                    .collect();
                let items = which
                    .iter()
                    .zip(charges)
                    .map(|(i, charge)| Reserved {
                        unit: self.limiter.policies[*i].policy.unit,
                        charge,
                    })
                    .collect();
                ctx.limit = Some(Box::new(Reservation {
                    decisions,
                    items,
                    settled: false,
                    completion,
                }));
                ctx.completion_cap = cap;
                if delay > 0 {
                    let d = Duration::from_nanos(delay);
                    ctx.delay = Some(d);
                    tokio::time::sleep(d).await;
                }
                Ok(())
            }
            Ok(Taken::Denied { index, deny }) => {
                let statuses = [(which[index], deny.status)];
                headers::add(&self.limiter, &statuses, Some(&deny), ctx);
                ctx.limit = Some(Box::new(Reservation {
                    decisions: vec![(which[index], Decision::Denied)],
                    items: Vec::new(),
                    settled: true,
                    completion: 0,
                }));
                Err(self.rejection(&which, &charges, index, &deny))
            }
            Err(e) => {
                tracing::warn!(error = %e, "rate limiter store unavailable; a fail_closed policy refuses the request");
                ctx.limit = Some(Box::new(Reservation {
                    decisions: which.iter().map(|i| (*i, Decision::Unavailable)).collect(),
                    items: Vec::new(),
                    settled: true,
                    completion: 0,
                }));
                Err(Rejection::new(
                    RejectKind::Unavailable,
                    "The rate limiter cannot check your limits right now; please retry shortly.",
                ))
            }
        }
    }

    async fn on_usage(&self, ctx: &mut RequestCtx) {
        let Some(r) = ctx.limit.as_deref() else {
            return;
        };
        if r.settled {
            return;
        }
        let adjusts = self.adjusts(r, ctx);
        if let Some(r) = ctx.limit.as_deref_mut() {
            r.settled = true;
        }
        if adjusts.is_empty() {
            return;
        }
        let now = (self.limiter.clock)();
        if let Err(e) = self.limiter.store.adjust(now, &adjusts).await {
            tracing::warn!(error = %e, "settling usage failed");
        }
    }

    fn on_complete(&self, ctx: &RequestCtx) {
        let Some(r) = ctx.limit.as_deref() else {
            return;
        };
        if r.settled {
            return;
        }
        let adjusts = self.adjusts(r, ctx);
        if adjusts.is_empty() {
            return;
        }
        if let Some(m) = &self.limiter.inline {
            m.adjust_sync((self.limiter.clock)(), &adjusts);
            return;
        }
        match &self.limiter.settler {
            Some(s) => s.send(adjusts),
            None => {
                let store = self.limiter.store.clone();
                let now = (self.limiter.clock)();
                tokio::spawn(async move {
                    if let Err(e) = store.adjust(now, &adjusts).await {
                        tracing::warn!(error = %e, "settling usage failed");
                    }
                });
            }
        }
    }
}
