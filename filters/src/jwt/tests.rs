//! Tests of the `jwt` filter: key types, claims, clocks, refresh single-flight and rate limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use axum::extract::State;
use axum::http::StatusCode;
use http::{HeaderMap, Method};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

const NOW: i64 = 1_700_000_000;
const ISS: &str = "https://idp.example";
const AUD: &str = "leaky";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt")
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(&pem("rsa.pem")).unwrap()
}

fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(&pem("ec.pem")).unwrap()
}

fn ed() -> EncodingKey {
    EncodingKey::from_ed_pem(&pem("ed25519.pem")).unwrap()
}

/// A JWKS with fixture keys picked by their fixture `kid` and published under a new one.
fn jwks(keys: &[(&str, &str)]) -> Value {
    let all: Value = serde_json::from_slice(&pem("jwks.json")).unwrap();
    let keys: Vec<Value> = keys
        .iter()
        .map(|(src, kid)| {
            let mut k = all["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == *src)
                .unwrap()
                .clone();
            k["kid"] = json!(kid);
            k
        })
        .collect();
    json!({ "keys": keys })
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
        audiences: vec![AUD.into(), "other-aud".into()],
        leeway: Duration::from_secs(30),
        min_refresh_interval: Duration::from_secs(10),
        claims: JwtClaims::default(),
        default_tier: None,
        optional: false,
    }
}

fn url_spec(url: &str, min_refresh: u64) -> JwtConfig {
    JwtConfig {
        jwks: JwksSource::Url(url.into()),
        min_refresh_interval: Duration::from_secs(min_refresh),
        ..spec()
    }
}

/// What a config version lends a `jwt` filter while it is built: owned here, lent as [`JwtDeps`].
struct Cx {
    jwks: JwksCache,
    base_dir: PathBuf,
    tiers: Arc<BTreeSet<String>>,
}

impl Cx {
    fn deps(&self) -> JwtDeps<'_> {
        JwtDeps {
            jwks: &self.jwks,
            base_dir: &self.base_dir,
            tiers: &self.tiers,
        }
    }
}

fn cx(dir: &Path) -> Cx {
    Cx {
        jwks: JwksCache::default(),
        base_dir: dir.to_path_buf(),
        tiers: Arc::new(["free", "pro", "enterprise"].map(String::from).into()),
    }
}

fn build(spec: &JwtConfig) -> JwtFilter {
    JwtFilter::from_config(spec, cx(&fixtures()).deps()).unwrap()
}

fn claims() -> Value {
    json!({
        "sub": "alice", "org": "acme", "tier": "pro", "roles": ["admin", "dev"],
        "models": ["gpt-*", "qwen-plus"], "iss": ISS, "aud": AUD,
        "exp": NOW + 3600, "iat": NOW, "jti": "tok-1",
    })
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

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, claims, key).unwrap()
}

