//! Bounded context "flags" (Postgres schema `flags`): named feature flags — an on/off switch, a
//! percentage rollout and per-org overrides — managed through the admin API and pushed to the
//! proxies in the config snapshot.
//!
//! - **One evaluation.** Whether a flag is on for an org is decided by `leaky_config`'s
//!   [`Flag`](leaky_config::Flag) (override, then `enabled` and the org's stable bucket below
//!   `rollout_percent`), the same code every proxy runs; [`evaluate`] is the control plane reading a
//!   flag, `GET /v1/flags/{name}/evaluate?org=` its HTTP face.
//! - **Validation** is `leaky_config`'s too (names, percentages, org names, descriptions), so the API
//!   refuses exactly what a config file may not say, and a flag stored here always builds.
//! - **The config server** takes [`snapshot`] (flags in the YAML schema's [`FlagSpec`], ready to
//!   serialize into the pushed document) and merges it over the YAML base: a flag stored here
//!   replaces a base flag of the same name as a whole. Every change runs
//!   `pg_notify('leaky_config_changed', 'flags')` in its own transaction, so the config server
//!   wakes up exactly when the change is committed.
//! - **Concurrency.** Each flag has a `version` (its ETag), bumped by every change to it or its
//!   overrides. Replacing or deleting a flag needs `If-Match` (428 without, 412 when stale);
//!   setting or removing one org's override takes it optionally (an override is a set, not a
//!   read-modify-write). Every change writes its audit row in the same transaction.

mod api;
mod store;

use std::collections::BTreeMap;

use axum::Router;
use chrono::{DateTime, Utc};
use leaky_config::model::flags::{
    check_flag_description, check_flag_name, check_org_name, check_rollout_percent, KNOWN_FLAGS,
};
use leaky_config::{Flag as Evaluable, FlagSpec};
use serde::{Deserialize, Serialize};

use crate::http::{ApiState, FieldError, Problem, ProblemKind};

pub use store::{delete, remove_override, set_override, snapshot, upsert};

/// The channel the config server listens on; the payload names the context that changed.
pub const CONFIG_CHANNEL: &str = "leaky_config_changed";

/// A flag as stored and shown, with its overrides.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Flag {
    pub name: String,
    pub enabled: bool,
    /// 0..=100: the share of orgs (by stable bucket) the flag is on for while enabled.
    pub rollout_percent: u8,
    pub description: Option<String>,
    /// Per-org overrides by org name: `true`/`false` whatever `enabled` and the rollout say.
    pub orgs: BTreeMap<String, bool>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The ETag: bumped by every change to the flag or its overrides.
    pub version: i64,
}

impl Flag {
    /// The flag in the config schema, as the snapshot pushes it.
    pub fn spec(&self) -> FlagSpec {
        FlagSpec {
            enabled: self.enabled,
            rollout_percent: u64::from(self.rollout_percent),
            orgs: self.orgs.clone(),
            description: self.description.clone(),
        }
    }

    fn evaluable(&self) -> Evaluable {
        Evaluable::new(
            &self.name,
            self.enabled,
            self.rollout_percent,
            &self.orgs,
            self.description.clone(),
        )
    }
}

/// `PUT /v1/flags/{name}` body. Overrides are not part of it: they keep their values.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagBody {
    pub enabled: bool,
    /// 0..=100 (default 100).
    pub rollout_percent: Option<i64>,
    /// At most 500 characters.
    pub description: Option<String>,
}

/// A flag's validated settings.
pub(crate) struct Settings {
    pub enabled: bool,
    pub rollout_percent: i16,
    pub description: Option<String>,
}

/// A flag's value for one org, and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Evaluation {
    pub flag: String,
    /// The org evaluated for; absent: a request without an org.
    pub org: Option<String>,
    pub on: bool,
    /// `override`, `disabled`, `in-rollout`, `out-of-rollout`, `no-org` (a partial rollout reaches
    /// only requests with an org) or `default` (no flag stored: the gateway's built-in default).
    pub reason: String,
    /// The org's stable bucket (0..=99) for this flag; on when below `rollout_percent`.
    pub bucket: Option<u8>,
    /// The flag's version evaluated (absent for a built-in default).
    pub version: Option<i64>,
}

