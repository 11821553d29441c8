//! Admin routes for orgs and tiers (users: `users_api`). Handlers only extract, call the domain
//! function and shape the response; rules live in `orgs` and `tiers`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};

use super::orgs::{self, Org};
use super::tiers::{self, Tier};
use crate::apidoc::{examples, problems};
use crate::http::{
    etag, if_match, parse_id, ApiJson, ApiQuery, ApiState, Page, PageQuery, Principal, Problem,
};

pub(super) type Created<T> = (StatusCode, HeaderMap, Json<T>);

/// `POST /v1/orgs` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct OrgBody {
    name: String,
    /// IANA time zone of the org's usage reports (default `UTC`).
    time_zone: Option<String>,
}

/// `PATCH /v1/orgs/{org}` body: the fields to change (at least one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct OrgPatch {
    name: Option<String>,
    /// IANA time zone of the org's usage reports, e.g. `Europe/Berlin`.
    time_zone: Option<String>,
}

/// `PUT /v1/tiers/{name}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TierBody {
    /// At most 32 entries, each a non-negative number or a string.
    #[schema(value_type = Object)]
    limits: Value,
}

fn org_headers(org: &Org) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, etag(org.version));
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/orgs/{}", org.id)) {
        headers.insert(header::LOCATION, location);
    }
    headers
}

#[utoipa::path(
    post, path = "/v1/orgs", tag = "tenancy",
    request_body(content = OrgBody, example = json!({"name": "acme"})),
    responses(
        (status = 201, description = "The org, created", body = Org, headers(("ETag" = String, description = "Its version"), ("Location" = String, description = "Its URL")),
         example = json!(examples::org())),
        (status = 400, response = problems::MalformedJson),
        (status = 409, response = problems::Conflict),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Create an org.
async fn create_org(
    p: Principal,
    State(s): State<ApiState>,
    ApiJson(body): ApiJson<OrgBody>,
) -> Result<Created<Org>, Problem> {
    let org =
        orgs::create_in_zone(&s.pool, &p.subject, &body.name, body.time_zone.as_deref()).await?;
    Ok((StatusCode::CREATED, org_headers(&org), Json(org)))
}

#[utoipa::path(
    get, path = "/v1/orgs", tag = "tenancy", params(PageQuery),
    responses(
        (status = 200, description = "One page of orgs, oldest first", body = Page<Org>,
         example = json!({"items": [examples::org()], "next": examples::ORG})),
        (status = 422, response = problems::Validation),
    )
)]
/// List orgs.
async fn list_orgs(
    _: Principal,
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<Org>>, Problem> {
    let (limit, after) = PageQuery::resolve(q.limit, q.after.as_deref())?;
    let rows = orgs::list(&s.pool, limit + 1, after).await?;
    Ok(Json(Page::from_rows(rows, limit, |o| o.id.to_string())))
}

#[utoipa::path(
    get, path = "/v1/orgs/{org}", tag = "tenancy", params(("org" = Uuid, Path, description = "Org id")),
    responses(
        (status = 200, description = "The org", body = Org, headers(("ETag" = String, description = "Its version; send it back in `If-Match`")),
         example = json!(examples::org())),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Show an org.
async fn get_org(
    _: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
) -> Result<(HeaderMap, Json<Org>), Problem> {
    let org = orgs::get(&s.pool, parse_id("org", &org)?).await?;
    Ok((org_headers(&org), Json(org)))
}

#[utoipa::path(
    patch, path = "/v1/orgs/{org}", tag = "tenancy",
    params(
        ("org" = Uuid, Path, description = "Org id"),
        ("If-Match" = String, Header, description = "The ETag you read, e.g. `\"1\"`"),
    ),
    request_body(content = OrgPatch, example = json!({"name": "acme-renamed", "time_zone": "Europe/Berlin"})),
    responses(
        (status = 200, description = "The org, changed", body = Org,
         headers(("ETag" = String, description = "Its new version")),
         example = json!(examples::org_renamed())),
        (status = 400, response = problems::MalformedJson),
        (status = 404, response = problems::NotFound),
        (status = 409, response = problems::Conflict),
        (status = 412, response = problems::PreconditionFailed),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
        (status = 428, response = problems::PreconditionRequired),
    )
)]
/// Rename an org or change its time zone (optimistic concurrency: `If-Match` required).
async fn patch_org(
    p: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<OrgPatch>,
) -> Result<(HeaderMap, Json<Org>), Problem> {
    let id = parse_id("org", &org)?;
    let expected = if_match(&headers)?;
    if body.name.is_none() && body.time_zone.is_none() {
        return Err(Problem::field("name", "give `name` and/or `time_zone`"));
    }
    let (name, zone) = (body.name.as_deref(), body.time_zone.as_deref());
    let org = orgs::update(&s.pool, &p.subject, id, expected, name, zone).await?;
    Ok((org_headers(&org), Json(org)))
}

