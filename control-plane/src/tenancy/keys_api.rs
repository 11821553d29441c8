//! Admin routes for API keys: issue (key shown once), list, show, rotate, revoke.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::keys::{
    self, ApiKey, IssuedKey, KeyState, NewKey, Rotation, DEFAULT_GRACE_SECS, MAX_GRACE_SECS,
};
use crate::http::{parse_id, ApiJson, ApiQuery, ApiState, Page, PageQuery, Principal, Problem};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
    after: Option<String>,
    state: Option<KeyState>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateQuery {
    grace_seconds: Option<u32>,
}

fn location(id: uuid::Uuid) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/keys/{id}")) {
        headers.insert(header::LOCATION, v);
    }
    headers
}

async fn create_key(
    p: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
    ApiJson(body): ApiJson<NewKey>,
) -> Result<(StatusCode, HeaderMap, Json<IssuedKey>), Problem> {
    let org = parse_id("org", &org)?;
    let issued = keys::create(&s.pool, &p.subject, org, &body).await?;
    Ok((StatusCode::CREATED, location(issued.meta.id), Json(issued)))
}

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

async fn get_key(
    _: Principal,
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, Problem> {
    Ok(Json(keys::get(&s.pool, parse_id("id", &id)?).await?))
}

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

async fn revoke_key(
    p: Principal,
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    keys::revoke(&s.pool, &p.subject, parse_id("id", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/orgs/{org}/keys", get(list_keys).post(create_key))
        .route("/keys/{id}", get(get_key).delete(revoke_key))
        .route("/keys/{id}/rotate", post(rotate_key))
}
