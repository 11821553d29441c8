//! The upstream exchange: deployment choice, attempts, retries within the route's budget with backoff,
//! `retry-after` cool-downs, fallback models when a pool is exhausted, all within the route's deadline.
//!
//! It is one free function, [`exchange`], over a [`Transport`] (how one attempt reaches a deployment;
//! the Pingora one is in `upstream.rs`) and a [`Clock`]. Every input is a value ([`Plan`]: the route and
//! upstream from the snapshot, the body, the tenant, the deadline) and the upstream request head is
//! built by a closure the caller passes, so the exchange knows nothing of the request context or the
//! Pingora session; time is tokio's (`Instant`, `sleep`, `timeout`) plus the clock's milliseconds for
//! the resilience algorithms, so the unit tests (`exchange/tests.rs`) run every retry rule on paused
//! time. `seams` holds what the exchange is given (transport, head builder, clock, tenant); `holds`
//! what the request keeps because of it (tenant slot, [`UpstreamHolds`], breaker admissions).
//!
//! ```text
//! (tenant slot: `tenant_slot`, taken by the caller before the exchange; 429 when full)
//! for each stage (the model, then its fallbacks with `model` rewritten in the body or the path):
//!   choose deployment (healthy, not cooling, circuit admits, budget headroom; least in flight by
//!                      weight; untried first)
//!   deployment slot (bulkhead, bounded queue, within the deadline) ─ breaker admission (probe when
//!                    half-open)
//!   attempt: Transport::send ─ response header within min(first_byte, time left)
//!   outcome recorded on the breaker (once per attempt); a 429 may start a cool-down
//!   failure (connect, timeout, retryable status) and another attempt possible and the budget allows:
//!     drop it, back off (full jitter, within the deadline), next deployment (untried first) or stage
//!   otherwise: this response ([`Exchanged`], with its [`UpstreamHolds`]) or error ([`Failure`])
//! ```
//!
//! A response is only dropped for a retry before any of it reached the client: once the header is
//! relayed, the request is answered by this attempt.
//!
//! Failures and `429`s are attributed to the request's [`Tenant`] unless they are provider-wide by
//! nature (a connect failure, a `429` whose rate-limit headers say the account is out), so one tenant
//! cannot open a circuit or cool a deployment down for everyone (see `balancer`).

use crate::balancer::{Choice, Deployment, Outcome};
use crate::metrics::bump;
use crate::request;
use crate::snapshot::{CompiledRoute, Upstream};
use crate::wire::UpstreamHead;
use bytes::Bytes;
use leaky_config::resilience::Retry;
use leaky_config::ModelSource;
use leaky_filters::{RejectKind, Rejection};
use leaky_resilience::{backoff_ms, provider_exhausted, retry_after_ms, BulkheadPermit};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

mod holds;
mod seams;

pub use crate::transport::{Attempt, Failed, Transport};
pub use holds::{tenant_slot, UpstreamHolds};
pub use seams::{BuildHead, Clock, SystemClock, Tenant};

use holds::{full_label, Admitted};

/// Default cool-down after a 429 that names no `retry-after`.
const DEFAULT_COOLDOWN_MS: u64 = 1_000;

/// What one exchange needs, all of it values: the route and upstream from the request's snapshot, the
/// request after admission, the tenant and the deadline.
pub struct Plan<'a> {
    /// Retry policy, retry budget, fallbacks and the model's place (body or path) come from the route.
    pub route: &'a CompiledRoute,
    /// The pool the requested model routes to.
    pub primary: Arc<Upstream>,
    /// The requested model, whose fallbacks are tried when its pool is exhausted.
    pub model: Option<&'a str>,
    /// The path after the route prefix.
    pub rest: &'a str,
    pub body: Bytes,
    /// Tokens charged to the answering deployment's own `tpm` budget (the request's estimate).
    pub tokens: u64,
    pub tenant: Tenant<'a>,
    /// End of the exchange: the route's `timeouts.total_ms` from its start.
    pub deadline: Instant,
    /// The request's trace, when traced: each attempt gets a span and sends its `traceparent`.
    pub trace: Option<crate::trace::Parent>,
}

