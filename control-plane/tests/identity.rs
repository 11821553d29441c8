//! Identity (issue 14, first increment) on a real PostgreSQL and a real `redis-server`: key rotation
//! on an injected clock, tokens verified from the published JWKS by `jsonwebtoken` (not our signing
//! code), the token endpoint's error matrix, introspection and revocation across two replicas,
//! secrets at rest (ciphertext in the rows, tamper detection, rewrap), and the admin routes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use chrono::{Duration, TimeZone, Utc};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use leaky_control_plane::clock::ManualClock;
use leaky_control_plane::http::{AdminToken, ApiState};
use leaky_control_plane::identity::{self, Alg, Identity, MasterKeys, Settings};
use leaky_control_plane::{app, db, Roles};
use leaky_limit::redis_server::RedisServer;
use serde_json::{json, Value};
use sqlx::PgPool;

fn master(spec: &[(i32, u8)]) -> MasterKeys {
    let b64 = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
    let text: Vec<String> = spec
        .iter()
        .map(|(v, b)| format!("v{v}:{}", b64(*b)))
        .collect();
    MasterKeys::parse(&text.join(",")).unwrap()
}

/// One control-plane replica with identity, on `pool`, at `clock`.
struct Server {
    base: String,
    http: reqwest::Client,
    identity: Arc<Identity>,
}

async fn fresh_pool() -> PgPool {
    let url = common::fresh_db().await.unwrap();
    let pool = db::pool(&url, 8).unwrap();
    db::migrate(&pool).await.unwrap();
    pool
}

async fn serve(
    pool: &PgPool,
    clock: Arc<ManualClock>,
    algs: &[Alg],
    keys: MasterKeys,
    redis: Option<&str>,
) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state =
        ApiState::new(pool.clone(), AdminToken::new(common::TOKEN)).with_clock(clock.clone());
    state.set_migrated();
    let mut settings = Settings::new(&base, keys, false);
    settings.algs = algs.to_vec();
    let identity = Identity::new(settings, pool.clone(), clock, redis).unwrap();
    let router = app::router(state.clone(), &Roles::all())
        .merge(identity::router(state, identity.clone()))
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Server {
        base,
        http: reqwest::Client::new(),
        identity,
    }
}

fn start() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap(),
    ))
}

