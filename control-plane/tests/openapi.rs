//! The OpenAPI document and Swagger UI, without a database: the pool is lazy and never used, since every
//! `/v1` request here is refused by the auth extractor before a handler runs.
//!
//! `control-plane/openapi.json` is the served `/openapi.json`, committed. Regenerate it with
//! `LEAKY_UPDATE_OPENAPI=1 cargo test -p leaky-control-plane --test integration -- openapi::`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use leaky_control_plane::http::{AdminToken, ApiState};
use leaky_control_plane::{app, db, identity, Roles};
use serde_json::Value;

/// Every `(method, path)` the router mounts under `/v1` (see `tenancy::api::routes`,
/// `tenancy::keys_api::routes`, `tenancy::users_api::routes`, `audit::routes`,
/// `registry::api::routes`, `config::api::routes`, `flags::api::routes`, `ledger::api::routes`) and `/eureka` (`eureka::routes`). `every_v1_route_is_mounted_and_in_the_spec` checks
/// this list against the router (each answers 401, other methods 405) and against the spec.
const V1_ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/orgs"),
    ("POST", "/v1/orgs"),
    ("GET", "/v1/orgs/{org}"),
    ("PATCH", "/v1/orgs/{org}"),
    ("DELETE", "/v1/orgs/{org}"),
    ("GET", "/v1/orgs/{org}/users"),
    ("POST", "/v1/orgs/{org}/users"),
    ("GET", "/v1/orgs/{org}/users/{user}"),
    ("PATCH", "/v1/orgs/{org}/users/{user}"),
    ("DELETE", "/v1/orgs/{org}/users/{user}"),
    ("PUT", "/v1/orgs/{org}/users/{user}/password"),
    ("GET", "/v1/orgs/{org}/keys"),
    ("POST", "/v1/orgs/{org}/keys"),
    ("GET", "/v1/tiers"),
    ("GET", "/v1/tiers/{name}"),
    ("PUT", "/v1/tiers/{name}"),
    ("DELETE", "/v1/tiers/{name}"),
    ("GET", "/v1/keys/{id}"),
    ("PATCH", "/v1/keys/{id}"),
    ("DELETE", "/v1/keys/{id}"),
    ("POST", "/v1/keys/{id}/rotate"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/registry/instances"),
    ("PUT", "/v1/registry/instances/{id}"),
    ("DELETE", "/v1/registry/instances/{id}"),
    ("POST", "/v1/registry/instances/{id}/heartbeat"),
    ("GET", "/v1/config/watch"),
    ("POST", "/v1/config/acks"),
    ("GET", "/v1/config/status"),
    ("GET", "/v1/config/versions"),
    ("GET", "/v1/config/versions/{version}"),
    ("GET", "/v1/config/base"),
    ("PUT", "/v1/config/base"),
    ("POST", "/v1/config/rollback"),
    ("GET", "/v1/flags"),
    ("GET", "/v1/flags/{name}"),
    ("PUT", "/v1/flags/{name}"),
    ("DELETE", "/v1/flags/{name}"),
    ("PUT", "/v1/flags/{name}/orgs/{org}"),
    ("DELETE", "/v1/flags/{name}/orgs/{org}"),
    ("GET", "/v1/flags/{name}/evaluate"),
    ("GET", "/v1/orgs/{org}/purchases"),
    ("POST", "/v1/orgs/{org}/purchases"),
    ("GET", "/v1/purchases/{id}"),
    ("GET", "/v1/sagas"),
    ("POST", "/v1/webhooks/payments"),
    // Plans and subscriptions (`billing::subscription_api::routes`).
    ("GET", "/v1/plans"),
    ("GET", "/v1/plans/{name}"),
    ("PUT", "/v1/plans/{name}"),
    ("GET", "/v1/orgs/{org}/subscription"),
    ("POST", "/v1/orgs/{org}/subscription"),
    ("PATCH", "/v1/orgs/{org}/subscription"),
    ("DELETE", "/v1/orgs/{org}/subscription"),
    // The ledger (`ledger::api::routes`, role `admin-api`).
    ("GET", "/v1/orgs/{org}/balance"),
    ("GET", "/v1/orgs/{org}/usage"),
    ("GET", "/v1/orgs/{org}/usage/top-keys"),
    ("GET", "/v1/orgs/{org}/anomalies"),
    ("GET", "/v1/orgs/{org}/statements"),
    ("GET", "/v1/orgs/{org}/ledger"),
    ("POST", "/v1/orgs/{org}/grants"),
    // Notifications (`notify::routes`, role `admin-api`).
    ("GET", "/v1/orgs/{org}/webhooks"),
    ("POST", "/v1/orgs/{org}/webhooks"),
    ("DELETE", "/v1/orgs/{org}/webhooks/{id}"),
    ("GET", "/v1/orgs/{org}/notification-settings"),
    ("PUT", "/v1/orgs/{org}/notification-settings"),
    // Identity's admin routes (`identity::api::routes`, merged by `identity::router`).
    ("POST", "/v1/identity/clients"),
    ("GET", "/v1/identity/clients"),
    ("DELETE", "/v1/identity/clients/{id}"),
    ("GET", "/v1/identity/keys"),
    ("POST", "/v1/identity/keys/rotate"),
    // The provider-credential vault (`identity::provider_credentials::routes`).
    ("GET", "/v1/provider-credentials"),
    ("PUT", "/v1/provider-credentials/{name}"),
    ("DELETE", "/v1/provider-credentials/{name}"),
    // The Eureka API (`eureka::routes`, under `/eureka`, role `registry`) is in the same spec.
    ("GET", "/eureka/apps"),
    ("GET", "/eureka/apps/delta"),
    ("POST", "/eureka/apps/{app}"),
    ("GET", "/eureka/apps/{app}"),
    ("GET", "/eureka/apps/{app}/{id}"),
    ("PUT", "/eureka/apps/{app}/{id}"),
    ("DELETE", "/eureka/apps/{app}/{id}"),
    ("PUT", "/eureka/apps/{app}/{id}/status"),
    ("DELETE", "/eureka/apps/{app}/{id}/status"),
];

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Routes authenticated by a signature instead of the admin token (missing: 400).
const SIGNED_ROUTES: &[(&str, &str)] = &[("POST", "/v1/webhooks/payments")];

