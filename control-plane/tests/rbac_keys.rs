//! Admin access by API key (issue 14) on a real PostgreSQL: a key is a data-plane credential only
//! unless it was granted admin roles at creation (never by default); then the admin API accepts it as
//! a bearer credential with exactly those roles, in its own org only: every platform operation and
//! every other org's object is refused (403/404, problem+json), a revoked key is 401 again, and a key
//! never carries more than its creator holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::net::SocketAddr;

use leaky_control_plane::http::{AdminToken, ApiState};
use leaky_control_plane::identity::rbac::{Access, Tenancy, OPERATIONS};
use leaky_control_plane::identity::{self, Identity, MasterKeys, Settings};
use leaky_control_plane::{app, db, Roles};
use reqwest::Method;
use serde_json::{json, Value};

struct Server {
    base: String,
    http: reqwest::Client,
}

async fn serve() -> Server {
    let url = common::fresh_db().await.unwrap();
    let pool = db::pool(&url, 8).unwrap();
    db::migrate(&pool).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = ApiState::new(pool.clone(), AdminToken::new(common::TOKEN));
    state.set_migrated();
    let settings = Settings::new(&base, MasterKeys::dev(), false);
    let id = Identity::new(settings, pool, state.clock.clone(), None).unwrap();
    let router = identity::attach(app::router(state.clone(), &Roles::all()), state, id)
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Server {
        base,
        http: reqwest::Client::new(),
    }
}

impl Server {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        } else if method != Method::GET && method != Method::DELETE {
            req = req.json(&json!({}));
        }
        req.send().await.unwrap()
    }

    async fn created(&self, path: &str, token: &str, body: Value) -> Value {
        let res = self.call("POST", path, token, Some(body)).await;
        assert_eq!(res.status(), 201, "{path}: {}", res.text().await.unwrap());
        res.json().await.unwrap()
    }

    /// A new key of `org` granted `roles`, created by `by`: `(id, key)`.
    async fn key(&self, org: &str, roles: &[&str], by: &str) -> (String, String) {
        let v = self
            .created(
                &format!("/v1/orgs/{org}/keys"),
                by,
                json!({"name": "k", "tier": "pro", "admin_roles": roles}),
            )
            .await;
        let granted: Vec<&str> = v["admin_roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert_eq!(granted, roles);
        (
            v["id"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        )
    }
}

async fn status(res: reqwest::Response, want: u16, what: &str) {
    let got = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = res.text().await.unwrap();
    assert_eq!(got, want, "{what}: {body}");
    if want >= 400 {
        assert_eq!(ct, "application/problem+json", "{what}: {body}");
    }
}

/// `template` with `{org}` → `org`, `{id}` → `id`, any other parameter → a placeholder.
fn fill(template: &str, org: &str, id: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{org}" => org,
            "{id}" => id,
            s if s.starts_with('{') => "x1",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn a_key_is_an_admin_credential_only_with_roles_granted_and_only_in_its_org() {
    let s = serve().await;
    let root = common::TOKEN;
    let a = s.created("/v1/orgs", root, json!({"name": "acme"})).await;
    let b = s.created("/v1/orgs", root, json!({"name": "globex"})).await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());

    // A plain key (the default): no admin roles, refused on the admin API.
    let plain = s
        .created(
            &format!("/v1/orgs/{a}/keys"),
            root,
            json!({"name": "p", "tier": "pro"}),
        )
        .await;
    assert_eq!(plain["admin_roles"], json!([]));
    let plain = plain["key"].as_str().unwrap();
    status(
        s.call("GET", &format!("/v1/orgs/{a}"), plain, None).await,
        403,
        "plain key",
    )
    .await;
    let forged = "lt-AAAAAAAA_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    status(
        s.call("GET", &format!("/v1/orgs/{a}"), forged, None).await,
        401,
        "unknown key",
    )
    .await;

    // An org-admin key works in its org.
    let (admin_id, admin) = s.key(a, &["org-admin"], root).await;
    let (b_key, _) = s.key(b, &[], root).await;
    status(
        s.call("GET", &format!("/v1/orgs/{a}"), &admin, None).await,
        200,
        "own org",
    )
    .await;
    status(
        s.call("GET", &format!("/v1/orgs/{a}/keys"), &admin, None)
            .await,
        200,
        "own keys",
    )
    .await;
    // ...may hand out roles it holds, not platform-admin...
    let (_, member) = s.key(a, &["org-member"], &admin).await;
    let res = s
        .call(
            "POST",
            &format!("/v1/orgs/{a}/keys"),
            &admin,
            Some(json!({"name": "x", "tier": "pro", "admin_roles": ["platform-admin"]})),
        )
        .await;
    status(res, 403, "granting platform-admin").await;
    // ...and never reaches another org or the platform.
    status(
        s.call("GET", &format!("/v1/orgs/{b}"), &admin, None).await,
        403,
        "other org",
    )
    .await;
    status(
        s.call("GET", &format!("/v1/keys/{b_key}"), &admin, None)
            .await,
        404,
        "other org's key",
    )
    .await;
    for op in OPERATIONS {
        if let Access::Rbac(_, Tenancy::Platform) = op.access {
            let path = fill(op.path, a, &admin_id);
            let res = s.call(op.method, &path, &admin, None).await;
            status(res, 403, &format!("{} {}", op.method, op.path)).await;
        }
    }

    // An org-member key reads, but cannot write nor grant.
    status(
        s.call("GET", &format!("/v1/orgs/{a}/keys"), &member, None)
            .await,
        200,
        "member reads",
    )
    .await;
    let res = s
        .call(
            "POST",
            &format!("/v1/orgs/{a}/keys"),
            &member,
            Some(json!({"name": "x", "tier": "pro"})),
        )
        .await;
    status(res, 403, "member writes").await;

    // Unknown role names are refused; so is a revoked admin key.
    let res = s
        .call(
            "POST",
            &format!("/v1/orgs/{a}/keys"),
            root,
            Some(json!({"name": "x", "tier": "pro", "admin_roles": ["root"]})),
        )
        .await;
    status(res, 422, "unknown role").await;
    status(
        s.call("DELETE", &format!("/v1/keys/{admin_id}"), root, None)
            .await,
        204,
        "revoke",
    )
    .await;
    status(
        s.call("GET", &format!("/v1/orgs/{a}"), &admin, None).await,
        401,
        "revoked key",
    )
    .await;
}
