//! Provider pools: each provider is a list of deployments (endpoint, credential, weight, own RPM/TPM
//! budget), each with a circuit breaker, an active health state, a bulkhead and a `retry-after`
//! cool-down. The algorithms are the pure, clock-injected ones of `leaky_resilience`; this
//! module binds them to peers, metrics and logs, and attributes each failure to its cause: a connect
//! failure or a `429` with the provider's exhaustion headers to the provider, anything else to the
//! request's tenant (so one tenant alone cannot open a circuit or start a cool-down).
//!
//! Deployment state (breaker, health, quota, bulkhead) lives in a [`Registry`] shared by every config
//! version, keyed by the deployment and its settings: a reload that leaves a deployment unchanged keeps
//! its open circuit, its in-flight count and its health; one that changes it starts it fresh. In-flight
//! requests keep the `Arc`s of the version they started on.

use crate::pool::IdlePool;
use http::{HeaderName, HeaderValue};
use leaky_config::resilience::{Breaker as BreakerConfig, HealthCheck};
use leaky_resilience::{
    pick, Admission, Breaker, BreakerSettings, BreakerState, Bulkhead, Candidate, Cause, CoolDown,
    DeploymentQuota, Health, HealthSettings, Transition,
};
use pingora::upstreams::peer::HttpPeer;
use prometheus::{IntCounter, IntGauge};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

// The breaker's tenant set must tell apart as many tenants as the config lets `min_tenants` ask for.
const _: () =
    assert!(leaky_resilience::tenants::SLOTS as u32 == leaky_config::resilience::MAX_MIN_TENANTS);

/// Milliseconds on the process's monotonic clock: the `now_ms` of every resilience decision.
// The process's monotonic clock on purpose, not a runtime's (tokio's may be paused in a test): one
// origin for every thread. Code under test gets its milliseconds from `exchange::Clock`.
#[allow(clippy::disallowed_types)]
pub fn now_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// How an upstream attempt ended, as the breaker and the retry policy see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Connect,
    Timeout,
    Status(u16),
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Connect => "connect",
            Outcome::Timeout => "timeout",
            Outcome::Status(429) => "429",
            Outcome::Status(s) if s >= 500 => "5xx",
            Outcome::Status(_) => "ok",
        }
    }
}

/// The live state of one deployment, shared across config versions.
pub struct DeploymentState {
    pub label: Arc<str>,
    pub breaker: Breaker,
    pub health: Health,
    pub quota: DeploymentQuota,
    pub bulkhead: Arc<Bulkhead>,
    /// The provider's `retry-after` on a provider-wide 429: the deployment is skipped until then.
    cooldown: CoolDown,
    failure: BreakerConfig,
    metrics: StateMetrics,
}

struct StateMetrics {
    /// `leaky_circuit_state{upstream}`: 0 closed, 1 open, 2 half-open.
    state: Option<IntGauge>,
    /// `leaky_upstream_healthy{upstream}`.
    healthy: Option<IntGauge>,
    cooldowns: Option<IntCounter>,
    /// `leaky_upstream_attempts_total{upstream, outcome="ok"}`, the per-request one, resolved here.
    ok: Option<IntCounter>,
}

impl DeploymentState {
    pub(crate) fn new(
        label: &str,
        cfg: &BreakerConfig,
        health: Option<&HealthCheck>,
        d: &leaky_config::resilience::Deployment,
        bulkhead: &leaky_config::resilience::Bulkhead,
    ) -> Self {
        let settings = BreakerSettings {
            consecutive_failures: cfg.consecutive_failures,
            failure_ratio: cfg.failure_ratio,
            min_requests: cfg.min_requests,
            window_ms: cfg.window_ms,
            open_ms: cfg.open_ms,
            max_open_ms: cfg.max_open_ms,
            half_open_probes: cfg.half_open_probes,
            min_tenants: cfg.min_tenants,
            probe_timeout_ms: cfg.probe_timeout_ms,
        };
        let hs = health.map_or_else(HealthSettings::default, |h| HealthSettings {
            interval_ms: h.interval.as_millis() as u64,
            timeout_ms: h.timeout.as_millis() as u64,
            unhealthy_after: h.unhealthy_after,
            healthy_after: h.healthy_after,
        });
        let m = crate::metrics::resilience();
        let metrics = StateMetrics {
            state: m.and_then(|m| m.circuit_state.get_metric_with_label_values(&[label]).ok()),
            healthy: m.and_then(|m| m.healthy.get_metric_with_label_values(&[label]).ok()),
            cooldowns: m.and_then(|m| m.cooldowns.get_metric_with_label_values(&[label]).ok()),
            ok: m.and_then(|m| m.attempts.get_metric_with_label_values(&[label, "ok"]).ok()),
        };
        if let Some(g) = &metrics.state {
            g.set(0);
        }
        if let Some(g) = &metrics.healthy {
            g.set(1);
        }
        DeploymentState {
            label: label.into(),
            breaker: Breaker::new(settings),
            health: Health::new_with(&hs),
            quota: DeploymentQuota::new(d.rpm, d.tpm),
            bulkhead: Arc::new(Bulkhead::new(
                d.max_concurrent,
                bulkhead.max_queue,
                bulkhead.queue_timeout,
            )),
            cooldown: CoolDown::new(cfg.window_ms, cfg.min_tenants, cfg.max_cooldown_ms),
            failure: cfg.clone(),
            metrics,
        }
    }

