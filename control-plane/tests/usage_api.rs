//! `GET /v1/orgs/{org}/usage` and `/usage/top-keys` on the admin API, answered by the analytics
//! role's API on a real Cassandra (rows written by the analytics crate's own batch writer), behind
//! the control plane's auth and RBAC; DESIGN.md's full-stack shape is checked field by field.

#[path = "common/analytics.rs"]
mod analytics;
mod common;

use analytics::row;
use leaky_analytics::buckets::{DAY_MS, HOUR_MS};
use leaky_analytics::consumer::store_batch;
use leaky_analytics::event::UsageRow;
use serde_json::Value;

fn iso(ts: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_served_from_analytics_behind_rbac() -> anyhow::Result<()> {
    let analytics::Analytics { store, base, app } = analytics::start("cp").await?;
    let org = app.org("usage-co").await?;
    let id = org["id"].as_str().unwrap_or_default().to_owned();

    let day = (chrono::Utc::now().timestamp_millis() / DAY_MS - 2) * DAY_MS;
    let rows: Vec<UsageRow> = (0..6)
        .map(|i| {
            let model = if i % 3 == 0 { "gpt-4o" } else { "qwen-max" };
            row(i, &id, model, day + (i % 2) * DAY_MS + HOUR_MS, 100 + i)
        })
        .collect();
    store_batch(&store, &rows, 8).await?;

    let range = format!("from={}&to={}", iso(day), iso(day + 2 * DAY_MS));
    let res = app
        .get(&format!("/v1/orgs/{id}/usage?{range}&granularity=day"))
        .await?;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await?;
    let prompt: i64 = rows.iter().map(|r| r.totals.prompt_tokens).sum();
    assert_eq!(v["total"]["requests"], 6);
    assert_eq!(v["total"]["prompt_tokens"].as_i64(), Some(prompt));
    assert_eq!(v["total"]["completion_tokens"], 60);
    assert_eq!(v["total"]["total_tokens"].as_i64(), Some(prompt + 60));
    let series = v["series"].as_array().cloned().unwrap_or_default();
    assert_eq!(series.len(), 2);
    assert_eq!(series[0]["start"], iso(day).as_str());
    for p in &series {
        for f in [
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
        ] {
            assert!(p[f].is_i64(), "series field {f}: {p}");
        }
    }

    let grouped: Value = app
        .get(&format!(
            "/v1/orgs/{id}/usage?{range}&granularity=month&group_by=model"
        ))
        .await?
        .json()
        .await?;
    let groups: Vec<&str> = grouped["series"]
        .as_array()
        .map(|s| s.iter().filter_map(|p| p["group"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        groups.contains(&"gpt-4o") && groups.contains(&"qwen-max"),
        "{grouped}"
    );

    let top: Value = app
        .get(&format!("/v1/orgs/{id}/usage/top-keys?{range}&limit=1"))
        .await?
        .json()
        .await?;
    assert_eq!(top["keys"].as_array().map(Vec::len), Some(1), "{top}");
    assert_eq!(top["keys"][0]["key_id"], "k1");

    // Errors: the analytics role's refusal as a 422 problem, an unknown org 404, no token 401.
    let bad = app
        .get(&format!(
            "/v1/orgs/{id}/usage?{range}&granularity=fortnight"
        ))
        .await?;
    assert_eq!(bad.status(), 422);
    let unknown = "0f8fad5b-d9cb-469f-a165-70867728950e";
    assert_eq!(
        app.get(&format!("/v1/orgs/{unknown}/usage"))
            .await?
            .status(),
        404
    );
    let anonymous = reqwest::get(format!("{}/v1/orgs/{id}/usage", app.base)).await?;
    assert_eq!(anonymous.status(), 401);
    // The analytics role refuses callers without its own token.
    let direct = reqwest::get(format!("{base}/v1/orgs/{id}/usage")).await?;
    assert_eq!(direct.status(), 401);
    Ok(())
}
