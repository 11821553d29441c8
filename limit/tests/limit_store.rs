//! One suite of store tests, run against `MemoryStore` and against `RedisStore` on a real Redis
//! (with the caller's clock, so time is controlled), plus Redis-only tests: keys and TTLs, the
//! server clock, and `Guarded` over a Redis that is killed mid-run and restarted.
//!
//! Redis: `LEAKY_TEST_REDIS_URL` when set (each test uses its own key prefix); otherwise each test
//! spawns a throwaway `redis-server` on a free port. Without `redis-server` the Redis tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leaky_limit::redis_server::RedisServer;
use leaky_limit::{
    Adjust, Algorithm, BreakerState, CalendarWindow, Charge, GuardOptions, GuardTimer, Guarded,
    MemoryStore, Nanos, OnStoreError, RedisClock, RedisOptions, RedisStore, Store, StoreError,
    Taken,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;
/// 2024-05-17T10:59:58Z: two seconds before an hour boundary.
const T0: Nanos = 1_715_943_598 * S;

struct Backend {
    store: Arc<dyn Store>,
    _server: Option<RedisServer>,
}

async fn memory() -> Backend {
    Backend {
        store: Arc::new(MemoryStore::new()),
        _server: None,
    }
}

static PREFIX: AtomicU64 = AtomicU64::new(0);

fn unique_prefix() -> String {
    format!(
        "test{}-{}",
        std::process::id(),
        PREFIX.fetch_add(1, Ordering::Relaxed)
    )
}

fn spawn_server() -> RedisServer {
    RedisServer::spawn().unwrap_or_else(|e| panic!("cannot start redis-server: {e}"))
}

/// A Redis URL (the env's, or a spawned server's) and the server to keep alive.
fn redis_url() -> (String, Option<RedisServer>) {
    match std::env::var("LEAKY_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let server = spawn_server();
            (server.url(), Some(server))
        }
    }
}

fn caller_clock(prefix: String) -> RedisOptions {
    RedisOptions {
        key_prefix: prefix,
        clock: RedisClock::Caller,
        ..RedisOptions::default()
    }
}

async fn redis() -> Backend {
    let (url, server) = redis_url();
    let store = RedisStore::connect(&url, caller_clock(unique_prefix()))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    Backend {
        store: Arc::new(store),
        _server: server,
    }
}

// ---- helpers ----

fn leaky(rate: u64, period_ns: u64, burst: u64) -> Algorithm {
    Algorithm::Leaky {
        rate,
        period_ns,
        burst,
        shape_max_wait_ns: None,
    }
}

fn token(capacity: u64, rate: u64, period_ns: u64) -> Algorithm {
    Algorithm::Token {
        capacity,
        rate,
        period_ns,
    }
}

fn hourly(limit: u64, soft: bool) -> Algorithm {
    Algorithm::Window {
        limit,
        window: CalendarWindow::Hour,
        tz: chrono_tz::Tz::UTC,
        soft,
    }
}

fn conc(limit: u64) -> Algorithm {
    Algorithm::Concurrency { limit }
}

fn ch(key: &str, algo: &Arc<Algorithm>, cost: u64) -> Charge {
    Charge {
        key: key.into(),
        algo: algo.clone(),
        cost,
        reserve: 0,
        on_error: OnStoreError::Local,
    }
}

fn adj(key: &str, algo: &Arc<Algorithm>, delta: i64) -> Adjust {
    Adjust {
        key: key.into(),
        algo: algo.clone(),
        delta,
    }
}

/// Takes and expects admission; returns the remaining count of each charge.
async fn admit(store: &dyn Store, now: Nanos, charges: &[Charge]) -> Vec<u64> {
    match store.take(now, charges).await.unwrap() {
        Taken::Admitted(a) => {
            assert_eq!(a.len(), charges.len());
            a.iter().map(|a| a.status.remaining).collect()
        }
        Taken::Denied { index, deny } => {
            panic!("{}: denied at {index}: {deny:?}", store.name())
        }
    }
}

