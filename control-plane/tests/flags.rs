//! Feature flags through the admin API over a real socket and a real PostgreSQL: CRUD with
//! ETag/If-Match, per-org overrides, evaluation (the proxies' own code), bad input refused with
//! nothing written, the config server's wake-up, and the snapshot the config server pushes.

use crate::common;

use std::time::Duration;

use crate::common::{fields, problem, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

async fn put_flag(
    app: &TestApp,
    name: &str,
    body: Value,
    if_match: Option<&str>,
) -> anyhow::Result<reqwest::Response> {
    let mut r = app
        .req(Method::PUT, &format!("/v1/flags/{name}"))
        .json(&body);
    if let Some(m) = if_match {
        r = r.header("if-match", m);
    }
    Ok(r.send().await?)
}

async fn flag_count(app: &TestApp) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM flags.flags) + (SELECT count(*) FROM flags.org_overrides)",
    )
    .fetch_one(&app.pool)
    .await?)
}

fn etag(res: &reqwest::Response) -> String {
    res.headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn flag_crud_with_etag_if_match_and_audit() -> anyhow::Result<()> {
    let app = common::app().await?;
    let body = json!({"enabled": true, "rollout_percent": 50, "description": "checkout v2"});
    let res = put_flag(&app, "checkout-v2", body.clone(), None).await?;
    assert_eq!(res.status(), 201);
    assert_eq!(etag(&res), "\"1\"");
    assert_eq!(res.headers()["location"], "/v1/flags/checkout-v2");
    let flag: Value = res.json().await?;
    assert_eq!(flag["rollout_percent"], 50);
    assert_eq!(flag["orgs"], json!({}));

    let res = app.get("/v1/flags/checkout-v2").await?;
    assert_eq!(
        (res.status().as_u16(), etag(&res)),
        (200, "\"1\"".to_owned())
    );

    // Replacing needs If-Match: 428 without, 200 with the current ETag, 412 with a stale one.
    let off = json!({"enabled": false});
    problem(
        put_flag(&app, "checkout-v2", off.clone(), None).await?,
        428,
        "precondition-required",
    )
    .await?;
    let res = put_flag(&app, "checkout-v2", off.clone(), Some("\"1\"")).await?;
    assert_eq!(
        (res.status().as_u16(), etag(&res)),
        (200, "\"2\"".to_owned())
    );
    let flag: Value = res.json().await?;
    assert_eq!(
        (flag["enabled"].clone(), flag["rollout_percent"].clone()),
        (json!(false), json!(100))
    );
    problem(
        put_flag(&app, "checkout-v2", body.clone(), Some("\"1\"")).await?,
        412,
        "precondition-failed",
    )
    .await?;
    // If-Match on a flag that does not exist can never match.
    problem(
        put_flag(&app, "nope", body.clone(), Some("\"1\"")).await?,
        412,
        "precondition-failed",
    )
    .await?;

    // Two writers from the same version: exactly one wins, the other gets 412 (no lost update).
    let (a, b) = tokio::join!(
        put_flag(
            &app,
            "checkout-v2",
            json!({"enabled": true, "rollout_percent": 10}),
            Some("\"2\"")
        ),
        put_flag(
            &app,
            "checkout-v2",
            json!({"enabled": true, "rollout_percent": 20}),
            Some("\"2\"")
        ),
    );
    let mut statuses = [a?.status().as_u16(), b?.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412]);

    let list: Value = app.get("/v1/flags").await?.json().await?;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["items"][0]["version"], 3);

    // Deleting needs If-Match too.
    let delete = |m: Option<&'static str>| {
        let mut r = app.req(Method::DELETE, "/v1/flags/checkout-v2");
        if let Some(m) = m {
            r = r.header("if-match", m);
        }
        r.send()
    };
    problem(delete(None).await?, 428, "precondition-required").await?;
    problem(delete(Some("\"2\"")).await?, 412, "precondition-failed").await?;
    assert_eq!(delete(Some("\"3\"")).await?.status(), 204);
    problem(app.get("/v1/flags/checkout-v2").await?, 404, "not-found").await?;
    problem(delete(Some("\"3\"")).await?, 404, "not-found").await?;

    let events: Value = app
        .get("/v1/audit?object=checkout-v2")
        .await?
        .json()
        .await?;
    let actions: Vec<&str> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["flag.create", "flag.update", "flag.update", "flag.delete"]
    );
    assert_eq!(events["items"][0]["object_kind"], "flag");
    assert_eq!(flag_count(&app).await?, 0);
    Ok(())
}

async fn evaluate(app: &TestApp, path: &str) -> anyhow::Result<Value> {
    let res = app.get(path).await?;
    assert_eq!(res.status(), 200, "{path}");
    Ok(res.json().await?)
}

