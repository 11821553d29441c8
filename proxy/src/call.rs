//! The upstream call with its resilience: tenant bulkhead, deployment choice, deployment bulkhead,
//! breaker admission, attempts with first-byte timeouts, retries within the route's budget with
//! backoff, `retry-after` cool-downs, and fallback models when a pool is exhausted.
//!
//! ```text
//! tenant slot (bulkhead, bounded queue) ─ 429 when full
//! for each stage (the model, then its fallbacks):
//!   choose deployment (healthy, not cooling, circuit admits, budget headroom; least in flight by weight)
//!   deployment slot (bulkhead, bounded queue) ─ breaker admission (probe when half-open)
//!   attempt: connect ─ send ─ response header within first_byte
//!   failure (connect, timeout, retryable status) and another attempt possible and the budget allows:
//!     drop it, back off (full jitter), next deployment (untried first) or next stage
//!   otherwise: this response (or error) is the answer
//! ```
//!
//! A response is only dropped for a retry before any of it reached the client: once the header is
//! relayed, the request is answered by this attempt.
//!
//! Failures and `429`s are attributed to the request's tenant ([`tenant_hash`]) unless they are
//! provider-wide by nature (a connect failure, a `429` whose rate-limit headers say the account is
//! out), so one tenant cannot open a circuit or cool a deployment down for everyone (see `balancer`).

use crate::balancer::{now_ms, DeploymentState, Outcome};
use crate::ctx::{Ctx, Fail};
use crate::ledger::{QuotaCharge, UpstreamHolds};
use crate::metrics::bump;
use crate::request;
use crate::snapshot::{CompiledRoute, Upstream};
use crate::upstream::{self, Failed};
use bytes::Bytes;
use leaky_config::resilience::Retry;
use leaky_config::ModelSource;
use leaky_filters::resilience::{provider_exhausted, retry_after_ms, BulkheadFull, BulkheadPermit};
use leaky_filters::{RejectKind, Rejection, RequestCtx};
use pingora::connectors::TransportConnector;
use pingora::proxy::Session;
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Default cool-down after a 429 that names no `retry-after`.
const DEFAULT_COOLDOWN_MS: u64 = 1_000;

/// The deployment that answered, and what the request holds on it until it ends.
pub struct Answer {
    pub upstream: Arc<Upstream>,
    pub response: upstream::Response,
    pub holds: UpstreamHolds,
}

/// A breaker admission that must end in an outcome; dropped without one (the request was cancelled),
/// it frees its probe slot.
struct Admitted<'a> {
    state: &'a DeploymentState,
    probe: bool,
    done: bool,
}

impl Admitted<'_> {
    fn record(mut self, outcome: Outcome, tenant: impl FnOnce() -> u64) {
        self.done = true;
        self.state.record(now_ms(), self.probe, outcome, tenant);
    }
}

/// The request's tenant as the breaker and the `429` cool-down count them: a per-process hash of the
/// principal's org, else its user (as the tenant bulkhead), else, unauthenticated, the client's IP.
/// Computed only when a failure needs attributing.
pub(crate) fn tenant_hash(ctx: &Ctx, session: &Session) -> u64 {
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let keys = KEYS.get_or_init(Default::default);
    match &ctx.req.principal {
        Some(p) => keys.hash_one(p.org.as_deref().unwrap_or(&p.user)),
        None => keys.hash_one(
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
        ),
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.state.cancel(self.probe);
        }
    }
}

/// Takes the tenant's slot on this route (held by the request's ledger until it ends).
pub(crate) async fn tenant_slot(
    route: &CompiledRoute,
    req: &mut RequestCtx,
) -> Result<Option<BulkheadPermit>, Fail> {
    let Some(tenants) = &route.tenants else {
        return Ok(None);
    };
    let tenant: Arc<str> = match &req.principal {
        Some(p) => p.org.clone().unwrap_or_else(|| p.user.clone()),
        None => Arc::from("anonymous"),
    };
    let bulkhead = tenants.get(&tenant);
    let permit = match bulkhead.try_acquire() {
        Some(p) => p,
        None => {
            bump(|m| &m.bulkhead_queued, &["tenant"]);
            bulkhead.acquire().await.map_err(|full| {
                    bump(|m| &m.bulkhead_rejected, &["tenant", full_label(full)]);
                    req.response_headers.push((
                        http::header::RETRY_AFTER,
                        http::HeaderValue::from_static("1"),
                    ));
                    Fail::Reject(Rejection::new(
                        RejectKind::RateLimited,
                        format!(
                            "Too many concurrent requests for `{tenant}` on this route (at most {} at once). Retry shortly.",
                            tenants.max_concurrent()
                        ),
                    ))
                })?
        }
    };
    Ok(Some(permit))
}

