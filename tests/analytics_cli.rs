//! `leaky-tokens analytics`, the real binary, on real Kafka and Cassandra: its flags, `/healthz`,
//! `/metrics`, exact usage totals, and a SIGKILL followed by a restart and a full redelivery that
//! leaves the totals where they were.

use crate::cassandra;
use crate::pg::kafka;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use leaky_wire::event::Envelope;
use leaky_wire::usage::{UsageRecord, UsageSource};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Analytics {
    child: Child,
    base: String,
}

impl Drop for Analytics {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(brokers: &str, node: &str, ks: &str, topic: &str) -> anyhow::Result<Analytics> {
    let port = free_port()?;
    let child = Command::new(env!("CARGO_BIN_EXE_leaky-tokens"))
        .args([
            "analytics",
            "--kafka",
            brokers,
            "--cassandra",
            node,
            "--keyspace",
            ks,
        ])
        .args(["--topic", topic, "--group", "cli", "--linger-ms", "50"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("LEAKY_ANALYTICS_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Analytics {
        child,
        base: format!("http://127.0.0.1:{port}"),
    })
}

/// Polls `f` every 100 ms for up to `secs` (waiting for the process; the assertions are the proof).
async fn until<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(
    secs: u64,
    mut f: F,
) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn payload(i: u64, ts: &str) -> Vec<u8> {
    let r = UsageRecord {
        schema_version: UsageRecord::SCHEMA_VERSION,
        request_id: format!("req-{i}"),
        principal: "key-1".into(),
        user: "u".into(),
        org: Some("cli-org".into()),
        tier: "free".into(),
        route: None,
        model: "gpt-4o".into(),
        provider: "openai".into(),
        prompt_tokens: 10 + i,
        completion_tokens: 3,
        source: UsageSource::Reported,
        status: 200,
        latency_ms: 5.0,
        cached: false,
        charged_tokens: None,
        traceparent: None,
    };
    let env = Envelope::usage(&r, format!("cli-{i}"), "/test".into(), ts.to_owned());
    serde_json::to_vec(&env).unwrap_or_default()
}

async fn produce_all(brokers: &str, topic: &str, n: u64, ts: &str) -> anyhow::Result<()> {
    let p: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    for i in 0..n {
        let body = payload(i, ts);
        p.send(
            FutureRecord::to(topic).key("cli-org").payload(&body),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    Ok(())
}

async fn total(base: &str, range: &str) -> Option<i64> {
    let v: Value = reqwest::get(format!(
        "{base}/v1/orgs/cli-org/usage?{range}&granularity=hour"
    ))
    .await
    .ok()?
    .json()
    .await
    .ok()?;
    v["total"]["total_tokens"].as_i64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analytics_subcommand_counts_exactly_across_a_kill() -> anyhow::Result<()> {
    let brokers = kafka::brokers()?;
    let node = cassandra::node()?;
    let topic = kafka::topic(&brokers, "cli", 2).await?;
    let ks = cassandra::keyspace("cli");
    let now = chrono::Utc::now();
    let ts =
        (now - chrono::Duration::minutes(5)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let range = format!(
        "from={}&to={}",
        (now - chrono::Duration::hours(2)).format("%Y-%m-%dT%H:00:00Z"),
        (now + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:00:00Z"),
    );
    let n = 200;
    let want: i64 = (0..n).map(|i| (13 + i) as i64).sum();

    let first = start(&brokers, &node, &ks, &topic)?;
    let healthy = until(60, || async {
        matches!(reqwest::get(format!("{}/healthz", first.base)).await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(healthy, "/healthz never answered 200");
    produce_all(&brokers, &topic, n, &ts).await?;
    assert!(
        until(60, || async {
            total(&first.base, &range).await == Some(want)
        })
        .await,
        "first delivery"
    );
    // The counter moves once the batch's work is done, a moment after its rollups are readable.
    let counted = format!("leaky_analytics_events_total {n}");
    assert!(
        until(30, || async {
            match reqwest::get(format!("{}/metrics", first.base)).await {
                Ok(r) => r.text().await.is_ok_and(|m| m.contains(&counted)),
                Err(_) => false,
            }
        })
        .await,
        "events counter never reached {n}"
    );
    drop(first); // SIGKILL

    // Restarted in the same group, and every event produced again: nothing counts twice.
    let second = start(&brokers, &node, &ks, &topic)?;
    produce_all(&brokers, &topic, n, &ts).await?;
    let consumed = until(60, || async {
        let Ok(r) = reqwest::get(format!("{}/metrics", second.base)).await else {
            return false;
        };
        r.text()
            .await
            .is_ok_and(|m| m.contains(&format!("leaky_analytics_events_total {n}")))
    })
    .await;
    assert!(
        consumed,
        "the restarted consumer read the redelivered events"
    );
    assert_eq!(total(&second.base, &range).await, Some(want));
    Ok(())
}
