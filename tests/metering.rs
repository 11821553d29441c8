//! Metering end to end (issue #11, points 1–3): the tenant is charged what the provider bills.
//!
//! The gateway binary in front of OpenAI and Gemini stubs behind a test-side layer that records
//! the bodies the provider received, forces a completion length (upstream side, not through the
//! gateway), can hold a request until the test lets it go, and can pace the answer's body in small
//! pieces like a slow network. A tier's daily token quota (no refill) makes every settlement exact
//! in the next response's `RateLimit` header; usage records are read from the gateway's JSON log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::{chat, eventually, sha256_hex, Gateway, PRO_KEY};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

/// The daily token quota of the test tier.
const DAY: u64 = 1_000_000;
/// `limits.default_max_tokens` of the test config.
const DEFAULT: u64 = 2_500;

type Gate = (oneshot::Sender<()>, oneshot::Receiver<()>);

/// What the test controls on an upstream.
#[derive(Clone, Default)]
struct Knobs {
    /// JSON bodies received, in order.
    bodies: Arc<Mutex<Vec<Value>>>,
    /// Completion length forced on the stub (`x-stub-completion-tokens`, added here); 0 = its own.
    completion_tokens: Arc<AtomicU64>,
    /// The next request signals its arrival and waits for the go.
    gate: Arc<Mutex<Option<Gate>>>,
    /// Answer bodies go out in 1 KiB pieces, 20 ms apart.
    pace: Arc<AtomicBool>,
}

impl Knobs {
    /// Arms the gate: (arrived, go).
    fn arm_gate(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (arrived_tx, arrived_rx) = oneshot::channel();
        let (go_tx, go_rx) = oneshot::channel();
        *self.gate.lock().unwrap() = Some((arrived_tx, go_rx));
        (arrived_rx, go_tx)
    }

    fn last_body(&self) -> Value {
        self.bodies.lock().unwrap().last().cloned().unwrap()
    }
}

/// Serves `router` behind the knobs' layer on a free port.
async fn serve(router: axum::Router) -> (SocketAddr, Knobs) {
    let knobs = Knobs::default();
    let k = knobs.clone();
    let router = router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let k = k.clone();
            async move { knobs_layer(k, req, next).await }
        },
    ));
    (common::serve(router).await, knobs)
}

async fn knobs_layer(k: Knobs, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
        k.bodies.lock().unwrap().push(v);
    }
    let n = k.completion_tokens.load(Ordering::SeqCst);
    if n > 0 {
        parts
            .headers
            .insert("x-stub-completion-tokens", n.to_string().parse().unwrap());
    }
    let gate = k.gate.lock().unwrap().take();
    if let Some((arrived, go)) = gate {
        let _ = arrived.send(());
        let _ = go.await;
    }
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if !k.pace.load(Ordering::SeqCst) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let whole = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let pieces: Vec<Bytes> = whole.chunks(1024).map(Bytes::copy_from_slice).collect();
    let paced = futures::stream::iter(pieces).then(|p| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, std::convert::Infallible>(p)
    });
    Response::from_parts(parts, Body::from_stream(paced))
}

fn stub_options(faults: leaky_stubs::FaultPlan) -> leaky_stubs::StubOptions {
    leaky_stubs::StubOptions {
        faults,
        ..leaky_stubs::StubOptions::new(leaky_stubs::Latency::Off)
    }
}

struct Rig {
    gw: Gateway,
    openai: Knobs,
    gemini: Knobs,
    _capture: common::capture::Capture,
}