fn rs(claims: &Value) -> String {
    sign(Algorithm::RS256, Some("rsa-1"), &rsa(), claims)
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

async fn run_at(
    f: &JwtFilter,
    auth: Option<&str>,
    now: i64,
) -> (Result<(), Rejection>, RequestCtx) {
    let mut h = HeaderMap::new();
    if let Some(a) = auth {
        h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
    }
    let req = RequestInfo {
        method: &Method::POST,
        path: "/v1/chat/completions",
        query: None,
        headers: &h,
    };
    let mut ctx = RequestCtx {
        now_unix: now,
        ..Default::default()
    };
    let r = f.on_request(&req, &mut ctx).await;
    (r, ctx)
}

async fn run(f: &JwtFilter, token: &str) -> (Result<(), Rejection>, RequestCtx) {
    run_at(f, Some(&format!("Bearer {token}")), NOW).await
}

async fn principal(f: &JwtFilter, token: &str) -> Arc<Principal> {
    let (r, ctx) = run(f, token).await;
    assert!(r.is_ok(), "refused: {r:?}");
    ctx.principal.unwrap()
}

/// The 401 message, after checking it is a 401 that does not echo the token.
async fn refused(f: &JwtFilter, token: &str) -> String {
    let (r, ctx) = run(f, token).await;
    assert!(ctx.principal.is_none());
    let e = r.expect_err("token was accepted");
    assert_eq!((e.kind, e.status()), (RejectKind::Unauthenticated, 401));
    for part in token.split('.').filter(|p| p.len() > 8) {
        assert!(
            !e.message.contains(part),
            "message echoes the token: {}",
            e.message
        );
    }
    e.message
}

#[tokio::test]
async fn valid_rs256_es256_eddsa_tokens_produce_the_principal() {
    let f = build(&spec());
    for token in [
        rs(&claims()),
        sign(Algorithm::ES256, Some("ec-1"), &ec(), &claims()),
        sign(Algorithm::EdDSA, Some("ed-1"), &ed(), &claims()),
    ] {
        let p = principal(&f, &token).await;
        assert_eq!(&*p.id, "tok-1");
        assert_eq!(&*p.user, "alice");
        assert_eq!(p.org.as_deref(), Some("acme"));
        assert_eq!(&*p.tier, "pro");
        assert_eq!(&*p.roles, ["admin".to_string(), "dev".to_string()]);
        assert_eq!(
            &*p.models,
            [
                ModelPattern::parse("gpt-*"),
                ModelPattern::parse("qwen-plus")
            ]
        );
        assert_eq!(p.method, AuthMethod::Jwt);
    }
}

#[tokio::test]
async fn claim_names_are_mapped_and_optional_claims_default() {
    let mut s = spec();
    s.claims = JwtClaims {
        user: "email".into(),
        org: "tenant".into(),
        tier: "plan".into(),
        roles: "scope".into(),
        models: "allowed_models".into(),
    };
    let f = build(&s);
    let c = json!({"sub": "ignored", "email": "bob@example.com", "plan": "free", "scope": "read  write",
                   "iss": ISS, "aud": [AUD], "exp": NOW + 60});
    let p = principal(&f, &rs(&c)).await;
    assert_eq!(
        (&*p.id, &*p.user, &*p.tier),
        ("bob@example.com", "bob@example.com", "free")
    );
    assert_eq!(p.org, None);
    assert_eq!(&*p.roles, ["read".to_string(), "write".to_string()]);
    assert!(p.models.is_empty() && p.may_use("anything"));

    // an explicit empty allow-list allows no model
    let mut c2 = c.clone();
    c2["allowed_models"] = json!([]);
    let p = principal(&f, &rs(&c2)).await;
    assert!(!p.may_use("gpt-4o"));

    // the user claim is required; malformed roles are refused
    assert!(refused(
        &f,
        &rs(&json!({"sub": "x", "plan": "free", "iss": ISS, "aud": AUD, "exp": NOW + 60}))
    )
    .await
    .contains("`email`"));
    c2["scope"] = json!([1, 2]);
    assert!(refused(&f, &rs(&c2)).await.contains("`scope`"));
}

#[tokio::test]
async fn expiry_and_not_before_use_the_request_clock_with_leeway() {
    let f = build(&spec());
    assert!(refused(&f, &rs(&claims_with(json!({"exp": NOW - 31}))))
        .await
        .contains("expired"));
    principal(&f, &rs(&claims_with(json!({"exp": NOW - 29})))).await; // within the 30 s leeway
    assert!(refused(&f, &rs(&claims_with(json!({"exp": null}))))
        .await
        .contains("`exp`"));
    assert!(refused(&f, &rs(&claims_with(json!({"nbf": NOW + 100}))))
        .await
        .contains("not valid yet"));
    principal(&f, &rs(&claims_with(json!({"nbf": NOW + 20})))).await;

    // the same token is valid or expired depending only on ctx.now_unix
    let t = rs(&claims());
    assert!(run_at(&f, Some(&format!("Bearer {t}")), NOW + 3000)
        .await
        .0
        .is_ok());
    assert!(run_at(&f, Some(&format!("Bearer {t}")), NOW + 3700)
        .await
        .0
        .is_err());
}

#[tokio::test]
async fn issuer_and_audience_are_checked() {
    let f = build(&spec());
    assert!(refused(
        &f,
        &rs(&claims_with(json!({"iss": "https://evil.example"})))
    )
    .await
    .contains("issuer"));
    assert!(refused(&f, &rs(&claims_with(json!({"iss": null}))))
        .await
        .contains("`iss`"));
    assert!(
        refused(&f, &rs(&claims_with(json!({"aud": "someone-else"}))))
            .await
            .contains("audience")
    );
    assert!(refused(&f, &rs(&claims_with(json!({"aud": null}))))
        .await
        .contains("`aud`"));
    principal(&f, &rs(&claims_with(json!({"aud": ["x", "other-aud"]})))).await;

    // no issuer / audiences configured: neither is checked
    let mut s = spec();
    s.issuer = None;
    s.audiences = vec![];
    let f = build(&s);
    principal(
        &f,
        &rs(&claims_with(json!({"iss": "anyone", "aud": "anything"}))),
    )
    .await;
}

#[tokio::test]
async fn only_configured_algorithms_matching_the_key_are_accepted() {
    let mut s = spec();
    s.algorithms = vec![JwtAlgorithm::RS256];
    let f = build(&s);
    principal(&f, &rs(&claims())).await;
    let es = sign(Algorithm::ES256, Some("ec-1"), &ec(), &claims());
    assert!(refused(&f, &es)
        .await
        .contains("algorithm `ES256` is not allowed"));

    let f = build(&spec());
    // HS256 signed with some secret, claiming the RSA key
    let hs = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(b"secret"),
        &claims(),
    );
    assert!(refused(&f, &hs)
        .await
        .contains("algorithm `HS256` is not allowed"));
    // alg: none
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#),
        b64url(claims().to_string().as_bytes())
    );
    assert!(refused(&f, &none)
        .await
        .contains("algorithm `none` is not allowed"));
    // an accepted algorithm, but not the key's type (RS256 header on the EC key's kid)
    let mixed = sign(Algorithm::RS256, Some("ec-1"), &rsa(), &claims());
    assert!(refused(&f, &mixed)
        .await
        .contains("not allowed for its key"));
    // RS384 is RSA but the JWK pins alg RS256
    let mut s = spec();
    s.algorithms.push(JwtAlgorithm::RS384);
    let f = build(&s);
    let rs384 = sign(Algorithm::RS384, Some("rsa-1"), &rsa(), &claims());
    assert!(refused(&f, &rs384)
        .await
        .contains("not allowed for its key"));

    // HS* cannot even be configured: the validated config has no name for it
    assert_eq!(JwtAlgorithm::parse("HS256"), None);
}