/// How the attempts went, answered or not (logged with the request).
#[derive(Debug, Default)]
pub struct Attempts {
    /// Attempts made, retries and fallbacks included.
    pub count: u32,
    /// Failed attempts as `provider/deployment:outcome`, space-separated (`None` when none failed).
    pub failed: Option<String>,
    /// Seconds of the last attempt, from sending to its response header or failure.
    pub upstream_seconds: Option<f64>,
    /// Each attempt's span (traced requests only; empty, unallocated, otherwise).
    pub spans: Vec<crate::trace::AttemptSpan>,
}

/// A deployment answered: its response (header read), what the request holds on it, and the trail.
pub struct Exchanged<R> {
    pub response: R,
    pub holds: UpstreamHolds,
    /// The fallback model that answered, when not the requested one.
    pub served_model: Option<String>,
    pub attempts: Attempts,
}

/// No deployment answered: the error for the client, and the trail.
pub struct Failure {
    pub rejection: Rejection,
    pub attempts: Attempts,
}

/// What every step of one exchange reads.
struct Env<'p, 'a, T, C, B> {
    transport: &'p T,
    clock: &'p C,
    plan: &'p Plan<'a>,
    head: &'p B,
}

/// The running state across stages and attempts.
#[derive(Default)]
struct Run {
    attempts: Attempts,
    /// What the caller gets should nothing answer.
    last: Option<Rejection>,
    /// How the previous attempt failed: the `reason` of the retry that follows it.
    failed: Option<Outcome>,
}

/// One stage: the requested model's pool, or a fallback model's with the request rewritten for it.
struct Stage<'a> {
    up: Arc<Upstream>,
    body: Bytes,
    rest: Cow<'a, str>,
    /// The fallback model (`None`: the requested one).
    alt: Option<&'a str>,
    /// A fallback stage follows.
    more: bool,
}

// Not boxed: the answer is moved once per request, and a box would allocate on the hot path.
enum StageEnd<R> {
    Answered(Exchanged<R>),
    /// No attempt left in this stage: the next one (if any) goes on.
    Exhausted,
    /// The exchange is over: `Run::last` is the answer.
    Stop,
}

/// Runs the exchange; see the module docs. `head` builds each attempt's request head.
pub async fn exchange<T, C, B>(
    transport: &T,
    clock: &C,
    plan: Plan<'_>,
    head: B,
) -> Result<Exchanged<T::Response>, Failure>
where
    T: Transport,
    C: Clock,
    B: BuildHead,
{
    let route = plan.route;
    route.budget.on_request(clock.now_ms());
    let fallbacks = plan.model.map_or(&[][..], |m| route.fallbacks_for(m));
    let env = Env {
        transport,
        clock,
        plan: &plan,
        head: &head,
    };
    let mut run = Run::default();
    for i in 0..=fallbacks.len() {
        let Some(stage) = stage(&plan, fallbacks, i) else {
            continue;
        };
        match run_stage(&env, &stage, &mut run).await {
            StageEnd::Answered(x) => return Ok(x),
            StageEnd::Exhausted => {}
            StageEnd::Stop => break,
        }
    }
    let rejection = run.last.unwrap_or_else(|| {
        let provider = &plan.primary.provider;
        Rejection::new(
            RejectKind::Unavailable,
            format!(
                "No deployment of the upstream provider `{provider}` is available right now (circuits open, cooling down or out of budget). Retry shortly."
            ),
        )
    });
    Err(Failure {
        rejection,
        attempts: run.attempts,
    })
}

