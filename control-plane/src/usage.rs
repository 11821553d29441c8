//! `GET /v1/orgs/{org}/usage`, `GET /v1/orgs/{org}/usage/top-keys` and
//! `GET /v1/orgs/{org}/anomalies` on the admin API: the analytics role's API (issue 16) behind the
//! control plane's auth and RBAC (`billing:read` in the org, see `identity::rbac`).
//!
//! A usage query without `tz` is answered in the org's own time zone (`tenancy.orgs.time_zone`,
//! see [`org_time_zone`]): the control plane adds it to the query it forwards.
//!
//! The control plane does not read Cassandra itself: it forwards the checked query to the analytics
//! role (`LEAKY_ANALYTICS_URL`, with `LEAKY_ANALYTICS_TOKEN` as its bearer token) and answers with
//! the role's report, decoded into the typed shapes below (which are the OpenAPI schema and DESIGN.md's
//! full-stack contract: `total` and `series[]` with `requests`, `prompt_tokens`,
//! `completion_tokens`, `total_tokens`, and `start` per bucket). Keeping Cassandra's driver out of
//! this process keeps its build and its failure modes apart: analytics down is a 503 here, nothing
//! more.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::apidoc::problems;
use crate::http::{parse_id, ApiQuery, ApiState, Principal, Problem, ProblemKind};
use crate::tenancy::orgs;
use sqlx::PgPool;
use uuid::Uuid;

/// How long a usage query may take at the analytics role.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the analytics role answers.
#[derive(Debug, Clone)]
pub struct AnalyticsClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AnalyticsClient {
    pub fn new(base: &str, token: Option<String>) -> AnalyticsClient {
        AnalyticsClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    /// From `LEAKY_ANALYTICS_URL` / `LEAKY_ANALYTICS_TOKEN`; `None` when the URL is unset.
    pub fn from_env() -> Option<AnalyticsClient> {
        let url = std::env::var("LEAKY_ANALYTICS_URL")
            .ok()
            .filter(|u| !u.is_empty())?;
        let token = std::env::var("LEAKY_ANALYTICS_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        Some(AnalyticsClient::new(&url, token))
    }

    /// GETs `path` with `query` and decodes the JSON answer; see [`AnalyticsClient::send`].
    async fn get<Q: Serialize, T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<T, Problem> {
        let resp = self.send(path, query, "application/json").await?;
        resp.json().await.map_err(|e| unavailable(&e))
    }

    /// GETs `path` with `query` and `accept` and returns the answer's content type and bytes
    /// untouched (statements are byte-reproducible); see [`AnalyticsClient::send`].
    pub async fn get_bytes<Q: Serialize>(
        &self,
        path: &str,
        query: &Q,
        accept: &str,
    ) -> Result<(String, bytes::Bytes), Problem> {
        let resp = self.send(path, query, accept).await?;
        let kind = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let body = resp.bytes().await.map_err(|e| unavailable(&e))?;
        Ok((kind, body))
    }

    /// The one forwarding path: GETs `path` with `query`, the role's token and `accept`; a
    /// successful answer is returned, the role's own 400 becomes a 422 with its reason, anything
    /// else that fails a 503.
    async fn send<Q: Serialize>(
        &self,
        path: &str,
        query: &Q,
        accept: &str,
    ) -> Result<reqwest::Response, Problem> {
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .header(reqwest::header::ACCEPT, accept)
            .timeout(TIMEOUT);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        // A client span of the forwarded call (ended when this returns); analytics continues it.
        let call = leaky_telemetry::http::client("GET analytics");
        if let Some((_, tp)) = &call {
            req = req.header("traceparent", tp);
        }
        let resp = req.send().await.map_err(|e| unavailable(&e))?;
        if resp.status() == reqwest::StatusCode::BAD_REQUEST {
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            let detail = body["detail"].as_str().unwrap_or("invalid query");
            return Err(Problem::field("query", detail.to_owned()));
        }
        if !resp.status().is_success() {
            return Err(unavailable(&resp.status()));
        }
        Ok(resp)
    }
}

/// The role could not be asked (unreachable, failed, or answered garbage): a 503.
fn unavailable(e: &dyn std::fmt::Display) -> Problem {
    tracing::warn!(error = %e, "analytics request failed");
    Problem::new(
        ProblemKind::Unavailable,
        "the analytics service is unreachable; retry later",
    )
}

/// The query of `GET /v1/orgs/{org}/usage`.
#[derive(Debug, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Start (inclusive): RFC 3339, or `YYYY-MM-DD` (local midnight in `tz`). Default: 30 days before `to`.
    pub from: Option<String>,
    /// End (exclusive), same forms. Default: now.
    pub to: Option<String>,
    /// `minute`, `hour`, `day` (default) or `month`.
    pub granularity: Option<String>,
    /// Split the series by `model`, `key` or `provider`.
    pub group_by: Option<String>,
    /// IANA time zone of the buckets (default: the org's `time_zone`); days and months start at
    /// local midnight.
    pub tz: Option<String>,
    /// Only this API key's usage.
    pub key: Option<String>,
    /// Only this model's usage.
    pub model: Option<String>,
    /// Only this provider's usage.
    pub provider: Option<String>,
}

/// Sums over a bucket or a range. Counts are exact integers; `cost` is a decimal string.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct UsageTotals {
    pub requests: i64,
    /// Requests answered with a 4xx or 5xx.
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    /// Sum of request latencies in microseconds (divide by `requests` for the mean).
    pub latency_us: i64,
    /// Cost in the price table's currency, exact decimal (`"0"` until prices are configured).
    pub cost: String,
}

