//! The process-wide response-cache stores, kept across config versions (in `Shared`): one memory
//! store (kept, entries and all, while reloads keep `cache.memory.max_bytes`; a new budget starts
//! an empty store) and one Redis store per (URL, key prefix, timeout). Routes of every version
//! point into them; the single-flight map is shared by all. Only snapshot builds and scrapes take
//! the locks here, never a request.

use super::metrics::StoreMetrics;
use leaky_cache::{Flights, MemoryStore, RedisStore, RedisStoreError, Store};
use leaky_config::{Cache, CacheStoreKind, RouteCache as RouteCacheConfig};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A memory lookup is a hash-map read; this only bounds a pathological stall.
const MEMORY_LOOKUP_BOUND: Duration = Duration::from_millis(50);
/// Slack over a Redis store's own timeout before the proxy stops waiting for it.
const REDIS_LOOKUP_SLACK: Duration = Duration::from_millis(5);

/// A route names a store the config cannot make.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("`store: redis` needs the top-level `cache.redis`")]
    NoRedis,
    #[error(transparent)]
    Redis(#[from] RedisStoreError),
}

type RedisKey = (String, String, Duration);

/// What a route gets from the registry: its store, the store's metric handles, its lookup bound.
pub(super) type ForRoute = (Arc<dyn Store>, Arc<StoreMetrics>, Duration);

/// Every store of the process; see the module docs.
#[derive(Default)]
pub struct Stores {
    /// The memory store of the current budget, and its budget.
    memory: Mutex<Option<(u64, Arc<MemoryStore>)>>,
    redis: Mutex<HashMap<RedisKey, Arc<RedisStore>>>,
    memory_metrics: OnceMetrics,
    redis_metrics: OnceMetrics,
    flights: Flights,
    /// `check-config` builds stores it never uses: they must not reach the network.
    offline: bool,
}

/// A store kind's metric handles, resolved once per process.
#[derive(Default)]
struct OnceMetrics(std::sync::OnceLock<Arc<StoreMetrics>>);

impl OnceMetrics {
    fn get(&self, label: &'static str) -> Arc<StoreMetrics> {
        self.0
            .get_or_init(|| Arc::new(StoreMetrics::new(label)))
            .clone()
    }
}

impl Stores {
    /// Stores that never connect (for `check-config`, which touches no network).
    pub fn offline() -> Self {
        Stores {
            offline: true,
            ..Stores::default()
        }
    }

    /// A new Redis store may start connecting as soon as it is made.
    pub fn connects(&self) -> bool {
        !self.offline
    }

    /// The store a route's `cache:` names (made from the version's top-level `settings`), its
    /// metric handles and the lookup bound.
    pub(super) fn for_route(
        &self,
        config: &RouteCacheConfig,
        settings: &Cache,
    ) -> Result<ForRoute, StoreError> {
        match config.store {
            CacheStoreKind::Memory => {
                let store: Arc<dyn Store> = self.memory(settings.memory_max_bytes);
                Ok((
                    store,
                    self.memory_metrics.get("memory"),
                    MEMORY_LOOKUP_BOUND,
                ))
            }
            CacheStoreKind::Redis => {
                let r = settings.redis.as_ref().ok_or(StoreError::NoRedis)?;
                let store: Arc<dyn Store> = self.redis(&r.url, &r.key_prefix, r.timeout)?;
                let bound = r.timeout + REDIS_LOOKUP_SLACK;
                Ok((store, self.redis_metrics.get("redis"), bound))
            }
        }
    }

    /// The memory store of `max_bytes`: the current one when its budget is the same.
    fn memory(&self, max_bytes: u64) -> Arc<MemoryStore> {
        let mut m = self.memory.lock();
        match &*m {
            Some((budget, store)) if *budget == max_bytes => store.clone(),
            _ => {
                let store = Arc::new(MemoryStore::new(max_bytes));
                *m = Some((max_bytes, store.clone()));
                store
            }
        }
    }

    fn redis(
        &self,
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Arc<RedisStore>, StoreError> {
        let key = (url.to_owned(), prefix.to_owned(), timeout);
        let mut stores = self.redis.lock();
        if let Some(s) = stores.get(&key) {
            return Ok(s.clone());
        }
        let store = Arc::new(RedisStore::new(url, prefix, timeout)?);
        stores.insert(key, store.clone());
        Ok(store)
    }

    /// The proxy's single-flight map (clones share it).
    pub fn flights(&self) -> Flights {
        self.flights.clone()
    }

    /// Copies the stores' counters into the metrics (scrape time).
    pub fn sync_metrics(&self) {
        if let Some((_, m)) = &*self.memory.lock() {
            m.run_pending_tasks();
            self.memory_metrics.get("memory").sync(&m.stats(), true);
        }
        let redis = self.redis.lock();
        if !redis.is_empty() {
            let mut total = leaky_cache::StoreStats::default();
            for s in redis.values() {
                total.evictions += s.stats().evictions;
            }
            self.redis_metrics.get("redis").sync(&total, false);
        }
    }
}
