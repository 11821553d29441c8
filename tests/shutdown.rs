//! Stopping the gateway (issue #12): a graceful stop (SIGTERM) writes every usage record that was
//! queued, instead of losing those of the last drain interval with the process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{chat, Gateway, Upstreams, PRO_KEY};
use serde_json::Value;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// The log's JSON lines of `target`, as values.
fn lines(gw: &Gateway, target: &str) -> Vec<Value> {
    gw.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == target)
        .collect()
}

fn request_ids(lines: &[Value]) -> HashSet<String> {
    lines
        .iter()
        .filter_map(|v| v["request_id"].as_str().map(str::to_string))
        .collect()
}

/// Requests are answered and logged, then SIGTERM arrives at once (no grace period). Each request's
/// access line is written after its usage record was queued, so when all of them are in the log,
/// every record is queued and none has to be written yet: the shutdown must flush them. Before the
/// background service, records still queued at exit (up to 50 ms of them) were lost.
#[tokio::test]
async fn sigterm_flushes_every_queued_usage_record() {
    let up = Upstreams::start().await;
    let config = up
        .config("")
        .replacen("server:\n", "server:\n  grace_period_seconds: 0\n", 1)
        .replace(
            "      - kind: api-key\n",
            "      - kind: api-key\n      - kind: rate-limit\n",
        );
    let mut gw = Gateway::start(&config).await;
    let sent = futures::future::join_all((0..20).map(|i| {
        let gw = &gw;
        async move {
            let r = gw
                .post_chat(PRO_KEY, &chat("gpt-4o-mini", &format!("hi {i}")))
                .await;
            assert_eq!(r.status(), 200);
            let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
            let _ = r.bytes().await.unwrap();
            rid
        }
    }))
    .await;
    let sent: HashSet<String> = sent.into_iter().collect();
    // Polled tightly rather than with `eventually`: the sooner SIGTERM follows the last record, the
    // surer a lost record shows (a drain tick in between would write them all).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sent.is_subset(&request_ids(&lines(&gw, "access"))) {
        assert!(
            Instant::now() < deadline,
            "requests not logged; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let status = gw.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}; log:\n{}", gw.log());
    let usage = lines(&gw, "usage");
    let recorded = request_ids(&usage);
    let lost: Vec<_> = sent.difference(&recorded).collect();
    assert!(
        lost.is_empty(),
        "usage records lost at shutdown: {lost:?}; log:\n{}",
        gw.log()
    );
    assert!(usage.iter().all(|v| v["schema_version"] == 1), "{usage:?}");
}

/// SIGTERM in the middle of a stream (issue 17's graceful shutdown, also what the old process of an
/// in-place upgrade does once it has handed its sockets over): the stream runs to its end within the
/// grace period, the client gets every event and `[DONE]`, the request's usage is recorded with what
/// the provider reported, and only then does the process exit, cleanly.
#[tokio::test]
async fn sigterm_lets_a_running_stream_finish_and_records_its_usage() {
    use futures::StreamExt;
    let mut up = Upstreams::start().await;
    // Realistic pacing: 150–400 ms to the first token, 10–30 ms between tokens.
    let (stubs, serve) = leaky_stubs::bind(leaky_stubs::StubsConfig {
        openai: "127.0.0.1:0".parse().unwrap(),
        gemini: "127.0.0.1:0".parse().unwrap(),
        qwen: "127.0.0.1:0".parse().unwrap(),
        latency: leaky_stubs::Latency::Realistic,
        ..Default::default()
    })
    .await
    .unwrap();
    tokio::spawn(serve);
    up.stubs = stubs;
    // The rate-limit filter meters the request, which is what records its usage.
    let config = up
        .config("")
        .replacen("server:\n", "server:\n  grace_period_seconds: 6\n", 1)
        .replace(
            "      - kind: api-key\n",
            "      - kind: api-key\n      - kind: rate-limit\n",
        );
    let mut gw = Gateway::start(&config).await;
    let mut body = chat("gpt-4o-mini", "tell me a long story");
    body["stream"] = true.into();
    body["max_tokens"] = 120.into();
    let r = gw.post_chat(PRO_KEY, &body).await;
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut events = r.bytes_stream();
    let first = events.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    let reader = tokio::spawn(async move {
        let mut text = String::from_utf8_lossy(&first).into_owned();
        while let Some(chunk) = events.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        (text, Instant::now())
    });

    let status = gw.terminate(Duration::from_secs(40)).await;
    let exited = Instant::now();
    let (text, ended) = reader.await.unwrap();
    assert!(status.success(), "{status}; log:\n{}", gw.log());
    assert!(
        ended <= exited,
        "the process exited before the stream ended"
    );
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "stream cut at shutdown: {text}"
    );
    let usage: Vec<Value> = lines(&gw, "usage")
        .into_iter()
        .filter(|v| v["request_id"] == rid.as_str())
        .collect();
    assert_eq!(usage.len(), 1, "usage of the stream; log:\n{}", gw.log());
    assert_eq!(usage[0]["source"], "reported", "{:?}", usage[0]);
    assert!(usage[0]["completion_tokens"].as_u64().unwrap() > 0);
}
