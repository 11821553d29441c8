//! RBAC on the admin API (issue 14, increment 2) on a real PostgreSQL, with access tokens minted by the
//! control plane's own authorization server: the enumeration over EVERY operation of the committed
//! OpenAPI spec (no token → 401, another org → 403/404, the right org without the permission → 403,
//! all problem+json, nothing changed), the positive paths (an org admin in its own org, the bootstrap
//! token as platform-admin), and tokens that stop working: revoked (real `redis-server`), expired (on
//! an injected clock), Redis down (503, fail closed); nested ids stay inside their `{org}`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use leaky_control_plane::clock::{Clock, ManualClock, SystemClock};
use leaky_control_plane::http::{AdminToken, ApiState};
use leaky_control_plane::identity::rbac::{self, Access, Role, Tenancy};
use leaky_control_plane::identity::{self, Identity, MasterKeys, Settings};
use leaky_control_plane::{app, db, Roles};
use leaky_limit::redis_server::RedisServer;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

struct Server {
    base: String,
    http: reqwest::Client,
    pool: PgPool,
}

async fn serve() -> Server {
    serve_with(Arc::new(SystemClock), None).await
}

async fn serve_with(clock: Arc<dyn Clock>, redis: Option<&str>) -> Server {
    let url = common::fresh_db().await.unwrap();
    let pool = db::pool(&url, 8).unwrap();
    db::migrate(&pool).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state =
        ApiState::new(pool.clone(), AdminToken::new(common::TOKEN)).with_clock(clock.clone());
    state.set_migrated();
    let settings = Settings::new(&base, MasterKeys::dev(), false);
    let identity = Identity::new(settings, pool.clone(), clock, redis).unwrap();
    identity.tick().await.unwrap();
    let router = identity::attach(app::router(state.clone(), &Roles::all()), state, identity)
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Server {
        base,
        http: reqwest::Client::new(),
        pool,
    }
}

impl Server {
    async fn call(&self, method: &str, path: &str, token: Option<&str>) -> reqwest::Response {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if method != Method::GET && method != Method::DELETE {
            req = req.json(&json!({}));
        }
        req.send().await.unwrap()
    }

    async fn admin_post(&self, path: &str, body: Value) -> Value {
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(common::TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "{path}: {}", res.text().await.unwrap());
        res.json().await.unwrap()
    }

    /// An access token of a new client of `org` holding `roles`, for `audience`.
    async fn token(&self, org: &str, roles: &[&str], audience: &str) -> String {
        self.client_token(org, roles, audience).await.0
    }

    /// [`Server::token`] with the client's id and secret.
    async fn client_token(
        &self,
        org: &str,
        roles: &[&str],
        audience: &str,
    ) -> (String, String, String) {
        let c = self
            .admin_post(
                "/v1/identity/clients",
                json!({"name": "t", "scopes": ["admin"], "audience": audience,
                       "org_id": org, "roles": roles}),
            )
            .await;
        let res = self
            .http
            .post(format!("{}/oauth2/token", self.base))
            .basic_auth(
                c["id"].as_str().unwrap(),
                Some(c["client_secret"].as_str().unwrap()),
            )
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let v: Value = res.json().await.unwrap();
        (
            v["access_token"].as_str().unwrap().to_owned(),
            c["id"].as_str().unwrap().to_owned(),
            c["client_secret"].as_str().unwrap().to_owned(),
        )
    }

    /// Row counts of every table of the API's schemas: "nothing changed" is these being equal.
    async fn counts(&self) -> Vec<(String, i64)> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables
             WHERE table_type = 'BASE TABLE'
               AND table_schema NOT IN ('pg_catalog', 'information_schema', 'public')
             ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap();
        let mut out = Vec::new();
        for t in tables {
            let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {t}"))
                .fetch_one(&self.pool)
                .await
                .unwrap();
            out.push((t, n));
        }
        out
    }
}

async fn assert_problem(res: reqwest::Response, status: &[u16], what: &str) {
    let got = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = res.text().await.unwrap();
    assert!(status.contains(&got), "{what}: {got} {body}");
    assert_eq!(ct, "application/problem+json", "{what}: {body}");
}

