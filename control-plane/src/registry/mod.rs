//! Bounded context "registry" (Postgres schema `registry`): the live instances of the system — proxies,
//! control planes, analytics — without Eureka. An instance registers itself under an id it chooses
//! (`PUT`, an idempotent upsert), sends heartbeats, and cancels on shutdown. Listing derives each
//! instance's `status` from its last heartbeat: `up` within [`DOWN_AFTER`], `down` after it, and gone
//! (deleted by the listing query itself) after [`EXPIRE_AFTER`].
//!
//! "Now" is the app's injected [`crate::clock::Clock`], bound into the SQL, never Postgres' `now()`.
//! Register and cancel are audited; heartbeats are not (too chatty).

mod api;

use axum::Router;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;

use crate::audit::{self, Change};
use crate::http::{ApiState, FieldError, Problem, ProblemKind};

/// An instance whose last heartbeat is older than this is `down`.
pub const DOWN_AFTER: Duration = Duration::seconds(30);
/// An instance whose last heartbeat is older than this is no longer listed, and is deleted.
pub const EXPIRE_AFTER: Duration = Duration::minutes(10);

/// What an instance does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceRole {
    Proxy,
    ControlPlane,
    Analytics,
}

impl InstanceRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::ControlPlane => "control-plane",
            Self::Analytics => "analytics",
        }
    }
}

/// `PUT /v1/registry/instances/{id}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub role: InstanceRole,
    /// Where the instance serves, e.g. `10.0.0.7:8080` (1..=255 characters).
    pub address: String,
    /// Its build version (1..=64 characters).
    pub version: String,
    /// The config version it runs, if any (>= 0).
    pub config_version: Option<i64>,
    /// When the process started; defaults to the registration time.
    pub started_at: Option<DateTime<Utc>>,
}

/// An instance as listed, with its derived `status` (`up` or `down`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Instance {
    pub id: String,
    /// `proxy`, `control-plane` or `analytics`.
    pub role: String,
    pub address: String,
    pub version: String,
    pub config_version: Option<i64>,
    pub started_at: DateTime<Utc>,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    /// `up`: a heartbeat within the last 30 s; `down`: older (listed up to 10 min, then removed).
    pub status: String,
}

/// The listed columns; `$1` is "now".
fn columns() -> String {
    format!(
        "id, role, address, version, config_version, started_at, registered_at, last_heartbeat_at,
         CASE WHEN last_heartbeat_at >= $1 - make_interval(secs => {}) THEN 'up' ELSE 'down' END AS status",
        DOWN_AFTER.num_seconds()
    )
}

/// Text of 1..=`max` characters without control characters.
fn check_text(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    let len = value.chars().count();
    if len == 0 || len > max || value.chars().any(char::is_control) || value.trim() != value {
        let message =
            format!("must be 1 to {max} characters, no control characters or edge spaces");
        return Err(FieldError::new(field, message));
    }
    Ok(())
}

/// An instance id: 1..=128 of `A-Z a-z 0-9 . _ : -`.
fn check_id(id: &str) -> Result<(), FieldError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "id",
            "must be 1 to 128 of A-Z, a-z, 0-9, ., _, :, -",
        ))
    }
}

fn check_config_version(v: Option<i64>) -> Result<(), FieldError> {
    match v {
        Some(n) if n < 0 => Err(FieldError::new("config_version", "must be >= 0")),
        _ => Ok(()),
    }
}

fn check_registration(id: &str, r: &Registration) -> Result<(), Problem> {
    let errors: Vec<FieldError> = [
        check_id(id),
        check_text("address", &r.address, 255),
        check_text("version", &r.version, 64),
        check_config_version(r.config_version),
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Problem::invalid(errors))
    }
}

