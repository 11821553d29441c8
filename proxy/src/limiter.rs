//! The limiter's backend, kept across config versions: the store (in-process, or Redis behind the
//! outage guard), the batching settler, idle-bucket eviction, and the small runtime they run on.
//!
//! Pingora gives each service its own runtime; the limiter's background work (the Redis connection's
//! driver, the settler, eviction) runs on one runtime owned here, so it outlives any request and is
//! shared by every proxy thread. A reload that keeps `limits.store` and `limits.redis` keeps this
//! backend, so buckets survive; a changed store setting builds a new one.

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use leaky_config::{LimitStore, RedisSettings};
use leaky_limit::settle::system_now;
use leaky_limit::{
    Adjust, Charge, GuardOptions, GuardStats, Guarded, MemoryStore, Nanos, RedisOptions,
    RedisStore, Settler, SettlerHandle, Store, StoreError, Taken,
};
use std::sync::Arc;
use std::time::Duration;

/// Why the limiter's backend cannot start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimiterError {
    /// The process-wide limiter runtime could not start (kept: every later attempt reports it).
    #[error("starting the limiter runtime: {0}")]
    Runtime(Arc<std::io::Error>),
}

/// How often idle buckets are evicted from the in-process store.
const EVICT_EVERY: Duration = Duration::from_secs(10);

pub struct LimiterBackend {
    pub settings: LimitStore,
    pub store: Arc<dyn Store>,
    pub settler: SettlerHandle,
    pub memory: Option<Arc<MemoryStore>>,
    pub guard: Option<Arc<Guarded>>,
}

/// The limiter's runtime: one per process, never dropped (a runtime must not be dropped from async
/// code, and the last reference to an old backend may go away on a proxy thread).
fn runtime() -> Result<&'static tokio::runtime::Runtime, LimiterError> {
    static RT: std::sync::OnceLock<Result<tokio::runtime::Runtime, LimiterError>> =
        std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("leaky-limiter")
            .enable_all()
            .build()
            .map_err(|e| LimiterError::Runtime(Arc::new(e)))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Runs `fut` on the limiter's runtime (background sinks); false when that runtime could not start.
pub fn spawn_background<F>(fut: F) -> bool
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    match runtime() {
        Ok(rt) => {
            rt.spawn(fut);
            true
        }
        Err(_) => false,
    }
}

impl LimiterBackend {
    pub fn new(settings: &LimitStore) -> Result<Self, LimiterError> {
        let runtime = runtime()?;
        let _enter = runtime.enter();
        let (store, memory, guard): (Arc<dyn Store>, _, _) = match settings {
            LimitStore::Memory => {
                let m = Arc::new(MemoryStore::new());
                let weak = Arc::downgrade(&m);
                runtime.spawn(async move {
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
                spawn_connect(runtime, Arc::downgrade(&lazy), r.clone());
                let guard = Arc::new(Guarded::new(
                    lazy,
                    GuardOptions {
                        timeout: r.timeout,
                        failures_to_open: r.failures_to_open,
                        open_for: r.open_for,
                        local_share_permille: 1000 / r.replicas.max(1),
                    },
                ));
                (guard.clone(), None, Some(guard))
            }
        };
        let settler = Settler::spawn(store.clone(), 4096);
        drop(_enter);
        Ok(LimiterBackend {
            settings: settings.clone(),
            store,
            settler,
            memory,
            guard,
        })
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

fn spawn_connect(rt: &tokio::runtime::Runtime, lazy: std::sync::Weak<LazyRedis>, r: RedisSettings) {
    rt.spawn(async move {
        let opts = RedisOptions {
            key_prefix: r.key_prefix.clone(),
            hash_tag: r.hash_tag.clone(),
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
