//! The service registry through the admin API over a real socket, with a manual clock in the app state
//! (no sleeps as proof): register, heartbeat, `up` → `down` → expired, idempotent re-register, cancel,
//! the refusals (unknown id, bad input, no token), the expiry sweep (concurrent replicas, and its
//! background loop), and the control plane registering itself and cancelling on shutdown.

use crate::common;

use std::sync::Arc;

use crate::common::{problem, TestApp};
use chrono::{Duration, TimeZone, Utc};
use leaky_control_plane::clock::Clock;
use leaky_control_plane::clock::ManualClock;
use leaky_control_plane::http::{AdminToken, ApiState};
use leaky_control_plane::{db, registry};
use reqwest::Method;
use serde_json::{json, Value};

/// A migrated fresh database with the API in front of it, reading time from the returned clock.
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

fn proxy(config_version: Option<i64>) -> Value {
    let mut body = json!({"role": "proxy", "address": "10.0.0.7:8080", "version": "0.4.0"});
    if let Some(v) = config_version {
        body["config_version"] = json!(v);
    }
    body
}

async fn put(app: &TestApp, id: &str, body: Value) -> anyhow::Result<reqwest::Response> {
    let path = format!("/v1/registry/instances/{id}");
    Ok(app.req(Method::PUT, &path).json(&body).send().await?)
}

async fn heartbeat(
    app: &TestApp,
    id: &str,
    body: Option<Value>,
) -> anyhow::Result<reqwest::Response> {
    let path = format!("/v1/registry/instances/{id}/heartbeat");
    let mut req = app.req(Method::POST, &path);
    if let Some(b) = body {
        req = req.json(&b);
    }
    Ok(req.send().await?)
}

async fn items(app: &TestApp, query: &str) -> anyhow::Result<Vec<Value>> {
    let res = app.get(&format!("/v1/registry/instances{query}")).await?;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await?;
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
async fn registered_instance_is_listed_up_and_heartbeat_updates_config_version(
) -> anyhow::Result<()> {
    let (app, clock) = app().await?;
    let res = put(&app, "proxy-1", proxy(Some(7))).await?;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await?;
    assert_eq!(created["status"], "up");
    assert_eq!(created["registered_at"], "2026-01-15T09:30:00Z");
    assert_eq!(created["started_at"], "2026-01-15T09:30:00Z");
    put(
        &app,
        "analytics-1",
        json!({"role": "analytics", "address": "a:1", "version": "1"}),
    )
    .await?;

    let listed = items(&app, "?role=proxy").await?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], "proxy-1");
    assert_eq!(listed[0]["status"], "up");
    assert_eq!(listed[0]["config_version"], 7);
    assert_eq!(items(&app, "").await?.len(), 2);

    clock.advance(Duration::seconds(20));
    assert_eq!(
        heartbeat(&app, "proxy-1", Some(json!({"config_version": 8})))
            .await?
            .status(),
        204
    );
    clock.advance(Duration::seconds(20));
    // An empty heartbeat keeps the config version.
    assert_eq!(heartbeat(&app, "proxy-1", None).await?.status(), 204);
    let listed = items(&app, "?role=proxy").await?;
    assert_eq!(listed[0]["config_version"], 8);
    assert_eq!(listed[0]["last_heartbeat_at"], "2026-01-15T09:30:40Z");
    assert_eq!(listed[0]["status"], "up");
    // Register is audited, heartbeats are not.
    assert_eq!(app.audit_count().await?, 2);
    Ok(())
}

#[tokio::test]
async fn silent_instance_goes_down_after_30s_and_is_gone_after_10min() -> anyhow::Result<()> {
    let (app, clock) = app().await?;
    assert_eq!(put(&app, "proxy-1", proxy(None)).await?.status(), 201);
    clock.advance(Duration::seconds(30));
    assert_eq!(items(&app, "").await?[0]["status"], "up");
    clock.advance(Duration::seconds(1));
    assert_eq!(items(&app, "").await?[0]["status"], "down");
    clock.advance(Duration::minutes(11) - Duration::seconds(31));
    assert!(items(&app, "").await?.is_empty());
    assert_eq!(
        rows(&app).await?,
        0,
        "the listing deletes expired instances"
    );
    // Expired: a heartbeat is refused, the instance registers again.
    problem(heartbeat(&app, "proxy-1", None).await?, 404, "not-found").await?;
    assert_eq!(put(&app, "proxy-1", proxy(None)).await?.status(), 201);
    Ok(())
}

