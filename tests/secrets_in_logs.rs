//! Secrets absent from logs and admin outputs (issue 14): the real control plane (identity with a
//! master key from the environment, Redis, PostgreSQL) and a real proxy fed by it, both logging at
//! debug level to files. The test creates an OAuth2 client, issues a token, fails a client
//! authentication, logs a person in (after a wrong password) through the code flow with PKCE,
//! refreshes and replays a refresh token, stores a provider key in the vault, creates and uses an API
//! key, calls the gateway with the token and with bad
//! credentials, and reads `/admin/config`, `/metrics` and the admin API's listings; then every
//! captured log line and every admin output is searched for each secret. None may appear.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crate::common::{chat, eventually, OPENAI_CREDENTIAL};
use crate::identity_stack::{call, Stack, ADMIN};
use serde_json::{json, Value};

/// 32 bytes, base64: the control plane's master key (`v1:<key>`).
const MASTER_KEY: &str = "c2VjcmV0cy1pbi1sb2dzLXRlc3QtbWFzdGVyLWtleSE=";
const MASTER_PLAIN: &str = "secrets-in-logs-test-master-key!";
/// A wrong client secret tried against the token endpoint.
const WRONG_SECRET: &str = "wrong-secret-7f3a9c1e5b2d4f6a";
/// The dev person (dev mode seeds them) and a wrong password tried for them.
const DEV_EMAIL: &str = "dev@leaky.local";
const DEV_PASSWORD: &str = "dev-password-1234";
const WRONG_PASSWORD: &str = "wrong-password-3c8e1a";
/// RFC 7636's example verifier and its S256 challenge.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
/// A provider key stored in the control plane's vault.
const VAULTED: &str = "sk-vaulted-provider-key-5d2b7e";

/// The value of the hidden form field `name` in `html`.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).expect(name) + marker.len();
    let len = html[start..].find('"').unwrap();
    html[start..start + len].to_owned()
}

/// The dev person logs in through the code flow with PKCE (after one wrong password); returns the
/// code and the token response (access, refresh and ID tokens).
async fn person_tokens(cp: &str, outputs: &mut Vec<(String, String)>) -> (String, Value) {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = |password: &'static str| {
        let browser = browser.clone();
        async move {
            let page = browser
                .get(format!("{cp}/oauth2/authorize"))
                .query(&[
                    ("response_type", "code"),
                    ("client_id", "dev-login"),
                    ("redirect_uri", "http://127.0.0.1:8765/callback"),
                    ("scope", "openid profile email admin"),
                    ("state", "st"),
                    ("nonce", "nn"),
                    ("code_challenge", CHALLENGE),
                    ("code_challenge_method", "S256"),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(page.status(), 200);
            let cookie = page.headers()["set-cookie"].to_str().unwrap();
            let cookie = cookie.split(';').next().unwrap().to_owned();
            let html = page.text().await.unwrap();
            let form = [
                ("request", hidden(&html, "request")),
                ("csrf", hidden(&html, "csrf")),
                ("email", DEV_EMAIL.to_owned()),
                ("password", password.to_owned()),
            ];
            browser
                .post(format!("{cp}/oauth2/login"))
                .header("cookie", cookie)
                .form(&form)
                .send()
                .await
                .unwrap()
        }
    };
    let refused = login(WRONG_PASSWORD).await;
    assert_eq!(refused.status(), 401);
    outputs.push(("failed login page".into(), refused.text().await.unwrap()));
    let ok = login(DEV_PASSWORD).await;
    assert_eq!(ok.status(), 303);
    let location = ok.headers()["location"].to_str().unwrap().to_owned();
    let code = reqwest::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let res = browser
        .post(format!("{cp}/oauth2/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "dev-login"),
            ("code", code.as_str()),
            ("redirect_uri", "http://127.0.0.1:8765/callback"),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let tokens: Value = res.json().await.unwrap();
    // A refresh (rotation) and the replay of the old refresh token (refused, family revoked).
    let old = tokens["refresh_token"].as_str().unwrap().to_owned();
    for expected in [200, 400] {
        let res = browser
            .post(format!("{cp}/oauth2/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", "dev-login"),
                ("refresh_token", old.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), expected);
        outputs.push(("refresh answer".into(), res.text().await.unwrap()));
    }
    (code, tokens)
}

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

    // A person: a failed login, the code flow, a refresh and a replayed refresh token.
    let (code, person) = person_tokens(cp, &mut outputs).await;
    // A provider key in the vault.
    stack.store_credential("vaulted", VAULTED).await;

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
        "/v1/provider-credentials".to_string(),
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
        ("person's password", DEV_PASSWORD),
        ("wrong password tried", WRONG_PASSWORD),
        ("authorization code", code.as_str()),
        ("PKCE verifier", VERIFIER),
        (
            "person's access token",
            person["access_token"].as_str().unwrap(),
        ),
        ("refresh token", person["refresh_token"].as_str().unwrap()),
        ("ID token", person["id_token"].as_str().unwrap()),
        ("vaulted provider key", VAULTED),
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
