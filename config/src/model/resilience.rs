//! Validated upstream resilience settings: a provider's deployments, breaker, health check and
//! bulkhead; a route's timeouts, retry policy and fallbacks. Built by `validate::resilience`.

use crate::model::{ModelPattern, Secret};
use std::time::Duration;

/// A validated deployment.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub name: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub credential: Option<Secret>,
    pub weight: u32,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrent: u32,
}

impl Deployment {
    /// `host:port` as sent in the upstream `Host` header (port omitted when it is the scheme's default).
    pub fn authority(&self) -> String {
        crate::model::authority(self.tls, &self.host, self.port)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Breaker {
    pub consecutive_failures: u32,
    pub failure_ratio: f64,
    pub min_requests: u32,
    pub window_ms: u64,
    pub open_ms: u64,
    pub max_open_ms: u64,
    pub half_open_probes: u32,
    pub probe_timeout_ms: u64,
    /// Distinct tenants whose failures (or `429`s) are provider-wide evidence.
    pub min_tenants: u32,
    /// Cap of a `429` cool-down (0: none).
    pub max_cooldown_ms: u64,
    pub on_connect: bool,
    pub on_timeout: bool,
    pub on_5xx: bool,
    pub on_429: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bulkhead {
    pub max_concurrent: u32,
    pub max_queue: u32,
    pub queue_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    /// `None`: each provider's own.
    pub connect: Option<Duration>,
    pub first_byte: Option<Duration>,
    pub idle: Option<Duration>,
    pub total: Duration,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retry {
    pub max_attempts: u32,
    pub budget_ratio: f64,
    pub budget_min_per_second: u32,
    pub budget_window_ms: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub on_connect: bool,
    pub on_timeout: bool,
    /// Retryable statuses.
    pub statuses: Vec<u16>,
}

impl Retry {
    pub fn retries_status(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }
}

/// Fallback models of a route: `(pattern, alternatives in order)`, first matching pattern wins.
pub type Fallbacks = Vec<(ModelPattern, Vec<String>)>;

/// Largest `min_tenants`: the tenants a deployment's breaker tells apart within a window.
pub const MAX_MIN_TENANTS: u32 = 16;
