//! The registry seen by application: what the `eureka` context needs, as the registry's public Rust API
//! (it never reads `registry.instances` itself). An app's instance is a registry instance with a lease,
//! a reported status, an operator's status override and the instance object its client sent (`meta`),
//! so `/v1/registry/instances` and `/eureka/apps` list the same rows.
//!
//! Statuses are opaque text here: the Eureka vocabulary (`UP`, `OUT_OF_SERVICE`, ...) is checked by
//! the `eureka` context before it calls in.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

use super::{
    app_of, bump_revision, check_id, check_text, columns, upsert, Instance, InstanceRole, Upsert,
    EXPIRE_AFTER,
};
use crate::audit::Change;
use crate::http::{FieldError, Problem, ProblemKind};

/// An instance of `app` registering (or re-registering) itself.
#[derive(Debug, Clone)]
pub struct AppRegistration {
    /// The application name, upper case (1..=128 of `A-Z 0-9 . _ -`).
    pub app: String,
    pub id: String,
    /// Where it serves, e.g. `10.0.0.7:8080`.
    pub address: String,
    pub version: String,
    /// Seconds without a heartbeat after which it is `down` (1..=3600).
    pub lease_secs: i32,
    /// The status its client reports (e.g. `UP`, `STARTING`).
    pub reported_status: String,
    /// The instance object as the client described itself (served back by the Eureka API).
    pub meta: serde_json::Value,
}

/// An instance with what the Eureka API serves beside it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Record {
    #[sqlx(flatten)]
    pub instance: Instance,
    pub lease_secs: Option<i32>,
    pub reported_status: Option<String>,
    pub status_override: Option<String>,
    pub meta: Option<serde_json::Value>,
}

/// The gateway role of an app (`LEAKY-PROXY` is `proxy`), or the app name in lower case.
pub fn role_of(app: &str) -> String {
    [
        InstanceRole::Proxy,
        InstanceRole::ControlPlane,
        InstanceRole::Analytics,
    ]
    .into_iter()
    .find(|r| app_of(*r) == app)
    .map_or_else(|| app.to_ascii_lowercase(), |r| r.as_str().to_owned())
}

/// An application name: 1..=128 of `A-Z 0-9 . _ -` (callers upper-case it first, as Eureka does).
pub fn check_app(field: &str, app: &str) -> Result<(), FieldError> {
    let ok = !app.is_empty()
        && app.len() <= 128
        && app.bytes().all(|b| {
            b.is_ascii_uppercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "must be 1 to 128 of A-Z, 0-9, ., _, -",
        ))
    }
}

/// Checks `r` (naming the bad fields: `app`, `id`, `address`, `version`, `lease`) and registers it;
/// true when it was new.
pub async fn register_app(
    pool: &PgPool,
    actor: &str,
    r: &AppRegistration,
    now: DateTime<Utc>,
) -> Result<bool, Problem> {
    let lease = if (1..=3600).contains(&r.lease_secs) {
        Ok(())
    } else {
        Err(FieldError::new("lease", "must be 1 to 3600 seconds"))
    };
    let errors: Vec<FieldError> = [
        check_app("app", &r.app),
        check_id(&r.id),
        check_text("address", &r.address, 255),
        check_text("version", &r.version, 64),
        lease,
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect();
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let role = role_of(&r.app);
    let row = Upsert {
        id: &r.id,
        app: &r.app,
        role: &role,
        address: &r.address,
        version: &r.version,
        config_version: None,
        started_at: None,
        lease_secs: Some(r.lease_secs),
        reported_status: Some(&r.reported_status),
        meta: Some(&r.meta),
    };
    let (_, created) = upsert(pool, actor, &row, now).await?;
    Ok(created)
}

fn not_found(app: &str, id: &str) -> Problem {
    let detail = format!("instance `{id}` of app `{app}` is not registered; register it again");
    Problem::new(ProblemKind::NotFound, detail)
}

/// Records a heartbeat of `app`'s instance `id` (and the status it reports now). 404 when it is not
/// registered or has expired: Eureka clients then register again.
pub async fn heartbeat_app(
    pool: &PgPool,
    app: &str,
    id: &str,
    reported_status: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), Problem> {
    let done = sqlx::query(
        "UPDATE registry.instances SET last_heartbeat_at = $1,
             reported_status = coalesce($4, reported_status)
         WHERE id = $2 AND app = $3 AND last_heartbeat_at >= $5",
    )
    .bind(now)
    .bind(id)
    .bind(app)
    .bind(reported_status)
    .bind(now - EXPIRE_AFTER)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(not_found(app, id));
    }
    Ok(())
}

/// Removes `app`'s instance `id`; 404 when there is none (Eureka's answer).
pub async fn cancel_app(pool: &PgPool, actor: &str, app: &str, id: &str) -> Result<(), Problem> {
    let mut tx = crate::db::begin(pool).await?;
    let done = sqlx::query("DELETE FROM registry.instances WHERE id = $1 AND app = $2")
        .bind(id)
        .bind(app)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(not_found(app, id));
    }
    bump_revision(&mut tx).await?;
    let change = Change {
        actor,
        action: "instance.cancel",
        object_kind: "instance",
        object_id: id.to_owned(),
        detail: json!({"app": app}),
    };
    super::record(&mut tx, "instance.cancelled", change).await?;
    tx.commit().await?;
    Ok(())
}

/// Sets (or with `None` removes) the operator's status override of `app`'s instance `id`; 404 when it
/// is not registered.
pub async fn set_status_override(
    pool: &PgPool,
    actor: &str,
    app: &str,
    id: &str,
    status: Option<&str>,
) -> Result<(), Problem> {
    let mut tx = crate::db::begin(pool).await?;
    let done = sqlx::query(
        "UPDATE registry.instances SET status_override = $3 WHERE id = $1 AND app = $2",
    )
    .bind(id)
    .bind(app)
    .bind(status)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(not_found(app, id));
    }
    bump_revision(&mut tx).await?;
    let change = Change {
        actor,
        action: "instance.status_override",
        object_kind: "instance",
        object_id: id.to_owned(),
        detail: json!({"app": app, "status": status}),
    };
    super::record(&mut tx, "instance.status_overridden", change).await?;
    tx.commit().await?;
    Ok(())
}

/// Every instance not expired at `now` (of `app` only, and of instance `id` only, when given), by app
/// and id.
pub async fn records(
    pool: &PgPool,
    app: Option<&str>,
    id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<Record>, Problem> {
    let sql = format!(
        "SELECT {}, lease_secs, reported_status, status_override, meta
         FROM registry.instances
         WHERE last_heartbeat_at >= $2 AND ($3::text IS NULL OR app = $3)
               AND ($4::text IS NULL OR id = $4)
         ORDER BY app, id",
        columns()
    );
    Ok(sqlx::query_as(&sql)
        .bind(now)
        .bind(now - EXPIRE_AFTER)
        .bind(app)
        .bind(id)
        .fetch_all(pool)
        .await?)
}

/// The registry's revision: bumped by every register, cancel, status override and sweep that changed
/// something (shared by every replica).
pub async fn revision(pool: &PgPool) -> Result<i64, Problem> {
    let (last, called): (i64, bool) =
        sqlx::query_as("SELECT last_value, is_called FROM registry.revision")
            .fetch_one(pool)
            .await?;
    Ok(if called { last } else { 0 })
}
