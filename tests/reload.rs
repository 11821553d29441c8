//! Hot reload and the admin listener, against the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

const NEW_KEY: &str = "lt-test-added-later";

fn added_key() -> String {
    format!(
        "  - {{ id: added, sha256: {}, user: dave, tier: pro }}\n",
        sha256_hex(NEW_KEY.as_bytes())
    )
}

async fn status_with(gw: &Gateway, key: &str) -> u16 {
    gw.client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat("gpt-4o-mini", "hi"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn an_added_key_works_within_a_second_without_restart() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&up.config("")).await;
    assert_eq!(status_with(&gw, NEW_KEY).await, 401);
    let v0 = gw.config_version().await;
    gw.write_config(&up.config(&added_key()));
    let (v1, took) = gw.wait_version_change(v0, Duration::from_secs(1)).await;
    assert_eq!(v1, v0 + 1);
    assert!(took < Duration::from_secs(1), "reload took {took:?}");
    assert_eq!(status_with(&gw, NEW_KEY).await, 200);
    assert_eq!(
        gw.metric("leaky_config_reloads_total{result=\"success\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_broken_edit_keeps_the_old_config_serving_and_is_reported() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&up.config("")).await;
    let good = up.config("");
    // Unclosed flow sequence on line 3.
    let broken = good.replacen("  threads: 2\n", "  threads: [2\n", 1);
    gw.write_config(&broken);
    let errors = |n: f64| {
        let gw = &gw;
        move || async move {
            gw.metric("leaky_config_reloads_total{result=\"error\"}")
                .await
                >= n
        }
    };
    eventually(
        "a failed reload is counted",
        Duration::from_secs(5),
        Some(&gw),
        errors(1.0),
    )
    .await;
    assert_eq!(gw.config_version().await, 1);
    assert_eq!(gw.metric("leaky_config_last_reload_successful").await, 0.0);
    assert_eq!(
        status_with(&gw, PRO_KEY).await,
        200,
        "old config must keep serving"
    );

    let admin: Value = gw.admin_json("/admin/config").await;
    assert_eq!(admin["reload"]["last_result"], "error");
    let err = admin["reload"]["last_errors"][0].as_str().unwrap();
    let file = gw.config_path.display().to_string();
    assert!(err.starts_with(&format!("{file}:")), "{err}");
    let loc: Vec<&str> = err[file.len() + 1..].splitn(3, ':').collect();
    assert!(
        loc[0].parse::<u32>().unwrap() >= 3 && loc[1].parse::<u32>().is_ok(),
        "{err}"
    );
    assert!(
        gw.log().contains("config reload failed"),
        "error not logged"
    );

    // A semantic error is reported with the position of the offending value.
    let semantic = good.replace("tier: free, models", "tier: platinum, models");
    gw.write_config(&semantic);
    eventually(
        "a second failed reload is counted",
        Duration::from_secs(5),
        Some(&gw),
        errors(2.0),
    )
    .await;
    let admin: Value = gw.admin_json("/admin/config").await;
    let err = admin["reload"]["last_errors"][0].as_str().unwrap();
    let line = semantic
        .lines()
        .position(|l| l.contains("platinum"))
        .unwrap()
        + 1;
    let col = semantic
        .lines()
        .nth(line - 1)
        .unwrap()
        .find("platinum")
        .unwrap()
        + 1;
    assert_eq!(
        err,
        format!("{file}:{line}:{col}: unknown tier `platinum` (defined: free, pro)")
    );

    gw.write_config(&up.config(&added_key()));
    let (v, _) = gw.wait_version_change(1, Duration::from_secs(5)).await;
    assert_eq!(v, 2);
    assert_eq!(status_with(&gw, NEW_KEY).await, 200);
    let admin: Value = gw.admin_json("/admin/config").await;
    assert_eq!(admin["reload"]["last_result"], "success");
    assert_eq!(admin["reload"]["last_errors"], json!([]));
}

#[tokio::test]
async fn sighup_reloads() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&up.config("")).await;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (v, _) = gw.wait_version_change(1, Duration::from_secs(5)).await;
    assert_eq!(v, 2);
    assert_eq!(
        status_with(&gw, PRO_KEY).await,
        200,
        "the process survives SIGHUP and serves"
    );
}

#[tokio::test]
async fn admin_reload_endpoint_reports_errors() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&with_admin_token(&up.config(""))).await;
    let r = gw
        .client
        .post(gw.admin_url("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["result"], "success");
    // Bypass the watcher's timing: write the file in place and ask for the reload directly.
    std::fs::write(&gw.config_path, "routes: {").unwrap();
    let r = gw
        .client
        .post(gw.admin_url("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["errors"][0].as_str().unwrap().contains("gateway.yaml:"),
        "{v}"
    );
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_snapshot_they_started_with() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&up.config("")).await;
    let gate = up.capture.arm_gate().await;
    let client = gw.client.clone();
    let url = gw.url("/capture/gate");
    let in_flight = tokio::spawn(async move {
        client
            .post(url)
            .bearer_auth(PRO_KEY)
            .json(&json!({}))
            .send()
            .await
    });
    // Wait until the request is parked at the upstream (the gate's receiver has been taken).
    eventually(
        "the request reaches the upstream",
        Duration::from_secs(5),
        None,
        || up.capture.gate_taken(),
    )
    .await;
    // The new config removes the route the request is on.
    let without_capture = up.config("").replace(
        "  - name: capture\n    prefix: /capture\n",
        "  - name: capture\n    prefix: /elsewhere\n",
    );
    gw.write_config(&without_capture);
    gw.wait_version_change(1, Duration::from_secs(5)).await;
    let r = gw
        .client
        .post(gw.url("/capture/gate"))
        .bearer_auth(PRO_KEY)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the new config is active");
    gate.send(()).await.unwrap();
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(
        r.status(),
        200,
        "the in-flight request completes on the old snapshot"
    );
    assert_eq!(r.json::<Value>().await.unwrap()["path"], "/echo/gate");
}

#[tokio::test]
async fn admin_config_shows_version_and_hash_but_no_secret() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&up.config("")).await;
    let text = gw.admin_text("/admin/config").await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["hash"].as_str().unwrap().len(), 64);
    assert_eq!(v["config"]["providers"]["openai"]["credential"], "set");
    assert_eq!(v["config"]["keys"][0]["id"], "test-pro");
    for secret in [
        OPENAI_CREDENTIAL,
        "gemini-credential",
        "capture-credential",
        "qwen-credential",
        &sha256_hex(PRO_KEY.as_bytes()),
    ] {
        assert!(!text.contains(secret), "/admin/config leaks {secret}");
    }
    assert_eq!(gw.admin_text("/healthz").await, "ok\n");
    let ready: Value = serde_json::from_str(&gw.admin_text("/readyz").await).unwrap();
    assert_eq!(ready["ready"], true);
}
