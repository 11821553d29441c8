//! The proxy fed by a control plane (`--control-plane URL`), against the real binary and a scripted
//! watch server written here: each stream starts with the server's current snapshot, then carries the
//! lines a test sends; ACKs and registry calls are recorded. This proves the proxy's side of
//! `docs/config-protocol.md` (the proof against the real control plane is `tests/control_plane.rs`'s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

const TOKEN: &str = "lt-test-cp-token";
const NEW_KEY: &str = "lt-test-pushed-later";

/// The scripted control plane.
#[derive(Default)]
struct Script {
    /// The first line of every new stream.
    snapshot: Mutex<String>,
    /// The open streams (dropping a sender ends its stream).
    streams: Mutex<Vec<mpsc::UnboundedSender<Bytes>>>,
    watches: Mutex<Vec<String>>,
    acks: Mutex<Vec<Value>>,
    registrations: Mutex<Vec<(String, Value)>>,
    heartbeats: Mutex<Vec<Value>>,
    /// Heartbeats still to answer 404 (the registry forgot the instance).
    forget: std::sync::atomic::AtomicUsize,
}

type Shared = Arc<Script>;

fn authorized(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

async fn watch(
    State(s): State<Shared>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<axum::response::Response, StatusCode> {
    if !authorized(&headers) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(Bytes::from(s.snapshot.lock().unwrap().clone()))
        .unwrap();
    s.streams.lock().unwrap().push(tx);
    s.watches
        .lock()
        .unwrap()
        .push(q.get("instance").cloned().unwrap_or_default());
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Ok(axum::response::Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(axum::body::Body::from_stream(body))
        .unwrap())
}

async fn ack(State(s): State<Shared>, headers: HeaderMap, Json(v): Json<Value>) -> StatusCode {
    assert!(authorized(&headers));
    s.acks.lock().unwrap().push(v);
    StatusCode::NO_CONTENT
}

async fn register(
    State(s): State<Shared>,
    Path(id): Path<String>,
    Json(v): Json<Value>,
) -> StatusCode {
    s.registrations.lock().unwrap().push((id, v));
    StatusCode::CREATED
}

async fn heartbeat(State(s): State<Shared>, Json(v): Json<Value>) -> StatusCode {
    s.heartbeats.lock().unwrap().push(v);
    let forget = &s.forget;
    let forgotten = forget
        .fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| n.checked_sub(1),
        )
        .is_ok();
    if forgotten {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::NO_CONTENT
    }
}

struct ControlPlane {
    script: Shared,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl ControlPlane {
    async fn start(first: String) -> ControlPlane {
        let script = Shared::default();
        *script.snapshot.lock().unwrap() = first;
        let app = Router::new()
            .route("/v1/config/watch", get(watch))
            .route("/v1/config/acks", post(ack))
            .route("/v1/registry/instances/{id}", put(register))
            .route("/v1/registry/instances/{id}/heartbeat", post(heartbeat))
            .with_state(script.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        ControlPlane {
            script,
            addr,
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends `line` on every open stream.
    fn send(&self, line: String) {
        for tx in self.script.streams.lock().unwrap().iter() {
            let _ = tx.send(Bytes::from(line.clone()));
        }
    }

    /// Ends every open stream, as a control plane restart would.
    fn drop_streams(&self) {
        self.script.streams.lock().unwrap().clear();
    }

    fn watches(&self) -> usize {
        self.script.watches.lock().unwrap().len()
    }

    /// The ACK or NACK of `version`, once it arrived.
    async fn answer(&self, version: u64, gw: &Gateway) -> Value {
        let find = || {
            let acks = self.script.acks.lock().unwrap();
            acks.iter().rev().find(|a| a["version"] == version).cloned()
        };
        eventually(
            &format!("an answer for v{version}"),
            Duration::from_secs(10),
            Some(gw),
            || async { find().is_some() },
        )
        .await;
        find().unwrap()
    }

    /// Starts a proxy fed by this control plane, its cache in `dir` (a fresh one when `None`).
    async fn proxy(&self, cache: &std::path::Path, dir: tempfile::TempDir) -> Gateway {
        let source: Vec<OsString> = vec![
            "--control-plane".into(),
            self.url().into(),
            "--instance-id".into(),
            "proxy-under-test".into(),
            "--config-cache".into(),
            cache.into(),
        ];
        let env = [("LEAKY_CONTROL_PLANE_TOKEN", TOKEN)];
        Gateway::spawn_with_source(dir, cache.to_path_buf(), &source, &env, "json").await
    }
}

fn snapshot(version: u64, document: &str) -> String {
    let hash = sha256_hex(document.as_bytes());
    let line = json!({"type": "snapshot", "version": version, "hash": hash, "document": document});
    format!("{line}\n")
}

fn keys(version: u64, base: u64, upsert: Value, remove: &[&str]) -> String {
    let line = json!({"type": "keys", "version": version, "base": base, "hash": format!("h{version}"),
        "upsert": upsert, "remove": remove});
    format!("{line}\n")
}

fn new_key(tier: &str) -> Value {
    json!([{"id": "pushed", "sha256": sha256_hex(NEW_KEY.as_bytes()), "user": "erin", "tier": tier}])
}

async fn status_with(gw: &Gateway, key: &str) -> u16 {
    gw.post_chat(key, &chat("gpt-4o-mini", "hi"))
        .await
        .status()
        .as_u16()
}

async fn control_plane_view(gw: &Gateway) -> Value {
    gw.admin_json("/admin/config").await["control_plane"].clone()
}

fn temp_cache() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache/proxy.last-good.json");
    (dir, cache)
}

#[tokio::test]
async fn the_first_snapshot_serves_and_key_deltas_apply_without_a_rebuild() {
    let up = Upstreams::start().await;
    let cp = ControlPlane::start(snapshot(10, &with_admin_token(&up.config("")))).await;
    let (dir, cache) = temp_cache();
    let gw = cp.proxy(&cache, dir).await;
    assert_eq!(status_with(&gw, PRO_KEY).await, 200);
    assert_eq!(cp.answer(10, &gw).await["status"], "ack");
    let view = gw.admin_json("/admin/config").await;
    assert_eq!(view["control_plane"]["version"], 10);
    assert_eq!(view["control_plane"]["connected"], true);
    assert_eq!(view["control_plane"]["url"], cp.url());
    assert_eq!(
        view["reload"]["origin"],
        json!({"kind": "pushed", "from": cp.url()})
    );
    let local = view["version"].as_u64().unwrap();
    assert_eq!(cp.script.watches.lock().unwrap()[0], "proxy-under-test");

    // Created and revoked in one delta: the new key works, the removed one is refused.
    assert_eq!(status_with(&gw, NEW_KEY).await, 401);
    cp.send(keys(11, 10, new_key("pro"), &["test-pro"]));
    assert_eq!(cp.answer(11, &gw).await["status"], "ack");
    assert_eq!(status_with(&gw, NEW_KEY).await, 200);
    assert_eq!(status_with(&gw, PRO_KEY).await, 401);
    let view = gw.admin_json("/admin/config").await;
    assert_eq!(
        view["version"], local,
        "a key delta rebuilds no snapshot (no new chains)"
    );
    assert_eq!(view["reload"]["source_version"], "11");
    assert_eq!(view["control_plane"]["version"], 11);
    let ids: Vec<&str> = view["config"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["pushed", "test-expired", "test-limited"]);

    // A tier the running config does not know: NACK, the last good keys keep serving.
    cp.send(keys(12, 11, new_key("gold"), &[]));
    let nack = cp.answer(12, &gw).await;
    assert_eq!(nack["status"], "nack");
    let error = nack["errors"][0].as_str().unwrap();
    assert!(error.contains("unknown tier `gold`"), "{error}");
    assert!(
        error.starts_with(&format!("config pushed by {} v12", cp.url())),
        "{error}"
    );
    assert_eq!(status_with(&gw, NEW_KEY).await, 200);

    // An explicit reload rebuilds the running snapshot with the live keys (the delta's included).
    let r = gw
        .client
        .post(gw.admin_url("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(gw.config_version().await, local + 1);
    assert_eq!(status_with(&gw, NEW_KEY).await, 200);
    assert_eq!(status_with(&gw, PRO_KEY).await, 401);

    // The registry knows the proxy by its listener and the version it runs.
    let regs = cp.script.registrations.lock().unwrap().clone();
    let (id, body) = &regs[0];
    assert_eq!(id, "proxy-under-test");
    assert_eq!(
        (body["role"].as_str(), body["address"].as_str()),
        (Some("proxy"), Some(gw.proxy.to_string().as_str()))
    );
    assert_eq!(body["config_version"], 10);
}

#[tokio::test]
async fn heartbeats_carry_the_running_version_and_a_forgotten_proxy_registers_again() {
    let up = Upstreams::start().await;
    let cp = ControlPlane::start(snapshot(7, &up.config(""))).await;
    cp.script
        .forget
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let (dir, cache) = temp_cache();
    let gw = cp.proxy(&cache, dir).await;
    cp.send(keys(8, 7, new_key("pro"), &[]));
    cp.answer(8, &gw).await;
    // The first heartbeat (10 s after registering) hears 404 and the proxy registers again at once.
    eventually(
        "a second registration",
        Duration::from_secs(15),
        Some(&gw),
        || async { cp.script.registrations.lock().unwrap().len() >= 2 },
    )
    .await;
    let regs = cp.script.registrations.lock().unwrap().clone();
    assert_eq!(regs[1].1["config_version"], 8);
    assert_eq!(
        cp.script.heartbeats.lock().unwrap()[0],
        json!({"config_version": 8})
    );
}

#[tokio::test]
async fn a_delta_on_another_base_reconnects_for_a_full_snapshot() {
    let up = Upstreams::start().await;
    let cp = ControlPlane::start(snapshot(1, &up.config(""))).await;
    let (dir, cache) = temp_cache();
    let gw = cp.proxy(&cache, dir).await;
    cp.answer(1, &gw).await;
    let with_key = up.config(&format!(
        "  - {{ id: pushed, sha256: {}, user: erin, tier: pro }}\n",
        sha256_hex(NEW_KEY.as_bytes())
    ));
    // The proxy missed v2: a delta on v2 cannot apply to v1.
    *cp.script.snapshot.lock().unwrap() = snapshot(3, &with_key);
    cp.send(keys(4, 3, new_key("pro"), &[]));
    assert_eq!(cp.answer(3, &gw).await["status"], "ack");
    assert_eq!(cp.watches(), 2, "one reconnect");
    assert_eq!(status_with(&gw, NEW_KEY).await, 200);
    assert_eq!(control_plane_view(&gw).await["version"], 3);
}

#[tokio::test]
async fn a_bad_snapshot_is_nacked_and_the_last_good_keeps_serving() {
    let up = Upstreams::start().await;
    let cp = ControlPlane::start(snapshot(1, &up.config(""))).await;
    let (dir, cache) = temp_cache();
    let gw = cp.proxy(&cache, dir).await;
    cp.answer(1, &gw).await;
    let bad = up.config("").replace(
        "provider: qwen, path_prefix: /api/v1",
        "provider: nowhere, path_prefix: /api/v1",
    );
    cp.send(snapshot(2, &bad));
    let nack = cp.answer(2, &gw).await;
    assert_eq!(nack["status"], "nack", "{nack}");
    let errors: Vec<&str> = nack["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let label = format!("config pushed by {} v2:", cp.url());
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&label) && e.contains("nowhere")),
        "{errors:?}"
    );
    assert_eq!(status_with(&gw, PRO_KEY).await, 200);
    let view = gw.admin_json("/admin/config").await;
    assert_eq!(view["control_plane"]["version"], 1);
    assert_eq!(view["control_plane"]["refused"]["version"], 2);
    assert_eq!(view["reload"]["last_result"], "error");
}

#[tokio::test]
async fn a_dropped_stream_reconnects_and_resyncs() {
    let up = Upstreams::start().await;
    let cp = ControlPlane::start(snapshot(1, &up.config(""))).await;
    let (dir, cache) = temp_cache();
    let gw = cp.proxy(&cache, dir).await;
    cp.answer(1, &gw).await;
    let with_key = up.config(&format!(
        "  - {{ id: pushed, sha256: {}, user: erin, tier: pro }}\n",
        sha256_hex(NEW_KEY.as_bytes())
    ));
    // Changed while the proxy was cut off: it learns of it from the next stream's snapshot.
    *cp.script.snapshot.lock().unwrap() = snapshot(2, &with_key);
    cp.drop_streams();
    assert_eq!(cp.answer(2, &gw).await["status"], "ack");
    assert_eq!(status_with(&gw, NEW_KEY).await, 200);
    let view = control_plane_view(&gw).await;
    assert_eq!(
        (view["connects"].as_u64(), view["connected"].as_bool()),
        (Some(2), Some(true))
    );
}

#[tokio::test]
async fn a_proxy_restarted_while_the_control_plane_is_down_boots_from_the_last_good_cache() {
    let up = Upstreams::start().await;
    let cp = ControlPlane::start(snapshot(1, &up.config(""))).await;
    // The cache outlives the first proxy's directory.
    let (_cache_dir, cache) = temp_cache();
    let first = cp.proxy(&cache, tempfile::tempdir().unwrap()).await;
    cp.answer(1, &first).await;
    cp.send(keys(2, 1, new_key("pro"), &["test-pro"]));
    cp.answer(2, &first).await;
    // The cache holds the document and the keys after the delta.
    eventually(
        "the cache holds v2",
        Duration::from_secs(5),
        Some(&first),
        || async {
            std::fs::read(&cache)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v["version"] == 2)
        },
    )
    .await;
    drop(first);
    cp.server.abort();
    cp.drop_streams();

    let second = cp.proxy(&cache, tempfile::tempdir().unwrap()).await;
    assert_eq!(status_with(&second, NEW_KEY).await, 200);
    assert_eq!(status_with(&second, PRO_KEY).await, 401);
    let view = control_plane_view(&second).await;
    assert_eq!(view["booted_from"], "cache");
    assert_eq!(view["version"], 2);
    assert_eq!(view["connected"], false);
    assert!(
        second
            .log()
            .contains("starting from the last-good snapshot"),
        "{}",
        second.log()
    );
}

#[test]
fn without_control_plane_or_cache_the_proxy_exits_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("none.json");
    // A port nothing listens on: bound, then released.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leaky-tokens"))
        .args([
            "proxy",
            "--control-plane",
            &format!("http://{gone}"),
            "--config-cache",
        ])
        .arg(&cache)
        .args([
            "--listen",
            &free_port().to_string(),
            "--admin-listen",
            &free_port().to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("control plane http://{gone}")),
        "{err}"
    );
    assert!(
        err.contains(&format!("last-good cache {}", cache.display())),
        "{err}"
    );
}
