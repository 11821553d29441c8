//! The flags schema's SQL. Every change runs in one transaction with its audit row and the
//! `pg_notify` that wakes the config server, so a change, its audit trail and its push commit
//! together or not at all. Reads of a flag and its overrides are one statement (one MVCC snapshot).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use leaky_config::FlagSpec;
use serde_json::json;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

use super::{check_override, name_check, refuse, settings, Flag, FlagBody, FlagsError};
use crate::audit::{self, Change};
use crate::outbox::{self, Event, CONFIG_TOPIC};

/// A flag with its overrides folded into one JSON object.
const SELECT: &str = "SELECT f.name, f.enabled, f.rollout_percent, f.description, f.created_at,
        f.updated_at, f.version,
        coalesce((SELECT jsonb_object_agg(o.org, o.enabled) FROM flags.org_overrides o
                  WHERE o.flag = f.name), '{}'::jsonb) AS orgs
    FROM flags.flags f";

#[derive(sqlx::FromRow)]
struct Row {
    name: String,
    enabled: bool,
    rollout_percent: i16,
    description: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
    orgs: Json<BTreeMap<String, bool>>,
}

impl From<Row> for Flag {
    fn from(r: Row) -> Self {
        Flag {
            name: r.name,
            enabled: r.enabled,
            // The table's CHECK keeps it within 0..=100.
            rollout_percent: u8::try_from(r.rollout_percent).unwrap_or(100),
            description: r.description,
            orgs: r.orgs.0,
            created_at: r.created_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

async fn fetch(conn: &mut PgConnection, name: &str) -> Result<Flag, FlagsError> {
    let sql = format!("{SELECT} WHERE f.name = $1");
    let row: Option<Row> = sqlx::query_as(&sql).bind(name).fetch_optional(conn).await?;
    row.map(Flag::from)
        .ok_or_else(|| FlagsError::NotFound(name.to_owned()))
}

pub(super) async fn get(pool: &PgPool, name: &str) -> Result<Flag, FlagsError> {
    fetch(&mut *pool.acquire().await?, name).await
}

pub(super) async fn list(pool: &PgPool) -> Result<Vec<Flag>, FlagsError> {
    let sql = format!("{SELECT} ORDER BY f.name");
    let rows: Vec<Row> = sqlx::query_as(&sql).fetch_all(pool).await?;
    Ok(rows.into_iter().map(Flag::from).collect())
}

/// Every flag stored here, in the config schema, for the config server to merge over the YAML
/// base's `flags:` (a flag here replaces a base flag of the same name). One statement: a
/// consistent view of flags and overrides.
pub async fn snapshot(pool: &PgPool) -> Result<BTreeMap<String, FlagSpec>, FlagsError> {
    Ok(list(pool)
        .await?
        .into_iter()
        .map(|f| (f.name.clone(), f.spec()))
        .collect())
}

/// Audits the change, appends its domain event (`kind`, on `leaky.config.v1`), wakes the config server
/// and commits.
async fn commit_change(
    mut tx: crate::db::Tx<'_>,
    actor: &str,
    (action, kind): (&str, &'static str),
    name: &str,
    detail: serde_json::Value,
) -> Result<(), FlagsError> {
    let mut data = detail.clone();
    if let Some(fields) = data.as_object_mut() {
        fields.insert("name".into(), name.into());
    }
    let event = Event::on(CONFIG_TOPIC, "flag", name, kind, data);
    let change = Change {
        actor,
        action,
        object_kind: "flag",
        object_id: name.to_owned(),
        detail,
    };
    audit::record(&mut tx, change).await?;
    outbox::append(&mut tx, event).await?;
    sqlx::query("SELECT pg_notify($1, 'flags')")
        .bind(super::CONFIG_CHANNEL)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Why a versioned write of `name` touched nothing: it is gone, or at another version.
async fn miss(conn: &mut PgConnection, name: &str, gone: FlagsError) -> FlagsError {
    let current: Result<Option<i64>, _> =
        sqlx::query_scalar("SELECT version FROM flags.flags WHERE name = $1")
            .bind(name)
            .fetch_optional(conn)
            .await;
    match current {
        Ok(Some(current)) => FlagsError::Stale {
            name: name.to_owned(),
            current,
        },
        Ok(None) => gone,
        Err(e) => e.into(),
    }
}

/// Creates flag `name` (no `If-Match`; 428 when it exists) or replaces its settings (`If-Match`:
/// its current version; 412 when stale or gone). Overrides are kept. The bool: created.
pub async fn upsert(
    pool: &PgPool,
    actor: &str,
    name: &str,
    body: &FlagBody,
    if_match: Option<i64>,
) -> Result<(Flag, bool), FlagsError> {
    let s = settings(name, body)?;
    let mut tx = crate::db::begin(pool).await?;
    // `$5` is the expected version; a create has none (and sets no version: it starts at 1).
    let sql = match if_match {
        None => {
            "INSERT INTO flags.flags (name, enabled, rollout_percent, description)
             SELECT $1, $2, $3, $4 WHERE $5::bigint IS NULL ON CONFLICT (name) DO NOTHING"
        }
        Some(_) => {
            "UPDATE flags.flags SET enabled = $2, rollout_percent = $3, description = $4,
                 version = version + 1, updated_at = now()
             WHERE name = $1 AND version = $5"
        }
    };
    let written = sqlx::query(sql)
        .bind(name)
        .bind(s.enabled)
        .bind(s.rollout_percent)
        .bind(&s.description)
        .bind(if_match)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if written == 0 {
        return Err(match if_match {
            None => FlagsError::IfMatchRequired(name.to_owned()),
            Some(_) => miss(&mut tx, name, FlagsError::Missing(name.to_owned())).await,
        });
    }
    let flag = fetch(&mut tx, name).await?;
    let created = if_match.is_none();
    let action = if created {
        ("flag.create", "flag.created")
    } else {
        ("flag.update", "flag.updated")
    };
    let detail = json!({"enabled": s.enabled, "rollout_percent": s.rollout_percent,
                        "description": s.description, "version": flag.version});
    commit_change(tx, actor, action, name, detail).await?;
    Ok((flag, created))
}

/// Deletes flag `name` at version `if_match` (its overrides with it): 404 when it does not exist,
/// 412 when stale. Proxies fall back to the YAML base's flag, else the built-in default.
pub async fn delete(
    pool: &PgPool,
    actor: &str,
    name: &str,
    if_match: i64,
) -> Result<(), FlagsError> {
    refuse(vec![name_check(name)])?;
    let mut tx = crate::db::begin(pool).await?;
    let deleted = sqlx::query("DELETE FROM flags.flags WHERE name = $1 AND version = $2")
        .bind(name)
        .bind(if_match)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(miss(&mut tx, name, FlagsError::NotFound(name.to_owned())).await);
    }
    commit_change(
        tx,
        actor,
        ("flag.delete", "flag.deleted"),
        name,
        json!({"version": if_match}),
    )
    .await
}

/// Locks flag `name` for an override change: 404 when it does not exist, 412 when `if_match` is
/// given and stale.
async fn lock(
    conn: &mut PgConnection,
    name: &str,
    if_match: Option<i64>,
) -> Result<(), FlagsError> {
    let current: Option<i64> =
        sqlx::query_scalar("SELECT version FROM flags.flags WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    match (current, if_match) {
        (None, _) => Err(FlagsError::NotFound(name.to_owned())),
        (Some(current), Some(expected)) if current != expected => Err(FlagsError::Stale {
            name: name.to_owned(),
            current,
        }),
        _ => Ok(()),
    }
}

async fn bump(conn: &mut PgConnection, name: &str) -> Result<(), FlagsError> {
    sqlx::query("UPDATE flags.flags SET version = version + 1, updated_at = now() WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

/// Sets org `org`'s override of flag `name` (which must exist) to `enabled`.
pub async fn set_override(
    pool: &PgPool,
    actor: &str,
    name: &str,
    org: &str,
    enabled: bool,
    if_match: Option<i64>,
) -> Result<Flag, FlagsError> {
    check_override(name, org)?;
    let mut tx = crate::db::begin(pool).await?;
    lock(&mut tx, name, if_match).await?;
    sqlx::query(
        "INSERT INTO flags.org_overrides (flag, org, enabled) VALUES ($1, $2, $3)
         ON CONFLICT (flag, org) DO UPDATE SET enabled = EXCLUDED.enabled, updated_at = now()",
    )
    .bind(name)
    .bind(org)
    .bind(enabled)
    .execute(&mut *tx)
    .await?;
    bump(&mut tx, name).await?;
    let flag = fetch(&mut tx, name).await?;
    let detail = json!({"org": org, "enabled": enabled, "version": flag.version});
    commit_change(
        tx,
        actor,
        ("flag.override.set", "flag.override_set"),
        name,
        detail,
    )
    .await?;
    Ok(flag)
}

/// Removes org `org`'s override of flag `name` (idempotent: nothing written, audited or pushed when
/// there was none). Returns the flag as it is now.
pub async fn remove_override(
    pool: &PgPool,
    actor: &str,
    name: &str,
    org: &str,
    if_match: Option<i64>,
) -> Result<Flag, FlagsError> {
    check_override(name, org)?;
    let mut tx = crate::db::begin(pool).await?;
    lock(&mut tx, name, if_match).await?;
    let removed = sqlx::query("DELETE FROM flags.org_overrides WHERE flag = $1 AND org = $2")
        .bind(name)
        .bind(org)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if removed == 0 {
        return fetch(&mut tx, name).await;
    }
    bump(&mut tx, name).await?;
    let flag = fetch(&mut tx, name).await?;
    let detail = json!({"org": org, "version": flag.version});
    commit_change(
        tx,
        actor,
        ("flag.override.remove", "flag.override_removed"),
        name,
        detail,
    )
    .await?;
    Ok(flag)
}
