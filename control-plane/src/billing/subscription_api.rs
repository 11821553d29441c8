//! Admin routes of plans and subscriptions: `PUT/GET /v1/plans/{name}`, `GET /v1/plans`,
//! `POST/PATCH/DELETE/GET /v1/orgs/{org}/subscription`. Handlers extract, call
//! [`super::subscription_store`] and shape the response.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::OpenApi;

use super::subscription_store::{self as store, NewSubscription, Plan, PlanBody, Subscription};
use super::Settings;
use crate::apidoc::problems;
use crate::http::{parse_id, ApiJson, ApiState, Principal, Problem};

/// The body of subscribe and plan change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PlanChoice {
    /// The plan's name.
    plan: String,
}

/// `GET /v1/plans`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Plans {
    items: Vec<Plan>,
}

const AT: &str = "2026-01-15T09:30:00Z";
const ORG: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

fn example_plan() -> Value {
    json!({"name": "pro-monthly", "tier": "pro", "monthly_tokens": 10_000_000, "price_cents": 2000,
           "currency": "usd", "created_at": AT, "updated_at": AT})
}

fn example_subscription(state: &str) -> Value {
    let active = state != "pending";
    json!({"id": "7d444840-9dc0-11d1-b245-5ffdce74fad2", "org": ORG, "state": state, "plan": "pro-monthly",
           "pending_plan": null, "cancel_at_period_end": false, "period": if active { 1 } else { 0 },
           "current_period_start": if active { json!(AT) } else { Value::Null },
           "current_period_end": if active { json!("2026-02-15T09:30:00Z") } else { Value::Null },
           "saga": if active { Value::Null } else { json!("9b2e1c9e-3a8b-4c55-a3f1-6d1f5a0c2b7e") },
           "renewal_failures": 0,
           "history": [{"seq": 1, "event": "subscribed", "detail": {"org": ORG, "plan": "pro-monthly"}, "at": AT}],
           "created_at": AT, "updated_at": AT})
}

#[utoipa::path(
    put, path = "/v1/plans/{name}", tag = "billing", operation_id = "put_plan",
    params(("name" = String, Path, description = "The plan's name: 1..=64 of a-z, 0-9, -, _")),
    request_body(content = PlanBody, example = json!({"tier": "pro", "monthly_tokens": 10_000_000, "price_cents": 2000})),
    responses(
        (status = 201, description = "Created", body = Plan, example = json!(example_plan())),
        (status = 200, description = "Replaced", body = Plan, example = json!(example_plan())),
        (status = 400, response = problems::MalformedJson),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Create or replace a plan (its tier must exist). Changes apply to later charges.
async fn put_plan(
    p: Principal,
    State(s): State<ApiState>,
    Extension(settings): Extension<Arc<Settings>>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PlanBody>,
) -> Result<(StatusCode, Json<Plan>), Problem> {
    let now = s.clock.now();
    let (plan, created) =
        store::put_plan(&s.pool, now, &p.subject, &name, &body, &settings).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(plan)))
}

#[utoipa::path(
    get, path = "/v1/plans/{name}", tag = "billing", operation_id = "get_plan",
    params(("name" = String, Path, description = "The plan's name")),
    responses(
        (status = 200, description = "The plan", body = Plan, example = json!(example_plan())),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// One plan.
async fn get_plan(
    _p: Principal,
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Plan>, Problem> {
    let mut conn = s.pool.acquire().await?;
    store::plan(&mut conn, &name)
        .await?
        .map(Json)
        .ok_or_else(|| {
            Problem::new(
                crate::http::ProblemKind::NotFound,
                format!("no plan `{name}`"),
            )
        })
}

#[utoipa::path(
    get, path = "/v1/plans", tag = "billing", operation_id = "list_plans",
    responses((status = 200, description = "Every plan, by name", body = Plans,
               example = json!({"items": [example_plan()]})))
)]
/// Every plan.
async fn list_plans(_p: Principal, State(s): State<ApiState>) -> Result<Json<Plans>, Problem> {
    Ok(Json(Plans {
        items: store::plans(&s.pool).await?,
    }))
}

