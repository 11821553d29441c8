//! The admin listener's access rules, and config loads that must not hurt the running gateway (an
//! alias bomb, a file caught mid-write), against the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::*;
use serde_json::Value;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

async fn reload_with(gw: &Gateway, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = gw.client.post(gw.admin_url("/admin/reload"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn status_with(gw: &Gateway, key: &str) -> u16 {
    gw.post_chat(key, &chat("gpt-4o-mini", "hi"))
        .await
        .status()
        .as_u16()
}

#[tokio::test]
async fn reload_needs_the_admin_token() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&with_admin_token(&up.config(""))).await;

    let r = gw
        .client
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"leaky-tokens admin\""
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error"],
        "POST /admin/reload needs `Authorization: Bearer <server.admin_token>`"
    );
    // Wrong tokens, including a prefix and one differing in its last byte.
    for wrong in ["lt-test-admin-toke", "lt-test-admin-tokeN", "x"] {
        let (status, body) = reload_with(&gw, &[("authorization", &bearer(wrong))]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("the admin token does not match"))
        );
    }
    assert_eq!(gw.config_version().await, 1, "no refused request reloaded");

    let (status, body) = reload_with(&gw, &[("authorization", &bearer(ADMIN_TOKEN))]).await;
    assert_eq!((status, &body["result"]), (200, &Value::from("success")));
    assert_eq!(gw.config_version().await, 2);

    // On loopback, reads stay open (documented): scrapers and the harness use them without a token.
    let r = gw
        .client
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        gw.admin_json("/admin/config").await["config"]["server"]["admin_token"],
        "set"
    );
}

#[tokio::test]
async fn without_a_configured_token_reload_over_http_is_refused() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&up.config("")).await;
    let (status, body) = reload_with(&gw, &[("authorization", "Bearer anything")]).await;
    assert_eq!(status, 403);
    assert_eq!(
        body["error"],
        "POST /admin/reload is disabled: `server.admin_token` is not set (reload with SIGHUP or by \
         saving the config file, or set the token)"
    );
    assert_eq!(gw.config_version().await, 1);
}

