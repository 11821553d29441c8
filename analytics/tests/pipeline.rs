//! The pipeline on real Kafka and Cassandra: usage events in, exact totals out of the usage API —
//! and the same totals after a forced redelivery of every event, a replay by a new group, a
//! consumer killed mid-batch, poison messages and late events.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{
    cassandra, consumer_config, eventually, kafka, produce, produce_events, Ev, Role,
};
use leaky_analytics::buckets::{DAY_MS, HOUR_MS, MINUTE_MS};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde_json::Value;

const MODELS: [(&str, &str); 3] = [
    ("gpt-4o", "openai"),
    ("gemini-2.0-flash", "gemini"),
    ("qwen-max", "qwen"),
];

/// `n` events over two orgs, three models, four keys and the three UTC days before `day0`'s end,
/// with token counts that differ per event (so a lost or doubled event changes every sum).
fn events(n: usize, day0: i64, tag: &str) -> Vec<Ev> {
    (0..n)
        .map(|i| {
            let (model, provider) = MODELS[i % 3];
            Ev {
                id: format!("{tag}-{i}"),
                org: format!("{tag}-org{}", i % 2),
                key: format!("k{}", i % 4),
                model: model.into(),
                provider: provider.into(),
                ts: day0 - (i as i64 % 3) * DAY_MS + (i as i64 * 7_919) % DAY_MS,
                prompt: 10 + i as u64,
                completion: (i as u64 * 13) % 97,
                status: if i % 10 == 0 { 500 } else { 200 },
            }
        })
        .collect()
}

/// The start of today in UTC minus one day: every generated event is in the past.
fn day0() -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    now.div_euclid(DAY_MS) * DAY_MS - DAY_MS
}

/// Expected (prompt, completion, total, requests) per (org, model, day start).
type Expected = BTreeMap<(String, String, i64), [i64; 4]>;

fn expected(evs: &[Ev]) -> Expected {
    let mut out = Expected::new();
    for e in evs {
        let day = e.ts.div_euclid(DAY_MS) * DAY_MS;
        let s = out
            .entry((e.org.clone(), e.model.clone(), day))
            .or_default();
        s[0] += e.prompt as i64;
        s[1] += e.completion as i64;
        s[2] += (e.prompt + e.completion) as i64;
        s[3] += 1;
    }
    out
}

