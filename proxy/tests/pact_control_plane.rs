//! The proxy's contract with the control plane (a Pact HTTP pact, consumer side; docs/contracts.md).
//! The proxy's own control-plane client ([`Endpoint`]: the watch stream and its NDJSON framing,
//! ACK/NACK, registration and heartbeats — the code `control_plane::boot` and the watch session run)
//! and its `jwt` filter's JWKS fetch (a [`JwtFilter`] with a `jwks_url`, built on the process's
//! [`JwksCache`] as a config version builds it) are driven against a Pact mock server that answers
//! as the pact says; each call's outcome is checked as the proxy would use it. The pact this generates must equal the committed
//! `contracts/pacts/leaky-proxy-leaky-control-plane.json`, which the real control plane is verified
//! against (`control-plane/tests/pact_provider.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::pacts;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use leaky_config::{JwksSource, JwtAlgorithm, JwtClaims, JwtConfig};
use leaky_filters::{Filter, JwksCache, JwtDeps, JwtFilter, RequestCtx, RequestInfo};
use leaky_proxy::control_plane::{registration, ClientTls, Endpoint, Event, Identity};
use pact_consumer::prelude::*;
use pact_models::PactSpecification;

const CONSUMER: &str = "leaky-proxy";
const PROVIDER: &str = "leaky-control-plane";
/// The instance id and bearer token the examples carry (the provider test serves with this token).
const INSTANCE: &str = "pact-proxy";
/// An instance the registry does not know (expired, or its database was reset).
const FORGOTTEN: &str = "pact-proxy-forgotten";
const TOKEN: &str = "pact-proxy-token";
const HASH: &str = "9f2c1e0b7a6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b";
const RFC3339: &str = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$";
/// The control plane's JWKS, where the proxy's `jwt` filters fetch its tokens' keys.
const JWKS_PATH: &str = "/.well-known/jwks.json";
/// The example key: the public half of `filters/tests/fixtures/jwt/ec.pem` (P-256), which signs
/// the test's token, so the proxy verifies it with the key it fetched.
const KID: &str = "ec-1";
const EC_X: &str = "LQ75b134_zOoy7OIDZB7oEWfkQ8at1QKTjxNmJW5maw";
const EC_Y: &str = "QITB9j6OwsiaUzvU8TZlaG7Q_9bANQdBHGllybKl7oc";
/// A P-256 coordinate: 32 bytes, base64url without padding.
const COORDINATE: &str = "^[A-Za-z0-9_-]{43}$";

/// The watch stream's first line: the snapshot in force. The stream is NDJSON and never ends, so
/// the pact holds its first event: the body is that line, matched as JSON (the header matcher
/// accepts `application/x-ndjson` as the body's type), and the provider's test ends the real
/// stream after its first line.
fn watch(pact: &mut PactBuilder) {
    pact.interaction(
        "the watch stream opens with the snapshot in force",
        "",
        |mut i| {
            i.given("a config version is in force");
            i.request
                .get()
                .path("/v1/config/watch")
                .query_param("instance", INSTANCE)
                .header("authorization", format!("Bearer {TOKEN}"));
            let snapshot = json_pattern!({
                "type": "snapshot",
                "version": like!(1),
                "hash": term!("^[0-9a-f]{64}$", HASH),
                "document": like!("providers: {}\nroutes: []\n")
            });
            let line = format!("{}\n", snapshot.to_example());
            i.response
                .ok()
                .header(
                    "content-type",
                    term!("^application/x-ndjson$", "application/x-ndjson"),
                )
                .json_body(snapshot)
                .body2(line, "application/json".to_string());
            i
        },
    );
}

/// ACK and NACK of a version (`204`; the proxy only needs a 2xx).
fn acks(pact: &mut PactBuilder) {
    pact.interaction("an ACK of the version in force", "", |mut i| {
        i.given("a config version is in force");
        i.request
            .post()
            .path("/v1/config/acks")
            .header("authorization", format!("Bearer {TOKEN}"))
            .json_body(json_pattern!({"instance": INSTANCE, "version": like!(1), "status": "ack"}));
        i.response.status(204);
        i
    });
    pact.interaction("a NACK of the version in force, with its errors", "", |mut i| {
        i.given("a config version is in force");
        i.request
            .post()
            .path("/v1/config/acks")
            .header("authorization", format!("Bearer {TOKEN}"))
            .json_body(json_pattern!({
                "instance": INSTANCE,
                "version": like!(1),
                "status": "nack",
                "errors": each_like!("config pushed by http://127.0.0.1:9300 v1: unknown tier `gold`")
            }));
        i.response.status(204);
        i
    });
}