#[tokio::test]
async fn overrides_and_evaluation_follow_the_proxies_rules() -> anyhow::Result<()> {
    let app = common::app().await?;
    let on = json!({"enabled": true});
    assert_eq!(
        put_flag(&app, "stream_usage_injection", on, None)
            .await?
            .status(),
        201
    );
    let e = evaluate(&app, "/v1/flags/stream_usage_injection/evaluate?org=acme").await?;
    assert_eq!(
        (e["on"].clone(), e["reason"].clone()),
        (json!(true), json!("in-rollout"))
    );

    // An override by org name (any name tenancy accepts, URL-encoded), bumping the flag's ETag.
    let path = "/v1/flags/stream_usage_injection/orgs/Acme%20Corp";
    let res = app
        .req(Method::PUT, path)
        .json(&json!({"enabled": false}))
        .send()
        .await?;
    assert_eq!(
        (res.status().as_u16(), etag(&res)),
        (200, "\"2\"".to_owned())
    );
    let flag: Value = res.json().await?;
    assert_eq!(flag["orgs"], json!({"Acme Corp": false}));
    let e = evaluate(
        &app,
        "/v1/flags/stream_usage_injection/evaluate?org=Acme%20Corp",
    )
    .await?;
    assert_eq!(
        (e["on"].clone(), e["reason"].clone()),
        (json!(false), json!("override"))
    );
    assert_eq!(e["version"], 2);
    let e = evaluate(&app, "/v1/flags/stream_usage_injection/evaluate?org=globex").await?;
    assert_eq!(e["on"], true);

    // A stale If-Match on an override is refused; a current one is honoured.
    let res = app
        .req(Method::PUT, path)
        .header("if-match", "\"1\"")
        .json(&json!({"enabled": true}))
        .send()
        .await?;
    problem(res, 412, "precondition-failed").await?;
    // Removing it: 204 with the new ETag, then again (idempotent, nothing changes).
    let res = app
        .req(Method::DELETE, path)
        .header("if-match", "\"2\"")
        .send()
        .await?;
    assert_eq!(
        (res.status().as_u16(), etag(&res)),
        (204, "\"3\"".to_owned())
    );
    let res = app.req(Method::DELETE, path).send().await?;
    assert_eq!(
        (res.status().as_u16(), etag(&res)),
        (204, "\"3\"".to_owned())
    );
    let e = evaluate(
        &app,
        "/v1/flags/stream_usage_injection/evaluate?org=Acme%20Corp",
    )
    .await?;
    assert_eq!(e["reason"], "in-rollout");

    // A partial rollout: the bucket is the documented one (the proxies compute the same).
    let res = put_flag(
        &app,
        "stream_usage_injection",
        json!({"enabled": true, "rollout_percent": 84}),
        Some("\"3\""),
    )
    .await?;
    assert_eq!(res.status(), 200);
    let globex = evaluate(&app, "/v1/flags/stream_usage_injection/evaluate?org=globex").await?;
    assert_eq!(globex["bucket"], 84);
    assert_eq!(
        globex["bucket"],
        leaky_config::model::flags::bucket("stream_usage_injection", "globex")
    );
    assert_eq!(
        (globex["on"].clone(), globex["reason"].clone()),
        (json!(false), json!("out-of-rollout"))
    );
    let acme = evaluate(&app, "/v1/flags/stream_usage_injection/evaluate?org=acme").await?;
    assert_eq!(
        (acme["on"].clone(), acme["bucket"].clone()),
        (json!(true), json!(58))
    );
    let none = evaluate(&app, "/v1/flags/stream_usage_injection/evaluate").await?;
    assert_eq!(
        (none["on"].clone(), none["reason"].clone()),
        (json!(false), json!("no-org"))
    );

    // Overrides need the flag; a flag the gateway reads but nobody stored answers its default.
    let res = app
        .req(Method::PUT, "/v1/flags/nope/orgs/acme")
        .json(&json!({"enabled": true}))
        .send()
        .await?;
    problem(res, 404, "not-found").await?;
    problem(
        app.get("/v1/flags/nope/evaluate?org=acme").await?,
        404,
        "not-found",
    )
    .await?;
    let res = app
        .req(Method::DELETE, "/v1/flags/stream_usage_injection")
        .header("if-match", "\"4\"")
        .send()
        .await?;
    assert_eq!(res.status(), 204);
    let e = evaluate(&app, "/v1/flags/stream_usage_injection/evaluate?org=acme").await?;
    assert_eq!(
        (e["on"].clone(), e["reason"].clone(), e["version"].clone()),
        (json!(true), json!("default"), Value::Null)
    );

    let events: Value = app
        .get("/v1/audit?object=stream_usage_injection")
        .await?
        .json()
        .await?;
    let actions: Vec<&str> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "flag.create",
            "flag.override.set",
            "flag.override.remove",
            "flag.update",
            "flag.delete"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn bad_input_is_a_problem_naming_the_field_and_writes_nothing() -> anyhow::Result<()> {
    let app = common::app().await?;
    assert_eq!(
        put_flag(&app, "checkout", json!({"enabled": true}), None)
            .await?
            .status(),
        201
    );
    let (audits, flags) = (app.audit_count().await?, flag_count(&app).await?);

    let cases: [(&str, Value, &[&str]); 6] = [
        ("Bad.Name", json!({"enabled": true}), &["name"]),
        (
            "fresh",
            json!({"enabled": true, "rollout_percent": 101}),
            &["rollout_percent"],
        ),
        (
            "fresh",
            json!({"enabled": true, "rollout_percent": -1}),
            &["rollout_percent"],
        ),
        (
            "fresh",
            json!({"enabled": true, "description": "x".repeat(501)}),
            &["description"],
        ),
        (
            "fresh",
            json!({"enabled": true, "orgs": {"acme": true}}),
            &["orgs"],
        ),
        ("fresh", json!({"rollout_percent": 5}), &["enabled"]),
    ];
    for (name, body, expected) in cases {
        let p = problem(
            put_flag(&app, name, body.clone(), None).await?,
            422,
            "validation",
        )
        .await?;
        assert_eq!(fields(&p), expected, "{name} {body}");
    }
    let res = app
        .req(Method::PUT, "/v1/flags/fresh")
        .header("content-type", "application/json")
        .body("{\"enabled\": tr")
        .send()
        .await?;
    problem(res, 400, "malformed-json").await?;
    let res = app
        .req(Method::PUT, "/v1/flags/fresh")
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await?;
    problem(res, 415, "unsupported-media-type").await?;
    let res = app
        .req(Method::PUT, "/v1/flags/checkout/orgs/%20acme")
        .json(&json!({"enabled": true}))
        .send()
        .await?;
    assert_eq!(fields(&problem(res, 422, "validation").await?), ["org"]);
    let res = app
        .req(Method::PUT, "/v1/flags/checkout/orgs/acme")
        .json(&json!({"enabled": "yes"}))
        .send()
        .await?;
    assert_eq!(fields(&problem(res, 422, "validation").await?), ["enabled"]);
    let res = app
        .req(Method::PUT, "/v1/flags/checkout")
        .header("if-match", "\"abc\"")
        .json(&json!({"enabled": false}))
        .send()
        .await?;
    problem(res, 412, "precondition-failed").await?;
    let p = problem(
        app.get("/v1/flags/checkout/evaluate?org=a%0Ab").await?,
        422,
        "validation",
    )
    .await?;
    assert_eq!(fields(&p), ["org"]);
    let p = problem(
        app.get("/v1/flags/checkout/evaluate?team=a").await?,
        422,
        "validation",
    )
    .await?;
    assert!(!fields(&p).is_empty());

    assert_eq!(
        app.audit_count().await?,
        audits,
        "a refused request is not audited"
    );
    assert_eq!(
        flag_count(&app).await?,
        flags,
        "a refused request writes nothing"
    );
    let flag: Value = app.get("/v1/flags/checkout").await?.json().await?;
    assert_eq!(
        (flag["version"].clone(), flag["enabled"].clone()),
        (json!(1), json!(true))
    );
    Ok(())
}

#[tokio::test]
async fn every_change_wakes_the_config_server_and_the_snapshot_loads_as_config(
) -> anyhow::Result<()> {
    let app = common::app().await?;
    let mut listener = sqlx::postgres::PgListener::connect(&app.db_url).await?;
    listener
        .listen(leaky_control_plane::flags::CONFIG_CHANNEL)
        .await?;

    let body = json!({"enabled": true, "rollout_percent": 30, "description": "rolling out"});
    assert_eq!(
        put_flag(&app, "stream_usage_injection", body, None)
            .await?
            .status(),
        201
    );
    assert_eq!(next(&mut listener).await?.payload(), "flags");
    let res = app
        .req(Method::PUT, "/v1/flags/stream_usage_injection/orgs/acme")
        .json(&json!({"enabled": false}))
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    assert_eq!(next(&mut listener).await?.payload(), "flags");

    // The config server's view: the YAML schema's type, straight into a document the proxies load.
    let snapshot = leaky_control_plane::flags::snapshot(&app.pool).await?;
    let spec = &snapshot["stream_usage_injection"];
    assert_eq!((spec.enabled, spec.rollout_percent), (true, 30));
    assert_eq!(spec.orgs.get("acme"), Some(&false));
    let document = serde_json::to_string(&json!({ "flags": snapshot }))?;
    let config = leaky_config::load_text(
        std::path::Path::new("pushed"),
        &document,
        std::path::Path::new("."),
        &|_| None,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let flag = config
        .flags
        .get("stream_usage_injection")
        .ok_or_else(|| anyhow::anyhow!("no flag"))?;
    for org in ["acme", "globex", "initech", "umbrella"] {
        let path = format!("/v1/flags/stream_usage_injection/evaluate?org={org}");
        let api = evaluate(&app, &path).await?;
        assert_eq!(
            api["on"],
            flag.is_on(Some(org)),
            "{org}: the API and a proxy disagree"
        );
    }
    Ok(())
}

/// The next notification on `listener`, failing after 10 s.
async fn next(
    listener: &mut sqlx::postgres::PgListener,
) -> anyhow::Result<sqlx::postgres::PgNotification> {
    Ok(tokio::time::timeout(Duration::from_secs(10), listener.recv()).await??)
}
