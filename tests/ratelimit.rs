//! Rate limits end to end on the real binary with the in-process store: the shipped quickstart
//! config's demo keys, exact settlement visible in the next request's headers, concurrency, streams
//! cut mid-way, and refusals in each dialect.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// The gateway on the shipped `config/dev.yaml`, its providers pointed at in-process stubs.
async fn quickstart() -> (Upstreams, Gateway) {
    let up = Upstreams::start().await;
    let (o, g, q) = (
        format!("http://{}", up.stubs.openai),
        format!("http://{}", up.stubs.gemini),
        format!("http://{}", up.stubs.qwen),
    );
    let dev = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/dev.yaml");
    let gw = Gateway::start_file(
        &dev,
        &[
            ("OPENAI_BASE_URL", &o),
            ("GEMINI_BASE_URL", &g),
            ("DASHSCOPE_BASE_URL", &q),
        ],
    )
    .await;
    (up, gw)
}

async fn post(gw: &Gateway, key: &str, body: &Value) -> reqwest::Response {
    gw.post_chat(key, body).await
}

fn capped(model: &str, max_tokens: u64) -> Value {
    let mut b = chat(model, "Say something about rate limits.");
    b["max_tokens"] = json!(max_tokens);
    b
}

#[tokio::test]
async fn free_demo_key_is_cut_off_at_its_advertised_limits() {
    let (_up, gw) = quickstart().await;
    // A completion cap that cannot fit the 10,000 tokens/min budget is refused outright, and takes
    // nothing from any bucket (all or nothing).
    let r = post(&gw, "lt-demo-free", &capped("gpt-4o-mini", 20_000)).await;
    assert_eq!(r.status(), 429);
    assert!(
        r.headers().get("retry-after").is_none(),
        "waiting cannot help"
    );
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "tokens");
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Request too large (policy `free-tpm`)"),
        "{msg}"
    );

    // 20 requests/min: the 20 go through, the 21st is refused with Retry-After.
    for i in 0..20 {
        let r = post(&gw, "lt-demo-free", &capped("gpt-4o-mini", 16)).await;
        assert_eq!(r.status(), 200, "request {i}: {}", r.text().await.unwrap());
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "20");
        assert_eq!(
            r.headers()["x-ratelimit-remaining-requests"],
            (19 - i).to_string().as_str()
        );
    }
    let r = post(&gw, "lt-demo-free", &capped("gpt-4o-mini", 16)).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=3).contains(&retry),
        "one request per 3 s refills: {retry}"
    );
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "requests");
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");

    // The same key on Gemini's native route: the refusal in Google's shape.
    let r = gw
        .client
        .post(gw.url("/gemini/v1beta/models/gemini-2.5-flash:generateContent"))
        .header("x-goog-api-key", "lt-demo-free")
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(e["error"]["code"], 429);

    // And DashScope's.
    let r = gw
        .client
        .post(gw.url("/qwen/api/v1/services/aigc/text-generation/generation"))
        .bearer_auth("lt-demo-free")
        .json(&json!({"model": "qwen-plus", "input": {"messages": [{"role": "user", "content": "hi"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "Throttling");
    assert!(e["request_id"].as_str().is_some_and(|s| !s.is_empty()));

    // Every decision is counted per policy (in the completion phase, just after the response).
    let denied =
        |p: &str| format!("leaky_ratelimit_decisions_total{{decision=\"denied\",policy=\"{p}\"}}");
    eventually(
        "denials are counted",
        Duration::from_secs(5),
        Some(&gw),
        || async {
            gw.metric(&denied("free-rpm")).await == 3.0
                && gw.metric(&denied("free-tpm")).await == 1.0
        },
    )
    .await;
}

/// Reserve-then-settle is exact: the daily quota (no refill) in the next response's headers moves by
/// exactly the provider-reported usage, for plain, streamed and stripped-stream responses.
#[tokio::test]
async fn streamed_and_unstreamed_usage_show_up_exactly_in_the_next_headers() {
    let (_up, gw) = quickstart().await;
    let key = "lt-demo-pro";
    let plain = capped("gpt-4o-mini", 40);

    let r1 = post(&gw, key, &plain).await;
    assert_eq!(r1.status(), 200);
    let q1 = common::ratelimit_remaining(r1.headers(), "pro-tpd");
    let u1: Value = r1.json().await.unwrap();
    let (p1, t1) = (
        u1["usage"]["prompt_tokens"].as_u64().unwrap(),
        u1["usage"]["total_tokens"].as_u64().unwrap(),
    );

    // The estimate is the stub's own count, so after settlement the next identical request's
    // standing is the first one's minus exactly what the provider reported.
    let r2 = post(&gw, key, &plain).await;
    let q2 = common::ratelimit_remaining(r2.headers(), "pro-tpd");
    assert_eq!(q2, q1 - t1, "q1={q1} usage={t1}");
    assert_eq!(r2.headers()["x-ratelimit-limit-tokens"], "200000");
    let t2 = r2.json::<Value>().await.unwrap()["usage"]["total_tokens"]
        .as_u64()
        .unwrap();

    // A stream that asked for usage: the final usage chunk settles it.
    let mut streamed = capped("gpt-4o-mini", 30);
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r3 = post(&gw, key, &streamed).await;
    let q3 = common::ratelimit_remaining(r3.headers(), "pro-tpd");
    assert_eq!(q3, q2 + (p1 + 40) - t2 - (p1 + 30));
    let text = r3.text().await.unwrap();
    let usage = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .find(|v| v["usage"].is_object())
        .expect("the caller asked for usage and gets it");
    let (p3, t3) = (
        usage["usage"]["prompt_tokens"].as_u64().unwrap(),
        usage["usage"]["total_tokens"].as_u64().unwrap(),
    );
    let r4 = post(&gw, key, &plain).await;
    let q4 = common::ratelimit_remaining(r4.headers(), "pro-tpd");
    assert_eq!(q4, q3 + (p3 + 30) - t3 - (p1 + 40));
    let t4 = r4.json::<Value>().await.unwrap()["usage"]["total_tokens"]
        .as_u64()
        .unwrap();

    // A stream that did not ask: the gateway asks upstream, settles with it, and the caller's stream
    // carries no usage chunk.
    streamed.as_object_mut().unwrap().remove("stream_options");
    streamed["max_tokens"] = json!(25);
    let r5 = post(&gw, key, &streamed).await;
    let q5 = common::ratelimit_remaining(r5.headers(), "pro-tpd");
    let text = r5.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        !text.contains("\"usage\":{"),
        "no usage chunk the caller did not ask for: {text}"
    );
    let content: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    let c5 = leaky_tokenize::Tokenizer::O200k.text(&content);
    let r6 = post(&gw, key, &plain).await;
    let q6 = common::ratelimit_remaining(r6.headers(), "pro-tpd");
    assert_eq!(q6, q5 + (p1 + 25) - (p1 + c5) - (p1 + 40), "t4={t4}");

    // Tokens and settlements are counted: t1 + t2 + t4 completion-bearing plain requests, both streams.
    let completion = "leaky_tokens_total{kind=\"completion\",provider=\"openai\"}";
    let reported = "leaky_ratelimit_settlements_total{source=\"reported\"}";
    eventually(
        "tokens and settlements are counted",
        Duration::from_secs(5),
        Some(&gw),
        || async {
            gw.metric(reported).await == 6.0 && gw.metric(completion).await >= (t1 - p1) as f64
        },
    )
    .await;
    // The usage records went to the log, one per request, with the provider's numbers.
    eventually(
        "usage records are logged",
        Duration::from_secs(5),
        Some(&gw),
        || async { gw.log().matches("\"source\":\"reported\"").count() >= 6 },
    )
    .await;
}

#[tokio::test]
async fn two_hundred_concurrent_requests_never_admit_more_than_the_limit() {
    let up = Upstreams::start().await;
    let config = with_limits(
        &up.config(""),
        "    limits:\n      - { name: burst-50, unit: requests, rate: 50, per: hour }\n",
    );
    let gw = Gateway::start(&config).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(200)
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (c, url) = (client.clone(), gw.url("/v1/chat/completions"));
            tokio::spawn(async move {
                c.post(url)
                    .bearer_auth(PRO_KEY)
                    .json(&chat("gpt-4o-mini", "hi"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    // One unit refills every 72 s, far longer than the run: exactly the burst is admitted.
    assert_eq!((ok, limited), (50, 150));
}

#[tokio::test]
async fn a_stream_cut_by_the_client_settles_the_tokens_already_streamed() {
    // Realistic pacing (10–30 ms between tokens) so the client can leave mid-stream.
    let cfg = leaky_stubs::StubsConfig {
        openai: "127.0.0.1:0".parse().unwrap(),
        gemini: "127.0.0.1:0".parse().unwrap(),
        qwen: "127.0.0.1:0".parse().unwrap(),
        latency: leaky_stubs::Latency::Realistic,
        ..Default::default()
    };
    let (stubs, serve) = leaky_stubs::bind(cfg).await.unwrap();
    tokio::spawn(serve);
    let up = Upstreams::start().await;
    let config = with_limits(
        &up.config("")
            .replace(&up.stubs.openai.to_string(), &stubs.openai.to_string()),
        "    limits:\n      - { name: day, unit: tokens, quota: daily, limit: 1000000 }\n",
    );
    let gw = Gateway::start(&config).await;

    let mut body = capped("gpt-4o-mini", 400);
    body["stream"] = json!(true);
    let mut r = post(&gw, PRO_KEY, &body).await;
    assert_eq!(r.status(), 200);
    let q_stream = common::ratelimit_remaining(r.headers(), "day");
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    // Read ten content chunks, then hang up.
    let mut seen = String::new();
    let mut buf = String::new();
    let mut chunks = 0;
    while chunks < 10 {
        let bytes = r
            .chunk()
            .await
            .unwrap()
            .expect("the stream is longer than 10 chunks");
        buf.push_str(std::str::from_utf8(&bytes).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if let Some(v) = event
                .strip_prefix("data: ")
                .and_then(|d| serde_json::from_str::<Value>(d.trim()).ok())
            {
                if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                    seen.push_str(c);
                    chunks += 1;
                }
            }
        }
    }
    drop(r);
    let received = leaky_tokenize::Tokenizer::O200k.text(&seen);

    // The gateway notices on its next write, settles with what it streamed, and logs a counted record.
    let mut counted = 0;
    eventually(
        "the cut stream is settled",
        Duration::from_secs(10),
        Some(&gw),
        || {
            let log = gw.log();
            let rid = rid.clone();
            let found = log
                .lines()
                .filter(|l| l.contains("\"source\":\"counted\"") && l.contains(&rid))
                .find_map(|l| {
                    let v: Value = serde_json::from_str(l).ok()?;
                    v["completion_tokens"].as_u64()
                });
            if let Some(c) = found {
                counted = c;
            }
            async move { found.is_some() }
        },
    )
    .await;
    assert!(
        counted >= received && counted <= received + 8 && counted < 400,
        "counted {counted}, client received {received} of at most 400"
    );

    // And the quota moved by exactly prompt + streamed-so-far, not by the 400-token reservation.
    let mut plain = capped("gpt-4o-mini", 10);
    plain["messages"] = body["messages"].clone();
    let r = post(&gw, PRO_KEY, &plain).await;
    let q_next = common::ratelimit_remaining(r.headers(), "day");
    let prompt = r.json::<Value>().await.unwrap()["usage"]["prompt_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(
        q_next,
        q_stream + (prompt + 400) - (prompt + counted) - (prompt + 10)
    );
}

/// Adds `rate-limit` to every route's chain and `limits` to the `pro` tier of the test config.
fn with_limits(config: &str, pro_limits: &str) -> String {
    let c = config.replace(
        "      - kind: api-key\n",
        "      - kind: api-key\n      - kind: rate-limit\n",
    );
    c.replace(
        "  pro: { priority: normal }\n",
        &format!("  pro:\n    priority: normal\n{pro_limits}"),
    )
}

#[tokio::test]
async fn buckets_survive_a_reload_unless_their_policy_changed() {
    let up = Upstreams::start().await;
    let limits = "    limits:\n      - { name: two, unit: requests, rate: 2, per: hour }\n";
    let config = with_limits(&up.config(""), limits);
    let gw = Gateway::start(&config).await;
    let status = |gw: &Gateway| {
        let req = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(PRO_KEY)
            .json(&chat("gpt-4o-mini", "hi"));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!((status(&gw).await, status(&gw).await), (200, 200));
    assert_eq!(status(&gw).await, 429);

    // An unrelated edit (a new tier): the `two` bucket keeps its state.
    let v = gw.config_version().await;
    gw.write_config(&config.replace(
        "  free: { priority: low }\n",
        "  free: { priority: low }\n  gold: { priority: high }\n",
    ));
    gw.wait_version_change(v, Duration::from_secs(10)).await;
    assert_eq!(
        status(&gw).await,
        429,
        "an unchanged policy keeps its bucket"
    );

    // The policy itself changes: a fresh bucket under the new settings.
    let v = gw.config_version().await;
    gw.write_config(&config.replace("rate: 2, per: hour", "rate: 3, per: hour"));
    gw.wait_version_change(v, Duration::from_secs(10)).await;
    assert_eq!(status(&gw).await, 200, "an edited policy starts fresh");
}