fn spec_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json")
}

/// The control plane on a loopback port, over a lazy pool that points nowhere.
async fn serve() -> SocketAddr {
    let pool = db::pool("postgres://leaky@127.0.0.1:1/unused", 1).unwrap();
    let state = ApiState::new(pool, AdminToken::new("openapi-test-token"));
    state.set_migrated();
    let settings = identity::Settings::new("http://issuer", identity::MasterKeys::dev(), false);
    let clock = state.clock.clone();
    let identity = identity::Identity::new(settings, state.pool.clone(), clock, None).unwrap();
    let router = app::router(state.clone(), &Roles::all()).merge(identity::router(state, identity));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

async fn get(addr: SocketAddr, path: &str) -> reqwest::Response {
    reqwest::get(format!("http://{addr}{path}")).await.unwrap()
}

async fn served_spec(addr: SocketAddr) -> (String, Value) {
    let response = get(addr, "/openapi.json").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap();
    (text, value)
}

#[tokio::test]
async fn committed_spec_matches_the_served_one() {
    let addr = serve().await;
    let (served, _) = served_spec(addr).await;
    let path = spec_file();
    if std::env::var_os("LEAKY_UPDATE_OPENAPI").is_some_and(|v| !v.is_empty() && v != "0") {
        std::fs::write(&path, &served).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == served,
        "{} is out of date with the handlers' #[utoipa::path] attributes; regenerate it with\n\
         \n    LEAKY_UPDATE_OPENAPI=1 cargo test -p leaky-control-plane --test integration -- openapi::\n",
        path.display()
    );
    assert!(
        served.ends_with("}\n"),
        "pretty JSON with a trailing newline"
    );
}

#[tokio::test]
async fn spec_is_openapi_3_1_with_bearer_auth_and_a_tag_per_context() {
    let addr = serve().await;
    let (_, spec) = served_spec(addr).await;
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        spec["openapi"]
    );
    let scheme = &spec["components"]["securitySchemes"]["admin_token"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(spec["security"], serde_json::json!([{"admin_token": []}]));
    let tags: BTreeSet<&str> = spec["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tags,
        BTreeSet::from([
            "audit", "billing", "config", "eureka", "flags", "identity", "ledger", "notify",
            "registry", "tenancy", "usage",
        ])
    );
    let basic = &spec["components"]["securitySchemes"]["eureka_basic"];
    assert_eq!(basic["scheme"], "basic");
    // Contexts name handlers alike (`list`, `register`); operation ids must stay unique anyway.
    let mut ids = BTreeSet::new();
    for (method, path) in spec_operations(&spec) {
        let id = spec["paths"][&path][method.to_lowercase()]["operationId"]
            .as_str()
            .unwrap();
        assert!(ids.insert(id.to_owned()), "operationId {id} twice");
    }
    let problem = &spec["components"]["schemas"]["ProblemDetails"];
    for field in ["type", "title", "status", "detail"] {
        assert!(
            problem["properties"].get(field).is_some(),
            "ProblemDetails.{field}"
        );
    }
}

fn spec_operations(spec: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method.to_lowercase()).is_some() {
                ops.insert((method.to_owned(), path.clone()));
            }
        }
    }
    ops
}