/// Stage `i`: 0 is the requested model; `i > 0` fallback `i - 1`, skipped (`None`) when the route
/// serves no such model or the request cannot be rewritten for it.
fn stage<'a>(plan: &Plan<'a>, fallbacks: &'a [String], i: usize) -> Option<Stage<'a>> {
    let more = i < fallbacks.len();
    let Some(alt) = i.checked_sub(1).and_then(|j| fallbacks.get(j)) else {
        return Some(Stage {
            up: plan.primary.clone(),
            body: plan.body.clone(),
            rest: Cow::Borrowed(plan.rest),
            alt: None,
            more,
        });
    };
    let up = plan.route.pick(Some(alt))?.clone();
    let (body, rest) = with_model(plan.route.model_source, &plan.body, plan.rest, alt)?;
    Some(Stage {
        up,
        body,
        rest,
        alt: Some(alt),
        more,
    })
}

/// The attempts of one stage, up to the route's `max_attempts`.
async fn run_stage<T: Transport, C: Clock, B: BuildHead>(
    env: &Env<'_, '_, T, C, B>,
    s: &Stage<'_>,
    run: &mut Run,
) -> StageEnd<T::Response> {
    let (plan, clock) = (env.plan, env.clock);
    let mut tried = Tried::default();
    let mut in_stage = 0u32;
    while in_stage < plan.route.retry.max_attempts {
        let Some(choice) = tried.choose(&s.up, clock.now_ms(), plan.tokens) else {
            break;
        };
        let Some(d) = s.up.pool.deployments.get(choice.index) else {
            break;
        };
        let permit = match slot(env, s, d, choice.has_room, run).await {
            Slot::Got(p) => p,
            Slot::Skip => continue,
            Slot::Stop => return StageEnd::Stop,
        };
        let Some(admitted) = admit(s, d, clock.now_ms(), run) else {
            continue; // the circuit opened since the choice
        };
        in_stage += 1;
        tried.attempted = true;
        let mut head = match (env.head)(&s.up, d, &s.rest, s.body.len()) {
            Ok(h) => h,
            Err(r) => {
                run.last = Some(r);
                return StageEnd::Stop;
            }
        };
        let span = plan.trace.map(|t| t.attempt(&mut head));
        d.state.quota.charge(clock.now_ms(), plan.tokens);
        let (outcome, result) = attempt(env, s, d, &head, run).await;
        if let Some(span) = span {
            record_span(run, span, d, outcome);
        }
        admitted.record(clock.now_ms(), outcome, || plan.tenant.hash());
        let again =
            retryable(&plan.route.retry, outcome) && may_retry(env, &s.up, in_stage, s.more);
        let rejection = match result {
            Ok(response) if !again => {
                return StageEnd::Answered(answered(env, s, choice, response, permit, run))
            }
            // Dropped for a retry; what the caller gets should the retry find nothing.
            Ok(_) => Rejection::new(
                RejectKind::BadGateway,
                format!("The upstream provider `{}` failed.", s.up.provider),
            ),
            Err(r) => r,
        };
        failed(env, d, outcome, rejection, permit, run);
        if !again {
            return StageEnd::Stop;
        }
        backoff(env, run.attempts.count).await;
    }
    StageEnd::Exhausted
}

/// A traced attempt's span, finished with its outcome.
fn record_span(run: &mut Run, span: crate::trace::AttemptStart, d: &Deployment, outcome: Outcome) {
    run.attempts.spans.push(span.finish(&d.label, outcome));
}

/// Which deployments a stage tried: untried ones first; once every eligible one was tried and an
/// attempt was made since, all are eligible again (a one-deployment pool retries itself).
#[derive(Default)]
struct Tried {
    mask: u64,
    attempted: bool,
}

impl Tried {
    fn choose(&mut self, up: &Upstream, now: u64, tokens: u64) -> Option<Choice> {
        let choice = match up.pool.choose(now, tokens, self.mask) {
            Some(c) => c,
            None if self.attempted => {
                self.attempted = false;
                self.mask = 0;
                up.pool.choose(now, tokens, self.mask)?
            }
            None => return None,
        };
        // `choose` considers at most 64 deployments: the index fits the mask.
        self.mask |= 1u64.checked_shl(choice.index as u32).unwrap_or(0);
        Some(choice)
    }
}

