//! `GET /v1/orgs/{org}/statements` on the admin API: the analytics role's statements (issue 16,
//! "Reports and billing export") behind the control plane's auth and RBAC (`billing:read` in the
//! org). Like [`crate::usage`], the control plane forwards to the role and keeps no copy.
//!
//! The role's answer is passed through byte for byte — a closed statement's JSON or CSV is
//! reproducible, and re-encoding it here would break that. The types below only document the JSON
//! shape in the OpenAPI spec.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::apidoc::problems;
use crate::http::{parse_id, ApiQuery, ApiState, Principal, Problem};
use crate::usage::{client, default_zone, AnalyticsClient};

/// The query of `GET /v1/orgs/{org}/statements`.
#[derive(Debug, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatementQuery {
    /// `YYYY-MM` (monthly) or `YYYY-MM-DD` (daily). Absent: the list of closed statements.
    pub period: Option<String>,
    /// IANA zone of an open period's preview (default: the org's `time_zone`); a closed statement
    /// keeps the zone it was closed in.
    pub tz: Option<String>,
    /// `csv` or `json`; without it, CSV when `Accept` names `text/csv`, JSON otherwise.
    pub format: Option<String>,
    /// The year the list covers (default: this year and the last).
    pub year: Option<i32>,
}

/// One line: a model at one price version (or unpriced).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct StatementLine {
    pub model: String,
    /// The price version's `effective_from` (RFC 3339); null when unpriced.
    pub price_from: Option<String>,
    /// Price per million input tokens, decimal string.
    pub input_per_mtok: Option<String>,
    pub output_per_mtok: Option<String>,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Rounded half to even to 6 decimals, decimal string.
    pub amount: String,
    /// The model had no price in effect: amount 0.
    pub unpriced: bool,
}

/// A change to a closed period, carried by a later statement.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct StatementAdjustment {
    /// The closed period the change belongs to.
    pub period: String,
    #[serde(flatten)]
    pub line: StatementLine,
}

/// A statement's totals (lines plus adjustments).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct StatementTotals {
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub amount: String,
}

/// An org's daily or monthly statement.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct Statement {
    pub org: String,
    pub period: String,
    /// `day` or `month`.
    pub kind: String,
    pub tz: String,
    pub from: String,
    pub to: String,
    /// `closed` (stored, frozen bytes) or `open` (a preview computed now).
    pub status: String,
    pub currency: String,
    pub lines: Vec<StatementLine>,
    pub adjustments: Vec<StatementAdjustment>,
    pub totals: StatementTotals,
}

#[utoipa::path(
    get, path = "/v1/orgs/{org}/statements", tag = "usage",
    params(("org" = Uuid, Path, description = "Org id"), StatementQuery),
    responses(
        (status = 200, description = "With `period`: the statement (JSON, or CSV with `format=csv` / \
         `Accept: text/csv`; a closed period's bytes are always the same). Without: the closed \
         statements, `{\"org\", \"statements\": [{\"period\", \"kind\", \"tz\", \"href\"}]}`.",
         content(
            (Statement = "application/json", example = json!(example())),
            (String = "text/csv"),
         )),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
        (status = 503, response = problems::Unavailable),
    )
)]
/// An org's daily or monthly statement, or the list of its closed statements.
async fn get_statements(
    _: Principal,
    State(s): State<ApiState>,
    Extension(analytics): Extension<Option<Arc<AnalyticsClient>>>,
    Path(org): Path<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StatementQuery>,
) -> Result<Response, Problem> {
    let org = parse_id("org", &org)?;
    let mut q = q;
    default_zone(&s.pool, org, &mut q.tz).await?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let (kind, body) = client(&analytics)?
        .get_bytes(&format!("/v1/orgs/{org}/statements"), &q, accept)
        .await?;
    let mut r = Response::new(Body::from(body));
    let kind = HeaderValue::from_str(&kind)
        .unwrap_or_else(|_| HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CONTENT_TYPE, kind);
    Ok(r)
}

fn example() -> serde_json::Value {
    json!({
        "org": "0f8fad5b-d9cb-469f-a165-70867728950e", "period": "2026-10", "kind": "month",
        "tz": "UTC", "from": "2026-10-01T00:00:00Z", "to": "2026-11-01T00:00:00Z",
        "status": "closed", "currency": "USD",
        "lines": [{"model": "gpt-4o-mini", "price_from": "2024-07-18T00:00:00Z",
                   "input_per_mtok": "0.15", "output_per_mtok": "0.60", "requests": 10,
                   "prompt_tokens": 1079065, "completion_tokens": 44815, "amount": "0.188749",
                   "unpriced": false}],
        "adjustments": [],
        "totals": {"requests": 10, "prompt_tokens": 1079065, "completion_tokens": 44815,
                   "amount": "0.188749"},
    })
}

/// The OpenAPI paths of these routes.
#[derive(OpenApi)]
#[openapi(paths(get_statements))]
struct Doc;

/// The statement routes' OpenAPI paths.
pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// The statement routes (mounted under `/v1`), forwarding to `analytics` (`None`: 503 with a
/// reason).
pub fn routes(analytics: Option<AnalyticsClient>) -> Router<ApiState> {
    Router::new()
        .route("/orgs/{org}/statements", get(get_statements))
        .layer(Extension(analytics.map(Arc::new)))
}
