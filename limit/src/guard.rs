//! Outage guard for a shared limiter store: every call is bounded by a timeout, a circuit breaker
//! stops calling a store that keeps failing, and each policy picks what happens meanwhile
//! (`OnStoreError`): admit unchecked, refuse, or limit in-process with this proxy's share.
//!
//! Breaker: `Closed` → `Open` after `failures_to_open` consecutive failures (errors or timeouts);
//! while open no call reaches the primary; after `open_for` one probe goes through (`HalfOpen`);
//! its success closes the breaker, its failure reopens it for twice as long (capped at 10 s).
//!
//! Settlement during an outage: adjusts try the primary (bounded by the timeout); when that fails,
//! or the breaker is open, they go to the local store (an `Adjust` does not carry its policy's
//! mode; buckets of `FailOpen`/`FailClosed` policies are never taken locally, so settling them
//! there is harmless and they are evicted once idle). Prepaid balances are the exception: they live only
//! in the primary, so their settlements are logged as not applied (the reconciler corrects them). Buckets are not reconciled after recovery: the primary's state resumes where it was
//! (refunds of requests admitted locally may return a few units to the primary; bounded by capacity).

use super::algo::{Admit, Algorithm, Nanos, Status};
use super::memory::MemoryStore;
use super::store::{Adjust, Charge, OnStoreError, Store, StoreError, Taken};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Longest open period after repeated trips.
pub const MAX_OPEN_FOR: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardOptions {
    /// Bound on every primary call.
    pub timeout: Duration,
    /// Consecutive failures that open the breaker.
    pub failures_to_open: u32,
    /// First open period; doubles on each failed probe, capped at [`MAX_OPEN_FOR`].
    pub open_for: Duration,
    /// Share of each limit this proxy enforces locally during an outage (per mille; 1000 = all).
    pub local_share_permille: u32,
    /// Which timer bounds each call.
    pub timer: GuardTimer,
}

/// The timer behind each call's timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuardTimer {
    /// tokio's (`tokio::time::timeout`): follows a paused test clock.
    #[default]
    Tokio,
    /// Pingora's timer wheel (`pingora_timeout`, 10 ms ticks on its own thread): the proxy's. A
    /// tokio timer registered per call wakes the worker's own time driver (an eventfd write and an
    /// `epoll_wait`) whenever its deadline is earlier than the one the worker parked with, which
    /// on a request path is every call.
    Wheel,
}

impl Default for GuardOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(20),
            failures_to_open: 3,
            open_for: Duration::from_millis(500),
            local_share_permille: 1000,
            timer: GuardTimer::Tokio,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// May a call go to the primary?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Yes (breaker closed).
    Call,
    /// Yes, as the single half-open probe; its outcome decides the breaker.
    Probe,
    /// No: use the fallback.
    Reject,
}

/// A state change worth logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Closed → open: the store is considered down.
    Tripped,
    /// Half-open probe failed: open again, for `open_for`.
    Reopened { open_for: Duration },
    /// Back to closed.
    Recovered,
}

/// The breaker state machine, pure: the caller passes the time in.
#[derive(Debug, Clone)]
pub struct Breaker {
    failures_to_open: u32,
    base_open_for: Duration,
    state: BreakerState,
    consecutive_failures: u32,
    open_until: Instant,
    open_for: Duration,
    probe_in_flight: bool,
}

impl Breaker {
    pub fn new(failures_to_open: u32, open_for: Duration) -> Self {
        Self {
            failures_to_open: failures_to_open.max(1),
            base_open_for: open_for,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            open_until: Instant::now(),
            open_for,
            probe_in_flight: false,
        }
    }

