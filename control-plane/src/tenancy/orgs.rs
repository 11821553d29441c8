//! Orgs: the tenants. Each row carries a `version`, the API's ETag; a rename or a delete names the
//! version it read and loses (412) when another change landed first.
//!
//! Delete is soft (`deleted_at`): the row stays for the keys, users and audit events that name it, but a
//! deleted org is gone from the API (404), its name is free again, and no key or user can be added to
//! it. Deleting revokes every live key of the org in the same transaction; tenancy's change feed then
//! carries their removal to the proxies.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{check_name, is_unique_violation, TenancyError};
use crate::audit::{self, Change};
use crate::outbox::{self, Event};

/// An org as stored and shown.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Org {
    pub id: Uuid,
    pub name: String,
    /// The IANA time zone of the org's usage reports and statements (default `UTC`).
    #[schema(example = "Europe/Berlin")]
    pub time_zone: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

const COLUMNS: &str = "id, name, time_zone, created_at, updated_at, version";

fn duplicate(name: &str) -> TenancyError {
    TenancyError::Conflict(format!("an org named `{name}` already exists"))
}

/// An IANA time zone name as chrono-tz knows it (its canonical spelling), or a field error.
pub fn check_time_zone(value: &str) -> Result<String, TenancyError> {
    value
        .parse::<chrono_tz::Tz>()
        .map(|tz| tz.name().to_owned())
        .map_err(|_| {
            TenancyError::field(
                "time_zone",
                "must be an IANA time zone name, e.g. `Europe/Berlin` or `UTC`",
            )
        })
}

/// Creates an org named `name` (unique), in UTC.
pub async fn create(pool: &PgPool, actor: &str, name: &str) -> Result<Org, TenancyError> {
    create_in_zone(pool, actor, name, None).await
}

/// Creates an org named `name` (unique) in `time_zone` (IANA; `None`: UTC).
pub async fn create_in_zone(
    pool: &PgPool,
    actor: &str,
    name: &str,
    time_zone: Option<&str>,
) -> Result<Org, TenancyError> {
    let name = check_name("name", name)?;
    let zone = check_time_zone(time_zone.unwrap_or("UTC"))?;
    let mut tx = crate::db::begin(pool).await?;
    let sql = format!(
        "INSERT INTO tenancy.orgs (id, name, time_zone) VALUES ($1, $2, $3) RETURNING {COLUMNS}"
    );
    let org: Org = sqlx::query_as(&sql)
        .bind(Uuid::new_v4())
        .bind(&name)
        .bind(&zone)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                duplicate(&name)
            } else {
                e.into()
            }
        })?;
    let change = Change {
        actor,
        action: "org.create",
        object_kind: "org",
        object_id: org.id.to_string(),
        detail: json!({ "name": org.name, "time_zone": org.time_zone }),
    };
    audit::record(&mut tx, change).await?;
    // The zone and version reach analytics, which closes the org's statements in its zone and
    // orders zone changes by version (`org.updated` carries both too, from the audit detail).
    let data = json!({
        "id": org.id, "name": org.name, "time_zone": org.time_zone, "version": org.version,
    });
    outbox::append(&mut tx, Event::tenancy("org", org.id, "org.created", data)).await?;
    tx.commit().await?;
    Ok(org)
}

/// The org with this id.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Org, TenancyError> {
    let sql = format!("SELECT {COLUMNS} FROM tenancy.orgs WHERE id = $1 AND deleted_at IS NULL");
    sqlx::query_as(&sql)
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| TenancyError::not_found("org", id))
}

/// Checks inside `conn`'s transaction that org `id` exists and is not deleted, and holds a share lock
/// on it until the transaction ends: a concurrent [`delete`] waits for this transaction (and then
/// revokes what it added), or wins first and this check fails. Key and user creation call it.
pub async fn lock_live(conn: &mut PgConnection, id: Uuid) -> Result<(), TenancyError> {
    let found =
        sqlx::query("SELECT 1 FROM tenancy.orgs WHERE id = $1 AND deleted_at IS NULL FOR SHARE")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    found
        .map(drop)
        .ok_or_else(|| TenancyError::not_found("org", id))
}

/// Sets the tier org `id`'s plan gives all its keys (`None`: back to each key's own tier), on the
/// caller's transaction. Touching the keys' `tier` fires the change-feed trigger, so the proxies get
/// every key of the org as a delta with its new effective tier, like any key change. Idempotent.
/// The tier must exist; its share lock serializes this with a tier deletion (which counts plan tiers).
pub async fn set_plan_tier(
    conn: &mut PgConnection,
    id: Uuid,
    tier: Option<&str>,
) -> Result<(), TenancyError> {
    if let Some(name) = tier {
        if !super::tiers::lock_existing(&mut *conn, name).await? {
            return Err(TenancyError::field("tier", format!("no tier `{name}`")));
        }
    }
    let changed = sqlx::query(
        "UPDATE tenancy.orgs SET plan_tier = $2 WHERE id = $1 AND plan_tier IS DISTINCT FROM $2",
    )
    .bind(id)
    .bind(tier)
    .execute(&mut *conn)
    .await?;
    if changed.rows_affected() == 1 {
        sqlx::query("UPDATE tenancy.api_keys SET tier = tier WHERE org_id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        let change = Change {
            actor: "billing",
            action: "org.plan_tier",
            object_kind: "org",
            object_id: id.to_string(),
            detail: json!({ "plan_tier": tier }),
        };
        super::audited(&mut *conn, "org.plan_tier_changed", "org", change).await?;
    }
    Ok(())
}

