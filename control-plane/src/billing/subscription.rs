//! The subscription saga: one kind (`subscription`) for the three operations that charge a plan —
//! subscribe, upgrade, renew ([`Op`]) — run by the same engine as purchases ([`super::saga`]).
//!
//! Forward: `authorize` → `capture` (the period's charge; the payment calls are the purchase saga's,
//! keyed by this saga's id and step) → `grant` (the plan's tokens in the ledger, ref
//! `sub:<id>:period:<n>`, expiring at the period end) → `raise_balance` (the purchase saga's mirror
//! step) → `set_tier` (the org's plan tier, through tenancy's change feed). Compensations in reverse:
//! `revert_tier` → `reverse_grant` → `release_balance` → `cancel_payment` (refund once captured).
//!
//! The subscription row changes in the transaction that finishes the saga ([`finish`]), with its
//! outbox event (`subscription.activated|changed|renewed|past_due|canceled` on [`super::purchase::TOPIC`]).
//! Plans, the API's writes and the renewal job are in [`super::subscription_store`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::ports::PortError;
use super::purchase::{self, PurchaseData};
use super::saga::{Ports, SagaState};
use crate::{ledger, outbox, tenancy};

/// `billing.sagas.kind` of subscription sagas.
pub const KIND: &str = "subscription";
/// The forward steps, in order.
pub const FORWARD: [&str; 5] = ["authorize", "capture", "grant", "raise_balance", "set_tier"];
/// Every compensation, in the order they run.
pub const COMPENSATIONS: [&str; 4] = [
    "revert_tier",
    "reverse_grant",
    "release_balance",
    "cancel_payment",
];

/// What a subscription saga does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// The first period.
    Subscribe,
    /// A more expensive plan now: the prorated difference.
    Upgrade,
    /// The next period (with a pending downgrade applied).
    Renew,
}

/// A subscription saga's `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionData {
    pub op: Op,
    pub subscription_id: Uuid,
    pub org_id: Uuid,
    /// The plan the subscription is on once the saga completes, and its tier.
    pub plan: String,
    pub tier: String,
    /// The tier to go back to if the saga compensates (`None`: each key's own tier).
    pub prev_tier: Option<String>,
    /// Tokens granted (0: no grant, e.g. an upgrade to a plan with no more tokens).
    pub tokens: i64,
    pub amount_cents: i64,
    pub currency: String,
    /// The period this saga pays for (1 = the first) and its bounds.
    pub period: i32,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub grant_ref: String,
    /// Renewals: declines before the subscription is canceled, and the wait between tries (seconds).
    #[serde(default)]
    pub max_renewal_failures: i32,
    #[serde(default)]
    pub retry_after_secs: i64,
    #[serde(default)]
    pub payment_intent: Option<String>,
    #[serde(default)]
    pub compensations: Vec<String>,
}

impl SubscriptionData {
    /// The compensation after `step`, if any.
    pub fn next_compensation(&self, step: &str) -> Option<String> {
        let at = self.compensations.iter().position(|s| s == step)?;
        self.compensations.get(at + 1).cloned()
    }

    /// The purchase saga's view of this charge, so its payment steps run unchanged.
    fn payment(&self) -> PurchaseData {
        PurchaseData {
            org_id: self.org_id,
            tokens: self.tokens,
            amount_cents: self.amount_cents,
            currency: self.currency.clone(),
            expires_at: Some(self.period_end),
            payment_intent: self.payment_intent.clone(),
            compensations: Vec::new(),
        }
    }
}

/// The ledger ref of period `n`'s grant of subscription `id`.
pub fn grant_ref(id: Uuid, period: i32) -> String {
    format!("sub:{id}:period:{period}")
}

/// The forward step after `step`; `None` after the last.
pub fn next_forward(step: &str) -> Option<&'static str> {
    let at = FORWARD.iter().position(|s| *s == step)?;
    FORWARD.get(at + 1).copied()
}

/// The compensations owed when forward step `failed` could not finish: those of every step up to and
/// including it, in [`COMPENSATIONS`] order.
pub fn compensations(failed: &str) -> Vec<String> {
    let reached = FORWARD.iter().position(|s| *s == failed).unwrap_or(0);
    let owed = [
        ("revert_tier", reached >= 4),
        ("reverse_grant", reached >= 2),
        ("release_balance", reached >= 3),
        ("cancel_payment", true),
    ];
    owed.into_iter()
        .filter(|(_, due)| *due)
        .map(|(s, _)| s.to_owned())
        .collect()
}

