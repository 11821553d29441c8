//! The config server against a real PostgreSQL: versions published from the YAML base and tenancy's
//! keys and tiers, the watch stream (snapshot first, key deltas, structural snapshots), validation that
//! refuses what `check-config` refuses, rollback, ACK/NACK status, and two replicas sharing one
//! database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::path::Path;
use std::time::Duration;

use crate::common::{fields, problem, TestApp};
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The repository's dev config (its `extends` chain merged), as the control plane imports it.
fn dev_base() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/dev.yaml");
    serde_json::to_string_pretty(&leaky_config::load_merged(&path).unwrap()).unwrap()
}

/// A pushed document, loaded as a proxy loads it.
fn load(doc: &str) -> leaky_config::Config {
    leaky_config::load_text(Path::new("pushed"), doc, Path::new("."), &|_| None).unwrap()
}

async fn put_base(app: &TestApp, base: &str) -> reqwest::Response {
    app.req(reqwest::Method::PUT, "/v1/config/base")
        .header("content-type", "application/yaml")
        .body(base.to_owned())
        .send()
        .await
        .unwrap()
}

/// A watch stream's events, heartbeats skipped.
struct Watcher {
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl Watcher {
    async fn open(app: &TestApp, instance: &str) -> Watcher {
        let res = app
            .get(&format!("/v1/config/watch?instance={instance}"))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/x-ndjson");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut body = res.bytes_stream();
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let v: Value = serde_json::from_slice(&line).unwrap();
                    if v["type"] != "heartbeat" && tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Watcher { rx }
    }

    async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("an event within 10 s")
            .expect("the stream is open")
    }
}

