//! Upstream resilience end to end: the gateway binary in front of several OpenAI stub deployments whose
//! faults are switched by the test (through the stubs' own `x-stub-fault` injection, which the test
//! configs let through the gateway with `forward_headers`). Each deployment
//! counts the requests it receives, so retries and cool-downs are checked against what the upstreams
//! saw, not only against what the gateway reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::{chat, eventually, sha256_hex, Gateway};
use axum::extract::Request;
use axum::middleware::Next;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "lt-res-acme";
const OTHER_KEY: &str = "lt-res-globex";

/// One stub deployment: an OpenAI stub (latency off) behind a layer that counts requests and adds the
/// current fault plan as `x-stub-fault` (the stub does the injecting).
struct Dep {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    fault: Arc<Mutex<Option<String>>>,
    /// `/healthz` answers 503 while set.
    sick: Arc<AtomicBool>,
}

impl Dep {
    async fn start(fault: Option<&str>) -> Dep {
        Self::start_router(
            leaky_stubs::openai_router_with(&leaky_stubs::StubOptions::new(
                leaky_stubs::Latency::Off,
            )),
            fault,
        )
        .await
    }

    /// A stub whose provider account allows one request a minute: an injected 429 then also says the
    /// account is out (`x-ratelimit-remaining-requests: 0`), the provider-wide signal a cool-down
    /// needs (a 429 without it is one tenant's; see tests/isolation.rs).
    async fn start_exhausted(fault: Option<&str>) -> Dep {
        let mut opts = leaky_stubs::StubOptions::new(leaky_stubs::Latency::Off);
        opts.limits.requests_per_minute = 1;
        Self::start_router(leaky_stubs::openai_router_with(&opts), fault).await
    }

