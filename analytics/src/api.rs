//! The analytics role's HTTP API: `GET /v1/orgs/{org}/usage`, `GET /v1/orgs/{org}/usage/top-keys`,
//! `GET /v1/orgs/{org}/anomalies`, `GET /metrics`, `GET /healthz`; the statement and price routes of
//! [`crate::reports::api`] are merged in.
//!
//! The usage routes need `Authorization: Bearer <token>` when the role was started with a token
//! (the control plane forwards its callers' already-authorized requests with it; the role itself
//! knows no orgs or users). Errors are RFC 9457 problem+json with the same `type` URIs as the control
//! plane's admin API.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::anomaly::live::AnomalyRecord;
use crate::anomaly::sink::{AnomalyStore, MAX_RANGE_DAYS};
use crate::buckets::{Level, DAY_MS};
use crate::metrics::Metrics;
use crate::problem::{problem, AuthQuery, TokenState};
use crate::query::{self, BadQuery, TopKeysParams, UsageParams};
use crate::store::{Dim, Store, StoreError};

/// What the handlers share.
pub struct ApiState {
    pub store: Arc<Store>,
    pub metrics: Metrics,
    /// The bearer token the usage routes require (`None`: open, for loopback-only deployments).
    pub token: Option<String>,
    /// The detected anomalies (the consumer writes them, `GET …/anomalies` reads them).
    pub anomalies: Arc<AnomalyStore>,
}

/// The role's router.
pub fn router(state: Arc<ApiState>) -> Router {
    let reports = crate::reports::api::routes(state.store.clone(), state.token.clone());
    Router::new()
        .route("/v1/orgs/{org}/usage", get(usage))
        .route("/v1/orgs/{org}/usage/top-keys", get(top_keys))
        .route("/v1/orgs/{org}/anomalies", get(anomalies))
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

impl TokenState for ApiState {
    fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

async fn usage(
    State(state): State<Arc<ApiState>>,
    Path(org): Path<String>,
    AuthQuery(params): AuthQuery<UsageParams>,
) -> Response {
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
    AuthQuery(params): AuthQuery<TopKeysParams>,
) -> Response {
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

/// The query of `GET /v1/orgs/{org}/anomalies`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomaliesParams {
    /// RFC 3339 or `YYYY-MM-DD` (UTC); default 7 days before `to`.
    pub from: Option<String>,
    /// Exclusive; default now.
    pub to: Option<String>,
}

/// An org's anomalies over a range, oldest first.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Anomalies {
    pub org: String,
    pub from: String,
    pub to: String,
    pub anomalies: Vec<AnomalyView>,
}

/// One anomaly as the API shows it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct AnomalyView {
    pub id: String,
    /// The key, or `null` for the org as a whole.
    pub key: Option<String>,
    pub kind: String,
    /// The anomalous minute's start, RFC 3339 UTC.
    pub minute: String,
    pub score: f64,
    pub baseline: f64,
    pub spread: f64,
    pub observed: f64,
    pub explanation: String,
}

impl From<AnomalyRecord> for AnomalyView {
    fn from(r: AnomalyRecord) -> Self {
        AnomalyView {
            minute: query::render(&chrono_tz::Tz::UTC, r.minute_ms),
            id: r.id,
            key: r.key,
            kind: r.kind,
            score: r.score,
            baseline: r.baseline,
            spread: r.spread,
            observed: r.observed,
            explanation: r.explanation,
        }
    }
}

/// The checked `[from, to)` of an anomalies query: at most [`MAX_RANGE_DAYS`].
pub fn anomalies_range(p: &AnomaliesParams, now: i64) -> Result<(i64, i64), BadQuery> {
    let utc = chrono_tz::Tz::UTC;
    let to = match p.to.as_deref() {
        Some(s) => query::parse_instant(s, &utc)?,
        None => now,
    };
    let from = match p.from.as_deref() {
        Some(s) => query::parse_instant(s, &utc)?,
        None => to - 7 * DAY_MS,
    };
    if from >= to {
        return Err(BadQuery("`from` must be before `to`".into()));
    }
    if to - from > MAX_RANGE_DAYS * DAY_MS {
        return Err(BadQuery(format!(
            "the range may cover at most {MAX_RANGE_DAYS} days"
        )));
    }
    Ok((from, to))
}

async fn anomalies(
    State(state): State<Arc<ApiState>>,
    Path(org): Path<String>,
    AuthQuery(params): AuthQuery<AnomaliesParams>,
) -> Response {
    let (from, to) = match anomalies_range(&params, query::now_ms()) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match state.anomalies.read(&org, from, to).await {
        Ok(found) => Json(Anomalies {
            from: query::render(&chrono_tz::Tz::UTC, from),
            to: query::render(&chrono_tz::Tz::UTC, to),
            org,
            anomalies: found.into_iter().map(AnomalyView::from).collect(),
        })
        .into_response(),
        Err(e) => unavailable(&e),
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
