//! Config propagation and key-lookup throughput against a running control plane
//! (`loadtests/control-plane/run` starts one on a throwaway PostgreSQL and records the figures).
//!
//! ```text
//! cargo run --release -p leaky-control-plane --example propagation -- \
//!     http://127.0.0.1:9300 lt-dev-admin <watchers> <changes> <lookup seconds>
//! ```
//!
//! - Propagation: opens `<watchers>` watch streams (as proxies do), then creates `<changes>` API keys
//!   one after another; for each, the time from sending `POST /v1/orgs/{org}/keys` to the key's delta
//!   arriving on each stream. Reports p50/p99/max over every (key, watcher) pair.
//! - Lookups: `GET /v1/keys/{id}` from 32 concurrent clients for `<lookup seconds>`; requests per second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

type Arrivals = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

async fn watch(
    base: String,
    token: String,
    n: usize,
    arrivals: Arrivals,
) -> tokio::sync::oneshot::Receiver<()> {
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let res = reqwest::Client::new()
        .get(format!("{base}/v1/config/watch?instance=bench-{n}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let mut body = res.bytes_stream();
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            let now = Instant::now();
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let v: Value = serde_json::from_slice(&line).unwrap();
                if v["type"] == "snapshot" {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                let mut a = arrivals.lock().unwrap();
                for k in v["upsert"].as_array().into_iter().flatten() {
                    a.entry(k["id"].as_str().unwrap().to_owned())
                        .or_default()
                        .push(now);
                }
            }
        }
    });
    ready
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args
        .get(1)
        .cloned()
        .unwrap_or("http://127.0.0.1:9300".into());
    let token = args.get(2).cloned().unwrap_or("lt-dev-admin".into());
    let watchers: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(2);
    let changes: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(100);
    let lookup_secs: u64 = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(10);
    let http = reqwest::Client::new();

    let arrivals: Arrivals = Arc::default();
    for n in 0..watchers {
        watch(base.clone(), token.clone(), n, arrivals.clone())
            .await
            .await
            .unwrap();
    }
    let org: Value = http
        .post(format!("{base}/v1/orgs"))
        .bearer_auth(&token)
        .json(&json!({ "name": format!("bench-{}", std::process::id()) }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org = org["id"].as_str().unwrap().to_owned();
    let mut sent = Vec::new();
    for _ in 0..changes {
        let t0 = Instant::now();
        let key: Value = http
            .post(format!("{base}/v1/orgs/{org}/keys"))
            .bearer_auth(&token)
            .json(&json!({ "name": "bench", "tier": "pro" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        sent.push((key["id"].as_str().unwrap().to_owned(), t0));
        // Wait until every watcher has it: one change in flight at a time, as an operator makes them.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let done = arrivals
                .lock()
                .unwrap()
                .get(&sent.last().unwrap().0)
                .is_some_and(|v| v.len() >= watchers);
            if done || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let (mut lat, missing) = {
        let a = arrivals.lock().unwrap();
        let mut lat: Vec<Duration> = Vec::new();
        let mut missing = 0;
        for (id, t0) in &sent {
            let got = a.get(id).map_or(&[][..], |v| &v[..]);
            missing += watchers.saturating_sub(got.len());
            lat.extend(got.iter().map(|t| t.duration_since(*t0)));
        }
        (lat, missing)
    };
    lat.sort();
    println!(
        "propagation: watchers={watchers} changes={changes} samples={} missing={missing} p50={:.1}ms p99={:.1}ms max={:.1}ms",
        lat.len(),
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );

    let ids: Arc<Vec<String>> = Arc::new(sent.into_iter().map(|(id, _)| id).collect());
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(lookup_secs);
    let mut tasks = Vec::new();
    for c in 0..32 {
        let (http, base, token, ids, count, errors) = (
            http.clone(),
            base.clone(),
            token.clone(),
            ids.clone(),
            count.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while Instant::now() < end {
                let id = &ids[i % ids.len()];
                i += 7;
                let ok = http
                    .get(format!("{base}/v1/keys/{id}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ok {
                    count.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "key lookups: GET /v1/keys/{{id}} c=32 for {lookup_secs}s: {:.0} req/s, errors={}",
        count.load(Ordering::Relaxed) as f64 / lookup_secs as f64,
        errors.load(Ordering::Relaxed)
    );
}
