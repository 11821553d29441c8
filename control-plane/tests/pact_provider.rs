//! The control plane as the proxy's provider (a Pact HTTP pact, provider side; docs/contracts.md):
//! the committed `contracts/pacts/leaky-proxy-leaky-control-plane.json` is replayed by Pact's
//! verifier against the real admin API on a real PostgreSQL, with identity's endpoints attached as
//! the admin-api process attaches them (the JWKS), each provider state set up through the API
//! itself or, for signing keys, identity's own rotation step.
//!
//! One relay stands between the verifier and the control plane: the watch stream is NDJSON that never
//! ends, and the verifier reads whole bodies, so the relay passes every request and answer through
//! untouched except that it ends a stream after its first line (the snapshot the pact describes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::pacts;
use crate::verify;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::verify::{Provider, States};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::StreamExt;
use leaky_control_plane::app::{self, Roles};
use leaky_control_plane::clock::SystemClock;
use leaky_control_plane::db;
use leaky_control_plane::http::{AdminToken, ApiState};
use leaky_control_plane::identity::{self, Alg, Identity, MasterKeys};
use serde_json::json;

/// The token the proxy's pact examples carry.
const TOKEN: &str = "pact-proxy-token";
const INSTANCE: &str = "pact-proxy";

/// The repository's dev config (its `extends` chain merged), as `scripts/stack` imports it.
fn dev_base() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/dev.yaml");
    serde_json::to_string_pretty(&leaky_config::load_merged(&path).unwrap()).unwrap()
}

/// Forwards one request to `base`; an NDJSON answer is cut after its first line.
async fn relay(State(base): State<Arc<String>>, req: Request) -> Result<Response, StatusCode> {
    let bad = StatusCode::BAD_GATEWAY;
    let url = format!("{base}{}", req.uri());
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.map_err(|_| bad)?;
    let mut out = reqwest::Client::new().request(parts.method, url).body(body);
    for (name, value) in parts.headers.iter().filter(|(n, _)| n.as_str() != "host") {
        out = out.header(name, value);
    }
    let answer = out.send().await.map_err(|_| bad)?;
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name.as_str() != "transfer-encoding" && name.as_str() != "content-length" {
            response = response.header(name, value);
        }
    }
    let ndjson = answer
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes() == b"application/x-ndjson");
    let bytes = if ndjson {
        let mut line = Vec::new();
        let mut stream = answer.bytes_stream();
        while !line.contains(&b'\n') {
            match stream.next().await {
                Some(Ok(chunk)) => line.extend_from_slice(&chunk),
                _ => return Err(bad),
            }
        }
        let end = line.iter().position(|b| *b == b'\n').unwrap_or(0) + 1;
        line.truncate(end);
        line.into()
    } else {
        answer.bytes().await.map_err(|_| bad)?
    };
    response
        .body(Body::from(bytes))
        .map_err(|_| StatusCode::BAD_GATEWAY)
}

async fn serve_relay(base: String) -> SocketAddr {
    let app = axum::Router::new()
        .fallback(relay)
        .with_state(Arc::new(base));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Serves the admin API for `state` with identity attached (ES256 keys only: the state the JWKS
/// interaction names) on 127.0.0.1:0; its base URL and the identity context.
async fn serve(state: ApiState) -> anyhow::Result<(String, Arc<Identity>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let master = MasterKeys::parse(&format!("v1:{}", "A".repeat(43) + "="))?;
    let mut settings = identity::Settings::new(&base, master, false);
    settings.algs = vec![Alg::ES256];
    let id = Identity::new(settings, state.pool.clone(), Arc::new(SystemClock), None)?;
    let router = identity::attach(app::router(state.clone(), &Roles::all()), state, id.clone())
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok((base, id))
}

/// Sets up a provider state through the admin API (signing keys: identity's rotation step, what its
/// periodic job runs).
async fn set_up(base: &str, identity: &Identity, state: &str) -> Result<(), String> {
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{base}{path}"))
            .bearer_auth(TOKEN)
    };
    let expect = |r: reqwest::Result<reqwest::Response>, want: &[u16]| match r {
        Ok(r) if want.contains(&r.status().as_u16()) => Ok(()),
        Ok(r) => Err(format!("{} answered {}", r.url(), r.status())),
        Err(e) => Err(e.to_string()),
    };
    match state {
        "a config version is in force" => {
            let put = call(reqwest::Method::PUT, "/v1/config/base")
                .header("content-type", "application/yaml")
                .body(dev_base());
            expect(put.send().await, &[200, 201])
        }
        "no instance is registered" => {
            let path = format!("/v1/registry/instances/{INSTANCE}");
            expect(call(reqwest::Method::DELETE, &path).send().await, &[204])
        }
        "the proxy's instance is registered" => {
            let path = format!("/v1/registry/instances/{INSTANCE}");
            let body = json!({"role": "proxy", "address": "127.0.0.1:8080", "version": "0.1.0"});
            expect(
                call(reqwest::Method::PUT, &path).json(&body).send().await,
                &[200, 201],
            )
        }
        "an ES256 signing key is published" => {
            identity.tick().await.map_err(|e| e.to_string())?;
            let keys = identity::keys::list(&identity.pool)
                .await
                .map_err(|e| e.to_string())?;
            if keys.iter().any(|k| k.alg == "ES256" && k.state == "active") {
                Ok(())
            } else {
                Err(format!(
                    "no active ES256 key after a rotation step: {keys:?}"
                ))
            }
        }
        other => Err(format!("unknown provider state `{other}`")),
    }
}

#[tokio::test]
async fn the_control_plane_honours_the_proxys_pact() -> anyhow::Result<()> {
    let url = common::fresh_db().await?;
    let pool = db::pool(&url, 8)?;
    db::migrate(&pool).await?;
    let state = ApiState::new(pool, AdminToken::new(TOKEN));
    state.set_migrated();
    let (base, identity) = serve(state).await?;
    let relay = serve_relay(base.clone()).await;
    let base = Arc::new(base);
    let states = States(Arc::new(move |name: String| {
        let (base, identity) = (base.clone(), identity.clone());
        Box::pin(async move { set_up(&base, &identity, &name).await })
    }));
    let provider = Provider {
        name: "leaky-control-plane",
        http: Some(relay),
        messages: None,
    };
    let pact = pacts::file("leaky-proxy", "leaky-control-plane");
    if let Err(report) = verify::verify(&pact, &provider, states).await {
        panic!(
            "{} fails against the control plane:\n{report}",
            pact.display()
        );
    }
    Ok(())
}
