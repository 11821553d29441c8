//! Upstream resilience as written: a provider's `deployments`, `breaker`, `health_check` and
//! `bulkhead`; a route's `timeouts`, `retry`, `fallbacks` and `bulkhead`. `validate::resilience` turns
//! them into `model::resilience`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One deployment of a provider: an endpoint and credential with its own budget and weight.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    /// Unique within the provider; appears in metrics and logs as `provider/name`.
    pub name: String,
    /// `http(s)://host[:port]`, no path. `${ENV}` allowed.
    pub base_url: String,
    /// This deployment's credential (default: the provider's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Share of traffic relative to the other deployments (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// The deployment's own requests-per-minute budget: it is skipped when a minute's budget is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// The deployment's own tokens-per-minute budget (reserved tokens of the request count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Concurrent requests to this deployment (default: the provider's `bulkhead.max_concurrent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

fn one() -> u32 {
    1
}

/// What an upstream outcome counts as, for the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum FailureKind {
    /// The connection could not be made.
    #[serde(rename = "connect")]
    Connect,
    /// No response header within the first-byte timeout.
    #[serde(rename = "timeout")]
    Timeout,
    /// A 5xx status.
    #[serde(rename = "5xx")]
    ServerError,
    /// A 429 status.
    #[serde(rename = "429")]
    TooManyRequests,
}

/// Circuit breaker of each deployment of a provider.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    /// Open after this many failures in a row (0: rule off).
    #[serde(default = "d_consecutive")]
    pub consecutive_failures: u32,
    /// Open when the failure share over `window_ms` reaches this (0: rule off)...
    #[serde(default = "d_ratio")]
    pub failure_ratio: f64,
    /// ...once the window holds at least this many requests.
    #[serde(default = "d_min_requests")]
    pub min_requests: u32,
    #[serde(default = "d_window")]
    pub window_ms: u64,
    /// First open period; it doubles on each consecutive trip, up to `max_open_ms`.
    #[serde(default = "d_open")]
    pub open_ms: u64,
    #[serde(default = "d_max_open")]
    pub max_open_ms: u64,
    /// Probe requests let through at once when half-open; that many successes close the circuit.
    #[serde(default = "one")]
    pub half_open_probes: u32,
    /// Longest a half-open probe holds its slot: after this the next request may probe (the first
    /// one is not cut; its outcome still counts while half-open).
    #[serde(default = "d_probe_timeout_ms")]
    pub probe_timeout_ms: u64,
    /// Outcomes that count as failures.
    #[serde(default = "d_failure_on")]
    pub failure_on: Vec<FailureKind>,
    /// One tenant cannot take a deployment out for everyone: a failure rule that is met opens the
    /// circuit, and a `429` without the provider's own exhaustion headers cools the deployment down,
    /// only once at least this many distinct tenants (org, else user, else client address) failed
    /// within `window_ms`. Connect failures and exhaustion headers count regardless (provider-wide).
    /// 1: any failures (one tenant may trip it).
    #[serde(default = "d_min_tenants")]
    pub min_tenants: u32,
    /// Cap of a `429` cool-down, whatever `retry-after` the provider sent (0: no cool-downs).
    #[serde(default = "d_max_cooldown_ms")]
    pub max_cooldown_ms: u64,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        BreakerSpec {
            consecutive_failures: d_consecutive(),
            failure_ratio: d_ratio(),
            min_requests: d_min_requests(),
            window_ms: d_window(),
            open_ms: d_open(),
            max_open_ms: d_max_open(),
            half_open_probes: 1,
            probe_timeout_ms: d_probe_timeout_ms(),
            failure_on: d_failure_on(),
            min_tenants: d_min_tenants(),
            max_cooldown_ms: d_max_cooldown_ms(),
        }
    }
}

fn d_consecutive() -> u32 {
    5
}
fn d_ratio() -> f64 {
    0.5
}
fn d_min_requests() -> u32 {
    20
}
fn d_window() -> u64 {
    10_000
}
fn d_open() -> u64 {
    5_000
}
fn d_max_open() -> u64 {
    60_000
}

