//! The exchange's rules on paused tokio time, one test per rule, against a scripted transport: which
//! deployment each attempt went to and when (virtual milliseconds), what the caller got.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::background::Background;
use crate::limiter::LimiterBackend;
use crate::snapshot::{Resolve, Shared, Snapshot};
use pingora::http::ResponseHeader;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;

/// The resilience clock starts well past 0 (0 means "never" in some of their fields).
const T0_MS: u64 = 1_000_000;

#[test]
fn fallback_rewrites_the_body_model_and_keeps_the_rest() {
    let body = Bytes::from_static(
        br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
    );
    let (b, rest) = with_model(ModelSource::Body, &body, "/chat/completions", "qwen-plus").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["model"], "qwen-plus");
    assert_eq!(v["stream"], true);
    assert_eq!(v["messages"][0]["content"], "hi");
    assert_eq!(rest, "/chat/completions");
    assert!(with_model(ModelSource::Body, &Bytes::from_static(b"{}"), "/x", "m").is_none());
}

#[test]
fn fallback_rewrites_the_path_model() {
    let (_, rest) = with_model(
        ModelSource::Path,
        &Bytes::new(),
        "/models/gemini-2.5-pro:streamGenerateContent",
        "gemini-2.5-flash",
    )
    .unwrap();
    assert_eq!(rest, "/models/gemini-2.5-flash:streamGenerateContent");
}

/// The injected clock, on tokio's (paused) time; no jitter, so backoffs are 0.
struct TestClock {
    start: Instant,
}

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        T0_MS + self.start.elapsed().as_millis() as u64
    }
    fn unix_ms(&self) -> u64 {
        1_700_000_000_000 + self.start.elapsed().as_millis() as u64
    }
    fn jitter(&self) -> u64 {
        0
    }
}

/// What the scripted upstream does with one attempt.
#[derive(Clone, Copy, Debug)]
enum Step {
    Status(u16, &'static [(&'static str, &'static str)]),
    Connect,
    /// No response header: the attempt runs into its first-byte timeout.
    Hang,
}

/// One attempt as the transport saw it.
#[derive(Debug)]
struct Call {
    /// `provider/deployment`.
    to: String,
    at_ms: u64,
    path: String,
    model: Option<String>,
}

/// Answers attempts in call order from a script (200 once it runs out) and records them.
struct Fake {
    clock: TestClock,
    script: Mutex<VecDeque<Step>>,
    calls: Mutex<Vec<Call>>,
}

impl Fake {
    fn new(script: &[Step]) -> Self {
        Fake {
            clock: TestClock {
                start: Instant::now(),
            },
            script: Mutex::new(script.iter().cloned().collect()),
            calls: Mutex::new(Vec::new()),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.clock.start.elapsed().as_millis() as u64
    }

    /// `(deployment, virtual ms)` of every attempt so far.
    fn trail(&self) -> Vec<(String, u64)> {
        let calls = self.calls.lock().unwrap();
        calls.iter().map(|c| (c.to.clone(), c.at_ms)).collect()
    }
}

impl Transport for Fake {
    type Response = ResponseHeader;

    fn send(&self, a: Attempt<'_>) -> impl Future<Output = Result<ResponseHeader, Failed>> + Send {
        let model = serde_json::from_slice::<serde_json::Value>(a.body)
            .ok()
            .and_then(|v| v["model"].as_str().map(str::to_string));
        self.calls.lock().unwrap().push(Call {
            to: a.deployment.label.to_string(),
            at_ms: self.elapsed_ms(),
            path: a.head.path().to_string(),
            model,
        });
        let step = self.script.lock().unwrap().pop_front();
        let first_byte = a.first_byte;
        async move {
            match step.unwrap_or(Step::Status(200, &[])) {
                Step::Status(code, headers) => {
                    let mut h = ResponseHeader::build(code, None).unwrap();
                    for (k, v) in headers {
                        h.insert_header(*k, *v).unwrap();
                    }
                    Ok(h)
                }
                Step::Connect => Err(Failed {
                    outcome: Outcome::Connect,
                    rejection: Rejection::new(RejectKind::BadGateway, "unreachable"),
                }),
                Step::Hang => {
                    tokio::time::sleep(first_byte).await;
                    Err(Failed {
                        outcome: Outcome::Timeout,
                        rejection: Rejection::new(RejectKind::GatewayTimeout, "no header"),
                    })
                }
            }
        }
    }