#[tokio::test]
async fn tampered_tokens_are_refused() {
    let f = build(&spec());
    for token in [
        rs(&claims()),
        sign(Algorithm::ES256, Some("ec-1"), &ec(), &claims()),
    ] {
        let parts: Vec<&str> = token.split('.').collect();
        let mut sig: Vec<u8> = parts[2].bytes().collect();
        let mid = sig.len() / 2;
        sig[mid] = if sig[mid] == b'A' { b'B' } else { b'A' };
        let bad_sig = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            String::from_utf8(sig).unwrap()
        );
        assert!(refused(&f, &bad_sig).await.contains("signature is invalid"));

        let forged = b64url(
            claims_with(json!({"tier": "enterprise"}))
                .to_string()
                .as_bytes(),
        );
        let bad_payload = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert!(refused(&f, &bad_payload)
            .await
            .contains("signature is invalid"));
    }
    // signed by a key the set does not hold, under a known kid
    let other = sign(Algorithm::EdDSA, Some("ec-1"), &ed(), &claims());
    assert!(refused(&f, &other)
        .await
        .contains("not allowed for its key"));
}

#[tokio::test]
async fn tier_comes_from_the_claim_or_the_default() {
    let no_tier = rs(&claims_with(json!({"tier": null})));
    assert!(refused(&build(&spec()), &no_tier)
        .await
        .contains("carries no tier"));
    let mut s = spec();
    s.default_tier = Some("free".into());
    let f = build(&s);
    assert_eq!(&*principal(&f, &no_tier).await.tier, "free");
    assert_eq!(&*principal(&f, &rs(&claims())).await.tier, "pro");
    let unknown = rs(&claims_with(json!({"tier": "platinum"})));
    assert_eq!(
        refused(&f, &unknown).await,
        "The token's tier `platinum` is not a tier of this gateway."
    );
}