/// One bucket of a usage series.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct UsagePoint {
    /// The bucket's start, RFC 3339 in the query's time zone.
    pub start: String,
    /// The model, key or provider (with `group_by`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// An org's usage over a range.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct UsageReport {
    pub org: String,
    pub from: String,
    pub to: String,
    pub granularity: String,
    pub tz: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    pub total: UsageTotals,
    /// One object per bucket (every bucket without `group_by`; with it, each bucket × value that has usage).
    pub series: Vec<UsagePoint>,
}

/// The query of `GET /v1/orgs/{org}/usage/top-keys`.
#[derive(Debug, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TopKeysQuery {
    /// Start (whole UTC days), RFC 3339 or `YYYY-MM-DD`. Default: 30 days before `to`.
    pub from: Option<String>,
    /// End (exclusive). Default: now.
    pub to: Option<String>,
    /// How many keys, 1..=1000 (default 10).
    pub limit: Option<u32>,
    /// `total_tokens` (default), `requests`, `prompt_tokens` or `completion_tokens`.
    pub by: Option<String>,
}

/// One key's usage.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct KeyUsage {
    pub key_id: String,
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// The keys that used the most over a range.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct TopKeys {
    pub org: String,
    pub from: String,
    pub to: String,
    pub by: String,
    pub keys: Vec<KeyUsage>,
}

/// The configured client, or the 503 saying analytics is not configured (the usage and statement
/// routes' shared check).
pub(crate) fn client(c: &Option<Arc<AnalyticsClient>>) -> Result<&AnalyticsClient, Problem> {
    c.as_deref().ok_or_else(|| {
        Problem::new(
            ProblemKind::Unavailable,
            "usage analytics is not configured (LEAKY_ANALYTICS_URL)",
        )
    })
}

#[utoipa::path(
    get, path = "/v1/orgs/{org}/usage", tag = "usage",
    params(("org" = Uuid, Path, description = "Org id"), UsageQuery),
    responses(
        (status = 200, description = "The org's usage: totals and one entry per bucket", body = UsageReport,
         example = json!(example_report())),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
        (status = 503, response = problems::Unavailable),
    )
)]
/// An org's token usage over time (from the analytics service).
async fn get_usage(
    _: Principal,
    State(s): State<ApiState>,
    Extension(analytics): Extension<Option<Arc<AnalyticsClient>>>,
    Path(org): Path<String>,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Json<UsageReport>, Problem> {
    let org = parse_id("org", &org)?;
    let mut q = q;
    default_zone(&s.pool, org, &mut q.tz).await?;
    let report = client(&analytics)?
        .get(&format!("/v1/orgs/{org}/usage"), &q)
        .await?;
    Ok(Json(report))
}

#[utoipa::path(
    get, path = "/v1/orgs/{org}/usage/top-keys", tag = "usage",
    params(("org" = Uuid, Path, description = "Org id"), TopKeysQuery),
    responses(
        (status = 200, description = "The org's keys ranked by usage", body = TopKeys,
         example = json!(example_top_keys())),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
        (status = 503, response = problems::Unavailable),
    )
)]
/// The org's API keys that used the most over a range.
async fn get_top_keys(
    _: Principal,
    State(s): State<ApiState>,
    Extension(analytics): Extension<Option<Arc<AnalyticsClient>>>,
    Path(org): Path<String>,
    ApiQuery(q): ApiQuery<TopKeysQuery>,
) -> Result<Json<TopKeys>, Problem> {
    let org = parse_id("org", &org)?;
    orgs::get(&s.pool, org).await?;
    let top = client(&analytics)?
        .get(&format!("/v1/orgs/{org}/usage/top-keys"), &q)
        .await?;
    Ok(Json(top))
}

/// The org's IANA time zone (`UTC` unless set on the org): what usage and statement routes pass
/// to analytics when the caller names no `tz`. A 404 problem when the org does not exist.
pub async fn org_time_zone(pool: &PgPool, org: Uuid) -> Result<String, Problem> {
    Ok(orgs::get(pool, org).await?.time_zone)
}

/// Sets `tz` to the org's zone when the caller gave none (a 404 problem when the org does not
/// exist, whether or not `tz` was given).
pub(crate) async fn default_zone(
    pool: &PgPool,
    org: Uuid,
    tz: &mut Option<String>,
) -> Result<(), Problem> {
    let zone = org_time_zone(pool, org).await?;
    if tz.as_deref().is_none_or(str::is_empty) {
        *tz = Some(zone);
    }
    Ok(())
}

