//! The integration proof of config push: the real `leaky-tokens control-plane` on a real PostgreSQL,
//! and two real proxies fed by it (`--control-plane`). A key created through the API works on both
//! within a second and a revoked one is refused within a second (the propagation is printed); a version
//! the proxies cannot build is NACKed, shown per proxy, and the last good keeps serving; the proxies
//! keep serving through a control-plane kill and a PostgreSQL restart, and converge afterwards.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use crate::common;
use crate::pg;

use std::ffi::OsString;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{chat, free_port, Gateway, Upstreams};
use serde_json::{json, Value};

const TOKEN: &str = "lt-test-push-token";

/// The control-plane binary, killed when dropped.
struct ControlPlane {
    child: Child,
    url: String,
    base_file: std::path::PathBuf,
    db: String,
    port: u16,
    http: reqwest::Client,
}

impl ControlPlane {
    async fn start(db: &str, base_file: &std::path::Path) -> ControlPlane {
        let port = free_port().port();
        let mut cp = ControlPlane {
            child: spawn_cp(port, db, base_file),
            url: format!("http://127.0.0.1:{port}"),
            base_file: base_file.to_path_buf(),
            db: db.to_owned(),
            port,
            http: reqwest::Client::new(),
        };
        cp.wait_version().await;
        cp
    }