/// Takes and expects a denial; returns (index, deny).
async fn deny(store: &dyn Store, now: Nanos, charges: &[Charge]) -> (usize, leaky_limit::Deny) {
    match store.take(now, charges).await.unwrap() {
        Taken::Denied { index, deny } => (index, deny),
        Taken::Admitted(a) => panic!("{}: admitted: {a:?}", store.name()),
    }
}

// ---- the shared suite ----

async fn leaky_burst_then_deny(store: Arc<dyn Store>) {
    let s = &*store;
    let a = Arc::new(leaky(10, S, 10));
    for i in 0..10 {
        assert_eq!(admit(s, T0, &[ch("k", &a, 1)]).await, vec![9 - i]);
    }
    let (index, d) = deny(s, T0, &[ch("k", &a, 1)]).await;
    assert_eq!(index, 0);
    assert_eq!(d.retry_after_ns, 100 * MS);
    assert!(!d.never_fits);
    assert_eq!(d.status.limit, 10);
    assert_eq!(d.status.remaining, 0);
    assert_eq!(d.status.reset_ns, S);
    // More than the burst can never fit.
    let (_, d) = deny(s, T0, &[ch("other", &a, 11)]).await;
    assert!(d.never_fits);
    assert_eq!(d.retry_after_ns, 0);
}

async fn leaky_refills_over_time(store: Arc<dyn Store>) {
    let s = &*store;
    let a = Arc::new(leaky(10, S, 10));
    admit(s, T0, &[ch("k", &a, 10)]).await;
    deny(s, T0 + 99 * MS, &[ch("k", &a, 1)]).await;
    assert_eq!(admit(s, T0 + 100 * MS, &[ch("k", &a, 1)]).await, vec![0]);
    let (_, d) = deny(s, T0 + 100 * MS, &[ch("k", &a, 1)]).await;
    assert_eq!(d.retry_after_ns, 100 * MS);
    // Half a second later five units drained.
    assert_eq!(admit(s, T0 + 600 * MS, &[ch("k", &a, 5)]).await, vec![0]);
    // Idle long enough: a whole burst again.
    assert_eq!(admit(s, T0 + 10 * S, &[ch("k", &a, 1)]).await, vec![9]);
}

