//! Cassandra stopped under traffic: the consumer stops committing, retries with backoff, and once
//! the node is back every event counts exactly once. Runs on a node of its own (it stops it).

use crate::common::cassandra::PrivateNode;
use crate::common::{consumer_config, eventually, kafka, produce_events, Ev, Role};
use leaky_analytics::buckets::HOUR_MS;

fn ev(i: usize, ts: i64) -> Ev {
    Ev {
        id: format!("f-{i}"),
        org: "f-org".into(),
        key: format!("k{}", i % 3),
        model: "gpt-4o".into(),
        provider: "openai".into(),
        ts: ts + i as i64 * 10,
        prompt: 1 + i as u64,
        completion: 2,
        status: 200,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_restarted_under_traffic_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let brokers = kafka::brokers()?;
    let node = tokio::task::spawn_blocking(PrivateNode::start).await??;
    let topic = kafka::topic(&brokers, "faults", 2).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let evs: Vec<Ev> = (0..400).map(|i| ev(i, now - HOUR_MS / 2)).collect();
    let want: i64 = evs.iter().map(|e| (e.prompt + e.completion) as i64).sum();
    let half: i64 = evs[..200]
        .iter()
        .map(|e| (e.prompt + e.completion) as i64)
        .sum();
    let path = format!(
        "/v1/orgs/f-org/usage?from={}&to={}&granularity=hour",
        chrono::DateTime::from_timestamp_millis(now - 2 * HOUR_MS)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        chrono::DateTime::from_timestamp_millis(now + HOUR_MS)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    let role = Role::start(&node.addr(), "faults", consumer_config(&brokers, &topic)).await?;
    let total = |role: &Role| {
        let path = path.clone();
        let base = role.base.clone();
        async move {
            let v: serde_json::Value = reqwest::get(format!("{base}{path}"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            v["total"]["total_tokens"].as_i64()
        }
    };

    produce_events(&brokers, &topic, &evs[..200]).await?;
    let first = eventually(60, || async {
        (total(&role).await == Some(half)).then_some(())
    })
    .await;
    assert!(
        first.is_some(),
        "first half stored: {:?} of {half}, {} events",
        total(&role).await,
        role.metrics.events.get()
    );

    // Down: the second half cannot be written; the consumer retries instead of committing.
    let dir = node.dir.clone();
    let port = node.port;
    tokio::task::spawn_blocking(move || PrivateNode { dir, port }.stop()).await??;
    produce_events(&brokers, &topic, &evs[200..]).await?;
    let retried = eventually(60, || async {
        (role.metrics.write_retries.get() > 0).then_some(())
    })
    .await;
    assert!(retried.is_some(), "writes failed and were retried");
    let batches_while_down = role.metrics.batches.get();

    // Back: the same consumer resumes and every event counts once.
    let dir = node.dir.clone();
    tokio::task::spawn_blocking(move || PrivateNode { dir, port }.restart()).await??;
    let resumed = eventually(120, || async {
        (total(&role).await == Some(want)).then_some(())
    })
    .await;
    assert!(
        resumed.is_some(),
        "resumed: {:?} of {want}",
        total(&role).await
    );
    let committed = || async { (role.metrics.batches.get() > batches_while_down).then_some(()) };
    assert!(
        eventually(10, committed).await.is_some(),
        "committed after the restart: {} batches, {batches_while_down} before",
        role.metrics.batches.get()
    );
    assert_eq!(total(&role).await, Some(want));
    Ok(())
}
