//! Orgs, users, tiers and the audit trail through the admin API over a real socket.

mod common;

use common::problem;
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn org_crud_with_etag_and_if_match() -> anyhow::Result<()> {
    let app = common::app().await?;
    let res = app.post("/v1/orgs", json!({ "name": "acme" })).await?;
    assert_eq!(res.status(), 201);
    let etag = res.headers()["etag"].to_str()?.to_owned();
    let location = res.headers()["location"].to_str()?.to_owned();
    let org: Value = res.json().await?;
    let id = org["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(location, format!("/v1/orgs/{id}"));
    assert_eq!(org["name"], "acme");
    assert_eq!(etag, "\"1\"");

    let res = app.get(&location).await?;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["etag"], etag.as_str());

    // Duplicate name → 409.
    problem(
        app.post("/v1/orgs", json!({ "name": "acme" })).await?,
        409,
        "conflict",
    )
    .await?;

    // PATCH without If-Match → 428; with the current ETag → 200 and a new ETag; with the old one → 412.
    let patch = |name: &str, if_match: Option<&str>| {
        let mut r = app
            .req(Method::PATCH, &location)
            .json(&json!({ "name": name }));
        if let Some(m) = if_match {
            r = r.header("if-match", m);
        }
        r.send()
    };
    problem(patch("x", None).await?, 428, "precondition-required").await?;
    let res = patch("acme-2", Some(&etag)).await?;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["etag"], "\"2\"");
    problem(
        patch("acme-3", Some(&etag)).await?,
        412,
        "precondition-failed",
    )
    .await?;
    let now: Value = app.get(&location).await?.json().await?;
    assert_eq!(now["name"], "acme-2");

    // Unknown org → 404.
    let missing = format!("/v1/orgs/{}", uuid::Uuid::new_v4());
    problem(app.get(&missing).await?, 404, "not-found").await?;

    // Audit: create and update, by the bootstrap admin.
    let events: Value = app
        .get(&format!("/v1/audit?object={id}"))
        .await?
        .json()
        .await?;
    let actions: Vec<&str> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["org.create", "org.update"]);
    assert_eq!(events["items"][0]["actor"], "bootstrap-admin");
    let bad = app.get("/v1/audit?limit=101").await?;
    assert_eq!(
        common::fields(&problem(bad, 422, "validation").await?),
        ["limit"]
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_patches_with_the_same_etag_one_wins() -> anyhow::Result<()> {
    let app = common::app().await?;
    for round in 0..5 {
        let org = app.org(&format!("race-{round}")).await?;
        let path = format!("/v1/orgs/{}", org["id"].as_str().unwrap_or_default());
        let send = |name: String| {
            app.req(Method::PATCH, &path)
                .header("if-match", "\"1\"")
                .json(&json!({ "name": name }))
                .send()
        };
        let (a, b) = tokio::join!(send(format!("a-{round}")), send(format!("b-{round}")));
        let mut statuses = [a?.status().as_u16(), b?.status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 412], "round {round}");
        let now: Value = app.get(&path).await?.json().await?;
        assert_eq!(now["version"], 2, "exactly one update applied");
    }
    Ok(())
}

#[tokio::test]
async fn org_list_paginates_with_a_cursor() -> anyhow::Result<()> {
    let app = common::app().await?;
    for i in 0..5 {
        app.org(&format!("org-{i}")).await?;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/orgs?limit=2".to_owned();
    loop {
        let page: Value = app.get(&path).await?.json().await?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .filter_map(|o| o["name"].as_str().map(str::to_owned)),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/orgs?limit=2&after={next}"),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["org-0", "org-1", "org-2", "org-3", "org-4"]);
    let bad = app.get("/v1/orgs?limit=0").await?;
    assert_eq!(
        common::fields(&problem(bad, 422, "validation").await?),
        ["limit"]
    );
    Ok(())
}

#[tokio::test]
async fn users_and_tiers() -> anyhow::Result<()> {
    let app = common::app().await?;
    let org = app.org("people").await?;
    let users = format!("/v1/orgs/{}/users", org["id"].as_str().unwrap_or_default());
    let res = app
        .post(
            &users,
            json!({ "email": "Ada@Example.com", "name": "Ada", "roles": ["org-admin"] }),
        )
        .await?;
    assert_eq!(res.status(), 201);
    let user: Value = res.json().await?;
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["roles"], json!(["org-admin"]));
    problem(
        app.post(&users, json!({ "email": "ada@example.com" }))
            .await?,
        409,
        "conflict",
    )
    .await?;
    let bad = app
        .post(&users, json!({ "email": "nope", "roles": ["Bad Role"] }))
        .await?;
    assert_eq!(
        common::fields(&problem(bad, 422, "validation").await?),
        ["email", "roles[0]"]
    );
    let list: Value = app.get(&users).await?.json().await?;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));

    let res = app
        .req(Method::PUT, "/v1/tiers/team")
        .json(&json!({ "limits": { "requests_per_minute": 100 } }))
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    let res = app
        .req(Method::PUT, "/v1/tiers/team")
        .json(&json!({ "limits": { "requests_per_minute": 200 } }))
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    let tier: Value = res.json().await?;
    assert_eq!(
        (
            tier["version"].clone(),
            tier["limits"]["requests_per_minute"].clone()
        ),
        (json!(2), json!(200))
    );
    let bad = app
        .req(Method::PUT, "/v1/tiers/team")
        .json(&json!({ "limits": { "rpm": -1 } }))
        .send()
        .await?;
    assert_eq!(
        common::fields(&problem(bad, 422, "validation").await?),
        ["limits.rpm"]
    );
    let tiers: Value = app.get("/v1/tiers").await?.json().await?;
    let names: Vec<&str> = tiers["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["enterprise", "free", "pro", "team"]);
    Ok(())
}
