//! The token purchase saga: its steps, their compensations, and the purchases' reads and writes.
//!
//! Forward: `authorize` (create and confirm a manual-capture payment intent) → `credit` (the ledger,
//! ref = purchase id) → `raise_balance` (the data plane's mirror gets the ledger's credited total and
//! version) → `capture`. On failure the compensations of every step that may have taken effect run:
//! `reverse_credit` → `release_balance` → `cancel_payment` (a refund if the intent was captured).
//! `reverse_credit` runs before `release_balance` on purpose: the mirror takes an absolute, versioned
//! total, and only the ledger after the reversal has one to give. A capture that keeps failing
//! compensates the same way, so no credit outlives its payment and no capture lacks its credit.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use super::ports::{Authorize, PortError};
use super::saga::{Ports, SagaState};
use crate::outbox;

/// `billing.sagas.kind` of purchases.
pub const KIND: &str = "purchase";
/// The topic of billing's domain events.
pub const TOPIC: &str = "leaky.billing.v1";
/// The forward steps, in order.
pub const FORWARD: [&str; 4] = ["authorize", "credit", "raise_balance", "capture"];
/// Every compensation, in the order they run.
pub const COMPENSATIONS: [&str; 3] = ["reverse_credit", "release_balance", "cancel_payment"];

/// A purchase saga's `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PurchaseData {
    pub org_id: Uuid,
    pub tokens: i64,
    pub amount_cents: i64,
    pub currency: String,
    /// When the credited tokens expire.
    pub expires_at: Option<DateTime<Utc>>,
    /// Known once `authorize` answered (also on a decline).
    #[serde(default)]
    pub payment_intent: Option<String>,
    /// The compensations to run, fixed when compensation starts.
    #[serde(default)]
    pub compensations: Vec<String>,
}

impl PurchaseData {
    /// The compensation after `step`, if any.
    pub fn next_compensation(&self, step: &str) -> Option<String> {
        let at = self.compensations.iter().position(|s| s == step)?;
        self.compensations.get(at + 1).cloned()
    }
}

/// The forward step after `step`; `None` after the last.
pub fn next_forward(step: &str) -> Option<&'static str> {
    let at = FORWARD.iter().position(|s| *s == step)?;
    FORWARD.get(at + 1).copied()
}

/// The compensations owed when forward step `failed` could not finish: those of every step up to and
/// including it (it may have taken effect before failing), in [`COMPENSATIONS`] order.
pub fn compensations(failed: &str) -> Vec<String> {
    let reached = FORWARD.iter().position(|s| *s == failed).unwrap_or(0);
    let mut owed = Vec::new();
    if reached >= 1 {
        owed.push("reverse_credit".to_owned());
    }
    if reached >= 2 {
        owed.push("release_balance".to_owned());
    }
    owed.push("cancel_payment".to_owned());
    owed
}

/// Runs one step's side effect; returns the detail its history row keeps. Each external call carries
/// `purchase:<id>:<step>` (or the purchase id as the ledger's ref), so a re-run has no second effect.
pub async fn run_step(
    ports: &Ports,
    id: Uuid,
    step: &str,
    data: &mut PurchaseData,
) -> Result<Value, PortError> {
    let purchase_ref = id.to_string();
    match step {
        "authorize" => authorize(ports, id, data).await,
        "credit" => {
            let (org, tokens) = (data.org_id, data.tokens);
            ports
                .credits
                .credit_purchase(org, tokens, &purchase_ref, data.expires_at)
                .await?;
            Ok(json!({ "tokens": tokens, "expires_at": data.expires_at }))
        }
        "raise_balance" | "release_balance" => mirror_ledger(ports, data.org_id).await,
        "capture" => {
            let pi = intent_of(data)?;
            let got = ports.payments.capture(&pi, &key(id, "capture")).await?;
            Ok(json!({ "payment_intent": got.id, "status": got.status }))
        }
        "reverse_credit" => {
            ports
                .credits
                .reverse_purchase(data.org_id, &purchase_ref)
                .await?;
            Ok(json!({ "tokens": data.tokens }))
        }
        "cancel_payment" => cancel_or_refund(ports, id, data).await,
        other => Err(PortError::Permanent(format!("unknown step `{other}`"))),
    }
}

pub(super) fn key(id: Uuid, step: &str) -> String {
    format!("purchase:{id}:{step}")
}

fn intent_of(data: &PurchaseData) -> Result<String, PortError> {
    data.payment_intent
        .clone()
        .ok_or_else(|| PortError::Permanent("no payment intent recorded".to_owned()))
}

