//! The daily notice of what is about to expire: every credit block with tokens left (the ledger's
//! [`ledger::expiring_blocks`]) and every unrevoked API key (tenancy's [`tenancy::keys::expiring`])
//! that expires within [`WITHIN`] gets one notification — `credits.expiring` / `key.expiring`. Its
//! event id names the block (the key and its expiry), so later runs and other replicas add nothing,
//! while a key whose expiry is moved is announced again.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use sqlx::PgPool;

use super::triggers::{enqueue_for, Notification};
use crate::clock::Clock;
use crate::ledger::{self, ExpiringBlock, LedgerError};
use crate::tenancy::{self, keys::ApiKey};

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

fn key_notice(k: &ApiKey, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> Notification {
    Notification {
        event_id: format!("key.expiring:{}:{}", k.id, expires_at.timestamp_micros()),
        org: k.org_id,
        kind: "key.expiring".into(),
        time: now,
        data: json!({"key": k.id, "name": k.name, "prefix": k.prefix, "expires_at": expires_at}),
        email: true,
    }
}

/// Enqueues the notice of every block and key expiring within [`WITHIN`] of `now`; returns how
/// many deliveries were new.
pub async fn notify_expiring(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, LedgerError> {
    let blocks = ledger::expiring_blocks(pool, now, now + WITHIN, BATCH).await?;
    let mut notices: Vec<Notification> = blocks.iter().map(|b| notice(b, now)).collect();
    let keys = match tenancy::keys::expiring(pool, now, now + WITHIN, BATCH).await {
        Ok(keys) => keys,
        Err(tenancy::TenancyError::Db(e)) => return Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "notify: expiring keys not read");
            Vec::new()
        }
    };
    notices.extend(
        keys.iter()
            .filter_map(|k| Some(key_notice(k, k.expires_at?, now))),
    );
    let mut added = 0;
    for n in &notices {
        let mut tx = crate::db::begin(pool).await?;
        added += enqueue_for(pool, &mut tx, n).await?;
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
            Ok(n) => tracing::info!(
                deliveries = n,
                "notify: expiring credit blocks and keys announced"
            ),
            Err(e) => tracing::warn!(error = %e, "notify: expiring round failed, retried next run"),
        }
    }
}
