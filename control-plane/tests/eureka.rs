//! The Eureka API over a real socket and a real PostgreSQL, with a manual clock (no sleeps): register,
//! renew, lease expiry to `DOWN`, cancel, full and delta fetches in JSON and XML, gateway instances
//! registered through `/v1` under the `LEAKY-*` apps, status overrides, Basic auth, and bad input.

use crate::common;

use std::sync::Arc;

use crate::common::{problem, TestApp};
use chrono::{Duration, TimeZone, Utc};
use leaky_control_plane::clock::ManualClock;
use leaky_control_plane::db;
use leaky_control_plane::http::{AdminToken, ApiState};
use reqwest::Method;
use serde_json::{json, Value};

async fn app() -> anyhow::Result<(TestApp, Arc<ManualClock>)> {
    let url = common::fresh_db().await?;
    let pool = db::pool(&url, 8)?;
    db::migrate(&pool).await?;
    let start = Utc
        .with_ymd_and_hms(2026, 1, 15, 9, 30, 0)
        .single()
        .ok_or_else(|| anyhow::anyhow!("bad start time"))?;
    let clock = Arc::new(ManualClock::new(start));
    let state = ApiState::new(pool, AdminToken::new(common::TOKEN)).with_clock(clock.clone());
    state.set_migrated();
    Ok((common::serve_state(url, state).await?, clock))
}

/// A request to `/eureka{path}` as Eureka clients send it: Basic auth with the admin token.
fn eureka(app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.http
        .request(method, format!("{}/eureka{path}", app.base))
        .basic_auth("admin", Some(common::TOKEN))
}

/// `{"instance": {...}}` as py_eureka_client registers `BILLING` on `10.0.0.9:8080`.
fn billing(id: &str) -> Value {
    json!({"instance": {
        "instanceId": id,
        "hostName": "billing-1.internal",
        "app": "BILLING",
        "ipAddr": "10.0.0.9",
        "status": "UP",
        "overriddenstatus": "UNKNOWN",
        "port": {"$": 8080, "@enabled": "true"},
        "securePort": {"$": 8443, "@enabled": "false"},
        "countryId": 1,
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
        "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90},
        "metadata": {"management.port": "8080", "version": "2.3.1"},
        "vipAddress": "billing",
        "lastUpdatedTimestamp": "1768469400000",
        "lastDirtyTimestamp": "1768469400000"
    }})
}

async fn register(app: &TestApp, name: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
    let path = format!("/apps/{name}");
    Ok(eureka(app, Method::POST, &path).json(body).send().await?)
}

/// A GET of `/eureka{path}` asking for JSON; asserts 200.
async fn get_json(app: &TestApp, path: &str) -> anyhow::Result<Value> {
    let res = eureka(app, Method::GET, path)
        .header("accept", "application/json")
        .send()
        .await?;
    assert_eq!(res.status(), 200, "GET /eureka{path}");
    Ok(res.json().await?)
}

/// Every instance of `/eureka/apps`, as `(app, instance)`.
async fn listed(app: &TestApp) -> anyhow::Result<Vec<(String, Value)>> {
    let doc = get_json(app, "/apps").await?;
    let mut out = Vec::new();
    for a in doc["applications"]["application"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        for i in a["instance"].as_array().cloned().unwrap_or_default() {
            out.push((a["name"].as_str().unwrap_or("").to_owned(), i));
        }
    }
    Ok(out)
}

async fn v1_items(app: &TestApp) -> anyhow::Result<Vec<Value>> {
    let body: Value = app.get("/v1/registry/instances").await?.json().await?;
    Ok(body["items"].as_array().cloned().unwrap_or_default())
}

async fn rows(app: &TestApp) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM registry.instances")
            .fetch_one(&app.pool)
            .await?,
    )
}

