//! The figures of `loadtests/analytics/run` (numbers for `loadtests/results/analytics.md`), against a
//! running `leaky-tokens analytics` and its Kafka:
//!
//! - `produce BROKERS TOPIC N`: N live-like usage events (5 orgs, 8 keys, 3 models, event times spread
//!   over the last 10 minutes) as fast as the producer takes them;
//! - `backfill BROKERS TOPIC ORG DAYS PER_HOUR`: PER_HOUR events for every hour of the last DAYS days;
//! - `throughput API N`: waits until the role's `leaky_analytics_events_total` reaches N and prints
//!   events/s from its first event to its last;
//! - `lag BROKERS TOPIC API PROBES RATE`: background traffic at RATE events/s and PROBES probe events
//!   (one org each); lag = the probe's produce acknowledgement → its minute bucket answering in the API;
//! - `query API ORG DAYS REPS [TZ]`: latency of `GET …/usage?granularity=day` over DAYS days.
// A measuring tool: its output is the figures.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use leaky_wire::event::Envelope;
use leaky_wire::usage::{UsageRecord, UsageSource};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const MODELS: [(&str, &str); 3] = [
    ("gpt-4o", "openai"),
    ("gemini-2.0-flash", "gemini"),
    ("qwen-max", "qwen"),
];

fn event(id: &str, org: &str, key: usize, model: usize, ts: i64, prompt: u64) -> Vec<u8> {
    let (model, provider) = MODELS[model % 3];
    let r = UsageRecord {
        schema_version: UsageRecord::SCHEMA_VERSION,
        request_id: format!("req-{id}"),
        principal: format!("key-{key}").into(),
        user: "load".into(),
        org: Some(org.into()),
        tier: "free".into(),
        route: Some("chat".into()),
        model: model.into(),
        provider: provider.into(),
        prompt_tokens: prompt,
        completion_tokens: prompt / 3,
        source: UsageSource::Reported,
        status: 200,
        latency_ms: 350.0,
        cached: false,
        charged_tokens: None,
        traceparent: None,
    };
    let time = chrono::DateTime::from_timestamp_millis(ts)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let env = Envelope::usage(&r, id.to_owned(), "/leaky-tokens/proxy/load".into(), time);
    serde_json::to_vec(&env).unwrap_or_default()
}

fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

