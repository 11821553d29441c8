//! Prepaid balances in Redis, on the real binary: two proxies share one org's account
//! (`leaky:bal:{acme}`), written by the test through the control plane's mirror API
//! (`leaky_limit::balance`). Under 200 concurrent requests the tokens admitted never exceed the credit
//! and `debited` ends equal to the providers' reported usage; raising the credit lets requests
//! through with no reload; an older credit write is ignored; with Redis down the policy fails closed
//! (503 in the caller's dialect) and, Redis back, nothing was lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use leaky_limit::balance;
use leaky_limit::redis_server::{self, RedisServer};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The proxy's config: a `unit: balance` policy on Redis. The store timeout is generous: the durable
/// Redis fsyncs every write, which a loaded CI machine can stretch past a tight timeout (a refused
/// connection, which is what a stopped Redis gives, fails at once whatever the timeout).
fn config(up: &Upstreams, redis_url: &str) -> String {
    up.config("")
        .replace(
            "      - kind: api-key\n",
            "      - kind: api-key\n      - kind: rate-limit\n",
        )
        + &format!(
            "limits:\n  store: redis\n  redis: {{ url: \"{redis_url}\", timeout_ms: 2000, open_ms: 100 }}\n  policies:\n    - {{ name: prepaid, unit: balance }}\n"
        )
}

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn capped(max_tokens: u64) -> Value {
    let mut b = chat("gpt-4o-mini", "Tell me about prepaid balances.");
    b["max_tokens"] = json!(max_tokens);
    b
}

/// One capped request: (status, reported total_tokens when admitted).
async fn request(client: &reqwest::Client, gw: &Gateway, max_tokens: u64) -> (u16, u64) {
    let r = client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .json(&capped(max_tokens))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (status, v["usage"]["total_tokens"].as_u64().unwrap_or(0))
}

/// Waits until `gw` answers from Redis: with nothing credited, that is a 429 (a 503 means the
/// store is not reachable yet).
async fn wait_reachable(gw: &Gateway) {
    eventually(
        "the proxy reaches Redis",
        Duration::from_secs(10),
        Some(gw),
        || async { request(&gw.client, gw, 10).await.0 == 429 },
    )
    .await;
}

