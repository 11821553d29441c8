//! The memory store: LRU eviction under a byte budget, TTL on an injected clock, refusals, gauges.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use leaky_cache::{Entry, Key, Lookup, ManualClock, MemoryStore, Store};
use std::sync::Arc;
use std::time::Duration;

const T0: u64 = 1_715_943_598_000;
const TTL: Duration = Duration::from_secs(60);

fn key(n: u8) -> Key {
    Key([n; 32])
}

/// An entry whose [`Entry::weight`] is exactly `weight` (at least 81).
fn entry_weighing(weight: usize) -> Arc<Entry> {
    let entry = Entry {
        status: 200,
        content_type: "application/json".into(),
        body: Bytes::from(vec![b'x'; weight - 81]),
        stored_at_ms: T0,
        provider: "p".into(),
        served_model: None,
        usage: None,
    };
    assert_eq!(entry.weight(), weight);
    Arc::new(entry)
}

fn is_hit(found: &Lookup) -> bool {
    matches!(found, Lookup::Hit(_))
}

#[tokio::test]
async fn under_a_byte_budget_the_least_recently_used_entry_goes_and_a_recently_read_one_stays() {
    let store = MemoryStore::new(3_000);
    for n in 1..=3 {
        assert!(store.put(&key(n), entry_weighing(1_000), TTL).await);
        store.run_pending_tasks();
    }
    assert_eq!(store.stats().bytes, 3_000);
    // Reading 1 makes 2 the least recently used.
    assert!(is_hit(&store.get(&key(1)).await));
    store.run_pending_tasks();
    assert!(store.put(&key(4), entry_weighing(1_000), TTL).await);
    store.run_pending_tasks();

    assert!(
        matches!(store.get(&key(2)).await, Lookup::Miss),
        "LRU evicted"
    );
    for n in [1, 3, 4] {
        assert!(is_hit(&store.get(&key(n)).await), "entry {n} kept");
    }
    let stats = store.stats();
    assert_eq!((stats.evictions, stats.expirations), (1, 0));
    assert_eq!((stats.bytes, stats.entries), (3_000, 3));
}

#[tokio::test]
async fn a_large_entry_evicts_as_many_old_ones_as_it_needs() {
    let store = MemoryStore::new(4_000);
    for n in 1..=4 {
        store.put(&key(n), entry_weighing(1_000), TTL).await;
        store.run_pending_tasks();
    }
    assert!(store.put(&key(9), entry_weighing(2_500), TTL).await);
    store.run_pending_tasks();
    let kept: Vec<u8> = [1, 2, 3, 4, 9]
        .into_iter()
        .filter(|n| store.contains(&key(*n)))
        .collect();
    assert_eq!(kept, vec![4, 9]);
    assert_eq!(store.stats().evictions, 3);
}

#[tokio::test]
async fn an_entry_over_the_whole_budget_or_with_no_ttl_is_refused() {
    let store = MemoryStore::new(2_000);
    assert!(!store.put(&key(1), entry_weighing(2_001), TTL).await);
    assert!(
        !store
            .put(&key(2), entry_weighing(500), Duration::ZERO)
            .await
    );
    assert!(store.put(&key(3), entry_weighing(2_000), TTL).await);
    store.run_pending_tasks();
    assert!(matches!(store.get(&key(1)).await, Lookup::Miss));
    assert!(matches!(store.get(&key(2)).await, Lookup::Miss));
    assert!(is_hit(&store.get(&key(3)).await));
    assert_eq!(store.stats().rejected, 2);
}

#[tokio::test]
async fn an_entry_expires_at_its_ttl_on_the_injected_clock_and_is_counted_as_expired() {
    let clock = ManualClock::new(T0);
    let store = MemoryStore::with_clock(10_000, clock.clock());
    store
        .put(&key(1), entry_weighing(100), Duration::from_secs(10))
        .await;
    store
        .put(&key(2), entry_weighing(100), Duration::from_secs(20))
        .await;
    clock.advance(9_999);
    assert!(is_hit(&store.get(&key(1)).await));
    clock.advance(1);
    assert!(matches!(store.get(&key(1)).await, Lookup::Miss));
    assert!(is_hit(&store.get(&key(2)).await), "its own TTL");
    store.run_pending_tasks();
    let stats = store.stats();
    assert_eq!((stats.expirations, stats.evictions), (1, 0));
    assert_eq!((stats.entries, stats.bytes), (1, 100));
}

#[tokio::test]
async fn a_hit_is_the_stored_arc_and_clones_share_the_entries() {
    let store = MemoryStore::new(10_000);
    let stored = entry_weighing(200);
    let clone = store.clone();
    clone.put(&key(1), stored.clone(), TTL).await;
    match store.get(&key(1)).await {
        Lookup::Hit(found) => assert!(Arc::ptr_eq(&found, &stored)),
        other => panic!("expected a hit, got {other:?}"),
    }
    // A replaced entry is neither an eviction nor an expiration.
    store.put(&key(1), entry_weighing(300), TTL).await;
    store.run_pending_tasks();
    let stats = clone.stats();
    assert_eq!((stats.entries, stats.bytes), (1, 300));
    assert_eq!((stats.evictions, stats.expirations), (0, 0));
}
