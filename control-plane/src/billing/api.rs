//! Admin routes of the billing context: purchases, sagas, payment webhooks. Handlers extract, call
//! [`super::store`] / [`super::webhooks`] and shape the response.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::OpenApi;

use super::saga::SagaState;
use super::store::{self, NewPurchase, Purchase, SagaView};
use super::webhooks::{self, Received};
use super::Settings;
use crate::apidoc::problems;
use crate::http::{
    parse_id, ApiJson, ApiQuery, ApiState, Page, PageQuery, Principal, Problem, ProblemKind,
    MAX_BODY_BYTES,
};

/// `POST /v1/orgs/{org}/purchases` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PurchaseBody {
    /// Tokens to buy, 1..=10^12; the amount is tokens × the configured price per million, rounded up.
    tokens: i64,
}

/// `?state=&limit=&after=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SagasQuery {
    /// Only sagas in this state: `running`, `compensating`, `completed`, `compensated`, `needs_attention`.
    state: Option<String>,
    /// Page size, 1..=100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The `next` cursor of the previous page.
    #[param(format = Uuid)]
    after: Option<String>,
}

const AT: &str = "2026-01-15T09:30:00Z";
const ID: &str = "7d444840-9dc0-11d1-b245-5ffdce74fad2";
const ORG: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

fn example_steps() -> Value {
    json!([
        {"seq": 1, "step": "authorize", "direction": "forward", "status": "succeeded", "attempt": 1,
         "detail": {"payment_intent": "pi_3MtwBwLkdIwHu7ix", "status": "requires_capture", "amount": 200}, "at": AT},
        {"seq": 2, "step": "credit", "direction": "forward", "status": "succeeded", "attempt": 1,
         "detail": {"tokens": 1_000_000, "expires_at": "2027-01-15T09:30:00Z"}, "at": AT},
        {"seq": 3, "step": "raise_balance", "direction": "forward", "status": "succeeded", "attempt": 1,
         "detail": {"credited": 1_000_000, "version": 7, "applied": true}, "at": AT},
        {"seq": 4, "step": "capture", "direction": "forward", "status": "succeeded", "attempt": 1,
         "detail": {"payment_intent": "pi_3MtwBwLkdIwHu7ix", "status": "succeeded"}, "at": AT}
    ])
}

fn example_purchase(status: &str) -> Value {
    let steps = if status == "pending" {
        json!([])
    } else {
        example_steps()
    };
    json!({"id": ID, "org": ORG, "tokens": 1_000_000, "amount": 200, "currency": "usd", "status": status,
           "payment_intent": if status == "pending" { Value::Null } else { json!("pi_3MtwBwLkdIwHu7ix") },
           "steps": steps, "created_at": AT, "updated_at": AT})
}

fn example_saga() -> Value {
    json!({"id": ID, "kind": "purchase", "org": ORG, "state": "completed", "step": "capture", "attempts": 1,
           "next_run_at": AT, "deadline": "2026-01-15T10:30:00Z", "reason": null, "needs_attention_reason": null,
           "steps": example_steps(), "created_at": AT, "updated_at": AT})
}

