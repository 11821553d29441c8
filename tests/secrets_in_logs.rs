//! Secrets absent from logs and admin outputs (issue 14): the real control plane (identity with a
//! master key from the environment, Redis, PostgreSQL) and a real proxy fed by it, both logging at
//! debug level to files. The test creates an OAuth2 client, issues a token, fails a client
//! authentication, creates and uses an API key, calls the gateway with the token and with bad
//! credentials, and reads `/admin/config`, `/metrics` and the admin API's listings; then every
//! captured log line and every admin output is searched for each secret. None may appear.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod identity_stack;
#[path = "../control-plane/tests/common/mod.rs"]
mod pg;

use std::time::Duration;

use common::{chat, eventually, OPENAI_CREDENTIAL};
use identity_stack::{call, Stack, ADMIN};
use serde_json::{json, Value};

/// 32 bytes, base64: the control plane's master key (`v1:<key>`).
const MASTER_KEY: &str = "c2VjcmV0cy1pbi1sb2dzLXRlc3QtbWFzdGVyLWtleSE=";
const MASTER_PLAIN: &str = "secrets-in-logs-test-master-key!";
/// A wrong client secret tried against the token endpoint.
const WRONG_SECRET: &str = "wrong-secret-7f3a9c1e5b2d4f6a";

async fn text(res: reqwest::Response) -> String {
    res.text().await.unwrap()
}

#[tokio::test]
async fn no_secret_reaches_a_log_or_an_admin_output() {
    let master = format!("v1:{MASTER_KEY}");
    let stack = Stack::start(&[("LEAKY_MASTER_KEY", master.as_str())]).await;
    let gw = stack.proxy("proxy-secrets", &[]).await;
    let cp = &stack.url;
    let http = &stack.http;
    let mut outputs: Vec<(String, String)> = Vec::new();

    // An OAuth2 client and its token; a failed client authentication (wrong secret, unknown client).
    let (client_id, client_secret) = stack.client("secrets-app").await;
    let access = stack.token(&client_id, &client_secret).await;
    for (id, secret) in [
        (client_id.as_str(), WRONG_SECRET),
        ("no-such-client", WRONG_SECRET),
    ] {
        let res = http
            .post(format!("{cp}/oauth2/token"))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        outputs.push(("failed client auth".into(), text(res).await));
    }
    // The dev client's token (a platform admin's), used on the admin API.
    let dev_access = stack.token("dev-admin", "dev-admin-secret").await;

    // An org and an API key; the key reaches the proxy and works there.
    let res = http
        .post(format!("{cp}/v1/orgs"))
        .bearer_auth(&dev_access)
        .json(&json!({"name": "secrets"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let org: Value = res.json().await.unwrap();
    let org = org["id"].as_str().unwrap();
    let res = http
        .post(format!("{cp}/v1/orgs/{org}/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "app", "tier": "pro"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let key: Value = res.json().await.unwrap();
    let api_key = key["key"].as_str().unwrap().to_owned();
    eventually(
        "the key reaches the proxy",
        Duration::from_secs(5),
        Some(&gw),
        || async {
            gw.post_chat(&api_key, &chat("gpt-4o-mini", "hi"))
                .await
                .status()
                == 200
        },
    )
    .await;

    // The gateway with the access token; refusals in dialect for bad credentials.
    assert_eq!(call(&gw, &access).await, 200, "{}", gw.log());
    let tampered = format!("{access}x");
    for bad in [
        tampered.as_str(),
        "lt-AAAAAAAA_notakeynotakeynotakeynotakeynotake",
        WRONG_SECRET,
    ] {
        for path in ["/capture/x", "/v1/chat/completions"] {
            let res = gw
                .client
                .post(gw.url(path))
                .bearer_auth(bad)
                .json(&chat("gpt-4o-mini", "hi"))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 401);
            outputs.push((format!("gateway refusal on {path}"), text(res).await));
        }
    }
    // Revoke the access token (its id is logged, never the token), and an introspection.
    stack.revoke(&client_id, &client_secret, &access).await;

    // Admin outputs.
    outputs.push((
        "proxy /admin/config".into(),
        gw.admin_text("/admin/config").await,
    ));
    outputs.push(("proxy /metrics".into(), gw.admin_text("/metrics").await));
    for path in [
        "/metrics".to_string(),
        "/v1/identity/clients".to_string(),
        format!("/v1/orgs/{org}/keys"),
        "/v1/config/status".to_string(),
        "/v1/audit".to_string(),
        "/openapi.json".to_string(),
    ] {
        let res = http
            .get(format!("{cp}{path}"))
            .bearer_auth(&dev_access)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
        outputs.push((format!("control plane {path}"), text(res).await));
    }

    let secrets = [
        ("client secret", client_secret.as_str()),
        ("access token", access.as_str()),
        ("access token signature", access.rsplit('.').next().unwrap()),
        ("dev admin token", dev_access.as_str()),
        ("API key", api_key.as_str()),
        ("API key secret part", api_key.split('_').nth(1).unwrap()),
        ("provider key (from the environment)", OPENAI_CREDENTIAL),
        // Written literally in the base the control plane pushes (the proxies need it to call the
        // provider): still never logged nor shown by /admin/config.
        ("provider key (literal in the config)", "gemini-credential"),
        ("master key", MASTER_KEY),
        ("master key bytes", MASTER_PLAIN),
        ("admin token", ADMIN),
        ("dev client secret", "dev-admin-secret"),
        ("wrong secret tried", WRONG_SECRET),
    ];
    let logs = [
        ("control-plane log".to_string(), stack.log()),
        ("proxy log".to_string(), gw.log()),
    ];
    assert!(
        logs[0].1.contains("identity: token revoked"),
        "the control plane logs at debug"
    );
    assert!(
        logs[1].1.contains("jwt: token refused"),
        "the proxy logs at debug"
    );
    // The searched texts are the real ones: they name the objects, just not their secrets.
    assert!(
        logs[0].1.contains(&client_id),
        "the client is named in the log"
    );
    let prefix = key["prefix"].as_str().unwrap();
    assert!(
        outputs.iter().any(|(_, o)| o.contains(prefix)),
        "the key listing shows its prefix"
    );
    for (what, haystack) in logs.iter().chain(outputs.iter()) {
        for (name, secret) in secrets {
            assert!(
                !haystack.contains(secret),
                "the {name} appears in the {what}:\n{}",
                haystack
                    .lines()
                    .filter(|l| l.contains(secret))
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}
