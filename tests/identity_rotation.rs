//! Signing-key rotation with two live proxies: the control plane's authorization server (in process,
//! a real PostgreSQL; its key job driven through an explicit `now`, the injected time of the rotation
//! steps) and two real proxies validating its tokens through `jwks_uri`. Token A (old key) and token B
//! (new key) are both accepted by both proxies during the overlap, the new key reaching them with no
//! restart (an unknown `kid` refreshes the JWKS, rate-limited). After the old key is retired and
//! removed, the proxies refuse what it signed: a short-lived token once it expired, and a still-valid
//! one once they refreshed a JWKS without its key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::pg;

use std::sync::Arc;
use std::time::Duration;

use crate::common::{eventually, Gateway, Upstreams};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use leaky_control_plane::http::{AdminToken, ApiState};
use leaky_control_plane::identity::{self, keys, Alg, Identity, MasterKeys, Settings};
use leaky_control_plane::{app, db, Roles};
use serde_json::{json, Value};

const ORG: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

async fn control_plane() -> (String, Arc<Identity>) {
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
    let router =
        app::router(state.clone(), &Roles::all()).merge(identity::router(state, id.clone()));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (base, id)
}

/// A client of the gateway's audience whose tokens live `ttl` seconds: `(id, secret)`.
async fn client(http: &reqwest::Client, cp: &str, ttl: i32) -> (String, String) {
    let res = http
        .post(format!("{cp}/v1/identity/clients"))
        .bearer_auth("t")
        .json(
            &json!({"name": "app", "scopes": ["chat"], "audience": "leaky", "tier": "pro",
                      "org_id": ORG, "token_ttl_secs": ttl}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["client_secret"].as_str().unwrap().to_owned(),
    )
}

async fn token(http: &reqwest::Client, cp: &str, (id, secret): &(String, String)) -> String {
    let res = http
        .post(format!("{cp}/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

async fn published(http: &reqwest::Client, cp: &str) -> Vec<String> {
    let v: Value = http
        .get(format!("{cp}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn call(gw: &Gateway, bearer: &str) -> u16 {
    gw.client
        .post(gw.url("/capture/x"))
        .bearer_auth(bearer)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A token with a `kid` no JWKS has (signed by a foreign key): it makes a proxy refresh its JWKS.
fn unknown_kid(cp: &str) -> String {
    use p256::pkcs8::EncodePrivateKey;
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let key = p256::SecretKey::random(&mut rand08::rngs::OsRng);
    let key = EncodingKey::from_ec_der(key.to_pkcs8_der().unwrap().as_bytes());
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("refresh-probe".into());
    let claims = json!({"sub": "x", "iss": cp, "aud": "leaky", "tier": "pro",
                        "exp": chrono::Utc::now().timestamp() + 300});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[tokio::test]
async fn both_proxies_accept_old_and_new_keys_during_overlap_and_refuse_the_retired_one() {
    let (cp, identity) = control_plane().await;
    let now = chrono::Utc::now();
    identity.tick().await.unwrap();
    let http = reqwest::Client::new();
    let (short, long) = (client(&http, &cp, 3).await, client(&http, &cp, 600).await);

    let up = Upstreams::start().await;
    let chain = format!(
        "    filters:\n      - kind: jwt\n        jwks_url: {cp}/.well-known/jwks.json\n        algorithms: [ES256]\n        issuer: {cp}\n        audiences: [leaky]\n        leeway_seconds: 0\n        min_refresh_interval_seconds: 1\n"
    );
    let config = up.config("").replace(
        "  - name: capture\n    prefix: /capture\n    upstream: { provider: capture, path_prefix: /echo }\n    filters: *chain\n",
        &format!("  - name: capture\n    prefix: /capture\n    upstream: {{ provider: capture, path_prefix: /echo }}\n{chain}"),
    );
    assert_ne!(config, up.config(""), "route replaced");
    let (p1, p2) = tokio::join!(Gateway::start(&config), Gateway::start(&config));
    let proxies = [&p1, &p2];

    // Token A under the first key; `a_long` too, still valid after the key is gone.
    let a = token(&http, &cp, &short).await;
    let a_long = token(&http, &cp, &long).await;
    let old_kid = kid(&a);
    for gw in proxies {
        assert_eq!(call(gw, &a).await, 200, "{}", gw.log());
        assert_eq!(call(gw, &a_long).await, 200);
    }

    // Rotate: the successor is published now and signs after `publish_ahead` (the job's time).
    let s = identity.settings.clone();
    let pool = identity.pool.clone();
    let pending = keys::rotate(&pool, &s.master, &s.policy, &s.algs, now)
        .await
        .unwrap();
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
    assert_eq!(step.retired, vec![old_kid.clone()]);
    let b = token(&http, &cp, &long).await;
    assert_eq!(kid(&b), pending[0].kid);
    assert!(published(&http, &cp).await.contains(&old_kid), "overlap");

    // Overlap: both proxies pick the new key up on its unknown kid (within the 1 s refresh limit)
    // and accept both tokens.
    for gw in proxies {
        eventually(
            "token B (new key) is accepted",
            Duration::from_secs(5),
            Some(gw),
            || async { call(gw, &b).await == 200 },
        )
        .await;
        assert_eq!(
            call(gw, &a_long).await,
            200,
            "the retired key still verifies"
        );
    }

    // Token A expires (its own 3 s lifetime): refused by both.
    for gw in proxies {
        eventually(
            "the expired token A is refused",
            Duration::from_secs(10),
            Some(gw),
            || async { call(gw, &a).await == 401 },
        )
        .await;
    }

    // The old key is removed once every token it signed could have expired (the job's time).
    let later =
        now + s.policy.publish_ahead + s.policy.max_token_ttl + chrono::Duration::seconds(1);
    let step = keys::tick(&pool, &s.master, &s.policy, &s.algs, later)
        .await
        .unwrap();
    assert_eq!(step.removed, vec![old_kid.clone()]);
    assert!(!published(&http, &cp).await.contains(&old_kid));
    // At their next refresh the proxies drop it: even a token it signed that has not expired (as
    // the proxies' clock sees it) is refused, while token B keeps working.
    let probe = unknown_kid(&cp);
    for gw in proxies {
        eventually(
            "a token of the removed key is refused after a refresh",
            Duration::from_secs(5),
            Some(gw),
            || async {
                assert_eq!(call(gw, &probe).await, 401);
                call(gw, &a_long).await == 401
            },
        )
        .await;
        assert_eq!(call(gw, &b).await, 200);
    }
}
