//! The limiter's backend, kept across config versions: the store (in-process, or Redis behind the
//! outage guard), the batching settler and idle-bucket eviction.
//!
//! The limiter's background work (the Redis connect loop and shared connection, the settler,
//! eviction) runs on the `Background` service's runtime, so it outlives any request and is shared by
//! every proxy thread. Each proxy worker thread then makes its own Redis connection on its runtime
//! (`leaky_limit::redis`), so decisions do not cross runtimes.
//! A reload that keeps `limits.store` and `limits.redis` keeps this backend, so buckets survive; a
//! changed store setting builds a new one.

use crate::background::Background;
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use leaky_config::{LimitStore, RedisSettings};
use leaky_limit::settle::system_now;
use leaky_limit::{
    Adjust, Charge, GuardOptions, GuardStats, GuardTimer, Guarded, MemoryStore, Nanos,
    RedisOptions, RedisStore, Settler, SettlerHandle, Store, StoreError, Taken,
};
use std::sync::Arc;
use std::time::Duration;

/// How often idle buckets are evicted from the in-process store.
const EVICT_EVERY: Duration = Duration::from_secs(10);

pub struct LimiterBackend {
    pub settings: LimitStore,
    pub store: Arc<dyn Store>,
    pub settler: SettlerHandle,
    pub memory: Option<Arc<MemoryStore>>,
    pub guard: Option<Arc<Guarded>>,
}

impl LimiterBackend {
    /// Starts the store's tasks on `background` (never connects here: Redis is reached in the
    /// background, so this never fails and never blocks).
    pub fn new(settings: &LimitStore, background: &Background) -> Self {
        let _enter = background.enter();
        let (store, memory, guard): (Arc<dyn Store>, _, _) = match settings {
            LimitStore::Memory => {
                let m = Arc::new(MemoryStore::new());
                let weak = Arc::downgrade(&m);
                background.spawn(async move {
                    let mut tick = tokio::time::interval(EVICT_EVERY);
                    loop {
                        tick.tick().await;
                        let Some(m) = weak.upgrade() else { break };
                        let evicted = m.evict_idle(system_now());
                        if evicted > 0 {
                            tracing::debug!(
                                evicted,
                                active = m.len(),
                                "evicted idle rate-limit buckets"
                            );
                        }
                    }
                });
                (m.clone(), Some(m), None)
            }
            LimitStore::Redis(r) => {
                let lazy = Arc::new(LazyRedis::default());
                spawn_connect(background, Arc::downgrade(&lazy), r.clone());
                let guard = Arc::new(Guarded::new(
                    lazy,
                    GuardOptions {
                        timeout: r.timeout,
                        failures_to_open: r.failures_to_open,
                        open_for: r.open_for,
                        local_share_permille: 1000 / r.replicas.max(1),
                        timer: GuardTimer::Wheel,
                    },
                ));
                (guard.clone(), None, Some(guard))
            }
        };
        let settler = Settler::spawn(store.clone(), 4096);
        drop(_enter);
        LimiterBackend {
            settings: settings.clone(),
            store,
            settler,
            memory,
            guard,
        }
    }

    pub fn guard_stats(&self) -> Option<GuardStats> {
        self.guard.as_ref().map(|g| g.stats())
    }
}

/// A Redis store that connects in the background: until the first connection succeeds every call
/// fails fast (and the guard applies each policy's `on_store_error`), so a proxy starts and serves
/// even while Redis is down. After that, the connection manager reconnects by itself.
#[derive(Default)]
struct LazyRedis {
    inner: ArcSwapOption<RedisStore>,
}

fn spawn_connect(bg: &Background, lazy: std::sync::Weak<LazyRedis>, r: RedisSettings) {
    bg.spawn(async move {
        let opts = RedisOptions {
            key_prefix: r.key_prefix.clone(),
            hash_tag: r.hash_tag.clone(),
            // The guard bounds every call (`r.timeout`, on Pingora's timer wheel).
            response_timeout: None,
            ..RedisOptions::default()
        };
        let mut warned = false;
        loop {
            let result = RedisStore::connect(&r.url, opts.clone()).await;
            // A backend replaced by a reload stops trying.
            let Some(lazy) = lazy.upgrade() else { break };
            match result {
                Ok(s) => {
                    tracing::info!(url = %redact(&r.url), "rate limiter connected to Redis");
                    lazy.inner.store(Some(Arc::new(s)));
                    break;
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(url = %redact(&r.url), error = %e, "rate limiter cannot reach Redis yet; retrying");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

#[async_trait]
impl Store for LazyRedis {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn take(&self, now: Nanos, charges: &[Charge]) -> Result<Taken, StoreError> {
        match self.inner.load_full() {
            Some(s) => s.take(now, charges).await,
            None => Err(StoreError::Unavailable("not connected yet".into())),
        }
    }

    async fn adjust(&self, now: Nanos, adjusts: &[Adjust]) -> Result<(), StoreError> {
        match self.inner.load_full() {
            Some(s) => s.adjust(now, adjusts).await,
            None => Err(StoreError::Unavailable("not connected yet".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_password() {
        assert_eq!(redact("redis://:secret@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }
}