/// `path` with each `{param}` filled in with a syntactically valid value.
fn concrete(path: &str) -> String {
    path.replace("{org}", "0f8fad5b-d9cb-469f-a165-70867728950e")
        .replace("{id}", "3d2c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a")
        .replace("{user}", "7c9e6679-7425-40de-944b-e07fc1f90ae7")
        .replace("{name}", "gold")
        .replace("{app}", "LEAKY-PROXY")
}

#[tokio::test]
async fn every_v1_route_is_mounted_and_in_the_spec() {
    let addr = serve().await;
    let (_, spec) = served_spec(addr).await;
    let listed: BTreeSet<(String, String)> = V1_ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        spec_operations(&spec),
        listed,
        "spec operations vs the router's /v1 routes"
    );

    let client = reqwest::Client::new();
    let paths: BTreeSet<&str> = V1_ROUTES.iter().map(|(_, p)| *p).collect();
    for path in paths {
        for method in METHODS {
            let url = format!("http://{addr}{}", concrete(path));
            let response = client
                .request(method.parse().unwrap(), &url)
                .send()
                .await
                .unwrap();
            let mounted = V1_ROUTES.contains(&(method, path));
            // A mounted route refuses the missing token (a webhook: the missing signature); any
            // other method on the path is 405.
            let expected = match (mounted, SIGNED_ROUTES.contains(&(method, path))) {
                (true, true) => 400,
                (true, false) => 401,
                (false, _) => 405,
            };
            assert_eq!(response.status(), expected, "{method} {path}");
        }
    }
}

/// The example of the only (or the JSON) media type of a `content` object.
fn first_example(content: &Value) -> &Value {
    let map = content.as_object().unwrap();
    let media = map.get("application/json").or_else(|| map.values().next());
    media.map_or(&Value::Null, |m| &m["example"])
}

/// The response object `r`, following a `$ref` into `components/responses`.
fn resolve<'a>(spec: &'a Value, r: &'a Value) -> &'a Value {
    match r["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/responses/");
            let resolved = &spec["components"]["responses"][name];
            assert!(resolved.is_object(), "dangling {reference}");
            resolved
        }
        None => r,
    }
}