/// Sends `msgs` with up to 10,000 in flight.
async fn send_all(
    p: &FutureProducer,
    topic: &str,
    msgs: Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    for chunk in msgs.chunks(10_000) {
        let sends = chunk.iter().map(|(k, v)| {
            p.send(
                FutureRecord::to(topic).key(k).payload(v),
                Duration::from_secs(60),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn produce(brokers: &str, topic: &str, n: usize) -> anyhow::Result<()> {
    let now = now_ms();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let msgs: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let org = format!("load-{}", i % 5);
            let ts = now - 600_000 + (i as i64 * 600_000 / n.max(1) as i64);
            let body = event(
                &format!("{run}-{i}"),
                &org,
                i % 8,
                i % 3,
                ts,
                200 + (i % 500) as u64,
            );
            (org, body)
        })
        .collect();
    let t = Instant::now();
    send_all(&producer(brokers)?, topic, msgs).await?;
    println!("produced {n} events in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

async fn backfill(
    brokers: &str,
    topic: &str,
    org: &str,
    days: i64,
    per_hour: i64,
) -> anyhow::Result<()> {
    let hour = 3_600_000;
    let start = (now_ms() / hour - days * 24) * hour;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut msgs = Vec::new();
    for h in 0..days * 24 {
        for j in 0..per_hour {
            let i = (h * per_hour + j) as usize;
            let ts = start + h * hour + j * hour / per_hour;
            msgs.push((
                org.to_owned(),
                event(&format!("{run}-{i}"), org, i % 8, i % 3, ts, 100),
            ));
        }
    }
    let n = msgs.len();
    send_all(&producer(brokers)?, topic, msgs).await?;
    println!("backfilled {n} events over {days} days for {org}");
    Ok(())
}

async fn events_total(api: &str) -> Option<u64> {
    let text = reqwest::get(format!("{api}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("leaky_analytics_events_total "))
        .and_then(|v| v.trim().parse().ok())
}

async fn throughput(api: &str, n: u64) -> anyhow::Result<()> {
    let mut first: Option<(Instant, u64)> = None;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let seen = events_total(api).await.unwrap_or(0);
        if seen > 0 && first.is_none() {
            first = Some((Instant::now(), seen));
        }
        if seen >= n {
            let (t0, n0) = first.unwrap_or((Instant::now(), 0));
            let secs = t0.elapsed().as_secs_f64().max(0.001);
            println!(
                "consumed {n} events; {:.0} events/s over {secs:.1} s",
                (seen - n0) as f64 / secs
            );
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {seen} of {n} events after 30 min"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn iso(ts: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Background events at `rate`/s until `stop` is set.
async fn background(
    p: FutureProducer,
    topic: String,
    rate: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let per_tick = (rate / 10).max(1) as usize;
    let mut i = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tick.tick().await;
        let msgs: Vec<(String, Vec<u8>)> = (0..per_tick)
            .map(|_| {
                i += 1;
                let org = format!("bg-{}", i % 5);
                (
                    org.clone(),
                    event(&format!("{run}-{i}"), &org, i % 8, i % 3, now_ms(), 100),
                )
            })
            .collect();
        let _ = send_all(&p, &topic, msgs).await;
    }
}

async fn lag(
    brokers: &str,
    topic: &str,
    api: &str,
    probes: usize,
    rate: u64,
) -> anyhow::Result<()> {
    let p = producer(brokers)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bg = tokio::spawn(background(p.clone(), topic.to_owned(), rate, stop.clone()));
    let run = uuid::Uuid::new_v4().simple().to_string();
    let http = reqwest::Client::new();
    let mut lags = Vec::new();
    for i in 0..probes {
        let org = format!("probe-{run}-{i}");
        let ts = now_ms();
        let body = event(&format!("{run}-p{i}"), &org, 0, 0, ts, 1);
        send_all(&p, topic, vec![(org.clone(), body)]).await?;
        let acked = Instant::now();
        let url = format!(
            "{api}/v1/orgs/{org}/usage?granularity=minute&from={}&to={}",
            iso(ts - 120_000),
            iso(ts + 120_000)
        );
        loop {
            let v: serde_json::Value = http.get(&url).send().await?.json().await?;
            if v["total"]["requests"].as_i64() == Some(1) {
                break;
            }
            anyhow::ensure!(
                acked.elapsed() < Duration::from_secs(60),
                "probe {i} never appeared"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lags.push(acked.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = bg.await;
    lags.sort_by(f64::total_cmp);
    println!(
        "lag produce-ack -> queryable minute rollup over {probes} probes at {rate} events/s background: \
         p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        pct(&lags, 0.5),
        pct(&lags, 0.99),
        pct(&lags, 1.0)
    );
    Ok(())
}

async fn query(
    api: &str,
    org: &str,
    days: i64,
    reps: usize,
    tz: Option<&str>,
) -> anyhow::Result<()> {
    let day = 86_400_000;
    let to = (now_ms() / day + 1) * day;
    let from = to - days * day;
    let mut url = format!(
        "{api}/v1/orgs/{org}/usage?granularity=day&from={}&to={}",
        iso(from),
        iso(to)
    );
    if let Some(tz) = tz {
        url.push_str(&format!("&tz={tz}"));
    }
    let http = reqwest::Client::new();
    let mut times = Vec::new();
    let mut requests = 0;
    for _ in 0..reps {
        let t = Instant::now();
        let v: serde_json::Value = http.get(&url).send().await?.json().await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        requests = v["total"]["requests"].as_i64().unwrap_or(-1);
        anyhow::ensure!(
            v["series"].as_array().map(Vec::len).unwrap_or(0) >= days as usize,
            "{v}"
        );
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{days}-day daily report ({}, {requests} requests): p50 {:.1} ms, p99 {:.1} ms over {reps} queries",
        tz.unwrap_or("UTC"),
        pct(&times, 0.5),
        pct(&times, 0.99)
    );
    Ok(())
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> anyhow::Result<T> {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("argument {i} missing or invalid (see the file's docs)"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("produce") => produce(&a[2], &a[3], arg(&a, 4)?).await,
        Some("backfill") => backfill(&a[2], &a[3], &a[4], arg(&a, 5)?, arg(&a, 6)?).await,
        Some("throughput") => throughput(&a[2], arg(&a, 3)?).await,
        Some("lag") => lag(&a[2], &a[3], &a[4], arg(&a, 5)?, arg(&a, 6)?).await,
        Some("query") => {
            query(
                &a[2],
                &a[3],
                arg(&a, 4)?,
                arg(&a, 5)?,
                a.get(6).map(String::as_str),
            )
            .await
        }
        _ => anyhow::bail!("usage: see analytics/examples/analytics_figures.rs"),
    }
}
