//! Users of an org and their roles (`text[]`; the identity issue will map roles to scopes).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::{check_name, is_unique_violation, orgs, TenancyError};
use crate::audit::{self, Change};
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

const COLUMNS: &str = "id, org_id, email, name, roles, created_at";

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
    for (i, role) in new.roles.iter().enumerate() {
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
    orgs::get(pool, org).await?;
    let mut tx = pool.begin().await?;
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
    audit::record(&mut tx, change).await?;
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
