//! API keys: shown once, only SHA-256 stored, format and entropy, rotation with a grace period,
//! idempotent revocation, pagination and the state filter, and PATCH of a key's expiry (pushed to a
//! watch stream) and name.

use crate::common;
use crate::watch;

use crate::common::problem;
use leaky_control_plane::tenancy::keys;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

async fn org_keys(app: &common::TestApp) -> anyhow::Result<String> {
    let org = app.org("keyholder").await?;
    Ok(format!(
        "/v1/orgs/{}/keys",
        org["id"].as_str().unwrap_or_default()
    ))
}

async fn issue(app: &common::TestApp, path: &str, body: Value) -> anyhow::Result<Value> {
    let res = app.post(path, body).await?;
    assert_eq!(res.status(), 201);
    Ok(res.json().await?)
}

#[tokio::test]
async fn key_is_shown_once_and_only_its_hash_is_stored() -> anyhow::Result<()> {
    let app = common::app().await?;
    let path = org_keys(&app).await?;
    let created = issue(
        &app,
        &path,
        json!({ "name": "ci", "tier": "pro", "models": ["gpt-4o-mini"] }),
    )
    .await?;
    let key = created["key"].as_str().unwrap_or_default().to_owned();
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let prefix = created["prefix"].as_str().unwrap_or_default().to_owned();

    // Format `lt-<prefix>_<secret>`, secret of ≥ 192 bits: 43 base62 characters = 256 bits.
    let (p, secret) = key
        .strip_prefix("lt-")
        .and_then(|k| k.split_once('_'))
        .unwrap_or_default();
    assert_eq!(p, prefix);
    assert!(
        secret.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{secret}"
    );
    let bits = secret.len() as f64 * 62f64.log2();
    assert!(bits >= 192.0, "{bits} bits");
    assert_eq!(secret.len(), keys::SECRET_CHARS);

    // Never again: GET of the key and the list show no secret and no hash.
    for body in [
        app.get(&format!("/v1/keys/{id}")).await?.text().await?,
        app.get(&path).await?.text().await?,
    ] {
        assert!(!body.contains(secret), "secret leaked: {body}");
        assert!(
            !body.contains("sha256") && !body.contains("\"key\""),
            "hash or key leaked: {body}"
        );
        assert!(body.contains(&prefix));
    }
    // The table holds SHA-256 of the key, and no column holds the secret.
    let (stored, row): (Vec<u8>, String) =
        sqlx::query_as("SELECT key_sha256, k::text FROM tenancy.api_keys k WHERE prefix = $1")
            .bind(&prefix)
            .fetch_one(&app.pool)
            .await?;
    assert_eq!(stored, Sha256::digest(key.as_bytes()).to_vec());
    assert!(!row.contains(secret), "secret stored: {row}");
    let audit: String = sqlx::query_scalar("SELECT string_agg(e::text, ' ') FROM audit.events e")
        .fetch_one(&app.pool)
        .await?;
    assert!(!audit.contains(secret), "secret in the audit log");

    let verified = keys::verify(&app.pool, &key).await?;
    assert_eq!(verified.map(|k| k.id.to_string()), Some(id));
    assert!(
        keys::verify(&app.pool, &format!("lt-{prefix}_{}", "x".repeat(43)))
            .await?
            .is_none()
    );
    Ok(())
}

#[tokio::test]
async fn keys_are_unique_and_random() -> anyhow::Result<()> {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let (_, key) = keys::generate()?;
        assert!(keys::parse(&key).is_some(), "{key}");
        assert!(seen.insert(key));
    }
    Ok(())
}

