//! Every state change a context makes through the admin API (or its background jobs) writes its
//! domain event to the outbox in the same transaction (issue 15): tenancy (orgs, users, tiers,
//! keys) on `leaky.tenancy.v1`, config versions and flags on `leaky.config.v1`, the registry on
//! `leaky.registry.v1`, billing on `leaky.billing.v1`, notifications on `leaky.notify.v1`. The relay's delivery of these rows is `outbox.rs`'s subject; here each
//! change's event is checked to exist, with its aggregate and topic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::BTreeSet;

use chrono::Utc;
use leaky_control_plane::registry;
use reqwest::Method;
use serde_json::{json, Value};

/// Sends `body` (if any) with `If-Match: "<version>"` and checks the status.
async fn call(
    app: &common::TestApp,
    method: Method,
    path: &str,
    version: Option<i64>,
    body: Option<Value>,
    want: u16,
) -> Value {
    let mut req = app.req(method.clone(), path);
    if let Some(v) = version {
        req = req.header("if-match", format!("\"{v}\""));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    assert_eq!(status, want, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// `(topic, aggregate_type, aggregate_id, type)` of every outbox event.
async fn events(app: &common::TestApp) -> BTreeSet<(String, String, String, String)> {
    sqlx::query_as("SELECT topic, aggregate_type, aggregate_id, type FROM outbox.events")
        .fetch_all(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test]
async fn every_admin_change_appends_its_domain_event() {
    let app = common::app().await.unwrap();
    let dev = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/dev.yaml");
    let base = serde_json::to_string(&leaky_config::load_merged(&dev).unwrap()).unwrap();
    let res = app
        .req(Method::PUT, "/v1/config/base")
        .header("content-type", "application/yaml")
        .body(base)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let org = app.org("acme").await.unwrap();
    let org_id = org["id"].as_str().unwrap().to_owned();
    let org_path = format!("/v1/orgs/{org_id}");
    call(
        &app,
        Method::PATCH,
        &org_path,
        Some(1),
        Some(json!({"name": "acme2"})),
        200,
    )
    .await;

    let users = format!("{org_path}/users");
    let body = json!({"email": "ada@example.com", "name": "Ada", "roles": ["org-admin"]});
    let user = call(&app, Method::POST, &users, None, Some(body), 201).await;
    let user_path = format!("{users}/{}", user["id"].as_str().unwrap());
    call(
        &app,
        Method::PATCH,
        &user_path,
        Some(1),
        Some(json!({"name": "Ada L"})),
        200,
    )
    .await;
    call(&app, Method::DELETE, &user_path, Some(2), None, 204).await;

    let limits = json!({"limits": {"requests_per_minute": 7}});
    call(
        &app,
        Method::PUT,
        "/v1/tiers/gold",
        None,
        Some(limits.clone()),
        201,
    )
    .await;
    call(
        &app,
        Method::PUT,
        "/v1/tiers/gold",
        Some(1),
        Some(limits),
        200,
    )
    .await;
    call(&app, Method::DELETE, "/v1/tiers/gold", Some(2), None, 204).await;

    let key = json!({"name": "ci", "tier": "free"});
    let key = call(
        &app,
        Method::POST,
        &format!("{org_path}/keys"),
        None,
        Some(key),
        201,
    )
    .await;
    let key_id = key["id"].as_str().unwrap().to_owned();
    let expiry = json!({"expires_at": (Utc::now() + chrono::Duration::days(3)).to_rfc3339()});
    call(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{key_id}"),
        Some(1),
        Some(expiry),
        200,
    )
    .await;

    let flag = json!({"enabled": true});
    call(&app, Method::PUT, "/v1/flags/beta", None, Some(flag), 201).await;
    let over = format!("/v1/flags/beta/orgs/{org_id}");
    call(
        &app,
        Method::PUT,
        &over,
        None,
        Some(json!({"enabled": false})),
        200,
    )
    .await;
    call(&app, Method::DELETE, &over, None, None, 204).await;
    call(&app, Method::DELETE, "/v1/flags/beta", Some(3), None, 204).await;

    let inst = json!({"role": "proxy", "address": "10.0.0.7:8080", "version": "0.4.0"});
    call(
        &app,
        Method::PUT,
        "/v1/registry/instances/p1",
        None,
        Some(inst.clone()),
        201,
    )
    .await;
    call(
        &app,
        Method::DELETE,
        "/v1/registry/instances/p1",
        None,
        None,
        204,
    )
    .await;
    call(
        &app,
        Method::PUT,
        "/v1/registry/instances/p2",
        None,
        Some(inst),
        201,
    )
    .await;
    let later = Utc::now() + chrono::Duration::hours(1);
    assert_eq!(registry::tasks::sweep(&app.pool, later).await.unwrap(), 1);

    // Billing: a purchase and a subscription created (their sagas do not run here), a plan.
    let buy = app
        .req(Method::POST, &format!("{org_path}/purchases"))
        .header("idempotency-key", "k1")
        .json(&json!({"tokens": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(buy.status(), 202);
    let purchase: Value = buy.json().await.unwrap();
    let plan = json!({"tier": "pro", "monthly_tokens": 1000, "price_cents": 500});
    call(
        &app,
        Method::PUT,
        "/v1/plans/starter",
        None,
        Some(plan),
        201,
    )
    .await;
    let sub = app
        .req(Method::POST, &format!("{org_path}/subscription"))
        .header("idempotency-key", "s1")
        .json(&json!({"plan": "starter"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sub.status(), 202);
    let sub: Value = sub.json().await.unwrap();

    // Notifications: an endpoint created and deleted, the org's settings.
    let hooks = format!("{org_path}/webhooks");
    let hook = json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]});
    let hook = call(&app, Method::POST, &hooks, None, Some(hook), 201).await;
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    call(
        &app,
        Method::DELETE,
        &format!("{hooks}/{hook_id}"),
        None,
        None,
        204,
    )
    .await;
    let settings = format!("{org_path}/notification-settings");
    let email = json!({"notify_email": "ops@example.com"});
    call(&app, Method::PUT, &settings, None, Some(email), 200).await;

    let got = events(&app).await;
    let has = |topic: &str, agg: &str, id: &str, kind: &str| {
        let e = (topic.into(), agg.into(), id.into(), kind.into());
        assert!(got.contains(&e), "missing {e:?} in {got:#?}");
    };
    let (t, c, r) = ("leaky.tenancy.v1", "leaky.config.v1", "leaky.registry.v1");
    has(t, "org", &org_id, "org.created");
    has(t, "org", &org_id, "org.updated");
    let user_id = user["id"].as_str().unwrap();
    for kind in ["user.created", "user.updated", "user.deleted"] {
        has(t, "user", user_id, kind);
    }
    for kind in ["tier.created", "tier.updated", "tier.deleted"] {
        has(t, "tier", "gold", kind);
    }
    has(t, "key", &key_id, "key.created");
    has(t, "key", &key_id, "key.updated");
    for kind in [
        "flag.created",
        "flag.override_set",
        "flag.override_removed",
        "flag.deleted",
    ] {
        has(c, "flag", "beta", kind);
    }
    has(c, "config", "config", "config.published");
    has(r, "instance", "p1", "instance.registered");
    has(r, "instance", "p1", "instance.cancelled");
    has(r, "instance", "p2", "instance.expired");
    let (b, n) = ("leaky.billing.v1", "leaky.notify.v1");
    has(
        b,
        "purchase",
        purchase["id"].as_str().unwrap(),
        "purchase.created",
    );
    has(b, "plan", "starter", "plan.put");
    has(
        b,
        "subscription",
        sub["id"].as_str().unwrap(),
        "subscription.created",
    );
    has(n, "webhook", &hook_id, "webhook.created");
    has(n, "webhook", &hook_id, "webhook.deleted");
    has(n, "org", &org_id, "org.notification_settings_changed");
}
