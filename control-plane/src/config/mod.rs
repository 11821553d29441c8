//! Bounded context "config" (Postgres schema `config`): the config server. It merges the YAML base
//! with what other contexts own (tenancy's tiers and keys, flags) into versioned, hashed snapshots,
//! pushes them to proxies over watch streams (full snapshots for structural changes, deltas for
//! keys), records each proxy's ACK/NACK, and rolls back. The protocol is `docs/config-protocol.md`.
//!
//! - [`render`]: pure merging, hashing and validation (the data plane's own loader).
//! - [`store`]: the schema's rows.
//! - [`hub`]: the version in force in this process, publication under an advisory lock, fan-out.
//! - `watch`: the NDJSON stream; `api`: the admin routes.

mod api;
pub mod hub;
pub mod render;
pub mod store;
mod watch;

use axum::{Extension, Router};
use std::sync::Arc;

use crate::http::{ApiState, FieldError, Problem, ProblemKind};
pub use hub::{Hub, Publish};

/// The config context's failures; [`From<ConfigError> for Problem`] is where they become HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The merged document (or the base) does not validate: every error, `file:line:col: message`.
    #[error("the config is invalid")]
    Invalid(Vec<String>),
    #[error("config version {0} not found")]
    NoVersion(i64),
    /// No version and no base to make one from yet.
    #[error("no config published yet: PUT /v1/config/base first")]
    NoBase,
    #[error("a stored version does not decode: {0}")]
    Corrupt(#[source] serde_json::Error),
    #[error(transparent)]
    Tenancy(#[from] crate::tenancy::TenancyError),
    #[error(transparent)]
    Flags(#[from] crate::flags::FlagsError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<ConfigError> for Problem {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Invalid(errors) => {
                let mut p = Problem::invalid(
                    errors
                        .into_iter()
                        .map(|m| FieldError::new("document", m))
                        .collect(),
                );
                p.detail =
                    "the config does not validate (errors as check-config prints them)".into();
                p
            }
            ConfigError::NoVersion(_) => Problem::new(ProblemKind::NotFound, e.to_string()),
            ConfigError::NoBase => Problem::new(ProblemKind::Unavailable, e.to_string()),
            ConfigError::Corrupt(_) => {
                tracing::error!(error = %e, "config version corrupt");
                Problem::new(ProblemKind::Internal, "internal error")
            }
            ConfigError::Tenancy(t) => t.into(),
            ConfigError::Flags(f) => f.into(),
            ConfigError::Db(d) => d.into(),
        }
    }
}

/// The OpenAPI paths of the config routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    api::Doc::openapi()
}

/// The config server's admin routes (mounted under `/v1`), served from `hub`.
pub fn routes(hub: Arc<Hub>) -> Router<ApiState> {
    api::routes().layer(Extension(hub))
}
