//! Per-deployment circuit breaker: an explicit state machine on an injected clock (`now_ms`).
//!
//! ```text
//!            trip rule met                      open period elapsed (on the next try_acquire)
//!  Closed ───────────────────▶ Open ─────────────────────────────────────────▶ HalfOpen
//!    ▲                          ▲                                                │  │
//!    │                          └──── a probe fails (period doubles, capped) ────┘  │
//!    └──────────── `half_open_probes` probe successes in a row (period reset) ──────┘
//! ```
//!
//! **Trip rules** (evaluated on each failure while Closed): `consecutive_failures` failures in a row,
//! or a failure share ≥ `failure_ratio` among the outcomes of the rolling window once it holds
//! ≥ `min_requests` of them. The window is 10 buckets of `window_ms / 10`, so it covers between 90%
//! and 100% of `window_ms`. A rule set to 0 is off.
//!
//! **Tenant isolation**: a rule that is met trips the breaker only on provider-wide evidence: a
//! failure with [`Cause::Provider`] (a connect failure) within the last `window_ms`, or failures from
//! at least `min_tenants` distinct tenants within it (kept in a [`RecentTenants`]). One tenant whose
//! requests make the provider fail or stall cannot open the circuit for everyone. `min_tenants: 1`
//! lets any failures trip.
//!
//! **Half-open**: at most `half_open_probes` requests are in flight as probes at once (0 counts as 1);
//! each success frees its slot, and that many successes in a row close the breaker; any probe failure
//! re-opens it for twice the last period (capped at `max_open_ms`). Closing resets the period to
//! `open_ms` and starts a fresh window.
//!
//! **Probe leases**: a probe holds its slot for at most `probe_timeout_ms`. A slot held longer is
//! released (on the next `try_acquire`; `available` sees it at once) and the next request probes, so a
//! hung probe never blocks the deployment beyond that. The released probe is not cut: its request runs
//! on under its own timeouts, and its outcome still counts while the half-open period lasts (a late
//! success is evidence of health, a late failure re-opens). Outcomes carry no lease id: one is matched
//! to the oldest live lease, else to a released probe; a mismatch only shifts which slot frees when.
//!
//! **Stale outcomes**: an outcome is attributed by its `probe` flag. While HalfOpen only probe
//! outcomes count, and only while a probe is in flight; while Open all outcomes are ignored; while
//! Closed probe outcomes are ignored and non-probe ones are recorded (they are real, recent
//! observations of the deployment). Outcomes carry no generation, so a probe from an earlier half-open
//! period that returns while a later one has a probe in flight is taken as that probe's result — a
//! benign mix-up (both are probes of the same deployment).
//!
//! **Cost**: in Closed, `available`, `try_acquire` and `on_success` are lock-free (atomic loads, one
//! CAS on a window bucket); `on_failure` adds a scan of the 16-slot tenant set and takes the lock only
//! when a rule trips. Open/HalfOpen transitions and probe accounting take a short `parking_lot` lock.

use super::tenants::{Cause, RecentTenants};
use super::window::Ring;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Breaker thresholds; see the module docs for their exact meaning.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSettings {
    /// Open after this many failures in a row (0: rule off).
    pub consecutive_failures: u32,
    /// Open when failures / outcomes in the rolling window reach this (0: rule off)...
    pub failure_ratio: f64,
    /// ...but only once the window holds at least this many outcomes.
    pub min_requests: u32,
    /// Rolling window of the ratio rule, kept as 10 buckets.
    pub window_ms: u64,
    /// First open period.
    pub open_ms: u64,
    /// Cap of the open period, which doubles on each re-open from half-open.
    pub max_open_ms: u64,
    /// Probes in flight at once in half-open; that many probe successes in a row close the breaker.
    pub half_open_probes: u32,
    /// A met rule trips only when failures came from this many distinct tenants within `window_ms`
    /// (or a provider-wide failure is in it); 1: any failure counts.
    pub min_tenants: u32,
    /// Longest a probe holds its slot; then the slot goes to the next request.
    pub probe_timeout_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_requests: 20,
            window_ms: 10_000,
            open_ms: 5_000,
            max_open_ms: 60_000,
            half_open_probes: 1,
            min_tenants: 2,
            probe_timeout_ms: 2_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

/// A state change, for logging and metrics by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    /// Length of the open period when `to == Open`, else 0.
    pub open_ms: u64,
}

