//! JWT authentication through the real binary: a JWKS file, an RS256 token, claims as the principal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("filters/tests/fixtures/jwt")
}

fn token(claims: Value) -> String {
    let pem = std::fs::read(fixtures().join("rsa.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_route_authenticated_by_jwt_or_api_key() {
    let up = Upstreams::start().await;
    let jwks = fixtures().join("jwks.json");
    // The capture route accepts a JWT (checked first) or an API key.
    let chain = format!(
        "    filters:\n      - kind: request-id\n      - kind: jwt\n        jwks_file: {}\n        algorithms: [RS256]\n        issuer: https://idp.test\n        audiences: [leaky]\n        optional: true\n      - kind: api-key\n",
        jwks.display()
    );
    let config = up.config("").replace(
        "  - name: capture\n    prefix: /capture\n    upstream: { provider: capture, path_prefix: /echo }\n    filters: *chain\n",
        &format!("  - name: capture\n    prefix: /capture\n    upstream: {{ provider: capture, path_prefix: /echo }}\n{chain}"),
    );
    assert_ne!(config, up.config(""), "route replaced");
    let gw = Gateway::start(&config).await;

    let good = token(
        json!({"sub": "erin", "org": "acme", "tier": "pro", "iss": "https://idp.test", "aud": "leaky",
                            "exp": now() + 300, "models": ["capture-*"]}),
    );
    let r = gw
        .client
        .post(gw.url("/capture/x"))
        .bearer_auth(&good)
        .json(&json!({"model": "capture-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["headers"]["authorization"], "Bearer capture-credential",
        "the JWT is not forwarded"
    );

    // Outside the token's model allow-list.
    let r = gw
        .client
        .post(gw.url("/capture/x"))
        .bearer_auth(&good)
        .json(&json!({"model": "other-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let expired = token(
        json!({"sub": "erin", "tier": "pro", "iss": "https://idp.test", "aud": "leaky", "exp": now() - 3600}),
    );
    let r = gw
        .client
        .post(gw.url("/capture/x"))
        .bearer_auth(&expired)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let msg = r.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("expired"), "{msg}");

    let wrong_aud = token(
        json!({"sub": "erin", "tier": "pro", "iss": "https://idp.test", "aud": "other", "exp": now() + 300}),
    );
    let r = gw
        .client
        .post(gw.url("/capture/x"))
        .bearer_auth(&wrong_aud)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // An API key still works on the same route; and the access log names the JWT principal.
    let r = gw
        .client
        .post(gw.url("/capture/x"))
        .bearer_auth(PRO_KEY)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The JWKS cache lives outside the filters: reloads (a key change, then an unrelated edit) rebuild the
/// chains but keep the keys fetched from the URL, so the identity provider is asked once.
#[tokio::test]
async fn reloads_keep_the_keys_fetched_from_a_jwks_url() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    let fetches = Arc::new(AtomicUsize::new(0));
    let jwks: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("jwks.json")).unwrap()).unwrap();
    let router = axum::Router::new().route(
        "/jwks",
        axum::routing::get({
            let fetches = fetches.clone();
            move || {
                fetches.fetch_add(1, Ordering::SeqCst);
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }
        }),
    );
    let idp = serve(router).await;
    let up = Upstreams::start().await;
    let chain = format!(
        "    filters:\n      - kind: jwt\n        jwks_url: http://{idp}/jwks\n        algorithms: [RS256]\n        issuer: https://idp.test\n        audiences: [leaky]\n        optional: true\n      - kind: api-key\n"
    );
    let with_jwt = |extra_keys: &str| {
        up.config(extra_keys).replace(
            "  - name: capture\n    prefix: /capture\n    upstream: { provider: capture, path_prefix: /echo }\n    filters: *chain\n",
            &format!("  - name: capture\n    prefix: /capture\n    upstream: {{ provider: capture, path_prefix: /echo }}\n{chain}"),
        )
    };
    let gw = Gateway::start(&with_jwt("")).await;
    let good = token(
        json!({"sub": "erin", "tier": "pro", "iss": "https://idp.test", "aud": "leaky", "exp": now() + 300}),
    );
    let call = |bearer: String| {
        let r = gw
            .client
            .post(gw.url("/capture/x"))
            .bearer_auth(bearer)
            .json(&json!({}))
            .send();
        async move { r.await.unwrap().status().as_u16() }
    };
    assert_eq!(call(good.clone()).await, 200);
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    // Reload 1: only the keys change; the new key works, the JWKS is not fetched again.
    let new_key = "lt-test-jwks-reload";
    let added = format!(
        "  - {{ id: added, sha256: {}, user: dave, tier: pro }}\n",
        sha256_hex(new_key.as_bytes())
    );
    let v0 = gw.config_version().await;
    gw.write_config(&with_jwt(&added));
    let (v1, _) = gw.wait_version_change(v0, Duration::from_secs(5)).await;
    assert_eq!(call(new_key.to_string()).await, 200);
    assert_eq!(call(good.clone()).await, 200);

    // Reload 2: an unrelated edit.
    gw.write_config(
        &with_jwt(&added).replace("max_body_bytes: 10485760", "max_body_bytes: 10485761"),
    );
    gw.wait_version_change(v1, Duration::from_secs(5)).await;
    assert_eq!(call(good).await, 200);
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "one fetch across two reloads"
    );
}
