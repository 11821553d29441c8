//! The statement and price routes of the role's API (mounted by [`crate::api::router`], behind the
//! same bearer token):
//!
//! - `GET /v1/orgs/{org}/statements?period=2026-11|2026-11-29[&tz=][&format=csv|json]`: a closed
//!   period answers its stored bytes exactly; an open one (or one over but not yet closed) a preview
//!   computed now with `"status":"open"`, in `tz`, else the org's zone ([`crate::zones`]), else
//!   UTC. CSV with `format=csv` or `Accept: text/csv`.
//! - `GET /v1/orgs/{org}/statements[?year=]`: the closed statements (this and last year by default).
//! - `GET /v1/prices`; `PUT /v1/prices/{model}`: a new version, effective now or later (a version
//!   in effect already is immutable: 409).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use chrono::Datelike;
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;

use crate::prices::{self, PriceVersion, PutError};
use crate::problem::{problem, AuthQuery, Authorized, TokenState};
use crate::query::BadQuery;
use crate::reports::period::Period;
use crate::reports::{db, statement};
use crate::store::{Store, StoreError};

/// What the handlers share.
pub struct ReportsState {
    pub store: Arc<Store>,
    /// The role's bearer token (`None`: open).
    pub token: Option<String>,
}

/// The statement and price routes.
pub fn routes(store: Arc<Store>, token: Option<String>) -> Router {
    Router::new()
        .route("/v1/orgs/{org}/statements", get(statements))
        .route("/v1/prices", get(prices))
        .route("/v1/prices/{model}", put(put_price))
        .with_state(Arc::new(ReportsState { store, token }))
}

impl TokenState for ReportsState {
    fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

fn unavailable(e: &StoreError) -> Response {
    tracing::warn!(error = %e, "statement or price request failed");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "Service unavailable",
        "the analytics store is not reachable; retry later",
    )
}

/// `GET /v1/orgs/{org}/statements` query string.
#[derive(Debug, Default, Deserialize)]
pub struct StatementParams {
    /// `YYYY-MM` (monthly) or `YYYY-MM-DD` (daily); absent: the list of closed statements.
    pub period: Option<String>,
    /// The zone of an open period's preview (a closed statement keeps the zone it was closed in).
    pub tz: Option<String>,
    /// `csv` or `json` (default: JSON unless `Accept` asks for `text/csv`).
    pub format: Option<String>,
    /// The year the list covers (default: this year and the last).
    pub year: Option<i32>,
}

fn wants_csv(p: &StatementParams, headers: &HeaderMap) -> Result<bool, BadQuery> {
    match p.format.as_deref() {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(other) => Err(BadQuery(format!(
            "format {other:?} is neither csv nor json"
        ))),
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv"))),
    }
}

fn bytes(csv: bool, body: String) -> Response {
    let kind = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/json"
    };
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

pub async fn statements(
    State(state): State<Arc<ReportsState>>,
    Path(org): Path<String>,
    headers: HeaderMap,
    AuthQuery(params): AuthQuery<StatementParams>,
) -> Response {
    match params.period.as_deref() {
        None => list(&state, &org, params.year).await,
        Some(label) => match wants_csv(&params, &headers) {
            Ok(csv) => one(&state, &org, label, params.tz.as_deref(), csv).await,
            Err(e) => e.into_response(),
        },
    }
}

/// The preview's zone: `tz` when given, else the org's own zone as analytics learnt it, else UTC.
async fn preview_tz(store: &Store, org: &str, tz: Option<&str>) -> Result<Tz, Response> {
    match tz {
        None | Some("") => match crate::zones::get(store, org).await {
            Ok(zone) => Ok(zone.unwrap_or(Tz::UTC)),
            Err(e) => Err(unavailable(&e)),
        },
        Some(name) => name
            .parse()
            .map_err(|_| BadQuery(format!("unknown time zone {name:?}")).into_response()),
    }
}

/// One period: the stored bytes when closed, a preview otherwise.
async fn one(
    state: &ReportsState,
    org: &str,
    label: &str,
    tz: Option<&str>,
    csv: bool,
) -> Response {
    let tz = match preview_tz(&state.store, org, tz).await {
        Ok(tz) => tz,
        Err(r) => return r,
    };
    let period = match Period::parse(label, tz) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    match db::get(&state.store, org, label).await {
        Ok(Some(s)) => return bytes(csv, if csv { s.csv } else { s.json }),
        Ok(None) => {}
        Err(e) => return unavailable(&e),
    }
    let book = match prices::load(&state.store).await {
        Ok(b) => b,
        Err(e) => return unavailable(&e),
    };
    match crate::reports::compose(&state.store, &book, org, &period, false).await {
        Ok(c) if csv => bytes(true, statement::to_csv(&c.statement)),
        Ok(c) => bytes(false, statement::to_json(&c.statement)),
        Err(e) => unavailable(&e),
    }
}

async fn list(state: &ReportsState, org: &str, year: Option<i32>) -> Response {
    let years = match year {
        Some(y) => vec![y],
        None => {
            let y = chrono::Utc::now().year();
            vec![y - 1, y]
        }
    };
    match db::list(&state.store, org, &years).await {
        Ok(closed) => {
            let items: Vec<_> = closed
                .iter()
                .map(|s| {
                    json!({
                        "period": s.period,
                        "kind": s.kind,
                        "tz": s.tz,
                        "href": format!("/v1/orgs/{org}/statements?period={}", s.period),
                    })
                })
                .collect();
            Json(json!({ "org": org, "statements": items })).into_response()
        }
        Err(e) => unavailable(&e),
    }
}

pub async fn prices(State(state): State<Arc<ReportsState>>, _: Authorized) -> Response {
    match prices::load(&state.store).await {
        Ok(book) => {
            let versions: Vec<&PriceVersion> = book.versions().collect();
            Json(json!({ "currency": book.currency(), "prices": versions })).into_response()
        }
        Err(e) => unavailable(&e),
    }
}

/// `PUT /v1/prices/{model}` body.
#[derive(Debug, Deserialize)]
pub struct PriceBody {
    /// RFC 3339, a whole UTC hour, not in the past.
    pub effective_from: String,
    /// Decimal strings (`"2.50"`): prices are exact.
    pub input_per_mtok: Decimal,
    pub output_per_mtok: Decimal,
    /// Default `USD`.
    pub currency: Option<String>,
}

pub async fn put_price(
    State(state): State<Arc<ReportsState>>,
    Path(model): Path<String>,
    _: Authorized,
    body: Result<Json<PriceBody>, JsonRejection>,
) -> Response {
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => return BadQuery(e.body_text()).into_response(),
    };
    let Ok(from) = chrono::DateTime::parse_from_rfc3339(&body.effective_from) else {
        return BadQuery("effective_from must be RFC 3339".into()).into_response();
    };
    let version = PriceVersion {
        model,
        effective_from: from.timestamp_millis(),
        input_per_mtok: body.input_per_mtok,
        output_per_mtok: body.output_per_mtok,
        currency: body.currency.unwrap_or_else(|| "USD".into()),
    };
    let now = chrono::Utc::now().timestamp_millis();
    match prices::put(&state.store, &version, now).await {
        Ok(_) => Json(version).into_response(),
        Err(PutError::Invalid(m)) => BadQuery(m).into_response(),
        Err(PutError::Immutable(m)) => problem(
            StatusCode::CONFLICT,
            "conflict",
            "Price version is immutable",
            &m,
        ),
        Err(PutError::Store(e)) => unavailable(&e),
    }
}
