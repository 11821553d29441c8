//! Orgs: the tenants. Each row carries a `version`, the API's ETag; a rename names the version it
//! read and loses (412) when another change landed first.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::{check_name, is_unique_violation, TenancyError};
use crate::audit::{self, Change};

/// An org as stored and shown.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Org {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

const COLUMNS: &str = "id, name, created_at, updated_at, version";

fn duplicate(name: &str) -> TenancyError {
    TenancyError::Conflict(format!("an org named `{name}` already exists"))
}

/// Creates an org named `name` (unique).
pub async fn create(pool: &PgPool, actor: &str, name: &str) -> Result<Org, TenancyError> {
    let name = check_name("name", name)?;
    let mut tx = pool.begin().await?;
    let sql = format!("INSERT INTO tenancy.orgs (id, name) VALUES ($1, $2) RETURNING {COLUMNS}");
    let org: Org = sqlx::query_as(&sql)
        .bind(Uuid::new_v4())
        .bind(&name)
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
        detail: json!({ "name": org.name }),
    };
    audit::record(&mut tx, change).await?;
    tx.commit().await?;
    Ok(org)
}

/// The org with this id.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Org, TenancyError> {
    let sql = format!("SELECT {COLUMNS} FROM tenancy.orgs WHERE id = $1");
    sqlx::query_as(&sql)
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| TenancyError::not_found("org", id))
}

/// Up to `limit` orgs with ids after `after`, in id order.
pub async fn list(
    pool: &PgPool,
    limit: i64,
    after: Option<Uuid>,
) -> Result<Vec<Org>, TenancyError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM tenancy.orgs WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2"
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
    let name = check_name("name", name)?;
    let mut tx = pool.begin().await?;
    let sql = format!(
        "UPDATE tenancy.orgs SET name = $1, version = version + 1, updated_at = now()
         WHERE id = $2 AND version = $3 RETURNING {COLUMNS}"
    );
    let updated: Option<Org> = sqlx::query_as(&sql)
        .bind(&name)
        .bind(id)
        .bind(expected)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                duplicate(&name)
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
        detail: json!({ "name": org.name, "version": org.version }),
    };
    audit::record(&mut tx, change).await?;
    tx.commit().await?;
    Ok(org)
}