#[tokio::test]
async fn register_renew_expire_and_cancel_through_eureka() -> anyhow::Result<()> {
    let (app, clock) = app().await?;
    assert_eq!(
        register(&app, "billing", &billing("billing-1"))
            .await?
            .status(),
        204
    );

    let all = listed(&app).await?;
    assert_eq!(all.len(), 1, "{all:?}");
    let (name, i) = &all[0];
    assert_eq!(name, "BILLING");
    assert_eq!(i["instanceId"], "billing-1");
    assert_eq!(i["status"], "UP");
    assert_eq!(i["port"], json!({"$": 8080, "@enabled": "true"}));
    assert_eq!(i["metadata"]["management.port"], "8080");
    assert_eq!(i["leaseInfo"]["durationInSecs"], 90);
    assert_eq!(
        i["leaseInfo"]["registrationTimestamp"],
        1_768_469_400_000_i64
    );
    // One truth: `/v1` lists the same instance.
    let v1 = v1_items(&app).await?;
    assert_eq!(v1.len(), 1, "{v1:?}");
    assert_eq!(v1[0]["app"], "BILLING");
    assert_eq!(v1[0]["role"], "billing");
    assert_eq!(v1[0]["address"], "10.0.0.9:8080");
    assert_eq!(v1[0]["version"], "2.3.1");

    // The client's own 90 s lease, not the registry's 30 s: up at 90 s, DOWN after.
    clock.advance(Duration::seconds(90));
    assert_eq!(listed(&app).await?[0].1["status"], "UP");
    clock.advance(Duration::seconds(1));
    assert_eq!(listed(&app).await?[0].1["status"], "DOWN");
    assert_eq!(v1_items(&app).await?[0]["status"], "down");
    let renew = eureka(
        &app,
        Method::PUT,
        "/apps/BILLING/billing-1?status=UP&lastDirtyTimestamp=1",
    );
    assert_eq!(renew.send().await?.status(), 200);
    let (_, i) = &listed(&app).await?[0];
    assert_eq!(i["status"], "UP");
    assert_eq!(
        i["leaseInfo"]["lastRenewalTimestamp"],
        1_768_469_491_000_i64
    );

    let res = eureka(&app, Method::DELETE, "/apps/billing/billing-1")
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    assert!(listed(&app).await?.is_empty());
    let res = eureka(&app, Method::GET, "/apps/BILLING").send().await?;
    problem(res, 404, "not-found").await?;
    // A renew of an unknown instance is 404, so the client registers again.
    let res = eureka(&app, Method::PUT, "/apps/BILLING/billing-1")
        .send()
        .await?;
    problem(res, 404, "not-found").await?;
    let res = eureka(&app, Method::DELETE, "/apps/BILLING/billing-1")
        .send()
        .await?;
    problem(res, 404, "not-found").await?;
    let actions: Vec<(String, String)> =
        sqlx::query_as("SELECT actor, action FROM audit.events ORDER BY id")
            .fetch_all(&app.pool)
            .await?;
    let register = ("bootstrap-admin".to_owned(), "instance.register".to_owned());
    let cancel = ("bootstrap-admin".to_owned(), "instance.cancel".to_owned());
    assert_eq!(actions, [register, cancel]);
    Ok(())
}

#[tokio::test]
async fn gateway_instances_registered_through_v1_are_leaky_apps() -> anyhow::Result<()> {
    let (app, _) = app().await?;
    let proxy = json!({"role": "proxy", "address": "10.0.0.7:8080", "version": "0.4.0", "config_version": 7});
    let res = app
        .req(Method::PUT, "/v1/registry/instances/proxy-1")
        .json(&proxy)
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    let cp = json!({"role": "control-plane", "address": "10.0.0.2:9300", "version": "0.1.0"});
    let res = app
        .req(Method::PUT, "/v1/registry/instances/cp-1")
        .json(&cp)
        .send()
        .await?;
    assert_eq!(res.status(), 201);

    let doc = get_json(&app, "/apps/leaky-proxy").await?;
    assert_eq!(doc["application"]["name"], "LEAKY-PROXY");
    let i = &doc["application"]["instance"][0];
    assert_eq!(i["instanceId"], "proxy-1");
    assert_eq!(i["app"], "LEAKY-PROXY");
    assert_eq!(i["ipAddr"], "10.0.0.7");
    assert_eq!(i["port"], json!({"$": 8080, "@enabled": "true"}));
    assert_eq!(i["status"], "UP");
    assert_eq!(
        i["metadata"],
        json!({"role": "proxy", "version": "0.4.0", "config_version": "7"})
    );
    let one = get_json(&app, "/apps/LEAKY-CONTROL-PLANE/cp-1").await?;
    assert_eq!(one["instance"]["hostName"], "10.0.0.2");

    // Without `Accept: application/json`: Eureka's default XML, as py_eureka_client parses it.
    let res = eureka(&app, Method::GET, "/apps/").send().await?;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/xml");
    let xml = res.text().await?;
    assert!(xml.starts_with("<?xml"), "{xml}");
    for part in [
        "<applications><versions__delta>2</versions__delta><apps__hashcode>UP_2_</apps__hashcode>",
        "<application><name>LEAKY-CONTROL-PLANE</name><instance><instanceId>cp-1</instanceId>",
        "<port enabled=\"true\">8080</port>",
        "<dataCenterInfo class=\"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo\">",
    ] {
        assert!(xml.contains(part), "{part} not in {xml}");
    }
    Ok(())
}