#[tokio::test]
async fn missing_or_non_jwt_bearer() {
    let f = build(&spec());
    let (r, _) = run_at(&f, None, NOW).await;
    assert!(r.unwrap_err().message.contains("didn't provide a token"));
    let (r, _) = run_at(&f, Some("Bearer lt-abc123"), NOW).await;
    assert_eq!(r.unwrap_err().message, "The bearer token is not a JWT.");
    let (r, _) = run_at(&f, Some("Basic dXNlcjpwYXNz"), NOW).await;
    assert_eq!(r.unwrap_err().kind, RejectKind::Unauthenticated);

    let mut s = spec();
    s.optional = true;
    let f = build(&s);
    for auth in [None, Some("Bearer lt-abc123"), Some("Bearer a.b.c.d")] {
        let (r, ctx) = run_at(&f, auth, NOW).await;
        assert!(r.is_ok() && ctx.principal.is_none(), "{auth:?}");
    }
    // optional does not excuse a JWT that fails verification
    assert!(refused(&f, &rs(&claims_with(json!({"exp": NOW - 100}))))
        .await
        .contains("expired"));
    // bearer prefix is case-insensitive
    let t = rs(&claims());
    assert!(run_at(&f, Some(&format!("bearer  {t} ")), NOW)
        .await
        .1
        .principal
        .is_some());
}

#[tokio::test]
async fn oversized_tokens_are_refused_unparsed() {
    let f = build(&spec());
    // A validly signed token padded past the bound with a junk claim: refused for its size alone.
    let pad = "x".repeat(MAX_TOKEN_BYTES);
    let big = rs(&claims_with(json!({"pad": pad})));
    assert!(big.len() > MAX_TOKEN_BYTES);
    assert!(refused(&f, &big).await.contains("exceeds 8192 bytes"));
    // Just under the bound it is verified as usual.
    let fits = rs(&claims_with(
        json!({"pad": "x".repeat(MAX_TOKEN_BYTES * 3 / 4 - 700)}),
    ));
    assert!(fits.len() <= MAX_TOKEN_BYTES, "{}", fits.len());
    principal(&f, &fits).await;

    // Optional: a long JWT is still refused; a long opaque bearer is left to the next filter.
    let mut s = spec();
    s.optional = true;
    let f = build(&s);
    assert!(refused(&f, &big).await.contains("exceeds"));
    let opaque = format!("Bearer lt-{}", "a".repeat(MAX_TOKEN_BYTES));
    let (r, ctx) = run_at(&f, Some(&opaque), NOW).await;
    assert!(r.is_ok() && ctx.principal.is_none());
}

#[tokio::test]
async fn a_revoked_jti_is_refused_by_filters_sharing_the_cache() {
    let c = cx(&fixtures());
    let f = JwtFilter::from_config(&spec(), c.deps()).unwrap();
    let token = rs(&claims());
    principal(&f, &token).await;
    c.jwks
        .revoked()
        .replace([("tok-1".to_string(), NOW + 3600)], NOW);
    assert!(refused(&f, &token).await.contains("revoked"));
    // A filter of a later config version reads the same set.
    let g = JwtFilter::from_config(&spec(), c.deps()).unwrap();
    assert!(refused(&g, &token).await.contains("revoked"));
    // Another token of the same subject is unaffected; an un-revoke (a push without it) lets it pass.
    principal(&f, &rs(&claims_with(json!({"jti": "tok-2"})))).await;
    c.jwks.revoked().replace(Vec::new(), NOW);
    principal(&f, &token).await;
}

