//! Migrations against a real PostgreSQL: from empty, and three "replicas" migrating the same database
//! at once under the advisory lock.

#![allow(clippy::unwrap_used)]

use crate::common;

use leaky_control_plane::db;

async fn versions(pool: &sqlx::PgPool) -> anyhow::Result<Vec<(i64, i64)>> {
    Ok(sqlx::query_as("SELECT version, count(*) FROM _sqlx_migrations WHERE success GROUP BY version ORDER BY version")
        .fetch_all(pool)
        .await?)
}

/// `(version, success)` of every migration file in the crate, applied once each.
fn every_migration() -> Vec<(i64, i64)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut all: Vec<(i64, i64)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some((name.split('_').next()?.parse().ok()?, 1))
        })
        .collect();
    all.sort_unstable();
    all
}

#[tokio::test]
async fn migrations_from_empty() -> anyhow::Result<()> {
    let url = common::fresh_db().await?;
    let pool = db::pool(&url, 2)?;
    db::migrate(&pool).await?;
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables
         WHERE table_schema IN ('tenancy', 'audit', 'registry', 'config', 'flags') ORDER BY 1",
    )
    .fetch_all(&pool)
    .await?;
    let tables: Vec<String> = tables.into_iter().map(|t| t.0).collect();
    assert_eq!(
        tables,
        [
            "audit.events",
            "config.instances",
            "config.versions",
            "flags.flags",
            "flags.org_overrides",
            "registry.instances",
            "tenancy.api_keys",
            "tenancy.orgs",
            "tenancy.revision",
            "tenancy.tiers",
            "tenancy.users"
        ]
    );
    assert_eq!(versions(&pool).await?, every_migration());
    let tiers: Vec<(String,)> = sqlx::query_as("SELECT name FROM tenancy.tiers ORDER BY name")
        .fetch_all(&pool)
        .await?;
    assert_eq!(tiers.len(), 3, "seeded tiers: {tiers:?}");
    // Idempotent: a second run (a restart) changes nothing.
    db::migrate(&pool).await?;
    assert_eq!(versions(&pool).await?, every_migration());
    Ok(())
}

#[tokio::test]
async fn three_replicas_migrate_concurrently_once() -> anyhow::Result<()> {
    let url = common::fresh_db().await?;
    let pools = [db::pool(&url, 2)?, db::pool(&url, 2)?, db::pool(&url, 2)?];
    let (a, b, c) = tokio::join!(
        db::migrate(&pools[0]),
        db::migrate(&pools[1]),
        db::migrate(&pools[2])
    );
    a?;
    b?;
    c?;
    assert_eq!(versions(&pools[0]).await?, every_migration());
    // The lock is released afterwards: another session can take it at once.
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(db::MIGRATION_LOCK)
        .fetch_one(&pools[1])
        .await?;
    assert!(free, "the migration lock is still held");
    Ok(())
}