#[tokio::test]
async fn an_app_cannot_take_over_a_live_instance_of_another_app() -> anyhow::Result<()> {
    let (app, clock) = app().await?;
    let proxy = json!({"role": "proxy", "address": "10.0.0.7:8080", "version": "0.4.0"});
    let put = || async {
        let path = "/v1/registry/instances/proxy-1";
        app.req(Method::PUT, path).json(&proxy).send().await
    };
    assert_eq!(put().await?.status(), 201);
    let res = register(&app, "BILLING", &billing("proxy-1")).await?;
    problem(res, 409, "conflict").await?;
    let analytics = json!({"role": "analytics", "address": "a:1", "version": "1"});
    let res = app
        .req(Method::PUT, "/v1/registry/instances/proxy-1")
        .json(&analytics)
        .send()
        .await?;
    problem(res, 409, "conflict").await?;
    assert_eq!(v1_items(&app).await?[0]["app"], "LEAKY-PROXY");
    // Once the proxy has expired, the id is free again.
    clock.advance(Duration::minutes(11));
    assert_eq!(
        register(&app, "BILLING", &billing("proxy-1"))
            .await?
            .status(),
        204
    );
    assert_eq!(v1_items(&app).await?[0]["app"], "BILLING");
    assert_eq!(app.audit_count().await?, 2);
    Ok(())
}

