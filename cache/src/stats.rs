//! Store counters and the clock stores read expiry and back-off against.
//!
//! The proxy renders [`StoreStats`] as Prometheus metrics; this crate stays free of `prometheus`.
//! The clock is injected so TTLs and back-off windows are tested without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A snapshot of one store's counters (monotonic counts since start, and current gauges).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct StoreStats {
    /// Entries evicted to stay within the byte budget (never expirations).
    pub evictions: u64,
    /// Entries dropped because their TTL passed.
    pub expirations: u64,
    /// Bytes held now (the memory store's weighted size; 0 for Redis, which Redis itself bounds).
    pub bytes: u64,
    /// Entries held now (memory store).
    pub entries: u64,
    /// Entries refused by `put` (larger than the whole budget, zero TTL, or a store that is down).
    pub rejected: u64,
    /// Failed round trips: connection errors, server errors, undecodable values.
    pub errors: u64,
    /// Round trips that did not answer within the store's timeout.
    pub timeouts: u64,
    /// Calls answered `Unavailable` without trying, during the back-off after a failure.
    pub skipped: u64,
}

/// Unix milliseconds; the memory store's expiry and the Redis store's back-off read it.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The wall clock as a [`Clock`].
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

/// A hand-driven clock for tests and benches: starts at `start_ms`, moves only on
/// [`advance`](ManualClock::advance).
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        Self(Arc::new(AtomicU64::new(start_ms)))
    }

    pub fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }

    /// This clock as a [`Clock`] for a store.
    pub fn clock(&self) -> Clock {
        let inner = self.0.clone();
        Arc::new(move || inner.load(Ordering::Relaxed))
    }
}

/// Monotonic counters shared by a store's clones.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub skipped: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters' part of a snapshot (gauges are the store's to fill).
    pub fn snapshot(&self) -> StoreStats {
        StoreStats {
            evictions: self.evictions.load(Ordering::Relaxed),
            expirations: self.expirations.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            ..StoreStats::default()
        }
    }
}