#[tokio::test]
async fn re_register_is_idempotent_one_row() -> anyhow::Result<()> {
    let (app, clock) = app().await?;
    assert_eq!(put(&app, "proxy-1", proxy(Some(1))).await?.status(), 201);
    clock.advance(Duration::seconds(45));
    let res = put(&app, "proxy-1", proxy(Some(2))).await?;
    assert_eq!(res.status(), 200);
    let again: Value = res.json().await?;
    assert_eq!(again["config_version"], 2);
    assert_eq!(again["registered_at"], "2026-01-15T09:30:00Z");
    assert_eq!(again["last_heartbeat_at"], "2026-01-15T09:30:45Z");
    assert_eq!(again["status"], "up");
    assert_eq!(put(&app, "proxy-1", proxy(Some(2))).await?.status(), 200);
    assert_eq!(rows(&app).await?, 1);
    assert_eq!(items(&app, "").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn heartbeat_of_unknown_instance_is_404() -> anyhow::Result<()> {
    let (app, _) = app().await?;
    let body = problem(heartbeat(&app, "nobody", None).await?, 404, "not-found").await?;
    assert!(
        body["detail"].as_str().unwrap_or("").contains("nobody"),
        "{body}"
    );
    assert_eq!(rows(&app).await?, 0);
    Ok(())
}

#[tokio::test]
async fn cancel_removes_the_instance_and_is_idempotent() -> anyhow::Result<()> {
    let (app, _) = app().await?;
    put(&app, "proxy-1", proxy(None)).await?;
    for _ in 0..2 {
        let res = app
            .req(Method::DELETE, "/v1/registry/instances/proxy-1")
            .send()
            .await?;
        assert_eq!(res.status(), 204);
    }
    assert!(items(&app, "").await?.is_empty());
    assert_eq!(rows(&app).await?, 0);
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit.events ORDER BY id")
        .fetch_all(&app.pool)
        .await?;
    assert_eq!(actions, ["instance.register", "instance.cancel"]);
    Ok(())
}

#[tokio::test]
async fn bad_input_is_422_naming_the_field_and_writes_nothing() -> anyhow::Result<()> {
    let (app, _) = app().await?;
    let cases = [
        (
            "proxy-1",
            json!({"role": "gateway", "address": "a:1", "version": "1"}),
            "role",
        ),
        (
            "proxy-1",
            json!({"role": "proxy", "address": "a:1", "version": "1", "zone": "eu"}),
            "zone",
        ),
        (
            "proxy-1",
            json!({"role": "proxy", "address": "", "version": "1"}),
            "address",
        ),
        (
            "proxy-1",
            json!({"role": "proxy", "address": "a:1", "version": "1", "config_version": -1}),
            "config_version",
        ),
        (
            "bad%20id",
            json!({"role": "proxy", "address": "a:1", "version": "1"}),
            "id",
        ),
    ];
    for (id, body, field) in cases {
        let res = put(&app, id, body).await?;
        assert_eq!(
            common::fields(&problem(res, 422, "validation").await?),
            [field]
        );
    }
    let res = heartbeat(&app, "proxy-1", Some(json!({"config_version": 1, "x": 1}))).await?;
    assert_eq!(
        common::fields(&problem(res, 422, "validation").await?),
        ["x"]
    );
    let res = app.get("/v1/registry/instances?role=gateway").await?;
    assert_eq!(
        common::fields(&problem(res, 422, "validation").await?),
        ["role"]
    );
    assert_eq!(rows(&app).await?, 0);
    assert_eq!(app.audit_count().await?, 0);
    Ok(())
}

#[tokio::test]
async fn no_token_is_401() -> anyhow::Result<()> {
    let (app, _) = app().await?;
    let url = format!("{}/v1/registry/instances/proxy-1", app.base);
    let res = app.http.put(&url).json(&proxy(None)).send().await?;
    problem(res, 401, "unauthorized").await?;
    let res = app.http.post(format!("{url}/heartbeat")).send().await?;
    problem(res, 401, "unauthorized").await?;
    let res = app
        .http
        .get(format!("{}/v1/registry/instances", app.base))
        .send()
        .await?;
    problem(res, 401, "unauthorized").await?;
    assert_eq!(rows(&app).await?, 0);
    Ok(())
}

async fn register_at(app: &TestApp, id: &str) -> anyhow::Result<()> {
    assert_eq!(put(app, id, proxy(None)).await?.status(), 201);
    Ok(())
}

/// Ids of the rows in the table (not the listing, which would delete expired rows itself).
async fn row_ids(app: &TestApp) -> anyhow::Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM registry.instances ORDER BY id")
            .fetch_all(&app.pool)
            .await?,
    )
}