fn iso(ts: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What the API says per (org, model, day) over the orgs of `want`.
async fn observed(role: &Role, want: &Expected, from: i64, to: i64) -> anyhow::Result<Expected> {
    let orgs: std::collections::BTreeSet<&String> = want.keys().map(|(o, _, _)| o).collect();
    let mut out = Expected::new();
    for org in orgs {
        let path = format!(
            "/v1/orgs/{org}/usage?from={}&to={}&granularity=day&group_by=model",
            iso(from),
            iso(to)
        );
        let v = role.get(&path).await?;
        for p in v["series"].as_array().cloned().unwrap_or_default() {
            let start = chrono::DateTime::parse_from_rfc3339(p["start"].as_str().unwrap_or(""))?
                .timestamp_millis();
            let n = |f: &str| p[f].as_i64().unwrap_or(-1);
            out.insert(
                (
                    org.clone(),
                    p["group"].as_str().unwrap_or("").to_owned(),
                    start,
                ),
                [
                    n("prompt_tokens"),
                    n("completion_tokens"),
                    n("total_tokens"),
                    n("requests"),
                ],
            );
        }
    }
    Ok(out)
}

/// Waits until the API's numbers equal `want`, then returns what it last saw.
async fn converge(role: &Role, want: &Expected, from: i64, to: i64) -> Expected {
    let got = eventually(90, || async {
        let got = observed(role, want, from, to).await.ok()?;
        (got == *want).then_some(got)
    })
    .await;
    match got {
        Some(g) => g,
        None => observed(role, want, from, to).await.unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_are_exact_and_survive_redelivery_and_replay() -> anyhow::Result<()> {
    let brokers = kafka::brokers()?;
    let node = cassandra::node()?;
    let topic = kafka::topic(&brokers, "usage", 3).await?;
    let ks = cassandra::keyspace("exact");
    let evs = events(600, day0(), "ex");
    let want = expected(&evs);
    let (from, to) = (day0() - 3 * DAY_MS, day0() + DAY_MS);

    produce_events(&brokers, &topic, &evs).await?;
    let role = Role::start(&node, &ks, consumer_config(&brokers, &topic)).await?;
    assert_eq!(
        converge(&role, &want, from, to).await,
        want,
        "first delivery"
    );

    // (a) Every event produced again: the consumer stores each a second time.
    produce_events(&brokers, &topic, &evs).await?;
    let twice = eventually(90, || async {
        (role.metrics.events.get() >= 1200).then_some(())
    })
    .await;
    assert!(
        twice.is_some(),
        "redelivered events consumed: {}",
        role.metrics.events.get()
    );
    assert_eq!(
        observed(&role, &want, from, to).await?,
        want,
        "after redelivery"
    );

    // A replay: a second group reads the topic from the start into the same keyspace.
    let replay = Role::start_on(role.store.clone(), consumer_config(&brokers, &topic)).await?;
    let replayed = eventually(90, || async {
        (replay.metrics.events.get() >= 1200).then_some(())
    })
    .await;
    assert!(
        replayed.is_some(),
        "replayed: {}",
        replay.metrics.events.get()
    );
    assert_eq!(
        observed(&role, &want, from, to).await?,
        want,
        "after replay"
    );

    // The org total over the range is the plain sum of every event.
    let org = "ex-org0";
    let v = role
        .get(&format!(
            "/v1/orgs/{org}/usage?from={}&to={}&granularity=month",
            iso(from),
            iso(to)
        ))
        .await?;
    let sum: i64 = evs
        .iter()
        .filter(|e| e.org == org)
        .map(|e| (e.prompt + e.completion) as i64)
        .sum();
    assert_eq!(v["total"]["total_tokens"].as_i64(), Some(sum));
    let errors = evs
        .iter()
        .filter(|e| e.org == org && e.status >= 400)
        .count() as i64;
    assert_eq!(v["total"]["errors"].as_i64(), Some(errors));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_batch_leaves_totals_exact_after_restart() -> anyhow::Result<()> {
    let brokers = kafka::brokers()?;
    let node = cassandra::node()?;
    let topic = kafka::topic(&brokers, "kill", 1).await?;
    let ks = cassandra::keyspace("kill");
    let evs = events(3000, day0(), "kl");
    let want = expected(&evs);
    let (from, to) = (day0() - 3 * DAY_MS, day0() + DAY_MS);
    produce_events(&brokers, &topic, &evs).await?;

    // One big batch written slowly, so the kill lands inside it.
    let mut config = consumer_config(&brokers, &topic);
    config.max_batch = 3000;
    config.linger = Duration::from_secs(3);
    config.concurrency = 2;
    let first = Role::start(&node, &ks, config.clone()).await?;
    let started = eventually(60, || async {
        let n = raw_rows(&first, "kl-org0").await.ok()?;
        (n > 0).then_some(n)
    })
    .await;
    first.kill();
    assert!(started.is_some(), "the first consumer never wrote");
    assert_eq!(
        first.metrics.batches.get(),
        0,
        "killed before its batch committed"
    );
    let partial = observed(&first, &want, from, to).await?;
    assert_ne!(partial, want, "the kill left the batch half done");

    let second = Role::start_on(first.store.clone(), config).await?;
    assert_eq!(converge(&second, &want, from, to).await, want);
    Ok(())
}

/// Raw event rows of `org` in the last four days (a count through the driver).
async fn raw_rows(role: &Role, org: &str) -> anyhow::Result<i64> {
    let mut n = 0;
    for d in 0..4 {
        let day = scylla::value::CqlTimestamp(day0() - d * DAY_MS + DAY_MS);
        let ks = role.keyspace();
        let res = role
            .store
            .session()
            .query_unpaged(
                format!("SELECT count(*) FROM {ks}.events WHERE org = ? AND day = ?"),
                (org, day),
            )
            .await?
            .into_rows_result()?;
        n += res.first_row::<(i64,)>()?.0;
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dead_letter_topic_and_later_events_count() -> anyhow::Result<()> {
    let brokers = kafka::brokers()?;
    let node = cassandra::node()?;
    let topic = kafka::topic(&brokers, "poison", 1).await?;
    let dlq = format!("{topic}.dlq");
    kafka::topic_named(&brokers, &dlq, 1).await?;
    let ks = cassandra::keyspace("poison");
    let now = chrono::Utc::now().timestamp_millis();
    let good = |i: usize| Ev {
        id: format!("p-{i}"),
        org: "p-org".into(),
        key: "k".into(),
        model: "gpt-4o".into(),
        provider: "openai".into(),
        ts: now - 60_000,
        prompt: 100,
        completion: 1,
        status: 200,
    };
    let mut future_version: Value = serde_json::from_slice(&good(99).payload())?;
    future_version["schemaversion"] = 2.into();
    // Older than the lateness limit (30 days): its minute's raw rows may be gone.
    let stale = Ev {
        ts: now - 31 * DAY_MS,
        ..good(98)
    };
    let msgs = vec![
        ("p-org".to_owned(), good(0).payload()),
        ("p-org".to_owned(), b"{\"not\": \"an event\"".to_vec()),
        ("p-org".to_owned(), serde_json::to_vec(&future_version)?),
        ("p-org".to_owned(), stale.payload()),
        ("p-org".to_owned(), good(1).payload()),
        ("p-org".to_owned(), good(2).payload()),
    ];
    produce(&brokers, &topic, &msgs).await?;
    let role = Role::start(&node, &ks, consumer_config(&brokers, &topic)).await?;

    let path = format!(
        "/v1/orgs/p-org/usage?from={}&to={}&granularity=hour",
        iso(now - HOUR_MS * 2),
        iso(now + HOUR_MS)
    );
    let total = eventually(60, || async {
        let v = role.get(&path).await.ok()?;
        (v["total"]["requests"].as_i64() == Some(3)).then_some(v)
    })
    .await;
    assert_eq!(
        total.map(|v| v["total"]["prompt_tokens"].clone()),
        Some(Value::from(300))
    );
    let counter = |reason: &str| role.metrics.dead_letters.with_label_values(&[reason]).get();
    // Counted once the broker has them (after the batch's writes).
    let reasons = ["undecodable", "unknown_version", "too_late"];
    let all = || async { (reasons.iter().map(|r| counter(r)).sum::<u64>() == 3).then_some(()) };
    eventually(30, all).await;
    let counts: Vec<u64> = reasons.iter().map(|r| counter(r)).collect();
    assert_eq!(counts, vec![1, 1, 1]);

    // The poison messages are on the dead-letter topic, in order, with their reasons.
    let reader: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("dlq-{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .create()?;
    reader.subscribe(&[&dlq])?;
    let mut reasons = Vec::new();
    for _ in 0..3 {
        let m = tokio::time::timeout(Duration::from_secs(30), reader.recv()).await??;
        let reason = m
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == "leaky-dlq-reason")
                    .and_then(|h| h.value)
            })
            .map(|v| String::from_utf8_lossy(v).into_owned());
        reasons.push(reason.unwrap_or_default());
    }
    assert!(
        reasons[0].starts_with("undecodable envelope"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1], "unknown schema version 2");
    assert!(
        reasons[2].contains("older than the lateness limit"),
        "{reasons:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_event_lands_in_its_own_bucket() -> anyhow::Result<()> {
    let brokers = kafka::brokers()?;
    let node = cassandra::node()?;
    let topic = kafka::topic(&brokers, "late", 1).await?;
    let ks = cassandra::keyspace("late");
    let now = chrono::Utc::now().timestamp_millis();
    let hour = now.div_euclid(HOUR_MS) * HOUR_MS;
    let ev = |id: &str, ts: i64, prompt: u64| Ev {
        id: id.into(),
        org: "l-org".into(),
        key: "k".into(),
        model: "gpt-4o".into(),
        provider: "openai".into(),
        ts,
        prompt,
        completion: 0,
        status: 200,
    };
    let role = Role::start(&node, &ks, consumer_config(&brokers, &topic)).await?;
    produce_events(&brokers, &topic, &[ev("now", hour + MINUTE_MS, 5)]).await?;
    let path = format!(
        "/v1/orgs/l-org/usage?from={}&to={}&granularity=hour",
        iso(hour - HOUR_MS),
        iso(hour + HOUR_MS)
    );
    let tokens = |v: &Value| -> Vec<i64> {
        v["series"]
            .as_array()
            .map(|s| {
                s.iter()
                    .map(|p| p["total_tokens"].as_i64().unwrap_or(-1))
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = eventually(60, || async {
        let v = role.get(&path).await.ok()?;
        (tokens(&v) == vec![0, 5]).then_some(v)
    })
    .await;
    assert!(first.is_some(), "the current event counted");

    // An hour late, after the current hour's rollups exist: it lands in the previous hour.
    produce_events(
        &brokers,
        &topic,
        &[ev("late", hour - HOUR_MS + 30 * MINUTE_MS, 7)],
    )
    .await?;
    let late = eventually(60, || async {
        let v = role.get(&path).await.ok()?;
        (tokens(&v) == vec![7, 5]).then_some(v)
    })
    .await;
    let v = late.unwrap_or_default();
    assert_eq!(tokens(&v), vec![7, 5], "{v}");
    assert_eq!(v["total"]["total_tokens"].as_i64(), Some(12));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_is_reported_while_behind_and_drops_to_zero() -> anyhow::Result<()> {
    let brokers = kafka::brokers()?;
    let node = cassandra::node()?;
    let topic = kafka::topic(&brokers, "lag", 1).await?;
    let ks = cassandra::keyspace("lag");
    let evs = events(3000, day0(), "lg");
    produce_events(&brokers, &topic, &evs).await?;
    // Small batches written one row at a time: the member stays behind for a while.
    let mut config = consumer_config(&brokers, &topic);
    config.max_batch = 20;
    config.linger = Duration::from_millis(1);
    config.concurrency = 1;
    config.stats_interval = Duration::from_millis(200);
    let role = Role::start(&node, &ks, config).await?;
    let behind = eventually(60, || async {
        let lag = role.metrics.consumer_lag.get();
        (lag > 0).then_some(lag)
    })
    .await;
    assert!(behind.is_some(), "a lag was reported while behind");
    let caught_up = eventually(120, || async {
        (role.metrics.events.get() >= 3000 && role.metrics.consumer_lag.get() == 0).then_some(())
    })
    .await;
    assert!(
        caught_up.is_some(),
        "lag {} after {} events",
        role.metrics.consumer_lag.get(),
        role.metrics.events.get()
    );
    Ok(())
}