#[tokio::test]
async fn an_existing_principal_passes_through() {
    let f = build(&spec());
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        "Bearer garbage".parse().unwrap(),
    );
    let req = RequestInfo {
        method: &Method::POST,
        path: "/",
        query: None,
        headers: &h,
    };
    let p = Arc::new(Principal {
        id: "k".into(),
        user: "u".into(),
        org: None,
        tier: "t".into(),
        roles: Arc::new([]),
        models: Arc::new([]),
        method: AuthMethod::ApiKey,
    });
    let mut ctx = RequestCtx {
        principal: Some(p.clone()),
        now_unix: NOW,
        ..Default::default()
    };
    assert!(f.on_request(&req, &mut ctx).await.is_ok());
    assert_eq!(ctx.principal, Some(p));
}

#[tokio::test]
async fn token_without_kid_needs_a_single_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("one.json"),
        jwks(&[("ed-1", "ed-1")]).to_string(),
    )
    .unwrap();
    let f = JwtFilter::from_config(
        &JwtConfig {
            jwks: JwksSource::File("one.json".into()),
            ..spec()
        },
        cx(dir.path()).deps(),
    )
    .unwrap();
    let t = sign(Algorithm::EdDSA, None, &ed(), &claims());
    assert_eq!(&*principal(&f, &t).await.user, "alice");

    let f = build(&spec());
    assert!(refused(&f, &t).await.contains("more than one key"));
}

#[tokio::test]
async fn model_allow_list_is_enforced_on_the_body() {
    let f = build(&spec());
    let (r, mut ctx) = run(&f, &rs(&claims())).await;
    assert!(r.is_ok());
    ctx.model = Some("gpt-4o".into());
    assert!(f.on_request_body(b"", &mut ctx).is_ok());
    ctx.model = Some("claude-3".into());
    let e = f.on_request_body(b"", &mut ctx).unwrap_err();
    assert_eq!(
        (e.kind, e.param),
        (RejectKind::PermissionDenied, Some("model"))
    );
    assert_eq!(f.kind(), "jwt");
}

#[tokio::test]
async fn bad_jwks_files_fail_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let build_with = |file: &str| {
        JwtFilter::from_config(
            &JwtConfig {
                jwks: JwksSource::File(file.into()),
                ..spec()
            },
            cx(dir.path()).deps(),
        )
        .err()
        .unwrap()
        .to_string()
    };
    assert!(build_with("missing.json").contains("missing.json"));
    std::fs::write(dir.path().join("bad.json"), "{not json").unwrap();
    assert!(build_with("bad.json").contains("bad.json"));
    std::fs::write(dir.path().join("nokeys.json"), r#"{"foo": []}"#).unwrap();
    assert!(build_with("nokeys.json").contains("no `keys`"));
    // only symmetric and encryption keys: nothing usable
    let unusable = json!({"keys": [
        {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": jwks(&[("rsa-1", "x")])["keys"][0]["n"], "e": "AQAB"},
    ]});
    std::fs::write(dir.path().join("unusable.json"), unusable.to_string()).unwrap();
    assert!(build_with("unusable.json").contains("no usable signing key"));
}

#[tokio::test]
async fn key_added_to_the_jwks_file_is_picked_up_on_unknown_kid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    std::fs::write(&path, jwks(&[("rsa-1", "rsa-1")]).to_string()).unwrap();
    let f = JwtFilter::from_config(
        &JwtConfig {
            jwks: JwksSource::File("keys.json".into()),
            ..spec()
        },
        cx(dir.path()).deps(),
    )
    .unwrap();
    principal(&f, &rs(&claims())).await;

    std::fs::write(
        &path,
        jwks(&[("rsa-1", "rsa-1"), ("ec-1", "ec-new")]).to_string(),
    )
    .unwrap();
    let t = sign(Algorithm::ES256, Some("ec-new"), &ec(), &claims());
    assert_eq!(&*principal(&f, &t).await.user, "alice");
    principal(&f, &rs(&claims())).await;

    // a file that turns unreadable keeps the keys already loaded
    std::fs::write(&path, "garbage").unwrap();
    assert!(
        refused(&f, &sign(Algorithm::EdDSA, Some("ed-1"), &ed(), &claims()))
            .await
            .contains("unknown")
    );
    principal(&f, &t).await;
}

