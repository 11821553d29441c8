//! Feature flags gating real behaviour (issue #13, point 6): `stream_usage_injection` decides, per
//! org, whether the gateway adds `stream_options.include_usage` to an OpenAI stream whose caller did
//! not ask for usage.
//!
//! The gateway binary in front of the OpenAI stub, behind a test-side layer that records the bodies
//! the provider received. Two orgs share a route: `acme` has the flag overridden off, `globex` gets
//! the flag's rollout (on). Usage records are read from the gateway's JSON log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::{chat, eventually, sha256_hex, Gateway};
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ACME_KEY: &str = "lt-flags-acme";
const GLOBEX_KEY: &str = "lt-flags-globex";

type Bodies = Arc<Mutex<Vec<Value>>>;

/// The OpenAI stub, recording every JSON body it receives.
async fn recording_openai() -> (SocketAddr, Bodies) {
    let bodies = Bodies::default();
    let seen = bodies.clone();
    let options = leaky_stubs::StubOptions::new(leaky_stubs::Latency::Off);
    let router = leaky_stubs::openai_router_with(&options).layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let seen = seen.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                    seen.lock().unwrap().push(v);
                }
                next.run(Request::from_parts(parts, Body::from(bytes)))
                    .await
            }
        },
    ));
    (common::serve(router).await, bodies)
}

/// A metered `/v1` route (the `rate-limit` filter wants the cost) with `flags` as the `flags:` section.
fn config(openai: SocketAddr, flags: &str) -> String {
    format!(
        r#"server:
  threads: 2
providers:
  openai:
    base_url: http://{openai}
    credential: sk-test
    models: [gpt-4o-mini]
routes:
  - name: v1
    prefix: /v1
    upstream: {{ provider: openai, path_prefix: /v1 }}
    filters:
      - kind: request-id
      - kind: api-key
      - kind: rate-limit
tiers:
  pro:
    limits:
      - {{ name: day, unit: tokens, quota: daily, limit: 1000000 }}
keys:
  - {{ id: acme-key, sha256: {acme}, user: ann, org: acme, tier: pro }}
  - {{ id: globex-key, sha256: {globex}, user: gus, org: globex, tier: pro }}
{flags}"#,
        acme = sha256_hex(ACME_KEY.as_bytes()),
        globex = sha256_hex(GLOBEX_KEY.as_bytes()),
    )
}

const ACME_OFF: &str =
    "flags:\n  stream_usage_injection: { enabled: true, rollout_percent: 100, orgs: { acme: false } }\n";

/// What one streamed request without `stream_options` did: the body the provider received, whether
/// the caller's stream carried a usage chunk, and the usage record's `source`.
struct Outcome {
    upstream: Value,
    caller_saw_usage: bool,
    source: String,
}

async fn stream_without_usage(gw: &Gateway, bodies: &Bodies, key: &str) -> Outcome {
    let mut body = chat("gpt-4o-mini", "Tell me about leaky buckets.");
    body["stream"] = json!(true);
    body["max_tokens"] = json!(20);
    let before = bodies.lock().unwrap().len();
    let r = gw.post_chat(key, &body).await;
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let text = r.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let upstream = bodies.lock().unwrap()[before..].last().cloned().unwrap();
    Outcome {
        upstream,
        caller_saw_usage: text.contains("\"usage\":{"),
        source: usage_source(gw, &rid).await,
    }
}

/// The `source` of request `rid`'s usage record (waits for the sink to write it).
async fn usage_source(gw: &Gateway, rid: &str) -> String {
    let find = || {
        gw.log().lines().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["request_id"] == rid).then(|| v["source"].as_str().map(str::to_owned))?
        })
    };
    eventually(
        "the usage record is logged",
        Duration::from_secs(10),
        Some(gw),
        || {
            let found = find().is_some();
            async move { found }
        },
    )
    .await;
    find().unwrap()
}

fn assert_injected(o: &Outcome, org: &str) {
    assert_eq!(
        o.upstream["stream_options"],
        json!({"include_usage": true}),
        "{org}: the gateway asks the provider for usage"
    );
    assert!(
        !o.caller_saw_usage,
        "{org}: the added usage chunk is stripped"
    );
    assert_eq!(
        o.source, "reported",
        "{org}: settled on the provider's usage"
    );
}

fn assert_untouched(o: &Outcome, org: &str) {
    assert!(
        o.upstream.get("stream_options").is_none(),
        "{org}: the caller's body goes upstream untouched: {}",
        o.upstream
    );
    assert!(!o.caller_saw_usage, "{org}: no usage chunk");
    assert_eq!(o.source, "counted", "{org}: settled on the counted text");
}

#[tokio::test]
async fn stream_usage_injection_is_off_for_the_overridden_org_only_and_follows_reloads() {
    let (openai, bodies) = recording_openai().await;
    let gw = Gateway::start(&config(openai, ACME_OFF)).await;

    assert_untouched(&stream_without_usage(&gw, &bodies, ACME_KEY).await, "acme");
    assert_injected(
        &stream_without_usage(&gw, &bodies, GLOBEX_KEY).await,
        "globex",
    );

    // `/admin/config` shows the flag as configured.
    let view = gw.admin_json("/admin/config").await;
    let flag = &view["config"]["flags"]["stream_usage_injection"];
    assert_eq!(flag["enabled"], true, "{view}");
    assert_eq!(flag["rollout_percent"], 100);
    assert_eq!(flag["orgs"], json!({"acme": false}));
    assert_eq!(flag["source"], "config");

    // Flags are part of the config version: dropping the override turns injection on for acme.
    let version = gw.config_version().await;
    gw.write_config(&config(
        openai,
        "flags:\n  stream_usage_injection: { enabled: true }\n",
    ));
    gw.wait_version_change(version, Duration::from_secs(10))
        .await;
    assert_injected(
        &stream_without_usage(&gw, &bodies, ACME_KEY).await,
        "acme after reload",
    );
}

#[tokio::test]
async fn without_a_flags_section_the_builtin_default_keeps_injection_on() {
    let (openai, bodies) = recording_openai().await;
    let gw = Gateway::start(&config(openai, "")).await;
    assert_injected(&stream_without_usage(&gw, &bodies, ACME_KEY).await, "acme");
    let view = gw.admin_json("/admin/config").await;
    let flag = &view["config"]["flags"]["stream_usage_injection"];
    assert_eq!(flag["enabled"], true, "{view}");
    assert_eq!(flag["source"], "default");
}

#[tokio::test]
async fn a_flag_switched_off_with_an_org_override_on_gates_every_other_org() {
    let (openai, bodies) = recording_openai().await;
    let flags = "flags:\n  stream_usage_injection: { enabled: false, orgs: { globex: true } }\n";
    let gw = Gateway::start(&config(openai, flags)).await;
    assert_untouched(&stream_without_usage(&gw, &bodies, ACME_KEY).await, "acme");
    assert_injected(
        &stream_without_usage(&gw, &bodies, GLOBEX_KEY).await,
        "globex",
    );
}
