//! The usage consumer: debits `consumed` from the proxies' usage events (`leaky.usage.v1`, consumer
//! group `leaky-ledger`), once per event id (processed-events) and once per request id (the entry's
//! ref) — a redelivered or re-published event is a no-op.
//!
//! Usage of an org without a ledger account (no entries: it does not buy tokens) and usage without
//! an org record nothing and are marked processed. Every metered request is debited whatever its
//! status: the tokens were spent upstream.

use futures::future::BoxFuture;
use futures::FutureExt;
use leaky_wire::event::{Envelope, UsageData, USAGE_TOPIC};
use rdkafka::error::KafkaError;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{consume_on, LedgerError};
use crate::consume::{Consumer, ConsumerConfig, Handler, HandlerError};

/// The consumer group (and processed-events name) of the usage consumer.
pub const GROUP: &str = "leaky-ledger";

/// The ledger's [`Handler`] of usage events.
#[derive(Debug, Clone, Default)]
pub struct UsageHandler;

impl Handler for UsageHandler {
    type Data = UsageData;

    fn name(&self) -> &str {
        GROUP
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a Envelope<UsageData>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        async move { debit(tx, &event.data).await }.boxed()
    }
}

async fn debit(tx: &mut PgConnection, usage: &UsageData) -> Result<(), HandlerError> {
    let Some(org) = usage.org.as_deref().and_then(|o| Uuid::parse_str(o).ok()) else {
        return Ok(());
    };
    // A cache hit is debited what its route charged (`charged_tokens`), not its original usage.
    let billed = usage.billed_tokens();
    let tokens = i64::try_from(billed)
        .map_err(|_| HandlerError::Reject(format!("billed tokens {billed} out of range")))?;
    match consume_on(tx, org, tokens, &usage.request_id).await {
        Ok(_) => Ok(()),
        Err(e @ LedgerError::Invalid(_)) => Err(HandlerError::Reject(e.to_string())),
        Err(e) => Err(HandlerError::Retry(e.to_string())),
    }
}

/// The usage consumer on `topic` in `group` (the control plane uses [`USAGE_TOPIC`] and [`GROUP`]).
pub fn consumer(
    pool: PgPool,
    brokers: &str,
    topic: &str,
    group: &str,
) -> Result<Consumer<UsageHandler>, KafkaError> {
    Consumer::new(
        pool,
        ConsumerConfig::new(brokers, group, topic),
        UsageHandler,
    )
}

/// Runs the control plane's usage consumer until the task is dropped.
pub async fn run(pool: PgPool, brokers: String) {
    match consumer(pool, &brokers, USAGE_TOPIC, GROUP) {
        Ok(c) => c.run().await,
        Err(e) => {
            tracing::error!(error = %e, "ledger usage consumer: no Kafka consumer, usage not debited")
        }
    }
}
