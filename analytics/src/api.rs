//! The analytics role's HTTP API: `GET /v1/orgs/{org}/usage`, `GET /v1/orgs/{org}/usage/top-keys`,
//! `GET /metrics`, `GET /healthz`; the statement and price routes of [`crate::reports::api`] are
//! merged in.
//!
//! The usage routes need `Authorization: Bearer <token>` when the role was started with a token
//! (the control plane forwards its callers' already-authorized requests with it; the role itself
//! knows no orgs or users). Errors are RFC 9457 problem+json with the same `type` URIs as the control
//! plane's admin API.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::buckets::Level;
use crate::metrics::Metrics;
use crate::problem::{problem, unauthorized};
use crate::query::{self, BadQuery, TopKeysParams, UsageParams};
use crate::store::{Dim, Store, StoreError};

/// What the handlers share.
pub struct ApiState {
    pub store: Arc<Store>,
    pub metrics: Metrics,
    /// The bearer token the usage routes require (`None`: open, for loopback-only deployments).
    pub token: Option<String>,
}

/// The role's router.
pub fn router(state: Arc<ApiState>) -> Router {
    let reports = crate::reports::api::routes(state.store.clone(), state.token.clone());
    Router::new()
        .route("/v1/orgs/{org}/usage", get(usage))
        .route("/v1/orgs/{org}/usage/top-keys", get(top_keys))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
        .merge(reports)
}

impl IntoResponse for BadQuery {
    fn into_response(self) -> Response {
        problem(
            StatusCode::BAD_REQUEST,
            "validation",
            "Invalid request",
            &self.0,
        )
    }
}

fn unavailable(e: &StoreError) -> Response {
    tracing::warn!(error = %e, "usage query failed");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "Service unavailable",
        "the usage store is not reachable; retry later",
    )
}

/// Whether the request carries the role's token (compared in constant time), if it has one.
fn authorized(state: &ApiState, headers: &HeaderMap) -> bool {
    crate::problem::bearer_ok(state.token.as_deref(), headers)
}

async fn usage(
    State(state): State<Arc<ApiState>>,
    Path(org): Path<String>,
    params: Result<Query<UsageParams>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let params = match params {
        Ok(Query(p)) => p,
        Err(e) => return BadQuery(e.body_text()).into_response(),
    };
    let plan = match query::plan(&params, query::now_ms()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    match state
        .store
        .read(&org, plan.level, plan.dim, plan.from(), plan.to())
        .await
    {
        Ok(rows) => Json(query::fold(&org, &plan, &rows)).into_response(),
        Err(e) => unavailable(&e),
    }
}

async fn top_keys(
    State(state): State<Arc<ApiState>>,
    Path(org): Path<String>,
    params: Result<Query<TopKeysParams>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let params = match params {
        Ok(Query(p)) => p,
        Err(e) => return BadQuery(e.body_text()).into_response(),
    };
    let (from, to) = match query::top_keys_range(&params, query::now_ms()) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let rows = match state.store.read(&org, Level::Day, Dim::Key, from, to).await {
        Ok(rows) => rows,
        Err(e) => return unavailable(&e),
    };
    match query::top_keys(&org, from, to, &params, &rows) {
        Ok(top) => Json(top).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let mut r = state.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// 200 when Cassandra answers a trivial read, 503 otherwise.
async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    let probe = state
        .store
        .session()
        .query_unpaged("SELECT release_version FROM system.local", ())
        .await;
    match probe {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health probe failed");
            (StatusCode::SERVICE_UNAVAILABLE, "cassandra unreachable\n").into_response()
        }
    }
}
