//! Stopping the gateway (issue #12): a graceful stop (SIGTERM) writes every usage record that was
//! queued, instead of losing those of the last drain interval with the process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{chat, Gateway, Upstreams, PRO_KEY};
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
