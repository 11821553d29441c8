//! The real `leaky-tokens control-plane` binary against a real PostgreSQL: it becomes ready (migrations
//! done), creates an org and a key through the admin API, and refuses an unknown role; without
//! `LEAKY_ADMIN_TOKEN` it has no bootstrap token at all, unless in dev mode.

use crate::pg as common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_migrates_becomes_ready_and_serves_v1() -> anyhow::Result<()> {
    let db = common::fresh_db().await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _child = Killed(
        Command::new(env!("CARGO_BIN_EXE_leaky-tokens"))
            .args([
                "control-plane",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--roles",
                "admin-api",
            ])
            .env("LEAKY_DATABASE_URL", &db)
            .env("LEAKY_ADMIN_TOKEN", common::TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http.get(format!("{base}/readyz")).send().await;
        if ready.as_ref().is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "not ready: {ready:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let res = http
        .post(format!("{base}/v1/orgs"))
        .bearer_auth(common::TOKEN)
        .json(&json!({ "name": "bin" }))
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    let org: Value = res.json().await?;
    let keys = format!(
        "{base}/v1/orgs/{}/keys",
        org["id"].as_str().unwrap_or_default()
    );
    let res = http
        .post(&keys)
        .bearer_auth(common::TOKEN)
        .json(&json!({ "name": "k", "tier": "pro" }))
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    let key: Value = res.json().await?;
    assert!(
        key["key"].as_str().is_some_and(|k| k.starts_with("lt-")),
        "{key}"
    );
    let denied = http
        .get(format!("{base}/v1/orgs"))
        .bearer_auth("lt-dev-admin")
        .send()
        .await?;
    assert_eq!(denied.status(), 401);
    Ok(())
}

#[test]
fn unknown_role_is_refused() -> anyhow::Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_leaky-tokens"))
        .args(["control-plane", "--roles", "admin-api,eureka"])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown role `eureka`"), "{stderr}");
    Ok(())
}

/// Starts the binary on `db` with `env` (and nothing inherited about the admin token or dev mode);
/// returns it and its base URL once ready.
async fn start(db: &str, env: &[(&str, &str)]) -> anyhow::Result<(Killed, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leaky-tokens"));
    cmd.args([
        "control-plane",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--roles",
        "admin-api",
    ])
    .env("LEAKY_DATABASE_URL", db)
    .env_remove("LEAKY_ADMIN_TOKEN")
    .env_remove("LEAKY_IDENTITY_DEV")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = Killed(cmd.spawn()?);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = reqwest::get(format!("{base}/readyz")).await;
        if ready.as_ref().is_ok_and(|r| r.status() == 200) {
            return Ok((child, base));
        }
        assert!(Instant::now() < deadline, "not ready: {ready:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn without_an_admin_token_the_well_known_dev_token_works_only_in_dev_mode(
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let orgs = |base: &str| {
        http.get(format!("{base}/v1/orgs"))
            .bearer_auth("lt-dev-admin")
            .send()
    };
    // Production-like: no LEAKY_ADMIN_TOKEN, no dev mode → no bootstrap token; an empty bearer
    // matches nothing either.
    let db = common::fresh_db().await?;
    let (_cp, base) = start(&db, &[]).await?;
    assert_eq!(orgs(&base).await?.status(), 401);
    let empty = http
        .get(format!("{base}/v1/orgs"))
        .header("authorization", "Bearer ")
        .send()
        .await?;
    assert_eq!(empty.status(), 401);
    // Dev mode: `lt-dev-admin` is the bootstrap token.
    let db = common::fresh_db().await?;
    let (_dev, base) = start(&db, &[("LEAKY_IDENTITY_DEV", "1")]).await?;
    assert_eq!(orgs(&base).await?.status(), 200);
    Ok(())
}
