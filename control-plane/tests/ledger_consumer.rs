//! The ledger's usage consumer against a real Kafka and PostgreSQL: every usage event delivered twice
//! and in a shuffled order, plus an undecodable message and a re-published request; the consumer is
//! dropped mid-way and a new one joins the same group. The ledger's `consumed` must equal the sum of
//! the distinct requests exactly, and the accounting invariant must hold at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use leaky_control_plane::consume::{self, ConsumerStats};
use leaky_control_plane::ledger::{self, usage};
use leaky_control_plane::{db, tenancy};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// splitmix64, seeded: the shuffles and token counts are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = usize::try_from(self.next() % (i as u64 + 1)).unwrap();
            items.swap(i, j);
        }
    }
}

/// One usage event: (message key, JSON document).
#[derive(Clone)]
struct Usage {
    org: Uuid,
    tokens: u64,
    doc: String,
}

fn usage(id: &str, org: Uuid, request_id: &str, tokens: u64) -> Usage {
    let doc = json!({
        "specversion": "1.0", "id": id, "source": "/leaky-tokens/proxy/test", "type": "leaky.usage.v1",
        "time": "2030-01-01T00:00:00Z", "subject": request_id, "datacontenttype": "application/json",
        "schemaversion": 1,
        "data": {
            "request_id": request_id, "org": org.to_string(), "user": "u1", "key_id": "k1", "tier": "pro",
            "route": null, "model": "gpt-4o-mini", "provider": "openai", "prompt_tokens": tokens / 2,
            "completion_tokens": tokens - tokens / 2, "total_tokens": tokens, "usage_source": "reported",
            "status": 200, "latency_ms": 12.5
        }
    });
    Usage {
        org,
        tokens,
        doc: doc.to_string(),
    }
}