/// Runs one step's side effect; returns the detail its history row keeps. Every effect is keyed by
/// the saga id and step (payments) or the grant ref (ledger), or is absolute (tier, mirror).
pub async fn run_step(
    pool: &PgPool,
    ports: &Ports,
    id: Uuid,
    step: &str,
    data: &mut SubscriptionData,
) -> Result<Value, PortError> {
    match step {
        "authorize" | "cancel_payment" => payment(ports, id, step, data).await,
        "capture" => {
            let pi = data
                .payment_intent
                .clone()
                .ok_or_else(|| PortError::Permanent("no payment intent recorded".to_owned()))?;
            let got = ports
                .payments
                .capture(&pi, &purchase::key(id, "capture"))
                .await?;
            Ok(json!({ "payment_intent": got.id, "status": got.status }))
        }
        "grant" => grant(pool, id, data).await,
        "raise_balance" | "release_balance" => purchase::mirror_ledger(ports, data.org_id).await,
        "set_tier" => set_tier(pool, data.org_id, Some(&data.tier)).await,
        "revert_tier" => set_tier(pool, data.org_id, data.prev_tier.as_deref()).await,
        "reverse_grant" => {
            let e = ledger::reverse_grant(pool, data.org_id, &data.grant_ref)
                .await
                .map_err(ledger_error)?;
            Ok(json!({ "ref": data.grant_ref, "reversed": e.map(|e| e.tokens) }))
        }
        other => Err(PortError::Permanent(format!("unknown step `{other}`"))),
    }
}

/// `authorize` / `cancel_payment` through the purchase saga's own code.
async fn payment(
    ports: &Ports,
    id: Uuid,
    step: &str,
    data: &mut SubscriptionData,
) -> Result<Value, PortError> {
    let mut view = data.payment();
    let out = if step == "authorize" {
        purchase::authorize(ports, id, &mut view).await
    } else {
        purchase::cancel_or_refund(ports, id, &mut view).await
    };
    data.payment_intent = view.payment_intent;
    out
}

fn ledger_error(e: ledger::LedgerError) -> PortError {
    match e {
        ledger::LedgerError::Conflict(_) | ledger::LedgerError::Db(_) => {
            PortError::Transient(e.to_string())
        }
        other => PortError::Permanent(other.to_string()),
    }
}

fn db_error(e: impl std::fmt::Display) -> PortError {
    PortError::Transient(e.to_string())
}

/// Grants the period's tokens, only while the saga runs forward: the `FOR SHARE` lock on its row
/// orders the grant against the move to compensating (as the purchase credit does), so no grant
/// lands after `reverse_grant` ran.
async fn grant(pool: &PgPool, id: Uuid, data: &SubscriptionData) -> Result<Value, PortError> {
    if data.tokens <= 0 {
        return Ok(json!({ "skipped": "no tokens to grant" }));
    }
    let mut tx = crate::db::begin(pool).await.map_err(db_error)?;
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM billing.sagas WHERE id = $1 FOR SHARE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
    if state.as_deref() != Some("running") {
        let why = format!("saga {id} is {state:?}: no grant once compensation started");
        return Err(PortError::Permanent(why));
    }
    let (org, tokens, until) = (data.org_id, data.tokens, Some(data.period_end));
    ledger::grant_on(&mut tx, org, tokens, &data.grant_ref, until)
        .await
        .map_err(ledger_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(json!({ "ref": data.grant_ref, "tokens": tokens, "expires_at": data.period_end }))
}

/// Sets the org's plan tier. A tier deleted since the plan was made fails for good (compensate).
async fn set_tier(pool: &PgPool, org: Uuid, tier: Option<&str>) -> Result<Value, PortError> {
    let mut tx = crate::db::begin(pool).await.map_err(db_error)?;
    tenancy::orgs::set_plan_tier(&mut tx, org, tier)
        .await
        .map_err(|e| match e {
            tenancy::TenancyError::Db(_) => PortError::Transient(e.to_string()),
            other => PortError::Permanent(other.to_string()),
        })?;
    tx.commit().await.map_err(db_error)?;
    Ok(json!({ "plan_tier": tier }))
}

/// Appends one history row of subscription `id`.
pub async fn history(
    conn: &mut PgConnection,
    id: Uuid,
    event: &str,
    detail: Value,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO billing.subscription_history (subscription_id, event, detail, at) VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(event)
    .bind(detail)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The outbox event `kind` of subscription `id`.
pub fn event(id: Uuid, org: Uuid, kind: &'static str, data: Value) -> outbox::Event {
    let mut body = json!({ "id": id, "org": org });
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), data) {
        b.extend(extra);
    }
    outbox::Event {
        aggregate_type: "subscription",
        aggregate_id: id.to_string(),
        kind,
        topic: purchase::TOPIC,
        data: body,
    }
}

