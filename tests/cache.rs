//! The response cache end to end (issue 18): the real binary in front of the provider stubs, with
//! the in-process memory store and a real `redis-server` on a free loopback port. Upstream calls
//! are counted by the OpenAI stub's own `stub_requests_total`; a stored answer is awaited on
//! `leaky_cache_stored_total` (stores are written off the request), never on a sleep.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::{chat, eventually, sha256_hex, Gateway, Upstreams, PRO_KEY};
use leaky_limit::redis_server::RedisServer;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A second tenant: org `globex`, same tier as `PRO_KEY`'s org `acme`.
const OTHER_ORG_KEY: &str = "lt-test-globex";

/// Where a test's entries live.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Memory,
    Redis,
}

struct Rig {
    up: Upstreams,
    gw: Gateway,
    redis: Option<RedisServer>,
    config: String,
}

/// The shared test config with `route_cache` as the `/v1` route's `cache:` (flow YAML), a
/// rate-limit filter and daily quotas (no refill: every settlement shows exactly in the next
/// answer's `RateLimit` header), and the top-level `cache:` (memory budget `memory`, Redis).
fn config(
    up: &Upstreams,
    route_cache: &str,
    memory: u64,
    redis: Option<&str>,
    top_extra: &str,
) -> String {
    let other = format!(
        "  - {{ id: test-globex, sha256: {}, user: dave, org: globex, tier: pro }}\n",
        sha256_hex(OTHER_ORG_KEY.as_bytes())
    );
    let mut top = format!("{top_extra}cache:\n  memory: {{ max_bytes: {memory} }}\n");
    if let Some(url) = redis {
        top.push_str(&format!(
            "  redis: {{ url: \"{url}\", timeout_ms: 50, key_prefix: \"test:cache\" }}\n"
        ));
    }
    up.config(&(other + &top))
        .replacen(
            "      - kind: api-key\n",
            "      - kind: api-key\n      - kind: rate-limit\n",
            1,
        )
        .replacen(
            "    forward_headers: [\"x-stub-*\"]  # the stubs' diagnostics (x-stub-saw-*) back to the tests\n",
            // A stalled stream is cut after 300 ms of silence.
            &format!("    forward_headers: [\"x-stub-*\"]\n    timeouts: {{ idle_ms: 300 }}\n    cache: {route_cache}\n"),
            1,
        )
        .replacen(
            "    upstream: { provider: gemini, path_prefix: /v1beta }\n    filters: *chain\n",
            &format!("    upstream: {{ provider: gemini, path_prefix: /v1beta }}\n    filters: *chain\n    cache: {route_cache}\n"),
            1,
        )
        .replacen(
            "  pro: { priority: normal }\n",
            "  pro:
    limits:
      - { name: day, unit: tokens, quota: daily, limit: 1000000 }
      - { name: reqs, unit: requests, quota: daily, limit: 100000 }
",
            1,
        )
}

/// A rig whose `/v1` route caches in `kind` with `extra` settings (flow YAML fields).
async fn rig(kind: Kind, extra: &str) -> Rig {
    rig_with(kind, extra, 64 * 1024 * 1024).await
}

async fn rig_with(kind: Kind, extra: &str, memory: u64) -> Rig {
    rig_full(kind, extra, memory, "").await
}

/// A rig with more top-level config (`top_extra`, whole sections).
async fn rig_full(kind: Kind, extra: &str, memory: u64, top_extra: &str) -> Rig {
    let up = Upstreams::start().await;
    let redis = (kind == Kind::Redis)
        .then(|| RedisServer::spawn().expect("redis-server (./scripts/test installs it)"));
    let store = match kind {
        Kind::Memory => "memory",
        Kind::Redis => "redis",
    };
    let route = format!("{{ store: {store}, ttl_seconds: 300{extra} }}");
    let redis_url = redis.as_ref().map(|r| r.url());
    let config = config(&up, &route, memory, redis_url.as_deref(), top_extra);
    let gw = Gateway::start(&config).await;
    Rig {
        up,
        gw,
        redis,
        config,
    }
}

