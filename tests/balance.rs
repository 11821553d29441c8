//! Prepaid balances (`unit: balance`) end to end on the real binary with the in-process store and
//! the provider stubs: org `acme` (the pro key's) is credited 1,000 tokens through `balances:`;
//! requests go through until their estimate no longer fits, then each dialect refuses in its own
//! shape; `debited` is exactly the sum of the providers' reported `total_tokens`; a reload that
//! raises the credit keeps what was debited.
//!
//! `debited` is read from the refusal's `RateLimit` field (`r=` is `credited − debited` on a
//! refusal: nothing was reserved, and the in-process store settles inline before the response ends).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn config(up: &Upstreams, credited: u64) -> String {
    up.config("")
        .replace(
            "      - kind: api-key\n",
            "      - kind: api-key\n      - kind: rate-limit\n",
        )
        + &format!(
            "limits:\n  policies:\n    - {{ name: prepaid, unit: balance }}\nbalances:\n  acme: {credited}\n"
        )
}

fn capped(max_tokens: u64) -> Value {
    let mut b = chat("gpt-4o-mini", "Tell me about prepaid balances.");
    b["max_tokens"] = json!(max_tokens);
    b
}

/// Sends capped requests until one is refused; returns the sum of the admitted ones' reported
/// `total_tokens` and the refusal.
async fn spend_until_refused(gw: &Gateway, max_tokens: u64) -> (u64, reqwest::Response) {
    let mut used = 0;
    for _ in 0..1000 {
        let r = gw.post_chat(PRO_KEY, &capped(max_tokens)).await;
        if r.status() != 200 {
            return (used, r);
        }
        let v: Value = r.json().await.unwrap();
        used += v["usage"]["total_tokens"].as_u64().unwrap();
    }
    panic!("never refused");
}

async fn assert_openai_refusal(r: reqwest::Response) {
    assert_eq!(r.status(), 429);
    assert!(
        r.headers().get("retry-after").is_none(),
        "a balance does not refill: no time to wait for"
    );
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "insufficient_quota");
    assert_eq!(e["error"]["code"], "insufficient_quota");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("prepaid token balance"), "{msg}");
}

#[tokio::test]
async fn a_prepaid_balance_admits_until_spent_and_settles_to_reported_usage() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&config(&up, 1000)).await;

    // The first request shows the balance in `RateLimit` only (OpenAI's headers are rate limits).
    let r = gw.post_chat(PRO_KEY, &capped(100)).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-ratelimit-limit-tokens").is_none());
    let first: Value = r.json().await.unwrap();
    let first = first["usage"]["total_tokens"].as_u64().unwrap();
    // A key with no org has no account: refused, whatever others hold.
    let r = gw.post_chat(LIMITED_KEY, &capped(10)).await;
    assert_eq!(r.status(), 429);

    let (more, refusal) = spend_until_refused(&gw, 100).await;
    let used = first + more;
    let remaining = ratelimit_remaining(refusal.headers(), "prepaid");
    assert!(used > 0 && used <= 1000, "used {used}");
    // debited = credited − remaining: exactly what the provider reported, nothing reserved left.
    assert_eq!(1000 - remaining, used);
    // Refused only because the next estimate does not fit.
    assert!(remaining < 100 + 20, "remaining {remaining}");
    assert_openai_refusal(refusal).await;

    // Gemini's native API (an uncapped request reserves the default 1,024 completion tokens).
    let r = gw
        .client
        .post(gw.url("/gemini/v1beta/models/gemini-2.5-flash:generateContent"))
        .header("x-goog-api-key", PRO_KEY)
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_none());
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(e["error"]["code"], 429);

    // DashScope's: an account in arrears is a 400 `Arrearage`, as DashScope itself answers.
    let r = gw
        .client
        .post(gw.url("/qwen/api/v1/services/aigc/text-generation/generation"))
        .bearer_auth(PRO_KEY)
        .json(&json!({"model": "qwen-plus", "input": {"messages": [{"role": "user", "content": "hi"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "Arrearage");
    assert!(e["request_id"].as_str().is_some_and(|s| !s.is_empty()));

    // The refusals consumed nothing: a request that cannot fit still sees the same remainder.
    let r = gw.post_chat(PRO_KEY, &capped(5000)).await;
    assert_eq!(ratelimit_remaining(r.headers(), "prepaid"), remaining);

    // Refusals are counted by the existing decision counter (labelled by policy, never by org).
    let denied = "leaky_ratelimit_decisions_total{decision=\"denied\",policy=\"prepaid\"}";
    eventually(
        "denials are counted",
        Duration::from_secs(5),
        Some(&gw),
        || async { gw.metric(denied).await >= 4.0 },
    )
    .await;

    // A reload that raises the credit keeps what was debited.
    let v0 = gw.config_version().await;
    gw.write_config(&config(&up, 2000));
    gw.wait_version_change(v0, Duration::from_secs(5)).await;
    let r = gw.post_chat(PRO_KEY, &capped(5000)).await;
    assert_eq!(ratelimit_remaining(r.headers(), "prepaid"), 2000 - used);
    assert_openai_refusal(r).await;
    let (more, refusal) = spend_until_refused(&gw, 100).await;
    assert_eq!(
        2000 - ratelimit_remaining(refusal.headers(), "prepaid"),
        used + more
    );
}
