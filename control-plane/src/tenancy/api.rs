//! Admin routes for orgs, users and tiers. Handlers only extract, call the domain function and shape
//! the response; rules live in `orgs`, `users`, `tiers`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::orgs::{self, Org};
use super::tiers::{self, Tier};
use super::users::{self, NewUser, User};
use crate::http::{
    etag, if_match, parse_id, ApiJson, ApiQuery, ApiState, Page, PageQuery, Principal, Problem,
};

type Created<T> = (StatusCode, HeaderMap, Json<T>);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgBody {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierBody {
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

async fn create_org(
    p: Principal,
    State(s): State<ApiState>,
    ApiJson(body): ApiJson<OrgBody>,
) -> Result<Created<Org>, Problem> {
    let org = orgs::create(&s.pool, &p.subject, &body.name).await?;
    Ok((StatusCode::CREATED, org_headers(&org), Json(org)))
}

async fn list_orgs(
    _: Principal,
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<Org>>, Problem> {
    let (limit, after) = PageQuery::resolve(q.limit, q.after.as_deref())?;
    let rows = orgs::list(&s.pool, limit + 1, after).await?;
    Ok(Json(Page::from_rows(rows, limit, |o| o.id.to_string())))
}

async fn get_org(
    _: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
) -> Result<(HeaderMap, Json<Org>), Problem> {
    let org = orgs::get(&s.pool, parse_id("org", &org)?).await?;
    Ok((org_headers(&org), Json(org)))
}

async fn patch_org(
    p: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<OrgBody>,
) -> Result<(HeaderMap, Json<Org>), Problem> {
    let id = parse_id("org", &org)?;
    let expected = if_match(&headers)?;
    let org = orgs::rename(&s.pool, &p.subject, id, expected, &body.name).await?;
    Ok((org_headers(&org), Json(org)))
}

async fn create_user(
    p: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<User>), Problem> {
    let org = parse_id("org", &org)?;
    let user = users::create(&s.pool, &p.subject, org, &body).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

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

async fn list_tiers(_: Principal, State(s): State<ApiState>) -> Result<Json<Page<Tier>>, Problem> {
    let items = tiers::list(&s.pool).await?;
    Ok(Json(Page { items, next: None }))
}

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/orgs", get(list_orgs).post(create_org))
        .route("/orgs/{org}", get(get_org).patch(patch_org))
        .route("/orgs/{org}/users", get(list_users).post(create_user))
        .route("/tiers", get(list_tiers))
        .route("/tiers/{name}", put(put_tier))
}