/// The query of `GET /v1/orgs/{org}/anomalies`.
#[derive(Debug, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AnomaliesQuery {
    /// Start (inclusive), RFC 3339 or `YYYY-MM-DD` (UTC). Default: 7 days before `to`.
    pub from: Option<String>,
    /// End (exclusive). Default: now. At most 31 days after `from`.
    pub to: Option<String>,
}

/// One detected usage anomaly (see docs/analytics.md, "Anomaly detection").
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct Anomaly {
    /// Stable per (org, key, kind, minute): the `id` of its `usage.anomaly` event too.
    pub id: String,
    /// The API key, or `null` when the org as a whole is anomalous.
    pub key: Option<String>,
    /// `token_spike`, `request_spike`, `model_switch` or `error_rate_jump`.
    pub kind: String,
    /// The anomalous minute (event time), RFC 3339 UTC.
    pub minute: String,
    /// How far above the baseline, in spreads (share points for a model switch).
    pub score: f64,
    /// The baseline per minute (a ratio 0..1 for error rate and model share).
    pub baseline: f64,
    pub spread: f64,
    /// What the minute showed, same unit as `baseline`.
    pub observed: f64,
    pub explanation: String,
}

/// An org's anomalies over a range, oldest first.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct Anomalies {
    pub org: String,
    pub from: String,
    pub to: String,
    pub anomalies: Vec<Anomaly>,
}

#[utoipa::path(
    get, path = "/v1/orgs/{org}/anomalies", tag = "usage",
    params(("org" = Uuid, Path, description = "Org id"), AnomaliesQuery),
    responses(
        (status = 200, description = "The org's usage anomalies, oldest first", body = Anomalies,
         example = json!(example_anomalies())),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
        (status = 503, response = problems::Unavailable),
    )
)]
/// Usage anomalies detected for the org and its keys (from the analytics service).
async fn get_anomalies(
    _: Principal,
    State(s): State<ApiState>,
    Extension(analytics): Extension<Option<Arc<AnalyticsClient>>>,
    Path(org): Path<String>,
    ApiQuery(q): ApiQuery<AnomaliesQuery>,
) -> Result<Json<Anomalies>, Problem> {
    let org = parse_id("org", &org)?;
    orgs::get(&s.pool, org).await?;
    let found = client(&analytics)?
        .get(&format!("/v1/orgs/{org}/anomalies"), &q)
        .await?;
    Ok(Json(found))
}

fn example_anomalies() -> serde_json::Value {
    json!({
        "org": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "from": "2026-03-01T00:00:00Z", "to": "2026-03-08T00:00:00Z",
        "anomalies": [{"id": "5e1f0c3a-8d2b-8c4e-9a7f-1b2c3d4e5f60",
                       "key": "3d2c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a", "kind": "token_spike",
                       "minute": "2026-03-04T14:07:00Z", "score": 389.2, "baseline": 3147.0,
                       "spread": 116.0, "observed": 48200.0,
                       "explanation": "tokens/min 48,200 vs baseline 3,147 ± 116 (score 389)"}],
    })
}

fn example_report() -> serde_json::Value {
    let totals = |r: i64, p: i64, c: i64| {
        json!({"requests": r, "errors": 0, "prompt_tokens": p, "completion_tokens": c,
               "total_tokens": p + c, "latency_us": r * 812_000, "cost": "0"})
    };
    let point = |start: &str, r, p, c| {
        let mut v = totals(r, p, c);
        v["start"] = json!(start);
        v
    };
    json!({
        "org": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "from": "2026-03-01T00:00:00Z", "to": "2026-03-03T00:00:00Z",
        "granularity": "day", "tz": "UTC",
        "total": totals(5, 1200, 300),
        "series": [point("2026-03-01T00:00:00Z", 3, 700, 200), point("2026-03-02T00:00:00Z", 2, 500, 100)],
    })
}

fn example_top_keys() -> serde_json::Value {
    json!({
        "org": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "from": "2026-03-01T00:00:00Z", "to": "2026-03-31T00:00:00Z", "by": "total_tokens",
        "keys": [{"key_id": "3d2c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a", "requests": 40, "errors": 1,
                  "prompt_tokens": 9000, "completion_tokens": 3000, "total_tokens": 12000,
                  "latency_us": 31_000_000, "cost": "0"}],
    })
}

/// The OpenAPI paths of these routes.
#[derive(OpenApi)]
#[openapi(paths(get_usage, get_top_keys, get_anomalies))]
struct Doc;

/// The usage routes' OpenAPI paths.
pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// The usage routes (mounted under `/v1`), forwarding to `analytics` (`None`: 503 with a reason).
pub fn routes(analytics: Option<AnalyticsClient>) -> Router<ApiState> {
    Router::new()
        .route("/orgs/{org}/usage", get(get_usage))
        .route("/orgs/{org}/usage/top-keys", get(get_top_keys))
        .route("/orgs/{org}/anomalies", get(get_anomalies))
        .layer(Extension(analytics.map(Arc::new)))
}