/// The tier org `id`'s plan gives its keys, if any.
pub async fn plan_tier(conn: &mut PgConnection, id: Uuid) -> Result<Option<String>, TenancyError> {
    let tier: Option<Option<String>> =
        sqlx::query_scalar("SELECT plan_tier FROM tenancy.orgs WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    Ok(tier.flatten())
}

/// Up to `limit` orgs with ids after `after`, in id order.
pub async fn list(
    pool: &PgPool,
    limit: i64,
    after: Option<Uuid>,
) -> Result<Vec<Org>, TenancyError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM tenancy.orgs WHERE deleted_at IS NULL AND ($1::uuid IS NULL OR id > $1)
         ORDER BY id LIMIT $2"
    );
    Ok(sqlx::query_as(&sql)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// Renames org `id` if its version is still `expected`. The compare and the write are one UPDATE, so
/// of two concurrent renames from the same version exactly one wins.
pub async fn rename(
    pool: &PgPool,
    actor: &str,
    id: Uuid,
    expected: i64,
    name: &str,
) -> Result<Org, TenancyError> {
    update(pool, actor, id, expected, Some(name), None).await
}

/// Changes org `id`'s name and/or time zone (each `None`: kept) if its version is still
/// `expected`, in one compare-and-write UPDATE like [`rename`].
pub async fn update(
    pool: &PgPool,
    actor: &str,
    id: Uuid,
    expected: i64,
    name: Option<&str>,
    time_zone: Option<&str>,
) -> Result<Org, TenancyError> {
    let name = name.map(|n| check_name("name", n)).transpose()?;
    let zone = time_zone.map(check_time_zone).transpose()?;
    let mut tx = crate::db::begin(pool).await?;
    let sql = format!(
        "UPDATE tenancy.orgs SET name = COALESCE($1, name), time_zone = COALESCE($4, time_zone),
         version = version + 1, updated_at = now()
         WHERE id = $2 AND version = $3 AND deleted_at IS NULL RETURNING {COLUMNS}"
    );
    let updated: Option<Org> = sqlx::query_as(&sql)
        .bind(&name)
        .bind(id)
        .bind(expected)
        .bind(&zone)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                duplicate(name.as_deref().unwrap_or(""))
            } else {
                e.into()
            }
        })?;
    let Some(org) = updated else {
        let current = get(pool, id).await?;
        return Err(TenancyError::Stale {
            kind: "org",
            current: current.version,
        });
    };
    let change = Change {
        actor,
        action: "org.update",
        object_kind: "org",
        object_id: id.to_string(),
        detail: json!({ "name": org.name, "time_zone": org.time_zone, "version": org.version }),
    };
    super::audited(&mut tx, "org.updated", "org", change).await?;
    tx.commit().await?;
    Ok(org)
}

/// What [`delete`] did: the keys it revoked.
#[derive(Debug, Clone)]
pub struct Deleted {
    pub revoked_keys: Vec<Uuid>,
}

/// Soft-deletes org `id` if its version is still `expected`, and revokes every key of it the data plane
/// still holds (not revoked, or in a rotation's grace period), in one transaction: the delete and the
/// revocations commit together, and the key triggers push the removals to the proxies.
pub async fn delete(
    pool: &PgPool,
    actor: &str,
    id: Uuid,
    expected: i64,
) -> Result<Deleted, TenancyError> {
    let mut tx = crate::db::begin(pool).await?;
    let updated = sqlx::query(
        "UPDATE tenancy.orgs SET deleted_at = now(), version = version + 1, updated_at = now()
         WHERE id = $1 AND version = $2 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(expected)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        let current = get(pool, id).await?;
        return Err(TenancyError::Stale {
            kind: "org",
            current: current.version,
        });
    }
    let revoked_keys = revoke_keys_of(&mut tx, actor, id).await?;
    let change = Change {
        actor,
        action: "org.delete",
        object_kind: "org",
        object_id: id.to_string(),
        detail: json!({ "revoked_keys": revoked_keys }),
    };
    audit::record(&mut tx, change).await?;
    let data = json!({ "id": id, "revoked_keys": revoked_keys });
    outbox::append(&mut tx, Event::tenancy("org", id, "org.deleted", data)).await?;
    tx.commit().await?;
    Ok(Deleted { revoked_keys })
}

/// Revokes every key of org `org` the data plane still holds, auditing each; returns their ids.
async fn revoke_keys_of(
    conn: &mut PgConnection,
    actor: &str,
    org: Uuid,
) -> Result<Vec<Uuid>, TenancyError> {
    let revoked: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE tenancy.api_keys SET revoked_at = now(), grace_until = NULL
         WHERE org_id = $1 AND (revoked_at IS NULL OR revoked_at > now()) RETURNING id",
    )
    .bind(org)
    .fetch_all(&mut *conn)
    .await?;
    // Each key's own trail shows why it stopped working.
    for key in &revoked {
        let change = Change {
            actor,
            action: "key.revoke",
            object_kind: "key",
            object_id: key.to_string(),
            detail: json!({ "reason": "org.delete", "org": org }),
        };
        audit::record(&mut *conn, change).await?;
        let data = json!({ "id": key, "org": org, "reason": "org.delete" });
        outbox::append(&mut *conn, Event::tenancy("key", *key, "key.revoked", data)).await?;
    }
    Ok(revoked)
}
