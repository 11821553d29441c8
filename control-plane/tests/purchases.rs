//! The purchase API on a real PostgreSQL: idempotent creation (sequential and concurrent duplicates of
//! one `Idempotency-Key` are one purchase; another body under the key is a conflict; bad input writes
//! nothing), reads, payment webhooks (signature, tolerance, duplicates, the saga woken). And the payment
//! provider's HTTP client against a minimal in-test axum fake — only its request/response mapping;
//! the client against the real payment stub is proven after the merge.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use leaky_control_plane::billing::payments_http::{HttpPayments, HttpPaymentsConfig};
use leaky_control_plane::billing::ports::{Authorize, Payments, PortError};
use leaky_control_plane::billing::webhooks::sign;
use leaky_control_plane::billing::DEV_WEBHOOK_SECRET;
use serde_json::{json, Value};
use uuid::Uuid;

async fn purchase(
    app: &common::TestApp,
    org: &str,
    key: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut req = app.req(reqwest::Method::POST, &format!("/v1/orgs/{org}/purchases"));
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    req.json(&body).send().await.unwrap()
}

async fn count(app: &common::TestApp, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn org_id(app: &common::TestApp) -> String {
    app.org("acme").await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_same_key_is_one_purchase_and_bad_input_writes_nothing() {
    let app = common::app().await.unwrap();
    let org = org_id(&app).await;
    let audit = app.audit_count().await.unwrap();
    let first = purchase(&app, &org, Some("k-1"), json!({"tokens": 3_000_000})).await;
    assert_eq!(first.status(), 202);
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    let first: Value = first.json().await.unwrap();
    assert_eq!(
        (first["status"].as_str(), first["amount"].as_i64()),
        (Some("pending"), Some(600))
    );
    assert_eq!(
        location,
        format!("/v1/purchases/{}", first["id"].as_str().unwrap())
    );
    let again = purchase(&app, &org, Some("k-1"), json!({"tokens": 3_000_000})).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    let other = purchase(&app, &org, Some("k-1"), json!({"tokens": 1})).await;
    common::problem(other, 409, "conflict").await.unwrap();
    let cases = [
        (None, json!({"tokens": 5}), "Idempotency-Key"),
        (Some("k-2"), json!({"tokens": 0}), "tokens"),
        (Some("k-2"), json!({"tokens": 5, "extra": 1}), "extra"),
        (Some("k 2"), json!({"tokens": 5}), "Idempotency-Key"),
    ];
    for (key, body, field) in cases {
        let res = purchase(&app, &org, key, body).await;
        let p = common::problem(res, 422, "validation").await.unwrap();
        assert_eq!(common::fields(&p), [field]);
    }
    let missing = purchase(
        &app,
        &Uuid::new_v4().to_string(),
        Some("k-3"),
        json!({"tokens": 5}),
    )
    .await;
    common::problem(missing, 404, "not-found").await.unwrap();
    assert_eq!(count(&app, "billing.purchases").await, 1);
    assert_eq!(count(&app, "billing.sagas").await, 1);
    assert_eq!(
        app.audit_count().await.unwrap(),
        audit + 1,
        "only the creation is audited"
    );
}

#[tokio::test]
async fn twenty_concurrent_duplicates_make_one_purchase() {
    let app = Arc::new(common::app().await.unwrap());
    let org = org_id(&app).await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (app, org) = (app.clone(), org.clone());
            tokio::spawn(async move {
                let res = purchase(&app, &org, Some("same"), json!({"tokens": 1_000})).await;
                let status = res.status().as_u16();
                let body: Value = res.json().await.unwrap();
                (status, body["id"].as_str().unwrap().to_owned())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert_eq!(
        answers.iter().filter(|a| a.0 == 202).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|a| a.0 == 200).count(),
        19,
        "{answers:?}"
    );
    assert!(answers.iter().all(|a| a.1 == answers[0].1));
    assert_eq!(count(&app, "billing.purchases").await, 1);
}

#[tokio::test]
async fn purchases_read_back_one_by_one_and_by_org_in_pages() {
    let app = common::app().await.unwrap();
    let org = org_id(&app).await;
    let mut ids = Vec::new();
    for key in ["a", "b", "c"] {
        let res = purchase(&app, &org, Some(key), json!({"tokens": 1_000_000})).await;
        ids.push(
            res.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let one: Value = app
        .get(&format!("/v1/purchases/{}", ids[1]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (one["org"].as_str(), one["tokens"].as_i64()),
        (Some(org.as_str()), Some(1_000_000))
    );
    assert_eq!(one["currency"], "usd");
    assert_eq!(one["steps"], json!([]));
    let page: Value = app
        .get(&format!("/v1/orgs/{org}/purchases?limit=2"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[0].as_str(), ids[1].as_str()]);
    let next = page["next"].as_str().unwrap();
    let rest: Value = app
        .get(&format!("/v1/orgs/{org}/purchases?limit=2&after={next}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["items"][0]["id"], ids[2].as_str());
    assert!(rest.get("next").is_none());
    let unknown = app
        .get(&format!("/v1/purchases/{}", Uuid::new_v4()))
        .await
        .unwrap();
    common::problem(unknown, 404, "not-found").await.unwrap();
    let bad = app.get("/v1/purchases/nope").await.unwrap();
    common::problem(bad, 422, "validation").await.unwrap();
    let bad = app.get("/v1/sagas?state=done").await.unwrap();
    assert_eq!(
        common::fields(&common::problem(bad, 422, "validation").await.unwrap()),
        ["state"]
    );
    let sagas: Value = app
        .get("/v1/sagas?state=running")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sagas["items"].as_array().unwrap().len(), 3);
}

async fn webhook(
    app: &common::TestApp,
    signature: Option<String>,
    body: &Value,
) -> reqwest::Response {
    let mut req = app
        .http
        .post(format!("{}/v1/webhooks/payments", app.base))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(s) = signature {
        req = req.header("Stripe-Signature", s);
    }
    req.send().await.unwrap()
}

fn event(id: &str, kind: &str, pi: &str) -> Value {
    json!({"id": id, "type": kind, "data": {"object": {"id": pi, "object": "payment_intent", "status": "requires_capture"}}})
}

#[tokio::test]
async fn webhooks_are_verified_and_recorded_once_and_wake_their_saga() {
    let app = common::app().await.unwrap();
    let org = org_id(&app).await;
    let res = purchase(&app, &org, Some("w"), json!({"tokens": 1_000})).await;
    let id: String = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The saga waits for a retry an hour away, its intent known.
    sqlx::query(
        "UPDATE billing.sagas SET next_run_at = now() + interval '1 hour' WHERE id = $1::uuid",
    )
    .bind(&id)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE billing.purchases SET payment_intent = 'pi_9' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    let e2 = event("evt_2", "payment_intent.succeeded", "pi_9");
    let e1 = event("evt_1", "payment_intent.amount_capturable_updated", "pi_9");
    let bytes = |v: &Value| v.to_string().into_bytes();
    // Out of order, then a duplicate: two records, the duplicate has no effect.
    for (e, duplicate) in [(&e2, false), (&e1, false), (&e2, true)] {
        let res = webhook(&app, Some(sign(DEV_WEBHOOK_SECRET, now, &bytes(e))), e).await;
        assert_eq!(res.status(), 200);
        let got: Value = res.json().await.unwrap();
        assert_eq!(got["duplicate"], duplicate, "{got}");
        if !duplicate {
            assert_eq!(got["purchase"], id.as_str());
        }
    }
    assert_eq!(count(&app, "billing.processed_webhooks").await, 2);
    let woken: bool =
        sqlx::query_scalar("SELECT next_run_at <= now() FROM billing.sagas WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(woken, "the webhook made the saga due");
    let e3 = event("evt_3", "payment_intent.canceled", "pi_9");
    let rejected = [
        None,
        Some(sign("whsec_other", now, &bytes(&e3))),
        Some(sign(DEV_WEBHOOK_SECRET, now - 301, &bytes(&e3))),
        Some(sign(DEV_WEBHOOK_SECRET, now, b"{}")),
    ];
    for signature in rejected {
        let res = webhook(&app, signature, &e3).await;
        common::problem(res, 400, "invalid-signature")
            .await
            .unwrap();
    }
    let plain = app
        .http
        .post(format!("{}/v1/webhooks/payments", app.base))
        .header("content-type", "text/plain")
        .header(
            "Stripe-Signature",
            sign(DEV_WEBHOOK_SECRET, now, &bytes(&e3)),
        )
        .body(e3.to_string())
        .send()
        .await
        .unwrap();
    common::problem(plain, 415, "unsupported-media-type")
        .await
        .unwrap();
    assert_eq!(count(&app, "billing.processed_webhooks").await, 2);
}

/// What the fake provider saw.
#[derive(Default)]
struct Seen {
    requests: Vec<(String, Option<String>, Option<String>, Value)>,
}

fn intent(id: &str, status: &str) -> Value {
    json!({"id": id, "object": "payment_intent", "amount": 200, "currency": "usd", "status": status,
           "amount_capturable": 200, "amount_received": 0, "amount_refunded": 0, "metadata": {}, "created": 1})
}

fn unexpected(status: &str) -> impl IntoResponse {
    let error = json!({"error": {"type": "invalid_request_error", "code": "payment_intent_unexpected_state",
                                 "payment_intent": intent("pi_1", status)}});
    (StatusCode::BAD_REQUEST, Json(error))
}

/// A minimal fake of the provider's HTTP API, answering per intent id: `pi_ok` fine, `pi_captured`
/// already captured, `pi_5xx` 500, `pi_slow` too slow. Authorize declines amount 402.
fn fake_provider(seen: Arc<Mutex<Seen>>) -> Router {
    let record = move |path: String, h: &HeaderMap, body: Value| {
        let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        seen.lock().unwrap().requests.push((
            path,
            header("idempotency-key"),
            header("authorization"),
            body,
        ));
    };
    let r1 = record.clone();
    let r2 = record.clone();
    Router::new()
        .route(
            "/v1/payment_intents",
            post(move |h: HeaderMap, Json(body): Json<Value>| async move {
                r1("/v1/payment_intents".into(), &h, body.clone());
                if body["amount"] == 402 {
                    let error = json!({"error": {"type": "card_error", "code": "card_declined",
                        "decline_code": "insufficient_funds",
                        "payment_intent": intent("pi_declined", "requires_payment_method")}});
                    return (StatusCode::PAYMENT_REQUIRED, Json(error)).into_response();
                }
                Json(intent("pi_ok", "requires_capture")).into_response()
            }),
        )
        .route(
            "/v1/payment_intents/{id}/{action}",
            post(
                move |Path((id, action)): Path<(String, String)>, h: HeaderMap| async move {
                    r2(format!("/{id}/{action}"), &h, Value::Null);
                    match (id.as_str(), action.as_str()) {
                        ("pi_5xx", _) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                        ("pi_slow", _) => {
                            tokio::time::sleep(StdDuration::from_secs(5)).await;
                            Json(intent(&id, "succeeded")).into_response()
                        }
                        ("pi_captured", _) => unexpected("succeeded").into_response(),
                        (_, "capture") => Json(intent(&id, "succeeded")).into_response(),
                        _ => Json(intent(&id, "canceled")).into_response(),
                    }
                },
            ),
        )
        .route(
            "/v1/payment_intents/{id}",
            get(|Path(id): Path<String>| async move { Json(intent(&id, "requires_capture")) }),
        )
        .route(
            "/v1/refunds",
            post(|| async {
                Json(json!({"id": "re_1", "object": "refund", "status": "succeeded"}))
            }),
        )
}

#[tokio::test]
async fn the_http_client_maps_the_providers_answers() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let served = axum::serve(listener, fake_provider(seen.clone()));
    tokio::spawn(async move { served.await });
    let config = HttpPaymentsConfig {
        base_url: base,
        api_key: "sk_test_1".into(),
        timeout: StdDuration::from_millis(300),
    };
    let client = HttpPayments::new(config).unwrap();
    let req = |amount| Authorize {
        amount_cents: amount,
        currency: "usd".into(),
        idempotency_key: "purchase:1:authorize".into(),
        purchase_id: Uuid::nil(),
        org_id: Uuid::nil(),
    };
    let pi = client.authorize(&req(200)).await.unwrap();
    assert_eq!(
        (pi.id.as_str(), pi.status.as_str()),
        ("pi_ok", "requires_capture")
    );
    let (path, key, auth, body) = seen.lock().unwrap().requests[0].clone();
    assert_eq!(path, "/v1/payment_intents");
    assert_eq!(
        (key.as_deref(), auth.as_deref()),
        (Some("purchase:1:authorize"), Some("Bearer sk_test_1"))
    );
    assert_eq!(
        (body["capture_method"].as_str(), body["confirm"].as_bool()),
        (Some("manual"), Some(true))
    );
    let declined = client.authorize(&req(402)).await.unwrap_err();
    let expected = PortError::Declined {
        code: "insufficient_funds".into(),
        payment_intent: Some("pi_declined".into()),
    };
    assert_eq!(declined, expected);
    assert_eq!(
        client.capture("pi_ok", "k").await.unwrap().status,
        "succeeded"
    );
    assert_eq!(
        client.capture("pi_captured", "k").await.unwrap().status,
        "succeeded",
        "already captured is success"
    );
    assert!(matches!(
        client.cancel("pi_captured", "k").await,
        Err(PortError::Permanent(_))
    ));
    assert_eq!(
        client.cancel("pi_ok", "k").await.unwrap().status,
        "canceled"
    );
    assert!(matches!(
        client.capture("pi_5xx", "k").await,
        Err(PortError::Transient(_))
    ));
    assert!(
        matches!(
            client.capture("pi_slow", "k").await,
            Err(PortError::Transient(_))
        ),
        "a timeout is transient"
    );
    client.refund("pi_ok", "k").await.unwrap();
    assert_eq!(
        client.get("pi_ok").await.unwrap().status,
        "requires_capture"
    );
    let down = HttpPayments::new(HttpPaymentsConfig {
        base_url: "http://127.0.0.1:1".into(),
        api_key: "sk_test_1".into(),
        timeout: StdDuration::from_millis(300),
    })
    .unwrap();
    assert!(matches!(
        down.get("pi_ok").await,
        Err(PortError::Transient(_))
    ));
}
