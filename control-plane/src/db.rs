//! The PostgreSQL pool and the migrations every bounded context ships in `migrations/`.
//!
//! The pool connects lazily (the process starts while Postgres is down) and waits at most
//! [`ACQUIRE_TIMEOUT`] for a connection, so a down database turns into a quick 503, never a hang.
//! Migrations run under a session-level advisory lock, so N replicas starting together migrate once:
//! the first takes the lock and migrates, the others wait, then find nothing left to do.
//! Request handlers open transactions with [`begin`], which traces each one (`tx.rs`).

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Connection;

mod tx;
pub use tx::{begin, Tx};

/// How long a request waits for a pooled connection before it is answered 503.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The advisory-lock key migrations run under (`pg_advisory_lock`): "leakytok" in ASCII.
pub const MIGRATION_LOCK: i64 = 0x6c65_616b_7974_6f6b;

/// The embedded migrations, without sqlx's own per-run lock: [`MIGRATION_LOCK`], held around the whole
/// run, is the one lock (so the concurrency test exercises it, not a second lock behind it).
fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_locking(false);
    migrator
}

/// Failures of the database layer itself (connecting, migrating).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(#[source] sqlx::Error),
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A pool that does not connect until first used.
pub fn pool(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy(url)
        .map_err(DbError::Url)
}

/// Applies every pending migration once, holding [`MIGRATION_LOCK`] on one connection meanwhile.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    let result = migrator().run_direct(&mut *conn).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await;
    if unlocked.is_err() {
        // Closing the session releases the lock; never hand a connection that may hold it back to the pool.
        let _ = conn.detach().close().await;
    }
    result?;
    unlocked?;
    Ok(())
}

/// Whether the database answers a trivial query now.
pub async fn ping(pool: &PgPool) -> bool {
    match pool.acquire().await {
        Ok(mut conn) => conn.ping().await.is_ok(),
        Err(_) => false,
    }
}