    /// Whether the deployment may take a request of `tokens` now (bulkhead room aside).
    pub fn eligible(&self, now: u64, tokens: u64) -> bool {
        self.health.is_healthy()
            && self.cooldown.until() <= now
            && self.breaker.available(now)
            && self.quota.has_headroom(now, tokens)
    }

    /// Asks the breaker for a slot: `Some(probe)` when admitted.
    pub fn admit(&self, now: u64) -> Option<bool> {
        let (admission, t) = self.breaker.try_acquire(now);
        self.transition(t);
        match admission {
            Admission::Allowed => Some(false),
            Admission::Probe => Some(true),
            Admission::Rejected { .. } => None,
        }
    }

    /// Whether this outcome counts against the breaker (per the provider's `failure_on`).
    pub fn is_failure(&self, o: Outcome) -> bool {
        match o {
            Outcome::Connect => self.failure.on_connect,
            Outcome::Timeout => self.failure.on_timeout,
            Outcome::Status(429) => self.failure.on_429,
            Outcome::Status(s) => s >= 500 && self.failure.on_5xx,
        }
    }

    /// Feeds an attempt's outcome to the breaker and the attempt counter. `tenant` (the request's
    /// tenant hash) is asked only for a failure a tenant could have provoked; a connect failure is the
    /// provider's.
    pub fn record(&self, now: u64, probe: bool, o: Outcome, tenant: impl FnOnce() -> u64) {
        match (o.label(), &self.metrics.ok) {
            ("ok", Some(c)) => c.inc(),
            ("ok", None) => {}
            (label, _) => crate::metrics::bump(|m| &m.attempts, &[&self.label, label]),
        }
        let t = if self.is_failure(o) {
            let cause = match o {
                Outcome::Connect => Cause::Provider,
                _ => Cause::Tenant(tenant()),
            };
            self.breaker.on_failure(now, probe, cause)
        } else {
            self.breaker.on_success(now, probe)
        };
        self.transition(t);
    }

    /// A failure seen after the response header (a stream that stalled) of `tenant`'s request: counts
    /// against the breaker.
    pub fn record_stream_failure(&self, now: u64, tenant: u64) {
        if self.failure.on_timeout {
            self.transition(self.breaker.on_failure(now, false, Cause::Tenant(tenant)));
        }
    }

    pub fn cancel(&self, probe: bool) {
        self.breaker.on_cancel(probe);
    }

    /// A 429 that asked for `ms` (its `retry-after`): the deployment is skipped for that long, capped
    /// by `max_cooldown_ms`, when the evidence is provider-wide — `exhausted` (the response's own
    /// rate-limit headers say the account is out) or `min_tenants` tenants got one within the window;
    /// `tenant` (the request's tenant hash) is asked only when not `exhausted`.
    pub fn on_429(&self, now: u64, ms: u64, exhausted: bool, tenant: impl FnOnce() -> u64) {
        let cause = if exhausted {
            Cause::Provider
        } else {
            Cause::Tenant(tenant())
        };
        match self.cooldown.on_429(now, ms, cause) {
            Some(applied) => {
                if let Some(c) = &self.metrics.cooldowns {
                    c.inc();
                }
                let reason = if exhausted {
                    "provider_exhausted"
                } else {
                    "tenants"
                };
                tracing::info!(upstream = %self.label, retry_after_ms = ms, cooldown_ms = applied, reason, "upstream asked to back off; skipping it until then");
            }
            None => {
                tracing::debug!(upstream = %self.label, retry_after_ms = ms, "429 not (yet) provider-wide; deployment stays in the pool");
            }
        }
    }

    pub fn cooling_until(&self) -> u64 {
        self.cooldown.until()
    }

    fn transition(&self, t: Option<Transition>) {
        let Some(t) = t else { return };
        if let Some(g) = &self.metrics.state {
            g.set(t.to.gauge());
        }
        if let Some(m) = crate::metrics::resilience() {
            if let Ok(c) = m.transitions.get_metric_with_label_values(&[
                &self.label,
                t.from.as_str(),
                t.to.as_str(),
            ]) {
                c.inc();
            }
        }
        if t.to == BreakerState::Open {
            tracing::warn!(upstream = %self.label, from = t.from.as_str(), to = t.to.as_str(), open_ms = t.open_ms, "circuit opened");
        } else {
            tracing::info!(upstream = %self.label, from = t.from.as_str(), to = t.to.as_str(), "circuit state changed");
        }
    }

