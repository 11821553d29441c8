//! Prepaid-balance thresholds. **Definition:** an org's *credited* tokens are `purchased + granted −
//! refunded − expired` (what the ledger ever gave it and did not take back); level `L` (80, 100) is
//! *crossed* when at least `L` % of them is consumed, i.e. `balance ≤ credited × (100 − L) / 100`
//! with `credited > 0`. Each `(org, level)` has a row in `notify.thresholds`: armed, it fires one
//! `balance.threshold_crossed` notification on the first ledger event past the level and disarms;
//! it re-arms when a later event finds the balance above the level again (a credit). So many debits
//! past 80 % make one notification, never one per request.
//!
//! The balance comes from the ledger event's own snapshot (`data.balance`), not a fresh read, and a
//! snapshot older than the last one applied (`version`) is ignored — replays and reordering cannot
//! re-fire a level.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::triggers::{enqueue_for, Notification};

/// The levels, in percent of the credited tokens consumed.
pub const LEVELS: [i32; 2] = [80, 100];
/// The `kind` of balance thresholds in `notify.thresholds`.
const KIND: &str = "balance";

/// The numbers of a ledger balance snapshot the rule needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub tokens: i64,
    pub credited: i64,
    pub version: i64,
}

impl Snapshot {
    /// Reads the ledger's `Balance` JSON (`tokens`, `purchased`, `granted`, `refunded`, `expired`,
    /// `version`).
    pub fn from_json(b: &Value) -> Option<Snapshot> {
        let n = |k: &str| b[k].as_i64();
        Some(Snapshot {
            tokens: n("tokens")?,
            credited: n("purchased")? + n("granted")? - n("refunded")? - n("expired")?,
            version: n("version")?,
        })
    }

    /// Whether at least `level` % of the credited tokens is consumed.
    pub fn crossed(&self, level: i32) -> bool {
        self.credited > 0
            && i128::from(self.tokens) * 100 <= i128::from(self.credited) * i128::from(100 - level)
    }

    /// Percent of the credited tokens consumed (0 when nothing was credited).
    pub fn consumed_percent(&self) -> i64 {
        if self.credited <= 0 {
            return 0;
        }
        let used = i128::from(self.credited - self.tokens) * 100 / i128::from(self.credited);
        i64::try_from(used).unwrap_or(i64::MAX)
    }
}

/// Applies `org`'s balance snapshot `balance` (a ledger event's) to its thresholds on `tx`, enqueuing
/// a notification for each armed level it crosses.
pub async fn on_balance(
    pool: &PgPool,
    tx: &mut PgConnection,
    org: Uuid,
    balance: &Value,
    time: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let Some(snap) = Snapshot::from_json(balance) else {
        tracing::warn!(%org, "ledger event without a balance snapshot: thresholds not checked");
        return Ok(());
    };
    for level in LEVELS {
        sqlx::query(
            "INSERT INTO notify.thresholds (org_id, kind, level, armed, version) VALUES ($1, $2, $3, true, 0)
             ON CONFLICT DO NOTHING",
        )
        .bind(org)
        .bind(KIND)
        .bind(level)
        .execute(&mut *tx)
        .await?;
        let (armed, version): (bool, i64) = sqlx::query_as(
            "SELECT armed, version FROM notify.thresholds WHERE org_id = $1 AND kind = $2 AND level = $3 FOR UPDATE",
        )
        .bind(org)
        .bind(KIND)
        .bind(level)
        .fetch_one(&mut *tx)
        .await?;
        if snap.version <= version {
            continue;
        }
        let crossed = snap.crossed(level);
        if crossed && armed {
            enqueue_for(pool, tx, &crossing(org, level, &snap, time)).await?;
        }
        sqlx::query(
            "UPDATE notify.thresholds SET armed = $4, version = $5 WHERE org_id = $1 AND kind = $2 AND level = $3",
        )
        .bind(org)
        .bind(KIND)
        .bind(level)
        .bind(!crossed)
        .bind(snap.version)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// The notification of `org` crossing `level` at `snap`.
fn crossing(org: Uuid, level: i32, snap: &Snapshot, time: DateTime<Utc>) -> Notification {
    Notification {
        // The ledger version makes each crossing its own notification, and a replay the same one.
        event_id: format!("balance.threshold:{org}:{level}:{}", snap.version),
        org,
        kind: "balance.threshold_crossed".into(),
        time,
        data: json!({
            "level": level, "balance": snap.tokens, "credited": snap.credited,
            "consumed_percent": snap.consumed_percent(), "ledger_version": snap.version,
        }),
        email: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(tokens: i64, credited: i64) -> Snapshot {
        Snapshot {
            tokens,
            credited,
            version: 1,
        }
    }

    #[test]
    fn levels_are_crossed_at_80_and_100_percent_consumed_of_the_credited_tokens() {
        assert!(!snap(201, 1000).crossed(80));
        assert!(snap(200, 1000).crossed(80));
        assert!(!snap(1, 1000).crossed(100));
        assert!(snap(0, 1000).crossed(100));
        assert!(snap(-5, 1000).crossed(100), "overdraft is past 100 %");
        assert!(
            !snap(0, 0).crossed(80),
            "nothing credited: no prepaid balance"
        );
        assert_eq!(snap(150, 1000).consumed_percent(), 85);
    }

    #[test]
    fn reads_the_ledger_balance_json() {
        let b = json!({"org": "x", "tokens": 300, "purchased": 1000, "granted": 100, "consumed": 700,
                       "refunded": 50, "expired": 50, "version": 9, "as_of": "2026-01-01T00:00:00Z"});
        assert_eq!(
            Snapshot::from_json(&b),
            Some(Snapshot {
                tokens: 300,
                credited: 1000,
                version: 9
            })
        );
        assert_eq!(Snapshot::from_json(&json!({})), None);
    }
}