/// The flags context's failures. [`From<FlagsError> for Problem`] is the one place they become HTTP.
#[derive(Debug, thiserror::Error)]
pub enum FlagsError {
    #[error("flag `{0}` not found")]
    NotFound(String),
    #[error("flag `{name}` changed: its current ETag is \"{current}\"")]
    Stale { name: String, current: i64 },
    #[error("flag `{0}` does not exist, so no If-Match can match it")]
    Missing(String),
    #[error("flag `{0}` exists: send `If-Match` with the ETag you read to replace or delete it")]
    IfMatchRequired(String),
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<FlagsError> for Problem {
    fn from(e: FlagsError) -> Self {
        match e {
            FlagsError::NotFound(_) => Problem::new(ProblemKind::NotFound, e.to_string()),
            FlagsError::Stale { .. } | FlagsError::Missing(_) => {
                Problem::new(ProblemKind::PreconditionFailed, e.to_string())
            }
            FlagsError::IfMatchRequired(_) => {
                Problem::new(ProblemKind::PreconditionRequired, e.to_string())
            }
            FlagsError::Invalid(errors) => Problem::invalid(errors),
            FlagsError::Db(db) => Problem::from(db),
        }
    }
}

/// Collects the errors of `checks` (field, result); `Ok` when none failed.
fn refuse(checks: Vec<(&str, Result<(), String>)>) -> Result<(), FlagsError> {
    let errors: Vec<FieldError> = checks
        .into_iter()
        .filter_map(|(field, r)| r.err().map(|m| FieldError::new(field, m)))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(FlagsError::Invalid(errors))
    }
}

fn name_check(name: &str) -> (&'static str, Result<(), String>) {
    ("name", check_flag_name(name))
}

/// The body's settings, every bad field named.
pub(crate) fn settings(name: &str, body: &FlagBody) -> Result<Settings, FlagsError> {
    let percent = match body.rollout_percent {
        None => Ok(100),
        Some(p) => u64::try_from(p)
            .map_err(|_| format!("`rollout_percent` must be between 0 and 100, not {p}"))
            .and_then(check_rollout_percent),
    };
    let description = body
        .description
        .as_deref()
        .map_or(Ok(()), check_flag_description);
    refuse(vec![
        name_check(name),
        (
            "rollout_percent",
            percent.as_ref().map(|_| ()).map_err(Clone::clone),
        ),
        ("description", description),
    ])?;
    Ok(Settings {
        enabled: body.enabled,
        rollout_percent: percent.map_or(100, i16::from),
        description: body.description.clone(),
    })
}

/// A flag name and an org name from a path.
pub(crate) fn check_override(name: &str, org: &str) -> Result<(), FlagsError> {
    refuse(vec![name_check(name), ("org", check_org_name(org))])
}

/// Flag `name`'s value for `org` (none: a request without an org), decided by the same code as on
/// every proxy. A flag not stored here but read by the gateway's code answers its built-in default;
/// any other unknown flag is 404.
pub async fn evaluate(
    pool: &sqlx::PgPool,
    name: &str,
    org: Option<&str>,
) -> Result<Evaluation, FlagsError> {
    let org_check = org.map_or(Ok(()), check_org_name);
    refuse(vec![name_check(name), ("org", org_check)])?;
    let (flag, version) = match store::get(pool, name).await {
        Ok(f) => (f.evaluable(), Some(f.version)),
        Err(FlagsError::NotFound(n)) => match KNOWN_FLAGS.iter().find(|k| k.name == n) {
            Some(known) => (Evaluable::builtin(known), None),
            None => return Err(FlagsError::NotFound(n)),
        },
        Err(e) => return Err(e),
    };
    let e = flag.evaluate(org);
    Ok(Evaluation {
        flag: name.to_owned(),
        org: org.map(str::to_owned),
        on: e.on,
        reason: e.reason.as_str().to_owned(),
        bucket: org.map(|o| leaky_config::model::flags::bucket(name, o)),
        version,
    })
}

/// Flag `name` with its overrides.
pub async fn get(pool: &sqlx::PgPool, name: &str) -> Result<Flag, FlagsError> {
    refuse(vec![name_check(name)])?;
    store::get(pool, name).await
}

/// Every flag, by name.
pub async fn list(pool: &sqlx::PgPool) -> Result<Vec<Flag>, FlagsError> {
    store::list(pool).await
}

/// The OpenAPI paths of the flags routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <api::Doc as utoipa::OpenApi>::openapi()
}

/// The flags' admin routes (mounted under `/v1`).
pub fn routes() -> Router<ApiState> {
    api::routes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn body(percent: Option<i64>, description: Option<&str>) -> FlagBody {
        FlagBody {
            enabled: true,
            rollout_percent: percent,
            description: description.map(str::to_owned),
        }
    }

    fn fields(e: FlagsError) -> Vec<String> {
        match e {
            FlagsError::Invalid(errors) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("not a validation error: {other}"),
        }
    }

    #[test]
    fn settings_default_to_a_full_rollout_and_name_every_bad_field() {
        let s = settings("checkout", &body(None, None)).unwrap();
        assert_eq!((s.enabled, s.rollout_percent), (true, 100));
        let long = "x".repeat(501);
        let e = settings("Bad Name", &body(Some(101), Some(&long)))
            .err()
            .unwrap();
        assert_eq!(fields(e), ["name", "rollout_percent", "description"]);
        let e = settings("ok", &body(Some(-1), None)).err().unwrap();
        assert_eq!(fields(e), ["rollout_percent"]);
    }

    #[test]
    fn overrides_check_the_flag_and_org_names() {
        assert!(check_override("checkout", "Acme Corp").is_ok());
        let e = check_override("checkout", " acme").err().unwrap();
        assert_eq!(fields(e), ["org"]);
    }
}