async fn debited(c: &mut redis::aio::MultiplexedConnection) -> i64 {
    balance::read(c, "acme")
        .await
        .unwrap()
        .map_or(0, |s| s.debited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_share_one_balance_and_never_overspend() {
    let redis = RedisServer::spawn().expect("redis-server");
    let mut c = conn(&redis.url()).await;
    let up = Upstreams::start().await;
    let cfg = config(&up, &redis.url());
    let gws = [Gateway::start(&cfg).await, Gateway::start(&cfg).await];
    for gw in &gws {
        wait_reachable(gw).await;
    }
    assert_eq!(debited(&mut c).await, 0, "a refusal debits nothing");
    assert!(balance::set_credited(&mut c, "acme", 5000, 1)
        .await
        .unwrap());

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(50));
    let gws = std::sync::Arc::new(gws);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (client, gws, sem) = (client.clone(), gws.clone(), sem.clone());
            tokio::spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                request(&client, &gws[i % 2], 50).await
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let admitted: Vec<u64> = results.iter().filter(|r| r.0 == 200).map(|r| r.1).collect();
    let refused = results.iter().filter(|r| r.0 == 429).count();
    assert_eq!(admitted.len() + refused, 200, "{results:?}");
    assert!(refused > 0 && !admitted.is_empty(), "{results:?}");
    let used: u64 = admitted.iter().sum();
    assert!(
        used <= 5000,
        "admitted {used} tokens against a credit of 5000"
    );
    // Settlement is batched off the request path: `debited` converges to the reported sum exactly.
    eventually(
        "debited equals the reported usage",
        Duration::from_secs(10),
        None,
        || {
            let mut c = c.clone();
            async move { debited(&mut c).await == used as i64 }
        },
    )
    .await;

    // An older credit write (a late retry of version 1) is ignored.
    assert!(!balance::set_credited(&mut c, "acme", 1_000_000, 1)
        .await
        .unwrap());
    assert!(request(&client, &gws[0], 50).await.0 == 429);
    // The control plane raises the credit: both proxies admit again, no reload.
    let v = gws[0].config_version().await;
    assert!(balance::set_credited(&mut c, "acme", used as i64 + 1000, 2)
        .await
        .unwrap());
    for gw in gws.iter() {
        assert_eq!(request(&client, gw, 50).await.0, 200);
    }
    assert_eq!(gws[0].config_version().await, v);
    let st = balance::read(&mut c, "acme").await.unwrap().unwrap();
    assert_eq!((st.credited, st.credited_version), (used as i64 + 1000, 2));
}

/// A `redis-server` that persists every write (AOF, fsync always) in its own directory, so a kill
/// and restart on the same port keeps the balances: the outage test can tell "nothing lost".
struct DurableRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl DurableRedis {
    fn start() -> Self {
        let mut r = DurableRedis {
            port: free_port().port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn restart(&mut self) {
        let bin = redis_server::find_binary().expect("redis-server");
        let port = self.port.to_string();
        let dir = self.dir.path().to_str().unwrap().to_string();
        let child = Command::new(bin)
            .args(["--port", &port, "--bind", "127.0.0.1", "--dir", &dir])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for DurableRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn wait_ping(port: u16) {
    eventually(
        "redis-server answers",
        Duration::from_secs(10),
        None,
        || async move { redis_server::ping(port) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_in_dialect_and_loses_nothing() {
    let mut redis = DurableRedis::start();
    wait_ping(redis.port).await;
    let mut c = conn(&redis.url()).await;
    let up = Upstreams::start().await;
    let gw = Gateway::start(&config(&up, &redis.url())).await;
    wait_reachable(&gw).await;
    balance::set_credited(&mut c, "acme", 1000, 7)
        .await
        .unwrap();
    let mut used = 0;
    for _ in 0..3 {
        let (status, total) = request(&gw.client, &gw, 50).await;
        assert_eq!(status, 200);
        used += total;
    }
    eventually("settled", Duration::from_secs(10), None, || {
        let mut c = c.clone();
        async move { debited(&mut c).await == used as i64 }
    })
    .await;

    redis.kill();
    let r = gw.post_chat(PRO_KEY, &capped(50)).await;
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "service_unavailable");
    let r = gw
        .client
        .post(gw.url("/qwen/api/v1/services/aigc/text-generation/generation"))
        .bearer_auth(PRO_KEY)
        .json(&json!({"model": "qwen-plus", "input": {"messages": [{"role": "user", "content": "hi"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "ServiceUnavailable");
    let denied = "leaky_ratelimit_decisions_total{decision=\"unavailable\",policy=\"prepaid\"}";
    assert!(gw.metric(denied).await >= 2.0);

    // Redis back with its data: the account is as it was, and the proxy admits again on its own.
    redis.restart();
    wait_ping(redis.port).await;
    let mut c = conn(&redis.url()).await;
    let st = balance::read(&mut c, "acme").await.unwrap().unwrap();
    assert_eq!(
        (st.credited, st.credited_version, st.debited),
        (1000, 7, used as i64)
    );
    let more = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    eventually(
        "the proxy admits again",
        Duration::from_secs(20),
        Some(&gw),
        || {
            let (gw, more) = (&gw, more.clone());
            async move {
                let (status, total) = request(&gw.client, gw, 50).await;
                more.fetch_add(total, std::sync::atomic::Ordering::Relaxed);
                status == 200
            }
        },
    )
    .await;
    let more = more.load(std::sync::atomic::Ordering::Relaxed);
    eventually(
        "settled after the outage",
        Duration::from_secs(10),
        None,
        || {
            let mut c = c.clone();
            async move { debited(&mut c).await == (used + more) as i64 }
        },
    )
    .await;
}
