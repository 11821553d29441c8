//! Bounded context "notify" (Postgres schema `notify`): tells org admins what happened to their
//! account — by **webhook** (per-org endpoints, HMAC-signed, retried with backoff, disabled after
//! repeated failure) and by **email** (SMTP).
//!
//! Flow: domain events reach [`triggers`] through the outbox and Kafka (billing's purchases, the
//! ledger's entries), consumed with the idempotent kit ([`crate::consume`]): each event becomes one
//! `notify.deliveries` row per matching endpoint or recipient, in the transaction of its
//! processed-event row, so a redelivered event makes no second notification. Balance thresholds (80 %
//! and 100 % of the credited tokens consumed) fire once per crossing ([`thresholds`]); a daily job
//! announces credit blocks and API keys about to expire ([`expiring`]). The [`deliver`] worker claims due rows with
//! `FOR UPDATE SKIP LOCKED` plus a lease on the injected clock, so nothing is lost across restarts and
//! two replicas never send one row at once (delivery to the receiver is at least once; each carries
//! its event id).

pub mod api;
pub mod deliver;
pub mod email;
pub mod endpoints;
pub mod expiring;
pub mod settings;
pub mod sign;
pub mod thresholds;
pub mod triggers;

use crate::http::{FieldError, Problem, ProblemKind};
use crate::tenancy::TenancyError;

pub use api::{openapi, routes};
pub use deliver::{Policy, Worker};
pub use email::Mailer;
pub use endpoints::{Endpoint, NewEndpoint};
pub use sign::{sign, verify, SignatureError, EVENT_ID_HEADER, SIGNATURE_HEADER};
pub use triggers::{enqueue, Notification};

// The counters live with the exposition, so `metrics` needs nothing from this context.
pub use crate::metrics::{DeliveryResult, NotifyStats, NOTIFY_CHANNELS};

/// Every event type a webhook can subscribe to (or `*`).
pub const EVENT_TYPES: &[&str] = &[
    "purchase.completed",
    "purchase.compensated",
    "purchase.needs_attention",
    "ledger.credited",
    "ledger.debited",
    "ledger.refunded",
    "ledger.expired",
    "balance.threshold_crossed",
    "credits.expiring",
    "key.expiring",
];

/// The notify context's failures. [`From<NotifyError> for Problem`] is the one place they become HTTP.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The org could not be read (unknown or deleted: 404).
    #[error(transparent)]
    Tenancy(#[from] TenancyError),
    #[error("no randomness for a webhook secret: {0}")]
    NoRandomness(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<NotifyError> for Problem {
    fn from(e: NotifyError) -> Self {
        match e {
            NotifyError::Invalid(errors) => Problem::invalid(errors),
            NotifyError::NotFound(m) => Problem::new(ProblemKind::NotFound, m),
            NotifyError::Conflict(m) => Problem::new(ProblemKind::Conflict, m),
            NotifyError::Tenancy(t) => Problem::from(t),
            NotifyError::NoRandomness(_) => {
                tracing::error!(error = %e, "notify");
                Problem::new(ProblemKind::Internal, "internal error")
            }
            NotifyError::Db(db) => Problem::from(db),
        }
    }
}

/// Email settings: `--smtp-url` / `LEAKY_SMTP_URL` (e.g. `smtp://127.0.0.1:2525`; unset: email is
/// recorded as `skipped`) and `--smtp-from` / `LEAKY_SMTP_FROM`.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub smtp_url: Option<String>,
    pub from: String,
}

/// The default sender address.
pub const DEFAULT_FROM: &str = "Leaky Tokens <notifications@leaky-tokens.local>";

/// How often an idle delivery worker looks for due rows.
pub const WORKER_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Waits until the state's schema is migrated.
async fn migrated(state: &crate::http::ApiState) {
    state.migrated().await;
}

/// The delivery worker and the daily expiring-credit job of an admin-api process. Without SMTP,
/// warns once at start-up: email notifications are then recorded as `skipped`.
pub fn spawn_jobs(
    state: crate::http::ApiState,
    settings: Settings,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mailer = match settings.smtp_url.as_deref() {
        Some(url) => match Mailer::new(url, &settings.from) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %e, "notify: bad SMTP settings; email notifications are recorded as skipped");
                None
            }
        },
        None => {
            tracing::warn!(
                "notify: no LEAKY_SMTP_URL; email notifications are recorded as skipped"
            );
            None
        }
    };
    let worker = {
        let state = state.clone();
        async move {
            migrated(&state).await;
            let stop = state.drained();
            Worker::new(
                state.pool.clone(),
                state.clock.clone(),
                mailer,
                Policy::default(),
            )
            .with_stats(state.stats.notify.clone())
            .run(WORKER_POLL, stop)
            .await;
        }
    };
    let expiring = async move {
        migrated(&state).await;
        expiring::notify_every(state.pool.clone(), state.clock.clone(), expiring::EVERY).await;
    };
    vec![tokio::spawn(worker), tokio::spawn(expiring)]
}

/// Runs the notification consumers (billing's and the ledger's topics) once the schema is there.
pub async fn run_consumers(state: crate::http::ApiState, brokers: String) {
    migrated(&state).await;
    tracing::info!(%brokers, "notify consumers starting");
    triggers::run(state.pool.clone(), brokers).await;
}
