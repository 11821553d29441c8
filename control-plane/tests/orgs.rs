//! Orgs, users, tiers and the audit trail through the admin API over a real socket; deleting an org
//! revokes its keys all the way to a watch stream.

use crate::common;
use crate::watch;

use crate::common::problem;
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

/// The actions of the audit events about `object`, in order.
async fn actions(app: &common::TestApp, object: &str) -> anyhow::Result<Vec<String>> {
    let events: Value = app
        .get(&format!("/v1/audit?object={object}"))
        .await?
        .json()
        .await?;
    Ok(events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str().map(str::to_owned))
        .collect())
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_owned()
}

async fn key_of(app: &common::TestApp, org: &str, name: &str) -> anyhow::Result<Value> {
    let res = app
        .post(
            &format!("/v1/orgs/{org}/keys"),
            json!({ "name": name, "tier": "pro" }),
        )
        .await?;
    anyhow::ensure!(res.status() == 201, "POST keys: {}", res.status());
    Ok(res.json().await?)
}

#[tokio::test]
async fn deleting_an_org_revokes_its_keys_and_the_stream_removes_them() -> anyhow::Result<()> {
    let app = common::app().await?;
    watch::publish_dev_base(&app).await;
    let mut w = watch::Watcher::open(&app, "proxy-a").await;
    let org = id_of(&app.org("doomed").await?);
    let other = id_of(&app.org("bystander").await?);
    let (a, b) = (
        key_of(&app, &org, "a").await?,
        key_of(&app, &org, "b").await?,
    );
    let kept = key_of(&app, &other, "kept").await?;
    let (a, b, kept) = (id_of(&a), id_of(&b), id_of(&kept));
    w.keys_until(&[&a, &b, &kept], &[]).await;

    // No If-Match → 428, a stale one → 412; neither writes anything.
    let path = format!("/v1/orgs/{org}");
    let before = app.audit_count().await?;
    let res = app.req(Method::DELETE, &path).send().await?;
    problem(res, 428, "precondition-required").await?;
    let stale = app.req(Method::DELETE, &path).header("if-match", "\"7\"");
    problem(stale.send().await?, 412, "precondition-failed").await?;
    assert_eq!(app.audit_count().await?, before);
    let key: Value = app.get(&format!("/v1/keys/{a}")).await?.json().await?;
    assert_eq!(key["state"], "active", "a refused delete revokes nothing");

    let res = app
        .req(Method::DELETE, &path)
        .header("if-match", "\"1\"")
        .send()
        .await?;
    assert_eq!(res.status(), 204);
    // The proxies are told to drop both keys, and only them.
    let (upserted, removed) = w.keys_until(&[], &[&a, &b]).await;
    assert!(upserted.is_empty(), "{upserted:?}");
    assert!(!removed.contains(&kept), "another org's key was removed");
    for k in [&a, &b] {
        let shown: Value = app.get(&format!("/v1/keys/{k}")).await?.json().await?;
        assert_eq!(shown["state"], "revoked", "{k}");
        assert_eq!(actions(&app, k).await?, ["key.create", "key.revoke"]);
    }
    let shown: Value = app.get(&format!("/v1/keys/{kept}")).await?.json().await?;
    assert_eq!(shown["state"], "active");
    assert_eq!(actions(&app, &org).await?, ["org.create", "org.delete"]);

    // Gone from the API: 404 everywhere, no key or user can be added, a second delete is a 404.
    problem(app.get(&path).await?, 404, "not-found").await?;
    let list: Value = app.get("/v1/orgs").await?.json().await?;
    let names: Vec<&str> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert_eq!(names, ["bystander"]);
    let res = app
        .post(
            &format!("{path}/keys"),
            json!({ "name": "late", "tier": "pro" }),
        )
        .await?;
    problem(res, 404, "not-found").await?;
    let res = app
        .post(&format!("{path}/users"), json!({ "email": "x@y.z" }))
        .await?;
    problem(res, 404, "not-found").await?;
    problem(app.get(&format!("{path}/keys")).await?, 404, "not-found").await?;
    let again = app.req(Method::DELETE, &path).header("if-match", "\"2\"");
    problem(again.send().await?, 404, "not-found").await?;
    let rename = app.req(Method::PATCH, &path).header("if-match", "\"2\"");
    let res = rename.json(&json!({ "name": "zombie" })).send().await?;
    problem(res, 404, "not-found").await?;
    let res = app.post(&format!("/v1/keys/{a}/rotate"), json!({})).await?;
    problem(res, 409, "conflict").await?;
    // Its name is free again.
    let res = app.post("/v1/orgs", json!({ "name": "doomed" })).await?;
    assert_eq!(res.status(), 201);
    Ok(())
}