/// A JWKS endpoint counting its fetches; `gate` holds each answer until a permit is added.
struct Idp {
    answer: std::sync::Mutex<(u16, Value)>,
    fetches: AtomicUsize,
    gate: tokio::sync::Semaphore,
}

impl Idp {
    fn new(jwks: Value, gate_permits: usize) -> Arc<Self> {
        Arc::new(Idp {
            answer: std::sync::Mutex::new((200, jwks)),
            fetches: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(gate_permits),
        })
    }

    fn set(&self, status: u16, jwks: Value) {
        *self.answer.lock().unwrap() = (status, jwks);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn jwks_handler(State(idp): State<Arc<Idp>>) -> (StatusCode, axum::Json<Value>) {
    idp.fetches.fetch_add(1, Ordering::SeqCst);
    idp.gate.acquire().await.unwrap().forget();
    let (status, body) = idp.answer.lock().unwrap().clone();
    (StatusCode::from_u16(status).unwrap(), axum::Json(body))
}

async fn serve(idp: Arc<Idp>) -> String {
    let app = axum::Router::new()
        .route("/jwks", axum::routing::get(jwks_handler))
        .with_state(idp);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/jwks")
}

#[tokio::test]
async fn url_jwks_is_fetched_lazily_and_refreshed_at_most_once_per_interval() {
    let idp = Idp::new(jwks(&[("rsa-1", "a")]), 1000);
    let f = build(&url_spec(&serve(idp.clone()).await, 10));
    assert_eq!(idp.fetches(), 0, "building must not fetch");

    let ta = sign(Algorithm::RS256, Some("a"), &rsa(), &claims());
    principal(&f, &ta).await;
    principal(&f, &ta).await;
    assert_eq!(idp.fetches(), 1);

    // rotate: `a` retired, `b` published
    idp.set(200, jwks(&[("ec-1", "b")]));
    let tb = sign(Algorithm::ES256, Some("b"), &ec(), &claims());
    assert!(refused(&f, &tb).await.contains("unknown"));
    assert_eq!(idp.fetches(), 1, "the first fetch was less than 10 s ago");

    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(refused(&f, &tb).await.contains("unknown"));
    assert_eq!(idp.fetches(), 1, "9 s after the first fetch");
    tokio::time::advance(Duration::from_secs(1)).await;
    tokio::time::resume(); // the fetch itself runs on the real clock (its 2 s timeout must not auto-advance)

    principal(&f, &tb).await;
    assert_eq!(idp.fetches(), 2);
    // `a` is gone now, and the refresh it would trigger is rate-limited
    assert!(refused(&f, &ta).await.contains("unknown"));
    assert_eq!(idp.fetches(), 2);
}

#[tokio::test]
async fn concurrent_unknown_kids_trigger_a_single_fetch() {
    let idp = Idp::new(jwks(&[("rsa-1", "a")]), 1000);
    // no rate limit: only single-flight stops the stampede
    let f = Arc::new(build(&url_spec(&serve(idp.clone()).await, 0)));
    principal(&f, &sign(Algorithm::RS256, Some("a"), &rsa(), &claims())).await;
    assert_eq!(idp.fetches(), 1);

    idp.set(200, jwks(&[("rsa-1", "a"), ("ec-1", "b")]));
    idp.gate.forget_permits(1000);
    let tb = sign(Algorithm::ES256, Some("b"), &ec(), &claims());
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (f, tb) = (f.clone(), tb.clone());
            tokio::spawn(async move { run(&f, &tb).await.1.principal.map(|p| p.user.to_string()) })
        })
        .collect();
    // wait until the one fetch is in flight (held at the gate) and every task has queued behind it
    while idp.fetches() < 2 {
        tokio::task::yield_now().await;
    }
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    idp.gate.add_permits(1000);
    for t in tasks {
        assert_eq!(t.await.unwrap().as_deref(), Some("alice"));
    }
    assert_eq!(idp.fetches(), 2);
}

