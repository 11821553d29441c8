//! The config server's watch stream as a test sees it (after `tests/config_server.rs`'s `Watcher`):
//! publish the repository's dev base, open `GET /v1/config/watch?instance=…`, read NDJSON events with
//! heartbeats skipped, and gather key deltas until the ones a test waits for have arrived.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::common::TestApp;

/// Publishes the repository's dev config (its `extends` chain merged) as the YAML base: version 1.
pub async fn publish_dev_base(app: &TestApp) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/dev.yaml");
    let base = serde_json::to_string_pretty(&leaky_config::load_merged(&path).unwrap()).unwrap();
    let res = app
        .req(reqwest::Method::PUT, "/v1/config/base")
        .header("content-type", "application/yaml")
        .body(base)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "PUT /v1/config/base");
}

/// A watch stream's events, heartbeats skipped.
pub struct Watcher {
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl Watcher {
    /// Opens the stream and consumes its first event, the snapshot.
    pub async fn open(app: &TestApp, instance: &str) -> Watcher {
        let res = app
            .get(&format!("/v1/config/watch?instance={instance}"))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
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
        let mut w = Watcher { rx };
        assert_eq!(
            w.next().await["type"],
            "snapshot",
            "a stream opens with a snapshot"
        );
        w
    }

    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("an event within 10 s")
            .expect("the stream is open")
    }

    /// Reads `keys` events until every id of `upserts` was upserted and every id of `removes`
    /// removed; returns every upserted entry (by id, the last one wins) and every removed id seen.
    pub async fn keys_until(
        &mut self,
        upserts: &[&str],
        removes: &[&str],
    ) -> (Vec<Value>, BTreeSet<String>) {
        let mut upserted: Vec<Value> = Vec::new();
        let mut removed = BTreeSet::new();
        let done = |up: &Vec<Value>, rm: &BTreeSet<String>| {
            upserts.iter().all(|id| up.iter().any(|k| k["id"] == *id))
                && removes.iter().all(|id| rm.contains(*id))
        };
        while !done(&upserted, &removed) {
            let ev = self.next().await;
            assert_eq!(ev["type"], "keys", "only key deltas expected here: {ev}");
            for k in ev["upsert"].as_array().into_iter().flatten() {
                upserted.retain(|u| u["id"] != k["id"]);
                upserted.push(k.clone());
            }
            for id in ev["remove"].as_array().into_iter().flatten() {
                removed.insert(id.as_str().unwrap().to_owned());
            }
        }
        (upserted, removed)
    }
}
