//! Tenant isolation of the upstream resilience (issue #11, point 7): one tenant's requests must not
//! take a deployment out for everyone. The gateway binary runs in front of OpenAI stub deployments
//! wrapped by a layer that injects faults on the upstream side (a queue of canned answers for the next
//! requests, and a fixed answer for requests whose prompt says `poison`) and counts what arrives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::{chat, eventually, sha256_hex, Gateway};
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ACME: &str = "lt-iso-acme";
const GLOBEX: &str = "lt-iso-globex";

/// What the upstream answers instead of the stub.
#[derive(Clone, Debug)]
enum Fault {
    /// A 429 with `retry-after` (seconds); `exhausted` adds OpenAI's headers saying the account is
    /// out (`x-ratelimit-remaining-requests: 0`), else headers showing plenty left.
    TooMany { retry_after: u64, exhausted: bool },
    /// A 500 in OpenAI's error format.
    ServerError,
    /// Wait this long, then let the stub answer.
    Hang(Duration),
}

impl Fault {
    async fn answer(self, req: Request, next: Next) -> Response {
        match self {
            Fault::TooMany {
                retry_after,
                exhausted,
            } => {
                let remaining = if exhausted { "0" } else { "4999" };
                let body = r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
                Response::builder()
                    .status(429)
                    .header("content-type", "application/json")
                    .header("retry-after", retry_after.to_string())
                    .header("x-ratelimit-limit-requests", "5000")
                    .header("x-ratelimit-remaining-requests", remaining)
                    .header("x-ratelimit-remaining-tokens", "800000")
                    .body(Body::from(body))
                    .unwrap()
            }
            Fault::ServerError => (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                [("content-type", "application/json")],
                r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#,
            )
                .into_response(),
            Fault::Hang(d) => {
                tokio::time::sleep(d).await;
                next.run(req).await
            }
        }
    }
}

#[derive(Default)]
struct Plan {
    /// Answers for the next requests, in order.
    next: VecDeque<Fault>,
    /// The answer to any request whose body contains `poison` (once `next` is empty).
    poison: Option<Fault>,
}

/// One upstream deployment: an OpenAI stub (latency off) behind the fault layer.
struct Dep {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    plan: Arc<Mutex<Plan>>,
}

impl Dep {
    async fn start() -> Dep {
        let hits = Arc::new(AtomicU64::new(0));
        let plan = Arc::new(Mutex::new(Plan::default()));
        let (h, p) = (hits.clone(), plan.clone());
        let router = leaky_stubs::openai_router_with(&leaky_stubs::StubOptions::new(
            leaky_stubs::Latency::Off,
        ))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let (h, p) = (h.clone(), p.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let (parts, body) = req.into_parts();
                    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                    let poisoned = bytes.windows(6).any(|w| w == b"poison");
                    let req = Request::from_parts(parts, Body::from(bytes));
                    let fault = {
                        let mut plan = p.lock().unwrap();
                        plan.next
                            .pop_front()
                            .or_else(|| plan.poison.clone().filter(|_| poisoned))
                    };
                    match fault {
                        Some(f) => f.answer(req, next).await,
                        None => next.run(req).await,
                    }
                }
            },
        ));
        let addr = common::serve(router).await;
        Dep { addr, hits, plan }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    fn then(&self, f: Fault) {
        self.plan.lock().unwrap().next.push_back(f);
    }

    fn poison(&self, f: Fault) {
        self.plan.lock().unwrap().poison = Some(f);
    }
}

/// Provider `openai` over `deps` (a, b, ...), `breaker` as its breaker settings; route `/v1` without
/// retries (each request's answer is its one attempt's), keys of two tenants.
fn config(deps: &[&Dep], breaker: &str) -> String {
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
{list}    breaker: {breaker}
routes:
  - name: v1
    prefix: /v1
    upstream: {{ provider: openai, path_prefix: /v1 }}
    filters: [{{ kind: request-id }}, {{ kind: api-key }}]
    retry: {{ max_attempts: 1 }}
tiers:
  pro: {{}}
keys:
  - {{ id: acme, sha256: {acme}, user: alice, org: acme, tier: pro }}
  - {{ id: globex, sha256: {globex}, user: bob, org: globex, tier: pro }}
"#,
        acme = sha256_hex(ACME.as_bytes()),
        globex = sha256_hex(GLOBEX.as_bytes()),
    )
}