async fn new_key(app: &TestApp, org: &str, tier: &str) -> Value {
    let res = app
        .post(
            &format!("/v1/orgs/{org}/keys"),
            json!({ "name": "ci", "tier": tier }),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[tokio::test]
async fn the_stream_opens_with_a_snapshot_then_carries_key_deltas_and_structural_snapshots() {
    let app = common::app().await.unwrap();
    let res = put_base(&app, &dev_base()).await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.unwrap()["version"], 1);
    // The same base again publishes nothing.
    let res = put_base(&app, &dev_base()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["version"], 1);

    let mut w = Watcher::open(&app, "proxy-a").await;
    let first = w.next().await;
    assert_eq!(
        (first["type"].as_str(), first["version"].as_i64()),
        (Some("snapshot"), Some(1))
    );
    let doc = first["document"].as_str().unwrap();
    let loaded = load(doc);
    assert_eq!(loaded.keys.len(), 3, "the dev base's demo keys");

    // A key created through the API arrives as a delta on version 1.
    let org = app.org("acme").await.unwrap();
    let org_id = org["id"].as_str().unwrap();
    let issued = new_key(&app, org_id, "pro").await;
    let delta = w.next().await;
    assert_eq!(delta["type"], "keys");
    assert_eq!(
        (delta["version"].as_i64(), delta["base"].as_i64()),
        (Some(2), Some(1))
    );
    let pushed = &delta["upsert"][0];
    assert_eq!(pushed["id"], issued["id"]);
    assert_eq!(pushed["org"], org_id);
    assert_eq!(pushed["tier"], "pro");
    assert_eq!(
        pushed["sha256"],
        sha256_hex(issued["key"].as_str().unwrap())
    );
    assert!(delta["remove"].as_array().unwrap().is_empty());

    // Revoked: removed.
    let id = issued["id"].as_str().unwrap();
    let res = app
        .req(reqwest::Method::DELETE, &format!("/v1/keys/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let delta = w.next().await;
    assert_eq!(
        (delta["type"].as_str(), delta["base"].as_i64()),
        (Some("keys"), Some(2))
    );
    assert_eq!(delta["remove"], json!([id]));

    // A tier edited through the API is structural: a full snapshot that loads.
    let res = app
        .req(reqwest::Method::PUT, "/v1/tiers/gold")
        .json(&json!({ "limits": { "requests_per_minute": 7, "priority": "high" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let snap = w.next().await;
    assert_eq!(
        (snap["type"].as_str(), snap["version"].as_i64()),
        (Some("snapshot"), Some(4))
    );
    let loaded = load(snap["document"].as_str().unwrap());
    assert_eq!(loaded.tiers["gold"].priority, leaky_config::Priority::High);
    let gold_rpm = loaded.limits.policies.iter().any(|p| p.name == "gold-rpm");
    assert!(gold_rpm, "the tier's limit is a policy of the document");
    assert_eq!(loaded.keys.len(), 3, "the revoked key is gone");

    // Every version is listed, newest first, with what it changed.
    let page: Value = app
        .get("/v1/config/versions")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<(i64, &str, i64)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let n = v["keys_upserted"].as_i64().unwrap() + v["keys_removed"].as_i64().unwrap();
            (
                v["version"].as_i64().unwrap(),
                v["kind"].as_str().unwrap(),
                n,
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (4, "snapshot", 0),
            (3, "keys", 1),
            (2, "keys", 1),
            (1, "snapshot", 0)
        ]
    );
}

#[tokio::test]
async fn an_invalid_base_is_refused_with_check_config_positions_and_never_pushed() {
    let app = common::app().await.unwrap();
    assert_eq!(put_base(&app, &dev_base()).await.status(), 201);
    let bad = "providers:\n  openai:\n    base_url: http://127.0.0.1:9\n    models: [gpt-4o]\n\
routes:\n  - name: v1\n    prefix: v1\n    upstream: { provider: openai, path_prefix: /v1 }\n";
    let body = problem(put_base(&app, bad).await, 422, "validation")
        .await
        .unwrap();
    assert_eq!(fields(&body), ["document"]);
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.starts_with("base.yaml:7:"), "{message}");

    let broken = problem(put_base(&app, "routes: [\n").await, 422, "validation")
        .await
        .unwrap();
    let message = broken["errors"][0]["message"].as_str().unwrap();
    assert!(message.starts_with("base.yaml:"), "{message}");

    // Not YAML by media type, too large: refused before anything is read.
    let res = app
        .req(reqwest::Method::PUT, "/v1/config/base")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    problem(res, 415, "unsupported-media-type").await.unwrap();
    let huge = format!("# {}\n", "x".repeat(2 * 1024 * 1024));
    problem(put_base(&app, &huge).await, 413, "payload-too-large")
        .await
        .unwrap();

    let page: Value = app
        .get("/v1/config/versions")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        1,
        "nothing published: {page}"
    );
    let mut w = Watcher::open(&app, "proxy-a").await;
    assert_eq!(w.next().await["version"], 1);
}

#[tokio::test]
async fn rollback_republishes_an_old_base_as_a_new_version_and_keeps_keys() {
    let app = common::app().await.unwrap();
    let v1 = dev_base();
    assert_eq!(put_base(&app, &v1).await.status(), 201);
    let org = app.org("acme").await.unwrap();
    let issued = new_key(&app, org["id"].as_str().unwrap(), "free").await;
    // The key's version may come before or after this base edit: a key change never makes the base's
    // ETag (the version that set it) stale.
    let mut tree: Value = serde_json::from_str(&v1).unwrap();
    let routes = tree["routes"].as_array_mut().unwrap();
    routes.retain(|r| !r["name"].as_str().unwrap_or("").contains("gemini"));
    let v3 = serde_json::to_string_pretty(&tree).unwrap();
    let res = app
        .req(reqwest::Method::PUT, "/v1/config/base")
        .header("content-type", "application/yaml")
        .header("if-match", "\"1\"")
        .body(v3.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    // A stale If-Match is refused.
    let res = app
        .req(reqwest::Method::PUT, "/v1/config/base")
        .header("content-type", "application/yaml")
        .header("if-match", "\"1\"")
        .body(v1.clone())
        .send()
        .await
        .unwrap();
    problem(res, 412, "precondition-failed").await.unwrap();

    let res = app
        .post("/v1/config/rollback", json!({ "version": 1 }))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let v = res.json::<Value>().await.unwrap()["version"]
        .as_i64()
        .unwrap();
    let v4: Value = app
        .get(&format!("/v1/config/versions/{v}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v4["base"].as_str(), Some(v1.as_str()));
    assert_eq!(v4["reason"], "rollback to version 1");
    let doc = load(v4["document"].as_str().unwrap());
    assert!(
        doc.keys
            .iter()
            .any(|k| k.id == issued["id"].as_str().unwrap()),
        "the key stays"
    );

    problem(
        app.post("/v1/config/rollback", json!({ "version": 99 }))
            .await
            .unwrap(),
        404,
        "not-found",
    )
    .await
    .unwrap();
    problem(
        app.post("/v1/config/rollback", json!({ "version": "1" }))
            .await
            .unwrap(),
        422,
        "validation",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn acks_and_nacks_are_shown_per_proxy() {
    let app = common::app().await.unwrap();
    assert_eq!(put_base(&app, &dev_base()).await.status(), 201);
    let _w = Watcher::open(&app, "proxy-b").await;
    let ack = json!({ "instance": "proxy-a", "version": 1, "status": "ack" });
    assert_eq!(
        app.post("/v1/config/acks", ack).await.unwrap().status(),
        204
    );
    let nack = json!({ "instance": "proxy-a", "version": 2, "status": "nack",
        "errors": ["config pushed by cp v2:3:1: unknown tier `gold`"] });
    assert_eq!(
        app.post("/v1/config/acks", nack).await.unwrap().status(),
        204
    );

    for (body, field) in [
        (
            json!({ "instance": "proxy a", "version": 1, "status": "ack" }),
            "instance",
        ),
        (
            json!({ "instance": "proxy-a", "version": 0, "status": "ack" }),
            "version",
        ),
        (
            json!({ "instance": "proxy-a", "version": 3, "status": "nack" }),
            "errors",
        ),
    ] {
        let p = problem(
            app.post("/v1/config/acks", body).await.unwrap(),
            422,
            "validation",
        )
        .await
        .unwrap();
        assert_eq!(fields(&p), [field]);
    }
    let unknown = json!({ "instance": "proxy-a", "version": 3, "status": "maybe" });
    let res = app.post("/v1/config/acks", unknown).await.unwrap();
    assert!(res.status().is_client_error());

    let status: Value = app
        .get("/v1/config/status")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["version"], 1);
    let a = &status["instances"][0];
    assert_eq!(
        (a["instance"].as_str(), a["acked_version"].as_i64()),
        (Some("proxy-a"), Some(1))
    );
    assert_eq!(a["nacked_version"], 2);
    assert_eq!(
        a["nack_errors"][0],
        "config pushed by cp v2:3:1: unknown tier `gold`"
    );
    // The watcher's connection is recorded (best effort, shortly after it opened).
    let mut seen = false;
    for _ in 0..50 {
        let status: Value = app
            .get("/v1/config/status")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen = status["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["instance"] == "proxy-b" && i["connected_at"].is_string());
        if seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen);
}

#[tokio::test]
async fn two_replicas_share_versions_and_a_restarted_one_serves_the_latest() {
    let a = common::app().await.unwrap();
    assert_eq!(put_base(&a, &dev_base()).await.status(), 201);
    let b = common::serve(a.db_url.clone(), a.pool.clone())
        .await
        .unwrap();
    let mut on_b = Watcher::open(&b, "proxy-b").await;
    assert_eq!(on_b.next().await["version"], 1);

    // Keys created through replica A reach a watcher of replica B; both publish, no version twice.
    let org = a.org("acme").await.unwrap();
    let org_id = org["id"].as_str().unwrap().to_owned();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (ka, kb) = tokio::join!(new_key(&a, &org_id, "pro"), new_key(&b, &org_id, "free"));
        ids.push(ka["id"].as_str().unwrap().to_owned());
        ids.push(kb["id"].as_str().unwrap().to_owned());
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut last = 1;
    while seen.len() < ids.len() {
        let ev = on_b.next().await;
        let version = ev["version"].as_i64().unwrap();
        assert!(version > last, "versions only grow: {version} after {last}");
        if ev["type"] == "keys" {
            assert_eq!(
                ev["base"].as_i64(),
                Some(last),
                "a delta applies to what was sent"
            );
        }
        last = version;
        for k in ev["upsert"].as_array().into_iter().flatten() {
            seen.insert(k["id"].as_str().unwrap().to_owned());
        }
        for k in ev["document"].as_str().into_iter() {
            let doc = load(k);
            seen.extend(doc.keys.iter().map(|k| k.id.clone()));
        }
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM config.versions ORDER BY version")
            .fetch_all(&a.pool)
            .await
            .unwrap();
    assert_eq!(
        versions,
        (1..=last).collect::<Vec<_>>(),
        "dense, each written once"
    );

    // A replica started later (a restart) serves the latest version as its first snapshot.
    let c = common::serve(a.db_url.clone(), a.pool.clone())
        .await
        .unwrap();
    let mut on_c = Watcher::open(&c, "proxy-c").await;
    let snap = on_c.next().await;
    assert_eq!(
        (snap["type"].as_str(), snap["version"].as_i64()),
        (Some("snapshot"), Some(last))
    );
    let doc = load(snap["document"].as_str().unwrap());
    for id in &ids {
        assert!(
            doc.keys.iter().any(|k| &k.id == id),
            "key {id} in the snapshot"
        );
    }
}

#[tokio::test]
async fn a_postgres_restart_keeps_streams_open_and_later_changes_still_arrive() {
    // Its own cluster: stopping the shared one would fail every other test.
    let cluster = common::Cluster::start().unwrap();
    let url = common::fresh_db_on(&cluster.url()).await.unwrap();
    let pool = leaky_control_plane::db::pool(&url, 4).unwrap();
    leaky_control_plane::db::migrate(&pool).await.unwrap();
    let app = common::serve(url, pool).await.unwrap();
    assert_eq!(put_base(&app, &dev_base()).await.status(), 201);
    let org = app.org("acme").await.unwrap();
    let org_id = org["id"].as_str().unwrap().to_owned();
    let mut w = Watcher::open(&app, "proxy-a").await;
    assert_eq!(w.next().await["version"], 1);

    cluster.stop().unwrap();
    // The stream stays open while Postgres is away (its heartbeats are skipped by the watcher).
    problem(
        app.get("/v1/config/versions").await.unwrap(),
        503,
        "unavailable",
    )
    .await
    .unwrap();
    cluster.restart().unwrap();

    // Once Postgres is back, a key created reaches the stream opened before the outage: the hub
    // reconnected its listener (or its poll found the change).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let issued = loop {
        let res = app
            .post(
                &format!("/v1/orgs/{org_id}/keys"),
                json!({ "name": "after", "tier": "pro" }),
            )
            .await
            .unwrap();
        if res.status() == 201 {
            break res.json::<Value>().await.unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery: {}",
            res.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let delta = w.next().await;
    assert_eq!(
        (delta["type"].as_str(), delta["base"].as_i64()),
        (Some("keys"), Some(1))
    );
    assert_eq!(delta["upsert"][0]["id"], issued["id"]);
}

#[tokio::test]
async fn a_graceful_shutdown_ends_watch_streams_instead_of_waiting_for_them() {
    let url = common::fresh_db().await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = leaky_control_plane::Config {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        database_url: url,
        roles: leaky_control_plane::Roles::all(),
        admin_token: common::TOKEN.to_owned(),
        config_base: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/dev.yaml")),
        outbox: None,
        redis_url: None,
        billing: Default::default(),
        notify: Default::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(leaky_control_plane::run(config, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    // The dev base is imported as version 1 once migrations are done.
    let mut opened = None;
    for _ in 0..300 {
        let res = http
            .get(format!("{base}/v1/config/watch?instance=proxy-a"))
            .bearer_auth(common::TOKEN)
            .send()
            .await;
        if let Some(r) = res.ok().filter(|r| r.status() == 200) {
            opened = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut body = opened.expect("the watch stream opens").bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next()).await;
    let first = first.unwrap().unwrap().unwrap();
    assert!(first.starts_with(b"{"), "the snapshot's first bytes");

    stop.send(()).unwrap();
    // The stream ends and the server returns, well before any proxy would have let go.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream did not end");
    let served = tokio::time::timeout(Duration::from_secs(10), server).await;
    assert!(served.expect("run returned").unwrap().is_ok());
}
