//! The balance reconciler: keeps the data plane's Redis accounts (`leaky_limit::balance`) in line
//! with the ledger, which is the truth.
//!
//! Every pass, for every org with a ledger stream:
//! 1. `credited` := the ledger's credited total at its version (`set_credited`, absolute and
//!    versioned): a flushed or lost Redis is rebuilt, a mirror step that never ran is made good.
//! 2. `debited` below the ledger's `consumed` → raised to `consumed` at once: Redis lost debits (a
//!    flush, a failover), and the ledger has the usage events.
//! 3. `debited` above `consumed` → lowered to `consumed`, but only when both sides are unchanged
//!    since this reconciler's previous pass: in-flight requests hold reservations in `debited`, and
//!    usage events reach the ledger late, so a moving pair is normal; a pair that stands still over a
//!    whole interval is a reservation nobody will settle (a killed proxy, a reservation that timed
//!    out). The memory of the previous pass is per process, so each replica needs two passes of its
//!    own before it lowers anything.
//!
//! `debited` is changed only by compare-and-set (`correct_debited`): a reservation that lands between
//! the read and the write makes the write a no-op, retried next pass. Every correction is logged
//! (warn: org, field, before, after, reason) and counted ([`ReconcileStats`]). A pass holds a
//! transaction-scoped advisory lock, so on several replicas one pass runs at a time and the others
//! skip theirs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::adapters::RedisMirror;
use super::ports::{BalanceMirror, PortError};
use crate::ledger::{self, LedgerError};

/// The advisory lock key of a pass (`'leaky.reconcile'` hashed once, fixed forever).
pub const LOCK_KEY: i64 = 0x6c65_616b_7972_6563;

/// How often the control plane reconciles (also the "unchanged for" window of rule 3).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(60);

/// Corrections this process made, by field.
#[derive(Debug, Default)]
pub struct ReconcileStats {
    credited: AtomicU64,
    debited_raised: AtomicU64,
    debited_lowered: AtomicU64,
    passes: AtomicU64,
}

impl ReconcileStats {
    /// `(kind, count)` for `leaky_reconcile_corrections_total{kind}`.
    pub fn corrections(&self) -> [(&'static str, u64); 3] {
        [
            ("credited", self.credited.load(Ordering::Relaxed)),
            (
                "debited_raised",
                self.debited_raised.load(Ordering::Relaxed),
            ),
            (
                "debited_lowered",
                self.debited_lowered.load(Ordering::Relaxed),
            ),
        ]
    }

    /// Passes this process ran (not those skipped for another replica's lock).
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Redis(#[from] PortError),
}

/// One correction a pass made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    pub org: Uuid,
    /// `credited`, `debited_raised` or `debited_lowered`.
    pub kind: &'static str,
    pub before: i64,
    pub after: i64,
}

/// What a pass did; `ran` is false when another replica held the lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    pub ran: bool,
    pub corrections: Vec<Correction>,
}

/// The reconciler of one process. Keep one per process and call [`Reconciler::pass`] on a timer.
pub struct Reconciler {
    pool: PgPool,
    mirror: Arc<RedisMirror>,
    stats: Arc<ReconcileStats>,
    /// Per org, `(consumed, debited)` as the previous pass saw them with `debited > consumed`.
    above: tokio::sync::Mutex<HashMap<Uuid, (i64, i64)>>,
}

impl Reconciler {
    pub fn new(pool: PgPool, mirror: Arc<RedisMirror>, stats: Arc<ReconcileStats>) -> Self {
        Self {
            pool,
            mirror,
            stats,
            above: tokio::sync::Mutex::default(),
        }
    }

    /// One pass over every org with a ledger stream (see the module docs).
    pub async fn pass(&self) -> Result<Pass, ReconcileError> {
        let mut above = self.above.lock().await;
        let mut tx = crate::db::begin(&self.pool).await?;
        let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut *tx)
            .await?;
        if !mine {
            return Ok(Pass::default());
        }
        let mut corrections = Vec::new();
        for org in ledger::orgs(&self.pool).await? {
            self.credited(org, &mut corrections).await?;
            self.debited(org, &mut above, &mut corrections).await?;
        }
        tx.commit().await?;
        self.stats.passes.fetch_add(1, Ordering::Relaxed);
        Ok(Pass {
            ran: true,
            corrections,
        })
    }

    /// Rule 1: the ledger's credited total, absolute and versioned.
    async fn credited(&self, org: Uuid, out: &mut Vec<Correction>) -> Result<(), ReconcileError> {
        let (credited, version) = ledger::credited_total(&self.pool, org).await?;
        let before = self.mirror.read(org).await?;
        let applied = self.mirror.set_credited(org, credited, version).await?;
        let was = before.map(|s| s.credited);
        if applied && was != Some(credited) {
            let reason = if before.is_none() {
                "account missing in Redis (flushed or lost): rebuilt from the ledger"
            } else {
                "mirror behind the ledger"
            };
            self.record(org, "credited", was.unwrap_or(0), credited, reason, out);
        }
        Ok(())
    }

    /// Rules 2 and 3: `debited` against the ledger's `consumed`.
    async fn debited(
        &self,
        org: Uuid,
        above: &mut HashMap<Uuid, (i64, i64)>,
        out: &mut Vec<Correction>,
    ) -> Result<(), ReconcileError> {
        let consumed = ledger::balance(&self.pool, org).await?.consumed;
        let debited = self.mirror.read(org).await?.map_or(0, |s| s.debited);
        if debited < consumed {
            above.remove(&org);
            if self.mirror.correct_debited(org, debited, consumed).await? {
                let reason = "Redis lost debits the ledger has";
                self.record(org, "debited_raised", debited, consumed, reason, out);
            }
        } else if debited > consumed {
            if above.get(&org) == Some(&(consumed, debited)) {
                above.remove(&org);
                if self.mirror.correct_debited(org, debited, consumed).await? {
                    let reason = "reservations unsettled over two passes (leaked)";
                    self.record(org, "debited_lowered", debited, consumed, reason, out);
                }
            } else {
                above.insert(org, (consumed, debited));
            }
        } else {
            above.remove(&org);
        }
        Ok(())
    }

    fn record(
        &self,
        org: Uuid,
        kind: &'static str,
        before: i64,
        after: i64,
        reason: &str,
        out: &mut Vec<Correction>,
    ) {
        let counter = match kind {
            "credited" => &self.stats.credited,
            "debited_raised" => &self.stats.debited_raised,
            _ => &self.stats.debited_lowered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%org, field = kind, before, after, reason, "balance reconciled");
        out.push(Correction {
            org,
            kind,
            before,
            after,
        });
    }

    /// A pass every `every` until the task is dropped; a failed pass is logged and retried next time.
    pub async fn run_every(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "balance reconcile pass failed; retried next round");
            }
        }
    }
}