/// Registration, a heartbeat, and the `404` that makes the proxy register again.
fn registry(pact: &mut PactBuilder) {
    pact.interaction("a proxy registers itself", "", |mut i| {
        i.given("no instance is registered");
        i.request
            .put()
            .path(format!("/v1/registry/instances/{INSTANCE}"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .json_body(json_pattern!({
                "role": "proxy",
                "address": like!("127.0.0.1:8080"),
                "version": like!("0.1.0"),
                "config_version": like!(1),
                "started_at": term!(RFC3339, "2030-01-01T12:00:00Z")
            }));
        i.response.status(201);
        i
    });
    pact.interaction("a heartbeat of a registered proxy", "", |mut i| {
        i.given("the proxy's instance is registered");
        i.request
            .post()
            .path(format!("/v1/registry/instances/{INSTANCE}/heartbeat"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .json_body(json_pattern!({"config_version": like!(1)}));
        i.response.status(204);
        i
    });
    pact.interaction("a heartbeat of a proxy the registry forgot", "", |mut i| {
        i.given("no instance is registered");
        i.request
            .post()
            .path(format!("/v1/registry/instances/{FORGOTTEN}/heartbeat"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .json_body(json_pattern!({"config_version": like!(1)}));
        i.response.status(404);
        i
    });
}

/// The JWKS with the control plane's ES256 key: what the `jwt` filter needs of each key to verify
/// the control plane's tokens — its `kid` (the tokens name it), and an EC P-256 public key.
fn jwks(pact: &mut PactBuilder) {
    pact.interaction("GET the JWKS", "", |mut i| {
        i.given("an ES256 signing key is published");
        i.request.get().path(JWKS_PATH);
        i.response.ok().json_body(json_pattern!({
            "keys": each_like!({
                "kty": term!("^EC$", "EC"),
                "crv": term!("^P-256$", "P-256"),
                "kid": like!(KID),
                "x": term!(COORDINATE, EC_X),
                "y": term!(COORDINATE, EC_Y)
            })
        }));
        i
    });
}

fn pact(out: &std::path::Path) -> PactBuilder {
    let mut pact = PactBuilder::new_v4(CONSUMER, PROVIDER);
    pact.with_output_dir(out);
    watch(&mut pact);
    acks(&mut pact);
    registry(&mut pact);
    jwks(&mut pact);
    pact
}

/// A `jwt` filter on the control plane's JWKS at `base` (ES256, tier `pro`), as a config version
/// builds it: the keys are fetched on its first token.
fn jwt_filter(base: &str, cache: &JwksCache) -> JwtFilter {
    let spec = JwtConfig {
        jwks: JwksSource::Url(format!("{base}{JWKS_PATH}")),
        algorithms: vec![JwtAlgorithm::ES256],
        issuer: None,
        audiences: vec![],
        leeway: Duration::from_secs(30),
        min_refresh_interval: Duration::from_secs(10),
        claims: JwtClaims::default(),
        default_tier: None,
        optional: false,
    };
    let tiers = Arc::new(BTreeSet::from(["pro".to_string()]));
    let deps = JwtDeps {
        jwks: cache,
        base_dir: Path::new("."),
        tiers: &tiers,
    };
    JwtFilter::from_config(&spec, deps).unwrap()
}

/// A token signed by the example key, valid now.
fn token(now: i64) -> String {
    let pem = Path::new(env!("CARGO_MANIFEST_DIR")).join("../filters/tests/fixtures/jwt/ec.pem");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(pem).unwrap()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(KID.into());
    let claims =
        serde_json::json!({"sub": "svc-billing", "tier": "pro", "iat": now, "exp": now + 600});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[tokio::test]
async fn the_proxys_control_plane_client_works_against_the_pact() {
    pacts::no_metrics();
    let out = tempfile::tempdir().unwrap();
    let pact = pact(out.path());
    let server = pact.start_mock_server(None, None);
    let base = server.url().to_string();
    let endpoint = Endpoint::new(&base, TOKEN, INSTANCE, &ClientTls::default()).unwrap();

    // The watch stream: the first event is the snapshot, loaded as a proxy loads it.
    let mut stream = endpoint.watch().await.unwrap();
    let Event::Snapshot {
        version,
        hash,
        document,
    } = stream.next_event().await.unwrap()
    else {
        panic!("the stream did not open with a snapshot");
    };
    assert_eq!((version, hash.as_str()), (1, HASH));
    assert_eq!(document, "providers: {}\nroutes: []\n");

    endpoint.ack(1, &Ok(())).await.unwrap();
    let refused =
        vec!["config pushed by http://127.0.0.1:9300 v1: unknown tier `gold`".to_string()];
    endpoint.ack(1, &Err(refused)).await.unwrap();

    let me = Identity {
        address: "127.0.0.1:8080".into(),
        started_at: "2030-01-01T12:00:00Z".into(),
    };
    assert_eq!(
        endpoint.register(&registration(&me, Some(1))).await,
        Ok(201)
    );
    assert_eq!(endpoint.heartbeat(Some(1)).await, Ok(204));
    // A forgotten instance's heartbeat is not an error to the proxy: `404` is its cue to register
    // again (control_plane/registry.rs).
    let forgotten = Endpoint::new(&base, TOKEN, FORGOTTEN, &ClientTls::default()).unwrap();
    assert_eq!(forgotten.heartbeat(Some(1)).await, Ok(404));

    // A token of the control plane's key: the `jwt` filter fetches the JWKS and verifies it.
    let cache = JwksCache::default();
    let filter = jwt_filter(base.trim_end_matches('/'), &cache);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut headers = HeaderMap::new();
    let bearer = format!("Bearer {}", token(now));
    headers.insert(http::header::AUTHORIZATION, bearer.parse().unwrap());
    let req = RequestInfo {
        method: &Method::POST,
        path: "/v1/chat/completions",
        query: None,
        headers: &headers,
    };
    let mut ctx = RequestCtx {
        now_unix: now,
        ..Default::default()
    };
    filter.on_request(&req, &mut ctx).await.unwrap();
    let principal = ctx.principal.expect("the verified token's principal");
    assert_eq!((&*principal.user, &*principal.tier), ("svc-billing", "pro"));

    drop(server);
    let json = pact.build().to_json(PactSpecification::V4).unwrap();
    pacts::check_or_update(CONSUMER, PROVIDER, json);
}
