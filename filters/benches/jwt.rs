//! JWT validation cost per request in the proxy's `jwt` filter, key cached (the steady state: no JWKS
//! fetch): the whole `on_request` — header parse, key lookup, signature verification, claim checks,
//! the revocation lookup, the principal — for ES256, RS256 and EdDSA. Also ES256 with 10 000 revoked
//! token ids pushed (the lookup a revocation set adds) and the 8 KiB size refusal (what an oversized
//! token costs before any decoding).
//!
//! Each case is measured twice: wall time (criterion's default) and **on-CPU time** of the benchmark
//! thread (`/proc/thread-self/schedstat`, nanoseconds), which is what a request costs the proxy's CPU
//! and stays meaningful on a shared, loaded machine where wall time includes waiting for a core.
//!
//! Run: `cargo bench -p leaky-filters --bench jwt -- --quick`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use leaky_config::{JwksSource, JwtAlgorithm, JwtClaims, JwtConfig};
use leaky_filters::{Filter, JwksCache, JwtDeps, JwtFilter, RequestCtx, RequestInfo};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

const NOW: i64 = 1_700_000_000;
const ISS: &str = "https://idp.example";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt")
}

fn spec() -> JwtConfig {
    JwtConfig {
        jwks: JwksSource::File("jwks.json".into()),
        algorithms: vec![
            JwtAlgorithm::RS256,
            JwtAlgorithm::ES256,
            JwtAlgorithm::EdDSA,
        ],
        issuer: Some(ISS.into()),
        audiences: vec!["leaky".into()],
        leeway: Duration::from_secs(30),
        min_refresh_interval: Duration::from_secs(10),
        claims: JwtClaims::default(),
        default_tier: None,
        optional: false,
    }
}

/// A token like the control plane's: `sub`, `org`, `tier`, `scope`, `roles`, `aud`, `iss`, times, `jti`.
fn token(alg: Algorithm, kid: &str, pem: &str) -> String {
    let bytes = std::fs::read(fixtures().join(pem)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&bytes),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&bytes),
        _ => EncodingKey::from_ed_pem(&bytes),
    }
    .unwrap();
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    let claims = json!({"sub": "svc-billing", "org": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "tier": "pro", "scope": "chat", "roles": ["org-member"], "aud": "leaky", "iss": ISS,
        "iat": NOW, "exp": NOW + 600, "jti": "4f1c2a3e-8b7d-4e6f-9a0b-1c2d3e4f5a6b"});
    encode(&h, &claims, &key).unwrap()
}

/// Polls the filter's future once: with the key cached nothing in `on_request` waits.
fn run(f: &JwtFilter, headers: &HeaderMap) -> bool {
    let req = RequestInfo {
        method: &Method::POST,
        path: "/v1/chat/completions",
        query: None,
        headers,
    };
    let mut ctx = RequestCtx {
        now_unix: NOW,
        ..Default::default()
    };
    let mut fut = f.on_request(&req, &mut ctx);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r.is_ok(),
        Poll::Pending => panic!("the jwt filter waited with a cached key"),
    }
}

/// Nanoseconds this thread has run on a CPU (the first field of `/proc/thread-self/schedstat`).
fn on_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let ns = stat.split_whitespace().next().unwrap().parse().unwrap();
    Duration::from_nanos(ns)
}

/// Benches `run(f, h)` under `name`, by wall time and by on-CPU time.
fn both(c: &mut Criterion, name: &str, f: &JwtFilter, h: &HeaderMap) {
    c.bench_function(name, |b| b.iter(|| black_box(run(f, black_box(h)))));
    c.bench_function(&format!("{name} [on-CPU]"), |b| {
        b.iter_custom(|iters| {
            let start = on_cpu();
            for _ in 0..iters {
                black_box(run(f, black_box(h)));
            }
            on_cpu() - start
        })
    });
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    h
}

fn bench(c: &mut Criterion) {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let cache = JwksCache::default();
    let tiers = Arc::new(BTreeSet::from(["pro".to_string()]));
    let base = fixtures();
    let deps = JwtDeps {
        jwks: &cache,
        base_dir: &base,
        tiers: &tiers,
    };
    let f = JwtFilter::from_config(&spec(), deps).unwrap();
    // Every request verifies the signature: what a token costs the first time the filter sees it.
    let first_sight = JwtFilter::from_config(&spec(), deps)
        .unwrap()
        .without_verified_cache();
    let cases = [
        ("ES256", token(Algorithm::ES256, "ec-1", "ec.pem")),
        ("RS256 (2048)", token(Algorithm::RS256, "rsa-1", "rsa.pem")),
        (
            "EdDSA (Ed25519)",
            token(Algorithm::EdDSA, "ed-1", "ed25519.pem"),
        ),
    ];
    for (name, t) in &cases {
        let h = bearer(t);
        assert!(run(&first_sight, &h), "{name} refused");
        both(
            c,
            &format!("jwt filter: {name}, cached key, first sight"),
            &first_sight,
            &h,
        );
        assert!(run(&f, &h), "{name} refused");
        both(c, &format!("jwt filter: {name}, token seen before"), &f, &h);
    }
    cache.revoked().replace(
        (0..10_000).map(|i| (format!("revoked-{i}"), NOW + 600)),
        NOW,
    );
    let h = bearer(&cases[0].1);
    assert!(run(&f, &h));
    both(
        c,
        "jwt filter: ES256, cached key, first sight, 10k revoked ids",
        &first_sight,
        &h,
    );
    both(
        c,
        "jwt filter: ES256, token seen before, 10k revoked ids",
        &f,
        &h,
    );
    let h = bearer(&format!("eyJ{}", "A".repeat(16 * 1024)));
    assert!(!run(&f, &h));
    both(c, "jwt filter: 16 KiB token refused by size", &f, &h);
}

criterion_group!(benches, bench);
criterion_main!(benches);
