//! Provider credentials end to end (issue 14): the real control plane (identity in dev mode, a real
//! PostgreSQL) holds the OpenAI key in its vault, the base references it as `${secret:openai}`, and a
//! real proxy fed over the watch stream sends it upstream — the OpenAI stub echoes the credential it
//! saw (`x-stub-saw-authorization`). Replacing the stored key reaches the running proxy without a
//! restart; the proxy's `/admin/config`, its log and the control plane's log never show the key.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use crate::common;

use std::time::Duration;

use crate::common::{chat, eventually, PRO_KEY};
use crate::identity_stack::{Stack, ADMIN};
use serde_json::Value;

const FIRST: &str = "sk-vault-first-7d2e91c4";
const SECOND: &str = "sk-vault-second-0b5fa3e8";

/// The credential the OpenAI stub saw on a chat through `/v1`.
async fn seen(gw: &common::Gateway) -> String {
    let res = gw.post_chat(PRO_KEY, &chat("gpt-4o-mini", "hi")).await;
    assert_eq!(res.status(), 200, "{}", gw.log());
    res.headers()["x-stub-saw-authorization"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_proxy_sends_the_vaulted_key_upstream_and_picks_up_a_new_one_without_restart() {
    let stack = Stack::start(&[]).await;
    let gw = stack.proxy("proxy-vault", &[]).await;
    let (cp, http) = (&stack.url, &stack.http);
    let base = http
        .get(format!("{cp}/v1/config/base"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut base: Value = serde_json::from_str(&base).unwrap();
    stack.store_credential("openai", FIRST).await;
    base["providers"]["openai"]["credential"] = "${secret:openai}".into();
    stack.vault_literal_credentials(&mut base).await;
    let from = gw.config_version().await;
    let res = http
        .put(format!("{cp}/v1/config/base"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/yaml")
        .body(base.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let (v1, _) = gw.wait_version_change(from, Duration::from_secs(5)).await;
    assert_eq!(seen(&gw).await, format!("Bearer {FIRST}"));

    // A new key: the proxy applies the snapshot it is pushed, no restart, no base change.
    stack.store_credential("openai", SECOND).await;
    gw.wait_version_change(v1, Duration::from_secs(5)).await;
    eventually(
        "the new key is used",
        Duration::from_secs(5),
        Some(&gw),
        || async { seen(&gw).await == format!("Bearer {SECOND}") },
    )
    .await;

    // The key shows nowhere but upstream.
    let admin = gw.admin_text("/admin/config").await;
    let stored = http
        .get(format!("{cp}/v1/config/base"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (what, text) in [
        ("/admin/config", admin),
        ("the stored base", stored),
        ("the proxy's log", gw.log()),
        ("the control plane's log", stack.log()),
    ] {
        for key in [FIRST, SECOND] {
            assert!(!text.contains(key), "{what} shows a provider key");
        }
    }
}