    fn head(response: &ResponseHeader) -> Option<&http::response::Parts> {
        Some(response.as_ref())
    }
}

/// A snapshot from YAML: provider `openai` with deployments `deps` (plus `provider_extra`), provider
/// `qwen` and `gemini` (one deployment each), route `v1` by model (plus `route_extra`) and route
/// `gemini` with the model in the path (one attempt, then its fallback).
fn snapshot(deps: &[&str], provider_extra: &str, route_extra: &str) -> Snapshot {
    let list: String = deps
        .iter()
        .map(|d| format!("      - {{ name: {d}, base_url: \"http://127.0.0.1:9\" }}\n"))
        .collect();
    let yaml = format!(
        r#"providers:
  openai:
    credential: k
    models: [gpt-4o]
    deployments:
{list}{provider_extra}
  qwen: {{ base_url: "http://127.0.0.1:9", credential: k, models: [qwen-plus] }}
  gemini:
    base_url: "http://127.0.0.1:9"
    auth: goog-api-key
    credential: k
    models: [gemini-2.5-pro, gemini-2.5-flash]
routes:
  - name: v1
    prefix: /v1
    upstream:
      by_model:
        - {{ models: ["gpt-*"], provider: openai, path_prefix: /v1 }}
        - {{ models: ["qwen-*"], provider: qwen, path_prefix: /compatible-mode/v1 }}
    filters: [{{ kind: request-id }}]
{route_extra}
  - name: gemini
    prefix: /gemini/v1beta
    dialect: google
    upstream: {{ provider: gemini, path_prefix: /v1beta }}
    filters: [{{ kind: request-id }}]
    retry: {{ max_attempts: 1, budget_ratio: 10.0 }}
    fallbacks: {{ gemini-2.5-pro: [gemini-2.5-flash] }}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let config = leaky_config::load(&path)
        .map_err(|e| e.to_string())
        .unwrap();
    let background = Background::start().unwrap();
    let backend = Arc::new(LimiterBackend::new(&config.limits.store, &background));
    let shared = Shared::new(background, Resolve::System);
    Snapshot::build(Arc::new(config), 1, &shared, &backend).unwrap()
}

fn head(
    up: &Upstream,
    _d: &Deployment,
    rest: &str,
    _len: usize,
) -> Result<UpstreamHead, Rejection> {
    let path = format!("{}{rest}", up.path_prefix);
    UpstreamHead::new(http::Method::POST, path.as_bytes(), 0)
        .map_err(|e| Rejection::new(RejectKind::Internal, e.to_string()))
}

/// One exchange on `path` (under route `v1` or `gemini`) for `model`, as tenant `acme`.
async fn ask(
    snap: &Snapshot,
    fake: &Fake,
    path: &str,
    model: &str,
) -> Result<Exchanged<ResponseHeader>, Failure> {
    ask_on(snap, fake, &fake.clock, path, model).await
}

async fn ask_on(
    snap: &Snapshot,
    fake: &Fake,
    clock: &impl Clock,
    path: &str,
    model: &str,
) -> Result<Exchanged<ResponseHeader>, Failure> {
    let (_, route) = snap.route(path).unwrap();
    let rest = &path[route.prefix.len()..];
    let plan = Plan {
        route,
        primary: route.pick(Some(model)).unwrap().clone(),
        model: Some(model),
        rest,
        body: Bytes::from(format!(r#"{{"model":"{model}","messages":[]}}"#)),
        tokens: 10,
        tenant: Tenant::Named("acme"),
        deadline: Instant::now() + route.total_timeout,
        trace: None,
    };
    exchange(fake, clock, plan, head).await
}

async fn chat(snap: &Snapshot, fake: &Fake) -> Result<Exchanged<ResponseHeader>, Failure> {
    ask(snap, fake, "/v1/chat/completions", "gpt-4o").await
}

fn status(r: &Result<Exchanged<ResponseHeader>, Failure>) -> u16 {
    match r {
        Ok(x) => x.response.status.as_u16(),
        Err(f) => f.rejection.status(),
    }
}

const RETRY_ALL: &str = "    retry: { max_attempts: 4, budget_ratio: 10.0 }";

#[tokio::test(start_paused = true)]
async fn every_deployment_is_tried_once_before_any_is_tried_again() {
    let snap = snapshot(&["a", "b", "c"], "", RETRY_ALL);
    let fake = Fake::new(&[Step::Status(500, &[]); 4]);
    let r = chat(&snap, &fake).await;
    let trail = fake.trail();
    let to: Vec<&str> = trail.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(to.len(), 4, "max_attempts: {to:?}");
    let mut first3 = to[..3].to_vec();
    first3.sort_unstable();
    assert_eq!(
        first3,
        ["openai/a", "openai/b", "openai/c"],
        "untried first: {to:?}"
    );
    assert_eq!(status(&r), 500, "the last answer is the caller's");
    let x = r.ok().unwrap();
    assert_eq!(x.attempts.count, 4);
    assert_eq!(
        x.attempts.failed.as_deref().map(|t| t.split(' ').count()),
        Some(3)
    );
    assert!(trail.iter().all(|(_, at)| *at == 0), "no jitter, no wait");
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_retry_budget_ends_the_retries() {
    // One retry per one-second window, whatever the traffic.
    let snap = snapshot(
        &["a", "b"],
        "",
        "    retry: { max_attempts: 3, budget_ratio: 0.0, budget_min_per_second: 1, budget_window_ms: 1000 }",
    );
    let fake = Fake::new(&[Step::Status(503, &[]); 8]);
    let r = chat(&snap, &fake).await;
    assert_eq!(
        fake.trail().len(),
        2,
        "one retry granted, the second refused"
    );
    assert_eq!(status(&r), 503);
    let r = chat(&snap, &fake).await;
    assert_eq!(
        fake.trail().len(),
        3,
        "the window's budget is spent: no retry"
    );
    assert_eq!(r.ok().unwrap().attempts.count, 1);
    tokio::time::advance(Duration::from_millis(1_000)).await;
    let _ = chat(&snap, &fake).await;
    assert_eq!(fake.trail().len(), 5, "a new window grants a retry again");
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_pool_falls_back_with_the_model_rewritten_in_the_body() {
    let snap = snapshot(
        &["a"],
        "",
        "    retry: { max_attempts: 2, budget_ratio: 10.0 }\n    fallbacks: { gpt-4o: [qwen-plus] }",
    );
    let fake = Fake::new(&[Step::Status(500, &[]), Step::Connect]);
    let x = chat(&snap, &fake).await.ok().unwrap();
    let calls = fake.calls.lock().unwrap();
    let to: Vec<&str> = calls.iter().map(|c| c.to.as_str()).collect();
    assert_eq!(to, ["openai/a", "openai/a", "qwen/default"]);
    assert_eq!(calls[2].model.as_deref(), Some("qwen-plus"));
    assert_eq!(calls[2].path, "/compatible-mode/v1/chat/completions");
    assert_eq!(calls[0].model.as_deref(), Some("gpt-4o"));
    assert_eq!(x.served_model.as_deref(), Some("qwen-plus"));
    assert_eq!(&*x.holds.upstream().provider, "qwen");
    assert_eq!(x.response.status.as_u16(), 200);
    assert_eq!(x.attempts.count, 3);
    assert_eq!(
        x.attempts.failed.as_deref(),
        Some("openai/a:500 openai/a:connect")
    );
}

#[tokio::test(start_paused = true)]
async fn a_path_routed_fallback_rewrites_the_model_segment() {
    let snap = snapshot(&["a"], "", "");
    let fake = Fake::new(&[Step::Status(503, &[])]);
    let path = "/gemini/v1beta/models/gemini-2.5-pro:generateContent";
    let x = ask(&snap, &fake, path, "gemini-2.5-pro")
        .await
        .ok()
        .unwrap();
    let calls = fake.calls.lock().unwrap();
    let paths: Vec<&str> = calls.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1beta/models/gemini-2.5-pro:generateContent",
            "/v1beta/models/gemini-2.5-flash:generateContent"
        ]
    );
    assert_eq!(x.served_model.as_deref(), Some("gemini-2.5-flash"));
}

#[tokio::test(start_paused = true)]
async fn the_route_deadline_ends_the_exchange() {
    let snap = snapshot(
        &["a", "b"],
        "",
        "    retry: { max_attempts: 3, budget_ratio: 10.0 }\n    timeouts: { first_byte_ms: 600, total_ms: 1000 }",
    );
    let fake = Fake::new(&[Step::Hang, Step::Hang, Step::Hang]);
    let r = chat(&snap, &fake).await;
    let at: Vec<u64> = fake.trail().iter().map(|(_, at)| *at).collect();
    assert_eq!(at, [0, 600], "the second attempt gets only the 400 ms left");
    assert_eq!(
        fake.elapsed_ms(),
        1_000,
        "over at the deadline, no third attempt"
    );
    assert_eq!(status(&r), 504);
    assert_eq!(r.err().unwrap().attempts.count, 2);
}

#[tokio::test(start_paused = true)]
async fn a_deployment_that_answered_429_is_skipped_until_its_cool_down_passes() {
    let snap = snapshot(
        &["a", "b"],
        "",
        "    retry: { max_attempts: 2, budget_ratio: 10.0 }",
    );
    // The provider says the account is out (provider-wide) and asks for 2 s.
    let out: &[(&str, &str)] = &[
        ("retry-after", "2"),
        ("x-ratelimit-remaining-requests", "0"),
    ];
    let fake = Fake::new(&[Step::Status(429, out)]);
    let x = chat(&snap, &fake).await.ok().unwrap();
    assert_eq!(x.response.status.as_u16(), 200, "retried on the other one");
    let trail = fake.trail();
    let cooling = trail[0].0.clone();
    let other = trail[1].0.clone();
    assert_ne!(cooling, other);
    drop(x);
    for _ in 0..4 {
        chat(&snap, &fake).await.ok().unwrap();
    }
    tokio::time::advance(Duration::from_millis(1_999)).await;
    chat(&snap, &fake).await.ok().unwrap();
    let during: Vec<String> = fake.trail()[2..].iter().map(|(d, _)| d.clone()).collect();
    assert!(
        during.iter().all(|d| *d == other),
        "{cooling} skipped: {during:?}"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    for _ in 0..4 {
        chat(&snap, &fake).await.ok().unwrap();
    }
    let after: Vec<(String, u64)> = fake.trail()[7..].to_vec();
    assert!(
        after.iter().any(|(d, at)| *d == cooling && *at == 2_000),
        "back in the pool at 2 s: {after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_deployment_bulkhead_waits_at_most_the_queue_timeout() {
    let snap = snapshot(
        &["a"],
        "    bulkhead: { max_concurrent: 1, max_queue: 1, queue_timeout_ms: 500 }",
        "",
    );
    let fake = Fake::new(&[]);
    // The first answer holds the only slot until its holds are dropped.
    let first = chat(&snap, &fake).await.ok().unwrap();
    let r = chat(&snap, &fake).await;
    assert_eq!(fake.elapsed_ms(), 500, "queued for the queue timeout");
    assert_eq!(status(&r), 503);
    assert!(r
        .err()
        .unwrap()
        .rejection
        .message
        .contains("concurrency limit"));
    assert_eq!(fake.trail().len(), 1, "the queued request never went out");
    // A slot freed while queued is taken at once.
    let release = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(first);
    };
    let (_, r) = tokio::join!(release, chat(&snap, &fake));
    assert_eq!(status(&r), 200);
    assert_eq!(fake.trail()[1].1, 700, "went out when the slot was freed");
}

#[tokio::test(start_paused = true)]
async fn the_breaker_records_one_outcome_per_attempt_and_a_cancelled_probe_frees_its_slot() {
    let snap = snapshot(
        &["a"],
        "    breaker: { consecutive_failures: 3, min_tenants: 1, open_ms: 1000, probe_timeout_ms: 60000 }",
        "    retry: { max_attempts: 2, budget_ratio: 10.0 }",
    );
    let breaker = |snap: &Snapshot| {
        let (_, route) = snap.route("/v1/x").unwrap();
        route.pick(Some("gpt-4o")).unwrap().pool.deployments[0]
            .state
            .clone()
    };
    let state = breaker(&snap);
    let fake = Fake::new(&[Step::Status(500, &[]); 3]);
    let r = chat(&snap, &fake).await;
    assert_eq!((status(&r), fake.trail().len()), (500, 2));
    assert_eq!(
        state.breaker.trips(),
        0,
        "two attempts, two failures: closed"
    );
    let r = chat(&snap, &fake).await;
    assert_eq!(state.breaker.trips(), 1, "the third failure opens it");
    assert_eq!(status(&r), 500, "no deployment left to retry on");
    let r = chat(&snap, &fake).await;
    assert_eq!(
        (status(&r), fake.trail().len()),
        (503, 3),
        "open: nothing sent"
    );
    tokio::time::advance(Duration::from_millis(1_000)).await;
    // A half-open probe whose request is cancelled mid-attempt gives its slot back.
    fake.script.lock().unwrap().push_back(Step::Hang);
    let cancelled = tokio::time::timeout(Duration::from_millis(100), chat(&snap, &fake)).await;
    assert!(cancelled.is_err());
    assert_eq!(fake.trail().len(), 4);
    let x = chat(&snap, &fake).await.ok().unwrap();
    assert_eq!(
        x.response.status.as_u16(),
        200,
        "the next request probes at once"
    );
    assert_eq!(fake.trail()[4].1, 1_100);
    let now = fake.clock.now_ms();
    assert_eq!(
        state.breaker.state(now),
        leaky_resilience::BreakerState::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn holds_settle_the_deployment_charge_once_and_refund_it_when_dropped() {
    let snap = snapshot(&["a, tpm: 100"], "", "");
    let fake = Fake::new(&[]);
    // The process clock: an unsettled charge is refunded on drop at `balancer::now_ms`.
    let chat = |snap, fake| ask_on(snap, fake, &SystemClock, "/v1/chat/completions", "gpt-4o");
    let state = {
        let (_, route) = snap.route("/v1/x").unwrap();
        route.pick(Some("gpt-4o")).unwrap().pool.deployments[0]
            .state
            .clone()
    };
    let now = crate::balancer::now_ms;
    let mut x = chat(&snap, &fake).await.ok().unwrap();
    assert_eq!(state.quota.used(now()), (1, 10), "charged the estimate");
    x.holds.settle(now(), 4);
    x.holds.settle(now(), 7);
    assert_eq!(state.quota.used(now()).1, 4, "settled once, with the usage");
    drop(x);
    assert_eq!(state.quota.used(now()).1, 4);
    let y = chat(&snap, &fake).await.ok().unwrap();
    assert_eq!(state.quota.used(now()).1, 14);
    drop(y);
    assert_eq!(state.quota.used(now()).1, 4, "never settled: refunded");
}