async fn leaky_shaping_and_inexact_rates(store: Arc<dyn Store>) {
    let s = &*store;
    let shaped = Arc::new(Algorithm::Leaky {
        rate: 10,
        period_ns: S,
        burst: 2,
        shape_max_wait_ns: Some(300 * MS),
    });
    let mut delays = Vec::new();
    for _ in 0..5 {
        match s.take(T0, &[ch("shaped", &shaped, 1)]).await.unwrap() {
            Taken::Admitted(a) => delays.push(a[0].delay_ns / MS),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(delays, vec![0, 0, 100, 200, 300]);
    let (_, d) = deny(s, T0, &[ch("shaped", &shaped, 1)]).await;
    assert_eq!(d.retry_after_ns, 400 * MS);
    // 3 per second: a unit drains every 333 333 333.3 ns; neither store admits early.
    let third = Arc::new(leaky(3, S, 3));
    admit(s, T0, &[ch("third", &third, 3)]).await;
    deny(s, T0 + 333_333_000, &[ch("third", &third, 1)]).await;
    admit(s, T0 + 333_334_000, &[ch("third", &third, 1)]).await;
    let (_, d) = deny(s, T0 + 333_334_000, &[ch("third", &third, 1)]).await;
    // Memory is exact to the ns; Redis rounds up to the µs.
    assert!(
        (333_332_667..=333_333_000).contains(&d.retry_after_ns),
        "{d:?}"
    );
}

async fn token_bucket(store: Arc<dyn Store>) {
    let s = &*store;
    let a = Arc::new(token(5, 1, 200 * MS));
    assert_eq!(admit(s, T0, &[ch("k", &a, 5)]).await, vec![0]);
    let (_, d) = deny(s, T0, &[ch("k", &a, 1)]).await;
    assert_eq!(d.retry_after_ns, 200 * MS);
    assert_eq!(d.status.reset_ns, S);
    assert!(!d.never_fits);
    let (_, d) = deny(s, T0 + 100 * MS, &[ch("k", &a, 1)]).await;
    assert_eq!(d.retry_after_ns, 100 * MS);
    assert_eq!(admit(s, T0 + 200 * MS, &[ch("k", &a, 1)]).await, vec![0]);
    // Full again a second later; more than the capacity never fits.
    assert_eq!(admit(s, T0 + 2 * S, &[ch("k", &a, 5)]).await, vec![0]);
    let (_, d) = deny(s, T0 + 10 * S, &[ch("k", &a, 6)]).await;
    assert!(d.never_fits);
}

async fn all_or_nothing_across_two_buckets(store: Arc<dyn Store>) {
    let s = &*store;
    let wide = Arc::new(leaky(1, 3_600 * S, 5));
    let narrow = Arc::new(leaky(1, 3_600 * S, 1));
    let both = [ch("wide", &wide, 1), ch("narrow", &narrow, 1)];
    assert_eq!(admit(s, T0, &both).await, vec![4, 0]);
    let (index, d) = deny(s, T0, &both).await;
    assert_eq!(index, 1);
    assert_eq!(d.status.limit, 1);
    // The refused request did not charge `wide`: 4 units are still there, not 3.
    assert_eq!(admit(s, T0, &[ch("wide", &wide, 4)]).await, vec![0]);
    deny(s, T0, &[ch("wide", &wide, 1)]).await;
}

async fn same_key_twice_in_one_request(store: Arc<dyn Store>) {
    let s = &*store;
    let a = Arc::new(conc(3));
    let (index, _) = deny(s, T0, &[ch("k", &a, 2), ch("k", &a, 2)]).await;
    assert_eq!(index, 1);
    assert_eq!(
        admit(s, T0, &[ch("k", &a, 2), ch("k", &a, 1)]).await,
        vec![1, 0]
    );
}

async fn adjust_refund_and_overdraw(store: Arc<dyn Store>) {
    let s = &*store;
    // Refund: given-back tokens can be taken again, never above capacity.
    let t = Arc::new(token(10, 1, S));
    admit(s, T0, &[ch("t", &t, 10)]).await;
    s.adjust(T0, &[adj("t", &t, -4)]).await.unwrap();
    assert_eq!(admit(s, T0, &[ch("t", &t, 4)]).await, vec![0]);
    deny(s, T0, &[ch("t", &t, 1)]).await;
    s.adjust(T0, &[adj("fresh", &t, -5)]).await.unwrap();
    assert_eq!(admit(s, T0, &[ch("fresh", &t, 10)]).await, vec![0]);
    deny(s, T0, &[ch("fresh", &t, 1)]).await;

    // Overdraw: a leaky bucket remembers the debt ...
    let l = Arc::new(leaky(1, S, 10));
    admit(s, T0, &[ch("l", &l, 10)]).await;
    s.adjust(T0, &[adj("l", &l, 5)]).await.unwrap();
    let (_, d) = deny(s, T0, &[ch("l", &l, 1)]).await;
    assert_eq!(d.retry_after_ns, 6 * S);
    admit(s, T0 + 6 * S, &[ch("l", &l, 1)]).await;
    // ... a token bucket clamps at empty.
    let t2 = Arc::new(token(10, 1, S));
    admit(s, T0, &[ch("t2", &t2, 10)]).await;
    s.adjust(T0, &[adj("t2", &t2, 5)]).await.unwrap();
    let (_, d) = deny(s, T0, &[ch("t2", &t2, 1)]).await;
    assert_eq!(d.retry_after_ns, S);
    // Several buckets settle in one call.
    s.adjust(T0, &[adj("t2", &t2, -10), adj("l", &l, -100)])
        .await
        .unwrap();
    assert_eq!(admit(s, T0 + 6 * S, &[ch("t2", &t2, 10)]).await, vec![0]);
    assert_eq!(admit(s, T0 + 6 * S, &[ch("l", &l, 10)]).await, vec![0]);
}

async fn window_quota_rolls_at_the_boundary(store: Arc<dyn Store>) {
    let s = &*store;
    let w = Arc::new(hourly(3, false));
    assert_eq!(admit(s, T0, &[ch("w", &w, 1)]).await, vec![2]);
    assert_eq!(admit(s, T0 + S, &[ch("w", &w, 2)]).await, vec![0]);
    let (_, d) = deny(s, T0 + S, &[ch("w", &w, 1)]).await;
    assert_eq!(d.retry_after_ns, S, "until 11:00:00");
    assert_eq!(d.status.reset_ns, S);
    assert!(!d.never_fits);
    let (_, d) = deny(s, T0 + S, &[ch("w", &w, 4)]).await;
    assert!(d.never_fits);
    // 11:00:00: a new window.
    let next = T0 + 2 * S;
    match s.take(next, &[ch("w", &w, 1)]).await.unwrap() {
        Taken::Admitted(a) => {
            assert_eq!(a[0].status.remaining, 2);
            assert_eq!(a[0].status.reset_ns, 3_600 * S);
        }
        other => panic!("{other:?}"),
    }
    // A refund in the new window.
    s.adjust(next, &[adj("w", &w, -1)]).await.unwrap();
    assert_eq!(admit(s, next, &[ch("w", &w, 3)]).await, vec![0]);

    // A soft window admits over its limit and says so.
    let soft = Arc::new(hourly(1, true));
    for over in [false, true, true] {
        match s.take(T0, &[ch("soft", &soft, 1)]).await.unwrap() {
            Taken::Admitted(a) => assert_eq!(a[0].soft_exceeded, over),
            other => panic!("{other:?}"),
        }
    }
}

async fn concurrency_acquire_release(store: Arc<dyn Store>) {
    let s = &*store;
    let c = Arc::new(conc(2));
    assert_eq!(admit(s, T0, &[ch("c", &c, 1)]).await, vec![1]);
    assert_eq!(admit(s, T0, &[ch("c", &c, 1)]).await, vec![0]);
    let (_, d) = deny(s, T0, &[ch("c", &c, 1)]).await;
    assert!(!d.never_fits);
    assert_eq!(d.status.remaining, 0);
    s.adjust(T0, &[adj("c", &c, -1)]).await.unwrap();
    assert_eq!(admit(s, T0 + S, &[ch("c", &c, 1)]).await, vec![0]);
    // Releasing more than is held stops at zero.
    s.adjust(T0, &[adj("c", &c, -5)]).await.unwrap();
    assert_eq!(admit(s, T0, &[ch("c", &c, 2)]).await, vec![0]);
    let (_, d) = deny(s, T0, &[ch("c", &c, 3)]).await;
    assert!(d.never_fits);
}

async fn reserve_sheds_low_priority_first(store: Arc<dyn Store>) {
    let s = &*store;
    let a = Arc::new(leaky(10, S, 10));
    let low = |cost| Charge {
        reserve: 300,
        ..ch("k", &a, cost)
    };
    for _ in 0..7 {
        admit(s, T0, &[low(1)]).await;
    }
    let (_, d) = deny(s, T0, &[low(1)]).await;
    assert_eq!(d.retry_after_ns, 100 * MS);
    // Higher tiers still get the reserved 30%.
    for _ in 0..3 {
        admit(s, T0, &[ch("k", &a, 1)]).await;
    }
    deny(s, T0, &[ch("k", &a, 1)]).await;
    let (_, d) = deny(s, T0, &[low(1)]).await;
    assert_eq!(d.retry_after_ns, 400 * MS);
    // A cost above the caller's share never fits.
    let (_, d) = deny(s, T0 + 100 * S, &[low(8)]).await;
    assert!(d.never_fits);
    // Token buckets and windows keep the reserve too.
    let t = Arc::new(token(10, 1, S));
    let w = Arc::new(hourly(10, false));
    for (key, algo) in [("rt", &t), ("rw", &w)] {
        let low = Charge {
            reserve: 500,
            ..ch(key, algo, 1)
        };
        for _ in 0..5 {
            admit(s, T0, std::slice::from_ref(&low)).await;
        }
        deny(s, T0, std::slice::from_ref(&low)).await;
        admit(s, T0, &[ch(key, algo, 1)]).await;
    }
}

async fn concurrent_takes_admit_exactly_the_limit(store: Arc<dyn Store>) {
    for (name, algo) in [
        ("conc", conc(50)),
        ("window", hourly(50, false)),
        ("leaky", leaky(1, 3_600 * S, 50)),
        ("token", token(50, 1, 3_600 * S)),
    ] {
        let algo = Arc::new(algo);
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let store = store.clone();
                let charges = [ch(name, &algo, 1)];
                tokio::spawn(async move {
                    matches!(store.take(T0, &charges).await.unwrap(), Taken::Admitted(_))
                })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            if t.await.unwrap() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 50, "{name} on {}", store.name());
    }
}

macro_rules! store_suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let b = super::memory().await;
                    super::$name(b.store.clone()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let b = super::redis().await;
                    super::$name(b.store.clone()).await;
                }
            )*
        }
    };
}

