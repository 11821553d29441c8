//! Users of an org and their roles (`text[]`; the identity issue will map roles to scopes). Each row
//! carries a `version`, the API's ETag: a PATCH names the version it read (412 when stale). DELETE
//! removes the row (users hold no config; the audit trail keeps their history), so a second DELETE is a
//! 404 like any unknown id. A deleted org's users are gone from the API with it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::{check_name, is_unique_violation, orgs, TenancyError};
use crate::audit::Change;
use crate::http::FieldError;

/// A user as stored and shown.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct User {
    pub id: Uuid,
    #[serde(rename = "org")]
    pub org_id: Uuid,
    pub email: String,
    pub name: String,
    pub roles: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

/// `POST /v1/orgs/{org}/users` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// `PATCH /v1/orgs/{org}/users/{user}` body: what to change, at least one field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    #[serde(default)]
    pub name: Option<String>,
    /// Replaces the roles (an empty list removes them all).
    #[serde(default)]
    pub roles: Option<Vec<String>>,
}

const COLUMNS: &str = "id, org_id, email, name, roles, created_at, updated_at, version";

/// The same columns qualified, for queries joining the org (a deleted org hides its users).
const LIVE_USER: &str =
    "FROM tenancy.users u JOIN tenancy.orgs o ON o.id = u.org_id AND o.deleted_at IS NULL";

fn qualified() -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("u.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A problem per malformed role: each is 1..=64 of `a-z 0-9 -`.
fn check_roles(roles: &[String]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, role) in roles.iter().enumerate() {
        let ok = !role.is_empty()
            && role.len() <= 64
            && role
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            errors.push(FieldError::new(
                format!("roles[{i}]"),
                "must be 1 to 64 of a-z, 0-9, -",
            ));
        }
    }
    errors
}

fn validate(new: &NewUser) -> Result<(String, String), TenancyError> {
    let mut errors = Vec::new();
    let email = new.email.trim().to_ascii_lowercase();
    let at = email.find('@');
    if email.len() > 254
        || !at.is_some_and(|i| i > 0 && i + 1 < email.len())
        || email.contains(char::is_whitespace)
    {
        errors.push(FieldError::new(
            "email",
            "must be an address like name@example.com",
        ));
    }
    let name = match new
        .name
        .as_deref()
        .map(|n| check_name("name", n))
        .transpose()
    {
        Ok(name) => name.unwrap_or_default(),
        Err(e) => {
            errors.push(e);
            String::new()
        }
    };
    errors.extend(check_roles(&new.roles));
    if errors.is_empty() {
        Ok((email, name))
    } else {
        Err(TenancyError::Invalid(errors))
    }
}

/// Adds a user to org `org`; an email is unique within an org.
pub async fn create(
    pool: &PgPool,
    actor: &str,
    org: Uuid,
    new: &NewUser,
) -> Result<User, TenancyError> {
    let (email, name) = validate(new)?;
    let mut tx = crate::db::begin(pool).await?;
    orgs::lock_live(&mut tx, org).await?;
    let sql = format!(
        "INSERT INTO tenancy.users (id, org_id, email, name, roles) VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
    );
    let user: User = sqlx::query_as(&sql)
        .bind(Uuid::new_v4())
        .bind(org)
        .bind(&email)
        .bind(&name)
        .bind(&new.roles)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match is_unique_violation(&e) {
            true => TenancyError::Conflict(format!("`{email}` is already a user of this org")),
            false => e.into(),
        })?;
    let change = Change {
        actor,
        action: "user.create",
        object_kind: "user",
        object_id: user.id.to_string(),
        detail: json!({ "org": org, "email": user.email, "roles": user.roles }),
    };
    super::audited(&mut tx, "user.created", "user", change).await?;
    tx.commit().await?;
    Ok(user)
}