#[tokio::test]
async fn delta_is_the_full_set_with_revision_and_hashcode() -> anyhow::Result<()> {
    let (app, clock) = app().await?;
    let before = get_json(&app, "/apps/delta").await?;
    assert_eq!(before["applications"]["apps__hashcode"], "");
    register(&app, "BILLING", &billing("b-1")).await?;
    register(&app, "BILLING", &billing("b-2")).await?;
    let after = get_json(&app, "/apps/delta").await?;
    let version = |d: &Value| {
        d["applications"]["versions__delta"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert_ne!(version(&before), version(&after));
    assert_eq!(after["applications"]["apps__hashcode"], "UP_2_");
    let instances = &after["applications"]["application"][0]["instance"];
    assert_eq!(instances.as_array().map(Vec::len), Some(2));
    assert_eq!(instances[0]["actionType"], "ADDED");
    // Renewals change nothing a client must refetch; a lapsed lease changes the hashcode.
    clock.advance(Duration::seconds(60));
    eureka(&app, Method::PUT, "/apps/BILLING/b-1")
        .send()
        .await?;
    clock.advance(Duration::seconds(31));
    let later = get_json(&app, "/apps/delta").await?;
    assert_eq!(version(&later), version(&after));
    assert_eq!(later["applications"]["apps__hashcode"], "DOWN_1_UP_1_");
    Ok(())
}

#[tokio::test]
async fn status_override_takes_an_instance_out_of_service_and_back() -> anyhow::Result<()> {
    let (app, _) = app().await?;
    register(&app, "BILLING", &billing("b-1")).await?;
    let path = "/apps/BILLING/b-1/status?value=OUT_OF_SERVICE";
    assert_eq!(eureka(&app, Method::PUT, path).send().await?.status(), 200);
    let i = get_json(&app, "/apps/BILLING/b-1").await?;
    assert_eq!(i["instance"]["status"], "OUT_OF_SERVICE");
    assert_eq!(i["instance"]["overriddenStatus"], "OUT_OF_SERVICE");
    // A renewal does not end an override; deleting it does.
    eureka(&app, Method::PUT, "/apps/BILLING/b-1?status=UP")
        .send()
        .await?;
    let i = get_json(&app, "/apps/BILLING/b-1").await?;
    assert_eq!(i["instance"]["status"], "OUT_OF_SERVICE");
    let res = eureka(&app, Method::DELETE, "/apps/BILLING/b-1/status")
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    let i = get_json(&app, "/apps/BILLING/b-1").await?;
    assert_eq!(i["instance"]["status"], "UP");
    assert_eq!(i["instance"]["overriddenStatus"], "UNKNOWN");

    let res = eureka(&app, Method::PUT, "/apps/BILLING/b-1/status?value=HAPPY")
        .send()
        .await?;
    assert_eq!(
        common::fields(&problem(res, 422, "validation").await?),
        ["value"]
    );
    let res = eureka(&app, Method::PUT, "/apps/BILLING/nobody/status?value=UP")
        .send()
        .await?;
    problem(res, 404, "not-found").await?;
    Ok(())
}

#[tokio::test]
async fn bad_registrations_are_422_naming_the_field_and_write_nothing() -> anyhow::Result<()> {
    let (app, _) = app().await?;
    let with = |pointer: &str, value: Value| {
        let mut body = billing("b-1");
        if let Some(slot) = body.pointer_mut(pointer) {
            *slot = value;
        }
        body
    };
    let mut no_host = billing("b-1");
    if let Some(instance) = no_host["instance"].as_object_mut() {
        instance.remove("hostName");
    }
    let cases = [
        ("BILLING", no_host, "instance.hostName"),
        (
            "BILLING",
            with("/instance/port/$", json!(70000)),
            "instance.port.$",
        ),
        (
            "BILLING",
            with("/instance/status", json!("HAPPY")),
            "instance.status",
        ),
        (
            "BILLING",
            with("/instance/app", json!("OTHER")),
            "instance.app",
        ),
        (
            "BILLING",
            with("/instance/instanceId", json!("a b")),
            "instance.instanceId",
        ),
        (
            "BILLING",
            with("/instance/leaseInfo/durationInSecs", json!(0)),
            "instance.leaseInfo.durationInSecs",
        ),
        ("BILL%20ING", billing("b-1"), "app"),
        (
            "BILLING",
            json!({"instance": billing("b-1")["instance"], "extra": 1}),
            "extra",
        ),
    ];
    for (name, body, field) in cases {
        let res = register(&app, name, &body).await?;
        let body = problem(res, 422, "validation").await?;
        assert_eq!(common::fields(&body), [field], "{body}");
    }
    let res = eureka(&app, Method::POST, "/apps/BILLING")
        .header("content-type", "application/json")
        .body("{\"instance\": ")
        .send()
        .await?;
    problem(res, 400, "malformed-json").await?;
    let res = eureka(&app, Method::PUT, "/apps/BILLING/b-1?status=HAPPY")
        .send()
        .await?;
    assert_eq!(
        common::fields(&problem(res, 422, "validation").await?),
        ["status"]
    );
    assert_eq!(rows(&app).await?, 0);
    assert_eq!(app.audit_count().await?, 0);
    Ok(())
}

#[tokio::test]
async fn eureka_accepts_the_admin_token_as_bearer_or_basic_password_only() -> anyhow::Result<()> {
    let (app, _) = app().await?;
    let url = format!("{}/eureka/apps", app.base);
    let res = app.http.get(&url).send().await?;
    assert_eq!(res.headers()["www-authenticate"], "Basic realm=\"eureka\"");
    problem(res, 401, "unauthorized").await?;
    let res = app
        .http
        .get(&url)
        .basic_auth("admin", Some("wrong"))
        .send()
        .await?;
    problem(res, 401, "unauthorized").await?;
    let res = app.http.get(&url).bearer_auth("wrong").send().await?;
    problem(res, 401, "unauthorized").await?;
    let res = app
        .http
        .post(format!("{url}/BILLING"))
        .json(&billing("b-1"))
        .send()
        .await?;
    problem(res, 401, "unauthorized").await?;
    assert_eq!(
        app.http
            .get(&url)
            .basic_auth("anyone", Some(common::TOKEN))
            .send()
            .await?
            .status(),
        200
    );
    assert_eq!(
        app.http
            .get(&url)
            .bearer_auth(common::TOKEN)
            .send()
            .await?
            .status(),
        200
    );
    assert_eq!(rows(&app).await?, 0);
    Ok(())
}

/// The status of an unauthenticated `GET path` on a router for `roles` (no database: the auth or the
/// fallback answers first).
async fn status_for(roles: &str, path: &str) -> anyhow::Result<u16> {
    let pool = db::pool("postgres://leaky@127.0.0.1:1/unused", 1)?;
    let state = ApiState::new(pool, AdminToken::new(common::TOKEN));
    state.set_migrated();
    let roles: leaky_control_plane::Roles = roles.parse().map_err(anyhow::Error::msg)?;
    let router = leaky_control_plane::app::router(state, &roles);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(reqwest::get(format!("http://{addr}{path}"))
        .await?
        .status()
        .as_u16())
}

#[tokio::test]
async fn registry_role_alone_serves_the_registry_and_eureka_only() -> anyhow::Result<()> {
    // 401: mounted (refused without a token); 404: not mounted in this process.
    assert_eq!(status_for("registry", "/eureka/apps").await?, 401);
    assert_eq!(status_for("registry", "/v1/registry/instances").await?, 401);
    assert_eq!(status_for("registry", "/v1/orgs").await?, 404);
    assert_eq!(status_for("admin-api", "/eureka/apps").await?, 404);
    assert_eq!(
        status_for("admin-api", "/v1/registry/instances").await?,
        404
    );
    assert_eq!(status_for("admin-api", "/v1/orgs").await?, 401);
    Ok(())
}