/// The subscription's change when its saga finishes, in the saga's last transaction.
pub async fn finish(
    conn: &mut PgConnection,
    saga: Uuid,
    d: &SubscriptionData,
    state: SagaState,
    reason: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let detail = json!({ "saga": saga, "op": d.op, "plan": d.plan, "period": d.period,
                         "amount": d.amount_cents, "tokens": d.tokens, "reason": reason });
    match (state, d.op) {
        (SagaState::Completed, _) => completed(conn, d, detail, now).await,
        (SagaState::NeedsAttention, _) => {
            // The saga stays the subscription's: nothing else starts until an operator settles it.
            history(conn, d.subscription_id, "needs_attention", detail, now).await
        }
        (_, Op::Subscribe) => {
            sqlx::query(
                "UPDATE billing.subscriptions SET state = 'incomplete', saga_id = NULL, updated_at = $2 WHERE id = $1",
            )
            .bind(d.subscription_id)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            history(conn, d.subscription_id, "subscribe_failed", detail, now).await
        }
        (_, Op::Upgrade) => {
            release(conn, d.subscription_id, now).await?;
            history(conn, d.subscription_id, "upgrade_failed", detail, now).await
        }
        (_, Op::Renew) => renewal_failed(conn, d, detail, now).await,
    }
}

async fn release(conn: &mut PgConnection, id: Uuid, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE billing.subscriptions SET saga_id = NULL, updated_at = $2 WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// A completed saga: the period it paid for (subscribe, renew) or the plan it moved to (upgrade).
async fn completed(
    conn: &mut PgConnection,
    d: &SubscriptionData,
    detail: Value,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let (event_name, kind) = match d.op {
        Op::Subscribe => ("activated", "subscription.activated"),
        Op::Upgrade => ("upgraded", "subscription.changed"),
        Op::Renew => ("renewed", "subscription.renewed"),
    };
    let new_period = d.op != Op::Upgrade;
    sqlx::query(
        "UPDATE billing.subscriptions SET state = 'active', plan = $2, saga_id = NULL, updated_at = $3,
                pending_plan = CASE WHEN $4 THEN NULL ELSE pending_plan END,
                period = CASE WHEN $4 THEN $5 ELSE period END,
                period_start = CASE WHEN $4 THEN $6 ELSE period_start END,
                period_end = CASE WHEN $4 THEN $7 ELSE period_end END,
                next_renewal_at = CASE WHEN $4 THEN $7 ELSE next_renewal_at END,
                renewal_failures = CASE WHEN $4 THEN 0 ELSE renewal_failures END
         WHERE id = $1",
    )
    .bind(d.subscription_id)
    .bind(&d.plan)
    .bind(now)
    .bind(new_period)
    .bind(d.period)
    .bind(d.period_start)
    .bind(d.period_end)
    .execute(&mut *conn)
    .await?;
    history(
        &mut *conn,
        d.subscription_id,
        event_name,
        detail.clone(),
        now,
    )
    .await?;
    outbox::append(conn, event(d.subscription_id, d.org_id, kind, detail)).await?;
    Ok(())
}

/// A renewal that could not be paid: `past_due` with the org's keys back on their own tiers, tried
/// again after `retry_after_secs`; after `max_renewal_failures` declines, `canceled`.
async fn renewal_failed(
    conn: &mut PgConnection,
    d: &SubscriptionData,
    detail: Value,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let failures: i32 = sqlx::query_scalar(
        "UPDATE billing.subscriptions SET renewal_failures = renewal_failures + 1, saga_id = NULL,
                updated_at = $2, next_renewal_at = $3
         WHERE id = $1 RETURNING renewal_failures",
    )
    .bind(d.subscription_id)
    .bind(now)
    .bind(now + chrono::Duration::seconds(d.retry_after_secs))
    .fetch_one(&mut *conn)
    .await?;
    let (state, kind) = if failures >= d.max_renewal_failures {
        ("canceled", "subscription.canceled")
    } else {
        ("past_due", "subscription.past_due")
    };
    sqlx::query("UPDATE billing.subscriptions SET state = $2 WHERE id = $1")
        .bind(d.subscription_id)
        .bind(state)
        .execute(&mut *conn)
        .await?;
    tenancy::orgs::set_plan_tier(&mut *conn, d.org_id, None)
        .await
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    let mut detail = detail;
    detail["renewal_failures"] = json!(failures);
    history(&mut *conn, d.subscription_id, state, detail.clone(), now).await?;
    outbox::append(conn, event(d.subscription_id, d.org_id, kind, detail)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compensations_cover_every_step_that_may_have_taken_effect() {
        assert_eq!(compensations("authorize"), ["cancel_payment"]);
        assert_eq!(compensations("capture"), ["cancel_payment"]);
        assert_eq!(compensations("grant"), ["reverse_grant", "cancel_payment"]);
        assert_eq!(
            compensations("raise_balance"),
            ["reverse_grant", "release_balance", "cancel_payment"]
        );
        assert_eq!(compensations("set_tier"), COMPENSATIONS);
    }

    #[test]
    fn forward_steps_chain_to_the_end() {
        assert_eq!(next_forward("authorize"), Some("capture"));
        assert_eq!(next_forward("set_tier"), None);
    }
}