store_suite!(
    leaky_burst_then_deny,
    leaky_refills_over_time,
    leaky_shaping_and_inexact_rates,
    token_bucket,
    all_or_nothing_across_two_buckets,
    same_key_twice_in_one_request,
    adjust_refund_and_overdraw,
    window_quota_rolls_at_the_boundary,
    concurrency_acquire_release,
    reserve_sheds_low_priority_first,
    concurrent_takes_admit_exactly_the_limit,
);

// ---- Redis only ----

async fn raw(url: &str) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn redis_keys_share_one_hash_tag_and_expire() {
    let (url, _server) = redis_url();
    let prefix = unique_prefix();
    let store = RedisStore::connect(&url, caller_clock(prefix.clone()))
        .await
        .unwrap();
    let r = raw(&url).await;
    let l = Arc::new(leaky(1, S, 10));
    let w = Arc::new(hourly(10, false));
    let c = Arc::new(conc(10));
    let t = Arc::new(token(10, 1, S));
    admit(
        &store,
        T0,
        &[
            ch("l", &l, 3),
            ch("w", &w, 1),
            ch("c", &c, 1),
            ch("t", &t, 4),
        ],
    )
    .await;
    let pttl = |key: String| {
        let mut r = r.clone();
        async move {
            let ms: i64 = ::redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut r)
                .await
                .unwrap();
            ms
        }
    };
    // Leaky: idle again in 3 s (+1 s margin).
    let ms = pttl(format!("{prefix}:{{lt}}:l")).await;
    assert!((3_900..=4_000).contains(&ms), "leaky pttl {ms}");
    // Token: full again in 4 s (+1 s margin).
    let ms = pttl(format!("{prefix}:{{lt}}:t")).await;
    assert!((4_900..=5_000).contains(&ms), "token pttl {ms}");
    // Window: keyed by its start (10:00:00), until its end (2 s away) + 60 s.
    let start = (T0 + 2 * S - 3_600 * S) / S;
    let ms = pttl(format!("{prefix}:{{lt}}:w:w{start}")).await;
    assert!((61_900..=62_000).contains(&ms), "window pttl {ms}");
    // Concurrency: 10 minutes, refreshed by each take and adjust.
    let ms = pttl(format!("{prefix}:{{lt}}:c")).await;
    assert!((599_000..=600_000).contains(&ms), "concurrency pttl {ms}");
    // Releasing the last slot deletes the key.
    store.adjust(T0, &[adj("c", &c, -1)]).await.unwrap();
    assert_eq!(pttl(format!("{prefix}:{{lt}}:c")).await, -2);
    assert_eq!(store.name(), "redis");

    // A custom prefix and hash tag.
    let custom = RedisStore::connect(
        &url,
        RedisOptions {
            key_prefix: format!("{prefix}x"),
            hash_tag: "tag".into(),
            clock: RedisClock::Caller,
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    admit(&custom, T0, &[ch("c", &c, 1)]).await;
    let ms = pttl(format!("{prefix}x:{{tag}}:c")).await;
    assert!(ms > 0);
}

#[tokio::test]
async fn redis_server_clock_ignores_the_callers() {
    let (url, _server) = redis_url();
    let store = RedisStore::connect(
        &url,
        RedisOptions {
            key_prefix: unique_prefix(),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    let a = Arc::new(leaky(1, 3_600 * S, 2));
    // The caller's clock jumps a day ahead: the server's does not, so nothing drains.
    admit(&store, 0, &[ch("k", &a, 2)]).await;
    let (_, d) = deny(&store, 86_400 * S, &[ch("k", &a, 1)]).await;
    assert!(d.retry_after_ns > 3_500 * S && d.retry_after_ns <= 3_600 * S);
}

/// A script Redis no longer knows (`SCRIPT FLUSH`; a restart or a failover to a replica that never
/// ran it) is loaded again on its next use: the take and the settlement after a flush both apply.
#[tokio::test]
async fn flushed_scripts_are_loaded_again() {
    let (url, _server) = redis_url();
    let store = RedisStore::connect(&url, caller_clock(unique_prefix()))
        .await
        .unwrap();
    let r = raw(&url).await;
    let flush = || {
        let mut r = r.clone();
        async move {
            let () = ::redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut r)
                .await
                .unwrap();
        }
    };
    let w = Arc::new(hourly(10, false));
    assert_eq!(admit(&store, T0, &[ch("k", &w, 1)]).await, vec![9]);
    for _ in 0..2 {
        flush().await;
        store.adjust(T0, &[adj("k", &w, 2)]).await.unwrap();
    }
    flush().await;
    assert_eq!(admit(&store, T0, &[ch("k", &w, 1)]).await, vec![4]);
}

/// Counts the calls that reach the inner store.
struct Counting {
    inner: Arc<dyn Store>,
    calls: AtomicU64,
}

#[async_trait::async_trait]
impl Store for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn take(&self, now: Nanos, charges: &[Charge]) -> Result<Taken, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.take(now, charges).await
    }
    async fn adjust(&self, now: Nanos, adjusts: &[Adjust]) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.adjust(now, adjusts).await
    }
}

