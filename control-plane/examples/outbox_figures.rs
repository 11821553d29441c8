//! Outbox figures for issue #15 (`loadtests/events/run` starts PostgreSQL and Kafka and records them in
//! `loadtests/results/events.md`):
//!
//! ```text
//! cargo run --release -p leaky-control-plane --example outbox_figures -- \
//!     <database url> <brokers> <burst events> <lag events> <lag rate/s> <runs>
//! ```
//!
//! - Throughput: `<burst events>` are appended with `outbox::append` (100 per transaction, over 100
//!   aggregates) while no relay runs; then one [`Relay`] starts and the clock runs until the outbox has
//!   no unsent row. Events/s, and this process's CPU (the relay is all it runs then) per event.
//! - Lag: a relay and a consumer built on the `consume` kit run; `<lag events>` are appended one per
//!   transaction at `<lag rate/s>`. The consumer's effect writes `clock_timestamp()` with the event id
//!   in the effect's transaction; lag = that time − the time the append's commit returned (same host
//!   clock). The effect's own commit (well under a millisecond here) is not counted.
//!
//! Each run uses topics and a consumer group of its own. The database is throwaway: the example
//! creates a `bench` schema for the effect's rows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use leaky_control_plane::consume::{Consumer, ConsumerConfig, Handler, HandlerError};
use leaky_control_plane::db;
use leaky_control_plane::outbox::{self, Event, Relay, RelayConfig};
use leaky_wire::event::Envelope;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use sqlx::{PgConnection, PgPool};

/// The consumer's effect: the time it was applied, by event id.
struct Stamp;

impl Handler for Stamp {
    type Data = serde_json::Value;
    fn name(&self) -> &str {
        "bench-lag"
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a Envelope<serde_json::Value>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO bench.applied (event_id, at) VALUES ($1, clock_timestamp())")
                .bind(&event.id)
                .execute(tx)
                .await?;
            Ok(())
        })
    }
}

fn event(aggregate: usize, n: usize) -> Event {
    Event {
        aggregate_type: "bench",
        aggregate_id: format!("agg-{aggregate}"),
        kind: "bench.happened",
        topic: "leaky.bench.v1",
        data: serde_json::json!({ "n": n, "pad": "x".repeat(200) }),
    }
}

async fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let t = NewTopic::new(topic, 3, TopicReplication::Fixed(1));
    for r in admin
        .create_topics(&[t], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

fn relay(pool: &PgPool, brokers: &str, topic: &str) -> Relay {
    let mut cfg = RelayConfig::new(brokers);
    cfg.topic = Some(topic.to_owned());
    Relay::new(pool.clone(), cfg).unwrap()
}

/// utime + stime of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0 // USER_HZ is 100 on Linux
}

/// Events/s and CPU µs/event of one relay draining `n` events appended beforehand.
async fn throughput(pool: &PgPool, brokers: &str, run: usize, n: usize) -> (f64, f64) {
    for chunk in 0..n.div_ceil(100) {
        let mut tx = pool.begin().await.unwrap();
        for i in chunk * 100..((chunk + 1) * 100).min(n) {
            outbox::append(&mut tx, event(i % 100, i)).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let topic = format!("leaky.bench.burst-{run}-{}", std::process::id());
    create_topic(brokers, &topic).await;
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let task = tokio::spawn(relay(pool, brokers, &topic).run());
    while outbox::unsent(pool).await.unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    task.abort();
    (n as f64 / secs, cpu * 1e6 / n as f64)
}

/// Commit → effect lag (ms) of `n` events appended one per transaction at `rate`/s.
async fn lag(pool: &PgPool, brokers: &str, run: usize, n: usize, rate: f64) -> Vec<f64> {
    let topic = format!("leaky.bench.lag-{run}-{}", std::process::id());
    create_topic(brokers, &topic).await;
    let relay = tokio::spawn(relay(pool, brokers, &topic).run());
    let group = format!("bench-lag-{run}-{}", std::process::id());
    let consumer = Consumer::new(
        pool.clone(),
        ConsumerConfig::new(brokers, &group, &topic),
        Stamp,
    )
    .unwrap();
    let stats = consumer.stats();
    let consumer = tokio::spawn(consumer.run());
    // Warm-up: the group has its partitions and the producer its connection before the clock runs.
    commit_one(pool, usize::MAX).await;
    while stats.applied() < 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut committed = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    for i in 0..n {
        tick.tick().await;
        committed.push(commit_one(pool, i).await);
    }
    while stats.applied() < n as u64 + 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.abort();
    consumer.abort();
    let mut lags = Vec::with_capacity(n);
    for (id, at) in committed {
        let applied: DateTime<Utc> =
            sqlx::query_scalar("SELECT at FROM bench.applied WHERE event_id = $1")
                .bind(id.to_string())
                .fetch_one(pool)
                .await
                .unwrap();
        let at: DateTime<Utc> = at.into();
        lags.push((applied - at).num_microseconds().unwrap() as f64 / 1e3);
    }
    lags
}

/// Appends one event in its own transaction; its id and when the commit returned.
async fn commit_one(pool: &PgPool, i: usize) -> (uuid::Uuid, SystemTime) {
    let mut tx = pool.begin().await.unwrap();
    let id = outbox::append(&mut tx, event(i % 100, i)).await.unwrap();
    tx.commit().await.unwrap();
    (id, SystemTime::now())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (url, brokers) = (&a[1], &a[2]);
    let burst: usize = a[3].parse().unwrap();
    let lag_n: usize = a[4].parse().unwrap();
    let rate: f64 = a[5].parse().unwrap();
    let runs: usize = a[6].parse().unwrap();
    let pool = db::pool(url, 8).unwrap();
    db::migrate(&pool).await.unwrap();
    sqlx::query("CREATE SCHEMA IF NOT EXISTS bench")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS bench.applied (event_id text PRIMARY KEY, at timestamptz NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    println!(
        "| run | relay events/s | relay CPU µs/event | lag p50 ms | lag p99 ms | lag max ms |"
    );
    println!("|---|---|---|---|---|---|");
    let mut rows: Vec<[f64; 4]> = Vec::new();
    for run in 1..=runs {
        let (eps, cpu) = throughput(&pool, brokers, run, burst).await;
        let mut l = lag(&pool, brokers, run, lag_n, rate).await;
        l.sort_by(f64::total_cmp);
        let (p50, p99) = (pct(&l, 0.5), pct(&l, 0.99));
        println!(
            "| {run} | {eps:.0} | {cpu:.0} | {p50:.1} | {p99:.1} | {:.1} |",
            l[l.len() - 1]
        );
        rows.push([eps, cpu, p50, p99]);
    }
    if !rows.is_empty() {
        let col = |i: usize| spread(rows.iter().map(|r| r[i]).collect());
        println!(
            "\nMedian (min–max) over {runs} runs: {} events/s, {} CPU µs/event; lag p50 {} ms, p99 {} ms.",
            col(0),
            col(1),
            col(2),
            col(3)
        );
    }
}

/// `median (min–max)`.
fn spread(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!("{:.1} ({:.1}–{:.1})", pct(&v, 0.5), v[0], v[v.len() - 1])
}
