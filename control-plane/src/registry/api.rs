//! Admin routes of the registry. Handlers only extract, read the clock, call the domain function and
//! shape the response; rules live in the parent module.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{post, put};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::OpenApi;

use super::{Instance, InstanceRole, Registration};
use crate::apidoc::{examples, problems};
use crate::http::{ApiJson, ApiQuery, ApiState, MaybeJson, Page, Principal, Problem};

/// `POST /v1/registry/instances/{id}/heartbeat` body (optional).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct HeartbeatBody {
    /// The config version the instance runs now (>= 0).
    config_version: Option<i64>,
}

/// `?role=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only instances of this role: `proxy`, `control-plane` or `analytics`.
    role: Option<InstanceRole>,
}

#[utoipa::path(
    put, path = "/v1/registry/instances/{id}", tag = "registry",
    params(("id" = String, Path, description = "Instance id, chosen by the instance: 1..=128 of `A-Z a-z 0-9 . _ : -`")),
    request_body(content = Registration, example = json!(examples::registration())),
    responses(
        (status = 200, description = "Re-registered (the row replaced)", body = Instance, example = json!(examples::instance())),
        (status = 201, description = "Registered", body = Instance, example = json!(examples::instance())),
        (status = 400, response = problems::MalformedJson),
        (status = 409, response = problems::Conflict),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Register or re-register an instance (idempotent).
async fn register(
    p: Principal,
    State(s): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Registration>,
) -> Result<(StatusCode, Json<Instance>), Problem> {
    let now = s.clock.now();
    let (instance, created) = super::register(&s.pool, &p.subject, &id, &body, now).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(instance)))
}

#[utoipa::path(
    post, path = "/v1/registry/instances/{id}/heartbeat", tag = "registry",
    params(("id" = String, Path, description = "Instance id")),
    request_body(content = Option<HeartbeatBody>, example = json!({"config_version": 8})),
    responses(
        (status = 204, description = "Heartbeat recorded"),
        (status = 400, response = problems::MalformedJson),
        (status = 404, response = problems::NotFound),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Record a heartbeat (404: not registered or expired — register again).
async fn heartbeat(
    _: Principal,
    State(s): State<ApiState>,
    Path(id): Path<String>,
    MaybeJson(body): MaybeJson<HeartbeatBody>,
) -> Result<StatusCode, Problem> {
    let config_version = body.and_then(|b| b.config_version);
    super::heartbeat(&s.pool, &id, config_version, s.clock.now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    delete, path = "/v1/registry/instances/{id}", tag = "registry",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 204, description = "Cancelled (also when it was not registered)"),
        (status = 422, response = problems::Validation),
    )
)]
/// Cancel an instance's registration (idempotent).
async fn cancel(
    p: Principal,
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    super::cancel(&s.pool, &p.subject, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/v1/registry/instances", tag = "registry", params(ListQuery),
    responses(
        (status = 200, description = "Every instance not expired, by role and id, with its status", body = Page<Instance>,
         example = json!({"items": [examples::instance()]})),
        (status = 422, response = problems::Validation),
    )
)]
/// List instances.
async fn list(
    _: Principal,
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<Instance>>, Problem> {
    let items = super::list(&s.pool, q.role, s.clock.now()).await?;
    Ok(Json(Page { items, next: None }))
}

/// The OpenAPI paths of these routes.
#[derive(OpenApi)]
#[openapi(paths(list, register, heartbeat, cancel))]
pub(super) struct Doc;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/registry/instances", axum::routing::get(list))
        .route("/registry/instances/{id}", put(register).delete(cancel))
        .route("/registry/instances/{id}/heartbeat", post(heartbeat))
}
