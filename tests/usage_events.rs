//! Usage events on Kafka (issue #15): the real binary in front of the OpenAI stub publishes every
//! usage record to a real Kafka broker (KRaft, started by `scripts/lib/kafka.sh`), read back here
//! with an rdkafka consumer. Each test uses topics of its own.
//!
//! The broker: `LEAKY_TEST_KAFKA` (what `scripts/test` starts) when set, else one this test starts
//! itself; it fails, never skips, when it cannot. The outage tests (b, c, d, e) run brokers of their own,
//! since they stop and restart them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{chat, eventually, free_port, sha256_hex, Gateway, Upstreams, PRO_KEY};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A broker this test started (stopped on drop).
struct Broker {
    dir: tempfile::TempDir,
    port: u16,
}

/// Segment files in a spool directory (its lock file aside).
fn segments(spool: &std::path::Path) -> usize {
    std::fs::read_dir(spool)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count()
}

fn kafka_sh(cmd: &str, dir: &Path, port: u16) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/kafka.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(". '{}' && {cmd} \"$0\" \"$1\"", script.display()))
        .arg(dir)
        .arg(port.to_string())
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "kafka.sh {cmd} failed (java and maven are needed):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().port();
        kafka_sh("kafka_start", dir.path(), port);
        Broker { dir, port }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn stop(&self) {
        kafka_sh("kafka_stop", self.dir.path(), self.port);
    }

    /// Starts it again on the same data and port.
    fn restart(&self) {
        kafka_sh("kafka_start", self.dir.path(), self.port);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The shared broker of the run, or one of this test's own.
fn shared_broker() -> (String, Option<Broker>) {
    match std::env::var("LEAKY_TEST_KAFKA") {
        Ok(addr) if !addr.is_empty() => (addr, None),
        _ => {
            let b = Broker::start();
            (b.addr(), Some(b))
        }
    }
}

/// A topic name no other test uses.
fn topic(name: &str) -> String {
    format!("test.usage.{name}.{}", uuid::Uuid::new_v4().simple())
}

/// Creates `topic` with one partition (so the whole topic is in order).
async fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let t = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    let res = admin
        .create_topics(
            &[t],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    for r in res {
        r.unwrap();
    }
}

fn consumer(brokers: &str, topic: &str) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("test-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

/// One consumed message: key, the `traceparent` header, the envelope.
struct Got {
    key: String,
    traceparent: Option<String>,
    event: Value,
}

/// The next message on the topic (within 60 s: the first group on a fresh broker takes seconds).
async fn next(c: &StreamConsumer) -> Got {
    let m = tokio::time::timeout(Duration::from_secs(60), c.recv())
        .await
        .expect("no event within 60 s")
        .unwrap();
    let header = m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == "traceparent")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    });
    Got {
        key: String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
        traceparent: header,
        event: serde_json::from_slice(m.payload().unwrap()).unwrap(),
    }
}

/// The gateway: `/v1` to the OpenAI stub, metered (a token quota), publishing to `topic`.
fn config(up: &Upstreams, brokers: &str, topic: &str, spool: Option<&Path>) -> String {
    let spool = spool.map_or(String::new(), |d| {
        format!(
            "\n    spool_dir: {}\n    delivery_timeout_ms: 1500",
            d.display()
        )
    });
    format!(
        r#"providers:
  openai:
    base_url: http://{openai}
    credential: sk-test
    models: [gpt-4o-mini]
routes:
  - name: v1
    prefix: /v1
    upstream: {{ provider: openai, path_prefix: /v1 }}
    filters:
      - kind: request-id
      - kind: api-key
      - kind: rate-limit
tiers:
  pro:
    limits:
      - {{ name: day, unit: tokens, quota: daily, limit: 10000000 }}
keys:
  - {{ id: test-pro, sha256: {key}, user: alice, org: acme, tier: pro }}
events:
  kafka:
    brokers: ["{brokers}"]
    topic: {topic}{spool}
"#,
        openai = up.stubs.openai,
        key = sha256_hex(PRO_KEY.as_bytes()),
    )
}

/// A chat request (with `traceparent` if given); its request id and how long it took.
async fn request(gw: &Gateway, traceparent: Option<&str>) -> (String, Duration) {
    let start = Instant::now();
    let mut req = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(PRO_KEY)
        .json(&chat("gpt-4o-mini", "hello there"));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    let rid = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    res.bytes().await.unwrap();
    (rid, start.elapsed())
}