/// The window's remaining count after taking one more; a take on a connection left idle through
/// the restart fails once (takes are not retried), so it is asked again.
async fn remaining_after_one(store: &RedisStore, w: &Arc<Algorithm>) -> u64 {
    for _ in 0..3 {
        match store.take(T0, &[ch("acme", w, 1)]).await {
            Ok(Taken::Admitted(a)) => return a[0].status.remaining,
            Ok(denied) => panic!("denied: {denied:?}"),
            Err(_) => continue,
        }
    }
    panic!("Redis did not answer a take after its restart");
}

/// A settlement after a Redis restart is applied, and applied once: the store's connections were
/// idle through the restart (each fails its next command before reconnecting), and a retry of a
/// settlement that already ran (same mark) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_after_a_redis_restart_is_applied_once() {
    // Always its own server: this test restarts it.
    let mut server = spawn_server();
    let store = RedisStore::connect(&server.url(), caller_clock(unique_prefix()))
        .await
        .unwrap();
    let w = Arc::new(hourly(100, false));
    store.adjust(T0, &[adj("acme", &w, 3)]).await.unwrap();
    assert_eq!(remaining_after_one(&store, &w).await, 96);

    // Persistence is off: the restarted server is empty.
    server.restart().unwrap();
    store.adjust(T0, &[adj("acme", &w, 5)]).await.unwrap();
    assert_eq!(remaining_after_one(&store, &w).await, 94);

    let two = [adj("acme", &w, 2)];
    assert!(store.adjust_marked(T0, &two, "retried").await.unwrap());
    assert!(!store.adjust_marked(T0, &two, "retried").await.unwrap());
    assert_eq!(remaining_after_one(&store, &w).await, 91);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_redis_survives_a_kill_and_recovers() {
    // Always its own server: this test kills it.
    let mut server = spawn_server();
    let redis = RedisStore::connect(&server.url(), caller_clock(unique_prefix()))
        .await
        .unwrap();
    let counting = Arc::new(Counting {
        inner: Arc::new(redis),
        calls: AtomicU64::new(0),
    });
    let timeout = Duration::from_millis(200);
    let g = Guarded::new(
        counting.clone(),
        GuardOptions {
            timeout,
            failures_to_open: 3,
            open_for: Duration::from_secs(1),
            local_share_permille: 1000,
            timer: GuardTimer::Wheel,
        },
    );
    let now = leaky_limit::settle::system_now;
    let w = Arc::new(hourly(5, false));
    let local = |key: &str| Charge {
        on_error: OnStoreError::Local,
        ..ch(key, &w, 1)
    };
    // Healthy: Redis answers.
    assert_eq!(admit(&g, now(), &[local("a")]).await, vec![4]);
    assert_eq!(g.stats().breaker, BreakerState::Closed);

    server.kill();
    // Every call still answers, bounded by the timeout, until the breaker opens.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while g.stats().breaker != BreakerState::Open {
        assert!(
            tokio::time::Instant::now() < deadline,
            "breaker never opened"
        );
        let r = tokio::time::timeout(5 * timeout, g.take(now(), &[local("b")])).await;
        assert!(r.is_ok(), "a take hung past 5× the timeout");
    }
    let stats = g.stats();
    assert!(stats.degraded);
    assert_eq!(stats.trips_total, 1);
    assert!(stats.errors_total >= 3);

    // While open: Local keeps limiting (fresh local buckets: 5 per window), FailOpen admits,
    // FailClosed refuses, and nothing reaches Redis.
    let calls = counting.calls.load(Ordering::SeqCst);
    let t = now();
    let mut admitted = 0;
    for _ in 0..8 {
        if let Taken::Admitted(_) = g.take(t, &[local("c")]).await.unwrap() {
            admitted += 1;
        }
    }
    let open = Charge {
        on_error: OnStoreError::FailOpen,
        ..ch("d", &w, 1)
    };
    let closed = Charge {
        on_error: OnStoreError::FailClosed,
        ..ch("e", &w, 1)
    };
    for _ in 0..8 {
        admit(&g, t, std::slice::from_ref(&open)).await;
    }
    assert!(matches!(
        g.take(t, std::slice::from_ref(&closed)).await,
        Err(StoreError::Unavailable(_))
    ));
    // Released slots settle locally.
    g.adjust(t, &[adj("c", &w, -1)]).await.unwrap();
    assert_eq!(
        g.stats().breaker,
        BreakerState::Open,
        "open period too short"
    );
    assert_eq!(admitted, 5);
    assert_eq!(counting.calls.load(Ordering::SeqCst), calls);
    admit(&g, t, &[local("c")]).await;

    // Redis comes back on the same port: the breaker probes and closes again.
    let server = tokio::task::spawn_blocking(move || {
        server.restart().unwrap();
        server
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = tokio::time::timeout(5 * timeout, g.take(now(), &[local("f")])).await;
        assert!(r.is_ok(), "a take hung past 5× the timeout");
        if g.stats().breaker == BreakerState::Closed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recovered: {:?}",
            g.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!g.stats().degraded);
    // Redis answers again (the restarted server is empty: a fresh window).
    let before = counting.calls.load(Ordering::SeqCst);
    assert_eq!(admit(&g, now(), &[local("g")]).await, vec![4]);
    assert_eq!(counting.calls.load(Ordering::SeqCst), before + 1);
    drop(server);
}

