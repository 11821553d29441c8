//! The proxy's `jwt` filter (the real binary) pointed at the control plane's `jwks_uri` accepts access
//! tokens from the identity context (on a real PostgreSQL): a rotation needs no proxy restart and no
//! refresh, because the new key is published before it signs; tokens for another audience are
//! refused; a flood of unknown `kid`s does not make the proxy hammer the JWKS endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::pg;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::{Gateway, Upstreams};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use leaky_control_plane::http::{AdminToken, ApiState};
use leaky_control_plane::identity::{self, keys, Alg, Identity, MasterKeys, Settings};
use leaky_control_plane::{app, db, Roles};
use serde_json::{json, Value};

/// The control plane (in process, system clock) with identity; counts JWKS fetches.
async fn control_plane() -> (String, Arc<Identity>, Arc<AtomicUsize>) {
    let url = pg::fresh_db().await.unwrap();
    let pool = db::pool(&url, 4).unwrap();
    db::migrate(&pool).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = ApiState::new(pool.clone(), AdminToken::new("t"));
    state.set_migrated();
    let mut settings = Settings::new(&base, MasterKeys::dev(), false);
    settings.algs = vec![Alg::ES256];
    let id = Identity::new(settings, pool, state.clock.clone(), None).unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let router = app::router(state.clone(), &Roles::all())
        .merge(identity::router(state, id.clone()))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                if req.uri().path() == "/.well-known/jwks.json" {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                next.run(req)
            },
        ));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (base, id, fetches)
}

async fn token(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> String {
    let res = http
        .post(format!("{base}/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_jwt_filter_accepts_this_servers_tokens_across_a_rotation() {
    let (cp, identity, fetches) = control_plane().await;
    identity.tick().await.unwrap();
    let s = identity.settings.clone();
    let pool = identity.pool.clone();
    // Started now: published, not signing yet.
    let now = chrono::Utc::now();
    let pending = keys::rotate(&pool, &s.master, &s.policy, &s.algs, now)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let client = |aud: &str| {
        json!({"name": aud, "scopes": ["chat"], "audience": aud, "tier": "pro",
               "org_id": "0f8fad5b-d9cb-469f-a165-70867728950e"})
    };
    let mut clients = Vec::new();
    for aud in ["leaky", "elsewhere"] {
        let res = http
            .post(format!("{cp}/v1/identity/clients"))
            .bearer_auth("t")
            .json(&client(aud))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let v: Value = res.json().await.unwrap();
        clients.push((
            v["id"].as_str().unwrap().to_owned(),
            v["client_secret"].as_str().unwrap().to_owned(),
        ));
    }

    let up = Upstreams::start().await;
    let chain = format!(
        "    filters:\n      - kind: jwt\n        jwks_url: {cp}/.well-known/jwks.json\n        algorithms: [ES256]\n        issuer: {cp}\n        audiences: [leaky]\n        min_refresh_interval_seconds: 300\n"
    );
    let config = up.config("").replace(
        "  - name: capture\n    prefix: /capture\n    upstream: { provider: capture, path_prefix: /echo }\n    filters: *chain\n",
        &format!("  - name: capture\n    prefix: /capture\n    upstream: {{ provider: capture, path_prefix: /echo }}\n{chain}"),
    );
    assert_ne!(config, up.config(""), "route replaced");
    let gw = Gateway::start(&config).await;
    let call = |bearer: String| {
        let r = gw
            .client
            .post(gw.url("/capture/x"))
            .bearer_auth(bearer)
            .json(&json!({}))
            .send();
        async move { r.await.unwrap().status().as_u16() }
    };

    let (id, secret) = &clients[0];
    let old = token(&http, &cp, id, secret).await;
    assert_eq!(call(old.clone()).await, 200, "{}", gw.log());
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    // The pending key activates: tokens it signs pass with the JWKS the proxy already holds.
    let step = keys::tick(
        &pool,
        &s.master,
        &s.policy,
        &s.algs,
        now + s.policy.publish_ahead,
    )
    .await
    .unwrap();
    assert_eq!(step.activated, vec![pending[0].kid.clone()]);
    let new = token(&http, &cp, id, secret).await;
    assert_eq!(
        jsonwebtoken::decode_header(&new).unwrap().kid.as_deref(),
        Some(pending[0].kid.as_str())
    );
    assert_eq!(call(new).await, 200);
    assert_eq!(call(old).await, 200, "the retired key is still published");
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "no refresh was needed");

    // Another audience is refused.
    let (other, other_secret) = &clients[1];
    assert_eq!(
        call(token(&http, &cp, other, other_secret).await).await,
        401
    );

    // A flood of unknown kids (signed with some other key) does not reach the JWKS endpoint again
    // within the refresh interval.
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let mut header = Header::new(Algorithm::ES256);
    let forged = p256_key();
    for n in 0..20 {
        header.kid = Some(format!("es256-unknown-{n}"));
        let claims = json!({"sub": "x", "iss": cp, "aud": "leaky", "exp": now.timestamp() + 300});
        let t = jsonwebtoken::encode(&header, &claims, &forged).unwrap();
        assert_eq!(call(t).await, 401);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}

/// A P-256 key that is not the server's (PKCS#8 DER).
fn p256_key() -> EncodingKey {
    use p256::pkcs8::EncodePrivateKey;
    let key = p256::SecretKey::random(&mut rand08::rngs::OsRng);
    EncodingKey::from_ec_der(key.to_pkcs8_der().unwrap().as_bytes())
}