    async fn start_router(router: axum::Router, fault: Option<&str>) -> Dep {
        let hits = Arc::new(AtomicU64::new(0));
        let fault = Arc::new(Mutex::new(fault.map(String::from)));
        let sick = Arc::new(AtomicBool::new(false));
        let (h, f, s) = (hits.clone(), fault.clone(), sick.clone());
        let router = router.layer(axum::middleware::from_fn(
            move |mut req: Request, next: Next| {
                let (h, f, s) = (h.clone(), f.clone(), s.clone());
                async move {
                    if req.uri().path() == "/healthz" {
                        if s.load(Ordering::SeqCst) {
                            return axum::response::IntoResponse::into_response((
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                "sick",
                            ));
                        }
                        return next.run(req).await;
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let plan = f.lock().unwrap().clone();
                    if let Some(plan) = plan {
                        if !req.headers().contains_key("x-stub-fault") {
                            req.headers_mut()
                                .insert("x-stub-fault", plan.parse().unwrap());
                        }
                    }
                    next.run(req).await
                }
            },
        ));
        let addr = common::serve(router).await;
        Dep {
            addr,
            hits,
            fault,
            sick,
        }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    fn set_fault(&self, plan: Option<&str>) {
        *self.fault.lock().unwrap() = plan.map(String::from);
    }
}

fn keys() -> String {
    format!(
        r#"tiers:
  pro: {{}}
keys:
  - {{ id: acme, sha256: {}, user: alice, org: acme, tier: pro }}
  - {{ id: globex, sha256: {}, user: bob, org: globex, tier: pro }}
"#,
        sha256_hex(KEY.as_bytes()),
        sha256_hex(OTHER_KEY.as_bytes())
    )
}

/// A config with provider `openai` over `deps` (named a, b, c...), `provider_extra` under the
/// provider and `route_extra` under the route `/v1`.
fn config(deps: &[&Dep], provider_extra: &str, route_extra: &str) -> String {
    let addrs: Vec<_> = deps.iter().map(|d| d.addr).collect();
    let list = common::deployments_yaml(&addrs);
    format!(
        r#"server:
  threads: 2
providers:
  openai:
    credential: sk-test
    models: [gpt-4o]
    deployments:
{list}{provider_extra}
routes:
  - name: v1
    prefix: /v1
    upstream: {{ provider: openai, path_prefix: /v1 }}
    filters: [{{ kind: request-id }}, {{ kind: api-key }}]
    forward_headers: [x-stub-fault] # the tests' own fault injection, sent through the gateway
{route_extra}
{keys}"#,
        keys = keys()
    )
}

async fn post(gw: &Gateway, key: &str, body: &serde_json::Value) -> reqwest::Response {
    gw.post_chat(key, body).await
}

/// Status and body of a chat request.
async fn ask(gw: &Gateway) -> (u16, String) {
    let r = post(gw, KEY, &chat("gpt-4o", "hello")).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn a_failing_deployment_opens_its_circuit_and_traffic_flows_to_the_healthy_one() {
    let a = Dep::start(Some("status=500")).await;
    let b = Dep::start(None).await;
    let gw = Gateway::start(&config(
        &[&a, &b],
        "    breaker: { consecutive_failures: 3, failure_ratio: 0, open_ms: 600000, max_open_ms: 600000, min_tenants: 1 }",
        "    retry: { max_attempts: 2, budget_ratio: 1.0 }",
    ))
    .await;
    for i in 0..30 {
        let (status, body) = ask(&gw).await;
        assert_eq!(status, 200, "request {i} saw an error: {body}");
    }
    // Three failures in a row open the circuit; while open, a gets nothing.
    assert_eq!(a.hits(), 3, "a is skipped once its circuit is open");
    assert_eq!(b.hits(), 30, "b served every request");
    assert_eq!(
        gw.metric(r#"leaky_circuit_state{upstream="openai/a"}"#)
            .await,
        1.0
    );
    assert_eq!(
        gw.metric(r#"leaky_circuit_state{upstream="openai/b"}"#)
            .await,
        0.0
    );
    assert_eq!(
        gw.metric(
            r#"leaky_circuit_transitions_total{from="closed",to="open",upstream="openai/a"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        gw.metric(r#"leaky_upstream_attempts_total{outcome="5xx",upstream="openai/a"}"#)
            .await,
        3.0
    );
    // The request log names the failed attempt and the deployment that answered.
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| {
            // The access line (a warning written just before it names the failed attempt too).
            l.contains("\"target\":\"access\"")
                && l.contains("\"failed_attempts\":\"openai/a:500\"")
        })
        .unwrap_or_else(|| panic!("no access line with the failed attempt; log:\n{log}"));
    assert!(line.contains("\"deployment\":\"b\""), "{line}");
    assert!(line.contains("\"attempts\":2"), "{line}");
    assert!(log.contains("circuit opened"), "{log}");
}

#[tokio::test]
async fn after_the_open_period_a_probe_closes_the_circuit_again() {
    let a = Dep::start(Some("status=503")).await;
    let b = Dep::start(None).await;
    let gw = Gateway::start(&config(
        &[&a, &b],
        "    breaker: { consecutive_failures: 2, failure_ratio: 0, open_ms: 300, max_open_ms: 300, min_tenants: 1 }",
        "    retry: { max_attempts: 2, budget_ratio: 1.0 }",
    ))
    .await;
    let open = r#"leaky_circuit_state{upstream="openai/a"}"#;
    eventually(
        "a's circuit opens",
        Duration::from_secs(10),
        Some(&gw),
        || async {
            assert_eq!(ask(&gw).await.0, 200);
            gw.metric(open).await == 1.0
        },
    )
    .await;
    a.set_fault(None);
    let before = a.hits();
    eventually(
        "a probe reaches a and closes its circuit",
        Duration::from_secs(10),
        Some(&gw),
        || async {
            assert_eq!(ask(&gw).await.0, 200);
            gw.metric(open).await == 0.0
        },
    )
    .await;
    assert!(a.hits() > before, "the probe went to a");
    for (from, to) in [("open", "half_open"), ("half_open", "closed")] {
        let sample = format!(
            r#"leaky_circuit_transitions_total{{from="{from}",to="{to}",upstream="openai/a"}}"#
        );
        assert!(gw.metric(&sample).await >= 1.0, "{sample}");
    }
    // Closed again: a takes its share of new traffic.
    let before = a.hits();
    for _ in 0..10 {
        assert_eq!(ask(&gw).await.0, 200);
    }
    assert!(a.hits() >= before + 3, "a serves again after closing");
}

/// Runs `n` requests, `conc` at a time; returns how many were not 200.
async fn storm(gw: &Gateway, path: &str, n: usize, conc: usize) -> usize {
    let errors = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (client, url, errors, next) = (
            gw.client.clone(),
            gw.url(path),
            errors.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < n as u64 {
                let r = client
                    .post(&url)
                    .bearer_auth(KEY)
                    .json(&chat("gpt-4o", "storm"))
                    .send()
                    .await
                    .unwrap();
                if r.status() != 200 {
                    errors.fetch_add(1, Ordering::SeqCst);
                }
                let _ = r.bytes().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    errors.load(Ordering::SeqCst) as usize
}

#[tokio::test]
async fn a_5xx_storm_is_absorbed_by_retries_within_the_retry_budget() {
    // Every deployment fails 30% of requests (a different seeded sequence each).
    let deps = [
        Dep::start(Some("status=503;rate=0.3;seed=1")).await,
        Dep::start(Some("status=500;rate=0.3;seed=2")).await,
        Dep::start(Some("status=503;rate=0.3;seed=3")).await,
    ];
    // Two routes on the same pool: a generous budget (50% of requests) and a tight one (10%).
    let cfg = config(
        &[&deps[0], &deps[1], &deps[2]],
        "    breaker: { consecutive_failures: 0, failure_ratio: 0 }",
        r#"    retry: { max_attempts: 3, budget_ratio: 0.5, budget_min_per_second: 0, backoff_base_ms: 1, backoff_max_ms: 5 }
  - name: tight
    prefix: /tight/v1
    upstream: { provider: openai, path_prefix: /v1 }
    filters: [{ kind: request-id }, { kind: api-key }]
    retry: { max_attempts: 3, budget_ratio: 0.1, budget_min_per_second: 0, backoff_base_ms: 1, backoff_max_ms: 5 }"#,
    );
    let gw = Gateway::start(&cfg).await;
    let hits = || deps.iter().map(Dep::hits).sum::<u64>();
    let n = 400;

    let errors = storm(&gw, "/v1/chat/completions", n, 8).await;
    let retries = hits() - n as u64;
    // Without retries about 120 of 400 would fail; three attempts leave about 0.3³ ≈ 3%.
    assert!(
        errors * 100 < n * 8,
        "{errors} of {n} failed: far below 30% expected"
    );
    assert!(
        retries <= (n as u64) / 2,
        "{retries} retries exceed the 50% budget"
    );
    assert!(
        retries >= 80,
        "only {retries} retries for ~120 first-attempt failures"
    );
    let reported = gw
        .metric(r#"leaky_upstream_retries_total{provider="openai",reason="5xx"}"#)
        .await;
    assert_eq!(
        reported as u64, retries,
        "the gateway counts every retry the upstreams saw"
    );

    // The tight budget bites: retries stop at 10% of requests, and the refusals are counted.
    let before = hits();
    let errors_tight = storm(&gw, "/tight/v1/chat/completions", n, 8).await;
    let retries_tight = hits() - before - n as u64;
    assert!(
        retries_tight <= (n as u64) / 10 + 1,
        "{retries_tight} retries exceed the 10% budget"
    );
    assert!(
        errors_tight > errors,
        "a tight budget leaves more errors ({errors_tight} vs {errors})"
    );
    assert!(
        gw.metric(r#"leaky_retry_budget_exhausted_total{route="tight"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_hung_upstream_is_cut_at_the_first_byte_timeout_and_retried_elsewhere() {
    let a = Dep::start(Some("hang")).await;
    let b = Dep::start(None).await;
    let gw = Gateway::start(&config(
        &[&a, &b],
        "    breaker: { consecutive_failures: 0, failure_ratio: 0 }",
        "    timeouts: { first_byte_ms: 300 }\n    retry: { max_attempts: 2, budget_ratio: 1.0 }",
    ))
    .await;
    for _ in 0..4 {
        let t = Instant::now();
        let (status, body) = ask(&gw).await;
        assert_eq!(status, 200, "{body}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    assert!(a.hits() >= 1, "a was tried");
    assert_eq!(
        gw.metric(r#"leaky_upstream_attempts_total{outcome="timeout",upstream="openai/a"}"#)
            .await,
        a.hits() as f64
    );
    // With nowhere else to go, the caller gets a 504 in its dialect.
    b.set_fault(Some("hang"));
    let (status, body) = ask(&gw).await;
    assert_eq!(status, 504, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "timeout", "{body}");
}

#[tokio::test]
async fn a_429_with_retry_after_cools_the_deployment_down_and_the_pool_moves_on() {
    let a = Dep::start_exhausted(Some("status=429;retry-after=30")).await;
    let b = Dep::start(None).await;
    let gw = Gateway::start(&config(
        &[&a, &b],
        "",
        "    retry: { max_attempts: 2, budget_ratio: 1.0 }",
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(ask(&gw).await.0, 200);
    }
    assert_eq!(a.hits(), 1, "no request reaches a before its retry-after");
    assert_eq!(b.hits(), 10);
    assert_eq!(
        gw.metric(r#"leaky_upstream_cooldowns_total{upstream="openai/a"}"#)
            .await,
        1.0
    );
    // The only deployment cooling down: the caller gets the provider's 429 as it was sent.
    let solo = Dep::start_exhausted(Some("status=429;retry-after=30")).await;
    let gw = Gateway::start(&config(&[&solo], "", "")).await;
    let r = post(&gw, KEY, &chat("gpt-4o", "hi")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "30");
    let (status, body) = ask(&gw).await;
    assert_eq!(status, 503, "cooling down: no deployment available: {body}");
    assert_eq!(solo.hits(), 1);
}

#[tokio::test]
async fn a_stalled_stream_ends_with_an_error_event_in_its_own_format() {
    let up = common::Upstreams::start().await;
    let s = up.stubs;
    let cfg = format!(
        r#"server: {{ threads: 2 }}
providers:
  openai: {{ base_url: "http://{o}", credential: k, models: [gpt-4o] }}
  gemini: {{ base_url: "http://{g}", auth: goog-api-key, credential: k, models: [gemini-2.5-flash] }}
  qwen: {{ base_url: "http://{q}", credential: k, models: [qwen-plus] }}
routes:
  - name: v1
    prefix: /v1
    upstream: {{ provider: openai, path_prefix: /v1 }}
    filters: &chain [{{ kind: request-id }}, {{ kind: api-key }}]
    timeouts: {{ idle_ms: 300 }}
    forward_headers: &faults [x-stub-fault]
  - name: gemini
    prefix: /gemini/v1beta
    dialect: google
    upstream: {{ provider: gemini, path_prefix: /v1beta }}
    filters: *chain
    timeouts: {{ idle_ms: 300 }}
    forward_headers: *faults
  - name: qwen
    prefix: /qwen/api/v1
    dialect: dashscope
    upstream: {{ provider: qwen, path_prefix: /api/v1 }}
    filters: *chain
    timeouts: {{ idle_ms: 300 }}
    forward_headers: *faults
{keys}"#,
        o = s.openai,
        g = s.gemini,
        q = s.qwen,
        keys = keys()
    );
    let gw = Gateway::start(&cfg).await;
    let stall = "stall-after=3";
    let openai = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-stub-fault", stall)
        .json(
            &serde_json::json!({"model": "gpt-4o", "stream": true, "max_tokens": 50,
            "messages": [{"role": "user", "content": "tell me a long story"}]}),
        );
    let gemini = gw
        .client
        .post(gw.url("/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"))
        .header("x-goog-api-key", KEY)
        .header("x-stub-fault", stall)
        .json(
            &serde_json::json!({"contents": [{"parts": [{"text": "tell me a long story"}]}],
            "generationConfig": {"maxOutputTokens": 50}}),
        );
    let qwen = gw
        .client
        .post(gw.url("/qwen/api/v1/services/aigc/text-generation/generation"))
        .bearer_auth(KEY)
        .header("x-dashscope-sse", "enable")
        .header("x-stub-fault", stall)
        .json(
            &serde_json::json!({"model": "qwen-plus", "parameters": {"max_tokens": 50},
            "input": {"messages": [{"role": "user", "content": "tell me a long story"}]}}),
        );
    for (name, req, tail) in [
        ("openai", openai, "data: {\"error\":{"),
        ("gemini", gemini, "data: {\"error\":{\"code\":504"),
        ("qwen", qwen, "event:error\n:HTTP_STATUS/504\ndata:{"),
    ] {
        let t = Instant::now();
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        // The body ends cleanly (no transport error) with the error event last.
        let body = r.text().await.unwrap_or_else(|e| panic!("{name}: {e}"));
        // SSE allows CRLF or LF line ends (Gemini uses CRLF): compare events with LF.
        let body = body.replace("\r\n", "\n");
        let last = body
            .trim_end()
            .rsplit("\n\n")
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            last.starts_with(tail),
            "{name}: last event {last:?}\nbody:\n{body}"
        );
        assert!(last.contains("stalled"), "{name}: {last}");
        assert!(
            body.matches("data:").count() >= 3,
            "{name}: chunks before the stall:\n{body}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name}: {:?}",
            t.elapsed()
        );
    }
    assert_eq!(
        gw.metric(r#"leaky_upstream_stream_cuts_total{reason="idle",upstream="openai/default"}"#)
            .await,
        1.0
    );
    assert!(gw.log().contains("\"cut\":\"idle\""), "{}", gw.log());
}

#[tokio::test]
async fn a_full_tenant_bulkhead_answers_429_at_once_and_other_tenants_are_served() {
    let a = Dep::start(None).await;
    let gw = Gateway::start(&config(
        &[&a],
        "",
        "    bulkhead: { per_tenant: { max_concurrent: 2, max_queue: 0 } }",
    ))
    .await;
    let slow = |key: &'static str| {
        gw.client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(key)
            .header("x-stub-fault", "hang=1s")
            .json(&chat("gpt-4o", "slow"))
            .send()
    };
    let held = futures::future::join(slow(KEY), slow(KEY));
    let held = tokio::spawn(async move {
        let (x, y) = held.await;
        (x.unwrap().status(), y.unwrap().status())
    });
    eventually(
        "two requests in flight",
        Duration::from_secs(5),
        Some(&gw),
        || async { a.hits() == 2 },
    )
    .await;
    let t = Instant::now();
    let r = post(&gw, KEY, &chat("gpt-4o", "third")).await;
    assert_eq!(r.status(), 429);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "refused at once: {:?}",
        t.elapsed()
    );
    assert_eq!(r.headers()["retry-after"], "1");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "requests", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("acme"),
        "{v}"
    );
    // Another tenant is not affected.
    assert_eq!(
        post(&gw, OTHER_KEY, &chat("gpt-4o", "hi")).await.status(),
        200
    );
    assert_eq!(
        held.await.unwrap(),
        (reqwest::StatusCode::OK, reqwest::StatusCode::OK)
    );
    // Slots come back: acme is served again.
    assert_eq!(ask(&gw).await.0, 200);
    assert_eq!(
        gw.metric(r#"leaky_bulkhead_rejected_total{reason="queue_full",scope="tenant"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_full_deployment_bulkhead_answers_503_and_a_queued_request_waits_its_turn() {
    let a = Dep::start(None).await;
    let gw = Gateway::start(&config(
        &[&a],
        "    bulkhead: { max_concurrent: 1, max_queue: 1, queue_timeout_ms: 5000 }",
        "",
    ))
    .await;
    let slow = || {
        gw.client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .header("x-stub-fault", "hang=700ms")
            .json(&chat("gpt-4o", "slow"))
            .send()
    };
    let first = tokio::spawn(slow());
    eventually(
        "one in flight",
        Duration::from_secs(5),
        Some(&gw),
        || async { a.hits() == 1 },
    )
    .await;
    let queued = tokio::spawn(slow());
    eventually("one queued", Duration::from_secs(5), Some(&gw), || async {
        gw.metric(r#"leaky_bulkhead_queued_total{scope="deployment"}"#)
            .await
            == 1.0
    })
    .await;
    let r = post(&gw, KEY, &chat("gpt-4o", "third")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(
        queued.await.unwrap().unwrap().status(),
        200,
        "the queued request ran after the first"
    );
    assert_eq!(a.hits(), 2);
}

#[tokio::test]
async fn an_exhausted_pool_falls_back_to_another_model_and_says_so() {
    let up = common::Upstreams::start().await;
    let broken = Dep::start(Some("status=500")).await;
    let cfg = format!(
        r#"server: {{ threads: 2 }}
providers:
  openai: {{ base_url: "http://{o}", credential: k, models: [gpt-4o] }}
  qwen: {{ base_url: "http://{q}", credential: k, models: [qwen-plus] }}
routes:
  - name: v1
    prefix: /v1
    upstream:
      by_model:
        - {{ models: ["gpt-*"], provider: openai, path_prefix: /v1 }}
        - {{ models: ["qwen-*"], provider: qwen, path_prefix: /compatible-mode/v1 }}
    filters: [{{ kind: request-id }}, {{ kind: api-key }}]
    retry: {{ max_attempts: 2, budget_ratio: 1.0 }}
    fallbacks: {{ gpt-4o: [qwen-plus] }}
{keys}"#,
        o = broken.addr,
        q = up.stubs.qwen,
        keys = keys()
    );
    let gw = Gateway::start(&cfg).await;
    let r = post(&gw, KEY, &chat("gpt-4o", "hello")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-leaky-served-model"], "qwen-plus");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["model"], "qwen-plus", "{v}");
    assert_eq!(
        broken.hits(),
        2,
        "the primary pool was tried max_attempts times first"
    );
    assert_eq!(
        gw.metric(r#"leaky_fallbacks_total{from="gpt-4o",route="v1",to="qwen-plus"}"#)
            .await,
        1.0
    );
    assert!(gw.log().contains("\"served_model\":\"qwen-plus\""));
    // A model served directly says so too.
    let r = post(&gw, KEY, &chat("qwen-plus", "hello")).await;
    assert_eq!(r.headers()["x-leaky-served-model"], "qwen-plus");
}

#[tokio::test]
async fn failing_health_checks_take_a_deployment_out_and_passing_ones_bring_it_back() {
    let a = Dep::start(None).await;
    let b = Dep::start(None).await;
    let gw = Gateway::start(&config(
        &[&a, &b],
        "    health_check: { path: /healthz, interval_ms: 50, timeout_ms: 50, unhealthy_after: 2, healthy_after: 1 }",
        "",
    ))
    .await;
    let healthy = r#"leaky_upstream_healthy{upstream="openai/a"}"#;
    a.sick.store(true, Ordering::SeqCst);
    eventually(
        "a is marked unhealthy",
        Duration::from_secs(10),
        Some(&gw),
        || async { gw.metric(healthy).await == 0.0 },
    )
    .await;
    let before = a.hits();
    for _ in 0..10 {
        assert_eq!(ask(&gw).await.0, 200);
    }
    assert_eq!(a.hits(), before, "an unhealthy deployment gets no traffic");
    a.sick.store(false, Ordering::SeqCst);
    eventually(
        "a is healthy again",
        Duration::from_secs(10),
        Some(&gw),
        || async { gw.metric(healthy).await == 1.0 },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(ask(&gw).await.0, 200);
    }
    assert!(a.hits() > before, "a is back in the pool");
}

#[tokio::test]
async fn a_reload_updates_the_pool_without_dropping_in_flight_requests() {
    let a = Dep::start(None).await;
    let b = Dep::start(None).await;
    let gw = Gateway::start(&config(&[&a], "", "")).await;
    let in_flight = {
        let req = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .header("x-stub-fault", "hang=800ms")
            .json(&chat("gpt-4o", "long"));
        tokio::spawn(async move { req.send().await.unwrap().status() })
    };
    eventually(
        "the slow request reached a",
        Duration::from_secs(5),
        Some(&gw),
        || async { a.hits() == 1 },
    )
    .await;
    // The new version replaces a with b.
    let v = gw.config_version().await;
    let text = config(&[&b], "", "").replace("name: a,", "name: b,");
    gw.write_config(&text);
    gw.wait_version_change(v, Duration::from_secs(10)).await;
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the in-flight request finished on a"
    );
    for _ in 0..5 {
        assert_eq!(ask(&gw).await.0, 200);
    }
    assert_eq!(a.hits(), 1);
    assert_eq!(b.hits(), 5);
}

#[tokio::test]
async fn a_deployment_out_of_its_minute_budget_is_skipped() {
    let a = Dep::start(None).await;
    let b = Dep::start(None).await;
    let text = config(&[&a, &b], "", "").replace(
        &format!("{{ name: a, base_url: http://{} }}", a.addr),
        &format!(
            "{{ name: a, base_url: http://{}, rpm: 3, weight: 10 }}",
            a.addr
        ),
    );
    let gw = Gateway::start(&text).await;
    for _ in 0..12 {
        assert_eq!(ask(&gw).await.0, 200);
    }
    // a has ten times b's weight but only three requests a minute: the rest go to b.
    assert_eq!(a.hits(), 3);
    assert_eq!(b.hits(), 9);
}
