//! The in-process store: a byte-bounded LRU (moka, weighted by [`Entry::weight`]) with a TTL per
//! entry.
//!
//! The store is process-wide: the proxy keeps one per configured budget in a registry that outlives
//! config reloads, and clones of a [`MemoryStore`] share the same entries and counters.
//!
//! Expiry is decided twice, on purpose. Each entry carries its deadline on the injected [`Clock`],
//! checked on every `get`, so TTL semantics are exact and testable without sleeping; moka is also told
//! the TTL so it reclaims the memory of entries nobody reads again. Eviction order is moka's LRU:
//! exact once moka has applied its buffered reads and writes (it does so on its own as traffic
//! flows; [`MemoryStore::run_pending_tasks`] forces it, for tests and for exact gauges).

use crate::stats::{system_clock, Clock, Counters, StoreStats};
use crate::{Entry, Key, Lookup, Store};
use async_trait::async_trait;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use moka::Expiry;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the cache holds per key: the entry and its deadline (cloning it is one `Arc` clone).
#[derive(Clone)]
struct Slot {
    entry: Arc<Entry>,
    expires_at_ms: u64,
    ttl: Duration,
}

/// Tells moka each slot's own TTL, so memory of never-read entries is reclaimed.
struct SlotExpiry;

impl Expiry<Key, Slot> for SlotExpiry {
    fn expire_after_create(&self, _key: &Key, slot: &Slot, _at: Instant) -> Option<Duration> {
        Some(slot.ttl)
    }

    /// A replaced entry gets its own TTL (moka's default would keep the old deadline).
    fn expire_after_update(
        &self,
        _key: &Key,
        slot: &Slot,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.ttl)
    }
}

/// A byte-bounded LRU store with per-entry TTL. Cheap to clone (shared state).
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<Key, Slot>,
    max_bytes: u64,
    clock: Clock,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_bytes", &self.max_bytes)
            .field("stats", &self.stats())
            .finish()
    }
}

impl MemoryStore {
    /// A store holding at most `max_bytes` of [`Entry::weight`], on the wall clock.
    pub fn new(max_bytes: u64) -> Self {
        Self::with_clock(max_bytes, system_clock())
    }

    /// A store whose TTLs are read on `clock` (unix ms).
    pub fn with_clock(max_bytes: u64, clock: Clock) -> Self {
        let counters = Arc::new(Counters::default());
        let listener = counters.clone();
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &Key, slot: &Slot| -> u32 {
                u32::try_from(slot.entry.weight()).unwrap_or(u32::MAX)
            })
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(SlotExpiry)
            .eviction_listener(move |_key, _slot, cause| match cause {
                RemovalCause::Size => Counters::bump(&listener.evictions),
                // `Explicit` is only ever this store dropping an entry found expired on `get`.
                RemovalCause::Expired | RemovalCause::Explicit => {
                    Counters::bump(&listener.expirations)
                }
                RemovalCause::Replaced => {}
            })
            .build();
        Self {
            cache,
            max_bytes,
            clock,
            counters,
        }
    }

    /// The byte budget.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Applies moka's buffered reads, writes, evictions and expirations now (exact LRU order and
    /// gauges; moka otherwise does it as traffic flows).
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// Whether `key` is held, without counting as a use (LRU order is unchanged; an entry past its
    /// deadline on the injected clock but not yet reclaimed still counts).
    pub fn contains(&self, key: &Key) -> bool {
        self.cache.contains_key(key)
    }

    /// Counters and current size.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            bytes: self.cache.weighted_size(),
            entries: self.cache.entry_count(),
            ..self.counters.snapshot()
        }
    }

    fn lookup(&self, key: &Key) -> Lookup {
        let Some(slot) = self.cache.get(key) else {
            return Lookup::Miss;
        };
        if (self.clock)() >= slot.expires_at_ms {
            self.cache.invalidate(key);
            return Lookup::Miss;
        }
        Lookup::Hit(slot.entry)
    }

    fn insert(&self, key: &Key, entry: Arc<Entry>, ttl: Duration) -> bool {
        let weight = u64::try_from(entry.weight()).unwrap_or(u64::MAX);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        // An entry over the whole budget would only evict everything and then itself.
        if ttl_ms == 0 || weight > self.max_bytes || weight > u64::from(u32::MAX) {
            Counters::bump(&self.counters.rejected);
            return false;
        }
        let slot = Slot {
            entry,
            expires_at_ms: (self.clock)().saturating_add(ttl_ms),
            ttl,
        };
        self.cache.insert(*key, slot);
        true
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &Key) -> Lookup {
        self.lookup(key)
    }

    async fn put(&self, key: &Key, entry: Arc<Entry>, ttl: Duration) -> bool {
        self.insert(key, entry, ttl)
    }

    fn stats(&self) -> StoreStats {
        MemoryStore::stats(self)
    }
}
