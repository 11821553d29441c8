//! The transactional outbox against a real PostgreSQL and a real Kafka (KRaft, `scripts/lib/kafka.sh`):
//! tenancy's changes produce exactly their domain events on the topic, in order per aggregate, in the
//! CloudEvents envelope; failed changes publish nothing; a relay that cannot reach Kafka marks nothing
//! and a second relay delivers everything; two relays at once publish each event once.
//!
//! The broker: `common::kafka` (`LEAKY_TEST_KAFKA`, or one per test process). Each test publishes to a topic of its own through the relay's topic override.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use leaky_control_plane::outbox::{self, Event, Relay, RelayConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use serde_json::{json, Value};
use sqlx::PgPool;

/// A port nothing listens on (for the relay that cannot reach Kafka).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// The broker every test of this process uses (`common::kafka`).
fn brokers() -> String {
    common::kafka::brokers().unwrap()
}

/// A new one-partition topic (so the whole topic is in order) no other test uses.
async fn topic(brokers: &str, name: &str) -> String {
    common::kafka::topic(brokers, &format!("outbox.{name}"), 1)
        .await
        .unwrap()
}

/// One message as the tests look at it.
#[derive(Debug, Clone)]
struct Got {
    key: String,
    seq: i64,
    doc: Value,
}

fn got(m: &BorrowedMessage<'_>) -> Got {
    let headers = m.headers().unwrap();
    let seq = headers
        .iter()
        .find(|h| h.key == "aggregate-seq")
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).parse().unwrap())
        .unwrap();
    Got {
        key: String::from_utf8_lossy(m.key().unwrap()).into_owned(),
        seq,
        doc: serde_json::from_slice(m.payload().unwrap()).unwrap(),
    }
}

/// The first `n` messages of `topic` (within 60 s: the first group on a fresh broker takes seconds).
async fn read(brokers: &str, topic: &str, n: usize) -> Vec<Got> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("t-{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(60), c.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages on {topic}", out.len()))
            .unwrap();
        out.push(got(&m));
    }
    out
}

fn relay_config(brokers: &str, topic: &str) -> RelayConfig {
    let mut rc = RelayConfig::new(brokers);
    rc.topic = Some(topic.to_owned());
    rc.delivery_timeout = Duration::from_secs(10);
    rc.poll_every = Duration::from_millis(200);
    rc
}

/// Waits (on the database, which is what the relay reports through) until nothing is unsent.
async fn until_all_sent(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while outbox::unsent(pool).await.unwrap() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn issue(app: &common::TestApp, org: &str, name: &str) -> anyhow::Result<Value> {
    let res = app
        .post(
            &format!("/v1/orgs/{org}/keys"),
            json!({ "name": name, "tier": "free" }),
        )
        .await?;
    anyhow::ensure!(res.status() == 201, "issue: {}", res.status());
    Ok(res.json().await?)
}

/// (a) Org and key changes through the API reach the topic as exactly their events, in order per
/// aggregate, in the CloudEvents envelope, keyed by aggregate id, and are marked sent.
#[tokio::test]
async fn api_changes_publish_exactly_their_events_in_order() -> anyhow::Result<()> {
    let brokers = brokers();
    let topic = topic(&brokers, "api").await;
    let app = common::app().await?;
    let relay = Relay::new(app.pool.clone(), relay_config(&brokers, &topic))?;
    let stats = relay.stats();
    let running = tokio::spawn(relay.run());

    let org = app.org("acme").await?;
    let org_id = org["id"].as_str().context("org id")?.to_owned();
    let k1 = issue(&app, &org_id, "one").await?["id"]
        .as_str()
        .context("id")?
        .to_owned();
    let rotated: Value = app
        .post(&format!("/v1/keys/{k1}/rotate?grace_seconds=60"), json!({}))
        .await?
        .json()
        .await?;
    let k2 = rotated["id"].as_str().context("new id")?.to_owned();
    let res = app
        .req(reqwest::Method::DELETE, &format!("/v1/keys/{k1}"))
        .send()
        .await?;
    assert_eq!(res.status(), 204);
    let version = app.get(&format!("/v1/orgs/{org_id}")).await?.headers()["etag"].clone();
    let res = app
        .req(reqwest::Method::DELETE, &format!("/v1/orgs/{org_id}"))
        .header("if-match", version)
        .send()
        .await?;
    assert!(res.status().is_success(), "org delete: {}", res.status());

    let msgs = read(&brokers, &topic, 6).await;
    until_all_sent(&app.pool).await;
    running.abort();
    // Exactly these: the relay published six events, and six arrived.
    assert_eq!(stats.published(), 6);
    let seen: Vec<(&str, &str, i64)> = msgs
        .iter()
        .map(|m| (m.doc["type"].as_str().unwrap(), m.key.as_str(), m.seq))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("org.created", org_id.as_str(), 1),
            ("key.created", k1.as_str(), 1),
            ("key.rotated", k1.as_str(), 2),
            ("key.revoked", k1.as_str(), 3),
            ("key.revoked", k2.as_str(), 1),
            ("org.deleted", org_id.as_str(), 2),
        ]
    );
    let created = &msgs[1].doc;
    assert_eq!(created["specversion"], "1.0");
    assert_eq!(created["source"], "/leaky-tokens/control-plane");
    assert_eq!(created["subject"], k1.as_str());
    assert_eq!(created["datacontenttype"], "application/json");
    assert_eq!(created["data"]["org"], org_id.as_str());
    assert_eq!(created["data"]["tier"], "free");
    assert!(
        created["data"].get("key").is_none(),
        "the secret never leaves"
    );
    assert!(uuid::Uuid::parse_str(created["id"].as_str().unwrap()).is_ok());
    assert!(chrono::DateTime::parse_from_rfc3339(created["time"].as_str().unwrap()).is_ok());
    assert_eq!(msgs[2].doc["data"]["new_key"]["id"], k2.as_str());
    assert_eq!(outbox::lag(&app.pool).await?, None);
    Ok(())
}