#[tokio::test]
async fn sweep_deletes_only_expired_instances_and_replicas_may_sweep_at_once() -> anyhow::Result<()>
{
    let (app, clock) = app().await?;
    register_at(&app, "old").await?;
    register_at(&app, "renewed").await?;
    clock.advance(Duration::minutes(5));
    assert_eq!(heartbeat(&app, "renewed", None).await?.status(), 204);
    clock.advance(Duration::minutes(5));
    // Exactly 10 min: not yet expired.
    let none = registry::sweep(&app.pool, clock.now()).await;
    assert_eq!(none.map_err(|p| anyhow::anyhow!("sweep: {}", p.detail))?, 0);
    clock.advance(Duration::seconds(1));
    let now = clock.now();
    // Three replicas sweep at the same moment: one row goes, once, and none fails.
    let (a, b, c) = tokio::join!(
        registry::sweep(&app.pool, now),
        registry::sweep(&app.pool, now),
        registry::sweep(&app.pool, now)
    );
    let removed = [a, b, c]
        .into_iter()
        .map(|r| r.map_err(|p| anyhow::anyhow!("sweep: {}", p.detail)))
        .sum::<anyhow::Result<u64>>()?;
    assert_eq!(removed, 1);
    assert_eq!(row_ids(&app).await?, ["renewed"]);
    Ok(())
}

#[tokio::test]
async fn background_sweep_removes_expired_instances_on_its_own() -> anyhow::Result<()> {
    let (app, clock) = app().await?;
    register_at(&app, "silent").await?;
    clock.advance(Duration::minutes(11));
    register_at(&app, "fresh").await?;
    let state =
        ApiState::new(app.pool.clone(), AdminToken::new(common::TOKEN)).with_clock(clock.clone());
    state.set_migrated();
    // Expiry is decided by the manual clock; the loop's own period only bounds how soon it acts.
    let sweeper = tokio::spawn(registry::sweep_every(
        state,
        std::time::Duration::from_millis(20),
    ));
    let gone = wait_until(|| async { Ok(row_ids(&app).await? == ["fresh"]) }).await;
    sweeper.abort();
    assert!(gone?, "rows left: {:?}", row_ids(&app).await?);
    Ok(())
}

/// Polls `check` every 20 ms for up to 20 s; whether it became true.
async fn wait_until<F, Fut>(mut check: F) -> anyhow::Result<bool>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if check().await? {
            return Ok(true);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(false)
}

#[tokio::test]
async fn control_plane_registers_itself_and_cancels_on_shutdown() -> anyhow::Result<()> {
    let url = common::fresh_db().await?;
    let config = leaky_control_plane::Config {
        listen: "127.0.0.1:0".parse()?,
        database_url: url.clone(),
        roles: leaky_control_plane::Roles::all(),
        admin_token: common::TOKEN.to_owned(),
        config_base: None,
        outbox: None,
        redis_url: None,
        billing: Default::default(),
        notify: Default::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(leaky_control_plane::run(config, async {
        let _ = stopped.await;
    }));
    let pool = db::pool(&url, 2)?;
    let own = || async {
        let found: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT id, address, version FROM registry.instances WHERE role = 'control-plane'",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        found
    };
    assert!(wait_until(|| async { Ok(own().await.len() == 1) }).await?);
    let (id, address, version) = own().await.remove(0);
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(id, format!("control-plane-{address}"));
    // Its address is where it really listens: the API there lists it, up, and so does Eureka.
    let http = reqwest::Client::new();
    let listed: Value = http
        .get(format!(
            "http://{address}/v1/registry/instances?role=control-plane"
        ))
        .bearer_auth(common::TOKEN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed["items"][0]["id"], id.as_str());
    assert_eq!(listed["items"][0]["status"], "up");
    let apps: Value = http
        .get(format!("http://{address}/eureka/apps/LEAKY-CONTROL-PLANE"))
        .bearer_auth(common::TOKEN)
        .header("accept", "application/json")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        apps["application"]["instance"][0]["instanceId"],
        id.as_str()
    );

    let _ = stop.send(());
    server.await??;
    assert!(own().await.is_empty(), "still registered after shutdown");
    let actors: Vec<(String, String)> =
        sqlx::query_as("SELECT actor, action FROM audit.events WHERE object_id = $1 ORDER BY id")
            .bind(&id)
            .fetch_all(&pool)
            .await?;
    let actor = "control-plane".to_owned();
    assert_eq!(
        actors,
        [
            (actor.clone(), "instance.register".to_owned()),
            (actor, "instance.cancel".to_owned())
        ]
    );
    Ok(())
}