/// The breaker's admission for an attempt on `d` (`None`: the circuit opened since the choice); an
/// admitted attempt is counted (and, after the first, counted as a retry for the previous failure).
fn admit<'d>(s: &Stage<'_>, d: &'d Deployment, now_ms: u64, run: &mut Run) -> Option<Admitted<'d>> {
    let probe = d.state.admit(now_ms)?;
    if run.attempts.count > 0 {
        crate::metrics::count_retry(&s.up.provider, run.failed.map_or("5xx", retry_reason));
    }
    run.attempts.count += 1;
    Some(Admitted::new(&d.state, probe))
}

enum Slot {
    Got(BulkheadPermit),
    /// The deployment's queue is full or timed out: try another.
    Skip,
    /// The deadline passed while queued.
    Stop,
}

/// A slot on the deployment's bulkhead: at once when the choice saw room, else queued for at most the
/// bulkhead's queue timeout and the time left.
async fn slot<T, C, B>(
    env: &Env<'_, '_, T, C, B>,
    s: &Stage<'_>,
    d: &Deployment,
    has_room: bool,
    run: &mut Run,
) -> Slot {
    if let Some(p) = has_room.then(|| d.state.bulkhead.try_acquire()).flatten() {
        return Slot::Got(p);
    }
    bump(|m| &m.bulkhead_queued, &["deployment"]);
    let wait = env.plan.deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(wait, d.state.bulkhead.acquire()).await {
        Ok(Ok(p)) => Slot::Got(p),
        Ok(Err(full)) => {
            bump(|m| &m.bulkhead_rejected, &["deployment", full_label(full)]);
            run.last = Some(Rejection::new(
                RejectKind::Unavailable,
                format!(
                    "The upstream provider `{}` is at its concurrency limit. Retry shortly.",
                    s.up.provider
                ),
            ));
            Slot::Skip
        }
        Err(_) => Slot::Stop,
    }
}

/// One attempt through the transport, its response header bounded by `first_byte` and the time left.
/// A `429` may cool the deployment down.
async fn attempt<T, C, B>(
    env: &Env<'_, '_, T, C, B>,
    s: &Stage<'_>,
    d: &Deployment,
    head: &UpstreamHead,
    run: &mut Run,
) -> (Outcome, Result<T::Response, Rejection>)
where
    T: Transport,
    C: Clock,
{
    let sent = Instant::now();
    let first_byte =
        s.up.first_byte
            .min(env.plan.deadline.saturating_duration_since(sent));
    let attempt = Attempt {
        deployment: d,
        connect: s.up.connect,
        first_byte,
        head,
        body: &s.body,
        returned: s.up.returned(env.plan.route),
    };
    let result = env.transport.send(attempt).await;
    let seconds = sent.elapsed().as_secs_f64();
    run.attempts.upstream_seconds = Some(seconds);
    s.up.metrics.observe_upstream(seconds);
    match result {
        Ok(response) => {
            let h = T::head(&response);
            let status = h.map_or(502, |h| h.status.as_u16());
            if let Some(h) = h.filter(|_| status == 429) {
                let clock = env.clock;
                let wait =
                    retry_after_ms(&h.headers, clock.unix_ms()).unwrap_or(DEFAULT_COOLDOWN_MS);
                let exhausted = provider_exhausted(&h.headers);
                let tenant = env.plan.tenant;
                d.state
                    .on_429(clock.now_ms(), wait, exhausted, || tenant.hash());
            }
            (Outcome::Status(status), Ok(response))
        }
        Err(Failed { outcome, rejection }) => (outcome, Err(rejection)),
    }
}

/// The answer: the response with what the request now holds on the deployment.
fn answered<T, C, B, R>(
    env: &Env<'_, '_, T, C, B>,
    s: &Stage<'_>,
    choice: Choice,
    response: R,
    permit: BulkheadPermit,
    run: &mut Run,
) -> Exchanged<R> {
    let route = env.plan.route;
    if let Some(alt) = s.alt {
        let from = env.plan.model.unwrap_or("-");
        bump(|m| &m.fallbacks, &[&route.name, from, alt]);
    }
    Exchanged {
        response,
        holds: UpstreamHolds::new(s.up.clone(), choice.index, permit, env.plan.tokens),
        served_model: s.alt.map(str::to_string),
        attempts: std::mem::take(&mut run.attempts),
    }
}

