//! Admin routes of the ledger: an org's balance, its entries (newest first) and platform grants
//! (`Idempotency-Key` required; audited).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, OpenApi};

use super::commands::grant_with;
use super::{balance as read_balance, entries, examples, Balance, Entry, LedgerError};
use crate::apidoc::problems;
use crate::audit::{self, Change};
use crate::http::{
    parse_id, ApiJson, ApiQuery, ApiState, FieldError, Page, Principal, Problem, MAX_PAGE,
};
use crate::tenancy::orgs;

/// Largest grant in one call.
const MAX_GRANT: i64 = 1_000_000_000_000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct LedgerQuery {
    /// Page size, 1..=100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The `next` cursor of the previous page (entries older than it).
    cursor: Option<String>,
}

/// `POST /v1/orgs/{org}/grants` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    /// 1..=10^12.
    pub tokens: i64,
    /// Why (shown in the ledger and the audit log), 1..=200 characters.
    pub reason: String,
    /// When what remains of the grant expires (future); never if absent.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

#[utoipa::path(
    get, path = "/v1/orgs/{org}/balance", tag = "ledger",
    params(("org" = Uuid, Path, description = "Org id")),
    responses(
        (status = 200, description = "The org's token balance (zeros before its first credit)", body = Balance,
         example = json!(examples::balance())),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// Show an org's token balance.
async fn get_balance(
    _: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
) -> Result<Json<Balance>, Problem> {
    let org = parse_id("org", &org)?;
    orgs::get(&s.pool, org).await?;
    let mut balance = read_balance(&s.pool, org).await?;
    balance.as_of = s.clock.now();
    Ok(Json(balance))
}

#[utoipa::path(
    get, path = "/v1/orgs/{org}/ledger", tag = "ledger",
    params(("org" = Uuid, Path, description = "Org id"), LedgerQuery),
    responses(
        (status = 200, description = "One page of the org's ledger entries, newest first", body = Page<Entry>,
         example = json!(examples::page())),
        (status = 404, response = problems::NotFound),
        (status = 422, response = problems::Validation),
    )
)]
/// List an org's ledger entries.
async fn list_entries(
    _: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
    ApiQuery(q): ApiQuery<LedgerQuery>,
) -> Result<Json<Page<Entry>>, Problem> {
    let org = parse_id("org", &org)?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return Err(Problem::field("limit", format!("must be 1..={MAX_PAGE}")));
    }
    let cursor = q
        .cursor
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| Problem::field("cursor", "must be a `next` value of a previous page"))
        })
        .transpose()?;
    orgs::get(&s.pool, org).await?;
    let limit = i64::from(limit);
    let rows = entries(&s.pool, org, cursor, limit + 1).await?;
    Ok(Json(Page::from_rows(rows, limit, |e| {
        e.version.to_string()
    })))
}

#[utoipa::path(
    post, path = "/v1/orgs/{org}/grants", tag = "ledger",
    params(
        ("org" = Uuid, Path, description = "Org id"),
        ("Idempotency-Key" = String, Header, description = "1..=200 characters; a repeat returns the first grant")
    ),
    request_body(content = NewGrant, example = json!(examples::grant_body())),
    responses(
        (status = 201, description = "The `granted` entry (the same one again for a repeated key)", body = Entry,
         example = json!(examples::granted())),
        (status = 400, response = problems::MalformedJson),
        (status = 404, response = problems::NotFound),
        (status = 409, response = problems::Conflict),
        (status = 413, response = problems::PayloadTooLarge),
        (status = 415, response = problems::UnsupportedMediaType),
        (status = 422, response = problems::Validation),
    )
)]
/// Grant tokens to an org (platform grant, support credit).
async fn create_grant(
    p: Principal,
    State(s): State<ApiState>,
    Path(org): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewGrant>,
) -> Result<(StatusCode, Json<Entry>), Problem> {
    let org = parse_id("org", &org)?;
    let key = idempotency_key(&headers)?;
    check_grant(&body, s.clock.now())?;
    let mut tx = crate::db::begin(&s.pool).await.map_err(LedgerError::from)?;
    orgs::lock_live(&mut tx, org).await?;
    let data = json!({ "reason": body.reason.trim(), "actor": p.subject });
    let reference = format!("grant:{key}");
    let (entry, fresh) =
        grant_with(&mut tx, org, body.tokens, &reference, body.expires_at, data).await?;
    if fresh {
        let change = Change {
            actor: &p.subject,
            action: "ledger.grant",
            object_kind: "org",
            object_id: org.to_string(),
            detail: json!({ "entry": entry.id, "tokens": entry.tokens, "reason": body.reason.trim() }),
        };
        audit::record(&mut tx, change)
            .await
            .map_err(LedgerError::from)?;
    }
    tx.commit().await.map_err(LedgerError::from)?;
    Ok((StatusCode::CREATED, Json(entry)))
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if key.is_empty() || key.len() > 200 {
        return Err(Problem::field(
            "Idempotency-Key",
            "header required, 1 to 200 characters",
        ));
    }
    Ok(key.to_owned())
}

fn check_grant(g: &NewGrant, now: DateTime<Utc>) -> Result<(), Problem> {
    let mut errors = Vec::new();
    if !(1..=MAX_GRANT).contains(&g.tokens) {
        errors.push(FieldError::new(
            "tokens",
            format!("must be 1..={MAX_GRANT}"),
        ));
    }
    let reason = g.reason.trim();
    if reason.is_empty() || reason.chars().count() > 200 || reason.chars().any(char::is_control) {
        errors.push(FieldError::new(
            "reason",
            "must be 1 to 200 characters, no control characters",
        ));
    }
    if g.expires_at.is_some_and(|t| t <= now) {
        errors.push(FieldError::new("expires_at", "must be in the future"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Problem::invalid(errors))
    }
}

/// The OpenAPI paths of these routes.
#[derive(OpenApi)]
#[openapi(paths(get_balance, list_entries, create_grant))]
struct Doc;

/// The ledger's OpenAPI paths.
pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// The ledger's admin routes (mounted under `/v1`).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/orgs/{org}/balance", get(get_balance))
        .route("/orgs/{org}/ledger", get(list_entries))
        .route("/orgs/{org}/grants", post(create_grant))
}