fn greedy(content: &str) -> Value {
    let mut b = chat("gpt-4o-mini", content);
    b["temperature"] = json!(0);
    b
}

fn streamed(content: &str, include_usage: bool) -> Value {
    let mut b = greedy(content);
    b["stream"] = json!(true);
    if include_usage {
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

/// Chat completions the OpenAI stub answered.
async fn upstream_calls(up: &Upstreams) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", up.stubs.openai))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("stub_requests_total{") && l.contains("chat/completions"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

struct Answer {
    status: u16,
    cache: String,
    age: Option<u64>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn send(gw: &Gateway, key: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
    let mut req = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let h = r.headers().clone();
    Answer {
        status: r.status().as_u16(),
        cache: h
            .get("x-leaky-cache")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default(),
        age: h.get("age").map(|v| v.to_str().unwrap().parse().unwrap()),
        headers: h,
        body: r.text().await.unwrap(),
    }
}

async fn ask(gw: &Gateway, body: &Value) -> Answer {
    send(gw, PRO_KEY, body, &[]).await
}

/// `leaky_cache_stored_total{store}` as the gateway reports it.
async fn stored(gw: &Gateway, kind: Kind) -> f64 {
    let label = match kind {
        Kind::Memory => "memory",
        Kind::Redis => "redis",
    };
    gw.metric(&format!("leaky_cache_stored_total{{store=\"{label}\"}}"))
        .await
}

/// Waits until `n` answers were stored in total.
async fn wait_stored(gw: &Gateway, kind: Kind, n: f64) {
    eventually(
        "the answer is stored",
        Duration::from_secs(10),
        Some(gw),
        || async move { stored(gw, kind).await >= n },
    )
    .await;
}

/// Miss, then hit with the same body and an `Age`; the caller's opt-outs bypass; a refusal on the
/// route says `bypass`; the upstream is called once per answer not served from the cache.
async fn hit_miss_bypass(kind: Kind) {
    let rig = rig(kind, "").await;
    let gw = &rig.gw;
    let q = greedy("What is a leaky bucket?");
    let first = ask(gw, &q).await;
    assert_eq!(
        (first.status, first.cache.as_str()),
        (200, "miss"),
        "{}",
        first.body
    );
    assert_eq!(first.age, None);
    wait_stored(gw, kind, 1.0).await;
    let second = ask(gw, &q).await;
    assert_eq!((second.status, second.cache.as_str()), (200, "hit"));
    assert_eq!(second.body, first.body, "the stored answer, byte for byte");
    assert!(second.age.is_some_and(|a| a < 60), "{:?}", second.age);
    assert_eq!(
        second.headers["content-type"],
        first.headers["content-type"]
    );
    assert!(second.headers.contains_key("x-request-id"));
    assert_ne!(
        second.headers["x-request-id"],
        first.headers["x-request-id"]
    );
    assert!(second
        .headers
        .contains_key("x-ratelimit-remaining-requests"));
    assert_eq!(upstream_calls(&rig.up).await, 1);

    // Sampling randomness (`temperature: never` by default), the opt-out header, no-store.
    let mut warm = q.clone();
    warm["temperature"] = json!(0.7);
    for (body, headers) in [
        (&warm, vec![]),
        (&q, vec![("x-leaky-cache", "bypass")]),
        (&q, vec![("cache-control", "no-store")]),
    ] {
        let a = send(gw, PRO_KEY, body, &headers).await;
        assert_eq!((a.status, a.cache.as_str()), (200, "bypass"), "{headers:?}");
    }
    assert_eq!(upstream_calls(&rig.up).await, 4);
    // no-cache: a refresh (not read, stored again).
    let a = send(gw, PRO_KEY, &q, &[("cache-control", "no-cache")]).await;
    assert_eq!((a.status, a.cache.as_str()), (200, "miss"));
    assert_eq!(upstream_calls(&rig.up).await, 5);
    // The access log says how the cache treated each request.
    let rid = second.headers["x-request-id"].to_str().unwrap().to_string();
    eventually(
        "the hit's access line",
        Duration::from_secs(10),
        Some(gw),
        || {
            let line = gw.log().lines().any(|l| {
                serde_json::from_str::<Value>(l)
                    .is_ok_and(|v| v["request_id"] == rid.as_str() && v["cache"] == "hit")
            });
            async move { line }
        },
    )
    .await;
    // A refusal before the cache decided.
    let a = send(gw, "lt-wrong-key", &q, &[]).await;
    assert_eq!((a.status, a.cache.as_str()), (401, "bypass"));
    // Other routes say nothing.
    let r = gw
        .client
        .post(gw.url("/qwen/api/v1/services/aigc/text-generation/generation"))
        .bearer_auth(PRO_KEY)
        .json(&json!({"model": "qwen-plus", "input": {"prompt": "hi"}}))
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("x-leaky-cache"));
    let text = gw.admin_text("/metrics").await;
    for sample in [
        "leaky_cache_requests_total{model=\"gpt-4o-mini\",result=\"hit\",route=\"v1\"} 1",
        "leaky_cache_requests_total{model=\"gpt-4o-mini\",result=\"miss\",route=\"v1\"} 2",
        "leaky_cache_requests_total{model=\"gpt-4o-mini\",result=\"bypass\",route=\"v1\"} 3",
        "leaky_cache_bypass_total{reason=\"randomness\",route=\"v1\"} 1",
        "leaky_cache_bypass_total{reason=\"opt_out\",route=\"v1\"} 1",
        "leaky_cache_bypass_total{reason=\"no_store\",route=\"v1\"} 1",
    ] {
        assert!(text.contains(sample), "{sample} in\n{text}");
    }
    let label = match kind {
        Kind::Memory => "memory",
        Kind::Redis => "redis",
    };
    let lookups = format!("leaky_cache_lookup_duration_seconds_count{{store=\"{label}\"}}");
    // The miss and the hit looked up; bypasses and the no-cache refresh did not.
    assert_eq!(gw.metric(&lookups).await, 2.0, "{text}");
    // The hit's original usage counts as tokens served from the cache.
    let hit_usage = &serde_json::from_str::<Value>(&second.body).unwrap()["usage"];
    let completion = gw
        .metric("leaky_cache_tokens_total{kind=\"completion\"}")
        .await;
    assert_eq!(completion, hit_usage["completion_tokens"].as_f64().unwrap());
    if kind == Kind::Memory {
        assert!(gw.metric("leaky_cache_entries{store=\"memory\"}").await >= 1.0);
        assert!(gw.metric("leaky_cache_bytes{store=\"memory\"}").await > first.body.len() as f64);
    }
}

#[tokio::test]
async fn hit_miss_and_bypass_in_memory() {
    hit_miss_bypass(Kind::Memory).await;
}

#[tokio::test]
async fn hit_miss_and_bypass_in_redis() {
    hit_miss_bypass(Kind::Redis).await;
}

/// Two orgs asking the same question are two entries: no tenant sees another's answer.
async fn tenants_are_isolated(kind: Kind) {
    let rig = rig(kind, "").await;
    let gw = &rig.gw;
    let q = greedy("Which tenant am I?");
    let a = send(gw, PRO_KEY, &q, &[]).await;
    let b = send(gw, OTHER_ORG_KEY, &q, &[]).await;
    assert_eq!((a.cache.as_str(), b.cache.as_str()), ("miss", "miss"));
    assert_eq!(upstream_calls(&rig.up).await, 2);
    wait_stored(gw, kind, 2.0).await;
    let a2 = send(gw, PRO_KEY, &q, &[]).await;
    let b2 = send(gw, OTHER_ORG_KEY, &q, &[]).await;
    assert_eq!((a2.cache.as_str(), b2.cache.as_str()), ("hit", "hit"));
    assert_eq!((a2.body, b2.body), (a.body, b.body), "each its own answer");
    assert_eq!(upstream_calls(&rig.up).await, 2);
}

#[tokio::test]
async fn two_orgs_make_two_upstream_calls_in_memory() {
    tenants_are_isolated(Kind::Memory).await;
}

#[tokio::test]
async fn two_orgs_make_two_upstream_calls_in_redis() {
    tenants_are_isolated(Kind::Redis).await;
}

/// A stream's SSE events, `data:` payloads in order.
fn events(body: &str) -> Vec<&str> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap_or(e))
        .collect()
}

/// A second identical stream is replayed byte for byte, well-formed and ending in `[DONE]`; the
/// usage chunk only when asked (the gateway asked upstream for it either way, to meter).
async fn streams_replay(kind: Kind) {
    let rig = rig(kind, "").await;
    let gw = &rig.gw;
    for (n, include_usage) in [(1.0, false), (2.0, true)] {
        let q = streamed("Stream me a story.", include_usage);
        let first = ask(gw, &q).await;
        assert_eq!((first.status, first.cache.as_str()), (200, "miss"));
        wait_stored(gw, kind, n).await;
        let hit = ask(gw, &q).await;
        assert_eq!((hit.status, hit.cache.as_str()), (200, "hit"));
        assert!(hit.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        assert_eq!(hit.body, first.body, "byte-identical replay");
        let ev = events(&hit.body);
        assert_eq!(ev.last(), Some(&"[DONE]"), "{}", hit.body);
        let chunks: Vec<Value> = ev[..ev.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert!(chunks.len() > 1, "{}", hit.body);
        let usage_chunks = chunks.iter().filter(|c| !c["usage"].is_null()).count();
        assert_eq!(usage_chunks, usize::from(include_usage), "{}", hit.body);
    }
    assert_eq!(upstream_calls(&rig.up).await, 2);
}

#[tokio::test]
async fn a_stream_is_replayed_byte_identical_in_memory() {
    streams_replay(Kind::Memory).await;
}

#[tokio::test]
async fn a_stream_is_replayed_byte_identical_in_redis() {
    streams_replay(Kind::Redis).await;
}

/// Gemini native: a `streamGenerateContent` SSE stream is replayed byte for byte in Google's own
/// format (every event a `GenerateContentResponse`, usage in the last), and so is `generateContent`.
#[tokio::test]
async fn a_gemini_native_stream_is_replayed_in_its_own_format() {
    let rig = rig(Kind::Memory, "").await;
    let gw = &rig.gw;
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "Stream me a poem."}]}],
        "generationConfig": {"temperature": 0}});
    let mut n = 0.0;
    for method in ["streamGenerateContent?alt=sse", "generateContent"] {
        let url = gw.url(&format!("/gemini/v1beta/models/gemini-2.5-flash:{method}"));
        let mut answers = Vec::new();
        for _ in 0..2 {
            let r = gw
                .client
                .post(&url)
                .header("x-goog-api-key", PRO_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let cache = r.headers()["x-leaky-cache"].to_str().unwrap().to_string();
            answers.push((cache, r.text().await.unwrap()));
            if answers.len() == 1 {
                n += 1.0;
                wait_stored(gw, Kind::Memory, n).await;
            }
        }
        assert_eq!(
            (answers[0].0.as_str(), answers[1].0.as_str()),
            ("miss", "hit")
        );
        assert_eq!(
            answers[1].1, answers[0].1,
            "{method}: byte-identical replay"
        );
    }
    let stream = ask_gemini_events(&rig).await;
    assert!(stream.len() > 1);
    assert!(!stream.last().unwrap()["usageMetadata"].is_null());
}