/// Up to `limit` users of `org` with ids after `after`.
pub async fn list(
    pool: &PgPool,
    org: Uuid,
    limit: i64,
    after: Option<Uuid>,
) -> Result<Vec<User>, TenancyError> {
    orgs::get(pool, org).await?;
    let sql = format!(
        "SELECT {COLUMNS} FROM tenancy.users WHERE org_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"
    );
    Ok(sqlx::query_as(&sql)
        .bind(org)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// User `id` of org `org` (404 when either is unknown, or the org is deleted).
pub async fn get(pool: &PgPool, org: Uuid, id: Uuid) -> Result<User, TenancyError> {
    let sql = format!(
        "SELECT {} {LIVE_USER} WHERE u.org_id = $1 AND u.id = $2",
        qualified()
    );
    sqlx::query_as(&sql)
        .bind(org)
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| TenancyError::not_found("user", id))
}

fn validate_patch(patch: &UserPatch) -> Result<Option<String>, TenancyError> {
    if patch.name.is_none() && patch.roles.is_none() {
        return Err(TenancyError::field(
            "body",
            "send at least one of `name`, `roles`",
        ));
    }
    let mut errors = patch.roles.as_deref().map(check_roles).unwrap_or_default();
    let name = match patch
        .name
        .as_deref()
        .map(|n| check_name("name", n))
        .transpose()
    {
        Ok(name) => name,
        Err(e) => {
            errors.insert(0, e);
            None
        }
    };
    if errors.is_empty() {
        Ok(name)
    } else {
        Err(TenancyError::Invalid(errors))
    }
}

/// Changes the name and/or roles of user `id` if its version is still `expected` (one UPDATE compares
/// and writes, so of two concurrent edits from one version exactly one wins).
pub async fn update(
    pool: &PgPool,
    actor: &str,
    (org, id): (Uuid, Uuid),
    expected: i64,
    patch: &UserPatch,
) -> Result<User, TenancyError> {
    let name = validate_patch(patch)?;
    let mut tx = crate::db::begin(pool).await?;
    let sql = format!(
        "UPDATE tenancy.users u SET name = coalesce($4, u.name), roles = coalesce($5, u.roles),
         version = u.version + 1, updated_at = now()
         FROM tenancy.orgs o WHERE o.id = u.org_id AND o.deleted_at IS NULL
         AND u.org_id = $1 AND u.id = $2 AND u.version = $3 RETURNING {}",
        qualified()
    );
    let updated: Option<User> = sqlx::query_as(&sql)
        .bind(org)
        .bind(id)
        .bind(expected)
        .bind(name)
        .bind(patch.roles.as_deref())
        .fetch_optional(&mut *tx)
        .await?;
    let Some(user) = updated else {
        let current = get(pool, org, id).await?;
        return Err(TenancyError::Stale {
            kind: "user",
            current: current.version,
        });
    };
    let change = Change {
        actor,
        action: "user.update",
        object_kind: "user",
        object_id: id.to_string(),
        detail: json!({ "org": org, "name": user.name, "roles": user.roles, "version": user.version }),
    };
    super::audited(&mut tx, "user.updated", "user", change).await?;
    tx.commit().await?;
    Ok(user)
}

/// Deletes user `id` of org `org`; 404 when there is none (already deleted included).
pub async fn delete(pool: &PgPool, actor: &str, org: Uuid, id: Uuid) -> Result<(), TenancyError> {
    let mut tx = crate::db::begin(pool).await?;
    let email: Option<String> = sqlx::query_scalar(
        "DELETE FROM tenancy.users u USING tenancy.orgs o
         WHERE o.id = u.org_id AND o.deleted_at IS NULL AND u.org_id = $1 AND u.id = $2 RETURNING u.email",
    )
    .bind(org)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(email) = email else {
        return Err(TenancyError::not_found("user", id));
    };
    let change = Change {
        actor,
        action: "user.delete",
        object_kind: "user",
        object_id: id.to_string(),
        detail: json!({ "org": org, "email": email }),
    };
    super::audited(&mut tx, "user.deleted", "user", change).await?;
    tx.commit().await?;
    Ok(())
}
