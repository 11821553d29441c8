//! Admin routes for API keys: issue (key shown once), list, show, change expiry or name, rotate, revoke.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi};

use super::keys::{
    self, ApiKey, IssuedKey, KeyPatch, KeyState, NewKey, Rotation, DEFAULT_GRACE_SECS,
    MAX_GRACE_SECS,
};
use crate::apidoc::{examples, problems};
use crate::http::{parse_id, ApiJson, ApiQuery, ApiState, Page, PageQuery, Principal, Problem};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Page size, 1..=100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The `next` cursor of the previous page.
    #[param(format = Uuid)]
    after: Option<String>,
    /// Only keys in this state.
    #[param(inline)]
    state: Option<KeyState>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RotateQuery {
    /// How long the old key keeps working, 0..=604800 (default 86400); 0 revokes it now.
    #[param(maximum = 604800)]
    grace_seconds: Option<u32>,
}

fn location(id: uuid::Uuid) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/keys/{id}")) {
        headers.insert(header::LOCATION, v);
    }
    headers
}

#[utoipa::path(
    post, path = "/v1/orgs/{org}/keys", tag = "tenancy",
    params(("org" = Uuid, Path, description = "Org id")),
    request_body(content = NewKey, example = json!(examples::new_key())),
    responses(
        (status = 201, description = "The key, issued: `key` is shown this once", body = IssuedKey,
         headers(("Location" = String, description = "The key's URL")),
         example = json!(examples::issued_key())),
        (status = 400, response = problems::MalformedJson),
        (status = 404, response = problems::NotFound),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Issue an API key for an org.
async fn create_key(
    p: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
    ApiJson(body): ApiJson<NewKey>,
) -> Result<(StatusCode, HeaderMap, Json<IssuedKey>), Problem> {
    let org = parse_id("org", &org)?;
    crate::roles::check_delegation(&p, &body.admin_roles)?;
    let issued = keys::create(&s.pool, &p.subject, org, &body).await?;
    Ok((StatusCode::CREATED, location(issued.meta.id), Json(issued)))
}

#[utoipa::path(
    get, path = "/v1/orgs/{org}/keys", tag = "tenancy",
    params(("org" = Uuid, Path, description = "Org id"), ListQuery),
    responses(
        (status = 200, description = "One page of the org's keys (never the secrets)", body = Page<ApiKey>,
         example = json!({"items": [examples::key(examples::KEY, "Ab3dE5gH", false)]})),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// List an org's keys.
async fn list_keys(
    _: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<ApiKey>>, Problem> {
    let org = parse_id("org", &org)?;
    let (limit, after) = PageQuery::resolve(q.limit, q.after.as_deref())?;
    let rows = keys::list(&s.pool, org, q.state, limit + 1, after).await?;
    Ok(Json(Page::from_rows(rows, limit, |k| k.id.to_string())))
}

#[utoipa::path(
    get, path = "/v1/keys/{id}", tag = "tenancy",
    params(("id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key's metadata", body = ApiKey,
         example = json!(examples::key(examples::KEY, "Ab3dE5gH", false))),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Show a key.
async fn get_key(
    _: Principal,
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, Problem> {
    Ok(Json(keys::get(&s.pool, parse_id("id", &id)?).await?))
}

#[utoipa::path(
    patch, path = "/v1/keys/{id}", tag = "tenancy",
    params(("id" = Uuid, Path, description = "Key id")),
    request_body(content = KeyPatch, example = json!(examples::key_patch())),
    responses(
        (status = 200, description = "The key, changed; a new expiry reaches the proxies as a key delta",
         body = ApiKey, example = json!(examples::key_patched())),
        (status = 400, response = problems::MalformedJson),
        (status = 404, response = problems::NotFound),
        (status = 409, response = problems::Conflict),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Set or clear a live key's expiry, or rename it (409 for a revoked or rotated key).
async fn patch_key(
    p: Principal,
    State(s): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<KeyPatch>,
) -> Result<Json<ApiKey>, Problem> {
    let id = parse_id("id", &id)?;
    Ok(Json(keys::update(&s.pool, &p.subject, id, &body).await?))
}

#[utoipa::path(
    post, path = "/v1/keys/{id}/rotate", tag = "tenancy",
    params(("id" = Uuid, Path, description = "Key id"), RotateQuery),
    responses(
        (status = 201, description = "The new key (shown this once) and the old one, valid until its `revoked_at`",
         body = Rotation, headers(("Location" = String, description = "The new key's URL")),
         example = json!(examples::rotation())),
        (status = 404, response = problems::NotFound),
        (status = 409, response = problems::Conflict),
        (status = 422, response = problems::Validation),
    )
)]
/// Rotate a key.
async fn rotate_key(
    p: Principal,
    State(s): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RotateQuery>,
) -> Result<(StatusCode, HeaderMap, Json<Rotation>), Problem> {
    let id = parse_id("id", &id)?;
    let grace = q.grace_seconds.unwrap_or(DEFAULT_GRACE_SECS);
    if grace > MAX_GRACE_SECS {
        return Err(Problem::field(
            "grace_seconds",
            format!("must be 0..={MAX_GRACE_SECS} (7 days)"),
        ));
    }
    let rotation = keys::rotate(&s.pool, &p.subject, id, grace).await?;
    Ok((
        StatusCode::CREATED,
        location(rotation.new.meta.id),
        Json(rotation),
    ))
}

#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "tenancy",
    params(("id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked now"),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Revoke a key.
async fn revoke_key(
    p: Principal,
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    keys::revoke(&s.pool, &p.subject, parse_id("id", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The OpenAPI paths of these routes.
#[derive(OpenApi)]
#[openapi(paths(list_keys, create_key, get_key, patch_key, revoke_key, rotate_key))]
pub(super) struct Doc;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/orgs/{org}/keys", get(list_keys).post(create_key))
        .route(
            "/keys/{id}",
            get(get_key).patch(patch_key).delete(revoke_key),
        )
        .route("/keys/{id}/rotate", post(rotate_key))
}
