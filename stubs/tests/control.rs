//! Fault injection and provider-side limits, over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use leaky_stubs::{
    gemini_router_with, openai_router_with, qwen_router_with, FaultPlan, Latency, ManualClock,
    RateLimits, StubOptions,
};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

async fn serve(router: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, router).await;
    });
    format!("http://{addr}")
}

fn opts() -> StubOptions {
    StubOptions::new(Latency::Off)
}

fn chat_body() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]})
}

async fn chat(c: &Client, base: &str, key: &str, fault: Option<&str>) -> reqwest::Response {
    let mut rq = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body());
    if let Some(f) = fault {
        rq = rq.header("x-stub-fault", f);
    }
    rq.send().await.unwrap()
}

async fn statuses(c: &Client, base: &str, fault: Option<&str>, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(chat(c, base, "k", fault).await.status().as_u16());
    }
    out
}

#[tokio::test]
async fn header_faults_reproduce_per_seed() {
    let c = Client::new();
    let a = serve(openai_router_with(&opts())).await;
    let b = serve(openai_router_with(&opts())).await;
    let f42 = "status=503;rate=0.3;seed=42";
    let run_a = statuses(&c, &a, Some(f42), 40).await;
    let run_b = statuses(&c, &b, Some(f42), 40).await;
    assert_eq!(run_a, run_b, "same seed, same sequence");
    assert!(run_a.contains(&503) && run_a.contains(&200), "{run_a:?}");
    let plan = FaultPlan::parse(f42).unwrap();
    let expected: Vec<u16> = (0..40).map(|k| plan.decide(k).unwrap_or(200)).collect();
    assert_eq!(run_a, expected);
    let other = statuses(&c, &b, Some("status=503;rate=0.3;seed=7"), 40).await;
    assert_ne!(run_a, other, "different seeds differ");
}