/// Status and body of a chat request by `key` saying `content`.
async fn ask(gw: &Gateway, key: &str, content: &str) -> (u16, String) {
    let r = gw.post_chat(key, &chat("gpt-4o", content)).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

const COOLDOWNS: &str = r#"leaky_upstream_cooldowns_total{upstream="openai/a"}"#;
const CIRCUIT: &str = r#"leaky_circuit_state{upstream="openai/a"}"#;

#[tokio::test]
async fn one_tenants_429_does_not_cool_the_deployment_for_another_tenant() {
    let a = Dep::start().await;
    let gw = Gateway::start(&config(&[&a], "{}")).await;
    a.then(Fault::TooMany {
        retry_after: 120,
        exhausted: false,
    });
    let r = gw.post_chat(ACME, &chat("gpt-4o", "hi")).await;
    assert_eq!(r.status(), 429, "acme gets the provider's 429");
    assert_eq!(r.headers()["retry-after"], "120");
    // The one deployment stays in the pool: the next tenant is served by it, and so is acme.
    let (status, body) = ask(&gw, GLOBEX, "hi").await;
    assert_eq!(status, 200, "globex served by the same deployment: {body}");
    let (status, body) = ask(&gw, ACME, "hi").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.hits(), 3);
    assert_eq!(gw.metric(COOLDOWNS).await, 0.0);
}

#[tokio::test]
async fn provider_exhaustion_headers_cool_the_deployment_down_capped_by_max_cooldown_ms() {
    let a = Dep::start().await;
    let gw = Gateway::start(&config(&[&a], "{ max_cooldown_ms: 1500 }")).await;
    a.then(Fault::TooMany {
        retry_after: 120,
        exhausted: true,
    });
    let sent = Instant::now();
    assert_eq!(ask(&gw, ACME, "hi").await.0, 429);
    // The provider says the account is out: nobody is sent there until the (capped) cool-down ends.
    let (status, body) = ask(&gw, GLOBEX, "hi").await;
    assert_eq!(status, 503, "cooling down: {body}");
    assert_eq!(gw.metric(COOLDOWNS).await, 1.0);
    eventually(
        "the deployment serves again after max_cooldown_ms, not the 120 s asked",
        Duration::from_secs(10),
        Some(&gw),
        || async { ask(&gw, GLOBEX, "hi").await.0 == 200 },
    )
    .await;
    assert!(
        sent.elapsed() >= Duration::from_millis(1500),
        "served after {:?}: the cool-down was cut short",
        sent.elapsed()
    );
    assert_eq!(
        a.hits(),
        2,
        "nothing reached the deployment while it cooled"
    );
}

#[tokio::test]
async fn header_less_429s_of_two_tenants_cool_the_deployment_down() {
    let a = Dep::start().await;
    let gw = Gateway::start(&config(&[&a], "{ max_cooldown_ms: 1500 }")).await;
    for _ in 0..3 {
        a.then(Fault::TooMany {
            retry_after: 120,
            exhausted: false,
        });
    }
    // Two 429s of one tenant: still in the pool.
    assert_eq!(ask(&gw, ACME, "hi").await.0, 429);
    assert_eq!(ask(&gw, ACME, "hi").await.0, 429);
    assert_eq!(gw.metric(COOLDOWNS).await, 0.0);
    // A second tenant gets one too: the provider is limiting everyone, the deployment cools down.
    assert_eq!(ask(&gw, GLOBEX, "hi").await.0, 429);
    assert_eq!(gw.metric(COOLDOWNS).await, 1.0);
    assert_eq!(ask(&gw, ACME, "hi").await.0, 503);
    assert_eq!(a.hits(), 3);
    eventually(
        "served again once the capped cool-down ends",
        Duration::from_secs(10),
        Some(&gw),
        || async { ask(&gw, ACME, "hi").await.0 == 200 },
    )
    .await;
}

