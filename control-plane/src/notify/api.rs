//! Admin routes of the notify context: an org's webhook endpoints and notification settings.
//! Handlers extract, call [`super::endpoints`] / [`super::settings`] and shape the response.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::{json, Value};
use utoipa::OpenApi;

use super::endpoints::{self, Created, Endpoint, NewEndpoint};
use super::settings::{self, OrgSettings, SettingsBody};
use crate::apidoc::problems;
use crate::http::{parse_id, ApiJson, ApiState, Page, Principal, Problem};

const AT: &str = "2026-01-15T09:30:00Z";
const ID: &str = "9b2c61f4-3a8e-4d0b-8f1e-2c7d5a4b6e01";
const ORG: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

fn example_endpoint() -> Value {
    json!({"id": ID, "org": ORG, "url": "https://hooks.example.com/leaky",
           "events": ["purchase.completed", "balance.threshold_crossed"], "enabled": true,
           "consecutive_failures": 0, "disabled_at": null, "created_at": AT})
}

fn example_created() -> Value {
    let mut e = example_endpoint();
    e["secret"] = json!("whsec_5f0c7e8a2b9d4c1e6f3a0b7c8d9e2f1a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e");
    e
}

#[utoipa::path(
    post, path = "/v1/orgs/{org}/webhooks", tag = "notify", operation_id = "create_webhook",
    params(("org" = uuid::Uuid, Path, description = "The org's id")),
    request_body(content = NewEndpoint,
        description = "Event types: `purchase.completed`, `purchase.compensated`, `purchase.needs_attention`, \
            `ledger.credited`, `ledger.debited`, `ledger.refunded`, `ledger.expired`, \
            `balance.threshold_crossed`, `credits.expiring`, `key.expiring`, or `*`.",
        example = json!({"url": "https://hooks.example.com/leaky", "events": ["purchase.completed", "balance.threshold_crossed"]})),
    responses(
        (status = 201, description = "Created. `secret` signs every delivery (`Leaky-Signature: t=<unix>,v1=<hex \
            HMAC-SHA256(secret, \"<t>.<body>\")>`) and is shown only here.", body = Created,
         headers(("Location" = String, description = "The org's webhook list")),
         example = json!(example_created())),
        (status = 400, response = problems::MalformedJson),
        (status = 404, response = problems::NotFound),
        (status = 409, response = problems::Conflict),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Register a webhook endpoint for an org.
async fn create(
    p: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
    ApiJson(body): ApiJson<NewEndpoint>,
) -> Result<(StatusCode, HeaderMap, Json<Created>), Problem> {
    let org = parse_id("org", &org)?;
    let created = endpoints::create(&s.pool, s.clock.now(), &p.subject, org, &body).await?;
    let mut headers = HeaderMap::new();
    if let Ok(l) = HeaderValue::from_str(&format!("/v1/orgs/{org}/webhooks")) {
        headers.insert(header::LOCATION, l);
    }
    Ok((StatusCode::CREATED, headers, Json(created)))
}

#[utoipa::path(
    get, path = "/v1/orgs/{org}/webhooks", tag = "notify", operation_id = "list_webhooks",
    params(("org" = uuid::Uuid, Path, description = "The org's id")),
    responses(
        (status = 200, description = "The org's endpoints, oldest first (one page; secrets are never shown again)",
         body = Page<Endpoint>, example = json!({"items": [example_endpoint()]})),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// List an org's webhook endpoints.
async fn list(
    _: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
) -> Result<Json<Page<Endpoint>>, Problem> {
    let org = parse_id("org", &org)?;
    let items = endpoints::list(&s.pool, org).await?;
    Ok(Json(Page { items, next: None }))
}

#[utoipa::path(
    delete, path = "/v1/orgs/{org}/webhooks/{id}", tag = "notify", operation_id = "delete_webhook",
    params(
        ("org" = uuid::Uuid, Path, description = "The org's id"),
        ("id" = uuid::Uuid, Path, description = "The endpoint's id"),
    ),
    responses(
        (status = 204, description = "Deleted; its pending deliveries are cancelled"),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Delete a webhook endpoint.
async fn remove(
    p: Principal,
    State(s): State<ApiState>,
    Path((org, id)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let org = parse_id("org", &org)?;
    let id = parse_id("id", &id)?;
    endpoints::delete(&s.pool, &p.subject, org, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn example_settings() -> Value {
    json!({"org": ORG, "notify_email": "ops@acme.example", "updated_at": AT})
}

#[utoipa::path(
    get, path = "/v1/orgs/{org}/notification-settings", tag = "notify", operation_id = "get_notification_settings",
    params(("org" = uuid::Uuid, Path, description = "The org's id")),
    responses(
        (status = 200, description = "The org's notification settings (`notify_email` null until set)",
         body = OrgSettings, example = json!(example_settings())),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Show an org's notification settings.
async fn show_settings(
    _: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
) -> Result<Json<OrgSettings>, Problem> {
    let org = parse_id("org", &org)?;
    Ok(Json(settings::get(&s.pool, org).await?))
}

#[utoipa::path(
    put, path = "/v1/orgs/{org}/notification-settings", tag = "notify", operation_id = "put_notification_settings",
    params(("org" = uuid::Uuid, Path, description = "The org's id")),
    request_body(content = SettingsBody, example = json!({"notify_email": "ops@acme.example"})),
    responses(
        (status = 200, description = "Replaced: email notifications go to the org's `org-admin` users and to `notify_email`",
         body = OrgSettings, example = json!(example_settings())),
        (status = 400, response = problems::MalformedJson),
        (status = 404, response = problems::NotFound),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Set an org's notification settings.
async fn put_settings(
    p: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
    ApiJson(body): ApiJson<SettingsBody>,
) -> Result<Json<OrgSettings>, Problem> {
    let org = parse_id("org", &org)?;
    Ok(Json(
        settings::put(&s.pool, s.clock.now(), &p.subject, org, &body).await?,
    ))
}

#[derive(OpenApi)]
#[openapi(paths(create, list, remove, show_settings, put_settings))]
struct Doc;

/// The OpenAPI paths of the notify routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// `/orgs/{org}/webhooks[/{id}]` and `/orgs/{org}/notification-settings` (mounted under `/v1`).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/orgs/{org}/webhooks", get(list).post(create))
        .route("/orgs/{org}/webhooks/{id}", delete(remove))
        .route(
            "/orgs/{org}/notification-settings",
            get(show_settings).put(put_settings),
        )
}