pub(super) async fn authorize(
    ports: &Ports,
    id: Uuid,
    data: &mut PurchaseData,
) -> Result<Value, PortError> {
    let req = Authorize {
        amount_cents: data.amount_cents,
        currency: data.currency.clone(),
        idempotency_key: key(id, "authorize"),
        purchase_id: id,
        org_id: data.org_id,
    };
    match ports.payments.authorize(&req).await {
        Ok(pi) => {
            data.payment_intent = Some(pi.id.clone());
            if pi.status != "requires_capture" {
                let why = format!("payment intent {} is {} after confirm", pi.id, pi.status);
                return Err(PortError::Permanent(why));
            }
            Ok(json!({ "payment_intent": pi.id, "status": pi.status, "amount": pi.amount }))
        }
        Err(PortError::Declined {
            code,
            payment_intent,
        }) => {
            if payment_intent.is_some() {
                data.payment_intent.clone_from(&payment_intent);
            }
            Err(PortError::Declined {
                code,
                payment_intent,
            })
        }
        Err(e) => Err(e),
    }
}

/// The step detail of a mirror step on a control plane without a data-plane mirror (`--redis-url`).
pub const SKIPPED_NO_MIRROR: &str = "no data-plane mirror configured";

/// Sets the mirror to the ledger's credited total at its version (absolute, so a re-run or a late
/// write of an older total changes nothing).
pub(super) async fn mirror_ledger(ports: &Ports, org: Uuid) -> Result<Value, PortError> {
    if !ports.mirror.configured() {
        return Ok(json!({ "skipped": SKIPPED_NO_MIRROR }));
    }
    let (credited, version) = ports.credits.credited_total(org).await?;
    let applied = ports.mirror.set_credited(org, credited, version).await?;
    Ok(json!({ "credited": credited, "version": version, "applied": applied }))
}

/// Releases the payment, whatever state it reached: the provider's intent (GET) is the truth.
/// Authorized → cancel; captured → refund; declined or canceled → nothing. With no intent recorded
/// (authorize's answer was lost) the authorization is replayed under its own key, which returns the
/// intent the provider may have created without creating another.
pub(super) async fn cancel_or_refund(
    ports: &Ports,
    id: Uuid,
    data: &mut PurchaseData,
) -> Result<Value, PortError> {
    if data.payment_intent.is_none() {
        match authorize(ports, id, data).await {
            Ok(_) | Err(PortError::Permanent(_)) if data.payment_intent.is_some() => {}
            Err(PortError::Declined { .. }) | Ok(_) | Err(PortError::Permanent(_)) => {
                return Ok(json!({ "action": "none", "reason": "nothing was authorized" }))
            }
            Err(e) => return Err(e),
        }
    }
    let pi = intent_of(data)?;
    let current = ports.payments.get(&pi).await?;
    let action = match current.status.as_str() {
        "requires_capture" => {
            ports.payments.cancel(&pi, &key(id, "cancel")).await?;
            "canceled"
        }
        "succeeded" if current.amount_refunded < current.amount => {
            ports.payments.refund(&pi, &key(id, "refund")).await?;
            "refunded"
        }
        _ => "none",
    };
    Ok(json!({ "payment_intent": pi, "action": action, "status_before": current.status }))
}

/// Keeps the purchase row's payment intent in step with the saga's data (same transaction).
pub async fn record(
    conn: &mut PgConnection,
    id: Uuid,
    data: &PurchaseData,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE billing.purchases SET payment_intent = $2
         WHERE id = $1 AND payment_intent IS DISTINCT FROM $2",
    )
    .bind(id)
    .bind(data.payment_intent.as_deref())
    .execute(conn)
    .await?;
    Ok(())
}

/// The outbox event of a purchase reaching `state`.
pub fn event(
    id: Uuid,
    org: Uuid,
    data: &PurchaseData,
    state: SagaState,
    reason: Option<&str>,
) -> outbox::Event {
    let kind = match state {
        SagaState::Completed => "purchase.completed",
        SagaState::NeedsAttention => "purchase.needs_attention",
        _ => "purchase.compensated",
    };
    outbox::Event {
        aggregate_type: "purchase",
        aggregate_id: id.to_string(),
        kind,
        topic: TOPIC,
        data: json!({
            "id": id, "org": org, "tokens": data.tokens, "amount": data.amount_cents,
            "currency": data.currency, "status": state.as_str(), "payment_intent": data.payment_intent,
            "reason": reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compensations_cover_every_step_that_may_have_taken_effect() {
        assert_eq!(compensations("authorize"), ["cancel_payment"]);
        assert_eq!(
            compensations("credit"),
            ["reverse_credit", "cancel_payment"]
        );
        let all = ["reverse_credit", "release_balance", "cancel_payment"];
        assert_eq!(compensations("raise_balance"), all);
        assert_eq!(compensations("capture"), all);
    }

    #[test]
    fn forward_steps_chain_to_the_end() {
        assert_eq!(next_forward("authorize"), Some("credit"));
        assert_eq!(next_forward("capture"), None);
        assert_eq!(next_forward("bogus"), None);
    }
}