/// A committed marker event: once it is on the topic, everything committed before it is too.
async fn marker(pool: &PgPool) -> anyhow::Result<uuid::Uuid> {
    let mut tx = pool.begin().await?;
    let id = uuid::Uuid::new_v4();
    let event = Event::tenancy("org", id, "test.marker", json!({}));
    outbox::append(&mut tx, event).await?;
    tx.commit().await?;
    Ok(id)
}

/// (b) Changes that fail publish nothing: a transaction rolled back after its append, a refused key
/// (unknown tier) and a refused org (duplicate name). Only the marker after them arrives.
#[tokio::test]
async fn failed_changes_publish_nothing() -> anyhow::Result<()> {
    let brokers = brokers();
    let topic = topic(&brokers, "failed").await;
    let app = common::app().await?;
    let org = app.org("acme").await?;
    let org_id = org["id"].as_str().context("org id")?.to_owned();
    let mut tx = app.pool.begin().await?;
    let event = Event::tenancy("org", uuid::Uuid::new_v4(), "org.created", json!({}));
    outbox::append(&mut tx, event).await?;
    tx.rollback().await?;
    let res = app
        .post(
            &format!("/v1/orgs/{org_id}/keys"),
            json!({ "name": "k", "tier": "no-such-tier" }),
        )
        .await?;
    assert_eq!(res.status(), 422);
    let res = app.post("/v1/orgs", json!({ "name": "acme" })).await?;
    assert_eq!(res.status(), 409);
    let mark = marker(&app.pool).await?;

    let relay = Relay::new(app.pool.clone(), relay_config(&brokers, &topic))?;
    while relay.publish_batch().await? > 0 {}
    let msgs = read(&brokers, &topic, 2).await;
    let kinds: Vec<(&str, &str)> = msgs
        .iter()
        .map(|m| (m.doc["type"].as_str().unwrap(), m.key.as_str()))
        .collect();
    let mark = mark.to_string();
    assert_eq!(
        kinds,
        vec![
            ("org.created", org_id.as_str()),
            ("test.marker", mark.as_str())
        ]
    );
    assert_eq!(relay.stats().published(), 2);
    Ok(())
}

/// Appends `per` events to each of `aggregates` keys, one transaction each, interleaved.
async fn append_many(
    pool: &PgPool,
    aggregates: usize,
    per: usize,
) -> anyhow::Result<Vec<uuid::Uuid>> {
    let ids: Vec<uuid::Uuid> = (0..aggregates).map(|_| uuid::Uuid::new_v4()).collect();
    for i in 0..per {
        for id in &ids {
            let mut tx = pool.begin().await?;
            let event = Event::tenancy("key", *id, "key.test", json!({ "i": i }));
            outbox::append(&mut tx, event).await?;
            tx.commit().await?;
        }
    }
    Ok(ids)
}

