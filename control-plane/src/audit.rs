//! Bounded context "audit" (Postgres schema `audit`): who changed what, when. Other contexts call
//! [`record`] inside the transaction of their change, so a change and its audit row commit together or
//! not at all. `GET /v1/audit` lists the events.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::apidoc::{examples, problems};
use crate::http::{ApiQuery, ApiState, Page, Principal, Problem, MAX_PAGE};
use crate::outbox;

/// An audited change, as written by the context that made it.
pub struct Change<'a> {
    pub actor: &'a str,
    /// Verb in `kind.verb` form, e.g. `org.create`, `key.rotate`.
    pub action: &'a str,
    pub object_kind: &'a str,
    pub object_id: String,
    pub detail: serde_json::Value,
}

/// Writes one audit event on `conn` (which should be the change's own transaction).
pub async fn record(conn: &mut PgConnection, change: Change<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit.events (actor, action, object_kind, object_id, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(change.actor)
    .bind(change.action)
    .bind(change.object_kind)
    .bind(change.object_id)
    .bind(change.detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes `change`'s audit row and the domain event `kind` about it on `topic` (aggregate
/// `aggregate`/the change's object id; data: the audit detail plus the object's `id`) on `conn`, the
/// change's own transaction: the audit trail and the event stream cannot disagree.
pub async fn with_event(
    conn: &mut PgConnection,
    topic: &'static str,
    aggregate: &'static str,
    kind: &'static str,
    change: Change<'_>,
) -> Result<Uuid, sqlx::Error> {
    let mut data = change.detail.clone();
    if let Some(fields) = data.as_object_mut() {
        fields.insert("id".into(), change.object_id.clone().into());
    }
    let event = outbox::Event::on(topic, aggregate, &change.object_id, kind, data);
    record(&mut *conn, change).await?;
    outbox::append(conn, event).await
}

/// One audit event as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Event {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub object_kind: String,
    pub object_id: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// `?object=<id>&limit=&after=<event id>`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only events about this object id.
    pub object: Option<String>,
    /// Page size, 1..=100 (default 100).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// The `next` cursor (an event id) of the previous page.
    pub after: Option<i64>,
}

/// Events in the order they were written, optionally only those about one object.
pub async fn list(pool: &PgPool, q: &AuditQuery) -> Result<Page<Event>, Problem> {
    let limit = match q.limit.unwrap_or(MAX_PAGE) {
        n @ 1..=MAX_PAGE => i64::from(n),
        _ => return Err(Problem::field("limit", format!("must be 1..={MAX_PAGE}"))),
    };
    let rows: Vec<Event> = sqlx::query_as(
        "SELECT id, at, actor, action, object_kind, object_id, detail FROM audit.events
         WHERE ($1::text IS NULL OR object_id = $1) AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(q.object.as_deref())
    .bind(q.after.unwrap_or(0))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(Page::from_rows(rows, limit, |e| e.id.to_string()))
}

#[utoipa::path(
    get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses(
        (status = 200, description = "One page of events, in the order they were written", body = Page<Event>,
         example = json!({"items": [examples::event()], "next": "42"})),
        (status = 422, response = problems::Validation),
    )
)]
/// List audit events.
async fn list_events(
    _: Principal,
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Page<Event>>, Problem> {
    list(&state.pool, &q).await.map(Json)
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(list_events))]
struct Doc;

/// The OpenAPI paths of the audit routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <Doc as utoipa::OpenApi>::openapi()
}

/// `GET /audit` (mounted under `/v1`).
pub fn routes() -> Router<ApiState> {
    Router::new().route("/audit", get(list_events))
}
