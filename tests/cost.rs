//! What a large prompt costs the gateway, on the real binary with one worker thread: its estimate
//! runs off the request workers (an unrelated request is answered meanwhile), a prompt whose byte
//! length alone cannot fit the caller's limits is refused before any exact count, and the memory a
//! burst of large bodies took goes back to the system afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The figures this test measures are printed for the record.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use crate::common;

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// The test config with one worker thread and `rate-limit` on every route: a generous token
/// limit for `pro`, the free demo tier's 10,000 tokens per minute for `free`.
fn config(up: &Upstreams) -> String {
    up.config("")
        .replace("  threads: 2\n", "  threads: 1\n")
        .replace(
            "      - kind: api-key\n",
            "      - kind: api-key\n      - kind: rate-limit\n",
        )
        .replace(
            "  pro: { priority: normal }\n",
            "  pro:\n    priority: normal\n    limits:\n      - { name: pro-tpm, unit: tokens, rate: 100000000, per: minute }\n",
        )
        .replace(
            "  free: { priority: low }\n",
            "  free:\n    priority: low\n    limits:\n      - { name: free-tpm, unit: tokens, rate: 10000, per: minute }\n",
        )
}

/// A chat request whose body is just under the gateway's 10 MiB maximum, its prompt one string with
/// no space: a single pre-tokenizer piece, the worst case for BPE.
fn ten_mib_prompt(model: &str) -> Vec<u8> {
    let head = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":""#);
    let tail = r#""}]}"#;
    let mut body = head.into_bytes();
    body.resize(10 * 1024 * 1024 - tail.len(), b'x');
    body.extend_from_slice(tail.as_bytes());
    body
}

async fn post_raw(gw: &Gateway, key: &str, body: Vec<u8>) -> reqwest::Response {
    gw.client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_large_prompt_being_estimated_does_not_hold_up_other_requests() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&config(&up)).await;
    let client = gw.client.clone();
    let big_url = gw.url("/v1/chat/completions");
    let big = tokio::spawn(async move {
        client
            .post(big_url)
            .bearer_auth(PRO_KEY)
            .header("content-type", "application/json")
            .body(ten_mib_prompt("capture-1"))
            .send()
            .await
    });
    // The whole body arrived and its estimate started (it takes seconds in a debug build).
    eventually(
        "the large prompt's estimate starts",
        Duration::from_secs(60),
        Some(&gw),
        || async { gw.metric("leaky_estimate_offloaded_total").await >= 1.0 },
    )
    .await;
    // The gateway's only worker thread answers an unrelated request meanwhile, before the large
    // request is done: before the fix it computed the estimate itself and answered nothing else.
    for _ in 0..3 {
        let models = gw
            .client
            .get(gw.url("/v1/models"))
            .bearer_auth(PRO_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(models.status(), 200);
        assert!(!big.is_finished(), "the large request finished first");
    }
    big.abort();
}

#[tokio::test]
async fn a_prompt_too_large_for_the_free_tier_is_refused_without_counting_it() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&config(&up)).await;
    // 10 MiB of text is at least 81,920 tokens (the longest token is 128 bytes): it can never fit
    // 10,000 tokens per minute.
    let r = post_raw(&gw, LIMITED_KEY, ten_mib_prompt("gpt-4o-mini")).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_none());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], json!("rate_limit_exceeded"));
    assert_eq!(body["error"]["type"], json!("tokens"));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Request too large (policy `free-tpm`)"),
        "{message}"
    );
    // Refused from the bound: no exact count ran.
    assert_eq!(
        gw.metric("leaky_estimate_bound_rejections_total").await,
        1.0
    );
    assert_eq!(
        gw.metric("leaky_ratelimit_decisions_total{decision=\"denied\",policy=\"free-tpm\"}")
            .await,
        1.0
    );
    // A small request of the same key still goes through.
    let ok = gw
        .post_chat(LIMITED_KEY, &chat("gpt-4o-mini", "hello"))
        .await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn memory_taken_by_a_burst_of_large_bodies_goes_back_to_the_system() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&config(&up)).await;
    let warm = gw
        .post_chat(LIMITED_KEY, &chat("gpt-4o-mini", "hello"))
        .await;
    assert_eq!(warm.status(), 200);
    let idle = common::rss_kib(gw.pid());
    // Eight 10 MiB bodies at once: read, parsed for their bound, refused.
    let burst = (0..8).map(|_| post_raw(&gw, LIMITED_KEY, ten_mib_prompt("gpt-4o-mini")));
    for r in futures::future::join_all(burst).await {
        assert_eq!(r.status(), 429);
    }
    let peak = common::rss_kib(gw.pid());
    // Back within 16 MiB of the idle figure, without any further request.
    let pid = gw.pid();
    eventually(
        "resident memory returns toward the idle figure",
        Duration::from_secs(20),
        Some(&gw),
        || async move { common::rss_kib(pid) < idle + 16 * 1024 },
    )
    .await;
    eprintln!(
        "idle {idle} KiB, after the burst {peak} KiB, then {} KiB",
        common::rss_kib(pid)
    );
}