/// `INFO <section>`'s `field` as a number.
fn info(admin: &mut ::redis::Connection, section: &str, field: &str) -> i64 {
    let text: String = ::redis::cmd("INFO").arg(section).query(admin).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO {section} has no {field}: {text}"))
}

/// `CLIENT LIST` as (id, last command) per connection.
fn clients(admin: &mut ::redis::Connection) -> Vec<(i64, String)> {
    let text: String = ::redis::cmd("CLIENT").arg("LIST").query(admin).unwrap();
    let field = |line: &str, name: &str| {
        line.split(' ')
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_string()
    };
    text.lines()
        .map(|l| (field(l, "id").parse().unwrap(), field(l, "cmd")))
        .collect()
}

/// A proxy worker's calls go over a connection of the worker's own, made on its runtime, once it
/// is up (until then the store's shared connection serves, so no call waits for a connect). Proof:
/// the shared connection is killed server-side and the worker keeps being answered with no new
/// connection made (a command on the killed connection would fail or reconnect).
#[test]
fn a_thread_uses_a_connection_of_its_own_once_it_is_up() {
    // Always its own server: the test counts its connections.
    let server = spawn_server();
    let mut admin = ::redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let admin_id: i64 = ::redis::cmd("CLIENT").arg("ID").query(&mut admin).unwrap();
    // The store is made on one runtime (the proxy's background runtime) ...
    let home = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(
        home.block_on(RedisStore::connect(
            &server.url(),
            caller_clock(unique_prefix()),
        ))
        .unwrap(),
    );
    let shared: Vec<i64> = clients(&mut admin)
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| *id != admin_id)
        .collect();
    assert_eq!(shared.len(), 1, "one shared connection after connect");
    // ... and called from another thread with its own runtime (a proxy worker).
    let w = Arc::new(hourly(1_000, false));
    let worker = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut remaining = 1_000;
    let mut take = |store: &RedisStore| {
        remaining -= 1;
        assert_eq!(
            worker.block_on(admit(store, T0, &[ch("k", &w, 1)])),
            vec![remaining]
        );
    };
    // The first call is served (by the shared connection) while the worker's own comes up.
    take(&store);
    let mut own = None;
    for _ in 0..500 {
        own = clients(&mut admin)
            .into_iter()
            .find(|(id, cmd)| *id != admin_id && *id != shared[0] && cmd == "evalsha");
        if own.is_some() {
            break;
        }
        take(&store);
        // the connect runs on the worker's runtime: drive it
        worker.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
    }
    // up and used: it ran a script
    let (own, _) = own.expect("the worker's connection never came up");
    ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(shared[0])
        .query::<i64>(&mut admin)
        .unwrap();
    let made = info(&mut admin, "stats", "total_connections_received");
    for _ in 0..20 {
        take(&store);
    }
    assert_eq!(
        info(&mut admin, "stats", "total_connections_received"),
        made,
        "no connection was made again: the shared one was not used"
    );
    let now = clients(&mut admin);
    assert!(now.iter().all(|(id, _)| *id != shared[0]));
    assert!(
        now.iter().any(|(id, cmd)| *id == own && cmd == "evalsha"),
        "the worker's connection ran the scripts: {now:?}"
    );
    drop(home);
}

