//! The config schema's rows: versions (what was pushed) and instances (what each proxy made of it).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use super::render::Delta;
use super::ConfigError;

/// The advisory-lock key every publication runs under ("leakycfg"): one writer of versions at a time
/// across every control-plane replica, so `max + 1` is the next version.
pub const PUBLISH_LOCK: i64 = 0x6c65_616b_7963_6667;

/// A version row, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VersionRow {
    pub version: i64,
    pub kind: String,
    pub hash: String,
    pub base: String,
    pub base_version: i64,
    pub tiers: Value,
    pub flags: Value,
    pub delta: Value,
    pub keys_digest: String,
    pub tenancy_revision: i64,
    pub document: Option<String>,
    pub author: String,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    /// The provider credentials the base references: name → revision (never a value).
    pub secrets: Value,
}

const COLUMNS: &str =
    "version, kind, hash, base, base_version, tiers, flags, delta, keys_digest, tenancy_revision, \
    document, author, reason, created_at, secrets";

/// Rows after `after`, in order.
pub async fn versions_after(
    conn: &mut PgConnection,
    after: i64,
) -> Result<Vec<VersionRow>, ConfigError> {
    let sql = format!("SELECT {COLUMNS} FROM config.versions WHERE version > $1 ORDER BY version");
    Ok(sqlx::query_as(&sql).bind(after).fetch_all(conn).await?)
}

/// The newest row, and the newest snapshot row (the structure in force).
pub async fn latest(
    conn: &mut PgConnection,
) -> Result<Option<(VersionRow, VersionRow)>, ConfigError> {
    let sql = format!("SELECT {COLUMNS} FROM config.versions ORDER BY version DESC LIMIT 1");
    let Some(last): Option<VersionRow> = sqlx::query_as(&sql).fetch_optional(&mut *conn).await?
    else {
        return Ok(None);
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM config.versions WHERE kind = 'snapshot' ORDER BY version DESC LIMIT 1"
    );
    let snapshot: VersionRow = sqlx::query_as(&sql).fetch_one(conn).await?;
    Ok(Some((last, snapshot)))
}

/// One row.
pub async fn get(pool: &PgPool, version: i64) -> Result<VersionRow, ConfigError> {
    let sql = format!("SELECT {COLUMNS} FROM config.versions WHERE version = $1");
    sqlx::query_as(&sql)
        .bind(version)
        .fetch_optional(pool)
        .await?
        .ok_or(ConfigError::NoVersion(version))
}

/// A version as listed (no document).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct VersionSummary {
    pub version: i64,
    /// `snapshot` (a full document) or `keys` (a key delta on top of the previous version).
    pub kind: String,
    /// Hex SHA-256 of the content (structure and key set).
    pub hash: String,
    pub author: String,
    pub reason: String,
    pub keys_upserted: i32,
    pub keys_removed: i32,
    pub created_at: DateTime<Utc>,
}

/// Up to `limit` versions older than `before` (newest first).
pub async fn list(
    pool: &PgPool,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<VersionSummary>, ConfigError> {
    Ok(sqlx::query_as(
        "SELECT version, kind, hash, author, reason,
                jsonb_array_length(delta->'upsert') AS keys_upserted,
                jsonb_array_length(delta->'remove') AS keys_removed, created_at
         FROM config.versions WHERE ($1::bigint IS NULL OR version < $1)
         ORDER BY version DESC LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// A new row, and the notification every replica's hub listens for (sent at commit).
pub struct NewVersion<'a> {
    pub version: i64,
    pub kind: &'a str,
    pub hash: &'a str,
    pub base: &'a str,
    pub base_version: i64,
    pub tiers: Value,
    pub flags: Value,
    pub delta: &'a Delta,
    pub keys_digest: &'a str,
    pub tenancy_revision: i64,
    pub document: Option<&'a str>,
    pub author: &'a str,
    pub reason: &'a str,
    /// Name → revision of the provider credentials the base references.
    pub secrets: Value,
}

pub async fn insert(conn: &mut PgConnection, v: NewVersion<'_>) -> Result<(), ConfigError> {
    sqlx::query(
        "INSERT INTO config.versions (version, kind, hash, base, base_version, tiers, flags, delta,
            keys_digest, tenancy_revision, document, author, reason, secrets)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(v.version)
    .bind(v.kind)
    .bind(v.hash)
    .bind(v.base)
    .bind(v.base_version)
    .bind(v.tiers)
    .bind(v.flags)
    .bind(serde_json::to_value(v.delta).unwrap_or(Value::Null))
    .bind(v.keys_digest)
    .bind(v.tenancy_revision)
    .bind(v.document)
    .bind(v.author)
    .bind(v.reason)
    .bind(v.secrets)
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify('leaky_config_versions', $1)")
        .bind(v.version.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// What one proxy reported.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct InstanceStatus {
    pub instance: String,
    /// The last version it applied.
    pub acked_version: Option<i64>,
    pub acked_at: Option<DateTime<Utc>>,
    /// The last version it refused, and why (it kept serving the one before).
    pub nacked_version: Option<i64>,
    #[schema(value_type = Option<Vec<String>>)]
    pub nack_errors: Option<Value>,
    pub nacked_at: Option<DateTime<Utc>>,
    /// When its watch stream last opened.
    pub connected_at: Option<DateTime<Utc>>,
}

pub async fn record_ack(
    pool: &PgPool,
    instance: &str,
    version: i64,
    errors: Option<&[String]>,
) -> Result<(), ConfigError> {
    let sql = match errors {
        None => {
            "INSERT INTO config.instances (instance, acked_version, acked_at) VALUES ($1, $2, now())
             ON CONFLICT (instance) DO UPDATE SET acked_version = $2, acked_at = now()"
        }
        Some(_) => {
            "INSERT INTO config.instances (instance, nacked_version, nack_errors, nacked_at)
             VALUES ($1, $2, $3, now()) ON CONFLICT (instance) DO UPDATE
             SET nacked_version = $2, nack_errors = $3, nacked_at = now()"
        }
    };
    sqlx::query(sql)
        .bind(instance)
        .bind(version)
        .bind(errors.map(|e| serde_json::json!(e)))
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn record_connect(pool: &PgPool, instance: &str) -> Result<(), ConfigError> {
    sqlx::query(
        "INSERT INTO config.instances (instance, connected_at) VALUES ($1, now())
         ON CONFLICT (instance) DO UPDATE SET connected_at = now()",
    )
    .bind(instance)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn instances(pool: &PgPool) -> Result<Vec<InstanceStatus>, ConfigError> {
    Ok(sqlx::query_as(
        "SELECT instance, acked_version, acked_at, nacked_version, nack_errors, nacked_at, connected_at
         FROM config.instances ORDER BY instance",
    )
    .fetch_all(pool)
    .await?)
}
