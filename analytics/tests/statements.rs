//! Statements on real Kafka and Cassandra: usage events with known tokens over two priced models
//! (one with a price change mid-month) and one unpriced model → the October statement's amounts
//! equal the exact decimal sums; its CSV matches the golden file byte for byte; closing again, two
//! closers racing and a full redelivery give the same bytes and one `report.generated` id; a late
//! event into the closed month leaves its bytes alone and is carried as an adjustment by the next
//! statement, exactly once (also after the late event is redelivered).
//!
//! Regenerate the golden file with `LEAKY_UPDATE_GOLDEN=1 cargo test -p leaky-analytics --test
//! integration -- statements::`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{cassandra, consumer_config, eventually, kafka, produce_events, Ev, Role};
use chrono_tz::Tz;
use leaky_analytics::prices::{self, PriceVersion};
use leaky_analytics::reports::job::{Clock, Closer, CloserConfig};
use leaky_analytics::reports::period::Period;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Message;
use rust_decimal::Decimal;
use serde_json::Value;

const ORG: &str = "acme";

fn ms(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .unwrap_or(i64::MIN)
}

fn dec(s: &str) -> Decimal {
    // A typo gives a value no assertion below accepts.
    s.parse().unwrap_or(Decimal::MAX)
}

fn price(model: &str, from: &str, input: &str, output: &str) -> PriceVersion {
    PriceVersion {
        model: model.into(),
        effective_from: ms(from),
        input_per_mtok: dec(input),
        output_per_mtok: dec(output),
        currency: "USD".into(),
    }
}

/// gpt-4o-mini gets cheaper on 15 October; gpt-4o keeps one price; `mystery-1` has none.
fn price_table() -> Vec<PriceVersion> {
    vec![
        price("gpt-4o-mini", "2024-07-18T00:00:00Z", "0.15", "0.60"),
        price("gpt-4o-mini", "2026-10-15T00:00:00Z", "0.075", "0.30"),
        price("gpt-4o", "2024-10-01T00:00:00Z", "2.50", "10.00"),
    ]
}

const MODELS: [&str; 3] = ["gpt-4o-mini", "gpt-4o", "mystery-1"];

/// 60 October events for `ORG` (one every 12 hours from 1 October), odd token counts so every
/// amount has digits past the sixth decimal somewhere.
fn october(tag: &str) -> Vec<Ev> {
    (0..60)
        .map(|i| Ev {
            id: format!("{tag}-{i}"),
            org: ORG.into(),
            key: format!("k{}", i % 2),
            model: MODELS[i % 3].into(),
            provider: "openai".into(),
            ts: ms("2026-10-01T00:30:00Z") + i as i64 * 12 * 3_600_000,
            prompt: 1_000 + 7_919 * i as u64,
            completion: 13 + 331 * i as u64,
            status: 200,
        })
        .collect()
}

/// The exact amount of `evs` at `table`'s prices in effect at each event's time.
fn exact_amounts(evs: &[Ev]) -> BTreeMap<(String, Option<i64>), Decimal> {
    let book = prices::PriceBook::new(price_table());
    let mut out = BTreeMap::new();
    for e in evs {
        let v = book.at(&e.model, e.ts);
        let cost = v.map_or(Decimal::ZERO, |v| {
            v.cost(e.prompt as i64, e.completion as i64)
        });
        *out.entry((e.model.clone(), v.map(|v| v.effective_from)))
            .or_insert(Decimal::ZERO) += cost;
    }
    out
}

struct Setup {
    role: Role,
    brokers: String,
    topic: String,
    reports: String,
}

async fn setup(name: &str) -> anyhow::Result<Setup> {
    let brokers = kafka::brokers()?;
    let node = cassandra::node()?;
    let topic = kafka::topic(&brokers, name, 2).await?;
    let reports = kafka::topic(&brokers, &format!("{name}-reports"), 1).await?;
    let mut config = consumer_config(&brokers, &topic);
    // The fixed October events are older than the default 30-day lateness limit.
    config.max_lateness = Duration::from_secs(3650 * 24 * 3600);
    let ks = format!("st_{}", uuid::Uuid::new_v4().simple());
    let role = Role::start(&node, &ks, config).await?;
    prices::seed(&role.store, &price_table()).await?;
    Ok(Setup {
        role,
        brokers,
        topic,
        reports,
    })
}

fn closer(s: &Setup, now: i64) -> anyhow::Result<Closer> {
    let mut c = CloserConfig::new(&s.brokers);
    c.topic = s.reports.clone();
    let clock: Clock = Arc::new(move || now);
    Ok(Closer::new(
        c,
        s.role.store.clone(),
        s.role.metrics.clone(),
        clock,
    )?)
}

/// Waits until the role has written `n` events in all (deliveries, redeliveries included).
async fn consumed(role: &Role, n: u64) -> anyhow::Result<()> {
    let done = eventually(60, || async {
        (role.metrics.events.get() >= n).then_some(())
    })
    .await;
    anyhow::ensure!(
        done.is_some(),
        "only {} of {n} events written",
        role.metrics.events.get()
    );
    Ok(())
}

