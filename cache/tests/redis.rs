//! The Redis store on a real `redis-server` (spawned per test on a free loopback port): round trip,
//! TTL and compression, foreign values, a killed server (fast `Unavailable`, back-off skip, recovery),
//! a paused server and a listener that never answers (bounded by the timeout), and `maxmemory`
//! eviction. `LEAKY_TEST_REDIS_URL` is not used: tests kill, pause and reconfigure their server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use leaky_cache::{CachedUsage, Entry, Key, Lookup, ManualClock, RedisStore, Store};
use leaky_limit::redis_server::RedisServer;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_millis(150);
const TTL: Duration = Duration::from_secs(60);

fn key(n: u32) -> Key {
    let mut k = [0xAB; 32];
    k[..4].copy_from_slice(&n.to_le_bytes());
    Key(k)
}

fn entry(body: Vec<u8>) -> Arc<Entry> {
    Arc::new(Entry {
        status: 200,
        content_type: "application/json".into(),
        body: Bytes::from(body),
        stored_at_ms: 1_715_943_598_000,
        provider: "openai".into(),
        served_model: Some("gpt-4o-mini".into()),
        usage: Some(CachedUsage {
            prompt: 11,
            completion: 22,
        }),
    })
}

fn repetitive_json(len: usize) -> Vec<u8> {
    let mut s = String::from("{\"choices\":[");
    while s.len() < len {
        s.push_str("{\"message\":{\"role\":\"assistant\",\"content\":\"same again\"}},");
    }
    s.push_str("{}]}");
    s.into_bytes()
}

/// Bytes zstd cannot shrink (xorshift noise).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn server() -> RedisServer {
    RedisServer::spawn().unwrap_or_else(|e| panic!("cannot start redis-server: {e}"))
}

