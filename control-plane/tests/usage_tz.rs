//! The org's time zone (issue 16): set on create and by PATCH (validated as an IANA name), shown by
//! GET, passed to the analytics role by the usage and statement routes when the caller names no
//! `tz`, and published with the org's version on `org.created` / `org.updated` (the outbox rows);
//! the anomalies route forwarded as it came. Real PostgreSQL; the analytics role is stood in for by a
//! real axum listener that records the requests it gets (what is checked is the control plane's own
//! forwarding; the role's answers are covered by `usage_api.rs` and the analytics crate).

mod common;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::Uri;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

type Seen = Arc<Mutex<Vec<String>>>;

/// Records the path and query, answers a minimal report echoing the query's `tz`.
async fn usage(State(seen): State<Seen>, uri: Uri) -> Json<Value> {
    let tz = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("tz="))
        .unwrap_or("")
        .replace("%2F", "/");
    if let Ok(mut s) = seen.lock() {
        s.push(uri.to_string());
    }
    let totals = json!({"requests": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
                        "total_tokens": 0, "latency_us": 0, "cost": "0"});
    Json(
        json!({"org": "o", "from": "2026-03-01T00:00:00+05:30", "to": "2026-03-02T00:00:00+05:30",
                "granularity": "day", "tz": tz, "total": totals, "series": []}),
    )
}

async fn anomalies(State(seen): State<Seen>, uri: Uri) -> Json<Value> {
    if let Ok(mut s) = seen.lock() {
        s.push(uri.to_string());
    }
    Json(
        json!({"org": "o", "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z",
                "anomalies": [{"id": "a", "key": null, "kind": "token_spike",
                               "minute": "2026-03-01T10:00:00Z", "score": 9.5, "baseline": 100.0,
                               "spread": 10.0, "observed": 195.0, "explanation": "tokens/min 195"}]}),
    )
}

/// Records the path and query, answers a statement list.
async fn statements(State(seen): State<Seen>, uri: Uri) -> Json<Value> {
    if let Ok(mut s) = seen.lock() {
        s.push(uri.to_string());
    }
    Json(json!({"org": "o", "statements": []}))
}

async fn stand_in() -> anyhow::Result<(String, Seen)> {
    let seen: Seen = Arc::default();
    let router = Router::new()
        .route("/v1/orgs/{org}/usage", get(usage))
        .route("/v1/orgs/{org}/anomalies", get(anomalies))
        .route("/v1/orgs/{org}/statements", get(statements))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok((base, seen))
}

fn last(seen: &Seen) -> String {
    seen.lock()
        .ok()
        .and_then(|s| s.last().cloned())
        .unwrap_or_default()
}

