//! The JWT negative matrix against the real binary: every forged, tampered, stale or oversized token is a
//! 401 in the route's dialect that never echoes the token, and a JWKS endpoint that is slow or down
//! bounds a request's latency while the keys already fetched keep working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ISS: &str = "https://idp.test";

fn fixture(name: &str) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("filters/tests/fixtures/jwt");
    std::fs::read(dir.join(name)).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims() -> Value {
    json!({"sub": "erin", "org": "acme", "tier": "pro", "iss": ISS, "aud": "leaky",
           "iat": now(), "exp": now() + 300, "jti": "attack-test"})
}

/// `claims()` with `changes` merged in; a null value removes the claim.
fn claims_with(changes: Value) -> Value {
    let mut c = claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    encode(&h, claims, key).unwrap()
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture("rsa.pem")).unwrap()
}

fn rs(claims: &Value) -> String {
    sign(Algorithm::RS256, "rsa-1", &rsa(), claims)
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn seg(v: &Value) -> String {
    b64url(v.to_string().as_bytes())
}

/// A P-256 key that is not the IdP's.
fn foreign_ec() -> EncodingKey {
    use p256::pkcs8::EncodePrivateKey;
    let key = p256::SecretKey::random(&mut rand08::rngs::OsRng);
    EncodingKey::from_ec_der(key.to_pkcs8_der().unwrap().as_bytes())
}

/// The forged and invalid tokens, each named.
fn matrix() -> Vec<(&'static str, String)> {
    let good = rs(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let (payload, sig) = (parts[1], parts[2]);
    let none = |alg: &str| format!("{}.{payload}.", seg(&json!({"alg": alg, "typ": "JWT"})));
    let hs = |pem: &str| {
        sign(
            Algorithm::HS256,
            "rsa-1",
            &EncodingKey::from_secret(&fixture(pem)),
            &claims(),
        )
    };
    let over = claims_with(json!({"pad": "x".repeat(9 * 1024)}));
    vec![
        ("alg none", none("none")),
        ("alg None", none("None")),
        (
            "alg none with the original signature",
            format!("{}{sig}", none("none")),
        ),
        ("HS256 keyed with the RSA public key", hs("rsa.pub.pem")),
        ("HS256 keyed with the EC public key", hs("ec.pub.pem")),
        (
            "unknown kid",
            sign(Algorithm::ES256, "attacker-1", &foreign_ec(), &claims()),
        ),
        (
            "known kid, foreign key",
            sign(Algorithm::ES256, "ec-1", &foreign_ec(), &claims()),
        ),
        (
            "ES256 on the RSA key's kid",
            sign(Algorithm::ES256, "rsa-1", &foreign_ec(), &claims()),
        ),
        ("expired", rs(&claims_with(json!({"exp": now() - 3600})))),
        (
            "not yet valid",
            rs(&claims_with(json!({"nbf": now() + 3600}))),
        ),
        (
            "wrong iss",
            rs(&claims_with(json!({"iss": "https://evil.test"}))),
        ),
        ("wrong aud", rs(&claims_with(json!({"aud": "elsewhere"})))),
        (
            "tampered payload",
            format!(
                "{}.{}.{sig}",
                parts[0],
                seg(&claims_with(
                    json!({"tier": "enterprise", "sub": "mallory"})
                ))
            ),
        ),
        (
            "tampered header",
            format!(
                "{}.{payload}.{sig}",
                seg(&json!({"typ": "JWT", "alg": "RS256", "kid": "rsa-1", "x": 1}))
            ),
        ),
        (
            "header swapped to RS384",
            format!(
                "{}.{payload}.{sig}",
                seg(&json!({"typ": "JWT", "alg": "RS384", "kid": "rsa-1"}))
            ),
        ),
        (
            "truncated signature",
            format!("{}.{payload}.{}", parts[0], &sig[..sig.len() / 2]),
        ),
        ("missing exp", rs(&claims_with(json!({"exp": null})))),
        ("missing iss", rs(&claims_with(json!({"iss": null})))),
        ("missing aud", rs(&claims_with(json!({"aud": null})))),
        ("missing sub", rs(&claims_with(json!({"sub": null})))),
        ("oversized (9 KiB, validly signed)", rs(&over)),
        (
            "oversized (32 KiB junk)",
            format!("eyJ{}.e30.", "A".repeat(32 * 1024)),
        ),
    ]
}

/// An IdP serving the fixture JWKS: mode 0 answers, 1 stalls a minute, 2 answers 503.
struct Idp {
    mode: AtomicU8,
    fetches: AtomicUsize,
}

async fn idp() -> (String, Arc<Idp>) {
    let state = Arc::new(Idp {
        mode: AtomicU8::new(0),
        fetches: AtomicUsize::new(0),
    });
    let jwks: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    let s = state.clone();
    let router = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let (s, jwks) = (s.clone(), jwks.clone());
            async move {
                s.fetches.fetch_add(1, Ordering::SeqCst);
                match s.mode.load(Ordering::SeqCst) {
                    0 => (axum::http::StatusCode::OK, axum::Json(jwks)),
                    1 => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        (axum::http::StatusCode::OK, axum::Json(jwks))
                    }
                    _ => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(json!({})),
                    ),
                }
            }
        }),
    );
    let addr = serve(router).await;
    (format!("http://{addr}/jwks"), state)
}