/// Checks every event of `pool` arrived `times` times at least / exactly and in order per aggregate.
async fn check_delivery(pool: &PgPool, msgs: &[Got], exact: bool) -> anyhow::Result<()> {
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM outbox.events")
        .fetch_all(pool)
        .await?;
    let mut count: HashMap<String, usize> = HashMap::new();
    let mut last: HashMap<&str, i64> = HashMap::new();
    for m in msgs {
        *count
            .entry(m.doc["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
        if exact {
            let prev = last.insert(&m.key, m.seq).unwrap_or(0);
            assert_eq!(m.seq, prev + 1, "aggregate {} out of order", m.key);
        }
    }
    for id in ids {
        let n = count.get(&id.to_string()).copied().unwrap_or(0);
        assert!(n >= 1, "event {id} never published");
        if exact {
            assert_eq!(n, 1, "event {id} published {n} times");
        }
    }
    Ok(())
}

/// (c) A relay whose producer cannot reach Kafka publishes nothing and marks nothing; a second relay
/// (Kafka "back") publishes every event at least once and marks them all sent.
#[tokio::test]
async fn unreachable_kafka_marks_nothing_and_a_second_relay_delivers_all() -> anyhow::Result<()> {
    let brokers = brokers();
    let topic = topic(&brokers, "crash").await;
    let app = common::app().await?;
    append_many(&app.pool, 3, 4).await?;
    let mut down = relay_config(&format!("127.0.0.1:{}", free_port()), &topic);
    down.delivery_timeout = Duration::from_secs(2);
    let dead = Relay::new(app.pool.clone(), down.clone())?;
    assert!(dead.publish_batch().await.is_err());
    assert_eq!(dead.stats().published(), 0);
    assert_eq!(outbox::unsent(&app.pool).await?, 12);
    drop(dead);
    // The running loop too: it counts the failure, logs it and marks nothing.
    let dead = Relay::new(app.pool.clone(), down)?;
    let dead_stats = dead.stats();
    let running = tokio::spawn(dead.run());
    let failed = async {
        while dead_stats.errors() == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), failed)
        .await
        .context("the relay never reported its failed batch")?;
    running.abort();
    assert_eq!(dead_stats.published(), 0);
    assert_eq!(outbox::unsent(&app.pool).await?, 12);
    assert!(outbox::lag(&app.pool).await?.is_some());

    let relay = Relay::new(app.pool.clone(), relay_config(&brokers, &topic))?;
    let running = tokio::spawn(relay.run());
    until_all_sent(&app.pool).await;
    running.abort();
    let msgs = read(&brokers, &topic, 12).await;
    check_delivery(&app.pool, &msgs, false).await?;
    Ok(())
}

/// (d) Two relays draining one outbox at once publish every event exactly once, in order per
/// aggregate (small batches, so they interleave).
#[tokio::test]
async fn two_relays_publish_each_event_once_in_order() -> anyhow::Result<()> {
    let brokers = brokers();
    let topic = topic(&brokers, "two").await;
    let app = common::app().await?;
    append_many(&app.pool, 8, 15).await?;
    let mut rc = relay_config(&brokers, &topic);
    rc.batch = 5;
    let a = Relay::new(app.pool.clone(), rc.clone())?;
    let b = Relay::new(app.pool.clone(), rc)?;
    let (sa, sb) = (a.stats(), b.stats());
    let (ta, tb) = (tokio::spawn(a.run()), tokio::spawn(b.run()));
    until_all_sent(&app.pool).await;
    ta.abort();
    tb.abort();
    assert_eq!(sa.published() + sb.published(), 120);
    assert!(
        sa.published() > 0 && sb.published() > 0,
        "both relays worked"
    );
    let msgs = read(&brokers, &topic, 120).await;
    check_delivery(&app.pool, &msgs, true).await?;
    Ok(())
}

/// Pruning deletes only sent events older than the retention; the lag is the oldest unsent age.
/// (Postgres only: "sent" is set by hand here, the relay tests cover who sets it.)
#[tokio::test]
async fn prune_keeps_unsent_and_recent_events() -> anyhow::Result<()> {
    let app = common::app().await?;
    append_many(&app.pool, 1, 3).await?;
    assert_eq!(outbox::prune(&app.pool, Duration::ZERO).await?, 0);
    sqlx::query(
        "UPDATE outbox.events SET created_at = now() - interval '1 hour',
         sent_at = CASE aggregate_seq WHEN 1 THEN now() - interval '2 days'
                                      WHEN 2 THEN now() - interval '1 minute' END",
    )
    .execute(&app.pool)
    .await?;
    let lag = outbox::lag(&app.pool).await?.context("one unsent")?;
    assert!(lag >= Duration::from_secs(3599), "{lag:?}");
    assert_eq!(
        outbox::prune(&app.pool, Duration::from_secs(86_400)).await?,
        1
    );
    let left: Vec<i64> =
        sqlx::query_scalar("SELECT aggregate_seq FROM outbox.events ORDER BY aggregate_seq")
            .fetch_all(&app.pool)
            .await?;
    assert_eq!(left, vec![2, 3]);
    Ok(())
}

/// Pruning never deletes an aggregate's newest event, however old: the next append numbers from it,
/// so `aggregate-seq` keeps growing for consumers.
#[tokio::test]
async fn prune_keeps_each_aggregates_newest_event() -> anyhow::Result<()> {
    let app = common::app().await?;
    let ids = append_many(&app.pool, 2, 3).await?;
    sqlx::query("UPDATE outbox.events SET sent_at = now() - interval '2 days'")
        .execute(&app.pool)
        .await?;
    assert_eq!(
        outbox::prune(&app.pool, Duration::from_secs(86_400)).await?,
        4
    );
    let mut tx = app.pool.begin().await?;
    outbox::append(
        &mut tx,
        Event::tenancy("key", ids[0], "key.test", json!({})),
    )
    .await?;
    tx.commit().await?;
    let left: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, aggregate_seq FROM outbox.events ORDER BY aggregate_id, aggregate_seq",
    )
    .fetch_all(&app.pool)
    .await?;
    let mut want = vec![
        (ids[0].to_string(), 3),
        (ids[0].to_string(), 4),
        (ids[1].to_string(), 3),
    ];
    want.sort();
    assert_eq!(left, want);
    Ok(())
}

