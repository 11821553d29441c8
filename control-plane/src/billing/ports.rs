//! The saga's ports: what the purchase saga needs from the payment provider, the ledger and the data
//! plane's balance mirror, as small traits. The engine only sees these, so it is tested with in-process
//! fakes, and the real adapters (HTTP for payments: [`super::payments_http`]; the ledger's and the
//! balance mirror's Rust APIs) plug in without the engine knowing them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a port call failed, as the engine needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Timeout, 5xx, connection refused: the effect may or may not have happened; retry with the same
    /// idempotency key.
    #[error("transient: {0}")]
    Transient(String),
    /// The card was declined: nothing was authorized. `payment_intent` is the declined intent, if any.
    #[error("declined ({code})")]
    Declined {
        code: String,
        payment_intent: Option<String>,
    },
    /// A request the other side will never accept (a bug or a misconfiguration): no retry helps.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// A payment intent as the provider reports it (the fields the saga reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    /// `requires_capture`, `succeeded`, `canceled`, `requires_payment_method`, …
    pub status: String,
    pub amount: i64,
    #[serde(default)]
    pub amount_received: i64,
    #[serde(default)]
    pub amount_refunded: i64,
}

/// An authorization request: create and confirm a manual-capture intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorize {
    pub amount_cents: i64,
    pub currency: String,
    /// E.g. `purchase:<id>:authorize`; a retry carries the same key, so the provider replays.
    pub idempotency_key: String,
    pub purchase_id: Uuid,
    pub org_id: Uuid,
}

/// The payment provider (a Stripe-like API).
#[async_trait]
pub trait Payments: Send + Sync {
    async fn authorize(&self, req: &Authorize) -> Result<PaymentIntent, PortError>;
    /// Captures; "already captured" is success.
    async fn capture(&self, pi: &str, idempotency_key: &str) -> Result<PaymentIntent, PortError>;
    /// Cancels; "already canceled" (or never authorized) is success.
    async fn cancel(&self, pi: &str, idempotency_key: &str) -> Result<PaymentIntent, PortError>;
    /// Refunds a captured intent in full.
    async fn refund(&self, pi: &str, idempotency_key: &str) -> Result<(), PortError>;
    async fn get(&self, pi: &str) -> Result<PaymentIntent, PortError>;
}

/// The ledger ([`super::adapters::LedgerCredits`]): every call idempotent by `purchase_ref`.
#[async_trait]
pub trait Credits: Send + Sync {
    async fn credit_purchase(
        &self,
        org: Uuid,
        tokens: i64,
        purchase_ref: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), PortError>;
    async fn reverse_purchase(&self, org: Uuid, purchase_ref: &str) -> Result<(), PortError>;
    /// The org's credited total and the ledger version it was read at.
    async fn credited_total(&self, org: Uuid) -> Result<(i64, i64), PortError>;
}

/// The data plane's prepaid-balance mirror ([`super::adapters::RedisMirror`] over `leaky_limit::balance`).
#[async_trait]
pub trait BalanceMirror: Send + Sync {
    /// Sets the org's credited total (absolute); applies only if `version` is newer than the mirror's.
    /// Returns whether it applied (an older version is no error: a newer total is already there).
    async fn set_credited(&self, org: Uuid, credited: i64, version: i64)
        -> Result<bool, PortError>;

    /// False for a stand-in that writes no mirror at all (no `--redis-url`): the saga then records
    /// the mirror steps as skipped instead of pretending they ran.
    fn configured(&self) -> bool {
        true
    }
}
