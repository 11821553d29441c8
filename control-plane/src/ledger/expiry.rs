//! The expiry job: expires what remains of each credit block past its `expires_at`, on an injected
//! clock. Safe on several replicas: a runner takes a block only under a try-advisory-lock (another
//! runner on the same block skips it rather than waits), and the entry's ref `expire:<block id>`
//! makes a second expiry of one block impossible even without the lock.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::commands::expire_block;
use super::LedgerError;
use crate::clock::Clock;

/// How often the control plane runs [`expire_due`].
pub const EXPIRE_EVERY: Duration = Duration::from_secs(60);
/// Blocks looked at per round.
const BATCH: i64 = 500;
/// Advisory-lock class of "a runner is expiring this block".
const EXPIRE_LOCK: i32 = 0x0b_0009;

/// Expires every block due at `now`; returns how many this call expired.
pub async fn expire_due(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, LedgerError> {
    let due: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT id, org_id FROM ledger.credit_blocks
         WHERE remaining > 0 AND expires_at <= $1 ORDER BY expires_at, id LIMIT $2",
    )
    .bind(now)
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    let mut expired = 0;
    for (block, org) in due {
        let mut tx = crate::db::begin(pool).await?;
        let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2))")
            .bind(EXPIRE_LOCK)
            .bind(block.to_string())
            .fetch_one(&mut *tx)
            .await?;
        if !mine {
            continue;
        }
        if expire_block(&mut tx, org, block, now).await?.is_some() {
            expired += 1;
        }
        tx.commit().await?;
    }
    Ok(expired)
}

/// Runs [`expire_due`] every `every` with `clock`'s "now" until the task is dropped.
pub async fn expire_every(pool: PgPool, clock: Arc<dyn Clock>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match expire_due(&pool, clock.now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(blocks = n, "ledger: credit blocks expired"),
            Err(e) => tracing::warn!(error = %e, "ledger: expiry round failed, retried next round"),
        }
    }
}

/// A credit block with tokens left that expires soon (what notifications announce).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ExpiringBlock {
    pub id: Uuid,
    pub org: Uuid,
    /// `purchased` or `granted`.
    pub kind: String,
    /// What made it (purchase id, grant id).
    #[sqlx(rename = "ref")]
    pub reference: String,
    pub remaining: i64,
    pub expires_at: DateTime<Utc>,
}

/// The blocks with tokens left expiring after `now` and at or before `until`, soonest first (at most
/// `limit`; a read for other contexts, e.g. notifications).
pub async fn expiring_blocks(
    pool: &PgPool,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<ExpiringBlock>, LedgerError> {
    Ok(sqlx::query_as(
        "SELECT id, org_id AS org, kind, ref, remaining, expires_at FROM ledger.credit_blocks
         WHERE remaining > 0 AND expires_at > $1 AND expires_at <= $2 ORDER BY expires_at, id LIMIT $3",
    )
    .bind(now)
    .bind(until)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