#[tokio::test]
async fn one_tenants_failures_do_not_open_the_circuit_for_another_tenant_two_tenants_do() {
    let a = Dep::start().await;
    let gw = Gateway::start(&config(
        &[&a],
        "{ consecutive_failures: 3, failure_ratio: 0, open_ms: 600000, max_open_ms: 600000 }",
    ))
    .await;
    a.poison(Fault::ServerError);
    // acme's requests make the provider fail, many times in a row.
    for _ in 0..10 {
        assert_eq!(ask(&gw, ACME, "poison").await.0, 500);
    }
    assert_eq!(gw.metric(CIRCUIT).await, 0.0, "still closed");
    let (status, body) = ask(&gw, GLOBEX, "hello").await;
    assert_eq!(status, 200, "globex is served: {body}");
    assert_eq!(a.hits(), 11);
    // Failures in a row from two tenants: the provider fails for everyone; the circuit opens.
    assert_eq!(ask(&gw, ACME, "poison").await.0, 500);
    assert_eq!(ask(&gw, GLOBEX, "poison").await.0, 500);
    assert_eq!(ask(&gw, ACME, "poison").await.0, 500);
    assert_eq!(gw.metric(CIRCUIT).await, 1.0, "open");
    let (status, body) = ask(&gw, GLOBEX, "hello").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(a.hits(), 14, "an open circuit sends nothing upstream");
}

#[tokio::test]
async fn connect_failures_open_the_circuit_whoever_sees_them() {
    // A port nothing listens on: connect failures are provider-wide by nature.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let b = Dep::start().await;
    let cfg = config(
        &[&b, &b],
        "{ consecutive_failures: 3, failure_ratio: 0, open_ms: 600000, max_open_ms: 600000 }",
    )
    .replacen(&b.addr.to_string(), &dead_addr.to_string(), 1)
    .replace(
        "retry: { max_attempts: 1 }",
        "retry: { max_attempts: 2, budget_ratio: 1.0 }",
    );
    let gw = Gateway::start(&cfg).await;
    eventually(
        "one tenant's connect failures open a's circuit",
        Duration::from_secs(10),
        Some(&gw),
        || async {
            assert_eq!(ask(&gw, ACME, "hi").await.0, 200, "retried on b");
            gw.metric(CIRCUIT).await == 1.0
        },
    )
    .await;
}

#[tokio::test]
async fn a_hung_half_open_probe_releases_its_slot_after_probe_timeout_ms() {
    let a = Dep::start().await;
    let gw = Gateway::start(&config(
        &[&a],
        "{ consecutive_failures: 2, failure_ratio: 0, open_ms: 200, max_open_ms: 200, probe_timeout_ms: 500 }",
    ))
    .await;
    // Two tenants fail: the circuit opens.
    a.then(Fault::ServerError);
    a.then(Fault::ServerError);
    assert_eq!(ask(&gw, ACME, "hi").await.0, 500);
    assert_eq!(ask(&gw, GLOBEX, "hi").await.0, 500);
    assert_eq!(gw.metric(CIRCUIT).await, 1.0);
    // After the open period, acme's request is the half-open probe, and the provider hangs on it.
    a.then(Fault::Hang(Duration::from_secs(30)));
    let probe = {
        let (client, url) = (gw.client.clone(), gw.url("/v1/chat/completions"));
        tokio::spawn(async move {
            loop {
                let r = client
                    .post(&url)
                    .bearer_auth(ACME)
                    .json(&chat("gpt-4o", "probe"))
                    .send()
                    .await
                    .unwrap();
                if r.status() != 503 {
                    return r.status().as_u16();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    eventually(
        "the probe reaches the deployment",
        Duration::from_secs(10),
        Some(&gw),
        || async { a.hits() == 3 },
    )
    .await;
    let held = Instant::now();
    // Others are refused while the probe holds the slot, but only for probe_timeout_ms: then the
    // next request probes, is served, and closes the circuit.
    eventually(
        "another tenant is served while the first probe still hangs",
        Duration::from_secs(10),
        Some(&gw),
        || async { ask(&gw, GLOBEX, "hi").await.0 == 200 },
    )
    .await;
    let waited = held.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "served {waited:?} after the probe hung"
    );
    assert!(!probe.is_finished(), "the hung probe is still waiting");
    assert_eq!(gw.metric(CIRCUIT).await, 0.0, "closed again");
    for key in [ACME, GLOBEX] {
        assert_eq!(ask(&gw, key, "hi").await.0, 200);
    }
    probe.abort();
}
