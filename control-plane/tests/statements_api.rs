//! `GET /v1/orgs/{org}/statements` on the admin API, answered by the analytics role's API on a real
//! Cassandra (rows written by the analytics crate's own batch writer, prices seeded through its
//! price module): the role's bytes come through unchanged (JSON and CSV), behind the control
//! plane's auth and RBAC, and a bad period is a 422 problem.

#[allow(dead_code)]
#[path = "../../analytics/tests/common/cassandra.rs"]
mod cassandra;
mod common;

use std::sync::Arc;

use leaky_analytics::buckets::{Totals, HOUR_MS};
use leaky_analytics::consumer::store_batch;
use leaky_analytics::event::UsageRow;
use leaky_analytics::prices::{self, PriceVersion};
use leaky_analytics::store::StoreConfig;
use serde_json::Value;

const ANALYTICS_TOKEN: &str = "analytics-test-token";

fn row(i: i64, org: &str, ts: i64) -> UsageRow {
    UsageRow {
        event_id: format!("st-{i}"),
        ts,
        org: org.to_owned(),
        request_id: format!("req-{i}"),
        key_id: "k1".to_owned(),
        model: "gpt-4o".to_owned(),
        provider: "openai".to_owned(),
        status: 200,
        totals: Totals {
            requests: 1,
            prompt_tokens: 1_000 + i,
            completion_tokens: 10,
            total_tokens: 1_010 + i,
            latency_us: 1000,
            ..Totals::default()
        },
    }
}

async fn analytics_api(store: Arc<leaky_analytics::store::Store>) -> anyhow::Result<String> {
    let state = Arc::new(leaky_analytics::api::ApiState {
        anomalies: Arc::new(leaky_analytics::anomaly::sink::AnomalyStore::new(
            store.clone(),
        )),
        store,
        metrics: leaky_analytics::metrics::Metrics::new()?,
        token: Some(ANALYTICS_TOKEN.to_owned()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, leaky_analytics::api::router(state)).await });
    Ok(base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_pass_through_from_analytics_behind_rbac() -> anyhow::Result<()> {
    let node = cassandra::node()?;
    let cfg = StoreConfig::new(&node, &cassandra::keyspace("cpst"));
    let store = Arc::new(leaky_analytics::connect_store(&cfg).await?);
    let gpt4o = PriceVersion {
        model: "gpt-4o".into(),
        effective_from: 0,
        input_per_mtok: "2.50".parse()?,
        output_per_mtok: "10.00".parse()?,
        currency: "USD".into(),
    };
    prices::seed(&store, &[gpt4o]).await?;
    let base = analytics_api(store.clone()).await?;
    // This binary holds this one test: the environment is its own; the app reads it once.
    std::env::set_var("LEAKY_ANALYTICS_URL", &base);
    std::env::set_var("LEAKY_ANALYTICS_TOKEN", ANALYTICS_TOKEN);
    let app = common::app().await?;
    let org = app.org("statement-co").await?;
    let id = org["id"].as_str().unwrap_or_default().to_owned();

    let now = chrono::Utc::now().timestamp_millis();
    let this_hour = now - now.rem_euclid(HOUR_MS);
    let rows: Vec<UsageRow> = (0..4).map(|i| row(i, &id, this_hour + i)).collect();
    store_batch(&store, &rows, 8).await?;
    let period = chrono::Utc::now().format("%Y-%m").to_string();

    let path = format!("/v1/orgs/{id}/statements?period={period}");
    let res = app.get(&path).await?;
    assert_eq!(res.status(), 200);
    let json = res.text().await?;
    let v: Value = serde_json::from_str(&json)?;
    assert_eq!(v["status"], "open");
    assert_eq!(v["lines"][0]["model"], "gpt-4o");
    // 4,006 × 2.50 + 40 × 10.00, per million.
    assert_eq!(v["totals"]["amount"], "0.010415");
    let direct = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(ANALYTICS_TOKEN)
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(json, direct, "the control plane changed the role's bytes");

    let csv = app
        .req(reqwest::Method::GET, &path)
        .header("accept", "text/csv")
        .send()
        .await?;
    assert_eq!(
        csv.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/csv; charset=utf-8")
    );
    let csv = csv.text().await?;
    assert!(csv.starts_with("org,period,record,"), "{csv}");
    assert!(csv.contains(",total,"), "{csv}");

    let list: Value = app
        .get(&format!("/v1/orgs/{id}/statements"))
        .await?
        .json()
        .await?;
    assert_eq!(list["statements"], serde_json::json!([]), "{list}");
    let bad = app
        .get(&format!("/v1/orgs/{id}/statements?period=2026-13"))
        .await?;
    assert_eq!(bad.status(), 422);
    let anonymous = reqwest::get(format!("{}{path}", app.base)).await?;
    assert_eq!(anonymous.status(), 401);
    Ok(())
}