async fn get_text(base: &str, path: &str, accept: &str) -> anyhow::Result<(String, String)> {
    let r = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("accept", accept)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "GET {path}: {}", r.status());
    let kind = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Ok((kind, r.text().await?))
}

/// Every `report.generated` event on `topic` so far: (id, org, period).
async fn report_events(
    brokers: &str,
    topic: &str,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let reader: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("r-{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .create()?;
    reader.subscribe(&[topic])?;
    let mut out = Vec::new();
    while let Ok(m) = tokio::time::timeout(Duration::from_secs(5), reader.recv()).await {
        let m = m?;
        let v: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        assert_eq!(v["type"], "report.generated");
        assert_eq!(
            m.key(),
            Some(v["data"]["org"].as_str().unwrap_or("").as_bytes())
        );
        out.push((
            v["id"].as_str().unwrap_or("").to_owned(),
            v["data"]["org"].as_str().unwrap_or("").to_owned(),
            v["data"]["period"].as_str().unwrap_or("").to_owned(),
        ));
    }
    Ok(out)
}

fn golden_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/statement-2026-10.csv")
}

fn check_golden(csv: &str) -> anyhow::Result<()> {
    let path = golden_path();
    if std::env::var("LEAKY_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(&path, csv)?;
    }
    let want = std::fs::read_to_string(&path)?;
    assert_eq!(csv, want, "the CSV differs from {}", path.display());
    Ok(())
}