/// The proxy's configuration: no response timeout of the connection's own, the guard's timeout on
/// Pingora's timer wheel. A call to a Redis that has stopped answering (`CLIENT PAUSE`) still
/// returns at the guard's timeout, not when Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wheel_timer_bounds_a_call_to_a_stalled_redis() {
    // Its own server: this test stalls it.
    let server = spawn_server();
    let redis = RedisStore::connect(
        &server.url(),
        RedisOptions {
            response_timeout: None,
            ..caller_clock(unique_prefix())
        },
    )
    .await
    .unwrap();
    let g = Guarded::new(
        Arc::new(redis),
        GuardOptions {
            timeout: Duration::from_millis(50),
            timer: GuardTimer::Wheel,
            ..GuardOptions::default()
        },
    );
    let now = leaky_limit::settle::system_now;
    let w = Arc::new(hourly(5, false));
    let local = Charge {
        on_error: OnStoreError::Local,
        ..ch("stall", &w, 1)
    };
    assert_eq!(
        admit(&g, now(), std::slice::from_ref(&local)).await,
        vec![4]
    );
    let mut c = ::redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = ::redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .query_async(&mut c)
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let t = g.take(now(), std::slice::from_ref(&local)).await.unwrap();
    let took = start.elapsed();
    assert!(
        matches!(t, Taken::Admitted(_)),
        "the local fallback answers"
    );
    assert!(
        took < Duration::from_millis(1500),
        "the call took {took:?}: not bounded by the 50 ms timeout (Redis is paused for 3 s)"
    );
    let s = g.stats();
    assert_eq!((s.errors_total, s.fallbacks_total), (1, 1));
}