fn d_probe_timeout_ms() -> u64 {
    2_000
}
fn d_min_tenants() -> u32 {
    2
}
fn d_max_cooldown_ms() -> u64 {
    30_000
}
fn d_failure_on() -> Vec<FailureKind> {
    vec![
        FailureKind::Connect,
        FailureKind::Timeout,
        FailureKind::ServerError,
    ]
}

/// Active health check: a probe request to every deployment of the provider.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// Path probed with GET (the provider's credential is sent), e.g. `/v1/models` or `/healthz`.
    pub path: String,
    #[serde(default = "d_interval")]
    pub interval_ms: u64,
    #[serde(default = "d_probe_timeout")]
    pub timeout_ms: u64,
    /// Consecutive failed probes that take a deployment out of the pool.
    #[serde(default = "d_unhealthy")]
    pub unhealthy_after: u32,
    /// Consecutive good probes that bring it back.
    #[serde(default = "one")]
    pub healthy_after: u32,
}

fn d_interval() -> u64 {
    5_000
}
fn d_probe_timeout() -> u64 {
    1_000
}
fn d_unhealthy() -> u32 {
    2
}

/// A concurrency limit with a bounded wait queue.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkheadSpec {
    /// Requests in flight at once.
    pub max_concurrent: u32,
    /// Requests allowed to wait for a slot; beyond that the answer is immediate (503 for a deployment,
    /// 429 for a tenant).
    #[serde(default)]
    pub max_queue: u32,
    /// Longest wait in the queue.
    #[serde(default = "d_queue_timeout")]
    pub queue_timeout_ms: u64,
}

fn d_queue_timeout() -> u64 {
    1_000
}

/// Per-route timeouts; unset ones come from the provider.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// TCP (and TLS) connect (default: the provider's `connect_timeout_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<u64>,
    /// From sending the request to the response header (default: the provider's `read_timeout_ms`).
    /// A non-streaming completion's header arrives only when the generation is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_ms: Option<u64>,
    /// Longest gap between two body chunks (default: the provider's `read_timeout_ms`). A stream idle
    /// this long is ended with an error event in the stream's format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// The whole upstream exchange, retries included (default 600000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
}

/// Retries of failed upstream attempts (never after response bytes reached the client).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts per request over the pool, the first included (1: no retries).
    #[serde(default = "d_attempts")]
    pub max_attempts: u32,
    /// Retries may be at most this share of the route's requests over `budget_window_ms`...
    #[serde(default = "d_budget_ratio")]
    pub budget_ratio: f64,
    /// ...plus this many per second, so a quiet route can still retry.
    #[serde(default = "d_budget_min")]
    pub budget_min_per_second: u32,
    #[serde(default = "d_window")]
    pub budget_window_ms: u64,
    /// Exponential backoff with full jitter: attempt n waits up to base·2^(n-1), at most max.
    #[serde(default = "d_backoff_base")]
    pub backoff_base_ms: u64,
    #[serde(default = "d_backoff_max")]
    pub backoff_max_ms: u64,
    /// What is retried: `connect`, `timeout` (no response header in time) and statuses.
    #[serde(default = "d_retry_on")]
    pub retry_on: Vec<String>,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            max_attempts: d_attempts(),
            budget_ratio: d_budget_ratio(),
            budget_min_per_second: d_budget_min(),
            budget_window_ms: d_window(),
            backoff_base_ms: d_backoff_base(),
            backoff_max_ms: d_backoff_max(),
            retry_on: d_retry_on(),
        }
    }
}

fn d_attempts() -> u32 {
    3
}
fn d_budget_ratio() -> f64 {
    0.2
}
fn d_budget_min() -> u32 {
    5
}
fn d_backoff_base() -> u64 {
    25
}
fn d_backoff_max() -> u64 {
    1_000
}
fn d_retry_on() -> Vec<String> {
    ["connect", "timeout", "429", "500", "502", "503", "504"]
        .map(String::from)
        .to_vec()
}

/// A route's bulkheads.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteBulkheadSpec {
    /// Concurrency of each tenant (the principal's org, else its user) on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_tenant: Option<BulkheadSpec>,
}

/// The YAML form of a route's fallbacks: model (or `prefix*`) to the models tried after it.
pub type FallbacksSpec = BTreeMap<String, Vec<String>>;