#[tokio::test]
async fn cross_origin_requests_are_refused_even_with_the_token() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&with_admin_token(&up.config(""))).await;
    let token = bearer(ADMIN_TOKEN);
    let auth = ("authorization", token.as_str());
    let port = gw.admin.port();
    let rebound_host = format!("evil.example:{port}");
    let rebound_origin = format!("http://evil.example:{port}");
    for headers in [
        vec![auth, ("origin", "https://evil.example")],
        vec![auth, ("origin", "null")],
        vec![auth, ("sec-fetch-site", "cross-site")],
        // DNS rebinding: the attacker's name resolved to 127.0.0.1, same-origin for the page.
        vec![
            auth,
            ("host", rebound_host.as_str()),
            ("origin", rebound_origin.as_str()),
        ],
    ] {
        let (status, body) = reload_with(&gw, &headers).await;
        assert_eq!(status, 403, "{headers:?}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("cross-origin requests are not allowed on the admin listener"),
            "{body}"
        );
    }
    // Reads too.
    let r = gw
        .client
        .get(gw.admin_url("/admin/config"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(gw.config_version().await, 1, "no refused request reloaded");

    // The listener's own origin works.
    let own = format!("http://{}", gw.admin);
    let (status, _) = reload_with(
        &gw,
        &[
            auth,
            ("origin", own.as_str()),
            ("sec-fetch-site", "same-origin"),
        ],
    )
    .await;
    assert_eq!(status, 200);
}

/// The binary with an admin listener on `admin`; killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(config: &std::path::Path, admin: SocketAddr, stderr: std::fs::File) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_leaky-tokens"))
        .args(["proxy", "--config"])
        .arg(config)
        .args(["--listen", &free_port().to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .env("LT_TEST_OPENAI_KEY", OPENAI_CREDENTIAL)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    Proc(child)
}

#[tokio::test]
async fn an_admin_listener_beyond_loopback_needs_a_token() {
    let up = Upstreams::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let log = dir.path().join("stderr.log");
    let admin = SocketAddr::from(([0, 0, 0, 0], free_port().port()));

    // Without a token the process refuses to start, and says why.
    std::fs::write(&config, up.config("")).unwrap();
    let mut p = spawn(&config, admin, std::fs::File::create(&log).unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the gateway did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success());
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.contains(&format!(
            "the admin listener `{admin}` is reachable beyond loopback but has no token: set \
             `server.admin_token` (e.g. `${{LEAKY_ADMIN_TOKEN}}`) or listen on 127.0.0.1"
        )),
        "{stderr}"
    );

    // With one, it starts; only the probes answer without the token.
    std::fs::write(&config, with_admin_token(&up.config(""))).unwrap();
    let _p = spawn(&config, admin, std::fs::File::create(&log).unwrap());
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", admin.port());
    eventually(
        "the gateway starts",
        Duration::from_secs(20),
        None,
        || async { matches!(client.get(url("/healthz")).send().await, Ok(r) if r.status() == 200) },
    )
    .await;
    assert_eq!(
        client.get(url("/readyz")).send().await.unwrap().status(),
        200
    );
    for path in ["/metrics", "/admin/config"] {
        let r = client.get(url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = client
            .get(url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn an_alias_bomb_in_the_watched_config_is_refused_and_the_old_config_keeps_serving() {
    let up = Upstreams::start().await;
    let gw = Gateway::start(&up.config("")).await;
    let bomb = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config/tests/invalid/yaml-alias-bomb.yaml"),
    )
    .unwrap();
    gw.write_config(&bomb);
    eventually(
        "the failed reload is counted",
        Duration::from_secs(10),
        Some(&gw),
        || async {
            gw.metric("leaky_config_reloads_total{result=\"error\"}")
                .await
                >= 1.0
        },
    )
    .await;
    let admin = gw.admin_json("/admin/config").await;
    let err = admin["reload"]["last_errors"][0].as_str().unwrap();
    let file = gw.config_path.display().to_string();
    assert!(
        err.starts_with(&format!("{file}:"))
            && err.ends_with(
                ": YAML anchors and aliases copy more than 100000 nodes (an alias bomb?)"
            ),
        "{err}"
    );
    assert_eq!(admin["version"], 1);
    assert_eq!(
        status_with(&gw, PRO_KEY).await,
        200,
        "the old config serves"
    );
    // Expanded, it would be 10^9 nodes; bounded, the process stays near its idle size.
    let rss = common::rss_kib(gw.pid());
    assert!(rss < 256 * 1024, "RSS {rss} KiB");
}

const KEY_B: &str = "lt-test-second-half";
const KEY_C: &str = "lt-test-added-at-close";

fn key_line(id: &str, key: &str) -> String {
    format!(
        "  - {{ id: {id}, sha256: {}, user: erin, tier: pro }}\n",
        sha256_hex(key.as_bytes())
    )
}

#[tokio::test]
async fn a_config_caught_mid_write_is_never_applied() {
    let up = Upstreams::start().await;
    let old = up.config(&key_line("b", KEY_B));
    let gw = Gateway::start(&old).await;
    assert_eq!(status_with(&gw, KEY_B).await, 200);

    // The new file adds a key. Its first half (cut before KEY_B's line) is a valid config on its
    // own: loading it would drop KEY_B.
    let new = up.config(&(key_line("b", KEY_B) + &key_line("c", KEY_C)));
    let cut = new.find(&key_line("b", KEY_B)).unwrap();
    assert_eq!(&new[..cut], up.config(""));

    // A non-atomic writer: truncate, write half, pause (holding the file open) well past the
    // debounce (150 ms), then finish and close.
    let mut f = std::fs::File::create(&gw.config_path).unwrap();
    f.write_all(&new.as_bytes()[..cut]).unwrap();
    f.flush().unwrap();
    let pause = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < pause {
        assert_eq!(
            status_with(&gw, KEY_B).await,
            200,
            "the half file was applied"
        );
        assert_eq!(gw.config_version().await, 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f.write_all(&new.as_bytes()[cut..]).unwrap();
    drop(f);

    let (v, _) = gw.wait_version_change(1, Duration::from_secs(5)).await;
    assert_eq!(v, 2);
    assert_eq!(status_with(&gw, KEY_C).await, 200);
    assert_eq!(status_with(&gw, KEY_B).await, 200);
    assert_eq!(
        gw.metric("leaky_config_reloads_total{result=\"error\"}")
            .await,
        0.0
    );
}
