//! Revocation honoured by the proxies: the real control plane (identity on Redis) and real proxies fed
//! by its watch stream. A token revoked through `/oauth2/revoke` is refused by every proxy within a
//! second, with no per-request call to anything (the set is pushed as a `revoked` event); another token
//! of the same client keeps working; a proxy that connects later receives the current set at once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use crate::common;
use crate::identity_stack;

use std::time::{Duration, Instant};

use crate::common::eventually;
use crate::identity_stack::{call, Stack};

#[tokio::test]
async fn a_revoked_token_is_refused_by_every_proxy_within_a_second() {
    let stack = Stack::start(&[]).await;
    let (a, b) = tokio::join!(stack.proxy("proxy-a", &[]), stack.proxy("proxy-b", &[]));
    let (id, secret) = stack.client("gateway-app").await;
    let revoked = stack.token(&id, &secret).await;
    let kept = stack.token(&id, &secret).await;
    for gw in [&a, &b] {
        assert_eq!(call(gw, &revoked).await, 200, "{}", gw.log());
        assert_eq!(call(gw, &kept).await, 200);
    }

    let started = Instant::now();
    stack.revoke(&id, &secret, &revoked).await;
    for gw in [&a, &b] {
        eventually(
            "the revoked token is refused",
            Duration::from_secs(1),
            Some(gw),
            || async { call(gw, &revoked).await == 401 },
        )
        .await;
    }
    println!(
        "revocation reached 2 proxies in {:?} (revoke call to the last refusal)",
        started.elapsed()
    );
    for gw in [&a, &b] {
        assert_eq!(call(gw, &kept).await, 200, "the client's other token");
        let log = gw.log();
        assert!(log.contains("revoked tokens updated"), "{log}");
        assert_eq!(gw.metric("leaky_jwt_revoked_tokens").await, 1.0);
    }

    // A proxy connecting now gets the complete set right after its first snapshot.
    let c = stack.proxy("proxy-c", &[]).await;
    eventually(
        "the late proxy refuses the revoked token",
        Duration::from_secs(1),
        Some(&c),
        || async { call(&c, &revoked).await == 401 },
    )
    .await;
    assert_eq!(call(&c, &kept).await, 200);
}

/// The README's platform-team how-to, step by step against the real stack: the `jwt` filter added to
/// the `/v1` route of the imported base (`optional`, ahead of `api-key`) with `PUT /v1/config/base`, a
/// client with the default audience, its token through the OpenAI-compatible route, API keys still
/// working beside it.
#[tokio::test]
async fn the_readme_howto_puts_the_jwt_filter_on_v1_and_a_token_calls_it() {
    use serde_json::{json, Value};
    let stack = Stack::start(&[]).await;
    let gw = stack.proxy("proxy-howto", &[]).await;
    let (cp, http) = (&stack.url, &stack.http);
    let base = http
        .get(format!("{cp}/v1/config/base"))
        .bearer_auth(identity_stack::ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // What the README's jq line does.
    let mut base: Value = serde_json::from_str(&base).expect("the imported base is JSON");
    let v1 = base["routes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["name"] == "v1")
        .unwrap();
    let filters = v1["filters"].as_array_mut().unwrap();
    let jwt = json!({"kind": "jwt", "jwks_url": format!("{cp}/.well-known/jwks.json"),
                     "algorithms": ["ES256", "RS256", "EdDSA"], "issuer": cp,
                     "audiences": ["leaky-tokens"], "optional": true});
    filters.insert(1, jwt);
    stack.vault_literal_credentials(&mut base).await;
    let res = http
        .put(format!("{cp}/v1/config/base"))
        .bearer_auth(identity_stack::ADMIN)
        .header("content-type", "application/yaml")
        .body(base.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());

    let res = http
        .post(format!("{cp}/v1/identity/clients"))
        .bearer_auth(identity_stack::ADMIN)
        .json(&json!({"name": "billing-exporter", "scopes": ["chat"],
                      "org_id": identity_stack::ORG, "tier": "pro"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let c: Value = res.json().await.unwrap();
    let token = stack
        .token(
            c["id"].as_str().unwrap(),
            c["client_secret"].as_str().unwrap(),
        )
        .await;
    let body = common::chat("gpt-4o-mini", "hi");
    eventually(
        "the token works on /v1",
        Duration::from_secs(5),
        Some(&gw),
        || async { gw.post_chat(&token, &body).await.status() == 200 },
    )
    .await;
    assert_eq!(
        gw.post_chat(common::PRO_KEY, &body).await.status(),
        200,
        "API keys still work"
    );
    assert_eq!(
        gw.post_chat(&format!("{token}x"), &body).await.status(),
        401
    );
}
