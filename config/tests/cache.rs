//! `cache:` and a route's `cache:` end to end through the loader: every field lands in the model,
//! the defaults are the documented ones, a route's store defaults to `cache.store`, and the shipped
//! files cache what DESIGN.md says (the quickstart's `/v1` route in memory, the stack's in Redis).
//! Each invalid field has its own fixture in `invalid/cache-*.yaml`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leaky_config::{CacheScope, CacheStoreKind, CacheTemperature, Config, RouteCache};
use std::path::Path;
use std::time::Duration;

const BASE: &str = "providers:
  openai:
    base_url: http://127.0.0.1:18001
tiers:
  free: {}
  enterprise: {}
routes:
  - name: v1
    prefix: /v1
    upstream: { provider: openai }
";

fn load(text: &str) -> Config {
    let env = |k: &str| (k == "CACHE_REDIS").then(|| "redis://10.0.0.7:6380/2".to_string());
    leaky_config::load_text(Path::new("pushed"), text, Path::new("."), &env)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn route_cache(config: &Config, name: &str) -> Option<RouteCache> {
    let route = config.routes.iter().find(|r| r.name == name).unwrap();
    route.cache.clone()
}

#[test]
fn every_field_lands_in_the_model() {
    let config = load(&format!(
        "{BASE}    cache:
      store: redis
      ttl_seconds: 90
      tiers: [enterprise]
      scope: user
      temperature: seeded
      max_entry_bytes: 4096
      charge: 0.25
      wait_ms: 1500
cache:
  memory: {{ max_bytes: 1000000 }}
  redis: {{ url: \"${{CACHE_REDIS}}\", timeout_ms: 35, key_prefix: \"t:cache\" }}
"
    ));
    assert_eq!(config.cache.memory_max_bytes, 1_000_000);
    let redis = config.cache.redis.as_ref().unwrap();
    assert_eq!(redis.url, "redis://10.0.0.7:6380/2", "interpolated");
    assert_eq!(redis.timeout, Duration::from_millis(35));
    assert_eq!(redis.key_prefix, "t:cache");
    let rc = route_cache(&config, "v1").unwrap();
    assert_eq!(
        rc,
        RouteCache {
            store: CacheStoreKind::Redis,
            ttl: Duration::from_secs(90),
            tiers: vec!["enterprise".into()],
            scope: CacheScope::User,
            temperature: CacheTemperature::Seeded,
            max_entry_bytes: 4096,
            charge: 0.25,
            wait: Duration::from_millis(1500),
        }
    );
}

#[test]
fn defaults_are_the_documented_ones() {
    let config = load(&format!("{BASE}    cache: {{ ttl_seconds: 60 }}\n"));
    assert_eq!(config.cache.memory_max_bytes, 64 * 1024 * 1024);
    assert!(config.cache.redis.is_none());
    let rc = route_cache(&config, "v1").unwrap();
    assert_eq!(rc.store, CacheStoreKind::Memory);
    assert!(rc.tiers.is_empty(), "every tier");
    assert_eq!(rc.scope, CacheScope::Org);
    assert_eq!(rc.temperature, CacheTemperature::Never);
    assert_eq!(rc.max_entry_bytes, 1024 * 1024);
    assert_eq!(rc.charge, 0.0);
    assert_eq!(rc.wait, Duration::from_millis(30_000));
    let redis = load(&format!(
        "{BASE}cache: {{ redis: {{ url: \"redis://127.0.0.1:6379\" }} }}\n"
    ));
    let r = redis.cache.redis.unwrap();
    assert_eq!(
        (r.timeout, r.key_prefix.as_str()),
        (Duration::from_millis(20), "leaky:cache")
    );
}

#[test]
fn a_route_without_cache_is_not_cached() {
    let config = load(BASE);
    assert!(route_cache(&config, "v1").is_none());
}

#[test]
fn a_route_store_defaults_to_the_top_level_store_and_can_override_it() {
    let config = load(&format!(
        "{BASE}    cache: {{ ttl_seconds: 60 }}
  - name: local
    prefix: /local
    upstream: {{ provider: openai }}
    cache: {{ ttl_seconds: 60, store: memory }}
cache:
  store: redis
  redis: {{ url: \"redis://127.0.0.1:6379\" }}
"
    ));
    assert_eq!(
        route_cache(&config, "v1").unwrap().store,
        CacheStoreKind::Redis
    );
    assert_eq!(
        route_cache(&config, "local").unwrap().store,
        CacheStoreKind::Memory
    );
}

#[test]
fn the_charge_rounds_up_and_never_exceeds_the_original() {
    let config = load(&format!(
        "{BASE}    cache: {{ ttl_seconds: 60, charge: 0.1 }}\n"
    ));
    let rc = route_cache(&config, "v1").unwrap();
    assert_eq!(rc.charged_tokens(0), 0);
    assert_eq!(rc.charged_tokens(1), 1);
    assert_eq!(rc.charged_tokens(100), 10);
    assert_eq!(rc.charged_tokens(101), 11);
    let full = RouteCache {
        charge: 1.0,
        ..rc.clone()
    };
    assert_eq!(full.charged_tokens(12_345), 12_345);
    let free = RouteCache { charge: 0.0, ..rc };
    assert_eq!(free.charged_tokens(12_345), 0);
}

fn shipped(name: &str) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    leaky_config::load_with_env(&path, &|_| None).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn the_quickstart_caches_the_enterprise_tiers_greedy_requests_in_memory_for_five_minutes() {
    let dev = shipped("dev.yaml");
    let rc = route_cache(&dev, "v1").unwrap();
    assert_eq!(rc.store, CacheStoreKind::Memory);
    assert_eq!(rc.ttl, Duration::from_secs(300));
    assert_eq!(rc.tiers, ["enterprise"]);
    assert_eq!(rc.temperature, CacheTemperature::Never);
    assert_eq!(rc.scope, CacheScope::Org);
    assert!(dev.routes.iter().filter(|r| r.cache.is_some()).count() == 1);
}

#[test]
fn the_stack_shares_answers_between_its_proxies_in_redis() {
    let stack = shipped("stack.yaml");
    let rc = route_cache(&stack, "v1").unwrap();
    assert_eq!(rc.store, CacheStoreKind::Redis);
    assert_eq!(rc.ttl, Duration::from_secs(300));
    let redis = stack.cache.redis.unwrap();
    assert_eq!(redis.url, "redis://127.0.0.1:16379", "the stack's Redis");
}
