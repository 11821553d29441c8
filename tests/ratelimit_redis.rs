//! Three gateway processes sharing one real Redis (a throwaway `redis-server` on loopback): together
//! they admit no more than the limit, and when Redis dies each policy follows its `on_store_error`
//! with bounded latency, then the proxies recover on their own when Redis returns.
//!
//! The exactness phase runs with a Redis call timeout no load on this machine reaches (1 s): with
//! the outage phase's 20 ms, a Redis answer delayed by a busy machine counts as an outage, and the
//! `local` policy then rightly admits past the shared limit — the test would measure the machine's
//! load, not the limiter. The gateways are reloaded with the 20 ms timeout before Redis is killed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The figures this test measures are printed for the record.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use crate::common::*;
use leaky_limit::redis_server::RedisServer;
use std::time::{Duration, Instant};

fn config(up: &Upstreams, redis_url: &str, timeout_ms: u64) -> String {
    up.config("")
        .replace(
            "      - kind: api-key\n",
            "      - kind: api-key\n      - kind: rate-limit\n",
        )
        .replace(
            "  pro: { priority: normal }\n",
            "  pro:
    priority: normal
    limits:
      - { name: shared, rate: 300, per: hour, match: { models: [gpt-4o-mini] }, on_store_error: local }
      - { name: closed, rate: 1000000, per: hour, match: { models: [gpt-4o] }, on_store_error: fail_closed }
      - { name: open, rate: 1, per: hour, match: { models: [qwen-plus] }, on_store_error: fail_open }
",
        )
        + &format!(
            "limits:\n  store: redis\n  redis: {{ url: \"{redis_url}\", timeout_ms: {timeout_ms}, open_ms: 200, replicas: 3 }}\n"
        )
}

/// Sends `n` chat requests for `model`, round-robin over `gws`, `concurrency` at a time; returns
/// (status, seconds) per request.
async fn hammer(gws: &[Gateway], model: &str, n: usize, concurrency: usize) -> Vec<(u16, f64)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let urls: Vec<String> = gws.iter().map(|g| g.url("/v1/chat/completions")).collect();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (c, url, sem) = (client.clone(), urls[i % urls.len()].clone(), sem.clone());
            let body = chat(model, "hi");
            tokio::spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let start = Instant::now();
                let s = c
                    .post(url)
                    .bearer_auth(PRO_KEY)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                (s, start.elapsed().as_secs_f64())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn count(r: &[(u16, f64)], status: u16) -> usize {
    r.iter().filter(|(s, _)| *s == status).count()
}

fn p99(r: &[(u16, f64)]) -> f64 {
    let mut v: Vec<f64> = r.iter().map(|(_, t)| *t).collect();
    v.sort_by(f64::total_cmp);
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Waits until every replica's limiter is connected (the fail_closed policy admits).
async fn reach_redis(gws: &[Gateway]) {
    eventually(
        "every replica reaches Redis",
        Duration::from_secs(10),
        None,
        || async {
            let r = hammer(gws, "gpt-4o", 3, 3).await;
            count(&r, 200) == 3
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_redis_and_ride_out_its_outage() {
    let mut redis = RedisServer::spawn().expect("redis-server (./scripts/test installs it)");
    let up = Upstreams::start().await;
    let cfg = config(&up, &redis.url(), 1000);
    let gws = vec![
        Gateway::start(&cfg).await,
        Gateway::start(&cfg).await,
        Gateway::start(&cfg).await,
    ];
    reach_redis(&gws).await;

    let mut fallbacks = Vec::new();
    for gw in &gws {
        fallbacks.push(gw.metric("leaky_ratelimit_store_fallbacks_total").await);
    }
    // Hammered together on one key: 600 requests against 300/hour shared through Redis.
    let r = hammer(&gws, "gpt-4o-mini", 600, 30).await;
    let shared = count(&r, 200);
    assert_eq!(shared + count(&r, 429), 600);
    assert!(
        (297..=303).contains(&shared),
        "admitted {shared} of 600 against a shared limit of 300 (±1%)"
    );
    for (gw, before) in gws.iter().zip(fallbacks) {
        assert_eq!(
            gw.metric("leaky_ratelimit_store_fallbacks_total").await,
            before,
            "every decision came from Redis"
        );
    }
    // The fail_open policy's 1/hour is enforced while Redis is up.
    let r = hammer(&gws, "qwen-plus", 3, 1).await;
    assert_eq!((count(&r, 200), count(&r, 429)), (1, 2));

    // The outage phase's tight timeout: a reload builds each replica's limiter backend anew.
    let tight = config(&up, &redis.url(), 20);
    for gw in &gws {
        let v = gw.config_version().await;
        gw.write_config(&tight);
        gw.wait_version_change(v, Duration::from_secs(10)).await;
    }
    reach_redis(&gws).await;
    let baseline = hammer(&gws, "gpt-4o", 90, 3).await;
    assert_eq!(count(&baseline, 200), 90);

    redis.kill();
    // fail_closed refuses (503 in dialect), fail_open admits past its limit, local keeps limiting
    // with each proxy's share (300 / 3 replicas).
    let closed = hammer(&gws, "gpt-4o", 60, 3).await;
    assert_eq!(count(&closed, 503), 60);
    let open = hammer(&gws, "qwen-plus", 30, 3).await;
    assert_eq!(count(&open, 200), 30);
    let local = hammer(&gws[..1], "gpt-4o-mini", 150, 3).await;
    let admitted = count(&local, 200);
    assert!(
        (95..=100).contains(&admitted),
        "one proxy alone admitted {admitted}: its local share is 100"
    );
    assert_eq!(admitted + count(&local, 429), 150);
    // An outage costs bounded latency, never a hang.
    let outage: Vec<(u16, f64)> = [closed, open, local].concat();
    let added = p99(&outage) - p99(&baseline);
    eprintln!(
        "shared admitted {shared}, local admitted {admitted}, p99 baseline {:.2} ms, outage {:.2} ms",
        p99(&baseline) * 1000.0,
        p99(&outage) * 1000.0
    );
    assert!(
        added < 0.050,
        "p99 added latency during the outage: {:.1} ms (baseline p99 {:.1} ms)",
        added * 1000.0,
        p99(&baseline) * 1000.0
    );
    for gw in &gws {
        assert_eq!(gw.metric("leaky_ratelimit_store_degraded").await, 1.0);
        assert!(gw.metric("leaky_ratelimit_store_fallbacks_total").await > 0.0);
    }

    // Redis returns (empty: no persistence): every replica recovers by itself.
    redis.restart().unwrap();
    for gw in &gws {
        eventually(
            "the replica recovers",
            Duration::from_secs(20),
            Some(gw),
            || async {
                hammer(std::slice::from_ref(gw), "gpt-4o", 1, 1).await[0].0 == 200
                    && gw.metric("leaky_ratelimit_store_degraded").await == 0.0
            },
        )
        .await;
    }
    // Shared again: the fresh 1/hour bucket admits one request across all three.
    let r = hammer(&gws, "qwen-plus", 6, 1).await;
    assert_eq!((count(&r, 200), count(&r, 429)), (1, 5));
}