    pub(crate) fn on_probe(&self, ok: bool) {
        if let Some(healthy) = self.health.on_probe(ok) {
            if let Some(g) = &self.metrics.healthy {
                g.set(i64::from(healthy));
            }
            if healthy {
                tracing::info!(upstream = %self.label, "health check passing again; back in the pool");
            } else {
                tracing::warn!(upstream = %self.label, "health check failing; out of the pool");
            }
        }
    }
}

/// One deployment of one config version: how to reach it, and its shared state.
pub struct Deployment {
    pub name: Arc<str>,
    /// `provider/name`, the `upstream` label of metrics and logs.
    pub label: Arc<str>,
    pub provider: Arc<str>,
    pub peer: HttpPeer,
    pub host: HeaderValue,
    pub auth: Option<(HeaderName, HeaderValue)>,
    /// The provider account headers (`OpenAI-Organization`, `OpenAI-Project`, `X-DashScope-WorkSpace`).
    pub account: Box<[(HeaderName, HeaderValue)]>,
    pub pool: Arc<IdlePool>,
    pub weight: u32,
    pub state: Arc<DeploymentState>,
}

/// A provider's deployments, and the choice among them.
pub struct ProviderPool {
    pub provider: Arc<str>,
    pub deployments: Vec<Deployment>,
    rotate: AtomicU64,
}

/// A chosen deployment: its index, and whether it has bulkhead room (else the request queues).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub index: usize,
    pub has_room: bool,
}

impl ProviderPool {
    pub fn new(provider: Arc<str>, deployments: Vec<Deployment>) -> Self {
        ProviderPool {
            provider,
            deployments,
            rotate: AtomicU64::new(0),
        }
    }

    /// Weighted least-in-flight among eligible deployments not in `tried` (a bit per index), those
    /// with bulkhead room first. `None` when every deployment is tried, open, unhealthy, cooling down
    /// or out of budget.
    pub fn choose(&self, now: u64, tokens: u64, tried: u64) -> Option<Choice> {
        const MAX: usize = 64;
        let n = self.deployments.len().min(MAX);
        let mut cands = [Candidate {
            weight: 1,
            in_flight: 0,
            eligible: false,
            tried: false,
        }; MAX];
        let mut any_full = false;
        for (i, d) in self.deployments.iter().take(n).enumerate() {
            let s = &d.state;
            let open = tried & (1 << i) == 0 && s.eligible(now, tokens);
            let room = s.bulkhead.has_room();
            any_full |= open && !room;
            cands[i] = Candidate {
                weight: d.weight,
                in_flight: s.bulkhead.in_flight(),
                eligible: open && room,
                tried: false,
            };
        }
        let rotate = self.rotate.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = pick(&cands[..n], rotate) {
            return Some(Choice {
                index: i,
                has_room: true,
            });
        }
        if !any_full {
            return None;
        }
        // Every open deployment is at its concurrency limit: queue at the least loaded.
        for (i, d) in self.deployments.iter().take(n).enumerate() {
            cands[i].eligible = tried & (1 << i) == 0 && d.state.eligible(now, tokens);
        }
        pick(&cands[..n], rotate).map(|i| Choice {
            index: i,
            has_room: false,
        })
    }
}

/// What an active health check needs, per deployment.
pub struct Probe {
    pub peer: HttpPeer,
    pub host: HeaderValue,
    pub auth: Option<(HeaderName, HeaderValue)>,
    pub check: HealthCheck,
}

/// Per-tenant bulkheads of one route, shared by every config version with the same settings.
pub struct TenantBulkheads {
    settings: leaky_config::resilience::Bulkhead,
    /// aHash, keyed per process (tenants can be client addresses): a lookup a request.
    by_tenant: dashmap::DashMap<Arc<str>, Arc<Bulkhead>, ahash::RandomState>,
}

impl TenantBulkheads {
    pub fn new(settings: leaky_config::resilience::Bulkhead) -> Self {
        TenantBulkheads {
            settings,
            by_tenant: dashmap::DashMap::default(),
        }
    }

    pub fn max_concurrent(&self) -> u32 {
        self.settings.max_concurrent
    }

    /// The tenant's bulkhead (created on its first request).
    pub fn get(&self, tenant: &Arc<str>) -> Arc<Bulkhead> {
        if let Some(b) = self.by_tenant.get(tenant) {
            return b.clone();
        }
        self.by_tenant
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(Bulkhead::new(
                    self.settings.max_concurrent,
                    self.settings.max_queue,
                    self.settings.queue_timeout,
                ))
            })
            .clone()
    }
}

/// Tenant bulkheads by route and settings, shared across config versions.
#[derive(Default)]
pub struct TenantRegistry {
    routes: Mutex<HashMap<String, Weak<TenantBulkheads>>>,
}

impl TenantRegistry {
    pub fn get(
        &self,
        route: &str,
        settings: &leaky_config::resilience::Bulkhead,
    ) -> Arc<TenantBulkheads> {
        let key = format!("{route}|{settings:?}");
        let mut map = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(t) = map.get(&key).and_then(Weak::upgrade) {
            return t;
        }
        let t = Arc::new(TenantBulkheads::new(settings.clone()));
        map.insert(key, Arc::downgrade(&t));
        t
    }
}
