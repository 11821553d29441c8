//! Bounded context "ledger" (Postgres schema `ledger`): each org's token account as an append-only
//! event stream (`purchased`, `granted`, `consumed`, `refunded`, `expired` entries) and the projections
//! built from it — the balance and the credit blocks.
//!
//! **Concurrency.** Every change is an [`append`] at the version the command read: two writers that
//! read the same version cannot both append (the primary key refuses the second, which retries from
//! the new version). Commands are idempotent by `(org, kind, ref)`: repeating one returns the entry
//! already written. The entry, the projection update and the outbox event (`leaky.ledger.v1`) commit
//! in one transaction.
//!
//! **Credit blocks.** Each credit is a block with what remains of it and its expiry; consumption draws
//! from the soonest-expiring block first, expiry takes only a block's remainder, reversing a purchase
//! refunds what remains of its block. Each entry's `data` records how it moved the blocks (`draws`,
//! `block`, `repaid`, `overdraft`), so replaying the stream needs no clock and no guesswork.
//!
//! **Overdraft.** Admitted usage is always recorded: consumption beyond the credit makes the balance
//! negative (the shortfall is the entry's `overdraft`, kept as `debt`), and the next credit pays the
//! debt first. Invariants: `balance = purchased + granted − consumed − refunded − expired` (a CHECK
//! constraint) and `Σ remaining − debt = balance` ([`verify`]).
//!
//! **No snapshots.** Commands never replay: they read the projection row at its version. Replay runs
//! only in [`rebuild`]/[`verify`] (an operator command), streamed row by row, so a long stream costs
//! that command time, not memory, and never the request path.

mod api;
mod commands;
mod examples;
mod expiry;
mod maintenance;
mod projection;
mod stream;
pub mod usage;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::http::{FieldError, Problem, ProblemKind};

pub use api::{openapi, routes};
pub use commands::{
    consume, consume_on, credit_purchase, credit_purchase_on, grant, grant_on, reverse_grant,
    reverse_purchase, reverse_purchase_on,
};
pub use expiry::{expire_due, expire_every, expiring_blocks, ExpiringBlock, EXPIRE_EVERY};
pub use maintenance::{rebuild_command, repair, Repair};
pub use projection::{balance, credited_total, rebuild, verify, Drift};
pub use stream::{append, entries, orgs, NewEntry};

/// The topic of the ledger's domain events.
pub const LEDGER_TOPIC: &str = "leaky.ledger.v1";

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Purchased,
    Granted,
    Consumed,
    /// A purchase's credit reversed (what remained of its block).
    Refunded,
    Expired,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Purchased => "purchased",
            Kind::Granted => "granted",
            Kind::Consumed => "consumed",
            Kind::Refunded => "refunded",
            Kind::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        [
            Kind::Purchased,
            Kind::Granted,
            Kind::Consumed,
            Kind::Refunded,
            Kind::Expired,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// The CloudEvents `type` of the entry's domain event.
    fn event_type(self) -> &'static str {
        match self {
            Kind::Purchased | Kind::Granted => "ledger.credited",
            Kind::Consumed => "ledger.debited",
            Kind::Refunded => "ledger.refunded",
            Kind::Expired => "ledger.expired",
        }
    }
}

/// One entry of an org's stream.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Entry {
    pub id: Uuid,
    pub org: Uuid,
    /// Its position in the org's stream (1, 2, 3, …).
    pub version: i64,
    #[schema(inline)]
    pub kind: Kind,
    pub tokens: i64,
    /// What made it: purchase id, grant id, request id, `expire:<block id>`.
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    pub occurred_at: DateTime<Utc>,
    /// How the entry moved the credit blocks, and free detail (e.g. a grant's `reason`).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// An org's balance (the projection); all zeros for an org without entries.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Balance {
    pub org: Uuid,
    /// Spendable now: `purchased + granted − consumed − refunded − expired` (negative in overdraft).
    pub tokens: i64,
    pub purchased: i64,
    pub granted: i64,
    pub consumed: i64,
    pub refunded: i64,
    pub expired: i64,
    /// The stream version the balance reflects.
    pub version: i64,
    pub as_of: DateTime<Utc>,
    /// Consumption that found no credit yet, paid back first by the next credit.
    #[serde(skip)]
    pub debt: i64,
}

impl Balance {
    /// The accounting invariant of the projection.
    pub fn holds(&self) -> bool {
        self.tokens == self.purchased + self.granted - self.consumed - self.refunded - self.expired
    }
}

/// The ledger's failures. [`From<LedgerError> for Problem`] is the one place they become HTTP.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The stream moved since it was read (another writer appended first).
    #[error("the ledger of org {0} moved since it was read")]
    Conflict(Uuid),
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("org `{0}` not found")]
    NotFound(Uuid),
    /// A repeated command whose ref names an entry with other content.
    #[error("{0}")]
    Mismatch(String),
    /// The live projection differs from the stream's replay.
    #[error("{0}")]
    Drift(Box<Drift>),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl LedgerError {
    fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }

    /// Worth running the command again from a fresh read: a lost race or a transient lock failure.
    fn is_retryable(&self) -> bool {
        match self {
            LedgerError::Conflict(_) => true,
            LedgerError::Db(e) => e.as_database_error().is_some_and(|d| {
                // serialization_failure, deadlock_detected
                matches!(d.code().as_deref(), Some("40001" | "40P01"))
            }),
            _ => false,
        }
    }
}

impl From<LedgerError> for Problem {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::NotFound(_) => Problem::new(ProblemKind::NotFound, e.to_string()),
            LedgerError::Invalid(errors) => Problem::invalid(errors),
            LedgerError::Mismatch(m) => Problem::new(ProblemKind::Conflict, m),
            LedgerError::Conflict(_) => Problem::new(ProblemKind::Conflict, e.to_string()),
            LedgerError::Drift(d) => {
                tracing::error!(drift = %d, "ledger projection drift");
                Problem::new(ProblemKind::Internal, "internal error")
            }
            LedgerError::Db(db) => Problem::from(db),
        }
    }
}