/// The value of an unlabelled sample in a Prometheus text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `/metrics` shows the outbox backlog and lag while events wait, and the running relay's counters
/// once it has published them (the relay counts into the process's stats, as `run` wires it).
#[tokio::test]
async fn metrics_show_the_backlog_then_what_the_relay_published() -> anyhow::Result<()> {
    let brokers = brokers();
    let topic = topic(&brokers, "metrics").await;
    let url = common::fresh_db().await?;
    let pool = leaky_control_plane::db::pool(&url, 8)?;
    leaky_control_plane::db::migrate(&pool).await?;
    let state = leaky_control_plane::http::ApiState::new(
        pool.clone(),
        leaky_control_plane::http::AdminToken::new(common::TOKEN),
    );
    state.set_migrated();
    let stats = state.stats.clone();
    let app = common::serve_state(url, state).await?;
    append_many(&pool, 2, 3).await?;
    let scrape = || async {
        let res = app.http.get(format!("{}/metrics", app.base)).send().await?;
        anyhow::ensure!(res.status() == 200, "metrics: {}", res.status());
        anyhow::Ok(res.text().await?)
    };
    let before = scrape().await?;
    assert_eq!(
        sample(&before, "leaky_outbox_unsent_events"),
        Some(6.0),
        "{before}"
    );
    assert!(
        sample(&before, "leaky_outbox_lag_seconds").unwrap_or(0.0) > 0.0,
        "{before}"
    );
    assert_eq!(sample(&before, "leaky_outbox_published_total"), Some(0.0));
    assert_eq!(sample(&before, "leaky_control_plane_db_up"), Some(1.0));

    let relay =
        Relay::new(pool.clone(), relay_config(&brokers, &topic))?.with_stats(stats.outbox.clone());
    let running = tokio::spawn(relay.run());
    until_all_sent(&pool).await;
    running.abort();
    let after = scrape().await?;
    assert_eq!(
        sample(&after, "leaky_outbox_published_total"),
        Some(6.0),
        "{after}"
    );
    assert_eq!(sample(&after, "leaky_outbox_unsent_events"), Some(0.0));
    assert_eq!(sample(&after, "leaky_outbox_lag_seconds"), Some(0.0));
    assert_eq!(sample(&after, "leaky_outbox_relay_errors_total"), Some(0.0));
    Ok(())
}