#[tokio::test]
async fn rotate_keeps_the_old_key_for_the_grace_period() -> anyhow::Result<()> {
    let app = common::app().await?;
    let path = org_keys(&app).await?;
    let old = issue(&app, &path, json!({ "name": "svc", "tier": "free" })).await?;
    let old_key = old["key"].as_str().unwrap_or_default().to_owned();
    let old_id = old["id"].as_str().unwrap_or_default().to_owned();

    let res = app
        .post(
            &format!("/v1/keys/{old_id}/rotate?grace_seconds=2"),
            json!({}),
        )
        .await?;
    assert_eq!(res.status(), 201);
    let rotation: Value = res.json().await?;
    let new_key = rotation["key"].as_str().unwrap_or_default().to_owned();
    assert_ne!(new_key, old_key);
    assert_eq!(rotation["rotated_from"], old_id.as_str());
    assert_eq!(rotation["previous"]["state"], "active");
    assert!(rotation["previous"]["grace_until"].is_string());

    // Both work during the grace period; a second rotation of the old key is refused.
    assert!(keys::verify(&app.pool, &old_key).await?.is_some());
    assert!(keys::verify(&app.pool, &new_key).await?.is_some());
    let again = app
        .post(&format!("/v1/keys/{old_id}/rotate"), json!({}))
        .await?;
    problem(again, 409, "conflict").await?;

    // The grace period ends 2 s after the rotation, on the database's clock...
    let left: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM revoked_at - now())::float8 FROM tenancy.api_keys WHERE id = $1::uuid",
    )
    .bind(&old_id)
    .fetch_one(&app.pool)
    .await?;
    assert!((1.0..=2.0).contains(&left), "grace ends in {left} s, not 2");
    // ...so moving that end 3 s earlier is the grace period having passed (no sleep).
    sqlx::query(
        "UPDATE tenancy.api_keys SET revoked_at = revoked_at - interval '3 seconds',
         grace_until = grace_until - interval '3 seconds' WHERE id = $1::uuid",
    )
    .bind(&old_id)
    .execute(&app.pool)
    .await?;
    assert!(
        keys::verify(&app.pool, &old_key).await?.is_none(),
        "old key still valid after the grace period"
    );
    assert!(keys::verify(&app.pool, &new_key).await?.is_some());
    let shown: Value = app.get(&format!("/v1/keys/{old_id}")).await?.json().await?;
    assert_eq!(shown["state"], "revoked");

    // grace 0 revokes at once; over 7 days is refused.
    let new_id = rotation["id"].as_str().unwrap_or_default().to_owned();
    let too_long = app
        .post(
            &format!("/v1/keys/{new_id}/rotate?grace_seconds=604801"),
            json!({}),
        )
        .await?;
    assert_eq!(
        common::fields(&problem(too_long, 422, "validation").await?),
        ["grace_seconds"]
    );
    let res = app
        .post(
            &format!("/v1/keys/{new_id}/rotate?grace_seconds=0"),
            json!({}),
        )
        .await?;
    assert_eq!(res.status(), 201);
    assert!(keys::verify(&app.pool, &new_key).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn revoke_is_idempotent() -> anyhow::Result<()> {
    let app = common::app().await?;
    let path = org_keys(&app).await?;
    let k = issue(&app, &path, json!({ "name": "gone", "tier": "pro" })).await?;
    let key = k["key"].as_str().unwrap_or_default().to_owned();
    let id = k["id"].as_str().unwrap_or_default().to_owned();
    let before = app.audit_count().await?;
    for _ in 0..2 {
        let res = app
            .req(Method::DELETE, &format!("/v1/keys/{id}"))
            .send()
            .await?;
        assert_eq!(res.status(), 204);
    }
    assert_eq!(
        app.audit_count().await?,
        before + 1,
        "one audit row for one actual revocation"
    );
    assert!(keys::verify(&app.pool, &key).await?.is_none());
    let shown: Value = app.get(&format!("/v1/keys/{id}")).await?.json().await?;
    assert_eq!(shown["state"], "revoked");
    let missing = app
        .req(
            Method::DELETE,
            &format!("/v1/keys/{}", uuid::Uuid::new_v4()),
        )
        .send()
        .await?;
    problem(missing, 404, "not-found").await?;
    Ok(())
}

#[tokio::test]
async fn list_paginates_and_filters_by_state() -> anyhow::Result<()> {
    let app = common::app().await?;
    let path = org_keys(&app).await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            issue(
                &app,
                &path,
                json!({ "name": format!("k{i}"), "tier": "free" }),
            )
            .await?["id"]
                .clone(),
        );
    }
    app.req(
        Method::DELETE,
        &format!("/v1/keys/{}", ids[0].as_str().unwrap_or_default()),
    )
    .send()
    .await?;
    // An expired key: issued valid, then its expiry moved into the past in the database.
    sqlx::query(
        "UPDATE tenancy.api_keys SET expires_at = now() - interval '1 s' WHERE id = $1::uuid",
    )
    .bind(ids[1].as_str())
    .execute(&app.pool)
    .await?;

    let count = |q: &'static str| {
        let app = &app;
        let path = &path;
        async move {
            let page: Value = app.get(&format!("{path}?{q}")).await?.json().await?;
            anyhow::Ok(page["items"].as_array().map_or(0, Vec::len))
        }
    };
    assert_eq!(count("state=active").await?, 3);
    assert_eq!(count("state=revoked").await?, 1);
    assert_eq!(count("state=expired").await?, 1);
    assert_eq!(count("limit=100").await?, 5);

    let mut seen = 0;
    let mut url = format!("{path}?limit=2");
    loop {
        let page: Value = app.get(&url).await?.json().await?;
        seen += page["items"].as_array().map_or(0, Vec::len);
        match page["next"].as_str() {
            Some(next) => url = format!("{path}?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, 5);
    let bad = app.get(&format!("{path}?state=sleeping")).await?;
    assert_eq!(
        common::fields(&problem(bad, 422, "validation").await?),
        ["state"]
    );
    Ok(())
}

#[tokio::test]
async fn unknown_tier_and_past_expiry_are_named() -> anyhow::Result<()> {
    let app = common::app().await?;
    let path = org_keys(&app).await?;
    let before = app.audit_count().await?;
    let res = app
        .post(&path, json!({ "name": "k", "tier": "platinum" }))
        .await?;
    assert_eq!(
        common::fields(&problem(res, 422, "validation").await?),
        ["tier"]
    );
    let res = app
        .post(
            &path,
            json!({ "name": "k", "tier": "pro", "expires_at": "2001-01-01T00:00:00Z" }),
        )
        .await?;
    assert_eq!(
        common::fields(&problem(res, 422, "validation").await?),
        ["expires_at"]
    );
    assert_eq!(app.audit_count().await?, before);
    Ok(())
}

async fn patch(app: &common::TestApp, id: &str, body: Value) -> anyhow::Result<reqwest::Response> {
    Ok(app
        .req(Method::PATCH, &format!("/v1/keys/{id}"))
        .json(&body)
        .send()
        .await?)
}

#[tokio::test]
async fn patching_the_expiry_reaches_the_watch_stream() -> anyhow::Result<()> {
    let app = common::app().await?;
    watch::publish_dev_base(&app).await;
    let mut w = watch::Watcher::open(&app, "proxy-a").await;
    let path = org_keys(&app).await?;
    let issued = issue(&app, &path, json!({ "name": "ci", "tier": "pro" })).await?;
    let id = issued["id"].as_str().unwrap_or_default().to_owned();
    let (pushed, _) = w.keys_until(&[&id], &[]).await;
    assert!(pushed[0].get("expires_at").is_none_or(Value::is_null));

    // Set: the key's new expiry is upserted to the proxies.
    let res = patch(&app, &id, json!({ "expires_at": "2030-01-01T00:00:00Z" })).await?;
    assert_eq!(res.status(), 200);
    let shown: Value = res.json().await?;
    assert_eq!(shown["expires_at"], "2030-01-01T00:00:00Z");
    assert_eq!(shown["name"], "ci", "the name is kept");
    let (pushed, _) = w.keys_until(&[&id], &[]).await;
    assert_eq!(pushed[0]["expires_at"], "2030-01-01T00:00:00Z");

    // Cleared by an explicit null.
    let res = patch(&app, &id, json!({ "expires_at": null })).await?;
    assert_eq!(res.json::<Value>().await?["expires_at"], Value::Null);
    let (pushed, _) = w.keys_until(&[&id], &[]).await;
    assert!(
        pushed[0].get("expires_at").is_none_or(Value::is_null),
        "{}",
        pushed[0]
    );

    // A rename is admin metadata only: the next event the stream carries is the revocation's.
    let res = patch(&app, &id, json!({ "name": "ci-renamed" })).await?;
    let shown: Value = res.json().await?;
    assert_eq!(
        (&shown["name"], &shown["expires_at"]),
        (&json!("ci-renamed"), &Value::Null)
    );
    let res = app
        .req(Method::DELETE, &format!("/v1/keys/{id}"))
        .send()
        .await?;
    assert_eq!(res.status(), 204);
    let next = w.next().await;
    assert_eq!(
        (&next["upsert"], &next["remove"]),
        (&json!([]), &json!([id])),
        "{next}"
    );
    Ok(())
}

#[tokio::test]
async fn a_past_expiry_expires_now_and_a_later_one_revives() -> anyhow::Result<()> {
    let app = common::app().await?;
    let path = org_keys(&app).await?;
    let issued = issue(&app, &path, json!({ "name": "ci", "tier": "pro" })).await?;
    let (id, key) = (
        issued["id"].as_str().unwrap_or_default().to_owned(),
        issued["key"].as_str().unwrap_or_default().to_owned(),
    );
    let res = patch(&app, &id, json!({ "expires_at": "2001-01-01T00:00:00Z" })).await?;
    assert_eq!(res.json::<Value>().await?["state"], "expired");
    assert!(keys::verify(&app.pool, &key).await?.is_none());
    let res = patch(&app, &id, json!({ "expires_at": "2099-01-01T00:00:00Z" })).await?;
    assert_eq!(res.json::<Value>().await?["state"], "active");
    assert!(keys::verify(&app.pool, &key).await?.is_some());
    let events: Value = app
        .get(&format!("/v1/audit?object={id}"))
        .await?
        .json()
        .await?;
    let last = &events["items"][2];
    assert_eq!(last["action"], "key.update");
    assert_eq!(last["detail"]["expires_at"], "2099-01-01T00:00:00Z");
    Ok(())
}

#[tokio::test]
async fn patch_refuses_bad_input_revoked_and_rotated_keys() -> anyhow::Result<()> {
    let app = common::app().await?;
    let path = org_keys(&app).await?;
    let k = issue(&app, &path, json!({ "name": "ci", "tier": "pro" })).await?;
    let id = k["id"].as_str().unwrap_or_default().to_owned();
    let before = app.audit_count().await?;
    for (body, field) in [
        (json!({}), "body"),
        (json!({ "expires_at": "next tuesday" }), "expires_at"),
        (json!({ "name": " " }), "name"),
        (json!({ "tier": "free" }), "tier"),
    ] {
        let res = patch(&app, &id, body.clone()).await?;
        let p = problem(res, 422, "validation").await?;
        assert_eq!(common::fields(&p), [field], "{body}");
    }
    let res = app
        .req(Method::PATCH, &format!("/v1/keys/{id}"))
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await?;
    problem(res, 400, "malformed-json").await?;
    let missing = uuid::Uuid::new_v4().to_string();
    problem(
        patch(&app, &missing, json!({ "name": "x" })).await?,
        404,
        "not-found",
    )
    .await?;
    assert_eq!(app.audit_count().await?, before, "bad input writes nothing");
    let shown: Value = app.get(&format!("/v1/keys/{id}")).await?.json().await?;
    assert_eq!(shown["name"], "ci");

    // Rotated away (in its grace period) or revoked: the key's end is set; PATCH is a conflict.
    let res = app
        .post(&format!("/v1/keys/{id}/rotate"), json!({}))
        .await?;
    let rotation: Value = res.json().await?;
    let body = json!({ "expires_at": "2099-01-01T00:00:00Z" });
    problem(patch(&app, &id, body.clone()).await?, 409, "conflict").await?;
    let new_id = rotation["id"].as_str().unwrap_or_default().to_owned();
    app.req(Method::DELETE, &format!("/v1/keys/{new_id}"))
        .send()
        .await?;
    let p = problem(patch(&app, &new_id, body).await?, 409, "conflict").await?;
    assert!(
        p["detail"].as_str().unwrap_or("").contains("revoked"),
        "{p}"
    );
    Ok(())
}

#[tokio::test]
async fn a_revocation_committed_while_a_feed_reader_runs_is_a_removal() -> anyhow::Result<()> {
    use leaky_control_plane::tenancy::feed::{self, KeyChange};
    let app = common::app().await?;
    let path = org_keys(&app).await?;
    let k = issue(&app, &path, json!({ "name": "ci", "tier": "pro" })).await?;
    let id = k["id"].as_str().unwrap_or_default().to_owned();
    // The config server reads the feed in a transaction that may have begun (fixing its `now()`)
    // before a revocation it then sees committed: that key must still come out removed, not as a
    // live key "revoked in the future".
    let mut reader = app.pool.begin().await?;
    sqlx::query("SELECT now()").execute(&mut *reader).await?;
    let res = app
        .req(Method::DELETE, &format!("/v1/keys/{id}"))
        .send()
        .await?;
    assert_eq!(res.status(), 204);
    let changes = feed::key_changes(&mut reader, 0, i64::MAX).await?;
    let removed = matches!(changes.as_slice(), [KeyChange::Remove(r)] if *r == id);
    assert!(removed, "{changes:?}");
    assert!(feed::live_keys(&mut reader).await?.is_empty());
    Ok(())
}