/// Every route's chain is `request-id` + `jwt` (via `jwks_url`, RS256 and ES256).
async fn gateway(jwks_url: &str, min_refresh: u64) -> (Upstreams, Gateway) {
    let up = Upstreams::start().await;
    let chain = format!(
        "filters: &chain\n      - kind: request-id\n      - kind: jwt\n        jwks_url: {jwks_url}\n        algorithms: [RS256, ES256]\n        issuer: {ISS}\n        audiences: [leaky]\n        min_refresh_interval_seconds: {min_refresh}\n"
    );
    let config = up.config("").replace(
        "filters: &chain\n      - kind: request-id\n      - kind: api-key\n",
        &chain,
    );
    assert_ne!(config, up.config(""), "chain replaced");
    let gw = Gateway::start(&config).await;
    (up, gw)
}

async fn openai(gw: &Gateway, token: &str) -> (u16, String) {
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&chat("gpt-4o-mini", "hi"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn google(gw: &Gateway, token: &str) -> (u16, String) {
    let r = gw
        .client
        .post(gw.url("/gemini/v1beta/models/gemini-2.5-flash:generateContent"))
        .bearer_auth(token)
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// No piece of `token` long enough to identify it appears in `text`.
fn assert_not_echoed(what: &str, token: &str, text: &str) {
    for part in token.split('.').filter(|p| p.len() > 8) {
        let probe = &part[..part.len().min(40)];
        assert!(
            !text.contains(probe),
            "{what}: the token is echoed in {text}"
        );
    }
}

#[tokio::test]
async fn every_forged_or_invalid_token_is_a_401_in_the_routes_dialect() {
    let (jwks, _idp) = idp().await;
    let (_up, gw) = gateway(&jwks, 300).await;
    let good = rs(&claims());
    assert_eq!(openai(&gw, &good).await.0, 200, "{}", gw.log());
    assert_eq!(google(&gw, &good).await.0, 200, "{}", gw.log());

    let cases = matrix();
    for (what, token) in &cases {
        let (status, body) = openai(&gw, token).await;
        assert_eq!(status, 401, "{what}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key", "{what}: {body}");
        assert_not_echoed(what, token, &body);

        let (status, body) = google(&gw, token).await;
        assert_eq!(status, 401, "{what}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["status"], "UNAUTHENTICATED", "{what}: {body}");
        assert_not_echoed(what, token, &body);
    }
    // The size bound answers before parsing: the message names the bound, not a claim.
    let (_, body) = openai(&gw, &cases.last().unwrap().1).await;
    assert!(body.contains("exceeds 8192 bytes"), "{body}");
    // Nor does the log carry them (refusals are logged at debug with the reason only).
    let log = gw.log();
    for (what, token) in &cases {
        assert_not_echoed(what, token, &log);
    }
}

#[tokio::test]
async fn a_slow_or_down_jwks_endpoint_bounds_latency_and_cached_keys_keep_working() {
    let (jwks, idp) = idp().await;
    // No refresh rate limit: every unknown kid reaches the (slow, then down) endpoint.
    let (_up, gw) = gateway(&jwks, 0).await;
    let good = rs(&claims());
    assert_eq!(openai(&gw, &good).await.0, 200, "{}", gw.log());
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);
    let unknown = || sign(Algorithm::ES256, "rotated-2", &foreign_ec(), &claims());

    // Slow: the unknown kid waits for the fetch timeout (2 s), not for the endpoint's minute; a token
    // with a cached key is answered meanwhile without waiting for that fetch.
    idp.mode.store(1, Ordering::SeqCst);
    let started = Instant::now();
    let stalled = {
        let t = unknown();
        let (client, url) = (gw.client.clone(), gw.url("/v1/chat/completions"));
        tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(t)
                .json(&chat("gpt-4o-mini", "hi"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), started.elapsed())
        })
    };
    eventually(
        "the slow fetch starts",
        Duration::from_secs(5),
        Some(&gw),
        || {
            let n = idp.fetches.load(Ordering::SeqCst);
            async move { n == 2 }
        },
    )
    .await;
    let t = Instant::now();
    assert_eq!(openai(&gw, &good).await.0, 200);
    let cached_latency = t.elapsed();
    let (status, took) = stalled.await.unwrap();
    assert_eq!(status, 401);
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert!(
        cached_latency < took,
        "a cached key waited for the fetch ({cached_latency:?} vs {took:?})"
    );

    // Down: the unknown kid is refused promptly, cached keys still work.
    idp.mode.store(2, Ordering::SeqCst);
    let before = idp.fetches.load(Ordering::SeqCst);
    let t = Instant::now();
    assert_eq!(openai(&gw, &unknown()).await.0, 401);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        idp.fetches.load(Ordering::SeqCst) > before,
        "the refresh was tried"
    );
    assert_eq!(openai(&gw, &good).await.0, 200);
    assert_eq!(google(&gw, &good).await.0, 200);
}
