//! The response cache's data-plane side (issue 18, `docs/cache.md`): each route's compiled cache
//! ([`RouteCache`]: its `leaky_cache::CachePolicy`, its store, its metric handles, built once per
//! config version) and the process-wide stores it points into ([`Stores`], in `Shared`: they
//! survive reloads). The request path is in `service/cached.rs`: decide, look up, replay a hit
//! (`replay.rs`), or go upstream through single-flight and store the captured answer
//! (`capture.rs`).

mod metrics;
mod stores;

pub use metrics::{RouteMetrics, StoreMetrics};
pub use stores::{StoreError, Stores};

use leaky_cache::{BypassReason, CachePolicy, Entry, Flights, Key, Lookup, Store};
use leaky_config::{Cache, RouteCache as RouteCacheConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One route's response cache, compiled for a config version.
pub struct RouteCache {
    pub policy: CachePolicy,
    store: Arc<dyn Store>,
    /// `memory` or `redis`: the store's metric label.
    store_metrics: Arc<StoreMetrics>,
    /// The proxy's open flights (shared by every route and version).
    pub flights: Flights,
    pub metrics: RouteMetrics,
    /// A lookup never holds a request longer than this (the store's own timeout, plus slack for
    /// a store that overran it).
    lookup_bound: Duration,
}

/// The `x-leaky-cache` response header: how the response cache treated the request.
pub const CACHE_HEADER: &str = "x-leaky-cache";

/// How the cache treated a request: the `x-leaky-cache` header's value and the metric's label.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    Hit,
    Miss,
    Bypass,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        }
    }
}

impl RouteCache {
    /// The route `route`'s cache from its config, its store taken from (or made in) `stores` per
    /// the version's top-level `settings`; `models`: the models the route's providers list (the
    /// metric's bounded model label).
    pub fn build(
        route: &str,
        config: &RouteCacheConfig,
        settings: &Cache,
        stores: &Stores,
        models: &[&str],
    ) -> Result<RouteCache, StoreError> {
        let (store, store_metrics, lookup_bound) = stores.for_route(config, settings)?;
        Ok(RouteCache {
            policy: CachePolicy::from_config(config),
            store,
            store_metrics,
            flights: stores.flights(),
            metrics: RouteMetrics::new(route, models),
            lookup_bound,
        })
    }

    /// The route's settings (ttl, charge, wait, max_entry_bytes).
    pub fn config(&self) -> &RouteCacheConfig {
        self.policy.config()
    }

    /// The stored answer for `key`, if any. A store that fails or overruns its timeout is a miss,
    /// counted in `leaky_cache_store_unavailable_total`.
    pub async fn lookup(&self, key: &Key) -> Option<Arc<Entry>> {
        let start = Instant::now();
        let found = tokio::time::timeout(self.lookup_bound, self.store.get(key)).await;
        self.store_metrics
            .observe_lookup(start.elapsed().as_secs_f64());
        match found {
            Ok(Lookup::Hit(e)) => Some(e),
            Ok(Lookup::Miss) => None,
            Ok(Lookup::Unavailable) | Err(_) => {
                self.store_metrics.count_unavailable();
                None
            }
        }
    }

    /// Stores `entry` under `key` for the route's TTL, off the request (it never delays the
    /// response; a store that fails only loses the entry).
    pub fn store_later(&self, key: Key, entry: Arc<Entry>) {
        let (store, metrics, ttl) = (
            self.store.clone(),
            self.store_metrics.clone(),
            self.config().ttl,
        );
        tokio::spawn(async move {
            if store.put(&key, entry, ttl).await {
                metrics.count_stored();
            }
        });
    }

    /// Counts how the request was treated (`leaky_cache_requests_total`).
    pub fn count(&self, model: Option<&str>, outcome: Outcome) {
        self.metrics.count(model, outcome);
    }

    /// Counts a bypass and its reason (`leaky_cache_bypass_total`, and the request as `bypass`).
    pub fn count_bypass(&self, model: Option<&str>, reason: BypassReason) {
        self.metrics.count_bypass(reason);
        self.metrics.count(model, Outcome::Bypass);
    }

    /// A miss whose answer was larger than `max_entry_bytes`: not stored (the request already
    /// counted as a miss; the reason counts `too_large`).
    pub fn count_too_large(&self) {
        self.metrics.count_bypass(BypassReason::TooLarge);
    }
}