    /// The state as of `now` (an expired open period reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            BreakerState::Open if now >= self.open_until => BreakerState::HalfOpen,
            s => s,
        }
    }

    /// The current open period (the next trip's length).
    pub fn open_for(&self) -> Duration {
        self.open_for
    }

    pub fn acquire(&mut self, now: Instant) -> Permit {
        match self.state(now) {
            BreakerState::Closed => Permit::Call,
            BreakerState::Open => Permit::Reject,
            BreakerState::HalfOpen if self.probe_in_flight => Permit::Reject,
            BreakerState::HalfOpen => {
                self.state = BreakerState::HalfOpen;
                self.probe_in_flight = true;
                Permit::Probe
            }
        }
    }

    pub fn on_success(&mut self, permit: Permit) -> Option<Transition> {
        self.consecutive_failures = 0;
        match (permit, self.state) {
            (Permit::Probe, BreakerState::HalfOpen) => {
                self.probe_in_flight = false;
                self.state = BreakerState::Closed;
                self.open_for = self.base_open_for;
                Some(Transition::Recovered)
            }
            _ => None,
        }
    }

    pub fn on_failure(&mut self, permit: Permit, now: Instant) -> Option<Transition> {
        match (permit, self.state) {
            (Permit::Probe, BreakerState::HalfOpen) => {
                self.probe_in_flight = false;
                self.open_for = (self.open_for * 2).min(MAX_OPEN_FOR);
                self.state = BreakerState::Open;
                self.open_until = now + self.open_for;
                Some(Transition::Reopened {
                    open_for: self.open_for,
                })
            }
            (Permit::Call, BreakerState::Closed) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.consecutive_failures >= self.failures_to_open {
                    self.consecutive_failures = 0;
                    self.state = BreakerState::Open;
                    self.open_until = now + self.open_for;
                    Some(Transition::Tripped)
                } else {
                    None
                }
            }
            // A late answer from before a trip: the breaker already decided.
            _ => None,
        }
    }

    /// The probe was cancelled before it had an outcome: let another call probe.
    pub fn on_abandoned(&mut self, permit: Permit) {
        if permit == Permit::Probe && self.state == BreakerState::HalfOpen {
            self.probe_in_flight = false;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardStats {
    /// The breaker is not closed: some calls are answered by the fallback.
    pub degraded: bool,
    pub breaker: BreakerState,
    /// Primary calls that failed or timed out.
    pub errors_total: u64,
    /// Calls answered (wholly or partly) by a fallback instead of the primary.
    pub fallbacks_total: u64,
    /// Closed → open transitions.
    pub trips_total: u64,
}

/// A [`Store`] that guards a shared primary against outages.
pub struct Guarded {
    primary: Arc<dyn Store>,
    local: MemoryStore,
    opts: GuardOptions,
    breaker: Mutex<Breaker>,
    degraded: AtomicBool,
    errors_total: AtomicU64,
    fallbacks_total: AtomicU64,
    trips_total: AtomicU64,
    local_takes: AtomicU64,
}

impl Guarded {
    pub fn new(primary: Arc<dyn Store>, opts: GuardOptions) -> Self {
        Self {
            primary,
            local: MemoryStore::new(),
            breaker: Mutex::new(Breaker::new(opts.failures_to_open, opts.open_for)),
            opts,
            degraded: AtomicBool::new(false),
            errors_total: AtomicU64::new(0),
            fallbacks_total: AtomicU64::new(0),
            trips_total: AtomicU64::new(0),
            local_takes: AtomicU64::new(0),
        }
    }

    pub fn options(&self) -> &GuardOptions {
        &self.opts
    }

    pub fn stats(&self) -> GuardStats {
        let breaker = self.breaker.lock().state(Instant::now());
        GuardStats {
            degraded: self.degraded.load(Ordering::Relaxed),
            breaker,
            errors_total: self.errors_total.load(Ordering::Relaxed),
            fallbacks_total: self.fallbacks_total.load(Ordering::Relaxed),
            trips_total: self.trips_total.load(Ordering::Relaxed),
        }
    }

    /// Runs one primary call under the breaker and the timeout. `None`: the fallback must answer.
    async fn call<T, F>(&self, op: &'static str, fut: F) -> Option<T>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        let permit = self.breaker.lock().acquire(Instant::now());
        if permit == Permit::Reject {
            return None;
        }
        let mut pending = PendingProbe {
            guard: self,
            permit,
            armed: true,
        };
        let bounded = match self.opts.timer {
            GuardTimer::Tokio => tokio::time::timeout(self.opts.timeout, fut).await.ok(),
            GuardTimer::Wheel => pingora_timeout::timeout(self.opts.timeout, fut).await.ok(),
        };
        let outcome = bounded.unwrap_or(Err(StoreError::Timeout));
        pending.armed = false;
        match outcome {
            Ok(v) => {
                let t = self.breaker.lock().on_success(permit);
                self.log(t);
                Some(v)
            }
            Err(e) => {
                self.errors_total.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(store = self.primary.name(), op, error = %e, "limiter store call failed");
                let t = self.breaker.lock().on_failure(permit, Instant::now());
                self.log(t);
                None
            }
        }
    }

    fn log(&self, t: Option<Transition>) {
        let store = self.primary.name();
        match t {
            None => {}
            Some(Transition::Tripped) => {
                self.trips_total.fetch_add(1, Ordering::Relaxed);
                self.degraded.store(true, Ordering::Relaxed);
                tracing::warn!(
                    store,
                    open_for_ms = self.opts.open_for.as_millis() as u64,
                    "rate limiter degraded: store failing, using per-policy fallback"
                );
            }
            Some(Transition::Reopened { open_for }) => {
                self.degraded.store(true, Ordering::Relaxed);
                tracing::warn!(
                    store,
                    open_for_ms = open_for.as_millis() as u64,
                    "rate limiter still degraded: probe failed"
                );
            }
            Some(Transition::Recovered) => {
                self.degraded.store(false, Ordering::Relaxed);
                tracing::info!(store, "rate limiter recovered: store answering again");
            }
        }
    }

    async fn fallback_take(&self, now: Nanos, charges: &[Charge]) -> Result<Taken, StoreError> {
        self.fallbacks_total.fetch_add(1, Ordering::Relaxed);
        if charges
            .iter()
            .any(|c| c.on_error == OnStoreError::FailClosed)
        {
            return Err(StoreError::Unavailable(format!(
                "{} limiter store unavailable and the policy fails closed",
                self.primary.name()
            )));
        }
        let mut local_idx = Vec::new();
        let mut local = Vec::new();
        for (i, c) in charges.iter().enumerate() {
            if c.on_error == OnStoreError::Local {
                local_idx.push(i);
                local.push(self.localize(c));
            }
        }
        let mut local_admits = Vec::new();
        if !local.is_empty() {
            self.maybe_evict(now);
            match self.local.take(now, &local).await? {
                Taken::Admitted(admits) => local_admits = admits,
                Taken::Denied { index, deny } => {
                    let index = local_idx.get(index).copied().unwrap_or(index);
                    return Ok(Taken::Denied { index, deny });
                }
            }
        }
        let mut local_admits = local_admits.into_iter();
        let admits = charges
            .iter()
            .map(|c| match c.on_error {
                OnStoreError::Local => local_admits
                    .next()
                    .unwrap_or_else(|| unchecked_admit(&c.algo)),
                _ => unchecked_admit(&c.algo),
            })
            .collect();
        Ok(Taken::Admitted(admits))
    }

    async fn fallback_adjust(&self, now: Nanos, adjusts: &[Adjust]) -> Result<(), StoreError> {
        self.fallbacks_total.fetch_add(1, Ordering::Relaxed);
        // A prepaid balance lives only in the primary: its settlement cannot be applied anywhere
        // else. Say so loudly (the reconciler corrects `debited` from the ledger).
        let balance = |a: &&Adjust| matches!(*a.algo, Algorithm::Balance { .. });
        let lost: i64 = adjusts.iter().filter(balance).map(|a| a.delta).sum();
        if adjusts.iter().any(|a| balance(&a)) {
            tracing::warn!(
                tokens = lost,
                "prepaid balance settlement not applied: the limiter store is unavailable"
            );
        }
        // Adjusts carry no policy mode: settle every bucket the local store knows of through the
        // same scaling; buckets never taken locally are fresh and a refund cannot overfill them.
        let local: Vec<Adjust> = adjusts
            .iter()
            .filter(|a| !balance(a))
            .map(|a| Adjust {
                key: a.key.clone(),
                algo: scale(&a.algo, self.opts.local_share_permille),
                delta: a.delta,
            })
            .collect();
        if local.is_empty() {
            return Ok(());
        }
        self.local.adjust(now, &local).await
    }

    fn localize(&self, c: &Charge) -> Charge {
        Charge {
            key: c.key.clone(),
            algo: scale(&c.algo, self.opts.local_share_permille),
            cost: c.cost,
            reserve: c.reserve,
            on_error: c.on_error,
        }
    }

    fn maybe_evict(&self, now: Nanos) {
        if self.local_takes.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            self.local.evict_idle(now);
        }
    }
}

/// Reports an abandoned half-open probe if the call future is dropped mid-flight.
struct PendingProbe<'a> {
    guard: &'a Guarded,
    permit: Permit,
    armed: bool,
}