/// Registers (or re-registers) instance `id` at `now`; the bool is true when it was new. A
/// re-register keeps `registered_at`, unless the old row had expired (not yet swept).
pub async fn register(
    pool: &PgPool,
    actor: &str,
    id: &str,
    r: &Registration,
    now: DateTime<Utc>,
) -> Result<(Instance, bool), Problem> {
    check_registration(id, r)?;
    let mut tx = pool.begin().await?;
    let sql = format!(
        "INSERT INTO registry.instances AS i
             (id, role, address, version, config_version, started_at, registered_at, last_heartbeat_at)
         VALUES ($2, $3, $4, $5, $6, coalesce($7, $1), $1, $1)
         ON CONFLICT (id) DO UPDATE SET role = EXCLUDED.role, address = EXCLUDED.address,
             version = EXCLUDED.version, config_version = EXCLUDED.config_version,
             started_at = EXCLUDED.started_at, last_heartbeat_at = EXCLUDED.last_heartbeat_at,
             registered_at = CASE WHEN i.last_heartbeat_at < $8 THEN EXCLUDED.registered_at
                                  ELSE i.registered_at END
         RETURNING {}, (xmax = 0) AS created",
        columns()
    );
    let row: InstanceCreated = sqlx::query_as(&sql)
        .bind(now)
        .bind(id)
        .bind(r.role.as_str())
        .bind(&r.address)
        .bind(&r.version)
        .bind(r.config_version)
        .bind(r.started_at)
        .bind(now - EXPIRE_AFTER)
        .fetch_one(&mut *tx)
        .await?;
    let change = Change {
        actor,
        action: "instance.register",
        object_kind: "instance",
        object_id: id.to_owned(),
        detail: json!({"role": r.role.as_str(), "address": r.address, "version": r.version}),
    };
    audit::record(&mut tx, change).await?;
    tx.commit().await?;
    Ok((row.instance, row.created))
}

#[derive(sqlx::FromRow)]
struct InstanceCreated {
    #[sqlx(flatten)]
    instance: Instance,
    created: bool,
}

/// Records a heartbeat of `id` at `now` (and the config version it reports). 404 when `id` is not
/// registered or has expired: the instance then registers again.
pub async fn heartbeat(
    pool: &PgPool,
    id: &str,
    config_version: Option<i64>,
    now: DateTime<Utc>,
) -> Result<(), Problem> {
    check_config_version(config_version).map_err(|e| Problem::invalid(vec![e]))?;
    let done = sqlx::query(
        "UPDATE registry.instances SET last_heartbeat_at = $1,
             config_version = coalesce($3, config_version)
         WHERE id = $2 AND last_heartbeat_at >= $4",
    )
    .bind(now)
    .bind(id)
    .bind(config_version)
    .bind(now - EXPIRE_AFTER)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        let detail = format!("instance `{id}` is not registered; register it again");
        return Err(Problem::new(ProblemKind::NotFound, detail));
    }
    Ok(())
}

/// Removes instance `id` (idempotent; audited only when something was removed).
pub async fn cancel(pool: &PgPool, actor: &str, id: &str) -> Result<(), Problem> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query("DELETE FROM registry.instances WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() > 0 {
        let change = Change {
            actor,
            action: "instance.cancel",
            object_kind: "instance",
            object_id: id.to_owned(),
            detail: json!({}),
        };
        audit::record(&mut tx, change).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Instances not expired at `now` (optionally of one role), by role and id; deletes the expired ones
/// in the same statement.
pub async fn list(
    pool: &PgPool,
    role: Option<InstanceRole>,
    now: DateTime<Utc>,
) -> Result<Vec<Instance>, Problem> {
    let sql = format!(
        "WITH expired AS (DELETE FROM registry.instances WHERE last_heartbeat_at < $2)
         SELECT {} FROM registry.instances
         WHERE last_heartbeat_at >= $2 AND ($3::text IS NULL OR role = $3)
         ORDER BY role, id",
        columns()
    );
    Ok(sqlx::query_as(&sql)
        .bind(now)
        .bind(now - EXPIRE_AFTER)
        .bind(role.map(InstanceRole::as_str))
        .fetch_all(pool)
        .await?)
}

/// The OpenAPI paths of the registry routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <api::Doc as utoipa::OpenApi>::openapi()
}

/// The registry's admin routes (mounted under `/v1`).
pub fn routes() -> Router<ApiState> {
    api::routes()
}