    /// Ready, with a published version.
    async fn wait_version(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.get("/v1/config/status").await;
            if status
                .as_ref()
                .is_ok_and(|s| s["version"].as_i64().is_some())
            {
                return;
            }
            assert!(Instant::now() < deadline, "no version: {status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn restart(&mut self) {
        self.kill();
        self.child = spawn_cp(self.port, &self.db, &self.base_file);
        self.wait_version().await;
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        let res = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(res.status().to_string());
        }
        res.json().await.map_err(|e| e.to_string())
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    async fn new_key(&self, org: &str) -> (String, String) {
        let res = self
            .send(
                reqwest::Method::POST,
                &format!("/v1/orgs/{org}/keys"),
                Some(json!({"name": "app", "tier": "pro"})),
            )
            .await;
        assert_eq!(res.status(), 201);
        let v: Value = res.json().await.unwrap();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_cp(port: u16, db: &str, base_file: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_leaky-tokens"))
        .args([
            "control-plane",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config-base",
        ])
        .arg(base_file)
        .env("LEAKY_DATABASE_URL", db)
        .env("LEAKY_ADMIN_TOKEN", TOKEN)
        .env("LT_TEST_OPENAI_KEY", common::OPENAI_CREDENTIAL)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn proxy(cp: &ControlPlane, instance: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("last-good.json");
    let source: Vec<OsString> = vec![
        "--control-plane".into(),
        cp.url.clone().into(),
        "--instance-id".into(),
        instance.into(),
        "--config-cache".into(),
        cache.into(),
    ];
    let unused = dir.path().join("unused.yaml");
    Gateway::spawn_with_source(
        dir,
        unused,
        &source,
        &[("LEAKY_CONTROL_PLANE_TOKEN", TOKEN)],
        "json",
    )
    .await
}

async fn status_of(gw: &Gateway, key: &str) -> u16 {
    gw.post_chat(key, &chat("gpt-4o-mini", "hi"))
        .await
        .status()
        .as_u16()
}

/// Waits until every proxy answers `key` with `want`; returns how long it took.
async fn until_all(gws: &[&Gateway], key: &str, want: u16, within: Duration) -> Duration {
    let start = Instant::now();
    for gw in gws {
        common::eventually(
            &format!("{key} answers {want}"),
            within,
            Some(gw),
            || async { status_of(gw, key).await == want },
        )
        .await;
    }
    start.elapsed()
}

struct Setup {
    cluster: pg::Cluster,
    cp: ControlPlane,
    a: Gateway,
    b: Gateway,
    org: String,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    // Its own cluster: the test stops and restarts it.
    let cluster = pg::Cluster::start().unwrap();
    let db = pg::fresh_db_on(&cluster.url()).await.unwrap();
    let upstreams = Box::leak(Box::new(Upstreams::start().await));
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.yaml");
    std::fs::write(&base, upstreams.config("")).unwrap();
    let cp = ControlPlane::start(&db, &base).await;
    let (a, b) = tokio::join!(proxy(&cp, "proxy-a"), proxy(&cp, "proxy-b"));
    let res = cp
        .send(
            reqwest::Method::POST,
            "/v1/orgs",
            Some(json!({"name": "acme"})),
        )
        .await;
    let org: Value = res.json().await.unwrap();
    Setup {
        cluster,
        cp,
        a,
        b,
        org: org["id"].as_str().unwrap().to_owned(),
        _dir: dir,
    }
}

#[tokio::test]
async fn keys_reach_both_proxies_within_a_second_and_bad_versions_are_nacked() {
    let s = setup().await;
    let gws = [&s.a, &s.b];
    let mut created = Vec::new();
    let mut revoked = Vec::new();
    for _ in 0..5 {
        let (id, key) = s.cp.new_key(&s.org).await;
        created.push(until_all(&gws, &key, 200, Duration::from_secs(1)).await);
        let res =
            s.cp.send(reqwest::Method::DELETE, &format!("/v1/keys/{id}"), None)
                .await;
        assert_eq!(res.status(), 204);
        revoked.push(until_all(&gws, &key, 401, Duration::from_secs(1)).await);
    }
    created.sort();
    revoked.sort();
    println!(
        "propagation to 2 proxies (API response to the last proxy answering): created max {:?}, revoked max {:?}",
        created.last().unwrap(),
        revoked.last().unwrap()
    );

    // A base the control plane accepts but the proxies cannot build (a JWKS file they do not have):
    // both NACK it, the API shows why, and the last good version keeps serving.
    let (_, key) = s.cp.new_key(&s.org).await;
    until_all(&gws, &key, 200, Duration::from_secs(1)).await;
    let mut base: Value = serde_json::from_str(&pg_base(&s.cp).await).unwrap();
    base["routes"][0]["filters"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kind": "jwt", "jwks_file": "/nonexistent/jwks.json", "algorithms": ["RS256"], "optional": true}));
    // The control plane refuses literal credentials in a base sent to it (issue 14); this control
    // plane has no master key (no vault), so the test base's stub literals go back as env defaults.
    for p in base["providers"].as_object_mut().unwrap().values_mut() {
        if let Some(c) = p["credential"].as_str().filter(|c| !c.starts_with("${")) {
            p["credential"] = json!(format!("${{LT_TEST_UNSET:-{c}}}"));
        }
    }
    let res =
        s.cp.http
            .put(format!("{}/v1/config/base", s.cp.url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/yaml")
            .body(serde_json::to_string_pretty(&base).unwrap())
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let bad: i64 = s.cp.get("/v1/config/status").await.unwrap()["version"]
        .as_i64()
        .unwrap();
    common::eventually(
        "both proxies NACK the version",
        Duration::from_secs(5),
        None,
        || async {
            let st = s.cp.get("/v1/config/status").await.unwrap();
            st["instances"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["nacked_version"] == bad)
                .count()
                == 2
        },
    )
    .await;
    let st = s.cp.get("/v1/config/status").await.unwrap();
    let errors = st["instances"][0]["nack_errors"].to_string();
    assert!(errors.contains("jwks.json"), "{errors}");
    assert_eq!(
        status_of(&s.a, &key).await,
        200,
        "the last good version keeps serving"
    );
    assert_eq!(status_of(&s.b, &key).await, 200);
}

/// The base in force, as the control plane serves it.
async fn pg_base(cp: &ControlPlane) -> String {
    cp.http
        .get(format!("{}/v1/config/base", cp.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn proxies_serve_through_a_control_plane_kill_and_a_postgres_restart_then_converge() {
    let mut s = setup().await;
    let gws = [&s.a, &s.b];
    let (id, key) = s.cp.new_key(&s.org).await;
    until_all(&gws, &key, 200, Duration::from_secs(1)).await;

    // Killed mid-push (no graceful anything) right after a key is committed, whether or not its
    // version went out: the proxies keep serving the last good version...
    let (_, racing) = s.cp.new_key(&s.org).await;
    s.cp.kill();
    assert_eq!(status_of(&s.a, &key).await, 200);
    assert_eq!(status_of(&s.b, &key).await, 200);
    s.cp.restart().await;
    // ...and after the restart they reconnect (backoff at most 10 s) and converge: nothing lost.
    until_all(&gws, &racing, 200, Duration::from_secs(15)).await;
    let (_, later) = s.cp.new_key(&s.org).await;
    until_all(&gws, &later, 200, Duration::from_secs(1)).await;

    // PostgreSQL away: the API answers 503, the proxies keep serving.
    s.cluster.stop().unwrap();
    let res =
        s.cp.send(reqwest::Method::DELETE, &format!("/v1/keys/{id}"), None)
            .await;
    assert_eq!(res.status(), 503);
    assert_eq!(status_of(&s.a, &key).await, 200);
    assert_eq!(status_of(&s.b, &key).await, 200);
    s.cluster.restart().unwrap();
    // Back: a revocation goes through and reaches both proxies.
    common::eventually(
        "the API recovers",
        Duration::from_secs(20),
        None,
        || async {
            s.cp.send(reqwest::Method::DELETE, &format!("/v1/keys/{id}"), None)
                .await
                .status()
                == 204
        },
    )
    .await;
    until_all(&gws, &key, 401, Duration::from_secs(5)).await;
    assert_eq!(status_of(&s.a, &later).await, 200);
}