impl Drop for PendingProbe<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.guard.breaker.lock().on_abandoned(self.permit);
        }
    }
}

#[async_trait]
impl Store for Guarded {
    fn name(&self) -> &'static str {
        self.primary.name()
    }

    async fn take(&self, now: Nanos, charges: &[Charge]) -> Result<Taken, StoreError> {
        match self.call("take", self.primary.take(now, charges)).await {
            Some(taken) => Ok(taken),
            None => self.fallback_take(now, charges).await,
        }
    }

    async fn adjust(&self, now: Nanos, adjusts: &[Adjust]) -> Result<(), StoreError> {
        match self.call("adjust", self.primary.adjust(now, adjusts)).await {
            Some(()) => Ok(()),
            None => self.fallback_adjust(now, adjusts).await,
        }
    }
}

/// The limit an algorithm advertises in its status.
pub fn limit_of(algo: &Algorithm) -> u64 {
    match algo {
        Algorithm::Leaky { burst, .. } => *burst,
        Algorithm::Token { capacity, .. } => *capacity,
        Algorithm::Window { limit, .. } => *limit,
        Algorithm::Concurrency { limit } => *limit,
        Algorithm::Balance { credited } => *credited,
    }
}

fn unchecked_admit(algo: &Algorithm) -> Admit {
    let limit = limit_of(algo);
    Admit {
        delay_ns: 0,
        soft_exceeded: false,
        status: Status {
            limit,
            remaining: limit,
            reset_ns: 0,
        },
    }
}

