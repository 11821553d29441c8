//! Bad input and missing credentials: every one a 4xx problem+json naming the field, and nothing
//! written (the audit table, written with every change, stays as it was).

use crate::common;

use crate::common::{fields, problem};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn bad_bodies_and_ids_write_nothing() -> anyhow::Result<()> {
    let app = common::app().await?;
    let org = app.org("strict").await?;
    let keys = format!("/v1/orgs/{}/keys", org["id"].as_str().unwrap_or_default());
    let before = app.audit_count().await?;
    let orgs_before: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.orgs")
        .fetch_one(&app.pool)
        .await?;

    let raw = |path: &str, body: Vec<u8>| {
        app.req(Method::POST, path)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    problem(
        raw("/v1/orgs", b"{\"name\": ".to_vec()).await?,
        400,
        "malformed-json",
    )
    .await?;
    problem(
        raw("/v1/orgs", b"{\"name\": \"a\"} trailing".to_vec()).await?,
        400,
        "malformed-json",
    )
    .await?;

    let unknown = problem(
        app.post("/v1/orgs", json!({ "name": "x", "owner": "eve" }))
            .await?,
        422,
        "validation",
    )
    .await?;
    assert_eq!(fields(&unknown), ["owner"]);
    let missing = problem(
        app.post(&keys, json!({ "name": "x" })).await?,
        422,
        "validation",
    )
    .await?;
    assert_eq!(fields(&missing), ["tier"]);
    let wrong_type = problem(
        app.post(
            &keys,
            json!({ "name": "x", "tier": "pro", "models": "gpt" }),
        )
        .await?,
        422,
        "validation",
    )
    .await?;
    assert_eq!(fields(&wrong_type), ["models"]);
    let empty = problem(
        app.post("/v1/orgs", json!({ "name": "  " })).await?,
        422,
        "validation",
    )
    .await?;
    assert_eq!(fields(&empty), ["name"]);

    let huge = json!({ "name": "x".repeat(70 * 1024) })
        .to_string()
        .into_bytes();
    problem(raw("/v1/orgs", huge).await?, 413, "payload-too-large").await?;
    let form = app
        .req(Method::POST, "/v1/orgs")
        .header("content-type", "text/plain")
        .body("name=x")
        .send()
        .await?;
    problem(form, 415, "unsupported-media-type").await?;

    let bad_id = problem(
        app.post(
            "/v1/orgs/not-a-uuid/keys",
            json!({ "name": "x", "tier": "pro" }),
        )
        .await?,
        422,
        "validation",
    )
    .await?;
    assert_eq!(fields(&bad_id), ["org"]);
    let bad_key = problem(
        app.req(Method::DELETE, "/v1/keys/123").send().await?,
        422,
        "validation",
    )
    .await?;
    assert_eq!(fields(&bad_key), ["id"]);
    problem(app.get("/v1/nothing-here").await?, 404, "not-found").await?;

    assert_eq!(
        app.audit_count().await?,
        before,
        "a rejected request wrote an audit row"
    );
    let orgs_after: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.orgs")
        .fetch_one(&app.pool)
        .await?;
    assert_eq!(orgs_after, orgs_before);
    let keys_after: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.api_keys")
        .fetch_one(&app.pool)
        .await?;
    assert_eq!(keys_after, 0);
    Ok(())
}

#[tokio::test]
async fn no_or_wrong_token_is_401_problem() -> anyhow::Result<()> {
    let app = common::app().await?;
    let url = format!("{}/v1/orgs", app.base);
    let none = app
        .http
        .post(&url)
        .json(&json!({ "name": "x" }))
        .send()
        .await?;
    problem(none, 401, "unauthorized").await?;
    let wrong = app
        .http
        .get(&url)
        .bearer_auth("lt-dev-admin")
        .send()
        .await?;
    problem(wrong, 401, "unauthorized").await?;
    let basic = app
        .http
        .get(&url)
        .basic_auth("admin", Some(common::TOKEN))
        .send()
        .await?;
    problem(basic, 401, "unauthorized").await?;
    assert_eq!(app.audit_count().await?, 0);
    // Health endpoints need no token.
    assert_eq!(app.probe_status("/healthz").await?, 200);
    assert_eq!(app.probe_status("/readyz").await?, 200);
    Ok(())
}