/// A failed (or dropped) attempt: its charge refunded, its slot freed, the trail extended.
fn failed<T, C: Clock, B>(
    env: &Env<'_, '_, T, C, B>,
    d: &Deployment,
    outcome: Outcome,
    rejection: Rejection,
    permit: BulkheadPermit,
    run: &mut Run,
) {
    run.last = Some(rejection);
    d.state.quota.settle(env.clock.now_ms(), env.plan.tokens, 0);
    let t = run.attempts.failed.get_or_insert_with(String::new);
    if !t.is_empty() {
        t.push(' ');
    }
    let label = &d.label;
    let _ = match outcome {
        Outcome::Status(s) => write!(t, "{label}:{s}"),
        o => write!(t, "{label}:{}", o.label()),
    };
    run.failed = Some(outcome);
    drop(permit);
}

/// The pause before retry `attempt` (1 = the first retry): full jitter, within the time left.
async fn backoff<T, C: Clock, B>(env: &Env<'_, '_, T, C, B>, attempt: u32) {
    let retry = &env.plan.route.retry;
    let ms = backoff_ms(
        attempt,
        retry.backoff_base_ms,
        retry.backoff_max_ms,
        env.clock.jitter(),
    );
    let left = env.plan.deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(Duration::from_millis(ms).min(left)).await;
}

/// Whether the route's retry policy retries this outcome.
fn retryable(retry: &Retry, outcome: Outcome) -> bool {
    match outcome {
        Outcome::Connect => retry.on_connect,
        Outcome::Timeout => retry.on_timeout,
        Outcome::Status(s) => retry.retries_status(s),
    }
}

/// Whether a failed attempt may be followed by another: attempts left in this stage with a deployment
/// still eligible (tried ones included: a retry may go back to one), or a fallback stage; time left;
/// and the route's retry budget, which a `true` consumes.
fn may_retry<T, C: Clock, B>(
    env: &Env<'_, '_, T, C, B>,
    up: &Upstream,
    in_stage: u32,
    next_stage: bool,
) -> bool {
    let (route, now) = (env.plan.route, env.clock.now_ms());
    let more_here =
        in_stage < route.retry.max_attempts && up.pool.choose(now, env.plan.tokens, 0).is_some();
    if !(more_here || next_stage) || Instant::now() >= env.plan.deadline {
        return false;
    }
    if route.budget.try_retry(now) {
        return true;
    }
    bump(|m| &m.budget_exhausted, &[&route.name]);
    false
}

/// A failed attempt's outcome as the `reason` of `leaky_upstream_retries_total`.
fn retry_reason(o: Outcome) -> &'static str {
    match o {
        Outcome::Connect => "connect",
        Outcome::Timeout => "timeout",
        Outcome::Status(429) => "429",
        Outcome::Status(s) if s >= 500 => "5xx",
        Outcome::Status(_) => "4xx",
    }
}

/// The request for fallback model `alt`: the JSON `model` replaced (body routes) or the
/// `/models/{model}` path segment (path routes).
fn with_model<'a>(
    source: ModelSource,
    body: &Bytes,
    rest: &'a str,
    alt: &str,
) -> Option<(Bytes, Cow<'a, str>)> {
    match source {
        ModelSource::Body => {
            let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
            *v.as_object_mut()?.get_mut("model")? = serde_json::Value::String(alt.to_string());
            let b = serde_json::to_vec(&v).ok()?;
            Some((Bytes::from(b), Cow::Borrowed(rest)))
        }
        ModelSource::Path => {
            let model = request::model_from_path(rest)?;
            let from = format!("/models/{model}");
            let to = format!("/models/{alt}");
            Some((body.clone(), Cow::Owned(rest.replacen(&from, &to, 1))))
        }
        ModelSource::None => None,
    }
}

#[cfg(test)]
mod tests;
