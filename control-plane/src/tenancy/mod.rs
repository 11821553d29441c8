//! Bounded context "tenancy" (Postgres schema `tenancy`): orgs, their users, tiers and API keys.
//!
//! Other contexts use this module's functions (e.g. [`keys::verify`] for the config server), never its
//! tables. Every change writes its audit row and its domain event (on `leaky.tenancy.v1`, through
//! [`crate::outbox::append`]) in the same transaction ([`crate::audit::record`]).

mod api;
pub mod feed;
pub mod keys;
mod keys_api;
pub mod orgs;
pub mod tiers;
pub mod users;
mod users_api;

use axum::Router;
use sqlx::PgConnection;

use crate::audit::{self, Change};
use crate::http::{ApiState, FieldError, Problem, ProblemKind};
use crate::outbox::TENANCY_TOPIC;

/// Writes `change`'s audit row and its domain event `kind` on `leaky.tenancy.v1` ([`audit::with_event`]).
async fn audited(
    conn: &mut PgConnection,
    kind: &'static str,
    aggregate: &'static str,
    change: Change<'_>,
) -> Result<(), sqlx::Error> {
    audit::with_event(conn, TENANCY_TOPIC, aggregate, kind, change).await?;
    Ok(())
}

/// Tenancy's failures. [`From<TenancyError> for Problem`] is the one place they become HTTP.
#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    #[error("{kind} `{id}` not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("the {kind} changed: its current ETag is \"{current}\"")]
    Stale { kind: &'static str, current: i64 },
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("no OS randomness for a key: {0}")]
    Random(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl TenancyError {
    pub(crate) fn not_found(kind: &'static str, id: impl ToString) -> Self {
        Self::NotFound {
            kind,
            id: id.to_string(),
        }
    }

    pub(crate) fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }
}

impl From<TenancyError> for Problem {
    fn from(e: TenancyError) -> Self {
        match e {
            TenancyError::NotFound { .. } => Problem::new(ProblemKind::NotFound, e.to_string()),
            TenancyError::Conflict(m) => Problem::new(ProblemKind::Conflict, m),
            TenancyError::Stale { .. } => {
                Problem::new(ProblemKind::PreconditionFailed, e.to_string())
            }
            TenancyError::Invalid(errors) => Problem::invalid(errors),
            TenancyError::Random(m) => {
                tracing::error!(error = %m, "no randomness for a key");
                Problem::new(ProblemKind::Internal, "internal error")
            }
            TenancyError::Db(db) if is_unique_violation(&db) => Problem::new(
                ProblemKind::Conflict,
                "an object with this unique value already exists",
            ),
            TenancyError::Db(db) => Problem::from(db),
        }
    }
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

impl From<FieldError> for TenancyError {
    fn from(e: FieldError) -> Self {
        Self::Invalid(vec![e])
    }
}

/// A display name: 1..=100 characters after trimming, no control characters.
pub(crate) fn check_name(field: &str, value: &str) -> Result<String, FieldError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > 100 {
        return Err(FieldError::new(field, "must be 1 to 100 characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// The OpenAPI paths of tenancy's admin routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    let mut doc = api::Doc::openapi();
    doc.merge(keys_api::Doc::openapi());
    doc.merge(users_api::Doc::openapi());
    doc
}

/// Tenancy's admin routes (mounted under `/v1`).
pub fn routes() -> Router<ApiState> {
    api::routes()
        .merge(keys_api::routes())
        .merge(users_api::routes())
}
