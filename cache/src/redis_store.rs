//! The shared store: entries in Redis as compressed values ([`Entry::encode`]) under
//! `prefix:hex(key)`, with a TTL Redis enforces (`SET .. PX`), so `maxmemory` with a `volatile-*`
//! or `allkeys-lru` policy can evict them.
//!
//! Every call is one round trip bounded by the store's timeout, and none ever errors: a slow, failing
//! or absent Redis answers [`Lookup::Unavailable`] (served as a miss) and is counted. After a failure
//! the store skips Redis for a back-off window (answering at once, counted as skipped) so a dead
//! Redis does not cost every request the full timeout; when the window ends one caller probes and
//! the others keep skipping until it succeeds.
//!
//! The store is constructible while Redis is down: it connects in the background (a `redis`
//! `ConnectionManager`, which then reconnects by itself) and answers `Unavailable` until connected.

use crate::stats::{system_clock, Clock, Counters, StoreStats};
use crate::{Entry, Key, Lookup, Store, MAX_BODY};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// How long the store skips Redis after a failure, by default.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
/// A (re)connection attempt's bound; it runs in the background, never on a request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The store could not be built (only a malformed URL; an unreachable Redis is not an error).
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    #[error("invalid Redis URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
}

/// State shared by a store's clones.
#[derive(Default)]
struct Shared {
    conn: OnceLock<ConnectionManager>,
    connecting: AtomicBool,
    /// Whether the first connection is up (for [`RedisStore::ready`]).
    connected: watch::Sender<bool>,
    /// Unix ms until which Redis is skipped; 0 when healthy.
    down_until_ms: AtomicU64,
    counters: Counters,
}

/// A compressed-entry store in Redis. Cheap to clone (shared connection and counters).
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    prefix: Arc<str>,
    timeout: Duration,
    backoff_ms: u64,
    clock: Clock,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Why a round trip failed.
enum Failure {
    Timeout,
    Error(redis::RedisError),
}

impl RedisStore {
    /// A store on `url` whose keys are `key_prefix:hex`, each call bounded by `timeout`. Starts
    /// connecting in the background when called inside a Tokio runtime, else on first use.
    pub fn new(url: &str, key_prefix: &str, timeout: Duration) -> Result<Self, RedisStoreError> {
        let client = redis::Client::open(url).map_err(|e| RedisStoreError::InvalidUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let store = Self {
            client,
            prefix: key_prefix.into(),
            timeout,
            backoff_ms: duration_ms(DEFAULT_BACKOFF),
            clock: system_clock(),
            shared: Arc::new(Shared::default()),
        };
        store.spawn_connect();
        Ok(store)
    }

    /// Sets how long Redis is skipped after a failure (at least 1 ms).
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff_ms = duration_ms(backoff).max(1);
        self
    }

    /// Reads the back-off window on `clock` (unix ms) instead of the wall clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The Redis key of `key`.
    pub fn redis_key(&self, key: &Key) -> String {
        format!("{}:{}", self.prefix, key.hex())
    }

    /// Waits up to `within` for the first connection; whether it is up.
    pub async fn ready(&self, within: Duration) -> bool {
        let mut connected = self.shared.connected.subscribe();
        self.spawn_connect();
        let up = connected.wait_for(|up| *up);
        let outcome = tokio::time::timeout(within, up).await;
        matches!(outcome, Ok(Ok(_)))
    }

    /// Counters (Redis bounds its own memory: no byte or entry gauges here).
    pub fn stats(&self) -> StoreStats {
        self.shared.counters.snapshot()
    }

