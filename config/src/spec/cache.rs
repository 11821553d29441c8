//! The response cache as written: the top-level `cache:` (where entries live) and a route's `cache:`
//! (whether and how that route's answers are cached). `validate::cache` turns them into
//! `model::cache`. A route without `cache:` is never cached.
//!
//! ```yaml
//! cache:
//!   store: memory                               # routes' default store
//!   memory: { max_bytes: 67108864 }            # this process's LRU, bounded by bytes
//!   redis: { url: "${REDIS_URL}", timeout_ms: 20, key_prefix: "leaky:cache" }
//! routes:
//!   - name: v1
//!     cache:
//!       store: memory                           # or redis (needs `cache.redis`); default cache.store
//!       ttl_seconds: 300
//!       tiers: [enterprise]                     # absent: every tier
//!       scope: org                              # org | key | user
//!       temperature: never                      # never | seeded | always
//!       max_entry_bytes: 1048576
//!       charge: 0.0                             # share of the original tokens a hit consumes
//!       wait_ms: 30000                          # how long an identical miss waits for the first
//! ```

use crate::common::{CacheScope, CacheStoreKind, CacheTemperature};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where cached answers live; routes opt in with their own `cache:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// The store of routes whose `cache:` names none: `memory` (default) or `redis`. An environment
    /// overlay switches every route to a shared Redis here (overlays replace `routes` whole).
    #[serde(default)]
    pub store: CacheStoreKind,
    /// The in-process store (used by routes with `store: memory`).
    #[serde(default)]
    pub memory: CacheMemorySpec,
    /// The shared store (needed by routes with `store: redis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<CacheRedisSpec>,
}

/// This process's LRU of answers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheMemorySpec {
    /// Budget of all entries together in bytes (default 64 MiB); the least recently used go first.
    #[serde(default = "default_memory_max_bytes")]
    #[schemars(range(min = 1))]
    pub max_bytes: u64,
}

impl Default for CacheMemorySpec {
    fn default() -> Self {
        CacheMemorySpec {
            max_bytes: default_memory_max_bytes(),
        }
    }
}

/// The Redis that `store: redis` routes share (it may be the limiter's Redis or another).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheRedisSpec {
    /// `redis://host:port[/db]` or `rediss://...`; `${VAR}` interpolation applies.
    pub url: String,
    /// Longest a lookup or a store may take, 1–1000 ms; past it the lookup is a miss (counted).
    #[serde(default = "default_redis_timeout_ms")]
    #[schemars(range(min = 1, max = 1000))]
    pub timeout_ms: u64,
    /// Prefix of every cache key (`<prefix>:<sha256 hex>`).
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

/// A route's response cache.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheSpec {
    /// `memory` (this process) or `redis` (shared by replicas; needs the top-level `cache.redis`).
    /// Default: the top-level `cache.store`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<CacheStoreKind>,
    /// How long an answer is served from the cache, in seconds (1 to 2592000, 30 days).
    #[schemars(range(min = 1, max = 2592000))]
    pub ttl_seconds: u64,
    /// Tiers whose requests are cached; absent or empty: every tier.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<String>,
    /// Who shares answers: `org` (default; a principal without an org shares with its own key only),
    /// `key` or `user` (a user within the org).
    #[serde(default)]
    pub scope: CacheScope,
    /// Which requests with sampling randomness are cached: `never` (default: only `temperature: 0`),
    /// `seeded` (also those with a `seed`) or `always`.
    #[serde(default)]
    pub temperature: CacheTemperature,
    /// Largest answer stored, in bytes (default 1 MiB); a larger one is served but not stored.
    #[serde(default = "default_max_entry_bytes")]
    #[schemars(range(min = 1))]
    pub max_entry_bytes: u64,
    /// Share of the original answer's tokens a hit consumes from token limits and quotas, 0.0–1.0
    /// (default 0: free). A hit always counts against request-rate limits.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub charge: f64,
    /// How long a request waits for an identical one already in flight upstream before it goes
    /// upstream itself, in milliseconds (default 30000; at most the route's `timeouts.total_ms`).
    #[serde(default = "default_wait_ms")]
    pub wait_ms: u64,
}

fn default_memory_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_redis_timeout_ms() -> u64 {
    20
}
fn default_key_prefix() -> String {
    "leaky:cache".into()
}
fn default_max_entry_bytes() -> u64 {
    1024 * 1024
}
fn default_wait_ms() -> u64 {
    30_000
}