#[tokio::test]
async fn failed_fetches_keep_the_old_keys() {
    let idp = Idp::new(json!({"error": "down"}), 1000);
    idp.set(503, json!({"error": "down"}));
    let f = build(&url_spec(&serve(idp.clone()).await, 0));
    let ta = sign(Algorithm::RS256, Some("a"), &rsa(), &claims());
    assert!(refused(&f, &ta).await.contains("unknown"));
    assert_eq!(idp.fetches(), 1);

    idp.set(200, jwks(&[("rsa-1", "a")]));
    principal(&f, &ta).await;
    assert_eq!(idp.fetches(), 2);

    for (status, body) in [
        (500, json!({})),
        (200, json!({"keys": []})),
        (200, json!("nonsense")),
    ] {
        idp.set(status, body);
        let tb = sign(Algorithm::ES256, Some("b"), &ec(), &claims());
        assert!(refused(&f, &tb).await.contains("unknown"));
        principal(&f, &ta).await;
    }
    assert_eq!(idp.fetches(), 5);
}

/// A reload builds new filters with the process's `JwksCache`: the same URL keeps its fetched keys.
#[tokio::test]
async fn rebuilt_filters_with_the_same_jwks_url_keep_the_fetched_keys() {
    let idp = Idp::new(jwks(&[("rsa-1", "a")]), 1000);
    let url = serve(idp.clone()).await;
    let cx = cx(&fixtures());
    let token = sign(Algorithm::RS256, Some("a"), &rsa(), &claims());
    let v1 = JwtFilter::from_config(&url_spec(&url, 10), cx.deps()).unwrap();
    principal(&v1, &token).await;
    assert_eq!(idp.fetches(), 1);

    // Two reloads (one also changing a setting that is not the source): no new fetch.
    let v2 = JwtFilter::from_config(&url_spec(&url, 10), cx.deps()).unwrap();
    drop(v1);
    let v3 = JwtFilter::from_config(&url_spec(&url, 30), cx.deps()).unwrap();
    drop(v2);
    principal(&v3, &token).await;
    assert_eq!(idp.fetches(), 1);

    // Other accepted algorithms parse the set differently: their own entry, fetched on first use.
    let es_only = JwtConfig {
        algorithms: vec![JwtAlgorithm::ES256],
        ..url_spec(&url, 10)
    };
    let other = JwtFilter::from_config(&es_only, cx.deps()).unwrap();
    idp.set(200, jwks(&[("ec-1", "b")]));
    principal(&other, &sign(Algorithm::ES256, Some("b"), &ec(), &claims())).await;
    assert_eq!(idp.fetches(), 2);

    // Once no version uses a source, its entry goes: a later config naming it fetches afresh.
    drop(v3);
    idp.set(200, jwks(&[("rsa-1", "a")]));
    let v4 = JwtFilter::from_config(&url_spec(&url, 10), cx.deps()).unwrap();
    principal(&v4, &token).await;
    assert_eq!(idp.fetches(), 3);
}

/// A rebuilt filter re-reads its JWKS file (a bad file still fails the reload) into the shared entry.
#[tokio::test]
async fn rebuilt_filters_reread_the_jwks_file_into_the_shared_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    std::fs::write(&path, jwks(&[("rsa-1", "rsa-1")]).to_string()).unwrap();
    let cx = cx(dir.path());
    let file_spec = JwtConfig {
        jwks: JwksSource::File("keys.json".into()),
        min_refresh_interval: Duration::from_secs(3600),
        ..spec()
    };
    let v1 = JwtFilter::from_config(&file_spec, cx.deps()).unwrap();
    std::fs::write(&path, jwks(&[("ec-1", "ec-new")]).to_string()).unwrap();
    let v2 = JwtFilter::from_config(&file_spec, cx.deps()).unwrap();
    let t = sign(Algorithm::ES256, Some("ec-new"), &ec(), &claims());
    // Both versions see the new keys without a refresh (the first would be rate-limited for an hour).
    assert_eq!(&*principal(&v2, &t).await.user, "alice");
    assert_eq!(&*principal(&v1, &t).await.user, "alice");
    std::fs::write(&path, "garbage").unwrap();
    let e = JwtFilter::from_config(&file_spec, cx.deps()).err().unwrap();
    assert!(matches!(e, JwtBuildError::Jwks { .. }), "{e}");
    principal(&v2, &t).await;
}

