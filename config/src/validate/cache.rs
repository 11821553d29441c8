//! `cache:` and a route's `cache:` → `model::cache`: the Redis URL and timeout, the byte budgets,
//! the TTL, the tiers, the charge and the single-flight wait, each error at its own path.

use super::Check;
use crate::model::cache::{Cache, CacheRedis, CacheStoreKind, RouteCache};
use crate::model::{Tier, Timeouts};
use crate::spec::{CacheRedisSpec, CacheSpec, RouteCacheSpec, RouteSpec};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest TTL a route may set (30 days): past it an answer is stale in any sense of the word.
pub const MAX_TTL_SECONDS: u64 = 30 * 86_400;
/// Longest a Redis lookup may take before it counts as a miss.
pub const MAX_REDIS_TIMEOUT_MS: u64 = 1_000;

/// The top-level section; problems are recorded (and the Redis left out).
pub(crate) fn cache(c: &mut Check<'_>, spec: &CacheSpec) -> Cache {
    if spec.store == CacheStoreKind::Redis && spec.redis.is_none() {
        c.err(
            "cache.store",
            "`store: redis` needs `cache.redis` (url, timeout_ms, key_prefix)",
        );
    }
    if spec.memory.max_bytes == 0 {
        c.err("cache.memory.max_bytes", "`max_bytes` must be at least 1");
    }
    Cache {
        memory_max_bytes: spec.memory.max_bytes,
        redis: spec.redis.as_ref().and_then(|r| redis(c, r)),
    }
}

fn redis(c: &mut Check<'_>, r: &CacheRedisSpec) -> Option<CacheRedis> {
    let before = c.error_count();
    let url = c.interpolated("cache.redis.url", &r.url);
    if let Some(url) = &url {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            // The value is not repeated: an interpolated URL may carry a password.
            c.err(
                "cache.redis.url",
                "`url` is not a Redis URL (write redis://host:port[/db] or rediss://...)",
            );
        }
    }
    if !(1..=MAX_REDIS_TIMEOUT_MS).contains(&r.timeout_ms) {
        c.err(
            "cache.redis.timeout_ms",
            format!(
                "`timeout_ms` must be between 1 and {MAX_REDIS_TIMEOUT_MS}, not {}",
                r.timeout_ms
            ),
        );
    }
    if r.key_prefix.is_empty() {
        c.err("cache.redis.key_prefix", "`key_prefix` must not be empty");
    }
    (c.error_count() == before).then(|| CacheRedis {
        url: url.unwrap_or_default(),
        timeout: Duration::from_millis(r.timeout_ms),
        key_prefix: r.key_prefix.clone(),
    })
}

/// The route's `cache:`: `Some(None)` when it has none, `None` when it is in error.
pub(crate) fn of_route(
    c: &mut Check<'_>,
    route: &str,
    spec: &RouteSpec,
    top: &CacheSpec,
    tiers: &BTreeMap<String, Tier>,
    timeouts: &Timeouts,
) -> Option<Option<RouteCache>> {
    let Some(s) = &spec.cache else {
        return Some(None);
    };
    let ctx = RouteContext {
        tiers,
        top,
        total_timeout: timeouts.total,
    };
    route_cache(c, route, s, &ctx).map(Some)
}

/// What a route's cache is checked against besides its own fields.
struct RouteContext<'a> {
    tiers: &'a BTreeMap<String, Tier>,
    top: &'a CacheSpec,
    /// The route's `timeouts.total`: nobody waits for a flight longer than the flight may take.
    total_timeout: Duration,
}

/// The `cache:` of the route at `route` (`routes[i]`); `None` when anything is in error.
fn route_cache(
    c: &mut Check<'_>,
    route: &str,
    s: &RouteCacheSpec,
    ctx: &RouteContext<'_>,
) -> Option<RouteCache> {
    let path = &format!("{route}.cache");
    let before = c.error_count();
    let store = s.store.unwrap_or(ctx.top.store);
    // A default inherited from `cache.store` is checked (and reported) there.
    if s.store == Some(CacheStoreKind::Redis) && ctx.top.redis.is_none() {
        c.err(
            &format!("{path}.store"),
            "`store: redis` needs the top-level `cache.redis` (url, timeout_ms, key_prefix)",
        );
    }
    if !(1..=MAX_TTL_SECONDS).contains(&s.ttl_seconds) {
        c.err(
            &format!("{path}.ttl_seconds"),
            format!(
                "`ttl_seconds` must be between 1 and {MAX_TTL_SECONDS} (30 days), not {}",
                s.ttl_seconds
            ),
        );
    }
    route_tiers(c, path, &s.tiers, ctx.tiers);
    route_sizes(c, path, s, store, ctx);
    (c.error_count() == before).then(|| RouteCache {
        store,
        ttl: Duration::from_secs(s.ttl_seconds),
        tiers: s.tiers.clone(),
        scope: s.scope,
        temperature: s.temperature,
        max_entry_bytes: s.max_entry_bytes,
        charge: s.charge,
        wait: Duration::from_millis(s.wait_ms),
    })
}

fn route_tiers(c: &mut Check<'_>, path: &str, names: &[String], tiers: &BTreeMap<String, Tier>) {
    for (i, t) in names.iter().enumerate() {
        if !tiers.contains_key(t) {
            let known: Vec<&str> = tiers.keys().map(String::as_str).collect();
            c.err(
                &format!("{path}.tiers[{i}]"),
                format!("unknown tier `{t}` (defined: {})", known.join(", ")),
            );
        }
    }
}

/// `max_entry_bytes`, `charge` and `wait_ms`.
fn route_sizes(
    c: &mut Check<'_>,
    path: &str,
    s: &RouteCacheSpec,
    store: CacheStoreKind,
    ctx: &RouteContext<'_>,
) {
    if s.max_entry_bytes == 0 {
        c.err(
            &format!("{path}.max_entry_bytes"),
            "`max_entry_bytes` must be at least 1",
        );
    } else if store == CacheStoreKind::Memory
        // A zero budget is reported at `cache.memory.max_bytes`, once.
        && ctx.top.memory.max_bytes > 0
        && s.max_entry_bytes > ctx.top.memory.max_bytes
    {
        c.err(
            &format!("{path}.max_entry_bytes"),
            format!(
                "`max_entry_bytes` ({}) is larger than the whole memory store (`cache.memory.max_bytes`: {})",
                s.max_entry_bytes, ctx.top.memory.max_bytes
            ),
        );
    }
    if !(0.0..=1.0).contains(&s.charge) {
        c.err(
            &format!("{path}.charge"),
            format!(
                "`charge` is the share of the original tokens a hit consumes: between 0.0 and 1.0, not {}",
                s.charge
            ),
        );
    }
    let total_ms = u64::try_from(ctx.total_timeout.as_millis()).unwrap_or(u64::MAX);
    if s.wait_ms > total_ms {
        c.err(
            &format!("{path}.wait_ms"),
            format!(
                "`wait_ms` ({}) must not exceed the route's total timeout ({total_ms} ms)",
                s.wait_ms
            ),
        );
    }
}