#[utoipa::path(
    post, path = "/v1/orgs/{org}/subscription", tag = "billing", operation_id = "subscribe",
    params(
        ("org" = uuid::Uuid, Path, description = "The org's id"),
        ("Idempotency-Key" = String, Header, description = "Required, 1..=255 visible ASCII characters. \
          The same key with the same body returns the same subscription (200); with another body, 409."),
    ),
    request_body(content = PlanChoice, example = json!({"plan": "pro-monthly"})),
    responses(
        (status = 202, description = "Accepted: the subscribe saga (charge, grant, tier) runs in the background",
         body = Subscription, example = json!(example_subscription("pending"))),
        (status = 200, description = "A replay of the same key and body",
         body = Subscription, headers(("Idempotent-Replayed" = String, description = "`true`")),
         example = json!(example_subscription("active"))),
        (status = 400, response = problems::MalformedJson),
        (status = 404, response = problems::NotFound),
        (status = 409, response = problems::Conflict),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Subscribe an org to a plan.
async fn subscribe(
    p: Principal,
    State(s): State<ApiState>,
    Extension(settings): Extension<Arc<Settings>>,
    Path(org): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PlanChoice>,
) -> Result<(StatusCode, HeaderMap, Json<Subscription>), Problem> {
    let org = parse_id("org", &org)?;
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .unwrap_or("");
    let req = NewSubscription {
        org,
        plan: &body.plan,
        idempotency_key: key,
        actor: &p.subject,
    };
    let (sub, created) = store::subscribe(&s.pool, s.clock.now(), &settings, &req).await?;
    let mut out = HeaderMap::new();
    if created {
        s.saga_wake.notify_one();
        return Ok((StatusCode::ACCEPTED, out, Json(sub)));
    }
    out.insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok((StatusCode::OK, out, Json(sub)))
}

#[utoipa::path(
    patch, path = "/v1/orgs/{org}/subscription", tag = "billing", operation_id = "change_subscription",
    params(("org" = uuid::Uuid, Path, description = "The org's id")),
    request_body(content = PlanChoice, example = json!({"plan": "team-monthly"})),
    responses(
        (status = 202, description = "An upgrade (a dearer plan): its saga charges the prorated difference now",
         body = Subscription, example = json!(example_subscription("active"))),
        (status = 200, description = "A downgrade: `pending_plan`, applied at the period end",
         body = Subscription, example = json!(example_subscription("active"))),
        (status = 400, response = problems::MalformedJson),
        (status = 404, response = problems::NotFound),
        (status = 409, response = problems::Conflict),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Change an org's plan: upgrade now (prorated, price rounded up to the cent) or downgrade at period end.
async fn change(
    p: Principal,
    State(s): State<ApiState>,
    Extension(settings): Extension<Arc<Settings>>,
    Path(org): Path<String>,
    ApiJson(body): ApiJson<PlanChoice>,
) -> Result<(StatusCode, Json<Subscription>), Problem> {
    let org = parse_id("org", &org)?;
    let req = (org, body.plan.as_str(), p.subject.as_str());
    let (sub, upgrade) = store::change_plan(&s.pool, s.clock.now(), &settings, req).await?;
    let status = if upgrade {
        s.saga_wake.notify_one();
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(sub)))
}

#[utoipa::path(
    delete, path = "/v1/orgs/{org}/subscription", tag = "billing", operation_id = "cancel_subscription",
    params(("org" = uuid::Uuid, Path, description = "The org's id")),
    responses(
        (status = 200, description = "Cancel recorded: the subscription ends at the period end",
         body = Subscription, example = json!(example_subscription("active"))),
        (status = 404, response = problems::NotFound),
        (status = 409, response = problems::Conflict),
        (status = 422, response = problems::Validation),
    )
)]
/// Cancel an org's subscription at the period end.
async fn cancel(
    p: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
) -> Result<Json<Subscription>, Problem> {
    let org = parse_id("org", &org)?;
    Ok(Json(
        store::cancel(&s.pool, s.clock.now(), org, &p.subject).await?,
    ))
}

#[utoipa::path(
    get, path = "/v1/orgs/{org}/subscription", tag = "billing", operation_id = "get_subscription",
    params(("org" = uuid::Uuid, Path, description = "The org's id")),
    responses(
        (status = 200, description = "The org's live subscription (else its latest), with its history",
         body = Subscription, example = json!(example_subscription("active"))),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// An org's subscription.
async fn show(
    _p: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
) -> Result<Json<Subscription>, Problem> {
    let org = parse_id("org", &org)?;
    Ok(Json(store::current(&s.pool, org).await?))
}

#[derive(OpenApi)]
#[openapi(paths(put_plan, get_plan, list_plans, subscribe, change, cancel, show))]
struct Doc;

/// The OpenAPI paths of plans and subscriptions.
pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// The plan and subscription routes (mounted under `/v1`), reading `settings`.
pub fn routes(settings: Arc<Settings>) -> Router<ApiState> {
    Router::new()
        .route("/plans", get(list_plans))
        .route("/plans/{name}", get(get_plan).put(put_plan))
        .route(
            "/orgs/{org}/subscription",
            get(show).post(subscribe).patch(change).delete(cancel),
        )
        .layer(Extension(settings))
}