/// The gateway with rate limits on `/v1` (OpenAI models, `capture-*` to the capture server),
/// `/gemini/v1beta` and `/gemini/v1`; `limits` is added under the top-level `limits:`; the OpenAI stub injects
/// `openai_faults`.
async fn rig(limits: &str, openai_faults: leaky_stubs::FaultPlan) -> Rig {
    let (openai_addr, openai) = serve(leaky_stubs::openai_router_with(&stub_options(
        openai_faults,
    )))
    .await;
    let (gemini_addr, gemini) = serve(leaky_stubs::gemini_router_with(&stub_options(
        leaky_stubs::FaultPlan::default(),
    )))
    .await;
    let capture = common::capture::Capture::start().await;
    let config = format!(
        r#"server:
  threads: 2
providers:
  openai:
    base_url: http://{openai_addr}
    credential: sk-test
    models: [gpt-4o, gpt-4o-mini, o3-mini]
  gemini:
    base_url: http://{gemini_addr}
    auth: goog-api-key
    credential: gemini-credential
    models: [gemini-2.5-flash]
  capture:
    base_url: http://{capture}
    credential: capture-credential
    models: [capture-1]
routes:
  - name: v1
    prefix: /v1
    upstream:
      by_model:
        - {{ models: ["gpt-*", "o*"], provider: openai, path_prefix: /v1 }}
        - {{ models: ["capture-*"], provider: capture, path_prefix: /echo }}
    filters: &chain
      - kind: request-id
      - kind: api-key
      - kind: rate-limit
  - name: gemini
    prefix: /gemini/v1beta
    dialect: google
    upstream: {{ provider: gemini, path_prefix: /v1beta }}
    filters: *chain
  - name: gemini-v1
    prefix: /gemini/v1
    dialect: google
    upstream: {{ provider: gemini, path_prefix: /v1 }}
    filters: *chain
    forward_headers: ["x-stub-saw-path"]
limits:
  default_max_tokens: {DEFAULT}
{limits}
tiers:
  pro:
    limits:
      - {{ name: day, unit: tokens, quota: daily, limit: {DAY} }}
keys:
  - {{ id: test-pro, sha256: {key}, user: alice, org: acme, tier: pro }}
"#,
        capture = capture.addr,
        key = sha256_hex(PRO_KEY.as_bytes()),
    );
    Rig {
        gw: Gateway::start(&config).await,
        openai,
        gemini,
        _capture: capture,
    }
}

fn question() -> Value {
    chat("gpt-4o-mini", "Tell me everything about leaky buckets.")
}

/// A request with `max_tokens: 1` and `question()`'s messages: (remaining `day` at its admission,
/// its prompt tokens).
async fn probe(gw: &Gateway) -> (u64, u64) {
    let mut body = question();
    body["max_tokens"] = json!(1);
    let r = gw.post_chat(PRO_KEY, &body).await;
    assert_eq!(r.status(), 200);
    let q = common::ratelimit_remaining(r.headers(), "day");
    let usage: Value = r.json().await.unwrap();
    (q, usage["usage"]["prompt_tokens"].as_u64().unwrap())
}

/// Point 1: a client that hangs up before the header of a long non-streamed answer. The provider
/// generates (and bills) the whole answer; the gateway reads it to the end and settles the
/// provider's reported usage. Before the fix, the first failed write aborted the exchange and the
/// request settled `counted` with 0 completion tokens.
#[tokio::test]
async fn a_client_gone_before_the_header_is_charged_the_providers_reported_usage() {
    let rig = rig("", leaky_stubs::FaultPlan::default()).await;
    let gw = &rig.gw;
    rig.openai.completion_tokens.store(2_000, Ordering::SeqCst);
    rig.openai.pace.store(true, Ordering::SeqCst);
    let (arrived, go) = rig.openai.arm_gate();

    let rid = "metering-client-gone-1";
    let body = serde_json::to_vec(&question()).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {PRO_KEY}\r\n\
         Content-Type: application/json\r\nx-request-id: {rid}\r\nContent-Length: {}\r\n\r\n",
        gw.proxy,
        body.len()
    );
    let mut client = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&body).await.unwrap();
    arrived.await.unwrap();
    drop(client); // gone before any response byte
    go.send(()).unwrap();

    let record = gw.usage_record(rid).await;
    assert_eq!(record["source"], "reported", "{record}");
    assert_eq!(record["completion_tokens"], 2_000, "{record}");

    // The quota moved by exactly prompt + 2,000 (and the probe's own reservation).
    rig.openai.pace.store(false, Ordering::SeqCst);
    let (q, p) = probe(gw).await;
    assert_eq!(q, DAY - (p + 2_000) - (p + 1));
}

