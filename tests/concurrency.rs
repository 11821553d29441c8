//! The `concurrency` filter end to end: a key's requests in flight are capped per route, the one over
//! the cap is refused with 429 in the route's dialect, and a slot comes back when its request ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::{chat, eventually, sha256_hex, Gateway, PRO_KEY};
use axum::routing::post;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// An OpenAI-shaped upstream that counts arrivals and answers only once `open` is true.
async fn slow_upstream() -> (std::net::SocketAddr, Arc<AtomicU64>, watch::Sender<bool>) {
    let arrived = Arc::new(AtomicU64::new(0));
    let (open, rx) = watch::channel(false);
    let seen = arrived.clone();
    let router = axum::Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let (seen, mut rx) = (seen.clone(), rx.clone());
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = rx.wait_for(|open| *open).await;
                axum::Json(json!({
                    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
                }))
            }
        }),
    );
    (common::serve(router).await, arrived, open)
}

#[tokio::test]
async fn two_slow_requests_hold_both_slots_a_third_is_refused_and_a_fourth_passes_after() {
    let (addr, arrived, open) = slow_upstream().await;
    let gw = Gateway::start(&format!(
        r#"server:
  threads: 2
providers:
  openai:
    base_url: http://{addr}
    credential: sk-test
    models: [gpt-4o]
routes:
  - name: v1
    prefix: /v1
    upstream: {{ provider: openai, path_prefix: /v1 }}
    filters:
      - kind: request-id
      - kind: api-key
      - {{ kind: concurrency, max: 2, scope: key }}
tiers:
  pro: {{}}
keys:
  - {{ id: test-pro, sha256: {key}, user: alice, org: acme, tier: pro }}
"#,
        key = sha256_hex(PRO_KEY.as_bytes()),
    ))
    .await;
    let body = chat("gpt-4o", "hello");
    let third = async {
        eventually(
            "both slow requests reach the upstream",
            Duration::from_secs(10),
            Some(&gw),
            || async { arrived.load(Ordering::SeqCst) == 2 },
        )
        .await;
        let r = gw.post_chat(PRO_KEY, &body).await;
        let refused = (
            r.status().as_u16(),
            r.headers().get("retry-after").cloned(),
            r.json::<Value>().await.unwrap(),
        );
        open.send(true).unwrap();
        refused
    };
    let (a, b, (status, retry_after, error)) = tokio::join!(
        gw.post_chat(PRO_KEY, &body),
        gw.post_chat(PRO_KEY, &body),
        third
    );
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    assert_eq!(status, 429, "{error}");
    assert_eq!(retry_after.unwrap(), "1");
    assert_eq!(
        error["error"]["type"], "requests",
        "OpenAI's dialect: {error}"
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 2 at once"),
        "{error}"
    );
    assert_eq!(
        arrived.load(Ordering::SeqCst),
        2,
        "the refused request never went upstream"
    );
    // Both ended: their slots are back.
    let fourth = gw.post_chat(PRO_KEY, &body).await;
    assert_eq!(fourth.status(), 200);
}
