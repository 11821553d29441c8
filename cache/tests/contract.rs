//! One suite of `Store` contract tests, run against the memory store and against the Redis store on
//! a real `redis-server`: what the proxy may rely on whichever store a route names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use leaky_cache::{CachedUsage, Entry, Key, Lookup, MemoryStore, RedisStore, Store};
use leaky_limit::redis_server::RedisServer;
use std::sync::Arc;
use std::time::Duration;

const TTL: Duration = Duration::from_secs(60);

fn entry(body: &'static [u8], model: Option<&str>) -> Arc<Entry> {
    Arc::new(Entry {
        status: 200,
        content_type: "text/event-stream".into(),
        body: Bytes::from_static(body),
        stored_at_ms: 1_715_943_598_000,
        provider: "gemini".into(),
        served_model: model.map(str::to_owned),
        usage: Some(CachedUsage {
            prompt: 3,
            completion: 5,
        }),
    })
}

fn hit(found: Lookup) -> Arc<Entry> {
    match found {
        Lookup::Hit(entry) => entry,
        other => panic!("expected a hit, got {other:?}"),
    }
}

async fn contract(store: &dyn Store) {
    let (a, b) = (Key([1; 32]), Key([2; 32]));
    assert!(matches!(store.get(&a).await, Lookup::Miss));

    let first = entry(
        b"data: {\"x\":1}\n\ndata: [DONE]\n\n",
        Some("gemini-2.0-flash"),
    );
    assert!(store.put(&a, first.clone(), TTL).await);
    assert_eq!(*hit(store.get(&a).await), *first);
    assert!(
        matches!(store.get(&b).await, Lookup::Miss),
        "keys are exact"
    );

    let second = entry(b"data: {\"x\":2}\n\n", None);
    assert!(store.put(&a, second.clone(), TTL).await);
    assert_eq!(*hit(store.get(&a).await), *second, "a put replaces");

    assert!(
        !store.put(&b, first, Duration::ZERO).await,
        "no TTL, not stored"
    );
    assert!(matches!(store.get(&b).await, Lookup::Miss));
    let stats = store.stats();
    assert_eq!((stats.errors, stats.timeouts, stats.skipped), (0, 0, 0));
    assert_eq!(stats.rejected, 1);
}

#[tokio::test]
async fn the_memory_store_keeps_the_contract() {
    contract(&MemoryStore::new(1 << 20)).await;
}

#[tokio::test]
async fn the_redis_store_keeps_the_contract() {
    let server = RedisServer::spawn().unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
    let store = RedisStore::new(&server.url(), "contract", Duration::from_millis(200)).unwrap();
    assert!(store.ready(Duration::from_secs(5)).await);
    contract(&store).await;
}