/// Point 1: a 2xx body the usage cannot be read from (malformed JSON from the provider, or a body
/// without usage) is charged the reservation, never nothing. Before the fix both settled `counted`
/// with 0 completion tokens.
#[tokio::test]
async fn a_malformed_or_usage_less_answer_is_charged_the_reservation() {
    let malformed = leaky_stubs::FaultPlan {
        malformed_chunk: Some(1),
        ..leaky_stubs::FaultPlan::default()
    };
    let rig = rig("", malformed).await;
    let gw = &rig.gw;
    rig.openai.completion_tokens.store(100, Ordering::SeqCst);

    // Capped at 40: the reservation is prompt + 40 (the body delivered 40 tokens of text).
    let mut capped = question();
    capped["max_tokens"] = json!(40);
    let r = gw.post_chat(PRO_KEY, &capped).await;
    assert_eq!(r.status(), 200);
    let q0 = common::ratelimit_remaining(r.headers(), "day");
    let rid0 = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let text = r.text().await.unwrap();
    assert!(
        serde_json::from_str::<Value>(&text).is_err(),
        "malformed: {text}"
    );
    let p = DAY - q0 - 40;
    let record = gw.usage_record(&rid0).await;
    assert_eq!(record["source"], "reservation", "{record}");
    assert_eq!(record["completion_tokens"], 40, "{record}");

    // Uncapped: the reservation is prompt + default_max_tokens, although only 100 were delivered.
    let r = gw.post_chat(PRO_KEY, &question()).await;
    assert_eq!(r.status(), 200);
    let rid1 = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let _ = r.text().await.unwrap();
    let record = gw.usage_record(&rid1).await;
    assert_eq!(record["source"], "reservation", "{record}");
    assert_eq!(record["completion_tokens"], DEFAULT, "{record}");

    // A 2xx JSON body without usage (the capture server's echo).
    let mut echo = chat("capture-1", "Tell me everything about leaky buckets.");
    echo["max_tokens"] = json!(30);
    let r = gw.post_chat(PRO_KEY, &echo).await;
    assert_eq!(r.status(), 200);
    let rid2 = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let report: Value = r.json().await.unwrap();
    assert!(report.get("usage").is_none());
    let record = gw.usage_record(&rid2).await;
    assert_eq!(record["source"], "reservation", "{record}");
    assert_eq!(record["completion_tokens"], 30, "{record}");
    let pc = record["prompt_tokens"].as_u64().unwrap();

    // The quota carries all three reservations.
    let mut next = question();
    next["max_tokens"] = json!(1);
    let r = gw.post_chat(PRO_KEY, &next).await;
    let q = common::ratelimit_remaining(r.headers(), "day");
    assert_eq!(q, DAY - (p + 40) - (p + DEFAULT) - (pc + 30) - (p + 1));
    let settled = "leaky_ratelimit_settlements_total{source=\"reservation\"}";
    eventually(
        "settlements are counted",
        Duration::from_secs(5),
        Some(gw),
        || async { gw.metric(settled).await >= 3.0 },
    )
    .await;
}

/// Point 2: `n` and Gemini's `candidateCount` multiply the default completion reservation of an
/// uncapped request (before the fix they were ignored without `max_tokens`); absurd counts are
/// refused in the route's dialect before anything is reserved.
#[tokio::test]
async fn choices_multiply_the_default_completion_reservation() {
    let rig = rig("", leaky_stubs::FaultPlan::default()).await;
    let gw = &rig.gw;

    let r1 = gw.post_chat(PRO_KEY, &question()).await;
    assert_eq!(r1.status(), 200);
    let q1 = common::ratelimit_remaining(r1.headers(), "day");
    let u1: Value = r1.json().await.unwrap();
    let (p, t1) = (
        u1["usage"]["prompt_tokens"].as_u64().unwrap(),
        u1["usage"]["total_tokens"].as_u64().unwrap(),
    );
    assert_eq!(q1, DAY - (p + DEFAULT));

    let mut three = question();
    three["n"] = json!(3);
    let r2 = gw.post_chat(PRO_KEY, &three).await;
    assert_eq!(r2.status(), 200);
    let q2 = common::ratelimit_remaining(r2.headers(), "day");
    assert_eq!(
        q2,
        DAY - t1 - (p + 3 * DEFAULT),
        "3 choices reserve 3 × default"
    );
    let u2: Value = r2.json().await.unwrap();
    assert_eq!(u2["choices"].as_array().unwrap().len(), 3);
    let t2 = u2["usage"]["total_tokens"].as_u64().unwrap();

    let gemini = |body: Value| {
        gw.client
            .post(gw.url("/gemini/v1beta/models/gemini-2.5-flash:generateContent"))
            .header("x-goog-api-key", PRO_KEY)
            .json(&body)
            .send()
    };
    let contents = json!([{"role": "user", "parts": [{"text": "Tell me about buckets."}]}]);
    let r3 = gemini(json!({"contents": contents, "generationConfig": {"candidateCount": 2}}))
        .await
        .unwrap();
    assert_eq!(r3.status(), 200);
    let q3 = common::ratelimit_remaining(r3.headers(), "day");
    let u3: Value = r3.json().await.unwrap();
    let p3 = u3["usageMetadata"]["promptTokenCount"].as_u64().unwrap();
    assert_eq!(
        q3,
        DAY - t1 - t2 - (p3 + 2 * DEFAULT),
        "2 candidates reserve 2 × default"
    );

    // Beyond 128 choices: a 400 in the dialect, from the gateway, nothing reserved.
    let mut absurd = question();
    absurd["n"] = json!(129);
    let r = gw.post_chat(PRO_KEY, &absurd).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "n");
    assert_eq!(
        e["error"]["message"],
        "Invalid 'n': 129. Expected a value between 1 and 128."
    );
    let r = gemini(json!({"contents": contents, "generationConfig": {"candidateCount": 500}}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["status"], "INVALID_ARGUMENT");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid 'generationConfig.candidateCount': 500."),
        "{e}"
    );
}