async fn connected_store(server: &RedisServer) -> RedisStore {
    let store = RedisStore::new(&server.url(), "test:cache", TIMEOUT).unwrap();
    assert!(store.ready(Duration::from_secs(5)).await, "store connects");
    store
}

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(server.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

#[tokio::test]
async fn a_put_entry_round_trips_with_its_ttl_and_a_compressed_value() {
    let server = server();
    let store = connected_store(&server).await;
    let stored = entry(repetitive_json(8 * 1024));
    assert!(matches!(store.get(&key(1)).await, Lookup::Miss));
    assert!(store.put(&key(1), stored.clone(), TTL).await);
    match store.get(&key(1)).await {
        Lookup::Hit(found) => assert_eq!(*found, *stored),
        other => panic!("expected a hit, got {other:?}"),
    }

    let mut conn = raw(&server).await;
    let redis_key = store.redis_key(&key(1));
    assert!(redis_key.starts_with("test:cache:"), "{redis_key}");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&redis_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((59_000..=60_000).contains(&pttl), "PTTL {pttl}");
    let size: usize = redis::cmd("STRLEN")
        .arg(&redis_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        size < stored.body.len() / 4,
        "{size} bytes stored for {}",
        stored.body.len()
    );
    let stats = store.stats();
    assert_eq!((stats.errors, stats.timeouts, stats.skipped), (0, 0, 0));
}

#[tokio::test]
async fn a_foreign_value_is_a_miss_counted_as_an_error_without_a_back_off() {
    let server = server();
    let store = connected_store(&server).await;
    let mut conn = raw(&server).await;
    let _: () = redis::cmd("SET")
        .arg(store.redis_key(&key(5)))
        .arg("{\"not\":\"ours\"}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(store.get(&key(5)).await, Lookup::Miss));
    assert_eq!(store.stats().errors, 1);
    // Redis is healthy: the next call goes to it (a put overwrites the foreign value).
    assert!(store.put(&key(5), entry(b"{}".to_vec()), TTL).await);
    assert!(matches!(store.get(&key(5)).await, Lookup::Hit(_)));
    assert_eq!(store.stats().skipped, 0);
}

#[tokio::test]
async fn a_killed_redis_is_unavailable_fast_then_skipped_during_the_back_off_then_probed() {
    let mut server = server();
    let clock = ManualClock::new(1_000_000);
    let store = RedisStore::new(&server.url(), "test:cache", TIMEOUT)
        .unwrap()
        .with_backoff(Duration::from_secs(1))
        .with_clock(clock.clock());
    assert!(store.ready(Duration::from_secs(5)).await);
    assert!(store.put(&key(1), entry(b"{}".to_vec()), TTL).await);
    server.kill();

    let start = Instant::now();
    assert!(matches!(store.get(&key(1)).await, Lookup::Unavailable));
    assert!(
        start.elapsed() < TIMEOUT + Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    let failed = store.stats();
    assert_eq!(failed.errors + failed.timeouts, 1, "{failed:?}");

    // Within the window: answered at once, without a round trip.
    let start = Instant::now();
    for _ in 0..100 {
        assert!(matches!(store.get(&key(1)).await, Lookup::Unavailable));
    }
    assert!(!store.put(&key(2), entry(b"{}".to_vec()), TTL).await);
    assert!(
        start.elapsed() < Duration::from_millis(50),
        "{:?}",
        start.elapsed()
    );
    let skipping = store.stats();
    assert_eq!(skipping.skipped, 101);
    assert_eq!(
        skipping.errors + skipping.timeouts,
        1,
        "no round trip while skipping"
    );

    // After the window one caller probes; once Redis is back (empty: no persistence) it answers.
    server.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let recovered = loop {
        clock.advance(1_001);
        match store.get(&key(1)).await {
            Lookup::Miss => break true,
            _ if Instant::now() > deadline => break false,
            // Real time for the reconnection to happen; the proof is the Miss, not the sleep.
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert!(recovered, "{:?}", store.stats());
    assert!(store.put(&key(1), entry(b"{}".to_vec()), TTL).await);
    assert!(matches!(store.get(&key(1)).await, Lookup::Hit(_)));
}

#[tokio::test]
async fn a_paused_redis_is_unavailable_after_the_timeout_then_skipped() {
    let server = server();
    let store = connected_store(&server).await;
    let mut admin = raw(&server).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();

    let start = Instant::now();
    assert!(matches!(store.get(&key(1)).await, Lookup::Unavailable));
    let elapsed = start.elapsed();
    assert!(elapsed >= TIMEOUT, "{elapsed:?}");
    assert!(
        elapsed < TIMEOUT + Duration::from_millis(200),
        "{elapsed:?}"
    );
    assert_eq!(store.stats().timeouts, 1);

    let start = Instant::now();
    assert!(matches!(store.get(&key(1)).await, Lookup::Unavailable));
    assert!(
        start.elapsed() < Duration::from_millis(20),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(store.stats().skipped, 1);
}

#[tokio::test]
async fn a_listener_that_never_answers_costs_at_most_the_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and holds every connection, never writing a byte.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let store = RedisStore::new(&format!("redis://127.0.0.1:{port}/"), "t", TIMEOUT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Until the (background) connect gives up, then through the back-off: every lookup is
    // `Unavailable` and none waits longer than the timeout.
    while store.stats().timeouts == 0 && Instant::now() < deadline {
        let start = Instant::now();
        assert!(matches!(store.get(&key(1)).await, Lookup::Unavailable));
        assert!(
            start.elapsed() < TIMEOUT + Duration::from_millis(100),
            "{:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let stats = store.stats();
    assert!(stats.timeouts >= 1, "{stats:?}");
    assert!(stats.skipped >= 1, "{stats:?}");
    assert!(!store.ready(Duration::from_millis(10)).await);
}

#[tokio::test]
async fn under_maxmemory_with_allkeys_lru_redis_evicts_old_entries_which_read_as_misses() {
    let server = server();
    let store = connected_store(&server).await;
    let mut admin = raw(&server).await;
    for (name, value) in [("maxmemory", "1mb"), ("maxmemory-policy", "allkeys-lru")] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut admin)
            .await
            .unwrap();
    }
    // ~1.6 MB of incompressible entries into a 1 MB server.
    for n in 0..200 {
        assert!(
            store
                .put(&key(n), entry(noise(8 * 1024, u64::from(n) + 1)), TTL)
                .await
        );
    }
    assert!(matches!(store.get(&key(199)).await, Lookup::Hit(_)));
    let mut evicted = 0;
    for n in 0..20 {
        if matches!(store.get(&key(n)).await, Lookup::Miss) {
            evicted += 1;
        }
    }
    assert_eq!(evicted, 20, "the oldest entries were evicted");
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(!info.contains("evicted_keys:0\r"), "{info}");
    let stats = store.stats();
    assert_eq!((stats.errors, stats.timeouts), (0, 0));
}

#[tokio::test]
async fn a_store_built_while_redis_is_down_is_unavailable_then_connects_when_it_is_up() {
    let mut server = server();
    server.kill();
    let store = RedisStore::new(&server.url(), "test:cache", TIMEOUT).unwrap();
    let start = Instant::now();
    assert!(matches!(store.get(&key(1)).await, Lookup::Unavailable));
    assert!(!store.put(&key(1), entry(b"{}".to_vec()), TTL).await);
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );

    server.restart().unwrap();
    assert!(store.ready(Duration::from_secs(5)).await);
    assert!(store.put(&key(1), entry(b"{}".to_vec()), TTL).await);
    assert!(matches!(store.get(&key(1)).await, Lookup::Hit(_)));
}

#[test]
fn a_malformed_url_is_refused_at_construction() {
    let err = RedisStore::new("http://nope", "p", TIMEOUT).unwrap_err();
    assert!(err.to_string().contains("invalid Redis URL"), "{err}");
}