/// Calls the upstream for this request; see the module docs.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn call(
    transport: &TransportConnector,
    session: &Session,
    ctx: &mut Ctx,
    route: &CompiledRoute,
    primary: Arc<Upstream>,
    rest: &str,
    query: Option<&str>,
    body: Bytes,
) -> Result<Answer, Fail> {
    let deadline = Instant::now() + route.total_timeout;
    ctx.exchange.deadline = Some(deadline);
    route.budget.on_request(now_ms());
    let tokens = ctx.req.cost.map_or(0, |c| {
        c.prompt.saturating_add(c.max_completion.unwrap_or(0))
    });
    let fallbacks: &[String] = match &ctx.req.model {
        Some(m) => route.fallbacks_for(m),
        None => &[],
    };
    let mut last: Option<Rejection> = None;
    // How the previous attempt failed: the `reason` of the retry that follows it.
    let mut failed: Option<Outcome> = None;
    let mut attempts = 0u32;
    'stages: for stage in 0..=fallbacks.len() {
        let (up, body, rest) = if stage == 0 {
            (
                primary.clone(),
                body.clone(),
                std::borrow::Cow::Borrowed(rest),
            )
        } else {
            let alt = &fallbacks[stage - 1];
            let Some(up) = route.pick(Some(alt)) else {
                continue;
            };
            let Some((body, rest)) = with_model(route.model_source, &body, rest, alt) else {
                continue;
            };
            (up.clone(), body, rest)
        };
        let mut tried = 0u64;
        let mut in_stage = 0u32;
        // An attempt was made since every deployment was last marked tried: retries may go
        // back to a deployment already tried (a one-deployment pool retries itself).
        let mut attempted = false;
        while in_stage < route.retry.max_attempts {
            let now = now_ms();
            let choice = match up.pool.choose(now, tokens, tried) {
                Some(c) => c,
                None if attempted => {
                    attempted = false;
                    tried = 0;
                    match up.pool.choose(now, tokens, tried) {
                        Some(c) => c,
                        None => break,
                    }
                }
                None => break,
            };
            tried |= 1 << choice.index;
            let d = &up.pool.deployments[choice.index];
            let permit = match choice
                .has_room
                .then(|| d.state.bulkhead.try_acquire())
                .flatten()
            {
                Some(p) => p,
                None => {
                    bump(|m| &m.bulkhead_queued, &["deployment"]);
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(wait, d.state.bulkhead.acquire()).await {
                        Ok(Ok(p)) => p,
                        Ok(Err(full)) => {
                            bump(|m| &m.bulkhead_rejected, &["deployment", full_label(full)]);
                            last = Some(Rejection::new(
                                    RejectKind::Unavailable,
                                    format!(
                                        "The upstream provider `{}` is at its concurrency limit. Retry shortly.",
                                        up.provider
                                    ),
                                ));
                            continue;
                        }
                        Err(_) => break 'stages,
                    }
                }
            };
            let Some(probe) = d.state.admit(now_ms()) else {
                continue; // the circuit opened since the choice
            };
            let admitted = Admitted {
                state: &d.state,
                probe,
                done: false,
            };
            if attempts > 0 {
                crate::metrics::count_retry(&up.provider, failed.map_or("5xx", retry_reason));
            }
            attempts += 1;
            in_stage += 1;
            attempted = true;
            ctx.exchange.attempts = attempts;
            let quota = QuotaCharge::charge(&d.state, tokens);
            let req = request::upstream_head(session, ctx, &up, d, &rest, query, body.len())?;
            let sent = Instant::now();
            let first_byte = up.first_byte.min(deadline.saturating_duration_since(sent));
            let result = upstream::send(transport, d, up.connect, first_byte, &req, &body).await;
            let seconds = sent.elapsed().as_secs_f64();
            ctx.exchange.upstream_seconds = Some(seconds);
            up.metrics.observe_upstream(seconds);
            let (outcome, result) = match result {
                Ok(response) => {
                    let status = response
                        .session
                        .resp_header()
                        .map_or(502, |h| h.status.as_u16());
                    if let Some(h) = response.session.resp_header().filter(|_| status == 429) {
                        let wait =
                            retry_after_ms(&h.headers, unix_ms()).unwrap_or(DEFAULT_COOLDOWN_MS);
                        let exhausted = provider_exhausted(&h.headers);
                        d.state
                            .on_429(now_ms(), wait, exhausted, || tenant_hash(ctx, session));
                    }
                    (Outcome::Status(status), Ok(response))
                }
                Err(Failed { outcome, rejection }) => (outcome, Err(rejection)),
            };
            admitted.record(outcome, || tenant_hash(ctx, session));
            let again = retryable(&route.retry, outcome)
                && may_retry(
                    route,
                    &up,
                    tokens,
                    in_stage,
                    stage < fallbacks.len(),
                    deadline,
                );
            let rejection = match result {
                Ok(response) if !again => {
                    if stage > 0 {
                        let alt = &fallbacks[stage - 1];
                        let from = ctx.req.model.as_deref().unwrap_or("-");
                        bump(|m| &m.fallbacks, &[&route.name, from, alt]);
                        ctx.exchange.served_model = Some(alt.clone());
                    }
                    return Ok(Answer {
                        upstream: up,
                        response,
                        holds: UpstreamHolds {
                            deployment: choice.index,
                            permit: Some(permit),
                            quota: Some(quota),
                        },
                    });
                }
                // Dropped for a retry; what the caller gets should the retry find nothing.
                Ok(_) => Rejection::new(
                    RejectKind::BadGateway,
                    format!("The upstream provider `{}` failed.", up.provider),
                ),
                Err(r) => r,
            };
            last = Some(rejection);
            drop(quota); // refunds the charge
            trail(ctx, &d.label, outcome);
            failed = Some(outcome);
            drop(permit);
            if !again {
                break 'stages;
            }
            let pause = crate::balancer::backoff(attempts, &route.retry)
                .min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
    }
    Err(Fail::Reject(last.unwrap_or_else(|| {
            let provider = &primary.provider;
            Rejection::new(
                RejectKind::Unavailable,
                format!(
                    "No deployment of the upstream provider `{provider}` is available right now (circuits open, cooling down or out of budget). Retry shortly."
                ),
            )
        })))
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
fn may_retry(
    route: &CompiledRoute,
    up: &Upstream,
    tokens: u64,
    in_stage: u32,
    next_stage: bool,
    deadline: Instant,
) -> bool {
    let now = now_ms();
    let more_here = in_stage < route.retry.max_attempts && up.pool.choose(now, tokens, 0).is_some();
    if !(more_here || next_stage) || Instant::now() >= deadline {
        return false;
    }
    if route.budget.try_retry(now) {
        return true;
    }
    bump(|m| &m.budget_exhausted, &[&route.name]);
    false
}

fn full_label(f: BulkheadFull) -> &'static str {
    match f {
        BulkheadFull::QueueFull => "queue_full",
        BulkheadFull::QueueTimeout => "queue_timeout",
    }
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

/// Appends `label:outcome` to the request's attempt trail (logged): only failed attempts write it.
fn trail(ctx: &mut Ctx, label: &str, outcome: Outcome) {
    let t = ctx.exchange.trail.get_or_insert_with(String::new);
    if !t.is_empty() {
        t.push(' ');
    }
    let _ = match outcome {
        Outcome::Status(s) => write!(t, "{label}:{s}"),
        o => write!(t, "{label}:{}", o.label()),
    };
}

/// The request for fallback model `alt`: the JSON `model` replaced (body routes) or the
/// `/models/{model}` path segment (path routes).
fn with_model<'a>(
    source: ModelSource,
    body: &Bytes,
    rest: &'a str,
    alt: &str,
) -> Option<(Bytes, std::borrow::Cow<'a, str>)> {
    match source {
        ModelSource::Body => {
            let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
            *v.as_object_mut()?.get_mut("model")? = serde_json::Value::String(alt.to_string());
            let b = serde_json::to_vec(&v).ok()?;
            Some((Bytes::from(b), std::borrow::Cow::Borrowed(rest)))
        }
        ModelSource::Path => {
            let model = request::model_from_path(rest)?;
            let from = format!("/models/{model}");
            let to = format!("/models/{alt}");
            Some((
                body.clone(),
                std::borrow::Cow::Owned(rest.replacen(&from, &to, 1)),
            ))
        }
        ModelSource::None => None,
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fallback_rewrites_the_body_model_and_keeps_the_rest() {
        let body = Bytes::from_static(
            br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        );
        let (b, rest) =
            with_model(ModelSource::Body, &body, "/chat/completions", "qwen-plus").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["model"], "qwen-plus");
        assert_eq!(v["stream"], true);
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(rest, "/chat/completions");
        assert!(with_model(ModelSource::Body, &Bytes::from_static(b"{}"), "/x", "m").is_none());
    }

    #[test]
    fn fallback_rewrites_the_path_model() {
        let (_, rest) = with_model(
            ModelSource::Path,
            &Bytes::new(),
            "/models/gemini-2.5-pro:streamGenerateContent",
            "gemini-2.5-flash",
        )
        .unwrap();
        assert_eq!(rest, "/models/gemini-2.5-flash:streamGenerateContent");
    }
}