#[utoipa::path(
    delete, path = "/v1/orgs/{org}", tag = "tenancy",
    params(
        ("org" = Uuid, Path, description = "Org id"),
        ("If-Match" = String, Header, description = "The ETag you read, e.g. `\"1\"`"),
    ),
    responses(
        (status = 204, description = "Deleted: every key of the org the proxies held is revoked (and removed from them), the org is gone from the API and its name free again"),
        (status = 404, response = problems::NotFound),
        (status = 412, response = problems::PreconditionFailed),
        (status = 422, response = problems::Validation),
        (status = 428, response = problems::PreconditionRequired),
    )
)]
/// Delete an org and revoke its keys (optimistic concurrency: `If-Match` required).
async fn delete_org(
    p: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    let id = parse_id("org", &org)?;
    let expected = if_match(&headers)?;
    orgs::delete(&s.pool, &p.subject, id, expected).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    put, path = "/v1/tiers/{name}", tag = "tenancy",
    params(("name" = String, Path, description = "Tier name: 1..=64 of `a-z 0-9 - _`")),
    request_body(content = TierBody, example = json!(examples::tier_body())),
    responses(
        (status = 200, description = "The tier, replaced", body = Tier, headers(("ETag" = String, description = "Its version")),
         example = json!(examples::tier())),
        (status = 201, description = "The tier, created", body = Tier, headers(("ETag" = String, description = "Its version")),
         example = json!(examples::tier())),
        (status = 400, response = problems::MalformedJson),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Create or replace a tier.
async fn put_tier(
    p: Principal,
    State(s): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<TierBody>,
) -> Result<(StatusCode, HeaderMap, Json<Tier>), Problem> {
    let (tier, created) = tiers::put(&s.pool, &p.subject, &name, &body.limits).await?;
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, etag(tier.version));
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, headers, Json(tier)))
}

#[utoipa::path(
    get, path = "/v1/tiers", tag = "tenancy",
    responses(
        (status = 200, description = "Every tier (one page)", body = Page<Tier>,
         example = json!({"items": [examples::tier()]})),
    )
)]
/// List tiers.
async fn list_tiers(_: Principal, State(s): State<ApiState>) -> Result<Json<Page<Tier>>, Problem> {
    let items = tiers::list(&s.pool).await?;
    Ok(Json(Page { items, next: None }))
}

#[utoipa::path(
    get, path = "/v1/tiers/{name}", tag = "tenancy",
    params(("name" = String, Path, description = "Tier name")),
    responses(
        (status = 200, description = "The tier", body = Tier, headers(("ETag" = String, description = "Its version")),
         example = json!(examples::tier())),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Show a tier.
async fn get_tier(
    _: Principal,
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<(HeaderMap, Json<Tier>), Problem> {
    let tier = tiers::get(&s.pool, &name).await?;
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, etag(tier.version));
    Ok((headers, Json(tier)))
}

#[utoipa::path(
    delete, path = "/v1/tiers/{name}", tag = "tenancy",
    params(("name" = String, Path, description = "Tier name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, response = problems::NotFound),
        (status = 409, response = problems::Conflict),
        (status = 422, response = problems::Validation),
    )
)]
/// Delete a tier no live key uses (409 while keys the proxies hold — not revoked, expired ones
/// included — still use it).
async fn delete_tier(
    p: Principal,
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    tiers::delete(&s.pool, &p.subject, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The OpenAPI paths of these routes.
#[derive(OpenApi)]
#[openapi(paths(
    list_orgs,
    create_org,
    get_org,
    patch_org,
    delete_org,
    list_tiers,
    get_tier,
    put_tier,
    delete_tier
))]
pub(super) struct Doc;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/orgs", get(list_orgs).post(create_org))
        .route(
            "/orgs/{org}",
            get(get_org).patch(patch_org).delete(delete_org),
        )
        .route("/tiers", get(list_tiers))
        .route(
            "/tiers/{name}",
            get(get_tier).put(put_tier).delete(delete_tier),
        )
}
