//! The exact-match LLM response cache (issue 18; `docs/cache.md`).
//!
//! A cacheable request (decided per route and tier by [`policy`]) is reduced to a [`Key`]: SHA-256
//! over its canonical form, scoped to the tenant ([`key`]). The proxy looks the key up in a [`Store`]
//! (the byte-bounded LRU [`memory`] store or the compressed [`redis_store`]), answers a hit from the
//! stored [`Entry`], and on a miss goes upstream through [`flight`] so that concurrent identical
//! misses make one upstream call. A complete answer is stored; a cut or errored one never is.
//!
//! The crate knows nothing of Pingora or the request context: everything it decides is a value, and
//! the stores never return an error (a store that fails or is slow is a miss, counted).

pub mod key;
pub mod policy;

pub use key::{canonical_json, request_key, KeyParts, Tenant};
pub use policy::{BypassReason, CachePolicy, Decision, RequestFacts};

mod codec;
pub mod flight;
pub mod memory;
pub mod redis_store;
mod stats;

pub use codec::MAX_BODY;
pub use flight::{Flights, Follower, Join, Leader};
pub use memory::MemoryStore;
pub use redis_store::{RedisStore, RedisStoreError};
pub use stats::{system_clock, Clock, ManualClock, StoreStats};

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// The cache key of one request: SHA-256 of its canonical form and its tenant scope.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Lower-case hex, 64 characters (the Redis key's suffix, log lines).
    pub fn hex(&self) -> String {
        use std::fmt::Write as _;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

/// Tokens of the answer when it was first served (the usage replayed hits are metered against).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CachedUsage {
    pub prompt: u64,
    pub completion: u64,
}

/// One stored answer: what the upstream sent for a request, as it arrived.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Entry {
    /// The upstream's status (only successes are stored).
    pub status: u16,
    /// The upstream's `content-type` (`application/json`, `text/event-stream`, ...).
    pub content_type: String,
    /// The upstream's body bytes as received, before the gateway's own rewrites (e.g. stripping a
    /// usage chunk the client did not ask for): a hit replays them through the request's meter.
    pub body: Bytes,
    /// When it was stored, unix milliseconds (the `Age` of a hit).
    pub stored_at_ms: u64,
    /// The provider that answered.
    pub provider: String,
    /// The model that answered, when a fallback did.
    pub served_model: Option<String>,
    /// The usage the live answer settled with.
    pub usage: Option<CachedUsage>,
}

impl Entry {
    /// Bytes the entry takes in a store (what byte budgets count).
    pub fn weight(&self) -> usize {
        self.body.len()
            + self.content_type.len()
            + self.provider.len()
            + self.served_model.as_ref().map_or(0, String::len)
            + 64
    }
}

/// What a lookup found.
#[derive(Clone, Debug)]
pub enum Lookup {
    Hit(Arc<Entry>),
    Miss,
    /// The store failed or did not answer within its timeout: served as a miss, counted apart.
    Unavailable,
}

/// Where entries live. Implementations never return errors and never block longer than their
/// timeout: a failing store is a miss.
#[async_trait]
pub trait Store: Send + Sync {
    /// One lookup (one round trip for a remote store).
    async fn get(&self, key: &Key) -> Lookup;
    /// Stores `entry` for `ttl`; returns whether it was stored.
    async fn put(&self, key: &Key, entry: Arc<Entry>, ttl: Duration) -> bool;
    /// A snapshot of the store's counters and gauges (rendered as metrics by the proxy).
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}