/// Point 3: with `enforce_max_tokens`, an uncapped request goes upstream with the reserved
/// per-choice cap in its dialect's field, so the answer cannot outgrow its reservation; a caller's
/// own cap is left alone; without the setting nothing is added.
#[tokio::test]
async fn an_enforcing_policy_sends_the_reserved_cap_upstream() {
    let rig = rig(
        "  policies:\n    - { name: capped, unit: tokens, rate: 10000000, per: minute, default_max_tokens: 300, enforce_max_tokens: true }\n",
        leaky_stubs::FaultPlan::default(),
    )
    .await;
    let gw = &rig.gw;
    // The provider would write 1,000 tokens per choice if nothing stopped it.
    rig.openai.completion_tokens.store(1_000, Ordering::SeqCst);
    rig.gemini.completion_tokens.store(1_000, Ordering::SeqCst);

    let mut two = question();
    two["n"] = json!(2);
    let r = gw.post_chat(PRO_KEY, &two).await;
    assert_eq!(r.status(), 200);
    let sent = rig.openai.last_body();
    assert_eq!(
        sent["max_tokens"], 300,
        "the smallest enforcing default, per choice: {sent}"
    );
    assert!(sent.get("max_completion_tokens").is_none());
    assert_eq!(sent["n"], 2);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 600);
    assert_eq!(answer["choices"][0]["finish_reason"], "length");

    // Reasoning models take `max_completion_tokens`.
    let r = gw.post_chat(PRO_KEY, &chat("o3-mini", "Think.")).await;
    assert_eq!(r.status(), 200);
    let sent = rig.openai.last_body();
    assert_eq!(sent["max_completion_tokens"], 300, "{sent}");
    assert!(sent.get("max_tokens").is_none());

    // The caller's own cap is sent as it is.
    let mut own = question();
    own["max_tokens"] = json!(50);
    let r = gw.post_chat(PRO_KEY, &own).await;
    assert_eq!(r.status(), 200);
    let sent = rig.openai.last_body();
    assert_eq!(sent["max_tokens"], 50);
    assert!(sent.get("max_completion_tokens").is_none());

    // Gemini native: generationConfig.maxOutputTokens.
    let r = gw
        .client
        .post(gw.url("/gemini/v1beta/models/gemini-2.5-flash:generateContent"))
        .header("x-goog-api-key", PRO_KEY)
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent = rig.gemini.last_body();
    assert_eq!(sent["generationConfig"]["maxOutputTokens"], 300, "{sent}");
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["usageMetadata"]["candidatesTokenCount"], 300);
}

#[tokio::test]
async fn without_enforcement_no_cap_is_added() {
    let rig = rig("", leaky_stubs::FaultPlan::default()).await;
    let r = rig.gw.post_chat(PRO_KEY, &question()).await;
    assert_eq!(r.status(), 200);
    let sent = rig.openai.last_body();
    assert_eq!(sent, question(), "forwarded as sent");
}