/// The events of the cached Gemini stream (a third request: a hit).
async fn ask_gemini_events(rig: &Rig) -> Vec<Value> {
    let gw = &rig.gw;
    let r = gw
        .client
        .post(gw.url("/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"))
        .header("x-goog-api-key", PRO_KEY)
        .json(
            &json!({"contents": [{"role": "user", "parts": [{"text": "Stream me a poem."}]}],
            "generationConfig": {"temperature": 0}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-leaky-cache"], "hit");
    let text = r.text().await.unwrap().replace("\r\n", "\n");
    events(&text)
        .into_iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// A stream the gateway cut (the upstream stalled) is never stored: the next request misses.
#[tokio::test]
async fn a_cut_stream_is_not_stored() {
    let rig = rig(Kind::Memory, "").await;
    let gw = &rig.gw;
    let q = streamed("Stall in the middle.", false);
    let cut = send(gw, PRO_KEY, &q, &[("x-stub-fault", "stall-after=2")]).await;
    assert_eq!((cut.status, cut.cache.as_str()), (200, "miss"));
    assert!(cut.body.contains("stalled"), "{}", cut.body);
    let again = ask(gw, &q).await;
    assert_eq!(again.cache, "miss", "the cut answer was not stored");
    wait_stored(gw, Kind::Memory, 1.0).await;
    assert_eq!(ask(gw, &q).await.cache, "hit");
    assert_eq!(upstream_calls(&rig.up).await, 2);
    assert_eq!(stored(gw, Kind::Memory).await, 1.0);
}

/// N concurrent identical misses make one upstream call; every caller gets the answer.
#[tokio::test]
async fn concurrent_identical_misses_make_one_upstream_call() {
    let rig = rig(Kind::Memory, "").await;
    let gw = &rig.gw;
    let q = greedy("Everyone asks this at once.");
    // The upstream holds its answer 300 ms: every request arrives while the first is in flight.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, url, q) = (gw.client.clone(), gw.url("/v1/chat/completions"), q.clone());
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(PRO_KEY)
                    .header("x-stub-fault", "hang=300ms")
                    .json(&q)
                    .send()
                    .await
                    .unwrap();
                let cache = r.headers()["x-leaky-cache"].to_str().unwrap().to_string();
                (r.status().as_u16(), cache, r.text().await.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert_eq!(upstream_calls(&rig.up).await, 1);
    assert!(answers
        .iter()
        .all(|(s, _, b)| *s == 200 && *b == answers[0].2));
    let misses = answers.iter().filter(|(_, c, _)| c == "miss").count();
    assert_eq!(misses, 1, "one leader; the others replayed its answer");
}

/// Redis down: every request is a miss answered by the upstream, in bounded time, and counted.
#[tokio::test]
async fn redis_down_is_a_miss_with_bounded_latency() {
    let mut rig = rig(Kind::Redis, "").await;
    let gw = &rig.gw;
    let q = greedy("Is Redis there?");
    assert_eq!(ask(gw, &q).await.cache, "miss");
    wait_stored(gw, Kind::Redis, 1.0).await;
    assert_eq!(ask(gw, &q).await.cache, "hit");
    rig.redis.as_mut().unwrap().kill();
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let start = Instant::now();
        let a = ask(gw, &q).await;
        slowest = slowest.max(start.elapsed());
        assert_eq!((a.status, a.cache.as_str()), (200, "miss"), "{}", a.body);
        assert!(serde_json::from_str::<Value>(&a.body).unwrap()["choices"].is_array());
    }
    assert!(slowest < Duration::from_millis(1000), "{slowest:?}");
    assert_eq!(upstream_calls(&rig.up).await, 6);
    let unavailable = gw
        .metric("leaky_cache_store_unavailable_total{store=\"redis\"}")
        .await;
    assert!(unavailable >= 1.0, "{unavailable}");
}

/// One more request: (remaining day tokens and requests at its admission, its cache result, its
/// request id).
async fn quota(gw: &Gateway, q: &Value) -> (u64, u64, String, String) {
    let a = ask(gw, q).await;
    (
        common::ratelimit_remaining(&a.headers, "day"),
        common::ratelimit_remaining(&a.headers, "reqs"),
        a.cache,
        a.headers["x-request-id"].to_str().unwrap().to_string(),
    )
}

/// A hit counts as a request and consumes `charge` of the original tokens (rounded up).
async fn metering(charge: &str, expect: fn(u64, u64) -> u64) {
    let rig = rig(Kind::Memory, &format!(", charge: {charge}")).await;
    let gw = &rig.gw;
    let q = greedy("Meter me.");
    let first = ask(gw, &q).await;
    assert_eq!(first.cache, "miss");
    let usage = &serde_json::from_str::<Value>(&first.body).unwrap()["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    let charged = expect(prompt, completion);
    wait_stored(gw, Kind::Memory, 1.0).await;
    // Each hit's admission reserves the same estimate; the difference between two consecutive
    // admissions is what the hit between them settled with.
    let (t1, r1, c1, rid) = quota(gw, &q).await;
    let (t2, r2, c2, _) = quota(gw, &q).await;
    assert_eq!((c1.as_str(), c2.as_str()), ("hit", "hit"));
    assert_eq!(r1 - r2, 1, "a hit counts as a request");
    assert_eq!(
        t1 - t2,
        charged,
        "charge {charge} of {prompt} + {completion}"
    );
    // The hit's record: the original usage, marked cached, with what it was charged.
    let rec = gw.usage_record(&rid).await;
    assert_eq!(rec["cached"], true, "{rec}");
    assert_eq!(rec["prompt_tokens"], usage["prompt_tokens"], "{rec}");
    assert_eq!(
        rec["completion_tokens"], usage["completion_tokens"],
        "{rec}"
    );
    assert_eq!(rec["source"], "reported", "{rec}");
    assert_eq!(rec["charged_tokens"].as_u64(), Some(charged), "{rec}");
    let live = gw
        .usage_record(first.headers["x-request-id"].to_str().unwrap())
        .await;
    assert_eq!(live["cached"], false, "{live}");
}

#[tokio::test]
async fn a_free_hit_counts_the_request_but_no_tokens() {
    metering("0", |_, _| 0).await;
}

#[tokio::test]
async fn a_half_charged_hit_consumes_half_the_tokens() {
    // Each count is rounded up on its own.
    metering("0.5", |p, c| p.div_ceil(2) + c.div_ceil(2)).await;
}

/// An answer of a fixed length (the stub's forced completion), so entries weigh about the same.
async fn ask_sized(gw: &Gateway, q: &Value) -> Answer {
    send(gw, PRO_KEY, q, &[("x-stub-completion-tokens", "60")]).await
}

/// A prepaid balance (`unit: balance`) is charged a hit's `charge` of the original tokens, like
/// any token limit.
#[tokio::test]
async fn a_hit_charges_a_prepaid_balance_its_share() {
    let balance = "limits:\n  policies:\n    - { name: prepaid, unit: balance }\nbalances:\n  acme: 1000000\n";
    let rig = rig_full(Kind::Memory, ", charge: 0.5", 64 * 1024 * 1024, balance).await;
    let gw = &rig.gw;
    let q = greedy("Bill my balance.");
    let first = ask(gw, &q).await;
    assert_eq!(first.cache, "miss");
    let usage = &serde_json::from_str::<Value>(&first.body).unwrap()["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    wait_stored(gw, Kind::Memory, 1.0).await;
    let left = |a: &Answer| common::ratelimit_remaining(&a.headers, "prepaid");
    let (h1, h2) = (ask(gw, &q).await, ask(gw, &q).await);
    assert_eq!((h1.cache.as_str(), h2.cache.as_str()), ("hit", "hit"));
    assert_eq!(left(&h1) - left(&h2), p.div_ceil(2) + c.div_ceil(2));
}

/// A byte budget of about two entries: the third evicts the least recently used.
#[tokio::test]
async fn the_memory_store_evicts_the_least_recently_used() {
    let mut rig = rig(Kind::Memory, "").await;
    let probe = ask_sized(&rig.gw, &greedy("size probe")).await;
    // The probe's answer is stored after it is sent: wait for it, or its late count would pass
    // for A's below and A's store could land after the reads that make B the oldest.
    wait_stored(&rig.gw, Kind::Memory, 1.0).await;
    // An entry weighs its body plus under 100 bytes: two fit in 2.5 entries, three do not.
    let budget = (probe.body.len() as u64 + 90) * 5 / 2;
    let config = rig
        .config
        .replace(
            "memory: { max_bytes: 67108864 }",
            &format!("memory: {{ max_bytes: {budget} }}"),
        )
        .replace(
            "ttl_seconds: 300",
            &format!("ttl_seconds: 300, max_entry_bytes: {}", budget / 2),
        );
    let v = rig.gw.config_version().await;
    rig.gw.write_config(&config);
    rig.gw.wait_version_change(v, Duration::from_secs(10)).await;
    rig.config = config;
    let gw = &rig.gw;
    let base = stored(gw, Kind::Memory).await;
    let (a, b, c) = (greedy("A"), greedy("B"), greedy("C"));
    for (i, q) in [&a, &b].into_iter().enumerate() {
        assert_eq!(ask_sized(gw, q).await.cache, "miss");
        wait_stored(gw, Kind::Memory, base + i as f64 + 1.0).await;
    }
    // A scrape applies moka's buffered writes of A and B. The scrape that saw B's count may have
    // run them before B's insert ended, and moka applies buffered reads before writes: A's read
    // below, applied with A's own write still pending, would be lost and leave A the oldest.
    gw.admin_text("/metrics").await;
    // A is used again: B is now the least recently used.
    assert_eq!(ask_sized(gw, &a).await.cache, "hit");
    gw.admin_text("/metrics").await; // a scrape applies the store's pending LRU bookkeeping
    assert_eq!(ask_sized(gw, &c).await.cache, "miss");
    wait_stored(gw, Kind::Memory, base + 3.0).await;
    eventually(
        "an entry is evicted",
        Duration::from_secs(10),
        Some(gw),
        || async {
            gw.metric("leaky_cache_evictions_total{store=\"memory\"}")
                .await
                >= 1.0
        },
    )
    .await;
    assert_eq!(ask_sized(gw, &a).await.cache, "hit");
    assert_eq!(ask_sized(gw, &c).await.cache, "hit");
    assert_eq!(ask_sized(gw, &b).await.cache, "miss", "B was evicted");
}

/// A reload that keeps `cache.memory.max_bytes` keeps the memory store's entries.
#[tokio::test]
async fn a_reload_keeps_the_memory_store() {
    let rig = rig(Kind::Memory, "").await;
    let gw = &rig.gw;
    let q = greedy("Survive a reload.");
    assert_eq!(ask(gw, &q).await.cache, "miss");
    wait_stored(gw, Kind::Memory, 1.0).await;
    let v = gw.config_version().await;
    gw.write_config(&rig.config.replace("ttl_seconds: 300", "ttl_seconds: 600"));
    gw.wait_version_change(v, Duration::from_secs(10)).await;
    assert_eq!(ask(gw, &q).await.cache, "hit");
    assert_eq!(upstream_calls(&rig.up).await, 1);
}

/// The cache answers only after authentication: a key taken away by a reload is refused, not served
/// its org's cached answer, while another key of the same org still hits it.
#[tokio::test]
async fn a_revoked_key_is_refused_even_with_its_answer_cached() {
    const SECOND_KEY: &str = "lt-test-acme-2";
    let second = format!(
        "  - {{ id: test-acme-2, sha256: {}, user: bob, org: acme, tier: pro }}\n",
        sha256_hex(SECOND_KEY.as_bytes())
    );
    // `top_extra` follows the key list's last line: one more key of org `acme`.
    let rig = rig_full(Kind::Memory, "", 64 * 1024 * 1024, &second).await;
    let gw = &rig.gw;
    let q = greedy("Revoke me.");
    assert_eq!(ask(gw, &q).await.cache, "miss");
    wait_stored(gw, Kind::Memory, 1.0).await;
    assert_eq!(send(gw, SECOND_KEY, &q, &[]).await.cache, "hit");
    let pro_line = format!(
        "  - {{ id: test-pro, sha256: {}, user: alice, org: acme, tier: pro }}\n",
        sha256_hex(PRO_KEY.as_bytes())
    );
    assert!(rig.config.contains(&pro_line), "the test key's line");
    let v = gw.config_version().await;
    gw.write_config(&rig.config.replace(&pro_line, ""));
    gw.wait_version_change(v, Duration::from_secs(10)).await;
    let refused = ask(gw, &q).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_ne!(refused.cache, "hit");
    assert_eq!(send(gw, SECOND_KEY, &q, &[]).await.cache, "hit");
    assert_eq!(upstream_calls(&rig.up).await, 1);
}