#[test]
fn base64url_and_shape_helpers() {
    for s in [
        "",
        "f",
        "fo",
        "foo",
        "foob",
        "fooba",
        "foobar",
        r#"{"alg":"RS256"}"#,
    ] {
        assert_eq!(b64url_decode(&b64url(s.as_bytes())).unwrap(), s.as_bytes());
    }
    assert!(b64url_decode("a+b/").is_none());
    assert!(jwt_shaped("eyJh.eyJi.c2ln") && jwt_shaped("eyJh.eyJi."));
    assert!(
        !jwt_shaped("eyJh.eyJi")
            && !jwt_shaped("a.b.c.d")
            && !jwt_shaped(".b.c")
            && !jwt_shaped("a.b+.c")
    );
}

#[tokio::test]
async fn a_verified_token_is_remembered_and_still_checked_for_time_and_revocation() {
    let c = cx(&fixtures());
    let f = JwtFilter::from_config(&spec(), c.deps()).unwrap();
    let token = rs(&claims_with(json!({"exp": NOW + 60})));
    let first = principal(&f, &token).await;
    let cache = f.verified.as_ref().unwrap();
    assert!(cache.get(&token).is_some(), "a success is remembered");
    // The same principal object comes back, without another verification.
    assert!(Arc::ptr_eq(&first, &principal(&f, &token).await));
    // Expiry and revocation apply to remembered tokens as to new ones.
    let (r, _) = run_at(&f, Some(&format!("Bearer {token}")), NOW + 60 + 30).await;
    assert!(r.unwrap_err().message.contains("expired"));
    c.jwks
        .revoked()
        .replace([("tok-1".to_string(), NOW + 60)], NOW);
    assert!(refused(&f, &token).await.contains("revoked"));
    c.jwks.revoked().replace(Vec::new(), NOW);
    principal(&f, &token).await;
    // A token differing in one byte of its payload (same signature) is not the remembered one.
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload = parts[1].as_bytes().to_vec();
    payload[5] = if payload[5] == b'A' { b'B' } else { b'A' };
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        String::from_utf8(payload).unwrap(),
        parts[2]
    );
    refused(&f, &tampered).await;
    assert!(
        cache.get(&tampered).is_none(),
        "failures are not remembered"
    );
    // Turned off (what the benchmark's first-sight case uses): nothing is kept.
    let plain = JwtFilter::from_config(&spec(), c.deps())
        .unwrap()
        .without_verified_cache();
    principal(&plain, &token).await;
    assert!(plain.verified.is_none());
}

#[tokio::test]
async fn a_key_removed_from_the_jwks_stops_its_remembered_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    std::fs::write(
        &path,
        jwks(&[("rsa-1", "rsa-1"), ("ec-1", "ec-1")]).to_string(),
    )
    .unwrap();
    let file_spec = JwtConfig {
        jwks: JwksSource::File("keys.json".into()),
        ..spec()
    };
    let c = cx(dir.path());
    let f = JwtFilter::from_config(&file_spec, c.deps()).unwrap();
    let old = rs(&claims());
    principal(&f, &old).await;
    assert!(f.verified.as_ref().unwrap().get(&old).is_some());
    // The key set changes (rsa-1 removed); an unknown kid makes the filter re-read it.
    std::fs::write(
        &path,
        jwks(&[("ec-1", "ec-1"), ("ed-1", "ed-1")]).to_string(),
    )
    .unwrap();
    principal(&f, &sign(Algorithm::EdDSA, Some("ed-1"), &ed(), &claims())).await;
    // The remembered token is verified again under the new set, and its key is gone.
    assert!(refused(&f, &old).await.contains("unknown"));
    assert!(f.verified.as_ref().unwrap().get(&old).is_none());
}