#[tokio::test]
async fn an_org_deleted_while_keys_are_issued_keeps_no_live_key() -> anyhow::Result<()> {
    let app = common::app().await?;
    for round in 0..8 {
        let org = id_of(&app.org(&format!("race-{round}")).await?);
        let path = format!("/v1/orgs/{org}");
        let issue = app
            .req(Method::POST, &format!("{path}/keys"))
            .json(&json!({ "name": "racer", "tier": "free" }))
            .send();
        let delete = app
            .req(Method::DELETE, &path)
            .header("if-match", "\"1\"")
            .send();
        let (issued, deleted) = tokio::join!(issue, delete);
        let (issued, deleted) = (issued?.status().as_u16(), deleted?.status().as_u16());
        assert_eq!(deleted, 204, "round {round}");
        // Either the key came first (and the delete revoked it) or the delete did (404).
        assert!([201, 404].contains(&issued), "round {round}: {issued}");
    }
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenancy.api_keys k JOIN tenancy.orgs o ON o.id = k.org_id
         WHERE o.deleted_at IS NOT NULL AND (k.revoked_at IS NULL OR k.revoked_at > now())",
    )
    .fetch_one(&app.pool)
    .await?;
    assert_eq!(live, 0, "a deleted org kept a live key");
    Ok(())
}

#[tokio::test]
async fn users_get_patch_with_if_match_and_delete() -> anyhow::Result<()> {
    let app = common::app().await?;
    let org = id_of(&app.org("staff").await?);
    let res = app
        .post(
            &format!("/v1/orgs/{org}/users"),
            json!({ "email": "ada@example.com", "name": "Ada", "roles": ["dev"] }),
        )
        .await?;
    assert_eq!(res.status(), 201);
    let path = res.headers()["location"].to_str()?.to_owned();
    let user: Value = res.json().await?;
    assert_eq!(path, format!("/v1/orgs/{org}/users/{}", id_of(&user)));
    let res = app.get(&path).await?;
    assert_eq!(res.headers()["etag"], "\"1\"");
    assert_eq!(res.json::<Value>().await?["email"], "ada@example.com");

    let patch = |body: Value, if_match: Option<&str>| {
        let mut r = app.req(Method::PATCH, &path).json(&body);
        if let Some(m) = if_match {
            r = r.header("if-match", m);
        }
        r.send()
    };
    let before = app.audit_count().await?;
    let res = patch(json!({ "name": "Ada L." }), None).await?;
    problem(res, 428, "precondition-required").await?;
    for (body, field) in [
        (json!({}), "body"),
        (json!({ "roles": ["ok", "Not OK"] }), "roles[1]"),
        (json!({ "name": "" }), "name"),
        (json!({ "email": "new@example.com" }), "email"),
    ] {
        let res = patch(body.clone(), Some("\"1\"")).await?;
        let p = problem(res, 422, "validation").await?;
        assert_eq!(common::fields(&p), [field], "{body}");
    }
    assert_eq!(app.audit_count().await?, before, "bad input writes nothing");

    let res = patch(
        json!({ "name": "Ada L.", "roles": ["admin", "billing"] }),
        Some("\"1\""),
    )
    .await?;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["etag"], "\"2\"");
    let changed: Value = res.json().await?;
    assert_eq!(
        (&changed["name"], &changed["roles"], &changed["email"]),
        (
            &json!("Ada L."),
            &json!(["admin", "billing"]),
            &json!("ada@example.com")
        )
    );
    // A stale ETag loses and changes nothing; roles alone can be cleared.
    let res = patch(json!({ "roles": [] }), Some("\"1\"")).await?;
    problem(res, 412, "precondition-failed").await?;
    let res = patch(json!({ "roles": [] }), Some("\"2\"")).await?;
    let cleared: Value = res.json().await?;
    assert_eq!(
        (&cleared["roles"], &cleared["name"]),
        (&json!([]), &json!("Ada L."))
    );

    // The user is only reachable under its own org.
    let elsewhere = id_of(&app.org("elsewhere").await?);
    let wrong = format!("/v1/orgs/{elsewhere}/users/{}", id_of(&user));
    problem(app.get(&wrong).await?, 404, "not-found").await?;
    problem(
        app.req(Method::DELETE, &wrong).send().await?,
        404,
        "not-found",
    )
    .await?;
    let bad = app.get(&format!("/v1/orgs/{org}/users/not-a-uuid")).await?;
    assert_eq!(
        common::fields(&problem(bad, 422, "validation").await?),
        ["user"]
    );

    let res = app.req(Method::DELETE, &path).send().await?;
    assert_eq!(res.status(), 204);
    problem(app.get(&path).await?, 404, "not-found").await?;
    problem(
        app.req(Method::DELETE, &path).send().await?,
        404,
        "not-found",
    )
    .await?;
    assert_eq!(
        actions(&app, &id_of(&user)).await?,
        ["user.create", "user.update", "user.update", "user.delete"]
    );
    // The email is free again in the org.
    let res = app
        .post(
            &format!("/v1/orgs/{org}/users"),
            json!({ "email": "ada@example.com" }),
        )
        .await?;
    assert_eq!(res.status(), 201);
    Ok(())
}