fn share(v: u64, permille: u32) -> u64 {
    let scaled = (u128::from(v) * u128::from(permille)) / 1000;
    u64::try_from(scaled).unwrap_or(u64::MAX).max(1)
}

/// The algorithm with its rate and capacity scaled to `permille` of the policy's (at least 1).
pub fn scale(algo: &Arc<Algorithm>, permille: u32) -> Arc<Algorithm> {
    if permille == 1000 {
        return algo.clone();
    }
    let scaled = match algo.as_ref() {
        Algorithm::Leaky {
            rate,
            period_ns,
            burst,
            shape_max_wait_ns,
        } => Algorithm::Leaky {
            rate: share(*rate, permille),
            period_ns: *period_ns,
            burst: share(*burst, permille),
            shape_max_wait_ns: *shape_max_wait_ns,
        },
        Algorithm::Token {
            capacity,
            rate,
            period_ns,
        } => Algorithm::Token {
            capacity: share(*capacity, permille),
            rate: share(*rate, permille),
            period_ns: *period_ns,
        },
        Algorithm::Window {
            limit,
            window,
            tz,
            soft,
        } => Algorithm::Window {
            limit: share(*limit, permille),
            window: *window,
            tz: *tz,
            soft: *soft,
        },
        Algorithm::Concurrency { limit } => Algorithm::Concurrency {
            limit: share(*limit, permille),
        },
        // Never taken locally (a balance policy is `fail_closed` or `fail_open`).
        Algorithm::Balance { .. } => return algo.clone(),
    };
    Arc::new(scaled)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
