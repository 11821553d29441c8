//! Admin routes of the flags context. Handlers only extract, call the domain function and shape the
//! response (ETag on every flag); rules live in the parent module and `store`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::OpenApi;

use super::{Evaluation, Flag, FlagBody};
use crate::apidoc::problems;
use crate::http::{etag, if_match, ApiJson, ApiQuery, ApiState, Page, Principal, Problem};

/// `PUT /v1/flags/{name}/orgs/{org}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    /// The flag's value for this org, whatever `enabled` and the rollout say.
    enabled: bool,
}

/// `?org=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EvaluateQuery {
    /// The org's name (as keys carry it); absent: a request without an org.
    org: Option<String>,
}

const AT: &str = "2026-01-15T09:30:00Z";

fn example_flag() -> Value {
    json!({
        "name": "stream_usage_injection",
        "enabled": true,
        "rollout_percent": 50,
        "description": "include_usage for streams, rolling out",
        "orgs": {"acme": false},
        "created_at": AT,
        "updated_at": AT,
        "version": 3
    })
}

fn example_body() -> Value {
    json!({"enabled": true, "rollout_percent": 50, "description": "include_usage for streams, rolling out"})
}

fn example_evaluation() -> Value {
    json!({"flag": "stream_usage_injection", "org": "globex", "on": false, "reason": "out-of-rollout",
           "bucket": 84, "version": 3})
}

/// The `If-Match` version when the header is sent.
fn optional_if_match(headers: &HeaderMap) -> Result<Option<i64>, Problem> {
    if headers.contains_key(header::IF_MATCH) {
        if_match(headers).map(Some)
    } else {
        Ok(None)
    }
}

fn flag_headers(flag: &Flag, location: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, etag(flag.version));
    if location {
        if let Ok(l) = HeaderValue::from_str(&format!("/v1/flags/{}", flag.name)) {
            headers.insert(header::LOCATION, l);
        }
    }
    headers
}

#[utoipa::path(
    get, path = "/v1/flags", tag = "flags", operation_id = "list_flags",
    responses(
        (status = 200, description = "Every flag stored in the control plane, by name (one page)", body = Page<Flag>,
         example = json!({"items": [example_flag()]})),
    )
)]
/// List flags.
async fn list(_: Principal, State(s): State<ApiState>) -> Result<Json<Page<Flag>>, Problem> {
    let items = super::list(&s.pool).await?;
    Ok(Json(Page { items, next: None }))
}

#[utoipa::path(
    get, path = "/v1/flags/{name}", tag = "flags",
    params(("name" = String, Path, description = "Flag name: 1..=64 of `a-z 0-9 _ -`")),
    responses(
        (status = 200, description = "The flag with its overrides", body = Flag,
         headers(("ETag" = String, description = "Its version; send it back in `If-Match`")),
         example = json!(example_flag())),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Show a flag.
async fn show(
    _: Principal,
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<(HeaderMap, Json<Flag>), Problem> {
    let flag = super::get(&s.pool, &name).await?;
    Ok((flag_headers(&flag, false), Json(flag)))
}

#[utoipa::path(
    put, path = "/v1/flags/{name}", tag = "flags",
    params(
        ("name" = String, Path, description = "Flag name: 1..=64 of `a-z 0-9 _ -`"),
        ("If-Match" = Option<String>, Header, description = "Required to replace an existing flag: the ETag you read. Omit it to create."),
    ),
    request_body(content = FlagBody, example = json!(example_body())),
    responses(
        (status = 200, description = "The flag, replaced (its overrides kept)", body = Flag,
         headers(("ETag" = String, description = "Its new version")), example = json!(example_flag())),
        (status = 201, description = "The flag, created", body = Flag,
         headers(("ETag" = String, description = "Its version"), ("Location" = String, description = "Its URL")),
         example = json!(example_flag())),
        (status = 400, response = problems::MalformedJson),
        (status = 412, response = problems::PreconditionFailed),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
        (status = 428, response = problems::PreconditionRequired),
    )
)]
/// Create a flag, or replace its settings (optimistic concurrency: `If-Match`).
async fn put(
    p: Principal,
    State(s): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<FlagBody>,
) -> Result<(StatusCode, HeaderMap, Json<Flag>), Problem> {
    let expected = optional_if_match(&headers)?;
    let (flag, created) = super::upsert(&s.pool, &p.subject, &name, &body, expected).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, flag_headers(&flag, created), Json(flag)))
}