/// Every (method, path template, operation object) of the committed spec.
fn spec_operations() -> Vec<(String, String, Value)> {
    let spec: Value = serde_json::from_str(include_str!("../openapi.json")).unwrap();
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for m in ["get", "post", "put", "patch", "delete"] {
            if let Some(op) = item.get(m) {
                ops.push((m.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    ops
}

/// `template` with `{org}` → `org`, `{id}` → `id`, any other parameter → a placeholder.
fn fill(template: &str, org: &str, id: &str) -> String {
    let mut out = String::new();
    for seg in template.split('/').skip(1) {
        out.push('/');
        out.push_str(match seg {
            "{org}" => org,
            "{id}" => id,
            s if s.starts_with('{') => "x1",
            s => s,
        });
    }
    out
}

/// An org role of the right org lacking `p`, if any role lacks it.
fn role_without(p: rbac::Permission) -> Option<Role> {
    [Role::BillingViewer, Role::OrgMember, Role::OrgAdmin]
        .into_iter()
        .find(|r| !r.permissions().contains(&p))
}

#[tokio::test]
async fn every_spec_operation_refuses_the_unauthenticated_the_other_org_and_the_unpermitted() {
    let s = serve().await;
    let a = s.admin_post("/v1/orgs", json!({"name": "acme"})).await;
    let b = s.admin_post("/v1/orgs", json!({"name": "globex"})).await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let key = json!({"name": "k", "tier": "free"});
    let a_key = s
        .admin_post(&format!("/v1/orgs/{a}/keys"), key.clone())
        .await;
    let b_key = s.admin_post(&format!("/v1/orgs/{b}/keys"), key).await;
    let (a_key, b_key) = (a_key["id"].as_str().unwrap(), b_key["id"].as_str().unwrap());
    let aud = identity::ADMIN_AUDIENCE;
    let mut tokens = std::collections::HashMap::new();
    for r in [Role::OrgAdmin, Role::OrgMember, Role::BillingViewer] {
        tokens.insert(r, s.token(a, &[r.as_str()], aud).await);
    }
    let before = s.counts().await;
    let mut checked = 0;
    for (method, path, spec_op) in spec_operations() {
        let op = rbac::lookup(&method, &path)
            .unwrap_or_else(|| panic!("{method} {path}: no entry in the RBAC table"));
        let Access::Rbac(permission, tenancy) = op.access else {
            // Authenticated by their own scheme (signed webhook, Eureka Basic); not RBAC's to check.
            continue;
        };
        let what = |case: &str| format!("{method} {path} ({case})");
        // The spec says what the table enforces.
        assert_eq!(
            spec_op["security"],
            json!([{ "admin_token": [permission.as_str()] }]),
            "{}",
            what("spec security")
        );
        let described = spec_op["description"].as_str().unwrap_or_default();
        assert!(
            described.contains(&format!("`{permission}`")),
            "{}",
            what("description")
        );
        // Another org's object: b's key for key routes, a purchase id that is not a's.
        let other = fill(&path, b, b_key);
        let res = s.call(&method, &other, None).await;
        assert_problem(res, &[401], &what("no token")).await;
        let res = s.call(&method, &other, Some("not-a-token")).await;
        assert_problem(res, &[401], &what("garbage token")).await;
        let admin = &tokens[&Role::OrgAdmin];
        let res = s.call(&method, &other, Some(admin)).await;
        let expect: &[u16] = match tenancy {
            Tenancy::Owned(_) => &[404],
            _ => &[403],
        };
        assert_problem(res, expect, &what("another org")).await;
        if let Some(role) = role_without(permission) {
            let own = fill(&path, a, a_key);
            let res = s.call(&method, &own, Some(&tokens[&role])).await;
            let expect: &[u16] = match tenancy {
                // An owned purchase of a is not created here: the id names nothing, which is a 404.
                Tenancy::Owned(rbac::Owned::Purchase) => &[404],
                _ => &[403],
            };
            assert_problem(res, expect, &what(&format!("{role} lacks {permission}"))).await;
        }
        checked += 1;
    }
    assert!(checked > 50, "only {checked} operations checked");
    assert_eq!(s.counts().await, before, "a refused call changed something");
}

#[tokio::test]
async fn an_org_admin_works_in_its_own_org_and_only_with_an_admin_audience_token() {
    let s = serve().await;
    let a = s.admin_post("/v1/orgs", json!({"name": "acme"})).await;
    let a = a["id"].as_str().unwrap();
    let admin = s.token(a, &["org-admin"], identity::ADMIN_AUDIENCE).await;
    let res = s
        .call("GET", &format!("/v1/orgs/{a}/keys"), Some(&admin))
        .await;
    assert_eq!(res.status(), 200);
    let res = s.call("GET", &format!("/v1/orgs/{a}"), Some(&admin)).await;
    assert_eq!(res.status(), 200);
    let upper = a.to_uppercase();
    let res = s
        .call("GET", &format!("/v1/orgs/{upper}"), Some(&admin))
        .await;
    assert_eq!(res.status(), 200, "the org id compares canonically");
    // The same client kind minted for the gateway's audience is no admin credential.
    let gateway = s.token(a, &["org-admin"], "leaky-tokens").await;
    let res = s
        .call("GET", &format!("/v1/orgs/{a}"), Some(&gateway))
        .await;
    assert_problem(res, &[401], "gateway audience").await;
    // A platform admin token from the authorization server passes platform operations.
    let platform = s
        .token(a, &["platform-admin"], identity::ADMIN_AUDIENCE)
        .await;
    let res = s.call("GET", "/v1/orgs", Some(&platform)).await;
    assert_eq!(res.status(), 200);
    let res = s.call("GET", "/v1/orgs", Some(&admin)).await;
    assert_problem(res, &[403], "org admin listing orgs").await;
    // The bootstrap token still is platform-admin.
    let res = s.call("GET", "/v1/audit", Some(common::TOKEN)).await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn expired_and_revoked_tokens_are_refused_and_nested_ids_stay_in_their_org() {
    let mut redis = RedisServer::spawn().expect("redis-server");
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap(),
    ));
    let s = serve_with(clock.clone(), Some(&redis.url())).await;
    let a = s.admin_post("/v1/orgs", json!({"name": "acme"})).await;
    let b = s.admin_post("/v1/orgs", json!({"name": "globex"})).await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let user = json!({"email": "bob@globex.test"});
    let b_user = s.admin_post(&format!("/v1/orgs/{b}/users"), user).await;
    let b_user = b_user["id"].as_str().unwrap();
    let aud = identity::ADMIN_AUDIENCE;
    let (admin, id, secret) = s.client_token(a, &["org-admin"], aud).await;

    // Another org's user addressed under the caller's own org: the SQL is scoped to `{org}`, a 404.
    let path = format!("/v1/orgs/{a}/users/{b_user}");
    let res = s.call("DELETE", &path, Some(&admin)).await;
    assert_problem(res, &[404], "b's user under a's path").await;
    let res = s
        .call(
            "GET",
            &format!("/v1/orgs/{b}/users/{b_user}"),
            Some(common::TOKEN),
        )
        .await;
    assert_eq!(res.status(), 200, "b's user is untouched");

    // Revoked (RFC 7009 by its own client): refused at once.
    let res = s.call("GET", &format!("/v1/orgs/{a}"), Some(&admin)).await;
    assert_eq!(res.status(), 200);
    let res = s
        .http
        .post(format!("{}/oauth2/revoke", s.base))
        .basic_auth(&id, Some(&secret))
        .form(&[("token", admin.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = s.call("GET", &format!("/v1/orgs/{a}"), Some(&admin)).await;
    assert_problem(res, &[401], "revoked").await;

    // Expired: valid until its `exp` on the injected clock, refused from then on.
    let fresh = s.token(a, &["org-admin"], aud).await;
    clock.advance(Duration::seconds(599));
    let res = s.call("GET", &format!("/v1/orgs/{a}"), Some(&fresh)).await;
    assert_eq!(res.status(), 200);
    clock.advance(Duration::seconds(1));
    let res = s.call("GET", &format!("/v1/orgs/{a}"), Some(&fresh)).await;
    assert_problem(res, &[401], "expired").await;

    // Redis down: a token that might be revoked is not accepted (503), the bootstrap token still is.
    let fresh = s.token(a, &["org-admin"], aud).await;
    redis.kill();
    let res = s.call("GET", &format!("/v1/orgs/{a}"), Some(&fresh)).await;
    assert_problem(res, &[503], "revocation store down").await;
    let res = s
        .call("GET", &format!("/v1/orgs/{a}"), Some(common::TOKEN))
        .await;
    assert_eq!(res.status(), 200);
}
