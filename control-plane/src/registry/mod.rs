//! Bounded context "registry" (Postgres schema `registry`): the live instances of the system — proxies,
//! control planes, analytics, and any app a Eureka client registers. An instance registers itself under
//! an id it chooses (`PUT`, an idempotent upsert), sends heartbeats, and cancels on shutdown. Listing
//! derives each instance's `status` from its last heartbeat: `up` within its lease ([`DOWN_AFTER`]
//! unless a Eureka client stated its own), `down` after it, and gone after [`EXPIRE_AFTER`] (deleted by
//! the listing query itself and by the [`sweep`]).
//!
//! Every instance belongs to an `app` (Eureka's application name): gateway instances to
//! `LEAKY-PROXY`, `LEAKY-CONTROL-PLANE` or `LEAKY-ANALYTICS`. [`apps`] is the app-level API the
//! `eureka` context speaks through; [`tasks`] holds the expiry sweep and the control plane's own
//! registration.
//!
//! "Now" is the app's injected [`crate::clock::Clock`], bound into the SQL, never Postgres' `now()`.
//! Register and cancel are audited; heartbeats are not (too chatty).

mod api;
pub mod apps;
pub mod tasks;

pub use apps::{AppRegistration, Record};
pub use tasks::{register_self, sweep, sweep_every, SelfRegistration};

use axum::Router;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;

use crate::audit::{self, Change};
use crate::http::{ApiState, FieldError, Problem, ProblemKind};
use crate::outbox::{self, Event, REGISTRY_TOPIC};

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
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
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
    /// Its Eureka application name: `LEAKY-PROXY`, `LEAKY-CONTROL-PLANE`, `LEAKY-ANALYTICS`, or the
    /// app a Eureka client registered.
    pub app: String,
    /// `proxy`, `control-plane` or `analytics`; for another app registered through Eureka, its app name
    /// in lower case.
    pub role: String,
    pub address: String,
    pub version: String,
    pub config_version: Option<i64>,
    pub started_at: DateTime<Utc>,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    /// `up`: a heartbeat within the last 30 s (or the lease a Eureka client stated); `down`: older
    /// (listed up to 10 min, then removed).
    pub status: String,
}

/// The listed columns; `$1` is "now".
fn columns() -> String {
    format!(
        "id, app, role, address, version, config_version, started_at, registered_at, last_heartbeat_at,
         CASE WHEN last_heartbeat_at >= $1 - make_interval(secs => coalesce(lease_secs, {}))
              THEN 'up' ELSE 'down' END AS status",
        DOWN_AFTER.num_seconds()
    )
}

/// The Eureka app of a gateway role, e.g. `LEAKY-PROXY`.
pub fn app_of(role: InstanceRole) -> String {
    format!("LEAKY-{}", role.as_str().to_ascii_uppercase())
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

/// An instance id: 1..=128 of `A-Z a-z 0-9 . _ : -` (also what the config server accepts as a
/// watching proxy's instance id, so one proxy has one name everywhere).
pub fn check_id(id: &str) -> Result<(), FieldError> {
    check_instance_id("id", id)
}

/// [`check_id`] for a field named `field`.
pub fn check_instance_id(field: &str, id: &str) -> Result<(), FieldError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
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
    let row = Upsert {
        id,
        app: &app_of(r.role),
        role: r.role.as_str(),
        address: &r.address,
        version: &r.version,
        config_version: r.config_version,
        started_at: r.started_at,
        lease_secs: None,
        reported_status: None,
        meta: None,
    };
    upsert(pool, actor, &row, now).await
}

/// One row to write: a `/v1` registration, or an app's through [`apps::register_app`].
struct Upsert<'a> {
    id: &'a str,
    app: &'a str,
    role: &'a str,
    address: &'a str,
    version: &'a str,
    config_version: Option<i64>,
    started_at: Option<DateTime<Utc>>,
    lease_secs: Option<i32>,
    reported_status: Option<&'a str>,
    meta: Option<&'a serde_json::Value>,
}

/// The upsert of [`upsert`]: `$1` now, `$2..$8` and `$10..$12` the row, `$9` the expiry limit. The
/// `WHERE` keeps a live row of another app (no row returned).
fn upsert_sql() -> String {
    format!(
        "INSERT INTO registry.instances AS i
             (id, app, role, address, version, config_version, started_at, registered_at,
              last_heartbeat_at, lease_secs, reported_status, meta)
         VALUES ($2, $3, $4, $5, $6, $7, coalesce($8, $1), $1, $1, $10, $11, $12)
         ON CONFLICT (id) DO UPDATE SET app = EXCLUDED.app, role = EXCLUDED.role,
             address = EXCLUDED.address, version = EXCLUDED.version,
             config_version = EXCLUDED.config_version, started_at = EXCLUDED.started_at,
             last_heartbeat_at = EXCLUDED.last_heartbeat_at, lease_secs = EXCLUDED.lease_secs,
             reported_status = EXCLUDED.reported_status, meta = EXCLUDED.meta,
             registered_at = CASE WHEN i.last_heartbeat_at < $9 THEN EXCLUDED.registered_at
                                  ELSE i.registered_at END,
             status_override = CASE WHEN i.last_heartbeat_at < $9 THEN NULL
                                    ELSE i.status_override END
         WHERE i.app = EXCLUDED.app OR i.last_heartbeat_at < $9
         RETURNING {}, (xmax = 0) AS created",
        columns()
    )
}