#[tokio::test]
async fn configured_faults_reproduce_and_use_provider_shapes() {
    let c = Client::new();
    let plan = FaultPlan::parse("status=429:0.2;status=500:0.1;status=503:0.1;seed=9").unwrap();
    let o = StubOptions {
        faults: plan.clone(),
        ..opts()
    };
    let x = serve(openai_router_with(&o)).await;
    let y = serve(openai_router_with(&o)).await;
    let sx = statuses(&c, &x, None, 50).await;
    let sy = statuses(&c, &y, None, 50).await;
    assert_eq!(sx, sy);
    for s in [200, 429, 500, 503] {
        assert!(sx.contains(&s), "{s} in {sx:?}");
    }

    // OpenAI 429 with rate-limit headers.
    let base = serve(openai_router_with(&opts())).await;
    let r = chat(&c, &base, "k", Some("status=429")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    for h in [
        "retry-after",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ] {
        assert!(r.headers().contains_key(h), "{h}");
    }
    assert_eq!(r.headers()["x-stub-provider"], "openai");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "requests");
    let r = chat(&c, &base, "k", Some("status=500")).await;
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "server_error");
    let r = chat(&c, &base, "k", Some("status=bogus")).await;
    assert_eq!(r.status(), 400);

    // Google statuses, native and compat.
    let g = serve(gemini_router_with(&opts())).await;
    let gen = |fault: &'static str| {
        c.post(format!(
            "{g}/v1beta/models/gemini-2.0-flash:generateContent"
        ))
        .header("x-goog-api-key", "k")
        .header("x-stub-fault", fault)
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
    };
    let r = gen("status=429").await.unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(v["error"]["code"], 429);
    let r = gen("status=503").await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["status"], "UNAVAILABLE");
    let r = c
        .post(format!("{g}/v1beta/openai/chat/completions"))
        .bearer_auth("k")
        .header("x-stub-fault", "status=429")
        .json(
            &json!({"model": "gemini-2.0-flash", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v[0]["error"]["status"], "RESOURCE_EXHAUSTED");

    // DashScope Throttling.
    let q = serve(qwen_router_with(&opts())).await;
    let r = c
        .post(format!(
            "{q}/api/v1/services/aigc/text-generation/generation"
        ))
        .bearer_auth("k")
        .header("x-stub-fault", "status=429")
        .json(&json!({"model": "qwen-plus", "input": {"prompt": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "Throttling");
    assert!(v["request_id"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_faults() {
    let c = Client::new();
    let base = serve(openai_router_with(&opts())).await;
    let stream_body = json!({"model": "gpt-4o", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let send = |fault: &'static str| {
        c.post(format!("{base}/v1/chat/completions"))
            .bearer_auth("k")
            .header("x-stub-fault", fault)
            .header("x-stub-completion-tokens", "10")
            .json(&stream_body)
            .send()
    };
    // Disconnect after 3 chunks: the client gets exactly those 3 events, then
    // the connection closes without the end of the chunked body.
    for fault in ["disconnect-after=3", "disconnect-after=3;slow-stream=5ms"] {
        let mut r = Client::new()
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth("k")
            .header("x-stub-fault", fault)
            .json(&stream_body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut got = Vec::new();
        let err = loop {
            match r.chunk().await {
                Ok(Some(b)) => got.extend_from_slice(&b),
                Ok(None) => panic!("the stream ended cleanly"),
                Err(e) => break e,
            }
        };
        assert!(err.is_body() || err.is_decode(), "{err:?}");
        let got = String::from_utf8(got).unwrap();
        assert_eq!(got.matches("data: ").count(), 3, "{fault}: {got}");
        assert!(got.ends_with("\n\n"));
    }

    // The 3rd chunk's JSON is truncated; the others parse.
    let text = send("malformed-chunk=3")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 1 + 10 + 1 + 1);
    for (i, e) in events.iter().enumerate() {
        let data = e.strip_prefix("data: ").unwrap();
        if data == "[DONE]" {
            continue;
        }
        let ok = serde_json::from_str::<Value>(data).is_ok();
        assert_eq!(ok, i != 2, "event {i}: {e}");
    }

    // Slow stream: 13 chunks at 20 ms each.
    let t = std::time::Instant::now();
    send("slow-stream=20ms")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(13 * 20));

    // Hang until the client gives up; a bounded hang then answers.
    let hung = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("k")
        .header("x-stub-fault", "hang")
        .timeout(Duration::from_millis(300))
        .json(&chat_body())
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());
    let r = chat(&c, &base, "k", Some("hang=50ms")).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn provider_limits_per_key_with_a_manual_clock() {
    let c = Client::new();
    let clock = ManualClock::new(1_000_000 * 60_000);
    let o = StubOptions {
        limits: RateLimits {
            requests_per_minute: 3,
            tokens_per_minute: 0,
        },
        clock: clock.clone(),
        ..opts()
    };
    let base = serve(openai_router_with(&o)).await;
    for i in 0..3 {
        let r = chat(&c, &base, "a", None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "3");
        assert_eq!(
            r.headers()["x-ratelimit-remaining-requests"],
            (2 - i).to_string().as_str()
        );
    }
    let r = chat(&c, &base, "a", None).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    assert_eq!(r.headers()["x-ratelimit-reset-requests"], "1m0s");
    assert_eq!(r.headers()["retry-after"], "60");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("requests per min (RPM): Limit 3, Used 3"));
    // Another key has its own budget.
    assert_eq!(chat(&c, &base, "b", None).await.status(), 200);
    clock.advance(Duration::from_secs(45));
    let r = chat(&c, &base, "a", None).await;
    assert_eq!(r.headers()["retry-after"], "15");
    clock.advance(Duration::from_secs(15));
    assert_eq!(chat(&c, &base, "a", None).await.status(), 200);

    // Tokens per minute: charged with what the responses reported.
    let o = StubOptions {
        limits: RateLimits {
            requests_per_minute: 0,
            tokens_per_minute: 100,
        },
        clock: Arc::new(leaky_stubs::SystemClock),
        ..opts()
    };
    let base = serve(openai_router_with(&o)).await;
    let mut used = 0;
    let mut refused = None;
    for i in 0..20 {
        let r = c
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth("t")
            .header("x-stub-completion-tokens", "30")
            .json(&chat_body())
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            refused = Some((i, r));
            break;
        }
        let v: Value = r.json().await.unwrap();
        used += v["usage"]["total_tokens"].as_u64().unwrap();
    }
    let (i, r) = refused.expect("the TPM limit refuses");
    assert!(used >= 100 && i >= 2, "{used} {i}");
    assert_eq!(r.headers()["x-ratelimit-remaining-tokens"], "0");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "tokens");

    // Gemini and DashScope answer with their own 429s.
    let lim = StubOptions {
        limits: RateLimits {
            requests_per_minute: 1,
            tokens_per_minute: 0,
        },
        ..opts()
    };
    let g = serve(gemini_router_with(&lim)).await;
    let mut last = None;
    for _ in 0..2 {
        last = Some(
            c.post(format!(
                "{g}/v1beta/models/gemini-2.0-flash:countTokens?key=z"
            ))
            .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
            .send()
            .await
            .unwrap(),
        );
    }
    let r = last.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(
        v["error"]["details"][1]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    let q = serve(qwen_router_with(&lim)).await;
    let mut last = None;
    for _ in 0..2 {
        last = Some(
            c.post(format!(
                "{q}/api/v1/services/aigc/text-generation/generation"
            ))
            .bearer_auth("z")
            .json(&json!({"model": "qwen-plus", "input": {"prompt": "hi"}}))
            .send()
            .await
            .unwrap(),
        );
    }
    let r = last.unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "Throttling.RateQuota");
    // Health and metrics are never limited.
    let r = c.get(format!("{q}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
