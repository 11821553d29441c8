//! `GET /v1/orgs/{org}/statements` on the admin API, answered by the analytics role's API on a real
//! Cassandra (rows written by the analytics crate's own batch writer, prices seeded through its
//! price module): the role's bytes come through unchanged (JSON and CSV), behind the control
//! plane's auth and RBAC, and a bad period is a 422 problem.

#[path = "common/analytics.rs"]
mod analytics;
mod common;

use analytics::{row, ANALYTICS_TOKEN};
use leaky_analytics::buckets::HOUR_MS;
use leaky_analytics::consumer::store_batch;
use leaky_analytics::event::UsageRow;
use leaky_analytics::prices::{self, PriceVersion};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_pass_through_from_analytics_behind_rbac() -> anyhow::Result<()> {
    let analytics::Analytics { store, base, app } = analytics::start("cpst").await?;
    let gpt4o = PriceVersion {
        model: "gpt-4o".into(),
        effective_from: 0,
        input_per_mtok: "2.50".parse()?,
        output_per_mtok: "10.00".parse()?,
        currency: "USD".into(),
    };
    prices::seed(&store, &[gpt4o]).await?;
    let org = app.org("statement-co").await?;
    let id = org["id"].as_str().unwrap_or_default().to_owned();

    let now = chrono::Utc::now().timestamp_millis();
    let this_hour = now - now.rem_euclid(HOUR_MS);
    let rows: Vec<UsageRow> = (0..4)
        .map(|i| row(i, &id, "gpt-4o", this_hour + i, 1_000 + i))
        .collect();
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
