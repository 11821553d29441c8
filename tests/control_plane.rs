//! The real `leaky-tokens control-plane` binary against a real PostgreSQL: it becomes ready (migrations
//! done), creates an org and a key through the admin API, and refuses an unknown role.

#[path = "../control-plane/tests/common/mod.rs"]
mod common;

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
