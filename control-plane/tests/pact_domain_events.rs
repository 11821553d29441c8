//! The control plane as the provider of domain events (Pact message pacts, provider side;
//! docs/contracts.md): the committed pacts of the consumers of its outbox events are verified
//! against what the control plane really publishes. Each provider state runs the real code path on a
//! real PostgreSQL (tenancy's org service, which the admin API calls), then the message is the
//! outbox row that change wrote, turned into the CloudEvents document by the relay's own
//! [`Relay::envelope`] — byte for byte what the relay would publish to Kafka. No broker is needed:
//! the relay is only asked for the document, never to publish.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[path = "../../contracts/support/pacts.rs"]
mod pacts;
#[path = "../../contracts/support/verify.rs"]
mod verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use leaky_control_plane::outbox::relay::Row;
use leaky_control_plane::outbox::{Relay, RelayConfig};
use leaky_control_plane::{db, tenancy};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;
use verify::{Provider, States};

const PROVIDER: &str = "leaky-control-plane";

/// The provider's side of a verification: the database the states change, the relay that turns an
/// outbox row into its published document, and the document each state produced (the verifier
/// sets a state up, then asks for its message).
struct Events {
    pool: PgPool,
    relay: Relay,
    published: Mutex<HashMap<String, Value>>,
}

impl Events {
    async fn new() -> anyhow::Result<Arc<Events>> {
        let url = common::fresh_db().await?;
        let pool = db::pool(&url, 4)?;
        db::migrate(&pool).await?;
        // Creating the producer does not need a broker; nothing is ever sent to this address.
        let relay = Relay::new(pool.clone(), RelayConfig::new("127.0.0.1:9"))?;
        Ok(Arc::new(Events {
            pool,
            relay,
            published: Mutex::default(),
        }))
    }

    /// The document the relay publishes for the newest outbox event `kind` of aggregate `id`.
    async fn published(&self, id: &str, kind: &str) -> Result<Value, String> {
        let row: Row = sqlx::query_as(
            "SELECT id, aggregate_type, aggregate_id, aggregate_seq, topic, type, payload, created_at,
                    traceparent
             FROM outbox.events WHERE aggregate_id = $1 AND type = $2 ORDER BY seq DESC LIMIT 1",
        )
        .bind(id)
        .bind(kind)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no {kind} event of {id} in the outbox"))?;
        let bytes = serde_json::to_vec(&self.relay.envelope(&row)).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }

    /// Runs the change provider state `state` describes; returns the event it published.
    async fn set_up(&self, state: &str) -> Result<Value, String> {
        let name = format!("pact-{}", Uuid::new_v4().simple());
        let err = |e: tenancy::TenancyError| e.to_string();
        match state {
            "an org was created in a time zone" => {
                let org =
                    tenancy::orgs::create_in_zone(&self.pool, "pact", &name, Some("Asia/Kolkata"))
                        .await
                        .map_err(err)?;
                self.published(&org.id.to_string(), "org.created").await
            }
            "an org's time zone was changed" => {
                let org = tenancy::orgs::create(&self.pool, "pact", &name)
                    .await
                    .map_err(err)?;
                let zone = Some("America/New_York");
                tenancy::orgs::update(&self.pool, "pact", org.id, org.version, None, zone)
                    .await
                    .map_err(err)?;
                self.published(&org.id.to_string(), "org.updated").await
            }
            other => Err(format!("unknown provider state `{other}`")),
        }
    }

    fn states(self: &Arc<Self>) -> States {
        let events = self.clone();
        States(Arc::new(move |state: String| {
            let events = events.clone();
            Box::pin(async move {
                let doc = events.set_up(&state).await?;
                events.published.lock().unwrap().insert(state, doc);
                Ok(())
            })
        }))
    }

    /// The message of the (single) provider state, as its set-up published it.
    fn message(&self, states: &[String]) -> Result<Value, String> {
        let [state] = states else {
            return Err(format!("one provider state expected, got {states:?}"));
        };
        self.published
            .lock()
            .unwrap()
            .get(state)
            .cloned()
            .ok_or_else(|| format!("provider state `{state}` was not set up"))
    }
}

async fn verify_consumer(consumer: &str) -> anyhow::Result<()> {
    let events = Events::new().await?;
    let source = events.clone();
    let addr = verify::message_provider(Arc::new(move |_: &str, states: &[String]| {
        source.message(states)
    }))
    .await;
    let provider = Provider {
        name: PROVIDER,
        http: None,
        messages: Some(addr),
    };
    let pact = pacts::file(consumer, PROVIDER);
    if let Err(report) = verify::verify(&pact, &provider, events.states()).await {
        panic!(
            "{} fails against the control plane's outbox events:\n{report}",
            pact.display()
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_outbox_honours_the_analytics_tenancy_pact() -> anyhow::Result<()> {
    verify_consumer("leaky-analytics").await
}