/// The October statement: exact amounts, golden CSV, same bytes on every close and fetch.
async fn close_october(s: &Setup, evs: &[Ev]) -> anyhow::Result<String> {
    let october = format!("/v1/orgs/{ORG}/statements?period=2026-10");
    let (_, open) = get_text(&s.role.base, &october, "application/json").await?;
    let open: Value = serde_json::from_str(&open)?;
    assert_eq!(open["status"], "open");
    let c = closer(s, ms("2026-11-01T02:00:00Z"))?;
    let handled = c.tick(ms("2026-11-01T02:00:00Z")).await?;
    assert!(handled.iter().any(|h| h.period == "2026-10"), "{handled:?}");
    let (kind, json) = get_text(&s.role.base, &october, "application/json").await?;
    assert_eq!(kind, "application/json");
    let body: Value = serde_json::from_str(&json)?;
    assert_eq!(body["status"], "closed");
    let exact = exact_amounts(evs);
    let lines = body["lines"].as_array().cloned().unwrap_or_default();
    assert_eq!(lines.len(), 4, "{body}");
    for l in &lines {
        let from = l["price_from"].as_str().map(ms);
        let want = exact[&(l["model"].as_str().unwrap_or("").to_owned(), from)];
        let rounded = leaky_analytics::reports::statement::round_amount(want);
        assert_eq!(
            l["amount"].as_str(),
            Some(rounded.to_string().as_str()),
            "{l}"
        );
        assert_eq!(l["unpriced"], from.is_none());
    }
    let (kind, csv) = get_text(&s.role.base, &format!("{october}&format=csv"), "*/*").await?;
    assert_eq!(kind, "text/csv; charset=utf-8");
    check_golden(&csv)?;
    let (_, by_accept) = get_text(&s.role.base, &october, "text/csv").await?;
    assert_eq!(by_accept, csv);
    Ok(json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn monthly_statement_exact_golden_reproducible_and_adjusted_once() -> anyhow::Result<()> {
    let s = setup("statements").await?;
    let evs = october("oct");
    produce_events(&s.brokers, &s.topic, &evs).await?;
    consumed(&s.role, 60).await?;
    let json = close_october(&s, &evs).await?;
    let october = format!("/v1/orgs/{ORG}/statements?period=2026-10");

    // Two closers racing on the closed month, and two on a fresh period: one statement each.
    let (a, b) = (
        closer(&s, ms("2026-11-01T02:00:00Z"))?,
        closer(&s, ms("2026-11-01T02:00:00Z"))?,
    );
    let oct = Period::parse("2026-10", Tz::UTC)?;
    let (x, y) = tokio::join!(a.close(ORG, &oct), b.close(ORG, &oct));
    assert_eq!((x?.json, y?.json), (json.clone(), json.clone()));
    let sep = Period::parse("2026-09", Tz::UTC)?;
    let (x, y) = tokio::join!(a.close(ORG, &sep), b.close(ORG, &sep));
    let (x, y) = (x?, y?);
    assert_eq!((&x.json, &x.closed_by), (&y.json, &y.closed_by));

    // Every event again: the stored bytes and a fresh computation of the month agree.
    produce_events(&s.brokers, &s.topic, &evs).await?;
    consumed(&s.role, 120).await?;
    let book = prices::load(&s.role.store).await?;
    let again = leaky_analytics::reports::compose(&s.role.store, &book, ORG, &oct, true).await?;
    assert_eq!(
        leaky_analytics::reports::statement::to_json(&again.statement),
        json
    );

    // A late October event, delivered twice, and a November one.
    let late = Ev {
        id: "late-1".into(),
        ts: ms("2026-10-20T10:00:00Z"),
        prompt: 1_000_003,
        completion: 77,
        model: "gpt-4o-mini".into(),
        ..evs[0].clone()
    };
    let nov = Ev {
        id: "nov-1".into(),
        ts: ms("2026-11-10T10:00:00Z"),
        ..evs[1].clone()
    };
    produce_events(&s.brokers, &s.topic, &[late.clone(), nov, late.clone()]).await?;
    consumed(&s.role, 123).await?;
    let (_, csv_after) = get_text(&s.role.base, &format!("{october}&format=csv"), "*/*").await?;
    check_golden(&csv_after)?;
    let (_, json_after) = get_text(&s.role.base, &october, "application/json").await?;
    assert_eq!(json_after, json);

    let dec_close = closer(&s, ms("2026-12-01T02:00:00Z"))?;
    let handled = dec_close.tick(ms("2026-12-01T02:00:00Z")).await?;
    let november = handled
        .iter()
        .find(|h| h.period == "2026-11")
        .ok_or_else(|| anyhow::anyhow!("November not closed: {handled:?}"))?;
    let body: Value = serde_json::from_str(&november.json)?;
    let adj = body["adjustments"].as_array().cloned().unwrap_or_default();
    assert_eq!(adj.len(), 1, "{body}");
    assert_eq!(adj[0]["period"], "2026-10");
    assert_eq!(adj[0]["model"], "gpt-4o-mini");
    assert_eq!(adj[0]["price_from"], "2026-10-15T00:00:00Z");
    assert_eq!(adj[0]["prompt_tokens"], 1_000_003);
    assert_eq!(adj[0]["completion_tokens"], 77);
    // 1,000,003 × 0.075 + 77 × 0.30, per million: 0.075000225 + 0.0000231 = 0.0750233… → 0.075023
    assert_eq!(adj[0]["amount"], "0.075023");

    // Carried once: the late event redelivered again, the next statement carries nothing.
    produce_events(&s.brokers, &s.topic, &[late]).await?;
    consumed(&s.role, 124).await?;
    let dec = Period::parse("2026-12", Tz::UTC)?;
    let next = dec_close.close(ORG, &dec).await?;
    let body: Value = serde_json::from_str(&next.json)?;
    assert_eq!(body["adjustments"], serde_json::json!([]), "{body}");

    // One report.generated id per statement, whatever the number of closers and ticks.
    let events = report_events(&s.brokers, &s.reports).await?;
    let mut ids: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (id, org, period) in &events {
        ids.insert(id.clone(), (org.clone(), period.clone()));
    }
    let periods: Vec<&str> = ids.values().map(|(_, p)| p.as_str()).collect();
    for p in ["2026-09", "2026-10", "2026-11", "2026-12"] {
        assert_eq!(periods.iter().filter(|q| **q == p).count(), 1, "{events:?}");
    }
    assert!(ids.keys().all(|id| id.starts_with("statement/")), "{ids:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prices_api_refuses_to_rewrite_the_past() -> anyhow::Result<()> {
    let s = setup("prices").await?;
    let client = reqwest::Client::new();
    let put = |model: &str, body: Value| {
        client
            .put(format!("{}/v1/prices/{model}", s.role.base))
            .json(&body)
            .send()
    };
    let past = put(
        "gpt-4o",
        serde_json::json!({"effective_from": "2026-01-01T00:00:00Z",
            "input_per_mtok": "1.00", "output_per_mtok": "2.00"}),
    )
    .await?;
    assert_eq!(past.status(), 409);
    assert_eq!(
        past.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let half_hour = put(
        "gpt-4o",
        serde_json::json!({"effective_from": "2099-01-01T00:30:00Z",
            "input_per_mtok": "1.00", "output_per_mtok": "2.00"}),
    )
    .await?;
    assert_eq!(half_hour.status(), 400);
    let future = put(
        "gpt-4o",
        serde_json::json!({"effective_from": "2099-01-01T00:00:00Z",
            "input_per_mtok": "1.25", "output_per_mtok": "5.00"}),
    )
    .await?;
    assert_eq!(future.status(), 200);
    let list: Value = client
        .get(format!("{}/v1/prices", s.role.base))
        .send()
        .await?
        .json()
        .await?;
    let gpt4o: Vec<&Value> = list["prices"]
        .as_array()
        .map(|a| a.iter().filter(|p| p["model"] == "gpt-4o").collect())
        .unwrap_or_default();
    assert_eq!(gpt4o.len(), 2, "{list}");
    assert_eq!(gpt4o[1]["input_per_mtok"], "1.25");
    // The seed file cannot rewrite a stored version either.
    prices::seed(
        &s.role.store,
        &[price("gpt-4o", "2024-10-01T00:00:00Z", "9", "9")],
    )
    .await?;
    let book = prices::load(&s.role.store).await?;
    let v = book
        .at("gpt-4o", ms("2026-10-01T00:00:00Z"))
        .map(|v| v.input_per_mtok);
    assert_eq!(v, Some(dec("2.50")));
    Ok(())
}