#[utoipa::path(
    delete, path = "/v1/flags/{name}", tag = "flags",
    params(
        ("name" = String, Path, description = "Flag name"),
        ("If-Match" = String, Header, description = "The ETag you read, e.g. `\"3\"`"),
    ),
    responses(
        (status = 204, description = "Deleted with its overrides; proxies fall back to the YAML base's flag, else the built-in default"),
        (status = 404, response = problems::NotFound),
        (status = 412, response = problems::PreconditionFailed),
        (status = 422, response = problems::Validation),
        (status = 428, response = problems::PreconditionRequired),
    )
)]
/// Delete a flag (optimistic concurrency: `If-Match` required).
async fn delete(
    p: Principal,
    State(s): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    let expected = if_match(&headers)?;
    super::delete(&s.pool, &p.subject, &name, expected).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    put, path = "/v1/flags/{name}/orgs/{org}", tag = "flags",
    params(
        ("name" = String, Path, description = "Flag name"),
        ("org" = String, Path, description = "Org name as keys carry it (1..=100 characters, URL-encoded)"),
        ("If-Match" = Option<String>, Header, description = "Optional: the flag's ETag you read (412 when stale)"),
    ),
    request_body(content = OverrideBody, example = json!({"enabled": false})),
    responses(
        (status = 200, description = "The flag with the override set", body = Flag,
         headers(("ETag" = String, description = "The flag's new version")), example = json!(example_flag())),
        (status = 400, response = problems::MalformedJson),
        (status = 404, response = problems::NotFound),
        (status = 412, response = problems::PreconditionFailed),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Set one org's override of a flag.
async fn put_override(
    p: Principal,
    State(s): State<ApiState>,
    Path((name, org)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<OverrideBody>,
) -> Result<(HeaderMap, Json<Flag>), Problem> {
    let expected = optional_if_match(&headers)?;
    let flag =
        super::set_override(&s.pool, &p.subject, &name, &org, body.enabled, expected).await?;
    Ok((flag_headers(&flag, false), Json(flag)))
}

#[utoipa::path(
    delete, path = "/v1/flags/{name}/orgs/{org}", tag = "flags",
    params(
        ("name" = String, Path, description = "Flag name"),
        ("org" = String, Path, description = "Org name (URL-encoded)"),
        ("If-Match" = Option<String>, Header, description = "Optional: the flag's ETag you read (412 when stale)"),
    ),
    responses(
        (status = 204, description = "The org follows the flag's switch and rollout again (also when it had no override)",
         headers(("ETag" = String, description = "The flag's version now"))),
        (status = 404, response = problems::NotFound),
        (status = 412, response = problems::PreconditionFailed),
        (status = 422, response = problems::Validation),
    )
)]
/// Remove one org's override of a flag (idempotent).
async fn delete_override(
    p: Principal,
    State(s): State<ApiState>,
    Path((name, org)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<(StatusCode, HeaderMap), Problem> {
    let expected = optional_if_match(&headers)?;
    let flag = super::remove_override(&s.pool, &p.subject, &name, &org, expected).await?;
    Ok((StatusCode::NO_CONTENT, flag_headers(&flag, false)))
}

#[utoipa::path(
    get, path = "/v1/flags/{name}/evaluate", tag = "flags",
    params(("name" = String, Path, description = "Flag name"), EvaluateQuery),
    responses(
        (status = 200, description = "The flag's value for the org, decided by the same code as on every proxy", body = Evaluation,
         example = json!(example_evaluation())),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Evaluate a flag for an org.
async fn evaluate(
    _: Principal,
    State(s): State<ApiState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<EvaluateQuery>,
) -> Result<Json<Evaluation>, Problem> {
    Ok(Json(
        super::evaluate(&s.pool, &name, q.org.as_deref()).await?,
    ))
}

/// The OpenAPI paths of these routes.
#[derive(OpenApi)]
#[openapi(paths(list, show, put, delete, put_override, delete_override, evaluate))]
pub(super) struct Doc;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/flags", get(list))
        .route("/flags/{name}", get(show).put(put).delete(delete))
        .route(
            "/flags/{name}/orgs/{org}",
            axum::routing::put(put_override).delete(delete_override),
        )
        .route("/flags/{name}/evaluate", get(evaluate))
}
