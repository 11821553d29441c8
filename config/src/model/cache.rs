//! The validated response cache settings: the stores (`Cache`) and each route's policy
//! (`RouteCache`), from which `leaky_cache::CachePolicy` is built once per config version.

pub use crate::common::{CacheScope, CacheStoreKind, CacheTemperature};
use std::time::Duration;

/// Where cached answers live (the top-level `cache:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    /// Byte budget of the in-process LRU.
    pub memory_max_bytes: u64,
    /// The shared store, when configured.
    pub redis: Option<CacheRedis>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            memory_max_bytes: 64 * 1024 * 1024,
            redis: None,
        }
    }
}

/// A checked Redis for the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRedis {
    /// Interpolated, `redis://` or `rediss://`.
    pub url: String,
    /// Budget of one lookup or store.
    pub timeout: Duration,
    /// Non-empty; keys are `<key_prefix>:<sha256 hex>`.
    pub key_prefix: String,
}

/// A route's cache policy, checked: the tiers exist, `store: redis` has a Redis, `charge` is a share.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCache {
    pub store: CacheStoreKind,
    /// How long an entry is served; more than zero.
    pub ttl: Duration,
    /// Tiers whose requests are cached; empty: every tier.
    pub tiers: Vec<String>,
    pub scope: CacheScope,
    pub temperature: CacheTemperature,
    /// Largest answer stored, in bytes (at least 1).
    pub max_entry_bytes: u64,
    /// Share of the original tokens a hit consumes, 0.0–1.0.
    pub charge: f64,
    /// How long an identical miss waits for the one in flight (at most the route's total timeout).
    pub wait: Duration,
}

impl RouteCache {
    /// Tokens a hit consumes for an answer that originally used `tokens`: `charge` of them, rounded
    /// up so that any non-zero charge of a non-empty answer costs at least one token.
    pub fn charged_tokens(&self, tokens: u64) -> u64 {
        if self.charge <= 0.0 {
            return 0;
        }
        // f64 is exact to 2^53 tokens, far beyond any answer; the cast saturates rather than wraps.
        let charged = (tokens as f64 * self.charge).ceil();
        (charged as u64).min(tokens)
    }
}