#[tokio::test]
async fn tiers_get_and_delete_refused_while_a_live_key_uses_them() -> anyhow::Result<()> {
    let app = common::app().await?;
    let res = app.get("/v1/tiers/pro").await?;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["etag"], "\"1\"");
    assert_eq!(res.json::<Value>().await?["name"], "pro");
    problem(app.get("/v1/tiers/gold").await?, 404, "not-found").await?;
    let bad = app.get("/v1/tiers/Gold!").await?;
    assert_eq!(
        common::fields(&problem(bad, 422, "validation").await?),
        ["name"]
    );

    let res = app
        .req(Method::PUT, "/v1/tiers/team")
        .json(&json!({ "limits": { "requests_per_minute": 100 } }))
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    let org = id_of(&app.org("tiered").await?);
    let res = app
        .post(
            &format!("/v1/orgs/{org}/keys"),
            json!({ "name": "t", "tier": "team" }),
        )
        .await?;
    let key = id_of(&res.json().await?);
    // An expired key still counts: the proxies hold it, and its tier must stay defined for them.
    sqlx::query(
        "UPDATE tenancy.api_keys SET expires_at = now() - interval '1 s' WHERE id = $1::uuid",
    )
    .bind(&key)
    .execute(&app.pool)
    .await?;
    let before = app.audit_count().await?;
    let res = app.req(Method::DELETE, "/v1/tiers/team").send().await?;
    let p = problem(res, 409, "conflict").await?;
    assert!(
        p["detail"].as_str().unwrap_or("").contains("1 live key"),
        "{p}"
    );
    assert_eq!(app.audit_count().await?, before);
    assert_eq!(app.get("/v1/tiers/team").await?.status(), 200);

    let res = app
        .req(Method::DELETE, &format!("/v1/keys/{key}"))
        .send()
        .await?;
    assert_eq!(res.status(), 204);
    let res = app.req(Method::DELETE, "/v1/tiers/team").send().await?;
    assert_eq!(res.status(), 204);
    problem(app.get("/v1/tiers/team").await?, 404, "not-found").await?;
    let again = app.req(Method::DELETE, "/v1/tiers/team").send().await?;
    problem(again, 404, "not-found").await?;
    assert_eq!(actions(&app, "team").await?, ["tier.create", "tier.delete"]);
    // The revoked key keeps its tier's name as history; a new key cannot use the deleted tier.
    let shown: Value = app.get(&format!("/v1/keys/{key}")).await?.json().await?;
    assert_eq!(shown["tier"], "team");
    let res = app
        .post(
            &format!("/v1/orgs/{org}/keys"),
            json!({ "name": "t2", "tier": "team" }),
        )
        .await?;
    assert_eq!(
        common::fields(&problem(res, 422, "validation").await?),
        ["tier"]
    );
    Ok(())
}

#[tokio::test]
async fn a_tier_deleted_while_keys_are_issued_leaves_no_live_key_without_it() -> anyhow::Result<()>
{
    let app = common::app().await?;
    let org = id_of(&app.org("racer").await?);
    for round in 0..8 {
        let tier = format!("t{round}");
        let res = app
            .req(Method::PUT, &format!("/v1/tiers/{tier}"))
            .json(&json!({ "limits": { "requests_per_minute": 10 } }))
            .send()
            .await?;
        assert_eq!(res.status(), 201);
        let issue = app
            .req(Method::POST, &format!("/v1/orgs/{org}/keys"))
            .json(&json!({ "name": "k", "tier": tier }))
            .send();
        let delete = app.req(Method::DELETE, &format!("/v1/tiers/{tier}")).send();
        let (issued, deleted) = tokio::join!(issue, delete);
        let pair = (issued?.status().as_u16(), deleted?.status().as_u16());
        // The key first (and the delete refused), or the delete first (and the key refused).
        assert!(
            [(201, 409), (422, 204)].contains(&pair),
            "round {round}: {pair:?}"
        );
    }
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenancy.api_keys k WHERE NOT EXISTS
         (SELECT 1 FROM tenancy.tiers t WHERE t.name = k.tier)",
    )
    .fetch_one(&app.pool)
    .await?;
    assert_eq!(orphans, 0, "a key outlived its tier");
    Ok(())
}