    /// Whether a call may go to Redis now: outside a back-off window, or the one probe after it.
    fn admit(&self) -> bool {
        let until = self.shared.down_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = (self.clock)();
        // When the window is over, the caller that moves it forward probes; the rest skip.
        let probe = now >= until
            && self
                .shared
                .down_until_ms
                .compare_exchange(
                    until,
                    self.window_end(now),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        if !probe {
            Counters::bump(&self.shared.counters.skipped);
        }
        probe
    }

    fn window_end(&self, now: u64) -> u64 {
        now.saturating_add(self.backoff_ms).max(1)
    }

    fn record(&self, failure: &Failure) {
        match failure {
            Failure::Timeout => Counters::bump(&self.shared.counters.timeouts),
            // The client's own connection timeout is a timeout too, not a server error.
            Failure::Error(e) if e.is_timeout() => Counters::bump(&self.shared.counters.timeouts),
            Failure::Error(e) => {
                Counters::bump(&self.shared.counters.errors);
                tracing::debug!(error = %e, "cache: Redis call failed");
            }
        }
        let end = self.window_end((self.clock)());
        self.shared.down_until_ms.store(end, Ordering::Release);
    }

    fn healthy(&self) {
        self.shared.down_until_ms.store(0, Ordering::Release);
    }

    /// The connection, or `None` (and a background connect started) while there is none.
    fn connection(&self) -> Option<ConnectionManager> {
        let conn = self.shared.conn.get().cloned();
        if conn.is_none() {
            self.spawn_connect();
            Counters::bump(&self.shared.counters.skipped);
        }
        conn
    }

    fn spawn_connect(&self) {
        if self.shared.conn.get().is_some() || self.shared.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.shared.connecting.store(false, Ordering::Release);
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            this.connect().await;
            this.shared.connecting.store(false, Ordering::Release);
        });
    }

    async fn connect(&self) {
        // One attempt per connect (no retries of its own): the back-off window paces the next one.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_number_of_retries(0);
        let attempt = ConnectionManager::new_with_config(self.client.clone(), config);
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(conn)) => {
                let _ = self.shared.conn.set(conn);
                self.healthy();
                self.shared.connected.send_replace(true);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cache: cannot connect to Redis; lookups are misses");
                self.record(&Failure::Error(e));
            }
            Err(_elapsed) => {
                tracing::warn!("cache: connecting to Redis timed out; lookups are misses");
                self.record(&Failure::Timeout);
            }
        }
    }

    /// Runs one command within the timeout, recording the outcome.
    async fn call<T: redis::FromRedisValue>(
        &self,
        mut conn: ConnectionManager,
        cmd: redis::Cmd,
    ) -> Option<T> {
        let result = match tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Failure::Error(e)),
            Err(_elapsed) => Err(Failure::Timeout),
        };
        match result {
            Ok(value) => {
                self.healthy();
                Some(value)
            }
            Err(failure) => {
                self.record(&failure);
                None
            }
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &Key) -> Lookup {
        if !self.admit() {
            return Lookup::Unavailable;
        }
        let Some(conn) = self.connection() else {
            return Lookup::Unavailable;
        };
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.redis_key(key));
        match self.call::<Option<Vec<u8>>>(conn, cmd).await {
            None => Lookup::Unavailable,
            Some(None) => Lookup::Miss,
            Some(Some(value)) => match Entry::decode(&value) {
                Some(entry) => Lookup::Hit(Arc::new(entry)),
                None => {
                    // Redis answered, with a value this version cannot read: a miss that a put
                    // will overwrite; Redis itself is healthy, so no back-off.
                    Counters::bump(&self.shared.counters.errors);
                    Lookup::Miss
                }
            },
        }
    }

    async fn put(&self, key: &Key, entry: Arc<Entry>, ttl: Duration) -> bool {
        let ttl_ms = duration_ms(ttl);
        if ttl_ms == 0 || entry.body.len() > MAX_BODY {
            Counters::bump(&self.shared.counters.rejected);
            return false;
        }
        if !self.admit() {
            return false;
        }
        let Some(conn) = self.connection() else {
            return false;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.redis_key(key))
            .arg(entry.encode())
            .arg("PX")
            .arg(ttl_ms);
        self.call::<()>(conn, cmd).await.is_some()
    }

    fn stats(&self) -> StoreStats {
        RedisStore::stats(self)
    }
}
