//! Streamed answers on a metered route go to the client one event at a time (issue 19, point 3).
//!
//! Under 1,000 concurrent streams clients saw events coalesced; this pins down that the gateway
//! itself never holds an event back, whatever the metering does: the full chain (request-id, api-key,
//! rate-limit with token limits, so every stream is reserved, tracked and settled) in front of an
//! upstream the test drives event by event. The upstream sends event *n + 1* only after the client
//! has received event *n* whole, so a gateway that buffered, batched or waited for the next event
//! would never deliver it and the test would fail on its deadline — a lockstep, not a timing figure.
//! Both meter modes: the caller asked for `include_usage` (events pass as they are), and the gateway
//! added it (the usage event is held back and stripped, every other event still passes at once).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::{sha256_hex, Gateway, PRO_KEY};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The next request's body and the sender of its answer's events.
#[derive(Clone, Default)]
struct Upstream {
    bodies: Arc<Mutex<Vec<Value>>>,
    events: Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>,
}

impl Upstream {
    /// Arms the next chat completion: its SSE body is what the returned sender sends.
    fn arm(&self) -> mpsc::Sender<Bytes> {
        let (tx, rx) = mpsc::channel(1);
        *self.events.lock().unwrap() = Some(rx);
        tx
    }
}

async fn chat(State(up): State<Upstream>, body: Bytes) -> Response {
    up.bodies
        .lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap());
    let rx = up
        .events
        .lock()
        .unwrap()
        .take()
        .expect("upstream not armed");
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn rig() -> (Gateway, Upstream) {
    let up = Upstream::default();
    let router = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .with_state(up.clone());
    let addr = common::serve(router).await;
    let config = format!(
        r#"server:
  threads: 1
providers:
  lockstep:
    base_url: http://{addr}
    credential: sk-test
    models: [gpt-4o-mini]
routes:
  - name: v1
    prefix: /v1
    upstream:
      by_model:
        - {{ models: ["gpt-*"], provider: lockstep, path_prefix: /v1 }}
    filters:
      - kind: request-id
      - kind: api-key
      - kind: rate-limit
tiers:
  pro:
    limits:
      - {{ name: pro-rpm, unit: requests, rate: 1000, per: minute }}
      - {{ name: pro-tpm, unit: tokens, rate: 1000000, per: minute }}
limits:
  store: memory
keys:
  - {{ id: test-pro, sha256: {pro}, user: alice, org: acme, tier: pro }}
"#,
        pro = sha256_hex(PRO_KEY.as_bytes()),
    );
    (Gateway::start(&config).await, up)
}

fn delta(i: usize) -> String {
    let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": format!("word{i} ")}, "finish_reason": null}]});
    format!("data: {chunk}\n\n")
}

fn usage_event() -> String {
    let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
        "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}});
    format!("data: {chunk}\n\n")
}

/// Sends `event` upstream and waits for exactly it at the client (bounded: a held event fails).
async fn lockstep(tx: &mpsc::Sender<Bytes>, r: &mut reqwest::Response, event: &str) {
    tx.send(Bytes::from(event.to_owned())).await.unwrap();
    let mut got = Vec::new();
    while got.len() < event.len() {
        let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
            .await
            .unwrap_or_else(|_| panic!("event not delivered before the next one exists: {event}"))
            .unwrap()
            .expect("stream ended early");
        got.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8_lossy(&got), event);
}

async fn open(gw: &Gateway, include_usage: bool) -> reqwest::Response {
    let mut body = json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 16,
        "messages": [{"role": "user", "content": "Say hello."}]});
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", gw.log());
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    r
}

#[tokio::test]
async fn metered_stream_reaches_the_client_event_by_event() {
    let (gw, up) = rig().await;
    let tx = up.arm();
    let mut r = open(&gw, true).await;
    let rid = request_id(&r);
    for i in 0..4 {
        lockstep(&tx, &mut r, &delta(i)).await;
    }
    // The caller asked for usage: its event passes like any other, and settles the reservation.
    lockstep(&tx, &mut r, &usage_event()).await;
    lockstep(&tx, &mut r, "data: [DONE]\n\n").await;
    drop(tx);
    assert_eq!(r.text().await.unwrap(), "");
    settled_as_reported(&gw, &rid).await;
}

/// The stream was metered: settled with the provider's reported usage.
async fn settled_as_reported(gw: &Gateway, rid: &str) {
    let record = gw.usage_record(rid).await;
    assert_eq!(record["source"], "reported", "{record}");
    assert_eq!(record["completion_tokens"], 4, "{record}");
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()["x-request-id"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn stripped_usage_event_holds_back_nothing_else() {
    let (gw, up) = rig().await;
    let tx = up.arm();
    let mut r = open(&gw, false).await;
    let rid = request_id(&r);
    let sent = up.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        sent["stream_options"]["include_usage"],
        json!(true),
        "the gateway asks the provider for usage"
    );
    for i in 0..4 {
        lockstep(&tx, &mut r, &delta(i)).await;
    }
    // The usage event the caller did not ask for is stripped; the end still comes through at once.
    tx.send(Bytes::from(usage_event())).await.unwrap();
    lockstep(&tx, &mut r, "data: [DONE]\n\n").await;
    drop(tx);
    assert_eq!(r.text().await.unwrap(), "");
    settled_as_reported(&gw, &rid).await;
}
