//! Tiers and their limit policies (`limits` jsonb, e.g. `{"requests_per_minute": 600}`), the same
//! names the data plane's config uses. Migrations seed `free`, `pro` and `enterprise`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};

use super::{feed, TenancyError};
use crate::audit::Change;
use crate::http::FieldError;

/// A tier as stored and shown.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Tier {
    pub name: String,
    #[schema(value_type = Object)]
    pub limits: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

const COLUMNS: &str = "name, limits, created_at, updated_at, version";

/// A tier name: 1..=64 of `a-z 0-9 - _`.
pub fn check_tier_name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(field, "must be 1 to 64 of a-z, 0-9, -, _"))
    }
}

/// Limits are an object of the entries the data plane understands ([`feed::LIMIT_FIELDS`]): the
/// counts are positive integers, `priority` is `low`, `normal` or `high`, `description` a string.
fn check_limits(limits: &Value) -> Result<(), TenancyError> {
    let Some(map) = limits.as_object() else {
        return Err(TenancyError::field("limits", "must be an object"));
    };
    let errors: Vec<FieldError> = map
        .iter()
        .filter_map(|(k, v)| limit_problem(k, v).map(|m| FieldError::new(format!("limits.{k}"), m)))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(TenancyError::Invalid(errors))
    }
}

fn limit_problem(key: &str, v: &Value) -> Option<String> {
    let ok = match key {
        "priority" => matches!(v.as_str(), Some("low" | "normal" | "high")),
        "description" => v.as_str().is_some_and(|d| d.chars().count() <= 200),
        k if feed::LIMIT_FIELDS.contains(&k) => v.as_u64().is_some_and(|n| n > 0),
        _ => {
            return Some(format!(
                "unknown limit (known: {})",
                feed::LIMIT_FIELDS.join(", ")
            ))
        }
    };
    (!ok).then(|| match key {
        "priority" => "must be `low`, `normal` or `high`".to_owned(),
        "description" => "must be a string of at most 200 characters".to_owned(),
        _ => "must be a positive integer".to_owned(),
    })
}

/// Creates or replaces tier `name`; the bool is true when it was created.
pub async fn put(
    pool: &PgPool,
    actor: &str,
    name: &str,
    limits: &Value,
) -> Result<(Tier, bool), TenancyError> {
    check_tier_name("name", name)?;
    check_limits(limits)?;
    let mut tx = crate::db::begin(pool).await?;
    let sql = format!(
        "INSERT INTO tenancy.tiers (name, limits) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET limits = EXCLUDED.limits, version = tiers.version + 1, updated_at = now()
         RETURNING {COLUMNS}, (xmax = 0) AS created"
    );
    let row: (Tier, bool) = sqlx::query_as::<_, TierCreated>(&sql)
        .bind(name)
        .bind(limits)
        .fetch_one(&mut *tx)
        .await
        .map(|r| (r.tier, r.created))?;
    let change = Change {
        actor,
        action: if row.1 { "tier.create" } else { "tier.update" },
        object_kind: "tier",
        object_id: name.to_owned(),
        detail: json!({ "limits": limits }),
    };
    let kind = if row.1 {
        "tier.created"
    } else {
        "tier.updated"
    };
    super::audited(&mut tx, kind, "tier", change).await?;
    tx.commit().await?;
    Ok(row)
}

#[derive(sqlx::FromRow)]
struct TierCreated {
    #[sqlx(flatten)]
    tier: Tier,
    created: bool,
}

/// Tier `name`.
pub async fn get(pool: &PgPool, name: &str) -> Result<Tier, TenancyError> {
    check_tier_name("name", name)?;
    let sql = format!("SELECT {COLUMNS} FROM tenancy.tiers WHERE name = $1");
    sqlx::query_as(&sql)
        .bind(name)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| TenancyError::not_found("tier", name))
}

/// Deletes tier `name`, refused (conflict) while a key the proxies hold uses it: one not revoked,
/// expired ones included (the proxies still hold those, and a key with an unknown tier would fail
/// their config validation). Revoke those keys first.
pub async fn delete(pool: &PgPool, actor: &str, name: &str) -> Result<(), TenancyError> {
    check_tier_name("name", name)?;
    let mut tx = crate::db::begin(pool).await?;
    // Lock the row first: key creations holding it (FOR SHARE) finish before the count below.
    let found: Option<(i64,)> =
        sqlx::query_as("SELECT version FROM tenancy.tiers WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((version,)) = found else {
        return Err(TenancyError::not_found("tier", name));
    };
    // An org's plan tier (subscriptions) counts as a use too: its keys render with it.
    let (users,): (i64,) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tenancy.api_keys WHERE tier = $1 AND (revoked_at IS NULL OR revoked_at > now()))
              + (SELECT count(*) FROM tenancy.orgs WHERE plan_tier = $1)",
    )
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    if users > 0 {
        return Err(TenancyError::Conflict(format!(
            "tier `{name}` is used by {users} live key(s) or org plan(s); revoke or move them first"
        )));
    }
    sqlx::query("DELETE FROM tenancy.tiers WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let change = Change {
        actor,
        action: "tier.delete",
        object_kind: "tier",
        object_id: name.to_owned(),
        detail: json!({ "version": version }),
    };
    super::audited(&mut tx, "tier.deleted", "tier", change).await?;
    tx.commit().await?;
    Ok(())
}

/// Every tier, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<Tier>, TenancyError> {
    let sql = format!("SELECT {COLUMNS} FROM tenancy.tiers ORDER BY name");
    Ok(sqlx::query_as(&sql).fetch_all(pool).await?)
}

/// Whether tier `name` exists, holding a share lock on it until `conn`'s transaction ends: a key
/// created under this lock and a concurrent [`delete`] of the tier serialize, so no live key is ever
/// left with a deleted tier (the table has no foreign key to enforce it: see migration 0007).
pub async fn lock_existing(conn: &mut PgConnection, name: &str) -> Result<bool, TenancyError> {
    let found: Option<(i32,)> =
        sqlx::query_as("SELECT 1 FROM tenancy.tiers WHERE name = $1 FOR SHARE")
            .bind(name)
            .fetch_optional(conn)
            .await?;
    Ok(found.is_some())
}