/// The verdict of [`Breaker::try_acquire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead; report the outcome with `probe = false`.
    Allowed,
    /// Half-open: go ahead as a probe; report the outcome (or cancellation) with `probe = true`.
    Probe,
    /// Open, or half-open with every probe slot taken. `retry_in_ms` is the time left of the open
    /// period (0 in half-open: a probe may finish at any moment, the caller picks its own delay).
    Rejected { retry_in_ms: u64 },
}

/// Circuit breaker of one deployment. Share it behind an `Arc`.
pub struct Breaker {
    settings: BreakerSettings,
    bucket_ms: u64,
    /// `BreakerState as u8`; written only under `inner`, read lock-free.
    state: AtomicU8,
    /// End of the open period (valid while Open); written before `state`.
    open_until: AtomicU64,
    /// Live probe leases (HalfOpen); written under `inner`, read lock-free by `available`.
    probes: AtomicU32,
    /// When the oldest live lease expires (`u64::MAX`: none); written under `inner`.
    lease_end: AtomicU64,
    /// Closed-state failures in a row.
    consecutive: AtomicU32,
    /// Closed-state outcomes: (outcomes, failures) per bucket.
    window: Ring,
    /// Closed-state failing tenants of the last `window_ms`.
    tenants: RecentTenants,
    /// `now_ms + 1` of the last provider-wide failure while Closed (0: none since closing).
    provider_failed_at: AtomicU64,
    trips: AtomicU64,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Length of the current (or last) open period.
    open_ms: u64,
    /// Probe successes in a row in the current half-open period.
    successes: u32,
    /// Start of each live probe lease, oldest first (at most `max_probes`).
    leases: VecDeque<u64>,
    /// Probes of this half-open period whose lease expired before their outcome arrived.
    released: u32,
}

