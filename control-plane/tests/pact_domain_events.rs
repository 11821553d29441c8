//! The control plane as the provider of domain events (Pact message pacts, provider side;
//! docs/contracts.md): the committed pacts of the consumers of its outbox events — analytics'
//! tenancy pact and the notification consumer's billing/ledger pact — are verified against what the
//! control plane really publishes. Each provider state runs the real code path on a real
//! PostgreSQL: tenancy's org service (which the admin API calls), the purchase saga's engine with
//! its real adapters against the payment stub's own code served in process (no balance mirror), or
//! the ledger's commands. The message is then the outbox row that change wrote, turned into the
//! CloudEvents document by the relay's own [`Relay::envelope`] — byte for byte what the relay would
//! publish to Kafka. No broker is needed: the relay is only asked for the document, never to
//! publish.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::pacts;
use crate::verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::verify::{Provider, States};
use leaky_control_plane::billing::payments_http::{HttpPayments, HttpPaymentsConfig};
use leaky_control_plane::billing::store::{self, NewPurchase};
use leaky_control_plane::billing::{adapters, Engine, Policy, Settings};
use leaky_control_plane::clock::{Clock, ManualClock};
use leaky_control_plane::outbox::relay::Row;
use leaky_control_plane::outbox::{Relay, RelayConfig};
use leaky_control_plane::{db, ledger, tenancy};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const PROVIDER: &str = "leaky-control-plane";

/// The provider's side of a verification: the database the states change, the relay that turns an
/// outbox row into its published document, and the document each state produced (the verifier
/// sets a state up, then asks for its message).
struct Events {
    pool: PgPool,
    relay: Relay,
    /// The payment stub's base URL, and the saga engine's clock (moved past backoffs by hand).
    stub: String,
    clock: Arc<ManualClock>,
    published: Mutex<HashMap<String, Value>>,
}

/// The payment stub (`leaky_stubs::payment`, its own code) on a loopback port; its base URL.
async fn payment_stub() -> String {
    let cfg = leaky_stubs::payment::PaymentConfig {
        latency: leaky_stubs::Latency::Off,
        ..Default::default()
    };
    let router = leaky_stubs::payment::router(&cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
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
            stub: payment_stub().await,
            clock: Arc::new(ManualClock::new(chrono::Utc::now())),
            published: Mutex::default(),
        }))
    }

    /// The purchase saga's engine with the real adapters: HTTP payments at the stub, the ledger on
    /// this database, no data-plane mirror.
    fn engine(&self) -> Result<Engine, String> {
        let payments = HttpPayments::new(HttpPaymentsConfig {
            base_url: self.stub.clone(),
            api_key: "sk_test_leaky".to_owned(),
            timeout: std::time::Duration::from_secs(3),
        })
        .map_err(|e| format!("{e:?}"))?;
        let ports = adapters::ports(payments, self.pool.clone(), None);
        Ok(Engine::new(
            self.pool.clone(),
            self.clock.clone(),
            ports,
            Policy::default(),
        ))
    }

    /// Buys `tokens` for a new org (the purchase store, as `POST /v1/orgs/{org}/purchases` does),
    /// with the stub declining the card when `decline`, and drives the saga to its end; returns
    /// the purchase id.
    async fn purchase(&self, name: &str, decline: bool) -> Result<String, String> {
        let org = tenancy::orgs::create(&self.pool, "pact", name)
            .await
            .map_err(|e| e.to_string())?;
        if decline {
            let faults = reqwest::Client::new()
                .post(format!("{}/_stub/faults", self.stub))
                .json(&json!({"decline": 1}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !faults.status().is_success() {
                return Err(format!("the stub refused the fault: {}", faults.status()));
            }
        }
        let key = Uuid::new_v4().to_string();
        let req = NewPurchase {
            org: org.id,
            tokens: 1_000_000,
            idempotency_key: &key,
            actor: "pact",
        };
        let settings = Settings::default();
        let (created, _) = store::create(&self.pool, self.clock.now(), &settings, &req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let engine = self.engine()?;
        // Bounded: each round runs what is due, then the clock passes the longest backoff.
        for _ in 0..20 {
            engine.run_until_idle().await.map_err(|e| e.to_string())?;
            let p = store::get(&self.pool, created.id)
                .await
                .map_err(|e| format!("{e:?}"))?;
            if p.status != "pending" {
                return Ok(p.id.to_string());
            }
            self.clock.advance(Policy::default().backoff_max);
        }
        Err(format!("purchase {} still pending", created.id))
    }

    /// A new org granted 1000 tokens (the ledger's grant command); its id.
    async fn granted(&self, name: &str) -> Result<Uuid, String> {
        let org = tenancy::orgs::create(&self.pool, "pact", name)
            .await
            .map_err(|e| e.to_string())?;
        ledger::grant(&self.pool, org.id, 1000, "pact-grant", None)
            .await
            .map_err(|e| e.to_string())?;
        Ok(org.id)
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
            "a purchase was completed" => {
                let id = self.purchase(&name, false).await?;
                self.published(&id, "purchase.completed").await
            }
            "a purchase was declined and compensated" => {
                let id = self.purchase(&name, true).await?;
                self.published(&id, "purchase.compensated").await
            }
            "an org was granted credit" => {
                let org = self.granted(&name).await?;
                self.published(&org.to_string(), "ledger.credited").await
            }
            "an org consumed most of its granted credit" => {
                let org = self.granted(&name).await?;
                // The usage consumer's debit of a request's tokens.
                ledger::consume(&self.pool, org, 850, "req-pact")
                    .await
                    .map_err(|e| e.to_string())?;
                self.published(&org.to_string(), "ledger.debited").await
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

#[tokio::test]
async fn the_saga_and_the_ledger_honour_the_notification_pact() -> anyhow::Result<()> {
    verify_consumer("leaky-notify").await
}