impl Server {
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(common::TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    /// A new client; returns (id, secret).
    async fn client(&self, body: Value) -> (String, String) {
        let res = self
            .admin(reqwest::Method::POST, "/v1/identity/clients", Some(body))
            .await;
        assert_eq!(res.status(), 201);
        let v: Value = res.json().await.unwrap();
        (
            v["id"].as_str().unwrap().into(),
            v["client_secret"].as_str().unwrap().into(),
        )
    }

    async fn form(
        &self,
        path: &str,
        auth: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some((id, secret)) = auth {
            req = req.basic_auth(id, Some(secret));
        }
        req.send().await.unwrap()
    }

    async fn token(&self, id: &str, secret: &str) -> String {
        let res = self
            .form(
                "/oauth2/token",
                Some((id, secret)),
                &[("grant_type", "client_credentials")],
            )
            .await;
        assert_eq!(res.status(), 200);
        let v: Value = res.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }

    async fn jwks(&self) -> JwkSet {
        let res = self
            .http
            .get(format!("{}/.well-known/jwks.json", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    async fn introspect(&self, auth: (&str, &str), token: &str) -> Value {
        let res = self
            .form("/oauth2/introspect", Some(auth), &[("token", token)])
            .await;
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }
}

fn kids(set: &JwkSet) -> Vec<String> {
    let mut k: Vec<String> = set
        .keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect();
    k.sort();
    k
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// Verifies `token` with the JWKS only, as a resource server would.
fn verify_with_jwks(set: &JwkSet, token: &str, iss: &str, aud: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = set
        .find(header.kid.as_deref().unwrap())
        .expect("kid published");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[iss]);
    v.set_audience(&[aud]);
    // The tokens carry the manual clock's time; verify their signature and claims, not wall time.
    v.validate_exp = false;
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .unwrap()
        .claims
}

#[tokio::test]
async fn rotation_publishes_before_signing_and_keeps_retired_keys_until_their_tokens_expire() {
    let pool = fresh_pool().await;
    let clock = start();
    let s = serve(&pool, clock.clone(), &[Alg::ES256], master(&[(1, 1)]), None).await;
    let policy = s.identity.settings.policy;
    // Bootstrap: the first key is active at once.
    let first = s.identity.tick().await.unwrap();
    assert_eq!(first.created.len(), 1);
    let k1 = first.created[0].clone();
    let (id, secret) = s.client(json!({"name": "svc", "scopes": ["read"]})).await;
    let old_token = s.token(&id, &secret).await;
    assert_eq!(kid_of(&old_token), k1);

    // Rotate: k2 is published now, does not sign yet; rotating again is idempotent.
    let res = s
        .admin(reqwest::Method::POST, "/v1/identity/keys/rotate", None)
        .await;
    assert_eq!(res.status(), 200);
    let pending: Vec<Value> = res.json().await.unwrap();
    let k2 = pending[0]["kid"].as_str().unwrap().to_owned();
    let again: Vec<Value> = s
        .admin(reqwest::Method::POST, "/v1/identity/keys/rotate", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again[0]["kid"], k2.as_str());
    assert_eq!(kids(&s.jwks().await), {
        let mut v = vec![k1.clone(), k2.clone()];
        v.sort();
        v
    });
    clock.advance(policy.publish_ahead - Duration::seconds(1));
    assert!(s.identity.tick().await.unwrap().activated.is_empty());
    assert_eq!(kid_of(&s.token(&id, &secret).await), k1);

    // One JWKS lifetime after publication k2 signs; k1 retires but stays published.
    clock.advance(Duration::seconds(1));
    let step = s.identity.tick().await.unwrap();
    assert_eq!(
        (step.activated, step.retired.clone()),
        (vec![k2.clone()], vec![k1.clone()])
    );
    assert_eq!(kid_of(&s.token(&id, &secret).await), k2);
    assert!(kids(&s.jwks().await).contains(&k1));
    assert_eq!(
        s.introspect((&id, &secret), &old_token).await["active"],
        true
    );

    // Until every token k1 signed has expired.
    clock.advance(policy.max_token_ttl - Duration::seconds(1));
    assert!(s.identity.tick().await.unwrap().removed.is_empty());
    clock.advance(Duration::seconds(1));
    assert_eq!(s.identity.tick().await.unwrap().removed, vec![k1.clone()]);
    assert_eq!(kids(&s.jwks().await), vec![k2.clone()]);

    // The periodic job starts the next rotation once k2 has signed for `rotate_every`.
    clock.advance(policy.rotate_every);
    let step = s.identity.tick().await.unwrap();
    assert_eq!(step.created.len(), 1);
    let listed: Vec<Value> = s
        .admin(reqwest::Method::GET, "/v1/identity/keys", None)
        .await
        .json()
        .await
        .unwrap();
    let states: Vec<&str> = listed
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["pending", "active"]);
}

#[tokio::test]
async fn tokens_of_every_algorithm_verify_with_the_published_jwks() {
    let pool = fresh_pool().await;
    let s = serve(&pool, start(), &Alg::ALL, master(&[(1, 1)]), None).await;
    s.identity.tick().await.unwrap();
    let iss = s.base.clone();
    for doc in ["openid-configuration", "oauth-authorization-server"] {
        let d: Value = s
            .http
            .get(format!("{iss}/.well-known/{doc}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(d["issuer"], iss.as_str());
        assert_eq!(d["jwks_uri"], format!("{iss}/.well-known/jwks.json"));
        assert_eq!(d["token_endpoint"], format!("{iss}/oauth2/token"));
        assert_eq!(
            d["grant_types_supported"],
            json!(["client_credentials", "authorization_code", "refresh_token"])
        );
    }
    let res = s
        .http
        .get(format!("{iss}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    let max_age = s.identity.settings.policy.publish_ahead.num_seconds();
    assert_eq!(
        res.headers()["cache-control"],
        format!("public, max-age={max_age}").as_str()
    );
    let set: JwkSet = res.json().await.unwrap();
    assert_eq!(set.keys.len(), 3);
    let org = uuid::Uuid::new_v4();
    for alg in ["ES256", "RS256", "EdDSA"] {
        let (id, secret) = s
            .client(
                json!({"name": alg, "scopes": ["read", "write"], "audience": "gateway",
                           "org_id": org, "tier": "pro", "roles": ["org-member"], "alg": alg,
                           "token_ttl_secs": 120}),
            )
            .await;
        let token = s.token(&id, &secret).await;
        let c = verify_with_jwks(&set, &token, &iss, "gateway");
        assert_eq!(
            jsonwebtoken::decode_header(&token).unwrap().alg,
            Alg::parse(alg).unwrap().jwt()
        );
        assert_eq!(c["sub"], id.as_str());
        assert_eq!(c["org"], org.to_string().as_str());
        assert_eq!(c["tier"], "pro");
        assert_eq!(c["scope"], "read write");
        assert_eq!(c["roles"], json!(["org-member"]));
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 120);
        assert!(c["jti"].as_str().is_some_and(|j| !j.is_empty()));
        // The verifier refuses it for another audience.
        let mut v = Validation::new(jsonwebtoken::decode_header(&token).unwrap().alg);
        v.set_audience(&["someone-else"]);
        v.validate_exp = false;
        let jwk = set.find(&kid_of(&token)).unwrap();
        assert!(
            jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(jwk).unwrap(), &v)
                .is_err()
        );
    }
}

async fn oauth_error(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    assert_eq!(res.headers()["cache-control"], "no-store");
    let v: Value = res.json().await.unwrap();
    (status, v["error"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn token_endpoint_error_matrix() {
    let pool = fresh_pool().await;
    let s = serve(&pool, start(), &[Alg::ES256], master(&[(1, 1)]), None).await;
    s.identity.tick().await.unwrap();
    let (id, secret) = s
        .client(json!({"name": "svc", "scopes": ["read", "write"]}))
        .await;
    let cc = [("grant_type", "client_credentials")];

    let res = s.form("/oauth2/token", Some((&id, "wrong")), &cc).await;
    assert!(res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    assert_eq!(oauth_error(res).await, (401, "invalid_client".into()));
    let res = s.form("/oauth2/token", Some(("cl_nobody", "x")), &cc).await;
    assert_eq!(oauth_error(res).await, (401, "invalid_client".into()));
    let res = s.form("/oauth2/token", None, &cc).await;
    assert_eq!(oauth_error(res).await, (401, "invalid_client".into()));
    let both = [
        ("grant_type", "client_credentials"),
        ("client_id", &id),
        ("client_secret", &secret),
    ];
    let res = s.form("/oauth2/token", Some((&id, &secret)), &both).await;
    assert_eq!(oauth_error(res).await, (400, "invalid_request".into()));
    let res = s.form("/oauth2/token", Some((&id, &secret)), &[]).await;
    assert_eq!(oauth_error(res).await, (400, "invalid_request".into()));
    let res = s
        .form(
            "/oauth2/token",
            Some((&id, &secret)),
            &[("grant_type", "password")],
        )
        .await;
    assert_eq!(
        oauth_error(res).await,
        (400, "unsupported_grant_type".into())
    );
    let scope = [
        ("grant_type", "client_credentials"),
        ("scope", "read admin"),
    ];
    let res = s.form("/oauth2/token", Some((&id, &secret)), &scope).await;
    assert_eq!(oauth_error(res).await, (400, "invalid_scope".into()));
    let twice = [
        ("grant_type", "client_credentials"),
        ("grant_type", "client_credentials"),
    ];
    let res = s.form("/oauth2/token", Some((&id, &secret)), &twice).await;
    assert_eq!(oauth_error(res).await, (400, "invalid_request".into()));
    let res = s
        .http
        .post(format!("{}/oauth2/token", s.base))
        .basic_auth(&id, Some(&secret))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(oauth_error(res).await, (400, "invalid_request".into()));

    // client_secret_post works, with a narrowed scope.
    let post = [
        ("grant_type", "client_credentials"),
        ("client_id", &id),
        ("client_secret", &secret),
        ("scope", "read"),
    ];
    let res = s.form("/oauth2/token", None, &post).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        (
            v["token_type"].as_str(),
            v["scope"].as_str(),
            v["expires_in"].as_i64()
        ),
        (Some("Bearer"), Some("read"), Some(600))
    );

    // Brute force, per IP: failures from 127.0.0.1 (2 above, 8 here) block every client there.
    for _ in 2..identity::oauth::MAX_FAILURES {
        let res = s.form("/oauth2/token", Some((&id, "guess")), &cc).await;
        assert_eq!(res.status(), 401);
    }
    let (b, b_secret) = s.client(json!({"name": "b", "scopes": ["read"]})).await;
    let res = s.form("/oauth2/token", Some((&b, &b_secret)), &cc).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    // Per client: from 127.0.0.2 both still work; one more failure blocks client `id` there too.
    let other_ip = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let from2 = |who: &str, secret: &str| {
        other_ip
            .post(format!("{}/oauth2/token", s.base))
            .basic_auth(who, Some(secret))
            .form(&cc)
            .send()
    };
    assert_eq!(from2(&b, &b_secret).await.unwrap().status(), 200);
    assert_eq!(from2(&id, &secret).await.unwrap().status(), 200);
    assert_eq!(from2(&id, "guess").await.unwrap().status(), 401);
    assert_eq!(from2(&id, &secret).await.unwrap().status(), 429);
    assert_eq!(from2(&b, &b_secret).await.unwrap().status(), 200);
}

#[tokio::test]
async fn introspection_and_revocation_are_shared_through_redis() {
    let mut redis = RedisServer::spawn().expect("redis-server");
    let pool = fresh_pool().await;
    let clock = start();
    let a = serve(
        &pool,
        clock.clone(),
        &[Alg::ES256],
        master(&[(1, 1)]),
        Some(&redis.url()),
    )
    .await;
    let b = serve(
        &pool,
        clock.clone(),
        &[Alg::ES256],
        master(&[(1, 1)]),
        Some(&redis.url()),
    )
    .await;
    a.identity.tick().await.unwrap();
    let (id, secret) = a
        .client(json!({"name": "svc", "scopes": ["read"], "roles": ["org-admin"]}))
        .await;
    let (other, other_secret) = a.client(json!({"name": "rs", "scopes": ["x"]})).await;
    let token = a.token(&id, &secret).await;

    // Introspection needs client authentication; any client may introspect.
    let res = a
        .form("/oauth2/introspect", None, &[("token", &token)])
        .await;
    assert_eq!(oauth_error(res).await, (401, "invalid_client".into()));
    let v = a.introspect((&other, &other_secret), &token).await;
    assert_eq!(
        (
            v["active"].as_bool(),
            v["sub"].as_str(),
            v["scope"].as_str()
        ),
        (Some(true), Some(id.as_str()), Some("read"))
    );
    assert_eq!(v["roles"], json!(["org-admin"]));
    assert_eq!(
        a.introspect((&id, &secret), "garbage").await,
        json!({"active": false})
    );

    // Only the client the token was issued to may revoke it; garbage is a 200 (RFC 7009 §2.2).
    let res = a
        .form(
            "/oauth2/revoke",
            Some((&other, &other_secret)),
            &[("token", &token)],
        )
        .await;
    assert_eq!(oauth_error(res).await, (400, "unauthorized_client".into()));
    let res = a
        .form(
            "/oauth2/revoke",
            Some((&id, &secret)),
            &[("token", "not.a.token")],
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = a
        .form("/oauth2/revoke", Some((&id, &secret)), &[("token", &token)])
        .await;
    assert_eq!(res.status(), 200);

    // Both replicas see it; the Redis entry lives until the token's own expiry.
    assert_eq!(
        a.introspect((&id, &secret), &token).await,
        json!({"active": false})
    );
    assert_eq!(
        b.introspect((&id, &secret), &token).await,
        json!({"active": false})
    );
    let jti = a
        .introspect((&id, &secret), &a.token(&id, &secret).await)
        .await["jti"]
        .clone();
    assert!(jti.is_string());
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("leaky:identity:revoked:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((590..=600).contains(&ttl), "{ttl}");

    // A fresh token is active until it expires on the clock.
    let fresh = b.token(&id, &secret).await;
    assert_eq!(b.introspect((&id, &secret), &fresh).await["active"], true);
    clock.advance(Duration::seconds(600));
    assert_eq!(
        b.introspect((&id, &secret), &fresh).await,
        json!({"active": false})
    );

    // Redis down: introspection fails closed (503, within the store's timeout), never "active".
    let live = b.token(&id, &secret).await;
    redis.kill();
    let started = std::time::Instant::now();
    let res = b
        .form(
            "/oauth2/introspect",
            Some((&id, &secret)),
            &[("token", &live)],
        )
        .await;
    assert_eq!(
        oauth_error(res).await,
        (503, "temporarily_unavailable".into())
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let res = b
        .form("/oauth2/revoke", Some((&id, &secret)), &[("token", &live)])
        .await;
    assert_eq!(
        oauth_error(res).await,
        (503, "temporarily_unavailable".into())
    );
}

#[tokio::test]
async fn signing_keys_are_encrypted_at_rest_tamper_is_detected_and_rewrap_moves_rows() {
    let pool = fresh_pool().await;
    let clock = start();
    let v1 = serve(
        &pool,
        clock.clone(),
        &[Alg::ES256, Alg::EdDSA],
        master(&[(1, 1)]),
        None,
    )
    .await;
    v1.identity.tick().await.unwrap();
    let (id, secret) = v1.client(json!({"name": "svc", "scopes": ["read"]})).await;
    v1.token(&id, &secret).await;
    let rows: Vec<(String, i32, Vec<u8>)> = sqlx::query_as(
        "SELECT kid, key_version, ciphertext FROM identity.signing_keys ORDER BY kid",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    for (_, version, ciphertext) in &rows {
        assert_eq!(*version, 1);
        // A PKCS#8 DER starts with a SEQUENCE (0x30 0x81/0x82 or 0x30 len); the row holds
        // nonce ‖ ciphertext ‖ tag, i.e. 12 + DER length + 16 bytes of noise.
        assert!(ciphertext.len() > 28);
        assert!(
            !ciphertext.windows(4).any(|w| w == [0x06, 0x07, 0x2a, 0x86]),
            "EC OID in clear"
        );
    }

    // Rewrap under v1+v2: every row moves once; again moves nothing.
    let both = master(&[(1, 1), (2, 2)]);
    assert_eq!(identity::keys::rewrap_all(&pool, &both).await.unwrap(), 2);
    assert_eq!(identity::keys::rewrap_all(&pool, &both).await.unwrap(), 0);
    let versions: Vec<i32> = sqlx::query_scalar("SELECT key_version FROM identity.signing_keys")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(versions, vec![2, 2]);
    // A replica with only v2 signs; one with only v1 cannot open the keys any more.
    let v2 = serve(&pool, clock.clone(), &[Alg::ES256], master(&[(2, 2)]), None).await;
    v2.token(&id, &secret).await;
    let old = serve(&pool, clock.clone(), &[Alg::ES256], master(&[(1, 1)]), None).await;
    let res = old
        .form(
            "/oauth2/token",
            Some((&id, &secret)),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(oauth_error(res).await, (500, "server_error".into()));

    // A flipped ciphertext byte is detected (500, nothing signed, no key material in the answer) by
    // a replica that has not decrypted the key yet (one that has signs from its cache).
    sqlx::query("UPDATE identity.signing_keys SET ciphertext = set_byte(ciphertext, 20, get_byte(ciphertext, 20) # 1) WHERE alg = 'ES256'")
        .execute(&pool)
        .await
        .unwrap();
    v2.token(&id, &secret).await;
    let fresh = serve(&pool, clock.clone(), &[Alg::ES256], master(&[(2, 2)]), None).await;
    let res = fresh
        .form(
            "/oauth2/token",
            Some((&id, &secret)),
            &[("grant_type", "client_credentials")],
        )
        .await;
    let text = res.text().await.unwrap();
    assert_eq!(
        text,
        r#"{"error":"server_error","error_description":"internal error"}"#
    );
}

#[tokio::test]
async fn admin_routes_create_list_delete_clients_and_seed_the_dev_client() {
    let pool = fresh_pool().await;
    let s = serve(&pool, start(), &[Alg::ES256], master(&[(1, 1)]), None).await;
    s.identity.tick().await.unwrap();
    let res = s
        .http
        .get(format!("{}/v1/identity/clients", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let res = s
        .admin(
            reqwest::Method::POST,
            "/v1/identity/clients",
            Some(json!({"name": "x", "scopes": []})),
        )
        .await;
    assert_eq!(res.status(), 422);
    let (id, secret) = s.client(json!({"name": "svc", "scopes": ["read"]})).await;
    assert!(id.starts_with("cl_") && id.len() == 27, "{id}");
    let listed = s
        .admin(reqwest::Method::GET, "/v1/identity/clients", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        listed.contains(&id) && !listed.contains(&secret) && !listed.contains("argon2"),
        "{listed}"
    );
    let hash: String = sqlx::query_scalar("SELECT secret_hash FROM identity.clients WHERE id = $1")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$") && !hash.contains(&secret));

    let path = format!("/v1/identity/clients/{id}");
    assert_eq!(
        s.admin(reqwest::Method::DELETE, &path, None).await.status(),
        204
    );
    let res = s.admin(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let res = s
        .form(
            "/oauth2/token",
            Some((&id, &secret)),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(res.status(), 401);
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit.events WHERE object_id = $1 ORDER BY id")
            .bind(&id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(actions, vec!["client.create", "client.delete"]);
    let events: Vec<(String, String)> = sqlx::query_as(
        "SELECT topic, type FROM outbox.events WHERE aggregate_id = $1 ORDER BY seq",
    )
    .bind(&id)
    .fetch_all(&pool)
    .await
    .unwrap();
    let topic = "leaky.tenancy.v1".to_owned();
    assert_eq!(
        events,
        vec![
            (topic.clone(), "oauth_client.created".to_owned()),
            (topic, "oauth_client.deleted".to_owned())
        ]
    );

    // Dev mode's client, seeded idempotently.
    identity::api::seed_dev_client(&s.identity).await.unwrap();
    identity::api::seed_dev_client(&s.identity).await.unwrap();
    let token = s
        .token(identity::DEV_CLIENT_ID, identity::DEV_CLIENT_SECRET)
        .await;
    let c = s
        .introspect(
            (identity::DEV_CLIENT_ID, identity::DEV_CLIENT_SECRET),
            &token,
        )
        .await;
    assert_eq!(
        (c["roles"].clone(), c["scope"].clone()),
        (json!(["platform-admin"]), json!("admin"))
    );
}