const BUCKETS: u64 = 10;

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        let bucket_ms = (settings.window_ms / BUCKETS).max(1);
        Self {
            bucket_ms,
            state: AtomicU8::new(BreakerState::Closed as u8),
            open_until: AtomicU64::new(0),
            probes: AtomicU32::new(0),
            lease_end: AtomicU64::new(u64::MAX),
            consecutive: AtomicU32::new(0),
            window: Ring::new(BUCKETS as usize),
            tenants: RecentTenants::new(settings.window_ms),
            provider_failed_at: AtomicU64::new(0),
            trips: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                open_ms: settings.open_ms,
                successes: 0,
                leases: VecDeque::with_capacity(settings.half_open_probes.clamp(1, 64) as usize),
                released: 0,
            }),
            settings,
        }
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    fn load_state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, s: BreakerState) {
        self.state.store(s as u8, Ordering::Release);
    }

    fn max_probes(&self) -> u32 {
        self.settings.half_open_probes.max(1)
    }

    /// Current state as seen at `now_ms`; an Open breaker whose period has elapsed reports HalfOpen
    /// (without transitioning).
    pub fn state(&self, now_ms: u64) -> BreakerState {
        match self.load_state() {
            BreakerState::Open if now_ms >= self.open_until.load(Ordering::Acquire) => {
                BreakerState::HalfOpen
            }
            s => s,
        }
    }

    /// Whether `try_acquire` would admit now. Lock-free; for deployment selection.
    pub fn available(&self, now_ms: u64) -> bool {
        match self.load_state() {
            BreakerState::Closed => true,
            BreakerState::Open => now_ms >= self.open_until.load(Ordering::Acquire),
            BreakerState::HalfOpen => {
                self.probes.load(Ordering::Acquire) < self.max_probes()
                    || now_ms >= self.lease_end.load(Ordering::Acquire)
            }
        }
    }

    /// While the open period lasts: the rejection, with the time left.
    fn still_open(&self, now_ms: u64) -> Option<Admission> {
        let until = self.open_until.load(Ordering::Acquire);
        (now_ms < until).then(|| Admission::Rejected {
            retry_in_ms: until - now_ms,
        })
    }

    /// Admits a request: `Allowed` in Closed; `Probe` in HalfOpen while a probe slot is free or its
    /// lease expired (an Open breaker whose period elapsed moves to HalfOpen here, returned as the
    /// `Transition`); `Rejected` otherwise.
    pub fn try_acquire(&self, now_ms: u64) -> (Admission, Option<Transition>) {
        match self.load_state() {
            BreakerState::Closed => return (Admission::Allowed, None),
            BreakerState::Open => {
                if let Some(rejected) = self.still_open(now_ms) {
                    return (rejected, None);
                }
            }
            BreakerState::HalfOpen => {}
        }
        let mut inner = self.inner.lock();
        let mut transition = None;
        match self.load_state() {
            BreakerState::Closed => return (Admission::Allowed, None),
            BreakerState::Open => {
                if let Some(rejected) = self.still_open(now_ms) {
                    return (rejected, None);
                }
                inner.successes = 0;
                Self::drop_leases(&mut inner);
                self.sync_leases(&inner);
                self.set_state(BreakerState::HalfOpen);
                transition = Some(Transition {
                    from: BreakerState::Open,
                    to: BreakerState::HalfOpen,
                    open_ms: 0,
                });
            }
            BreakerState::HalfOpen => {}
        }
        self.expire_leases(&mut inner, now_ms);
        if inner.leases.len() < self.max_probes() as usize {
            inner.leases.push_back(now_ms);
            self.sync_leases(&inner);
            (Admission::Probe, transition)
        } else {
            (Admission::Rejected { retry_in_ms: 0 }, transition)
        }
    }

    /// Records a success of an admitted request (`probe`: it was admitted as [`Admission::Probe`]).
    pub fn on_success(&self, now_ms: u64, probe: bool) -> Option<Transition> {
        if !probe {
            if self.load_state() == BreakerState::Closed {
                self.consecutive.store(0, Ordering::Release);
                self.window.add(now_ms / self.bucket_ms, 1, 0);
            }
            return None;
        }
        let mut inner = self.inner.lock();
        if !self.take_probe(&mut inner) {
            return None;
        }
        inner.successes += 1;
        if inner.successes < self.max_probes() {
            return None;
        }
        inner.successes = 0;
        inner.open_ms = self.settings.open_ms;
        Self::drop_leases(&mut inner);
        self.sync_leases(&inner);
        self.consecutive.store(0, Ordering::Release);
        self.window.clear();
        self.tenants.clear();
        self.provider_failed_at.store(0, Ordering::Release);
        self.set_state(BreakerState::Closed);
        Some(Transition {
            from: BreakerState::HalfOpen,
            to: BreakerState::Closed,
            open_ms: 0,
        })
    }

    /// Records a failure of an admitted request (`probe`: it was admitted as [`Admission::Probe`]),
    /// attributed to `cause` (see the module docs on tenant isolation; a probe's failure re-opens
    /// whatever its cause).
    pub fn on_failure(&self, now_ms: u64, probe: bool, cause: Cause) -> Option<Transition> {
        if probe {
            let mut inner = self.inner.lock();
            if !self.take_probe(&mut inner) {
                return None;
            }
            inner.open_ms = inner
                .open_ms
                .saturating_mul(2)
                .min(self.settings.max_open_ms.max(self.settings.open_ms));
            return Some(self.trip(&mut inner, now_ms, BreakerState::HalfOpen));
        }
        if self.load_state() != BreakerState::Closed {
            return None;
        }
        self.window.add(now_ms / self.bucket_ms, 1, 1);
        let in_a_row = self
            .consecutive
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        // The tenant is recorded on every failure, so the check comes first.
        if !self.provider_wide(now_ms, cause) || !self.should_trip(now_ms, in_a_row) {
            return None;
        }
        let mut inner = self.inner.lock();
        if self.load_state() != BreakerState::Closed {
            return None; // another failure tripped it first
        }
        inner.open_ms = self.settings.open_ms;
        Some(self.trip(&mut inner, now_ms, BreakerState::Closed))
    }

    /// An admitted request that ended with no verdict (client left, cancelled): frees its probe slot,
    /// records nothing.
    pub fn on_cancel(&self, probe: bool) {
        if probe {
            let mut inner = self.inner.lock();
            self.take_probe(&mut inner);
        }
    }

    /// Trips so far (Closed or HalfOpen → Open).
    pub fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    /// Matches a probe outcome to a probe of this half-open period: the oldest live lease (freeing its
    /// slot), else a released one. False means a stale probe outcome.
    fn take_probe(&self, inner: &mut Inner) -> bool {
        if self.load_state() != BreakerState::HalfOpen {
            return false;
        }
        if inner.leases.pop_front().is_some() {
            self.sync_leases(inner);
            return true;
        }
        if inner.released > 0 {
            inner.released -= 1;
            return true;
        }
        false
    }

    /// Releases the leases held `probe_timeout_ms` or longer: their slots go to the next requests.
    fn expire_leases(&self, inner: &mut Inner, now_ms: u64) {
        let timeout = self.settings.probe_timeout_ms;
        let mut expired = false;
        while inner
            .leases
            .front()
            .is_some_and(|&at| now_ms >= at.saturating_add(timeout))
        {
            inner.leases.pop_front();
            inner.released = inner.released.saturating_add(1);
            expired = true;
        }
        if expired {
            self.sync_leases(inner);
        }
    }

    fn drop_leases(inner: &mut Inner) {
        inner.leases.clear();
        inner.released = 0;
    }

    /// Publishes the lease count and the oldest lease's expiry for the lock-free `available`.
    fn sync_leases(&self, inner: &Inner) {
        let end = inner.leases.front().map_or(u64::MAX, |&at| {
            at.saturating_add(self.settings.probe_timeout_ms)
        });
        self.lease_end.store(end, Ordering::Release);
        self.probes
            .store(inner.leases.len() as u32, Ordering::Release);
    }

    /// Whether a failure at `now_ms` is backed by provider-wide evidence: it has a provider-wide cause,
    /// one was seen in the window, or `min_tenants` distinct tenants failed in it (this one recorded).
    fn provider_wide(&self, now_ms: u64, cause: Cause) -> bool {
        match cause {
            Cause::Provider => {
                self.provider_failed_at
                    .store(now_ms.saturating_add(1), Ordering::Release);
                true
            }
            Cause::Tenant(tenant) => {
                let at = self.provider_failed_at.load(Ordering::Acquire);
                if at != 0 && now_ms.saturating_sub(at - 1) < self.settings.window_ms {
                    self.tenants.record(now_ms, tenant);
                    return true;
                }
                self.tenants
                    .record_and_reach(now_ms, tenant, self.settings.min_tenants)
            }
        }
    }

    fn should_trip(&self, now_ms: u64, in_a_row: u32) -> bool {
        let s = &self.settings;
        if s.consecutive_failures > 0 && in_a_row >= s.consecutive_failures {
            return true;
        }
        if s.failure_ratio > 0.0 {
            let (outcomes, failures) = self.window.sum(now_ms / self.bucket_ms);
            return outcomes > 0
                && outcomes >= u64::from(s.min_requests)
                && failures as f64 >= s.failure_ratio * outcomes as f64;
        }
        false
    }

    /// Opens for `inner.open_ms` from `now_ms`. Call with `inner` locked.
    fn trip(&self, inner: &mut Inner, now_ms: u64, from: BreakerState) -> Transition {
        inner.successes = 0;
        Self::drop_leases(inner);
        self.sync_leases(inner);
        self.consecutive.store(0, Ordering::Release);
        self.open_until
            .store(now_ms.saturating_add(inner.open_ms), Ordering::Release);
        self.set_state(BreakerState::Open);
        self.trips.fetch_add(1, Ordering::Relaxed);
        Transition {
            from,
            to: BreakerState::Open,
            open_ms: inner.open_ms,
        }
    }
}

#[cfg(test)]
mod tests;