#[utoipa::path(
    post, path = "/v1/orgs/{org}/purchases", tag = "billing", operation_id = "create_purchase",
    params(
        ("org" = uuid::Uuid, Path, description = "The org's id"),
        ("Idempotency-Key" = String, Header, description = "Required, 1..=255 visible ASCII characters. \
          The same key with the same body returns the same purchase (200); with another body, 409."),
    ),
    request_body(content = PurchaseBody, example = json!({"tokens": 1_000_000})),
    responses(
        (status = 202, description = "Accepted: the purchase saga runs in the background; poll `Location`",
         body = Purchase, headers(("Location" = String, description = "The purchase's URL")),
         example = json!(example_purchase("pending"))),
        (status = 200, description = "A replay of the same key and body: the purchase made the first time",
         body = Purchase, headers(("Idempotent-Replayed" = String, description = "`true`")),
         example = json!(example_purchase("completed"))),
        (status = 400, response = problems::MalformedJson),
        (status = 404, response = problems::NotFound),
        (status = 409, response = problems::Conflict),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Buy tokens for an org.
async fn create(
    p: Principal,
    State(s): State<ApiState>,
    Extension(settings): Extension<Arc<Settings>>,
    Path(org): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PurchaseBody>,
) -> Result<(StatusCode, HeaderMap, Json<Purchase>), Problem> {
    let org = parse_id("org", &org)?;
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .unwrap_or("");
    let req = NewPurchase {
        org,
        tokens: body.tokens,
        idempotency_key: key,
        actor: &p.subject,
    };
    let (purchase, created) = store::create(&s.pool, s.clock.now(), &settings, &req).await?;
    if created {
        // The creating transaction also sent `pg_notify` (other replicas); this is the local shortcut.
        s.saga_wake.notify_one();
    }
    let mut out = HeaderMap::new();
    if let Ok(l) = HeaderValue::from_str(&format!("/v1/purchases/{}", purchase.id)) {
        out.insert(header::LOCATION, l);
    }
    if created {
        Ok((StatusCode::ACCEPTED, out, Json(purchase)))
    } else {
        out.insert("idempotent-replayed", HeaderValue::from_static("true"));
        Ok((StatusCode::OK, out, Json(purchase)))
    }
}

#[utoipa::path(
    get, path = "/v1/orgs/{org}/purchases", tag = "billing", operation_id = "list_purchases",
    params(("org" = uuid::Uuid, Path, description = "The org's id"), PageQuery),
    responses(
        (status = 200, description = "The org's purchases, oldest first, with their step history", body = Page<Purchase>,
         example = json!({"items": [example_purchase("completed")], "next": ID})),
        (status = 422, response = problems::Validation),
    )
)]
/// List an org's purchases.
async fn list(
    _: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<Purchase>>, Problem> {
    let org = parse_id("org", &org)?;
    let (limit, after) = PageQuery::resolve(q.limit, q.after.as_deref())?;
    store::list(&s.pool, org, limit, after).await.map(Json)
}

#[utoipa::path(
    get, path = "/v1/purchases/{id}", tag = "billing", operation_id = "show_purchase",
    params(("id" = uuid::Uuid, Path, description = "The purchase's id")),
    responses(
        (status = 200, description = "The purchase: `pending` while its saga runs, then `completed`, `compensated` \
          (with the `reason`) or `needs_attention`", body = Purchase, example = json!(example_purchase("completed"))),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Show a purchase with its step history.
async fn show(
    _: Principal,
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Purchase>, Problem> {
    store::get(&s.pool, parse_id("id", &id)?).await.map(Json)
}

#[utoipa::path(
    get, path = "/v1/sagas", tag = "billing", operation_id = "list_sagas", params(SagasQuery),
    responses(
        (status = 200, description = "Sagas, oldest first, with their step history (operators: filter `state=needs_attention`)",
         body = Page<SagaView>, example = json!({"items": [example_saga()]})),
        (status = 422, response = problems::Validation),
    )
)]
/// List sagas.
async fn sagas(
    _: Principal,
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<SagasQuery>,
) -> Result<Json<Page<SagaView>>, Problem> {
    let state = match q.state.as_deref() {
        None => None,
        Some(raw) => Some(SagaState::parse(raw).ok_or_else(|| {
            Problem::field(
                "state",
                "must be running, compensating, completed, compensated or needs_attention",
            )
        })?),
    };
    let (limit, after) = PageQuery::resolve(q.limit, q.after.as_deref())?;
    store::list_sagas(&s.pool, state, limit, after)
        .await
        .map(Json)
}

#[utoipa::path(
    post, path = "/v1/webhooks/payments", tag = "billing", operation_id = "payment_webhook", security(()),
    params(("Stripe-Signature" = String, Header, description = "`t=<unix>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">`; \
             the secret is `LEAKY_PAYMENTS_WEBHOOK_SECRET`, `t` within 300 s of now")),
    request_body(content = Object, example = json!({"id": "evt_1NG8Du2eZvKYlo2C", "type": "payment_intent.succeeded",
        "data": {"object": {"id": "pi_3MtwBwLkdIwHu7ix", "object": "payment_intent", "status": "succeeded"}}})),
    responses(
        (status = 200, description = "Recorded (once per event id); the purchase's saga re-checks the intent",
         body = Received, example = json!({"id": "evt_1NG8Du2eZvKYlo2C", "duplicate": false, "purchase": ID})),
        (status = 400, response = problems::InvalidSignature),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Receive a payment provider webhook (signed; no admin token).
async fn webhook(
    State(s): State<ApiState>,
    Extension(settings): Extension<Arc<Settings>>,
    request: Request,
) -> Result<Json<Received>, Problem> {
    let headers = request.headers();
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("application/json"));
    if !json {
        let detail = "the body must be application/json";
        return Err(Problem::new(ProblemKind::UnsupportedMediaType, detail));
    }
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The signature covers the exact bytes, so they are read raw, not through a JSON extractor.
    let body = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            let detail = format!("the body exceeds {MAX_BODY_BYTES} bytes");
            Problem::new(ProblemKind::PayloadTooLarge, detail)
        })?;
    let now = s.clock.now();
    let received = webhooks::receive(&s.pool, now, &settings, signature.as_deref(), &body).await?;
    if received.purchase.is_some() {
        s.saga_wake.notify_one();
    }
    Ok(Json(received))
}

#[derive(OpenApi)]
#[openapi(paths(create, list, show, sagas, webhook))]
struct Doc;

/// The OpenAPI paths of the billing routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// The billing routes (mounted under `/v1`), reading `settings`.
pub fn routes(settings: Arc<Settings>) -> Router<ApiState> {
    Router::new()
        .route("/orgs/{org}/purchases", post(create).get(list))
        .route("/purchases/{id}", get(show))
        .route("/sagas", get(sagas))
        .route("/webhooks/payments", post(webhook))
        .layer(Extension(settings))
}