/// The `usageMetadata` a Gemini answer reports: the JSON body, or the last SSE event carrying it.
fn gemini_usage(body: &str, sse: bool) -> Value {
    if !sse {
        let v: Value = serde_json::from_str(body).unwrap();
        return v["usageMetadata"].clone();
    }
    body.split("\r\n\r\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v.get("usageMetadata").cloned())
        .last()
        .unwrap_or_else(|| panic!("no usageMetadata in {body}"))
}

/// Issue #12: Google serves the native API under `/v1` as well as `/v1beta` (the google-genai SDK
/// defaults to `/v1` with a base URL). `/gemini/v1/...` reaches the provider's `/v1/...`, and
/// `generateContent` and `streamGenerateContent?alt=sse` are charged the provider's reported usage
/// exactly like under `/v1beta`. Before, the gateway had no `/gemini/v1` route (404) and the stub
/// served no `/v1/models/...` (404).
#[tokio::test]
async fn gemini_native_under_v1_is_served_and_metered_like_v1beta() {
    let rig = rig("", leaky_stubs::FaultPlan::default()).await;
    let gw = &rig.gw;
    let body = json!({
        "contents": [{"role": "user", "parts": [{"text": "Tell me about buckets."}]}],
        "generationConfig": {"maxOutputTokens": 50},
    });
    let mut charged = 0;
    for (method, sse) in [
        ("generateContent", false),
        ("streamGenerateContent?alt=sse", true),
    ] {
        let mut reported = Vec::new();
        for version in ["v1beta", "v1"] {
            let r = gw
                .client
                .post(gw.url(&format!(
                    "/gemini/{version}/models/gemini-2.5-flash:{method}"
                )))
                .header("x-goog-api-key", PRO_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{version} {method}");
            if version == "v1" {
                assert_eq!(
                    r.headers()["x-stub-saw-path"],
                    format!("/v1/models/gemini-2.5-flash:{method}").as_str()
                );
            }
            let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
            let usage = gemini_usage(&r.text().await.unwrap(), sse);
            let prompt = usage["promptTokenCount"].as_u64().unwrap();
            let completion = usage["candidatesTokenCount"].as_u64().unwrap();
            let record = gw.usage_record(&rid).await;
            assert_eq!(record["source"], "reported", "{version} {method}: {record}");
            assert_eq!(
                record["prompt_tokens"], prompt,
                "{version} {method}: {record}"
            );
            assert_eq!(
                record["completion_tokens"], completion,
                "{version} {method}: {record}"
            );
            charged += prompt + completion;
            reported.push((prompt, completion));
        }
        assert_eq!(reported[0], reported[1], "{method}: v1 metered like v1beta");
    }
    // The daily quota moved by exactly what the provider reported (and the probe's reservation).
    let (q, p) = probe(gw).await;
    assert_eq!(q, DAY - charged - (p + 1));

    let r = gw
        .client
        .get(gw.url("/gemini/v1/models"))
        .header("x-goog-api-key", PRO_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "models/gemini-2.5-flash"));
}

/// Metering by need: a route without `rate-limit` still meters when a deployment it reaches has a
/// `tpm` budget, so the budget counts the tokens the provider reported. After one request of ~910
/// tokens under `tpm: 1000`, a second whose reservation would pass the budget finds no deployment
/// (without metering both passed: every request counted 0 tokens).
#[tokio::test]
async fn a_deployment_tpm_budget_counts_tokens_on_a_route_without_rate_limit() {
    let (addr, knobs) = serve(leaky_stubs::openai_router_with(&stub_options(
        leaky_stubs::FaultPlan::default(),
    )))
    .await;
    knobs.completion_tokens.store(900, Ordering::SeqCst);
    let gw = Gateway::start(&format!(
        r#"server:
  threads: 2
providers:
  openai:
    credential: sk-test
    models: [gpt-4o]
    deployments:
      - {{ name: a, base_url: "http://{addr}", tpm: 1000 }}
routes:
  - name: v1
    prefix: /v1
    upstream: {{ provider: openai, path_prefix: /v1 }}
    filters: [{{ kind: request-id }}, {{ kind: api-key }}]
tiers:
  pro: {{}}
keys:
  - {{ id: test-pro, sha256: {key}, user: alice, org: acme, tier: pro }}
"#,
        key = sha256_hex(PRO_KEY.as_bytes()),
    ))
    .await;
    // Both requests within one budget minute.
    let in_minute = || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.unwrap().as_secs() % 60
    };
    if in_minute() >= 55 {
        tokio::time::sleep(Duration::from_secs(60 - in_minute())).await;
    }
    let ask = |max_tokens: u64| {
        let mut body = chat("gpt-4o", "hello");
        body["max_tokens"] = json!(max_tokens);
        body
    };
    let first = gw.post_chat(PRO_KEY, &ask(950)).await;
    assert_eq!(first.status(), 200, "{}", first.text().await.unwrap());
    let used = first.json::<Value>().await.unwrap()["usage"]["total_tokens"]
        .as_u64()
        .unwrap();
    assert!(used > 900, "{used}");
    let second = gw.post_chat(PRO_KEY, &ask(100)).await;
    let status = second.status();
    let text = second.text().await.unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("out of budget"), "{text}");
}
