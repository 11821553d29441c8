//! Postgres unreachable: the API answers 503 problem+json within the pool's acquire timeout, and
//! recovers by itself once the database is back (a real server stopped and restarted).

use crate::common;

use std::time::{Duration, Instant};

use crate::common::problem;
use leaky_control_plane::http::{AdminToken, ApiState};
use leaky_control_plane::{app, db};
use serde_json::json;

#[tokio::test]
async fn closed_port_gives_503_quickly() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/nowhere");
    let app = common::serve(url.clone(), db::pool(&url, 2)?).await?;
    let started = Instant::now();
    problem(app.get("/v1/orgs").await?, 503, "unavailable").await?;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    problem(
        app.http.get(format!("{}/readyz", app.base)).send().await?,
        503,
        "unavailable",
    )
    .await?;
    assert_eq!(app.probe_status("/healthz").await?, 200);
    Ok(())
}

#[tokio::test]
async fn postgres_restart_503_then_recovery() -> anyhow::Result<()> {
    // Its own cluster: stopping the shared one would fail every other test.
    let cluster = common::Cluster::start()?;
    let url = common::fresh_db_on(&cluster.url()).await?;
    let pool = db::pool(&url, 4)?;
    db::migrate(&pool).await?;
    let app = common::serve(url, pool).await?;
    app.org("before").await?;

    cluster.stop()?;
    let started = Instant::now();
    problem(
        app.post("/v1/orgs", json!({ "name": "during" })).await?,
        503,
        "unavailable",
    )
    .await?;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    problem(
        app.http.get(format!("{}/readyz", app.base)).send().await?,
        503,
        "unavailable",
    )
    .await?;

    cluster.restart()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let res = app.post("/v1/orgs", json!({ "name": "after" })).await?;
        if res.status() == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", res.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.probe_status("/readyz").await?, 200);
    let names: Vec<(String,)> = sqlx::query_as("SELECT name FROM tenancy.orgs ORDER BY name")
        .fetch_all(&app.pool)
        .await?;
    assert_eq!(names, [("after".to_owned(),), ("before".to_owned(),)]);
    Ok(())
}

#[tokio::test]
async fn starts_before_postgres_and_migrates_once_it_is_up() -> anyhow::Result<()> {
    let cluster = common::Cluster::start()?;
    let url = common::fresh_db_on(&cluster.url()).await?;
    cluster.stop()?;
    let state = ApiState::new(db::pool(&url, 4)?, AdminToken::new(common::TOKEN));
    let app = common::serve_state(url, state.clone()).await?;
    tokio::spawn(app::migrate_until_done(state));
    problem(app.get("/v1/orgs").await?, 503, "unavailable").await?;
    problem(
        app.http.get(format!("{}/readyz", app.base)).send().await?,
        503,
        "unavailable",
    )
    .await?;

    cluster.restart()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await?
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.org("late").await?;
    Ok(())
}