async fn patch(
    app: &common::TestApp,
    id: &str,
    version: i64,
    body: Value,
) -> anyhow::Result<reqwest::Response> {
    Ok(app
        .req(reqwest::Method::PATCH, &format!("/v1/orgs/{id}"))
        .header("if-match", format!("\"{version}\""))
        .json(&body)
        .send()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_org_time_zone_is_stored_validated_and_forwarded() -> anyhow::Result<()> {
    let (base, seen) = stand_in().await?;
    // This binary holds this one test: the environment is its own, read once when the app is built.
    std::env::set_var("LEAKY_ANALYTICS_URL", &base);
    std::env::remove_var("LEAKY_ANALYTICS_TOKEN");
    let app = common::app().await?;

    // Default UTC; a zone on create; an unknown zone refused.
    let plain = app.org("tz-plain").await?;
    assert_eq!(plain["time_zone"], "UTC");
    let res = app
        .post(
            "/v1/orgs",
            json!({"name": "tz-in", "time_zone": "Asia/Kolkata"}),
        )
        .await?;
    assert_eq!(res.status(), 201);
    let org: Value = res.json().await?;
    assert_eq!(org["time_zone"], "Asia/Kolkata");
    let id = org["id"].as_str().unwrap_or_default().to_owned();
    let bad = app
        .post(
            "/v1/orgs",
            json!({"name": "tz-bad", "time_zone": "Mars/Olympus"}),
        )
        .await?;
    let problem = common::problem(bad, 422, "validation").await?;
    assert_eq!(common::fields(&problem), vec!["time_zone".to_owned()]);
    let shown: Value = app.get(&format!("/v1/orgs/{id}")).await?.json().await?;
    assert_eq!(shown["time_zone"], "Asia/Kolkata");

    // No `tz` → the org's zone is forwarded; an explicit one wins.
    let r = app
        .get(&format!("/v1/orgs/{id}/usage?granularity=day"))
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await?["tz"], "Asia/Kolkata");
    assert!(last(&seen).contains("tz=Asia%2FKolkata"), "{}", last(&seen));
    let r = app.get(&format!("/v1/orgs/{id}/usage?tz=UTC")).await?;
    assert_eq!(r.json::<Value>().await?["tz"], "UTC");
    assert!(last(&seen).contains("tz=UTC"), "{}", last(&seen));
    let r = app
        .get(&format!(
            "/v1/orgs/{}/usage",
            plain["id"].as_str().unwrap_or("")
        ))
        .await?;
    assert_eq!(r.json::<Value>().await?["tz"], "UTC");

    // PATCH the zone alone: the name stays, the version moves, the usage route follows.
    let r = patch(&app, &id, 1, json!({"time_zone": "America/New_York"})).await?;
    assert_eq!(r.status(), 200);
    let changed: Value = r.json().await?;
    assert_eq!(changed["time_zone"], "America/New_York");
    assert_eq!(changed["name"], "tz-in");
    assert_eq!(changed["version"], 2);
    app.get(&format!("/v1/orgs/{id}/usage")).await?;
    assert!(
        last(&seen).contains("tz=America%2FNew_York"),
        "{}",
        last(&seen)
    );
    let r = patch(&app, &id, 2, json!({"time_zone": "Not/AZone"})).await?;
    common::problem(r, 422, "validation").await?;
    let r = patch(&app, &id, 2, json!({})).await?;
    common::problem(r, 422, "validation").await?;
    let r = patch(&app, &id, 2, json!({"name": "tz-renamed"})).await?;
    let renamed: Value = r.json().await?;
    assert_eq!(
        renamed["time_zone"], "America/New_York",
        "a rename keeps the zone"
    );

    // Statements: the org's zone forwarded too (an open period's preview is in it).
    let r = app
        .get(&format!("/v1/orgs/{id}/statements?period=2026-03"))
        .await?;
    assert_eq!(r.status(), 200);
    assert!(
        last(&seen).contains("tz=America%2FNew_York"),
        "{}",
        last(&seen)
    );

    // The tenancy events carry the zone and the org's version: the analytics role learns each
    // org's zone from them and orders changes by version.
    let events: Vec<(String, Value)> = sqlx::query_as(
        "SELECT type, payload FROM outbox.events WHERE aggregate_id = $1 ORDER BY aggregate_seq",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await?;
    let zones: Vec<(&str, &Value, &Value)> = events
        .iter()
        .map(|(kind, p)| (kind.as_str(), &p["time_zone"], &p["version"]))
        .collect();
    assert_eq!(
        zones,
        vec![
            ("org.created", &json!("Asia/Kolkata"), &json!(1)),
            ("org.updated", &json!("America/New_York"), &json!(2)),
            ("org.updated", &json!("America/New_York"), &json!(3)),
        ]
    );

    // Anomalies: forwarded with the caller's query, answered in the typed shape.
    let r = app
        .get(&format!(
            "/v1/orgs/{id}/anomalies?from=2026-03-01&to=2026-03-02"
        ))
        .await?;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await?;
    assert_eq!(v["anomalies"][0]["kind"], "token_spike");
    assert_eq!(
        last(&seen),
        format!("/v1/orgs/{id}/anomalies?from=2026-03-01&to=2026-03-02")
    );
    let unknown = app
        .get("/v1/orgs/0f8fad5b-d9cb-469f-a165-70867728950e/anomalies")
        .await?;
    common::problem(unknown, 404, "not-found").await?;
    Ok(())
}