fn check_operation(spec: &Value, method: &str, path: &str, op: &Value) {
    let what = format!("{method} {path}");
    let responses = op["responses"].as_object().unwrap();
    let success: Vec<&String> = responses
        .keys()
        .filter(|s| ["200", "201", "204"].contains(&s.as_str()))
        .collect();
    assert!(!success.is_empty(), "{what}: no 200/201/204 response");
    for status in success {
        // An empty success (204, or Eureka's bodiless 200) has nothing to exemplify.
        if status == "204" || responses[status].get("content").is_none() {
            continue;
        }
        let example = first_example(&responses[status]["content"]);
        assert!(!example.is_null(), "{what}: {status} has no example");
    }
    if let Some(body) = op.get("requestBody") {
        let example = first_example(&body["content"]);
        assert!(!example.is_null(), "{what}: request body has no example");
        // A JSON body can be malformed (400); every body can be too large, of the wrong type, invalid.
        let json = body["content"].get("application/json").is_some();
        let statuses: &[&str] = if json {
            &["400", "413", "415", "422"]
        } else {
            &["413", "415", "422"]
        };
        for &status in statuses {
            assert!(
                responses.contains_key(status),
                "{what}: body but no {status}"
            );
        }
    }
    if path.contains('{') {
        assert!(responses.contains_key("422"), "{what}: path id but no 422");
    }
    for status in ["401", "500", "503"] {
        assert!(responses.contains_key(status), "{what}: no {status}");
    }
    for (status, response) in responses {
        if status.starts_with('2') {
            continue;
        }
        let content = &resolve(spec, response)["content"]["application/problem+json"];
        assert_eq!(
            content["schema"]["$ref"], "#/components/schemas/ProblemDetails",
            "{what}: {status} is not problem+json"
        );
        let example = &content["example"];
        assert_eq!(
            example["status"].to_string(),
            *status,
            "{what}: {status} example"
        );
        assert!(example["type"]
            .as_str()
            .unwrap()
            .starts_with("https://leaky-tokens.dev/problems/"));
    }
}

#[tokio::test]
async fn every_operation_has_examples_and_documents_its_problems() {
    let addr = serve().await;
    let (_, spec) = served_spec(addr).await;
    for (method, path) in spec_operations(&spec) {
        let op = &spec["paths"][&path][method.to_lowercase()];
        check_operation(&spec, &method, &path, op);
    }
}

/// Every `src="…"` / `href="…"` value in `html`.
fn references(html: &str) -> Vec<String> {
    let mut refs = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for (at, _) in html.match_indices(attr) {
            let rest = &html[at + attr.len()..];
            refs.push(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    refs
}

#[tokio::test]
async fn docs_page_references_only_same_origin_urls() {
    let addr = serve().await;
    let response = get(addr, "/docs").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let html = response.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    let refs = references(&html);
    assert!(
        refs.contains(&"/docs/swagger-ui-bundle.js".to_owned()),
        "{refs:?}"
    );
    assert!(
        refs.contains(&"/docs/swagger-ui.css".to_owned()),
        "{refs:?}"
    );
    for r in &refs {
        assert!(
            r.starts_with('/') && !r.starts_with("//"),
            "not same-origin: {r}"
        );
        assert_eq!(get(addr, r).await.status(), 200, "{r}");
    }
    let init = get(addr, "/docs/swagger-ui-init.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(init.contains("url: \"/openapi.json\""), "{init}");
    assert!(
        !init.contains("http://") && !init.contains("https://"),
        "{init}"
    );
}

#[tokio::test]
async fn swagger_assets_are_served_with_their_types_and_a_long_cache() {
    let addr = serve().await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/swagger-ui");
    for (path, file, content_type) in [
        (
            "/docs/swagger-ui-bundle.js",
            "swagger-ui-bundle.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/docs/swagger-ui.css",
            "swagger-ui.css",
            "text/css; charset=utf-8",
        ),
        ("/docs/LICENSE", "LICENSE", "text/plain; charset=utf-8"),
    ] {
        let response = get(addr, path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
        let cache = response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(cache.contains("max-age=31536000"), "{path}: {cache}");
        let body = response.bytes().await.unwrap();
        assert_eq!(
            body.as_ref(),
            std::fs::read(dir.join(file)).unwrap(),
            "{path}"
        );
    }
}