async fn produce(brokers: &str, topic: &str, messages: &[(String, String)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for (key, payload) in messages {
        let headers = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        });
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

async fn processed(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ledger.processed_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Polls `done` until it holds or 90 s passed.
async fn until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `group` has committed every partition of `topic` up to its end.
fn caught_up(brokers: &str, topic: &str, group: &str) -> bool {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let meta = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in meta.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
        let (_, high) = c
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .unwrap();
        ends.insert(p.id(), high);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    committed.elements().iter().all(|e| match e.offset() {
        Offset::Offset(o) => o >= ends[&e.partition()],
        _ => ends[&e.partition()] == 0,
    })
}

fn start(
    pool: &PgPool,
    brokers: &str,
    topic: &str,
    group: &str,
) -> (tokio::task::JoinHandle<()>, std::sync::Arc<ConsumerStats>) {
    let consumer = usage::consumer(pool.clone(), brokers, topic, group).unwrap();
    let stats = consumer.stats();
    (tokio::spawn(consumer.run()), stats)
}

#[tokio::test]
async fn usage_is_debited_once_despite_duplicates_shuffles_poison_and_a_restart(
) -> anyhow::Result<()> {
    let brokers = common::kafka::brokers()?;
    let topic = common::kafka::topic(&brokers, "ledger-usage", 2).await?;
    let group = format!("leaky-ledger-test-{}", Uuid::new_v4().simple());
    let url = common::fresh_db().await?;
    let pool = db::pool(&url, 8)?;
    db::migrate(&pool).await?;
    let mut orgs = Vec::new();
    for name in ["a", "b", "no-account"] {
        orgs.push(tenancy::orgs::create(&pool, "test", name).await?.id);
    }
    ledger::credit_purchase(&pool, orgs[0], 1_000, "p-a", None).await?;
    ledger::grant(&pool, orgs[1], 100_000, "g-b", None).await?;
    let mut rng = Rng(0x5eed_0015);
    let events: Vec<Usage> = (0..40)
        .map(|i| {
            usage(
                &Uuid::new_v4().to_string(),
                orgs[i % 3],
                &format!("req-{i}"),
                1 + rng.next() % 90,
            )
        })
        .collect();
    // A re-publication of req-0 under a new event id: the entry's ref still makes it a no-op.
    let republished = usage(
        &Uuid::new_v4().to_string(),
        events[0].org,
        "req-0",
        events[0].tokens,
    );
    let msg = |u: &Usage| (u.org.to_string(), u.doc.clone());

    // First half, each event twice, shuffled, with a poison message.
    let mut first: Vec<(String, String)> =
        events[..20].iter().flat_map(|u| [msg(u), msg(u)]).collect();
    first.push((orgs[0].to_string(), "{not json".to_owned()));
    rng.shuffle(&mut first);
    produce(&brokers, &topic, &first).await;
    let (a, a_stats) = start(&pool, &brokers, &topic, &group);
    until("the first half", || async {
        processed(&pool).await == 20 && a_stats.poison() >= 1
    })
    .await;
    a.abort();
    let _ = a.await;

    // Second half, twice each, the first half a third time, the re-publication; a new consumer.
    let mut second: Vec<(String, String)> =
        events[20..].iter().flat_map(|u| [msg(u), msg(u)]).collect();
    second.extend(events[..20].iter().map(msg));
    second.push(msg(&republished));
    rng.shuffle(&mut second);
    produce(&brokers, &topic, &second).await;
    let (b, b_stats) = start(&pool, &brokers, &topic, &group);
    until("the second half", || async { processed(&pool).await == 41 }).await;
    until("offsets committed to the end", || async {
        caught_up(&brokers, &topic, &group)
    })
    .await;
    b.abort();
    let _ = b.await;

    assert!(a_stats.applied() + b_stats.applied() >= 41);
    assert!(a_stats.poison() + b_stats.poison() >= 1);
    for (i, org) in orgs.iter().enumerate() {
        let want: u64 = events
            .iter()
            .filter(|u| u.org == *org)
            .map(|u| u.tokens)
            .sum();
        let b = ledger::balance(&pool, *org).await?;
        if i == 2 {
            assert_eq!(
                (b.version, b.consumed),
                (0, 0),
                "no account: nothing recorded"
            );
            continue;
        }
        assert_eq!(b.consumed, i64::try_from(want)?, "org {i}");
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ledger.entries WHERE org_id = $1 AND kind = 'consumed'",
        )
        .bind(org)
        .fetch_one(&pool)
        .await?;
        let distinct = events.iter().filter(|u| u.org == *org).count();
        assert_eq!(n, i64::try_from(distinct)?);
        assert!(b.holds(), "{b:?}");
        ledger::verify(&pool, *org).await?;
    }
    // Org a bought 1000 tokens and spent more: the overdraft is recorded, not dropped.
    let a_spent: u64 = events
        .iter()
        .filter(|u| u.org == orgs[0])
        .map(|u| u.tokens)
        .sum();
    assert_eq!(
        ledger::balance(&pool, orgs[0]).await?.tokens,
        1_000 - i64::try_from(a_spent)?
    );
    Ok(())
}

#[tokio::test]
async fn once_commits_and_rolls_back_with_the_effect() -> anyhow::Result<()> {
    let url = common::fresh_db().await?;
    let pool = db::pool(&url, 4)?;
    db::migrate(&pool).await?;
    let mut tx = pool.begin().await?;
    assert!(consume::once(&mut tx, "c1", "e1").await?);
    tx.rollback().await?;
    let mut tx = pool.begin().await?;
    assert!(
        consume::once(&mut tx, "c1", "e1").await?,
        "the rolled-back mark is gone"
    );
    tx.commit().await?;
    let mut conn = pool.acquire().await?;
    assert!(!consume::once(&mut conn, "c1", "e1").await?);
    assert!(consume::once(&mut conn, "c2", "e1").await?, "per consumer");
    Ok(())
}

/// A response-cache hit's event (`cached`, `charged_tokens`) is debited what the proxy charged the
/// org, not the original answer's usage: a free hit nothing, a half-charged hit half.
#[tokio::test]
async fn a_cached_hit_is_debited_what_it_was_charged() -> anyhow::Result<()> {
    use leaky_control_plane::consume::Handler;
    let url = common::fresh_db().await?;
    let pool = db::pool(&url, 4)?;
    db::migrate(&pool).await?;
    let org = tenancy::orgs::create(&pool, "test", "acme").await?.id;
    ledger::grant(&pool, org, 1_000, "g", None).await?;
    for (rid, charged) in [("hit-free", 0), ("hit-half", 21)] {
        let u = usage(&Uuid::new_v4().to_string(), org, rid, 42);
        let mut doc: serde_json::Value = serde_json::from_str(&u.doc)?;
        doc["data"]["cached"] = json!(true);
        doc["data"]["charged_tokens"] = json!(charged);
        let event: leaky_wire::Envelope<leaky_wire::UsageData> = serde_json::from_value(doc)?;
        let mut tx = pool.begin().await?;
        usage::UsageHandler
            .apply(&mut tx, &event)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tx.commit().await?;
    }
    let b = ledger::balance(&pool, org).await?;
    assert_eq!((b.consumed, b.tokens), (21, 979));
    ledger::verify(&pool, org).await?;
    Ok(())
}

#[tokio::test]
async fn a_database_failure_is_retried_not_skipped() -> anyhow::Result<()> {
    let brokers = common::kafka::brokers()?;
    let topic = common::kafka::topic(&brokers, "ledger-retry", 1).await?;
    let group = format!("leaky-ledger-test-{}", Uuid::new_v4().simple());
    let url = common::fresh_db().await?;
    let pool = db::pool(&url, 4)?;
    db::migrate(&pool).await?;
    let org = tenancy::orgs::create(&pool, "test", "acme").await?.id;
    ledger::grant(&pool, org, 1_000, "g", None).await?;
    // The processed-events table is gone for a while: every effect fails.
    sqlx::query("ALTER TABLE ledger.processed_events RENAME TO processed_events_away")
        .execute(&pool)
        .await?;
    let u = usage(&Uuid::new_v4().to_string(), org, "req-1", 42);
    produce(&brokers, &topic, &[(org.to_string(), u.doc.clone())]).await;
    let (task, stats) = start(&pool, &brokers, &topic, &group);
    until("a failed attempt", || async { stats.retries() >= 2 }).await;
    assert_eq!(ledger::balance(&pool, org).await?.consumed, 0);
    assert!(
        !caught_up(&brokers, &topic, &group),
        "no offset commit before the effect"
    );
    sqlx::query("ALTER TABLE ledger.processed_events_away RENAME TO processed_events")
        .execute(&pool)
        .await?;
    until("the effect", || async { processed(&pool).await == 1 }).await;
    until("the offset commit", || async {
        caught_up(&brokers, &topic, &group)
    })
    .await;
    task.abort();
    let _ = task.await;
    assert_eq!((stats.applied(), stats.poison()), (1, 0));
    let b = ledger::balance(&pool, org).await?;
    assert_eq!((b.consumed, b.tokens), (42, 958));
    ledger::verify(&pool, org).await?;
    Ok(())
}

#[tokio::test]
async fn the_control_plane_with_kafka_runs_the_usage_consumer() -> anyhow::Result<()> {
    let brokers = common::kafka::brokers()?;
    // The real topic (the group is the real one too): orgs of this test's fresh database exist
    // nowhere else, so events of other runs on a shared broker record nothing here.
    let _ = common::kafka::topic_named(&brokers, leaky_wire::event::USAGE_TOPIC, 1).await;
    let url = common::fresh_db().await?;
    let pool = db::pool(&url, 4)?;
    db::migrate(&pool).await?;
    let org = tenancy::orgs::create(&pool, "test", "acme").await?.id;
    ledger::grant(&pool, org, 1_000, "g", None).await?;
    let config = leaky_control_plane::Config {
        listen: "127.0.0.1:0".parse()?,
        database_url: url,
        roles: "admin-api".parse().map_err(anyhow::Error::msg)?,
        admin_token: common::TOKEN.to_owned(),
        config_base: None,
        outbox: Some(leaky_control_plane::outbox::RelayConfig::new(
            brokers.clone(),
        )),
        redis_url: None,
        billing: Default::default(),
        notify: Default::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(leaky_control_plane::run(config, async {
        let _ = stopped.await;
    }));
    let u = usage(&Uuid::new_v4().to_string(), org, "req-1", 77);
    let topic = leaky_wire::event::USAGE_TOPIC;
    produce(&brokers, topic, &[(org.to_string(), u.doc.clone())]).await;
    until("the debit", || async {
        ledger::balance(&pool, org).await.unwrap().consumed == 77
    })
    .await;
    let _ = stop.send(());
    server.await??;
    ledger::verify(&pool, org).await?;
    Ok(())
}