/// Inserts or replaces a row, bumps the revision and audits, in one transaction. An operator's status
/// override survives a re-register (as in Eureka), not an expiry. A live row of another app (another
/// gateway role, or another Eureka app) is not replaced: 409.
async fn upsert(
    pool: &PgPool,
    actor: &str,
    u: &Upsert<'_>,
    now: DateTime<Utc>,
) -> Result<(Instance, bool), Problem> {
    let mut tx = crate::db::begin(pool).await?;
    let sql = upsert_sql();
    let row: Option<InstanceCreated> = sqlx::query_as(&sql)
        .bind(now)
        .bind(u.id)
        .bind(u.app)
        .bind(u.role)
        .bind(u.address)
        .bind(u.version)
        .bind(u.config_version)
        .bind(u.started_at)
        .bind(now - EXPIRE_AFTER)
        .bind(u.lease_secs)
        .bind(u.reported_status)
        .bind(u.meta)
        .fetch_optional(&mut *tx)
        .await?;
    // No row: the id is taken by a live instance of another app, which it must not silently replace.
    let row = row.ok_or_else(|| {
        let detail = format!(
            "instance `{}` is registered by another app; cancel it first or choose another id",
            u.id
        );
        Problem::new(ProblemKind::Conflict, detail)
    })?;
    bump_revision(&mut tx).await?;
    let change = Change {
        actor,
        action: "instance.register",
        object_kind: "instance",
        object_id: u.id.to_owned(),
        detail: json!({"app": u.app, "role": u.role, "address": u.address, "version": u.version}),
    };
    record(&mut tx, "instance.registered", change).await?;
    tx.commit().await?;
    Ok((row.instance, row.created))
}

/// Marks a change of the instance set (Eureka's `versions__delta`).
async fn bump_revision(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT nextval('registry.revision')")
        .execute(conn)
        .await?;
    Ok(())
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
    let mut tx = crate::db::begin(pool).await?;
    let done = sqlx::query("DELETE FROM registry.instances WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() > 0 {
        bump_revision(&mut tx).await?;
        let change = Change {
            actor,
            action: "instance.cancel",
            object_kind: "instance",
            object_id: id.to_owned(),
            detail: json!({}),
        };
        record(&mut tx, "instance.cancelled", change).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Deletes every instance whose last heartbeat is older than [`EXPIRE_AFTER`] at `now`, each with its
/// `instance.expired` event; returns how many. Safe to run from several replicas at once.
pub(crate) async fn expire(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, Problem> {
    let mut tx = crate::db::begin(pool).await?;
    let expired: Vec<(String, String)> = sqlx::query_as(
        "DELETE FROM registry.instances WHERE last_heartbeat_at < $1 RETURNING id, app",
    )
    .bind(now - EXPIRE_AFTER)
    .fetch_all(&mut *tx)
    .await?;
    for (id, app) in &expired {
        let data = json!({ "id": id, "app": app, "expired_at": now });
        let event = Event::on(REGISTRY_TOPIC, "instance", id, "instance.expired", data);
        outbox::append(&mut tx, event).await?;
    }
    if !expired.is_empty() {
        bump_revision(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(expired.len() as u64)
}

/// Instances not expired at `now` (optionally of one role), by role and id; expires the others
/// first ([`expire`]), so a listing never shows what a heartbeat would refuse.
pub async fn list(
    pool: &PgPool,
    role: Option<InstanceRole>,
    now: DateTime<Utc>,
) -> Result<Vec<Instance>, Problem> {
    expire(pool, now).await?;
    let sql = format!(
        "SELECT {} FROM registry.instances
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

/// Writes `change`'s audit row and the registry's domain event `kind` about the instance
/// ([`audit::with_event`]) on `conn`, the change's own transaction.
pub(crate) async fn record(
    conn: &mut sqlx::PgConnection,
    kind: &'static str,
    change: Change<'_>,
) -> Result<(), sqlx::Error> {
    audit::with_event(conn, REGISTRY_TOPIC, "instance", kind, change).await?;
    Ok(())
}