/// The contract's envelope and fields, for request `rid` of key test-pro.
fn assert_contract(got: &Got, rid: &str) {
    let e = &got.event;
    assert_eq!(got.key, "acme", "keyed by org");
    assert_eq!(e["specversion"], "1.0");
    assert!(
        e["id"]
            .as_str()
            .is_some_and(|s| uuid::Uuid::parse_str(s).is_ok()),
        "{e}"
    );
    assert!(
        e["source"]
            .as_str()
            .unwrap()
            .starts_with("/leaky-tokens/proxy/"),
        "{e}"
    );
    assert_eq!(e["type"], "leaky.usage.v1");
    assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
    assert_eq!(e["subject"], rid);
    assert_eq!(e["datacontenttype"], "application/json");
    assert_eq!(e["schemaversion"], 1);
    let d = &e["data"];
    assert_eq!(d["request_id"], rid);
    assert_eq!(d["org"], "acme");
    assert_eq!(d["user"], "alice");
    assert_eq!(d["key_id"], "test-pro");
    assert_eq!(d["model"], "gpt-4o-mini");
    assert_eq!(d["provider"], "openai");
    let (p, c) = (
        d["prompt_tokens"].as_u64().unwrap(),
        d["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 0 && c > 0, "{d}");
    assert_eq!(d["total_tokens"].as_u64().unwrap(), p + c);
    assert_eq!(d["usage_source"], "reported");
    assert_eq!(d["status"], 200);
    assert!(d["latency_ms"].as_f64().unwrap() > 0.0, "{d}");
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// (a) One request, one event with the contract's fields, the org as key and the caller's
/// `traceparent` as a header; the next message is the next request's (no duplicate between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_publishes_one_usage_event() {
    let (brokers, _own) = shared_broker();
    let topic = topic("one");
    create_topic(&brokers, &topic).await;
    let up = Upstreams::start().await;
    let gw = Gateway::start(&config(&up, &brokers, &topic, None)).await;
    let c = consumer(&brokers, &topic);

    let (rid, _) = request(&gw, Some(TRACEPARENT)).await;
    let got = next(&c).await;
    assert_contract(&got, &rid);
    assert_eq!(got.traceparent.as_deref(), Some(TRACEPARENT));

    let (rid2, _) = request(&gw, None).await;
    let got2 = next(&c).await;
    assert_eq!(
        got2.event["data"]["request_id"],
        rid2.as_str(),
        "a duplicate came first"
    );
    assert_eq!(got2.traceparent, None);
    assert_ne!(got2.event["id"], got.event["id"]);
    eventually(
        "published counted",
        Duration::from_secs(5),
        Some(&gw),
        || async { gw.metric("leaky_usage_events_published_total").await >= 2.0 },
    )
    .await;
}

/// (b) The broker goes away: requests are still served at normal latency and their events go to
/// the spool; the broker comes back: every spooled event is delivered once, in order, before the
/// events of later requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_spools_and_replays_in_order() {
    let broker = Broker::start();
    let brokers = broker.addr();
    let topic = topic("outage");
    create_topic(&brokers, &topic).await;
    let up = Upstreams::start().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let spool: PathBuf = spool_dir.path().join("spool");
    let gw = Gateway::start(&config(&up, &brokers, &topic, Some(&spool))).await;

    let (first, normal) = request(&gw, None).await;
    eventually(
        "the first event delivered",
        Duration::from_secs(30),
        Some(&gw),
        || async { gw.metric("leaky_usage_events_published_total").await >= 1.0 },
    )
    .await;

    broker.stop();
    let mut down = Vec::new();
    for _ in 0..5 {
        let (rid, took) = request(&gw, None).await;
        // Nothing on the request path waits for Kafka: served as fast as with the broker up.
        assert!(
            took < normal.max(Duration::from_millis(50)) * 10,
            "{took:?} vs {normal:?}"
        );
        down.push(rid);
    }
    eventually(
        "the outage's events spooled",
        Duration::from_secs(30),
        Some(&gw),
        || async { gw.metric("leaky_usage_events_spooled_total").await >= 5.0 },
    )
    .await;
    assert!(
        segments(&spool) >= 1,
        "no spool segment in {}",
        spool.display()
    );

    broker.restart();
    let (after, _) = request(&gw, None).await;
    let c = consumer(&brokers, &topic);
    let mut ids = Vec::new();
    for _ in 0..7 {
        let got = next(&c).await;
        assert_eq!(got.key, "acme");
        ids.push(got.event["data"]["request_id"].as_str().unwrap().to_owned());
    }
    let mut want = vec![first];
    want.extend(down);
    want.push(after);
    assert_eq!(ids, want, "delivered once each, in order");
    eventually(
        "the spool emptied",
        Duration::from_secs(10),
        Some(&gw),
        || async { gw.metric("leaky_usage_events_spool_bytes").await == 0.0 },
    )
    .await;
    assert_eq!(segments(&spool), 0, "every segment replayed and deleted");
}

/// Events still on their way when the proxy stops are not lost: with the broker down, SIGTERM makes
/// the publisher spool what it holds before the process exits, and the next proxy on the same spool
/// delivers it, in order, once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pending_at_shutdown_survive_in_the_spool() {
    let broker = Broker::start();
    let brokers = broker.addr();
    let topic = topic("shutdown");
    create_topic(&brokers, &topic).await;
    let up = Upstreams::start().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let spool: PathBuf = spool_dir.path().join("spool");
    let config = format!(
        "server:\n  grace_period_seconds: 0\n{}",
        config(&up, &brokers, &topic, Some(&spool))
    );
    let mut gw = Gateway::start(&config).await;
    let (first, _) = request(&gw, None).await;
    eventually(
        "the first event delivered",
        Duration::from_secs(30),
        Some(&gw),
        || async { gw.metric("leaky_usage_events_published_total").await >= 1.0 },
    )
    .await;

    broker.stop();
    let (r2, _) = request(&gw, None).await;
    let (r3, _) = request(&gw, None).await;
    // At once: the two events are still being tried (1.5 s delivery timeout) when the stop comes.
    assert!(gw.terminate(Duration::from_secs(30)).await.success());
    assert!(
        segments(&spool) >= 1,
        "nothing spooled at shutdown; log:\n{}",
        gw.log()
    );

    broker.restart();
    let gw2 = Gateway::start(&config).await;
    let c = consumer(&brokers, &topic);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            next(&c).await.event["data"]["request_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(ids, [first, r2, r3], "delivered once each, in order");
    drop(gw2);
}

/// (d) A proxy killed (SIGKILL: no drain, no shutdown hook) while the broker is down loses nothing
/// its spool already holds: the next proxy on the same spool delivers it once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_proxy_replays_its_spool_after_restart() {
    let broker = Broker::start();
    let brokers = broker.addr();
    let topic = topic("killed");
    create_topic(&brokers, &topic).await;
    let up = Upstreams::start().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let spool: PathBuf = spool_dir.path().join("spool");
    let config = config(&up, &brokers, &topic, Some(&spool));
    let gw = Gateway::start(&config).await;
    broker.stop();
    let mut served = Vec::new();
    for _ in 0..4 {
        served.push(request(&gw, None).await.0);
    }
    eventually(
        "the events spooled",
        Duration::from_secs(30),
        Some(&gw),
        || async { gw.metric("leaky_usage_events_spooled_total").await >= 4.0 },
    )
    .await;
    drop(gw); // SIGKILL
    assert!(segments(&spool) >= 1);

    broker.restart();
    let gw2 = Gateway::start(&config).await;
    let c = consumer(&brokers, &topic);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            next(&c).await.event["data"]["request_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(ids, served, "delivered once each, in order");
    drop(gw2);
}

/// (e) The broker is stopped for 30 s under steady traffic, then restarted: every request served
/// before, during and after the outage has its event on the topic (duplicates are allowed —
/// consumers dedupe on the event id — but none is missing), and no request waited for Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thirty_second_outage_under_traffic_loses_no_event() {
    let broker = Broker::start();
    let brokers = broker.addr();
    let topic = topic("outage30");
    create_topic(&brokers, &topic).await;
    let up = Upstreams::start().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let gw = std::sync::Arc::new(
        Gateway::start(&config(
            &up,
            &brokers,
            &topic,
            Some(&spool_dir.path().join("spool")),
        ))
        .await,
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (gw, stop) = (gw.clone(), stop.clone());
        tokio::spawn(async move {
            let mut served = Vec::new();
            let mut slowest = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (rid, took) = request(&gw, None).await;
                served.push(rid);
                slowest = slowest.max(took);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (served, slowest)
        })
    };
    let served_before = |n: f64| {
        let gw = gw.clone();
        async move { gw.metric("leaky_usage_events_published_total").await >= n }
    };
    eventually(
        "traffic flowing",
        Duration::from_secs(30),
        Some(&gw),
        || served_before(5.0),
    )
    .await;
    broker.stop();
    // The outage itself is the scenario (a fixed 30 s of the broker being gone), not a wait for a result.
    tokio::time::sleep(Duration::from_secs(30)).await;
    broker.restart();
    let published_at_restart = gw.metric("leaky_usage_events_published_total").await;
    eventually(
        "traffic flowing again",
        Duration::from_secs(60),
        Some(&gw),
        || served_before(published_at_restart + 5.0),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, slowest) = traffic.await.unwrap();
    assert!(
        slowest < Duration::from_secs(2),
        "a request waited {slowest:?} for Kafka"
    );
    assert!(served.len() > 100, "only {} requests", served.len());

    let c = consumer(&brokers, &topic);
    let mut seen = std::collections::HashSet::new();
    while !served.iter().all(|rid| seen.contains(rid)) {
        let got = next(&c).await;
        seen.insert(got.event["data"]["request_id"].as_str().unwrap().to_owned());
    }
    let text = gw.admin_text("/metrics").await;
    let dropped: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("leaky_usage_events_dropped_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(dropped.is_empty(), "events dropped: {dropped:?}");
}
