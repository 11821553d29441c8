//! Admin routes for an org's users: add, list, show, change (name, roles; `If-Match` required), delete.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;
use uuid::Uuid;

use super::api::Created;
use super::users::{self, NewUser, User, UserPatch};
use crate::apidoc::{examples, problems};
use crate::http::{
    etag, if_match, parse_id, ApiJson, ApiQuery, ApiState, Page, PageQuery, Principal, Problem,
};

fn user_headers(user: &User) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, etag(user.version));
    let url = format!("/v1/orgs/{}/users/{}", user.org_id, user.id);
    if let Ok(location) = HeaderValue::from_str(&url) {
        headers.insert(header::LOCATION, location);
    }
    headers
}

fn ids(org: &str, user: &str) -> Result<(Uuid, Uuid), Problem> {
    Ok((parse_id("org", org)?, parse_id("user", user)?))
}

#[utoipa::path(
    post, path = "/v1/orgs/{org}/users", tag = "tenancy",
    params(("org" = Uuid, Path, description = "Org id")),
    request_body(content = NewUser, example = json!(examples::new_user())),
    responses(
        (status = 201, description = "The user, created", body = User,
         headers(("ETag" = String, description = "Its version"), ("Location" = String, description = "Its URL")),
         example = json!(examples::user())),
        (status = 400, response = problems::MalformedJson),
        (status = 404, response = problems::NotFound),
        (status = 409, response = problems::Conflict),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Add a user to an org.
async fn create_user(
    p: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<Created<User>, Problem> {
    let org = parse_id("org", &org)?;
    let user = users::create(&s.pool, &p.subject, org, &body).await?;
    Ok((StatusCode::CREATED, user_headers(&user), Json(user)))
}

#[utoipa::path(
    get, path = "/v1/orgs/{org}/users", tag = "tenancy",
    params(("org" = Uuid, Path, description = "Org id"), PageQuery),
    responses(
        (status = 200, description = "One page of the org's users", body = Page<User>,
         example = json!({"items": [examples::user()]})),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// List an org's users.
async fn list_users(
    _: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<User>>, Problem> {
    let org = parse_id("org", &org)?;
    let (limit, after) = PageQuery::resolve(q.limit, q.after.as_deref())?;
    let rows = users::list(&s.pool, org, limit + 1, after).await?;
    Ok(Json(Page::from_rows(rows, limit, |u| u.id.to_string())))
}

#[utoipa::path(
    get, path = "/v1/orgs/{org}/users/{user}", tag = "tenancy",
    params(("org" = Uuid, Path, description = "Org id"), ("user" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = User,
         headers(("ETag" = String, description = "Its version; send it back in `If-Match`")),
         example = json!(examples::user())),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Show a user.
async fn get_user(
    _: Principal,
    State(s): State<ApiState>,
    Path((org, user)): Path<(String, String)>,
) -> Result<(HeaderMap, Json<User>), Problem> {
    let (org, id) = ids(&org, &user)?;
    let user = users::get(&s.pool, org, id).await?;
    Ok((user_headers(&user), Json(user)))
}

#[utoipa::path(
    patch, path = "/v1/orgs/{org}/users/{user}", tag = "tenancy",
    params(
        ("org" = Uuid, Path, description = "Org id"),
        ("user" = Uuid, Path, description = "User id"),
        ("If-Match" = String, Header, description = "The ETag you read, e.g. `\"1\"`"),
    ),
    request_body(content = UserPatch, example = json!(examples::user_patch())),
    responses(
        (status = 200, description = "The user, changed", body = User,
         headers(("ETag" = String, description = "Its new version")),
         example = json!(examples::user_patched())),
        (status = 400, response = problems::MalformedJson),
        (status = 404, response = problems::NotFound),
        (status = 412, response = problems::PreconditionFailed),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
        (status = 428, response = problems::PreconditionRequired),
    )
)]
/// Change a user's name or roles (optimistic concurrency: `If-Match` required).
async fn patch_user(
    p: Principal,
    State(s): State<ApiState>,
    Path((org, user)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<UserPatch>,
) -> Result<(HeaderMap, Json<User>), Problem> {
    let ids = ids(&org, &user)?;
    let expected = if_match(&headers)?;
    let user = users::update(&s.pool, &p.subject, ids, expected, &body).await?;
    Ok((user_headers(&user), Json(user)))
}

#[utoipa::path(
    delete, path = "/v1/orgs/{org}/users/{user}", tag = "tenancy",
    params(("org" = Uuid, Path, description = "Org id"), ("user" = Uuid, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted (a second DELETE is a 404)"),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Delete a user.
async fn delete_user(
    p: Principal,
    State(s): State<ApiState>,
    Path((org, user)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let (org, id) = ids(&org, &user)?;
    users::delete(&s.pool, &p.subject, org, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The OpenAPI paths of these routes.
#[derive(OpenApi)]
#[openapi(paths(list_users, create_user, get_user, patch_user, delete_user))]
pub(super) struct Doc;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/orgs/{org}/users", get(list_users).post(create_user))
        .route(
            "/orgs/{org}/users/{user}",
            get(get_user).patch(patch_user).delete(delete_user),
        )
}
