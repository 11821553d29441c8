//! The daily notice of credit blocks about to expire: every block with tokens left that expires
//! within [`WITHIN`] gets one `credits.expiring` notification (its event id is the block's, so later
//! runs, and other replicas, add nothing).

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use sqlx::PgPool;

use super::triggers::{enqueue_for, Notification};
use crate::clock::Clock;
use crate::ledger::{self, ExpiringBlock, LedgerError};

/// How far ahead a block counts as "about to expire".
pub const WITHIN: Duration = Duration::days(7);
/// How often the job runs.
pub const EVERY: StdDuration = StdDuration::from_secs(24 * 3600);
/// Blocks looked at per run.
const BATCH: i64 = 1000;

fn notice(b: &ExpiringBlock, now: DateTime<Utc>) -> Notification {
    Notification {
        event_id: format!("credits.expiring:{}", b.id),
        org: b.org,
        kind: "credits.expiring".into(),
        time: now,
        data: json!({"block": b.id, "kind": b.kind, "ref": b.reference, "remaining": b.remaining,
                     "expires_at": b.expires_at}),
        email: true,
    }
}

/// Enqueues the notice of every block expiring within [`WITHIN`] of `now`; returns how many
/// deliveries were new.
pub async fn notify_expiring(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, LedgerError> {
    let blocks = ledger::expiring_blocks(pool, now, now + WITHIN, BATCH).await?;
    let mut added = 0;
    for b in &blocks {
        let mut tx = pool.begin().await?;
        added += enqueue_for(pool, &mut tx, &notice(b, now)).await?;
        tx.commit().await?;
    }
    Ok(added)
}

/// Runs [`notify_expiring`] every `every` on `clock` until the task is dropped.
pub async fn notify_every(pool: PgPool, clock: Arc<dyn Clock>, every: StdDuration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match notify_expiring(&pool, clock.now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deliveries = n, "notify: expiring credit blocks announced"),
            Err(e) => tracing::warn!(error = %e, "notify: expiring-credit round failed"),
        }
    }
}
