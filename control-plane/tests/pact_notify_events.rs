//! The notification consumer's contract with the control plane's billing and ledger events (a Pact
//! message pact, consumer side; docs/contracts.md). Each message the pact describes is decoded as
//! the consumer kit decodes a Kafka payload (an `Envelope` of the handler's `Data`) and applied by
//! the real [`NotifyHandler`] on a real PostgreSQL, with `consume::once` in the same transaction, as
//! `Consumer` does; the org's queued deliveries (webhook and email) must show the notification,
//! and an email's subject the purchase's tokens. The pact it generates must equal the committed
//! `contracts/pacts/leaky-notify-leaky-control-plane.json`, which the control plane's saga and
//! ledger are verified against (`control-plane/tests/pact_domain_events.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::pacts;

use chrono::Utc;
use leaky_control_plane::consume::{self, Handler};
use leaky_control_plane::notify::settings::{self, SettingsBody};
use leaky_control_plane::notify::triggers::{NotifyHandler, GROUP};
use leaky_control_plane::notify::{email, endpoints, NewEndpoint};
use leaky_control_plane::{db, tenancy};
use leaky_wire::event::Envelope;
use pact_consumer::prelude::*;
use pact_models::PactSpecification;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

const CONSUMER: &str = "leaky-notify";
const PROVIDER: &str = "leaky-control-plane";
const UUID: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
/// The examples' event id; each delivery here gets a fresh one (the consumer dedupes on it).
const EVENT_ID: &str = "6c1b9a52-3f1e-4f0a-9a43-8d0f3a1e2b7c";
/// The examples' org; the test's org gets its id substituted.
const ORG: &str = "0b7d8f3e-5a41-4c57-9d0e-2f6a1c3b4d5e";

/// A domain event of type `kind` as the consumer kit decodes it (every envelope field is required
/// by `Envelope`), around `data`.
fn event(kind: &str, data: JsonPattern) -> JsonPattern {
    json_pattern!({
        "specversion": "1.0",
        "id": term!(UUID, EVENT_ID),
        "source": like!("/leaky-tokens/control-plane"),
        "type": kind,
        "time": term!(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$", "2030-01-01T12:00:00.250Z"),
        "datacontenttype": "application/json",
        "schemaversion": 1,
        "data": data
    })
}

/// A purchase event's `data` as notifications read it: the org it goes to (`org`), the tokens its
/// email names, and the purchase's id for the webhook's receiver.
fn purchase(kind: &str) -> JsonPattern {
    event(
        kind,
        json_pattern!({
            "id": term!(UUID, "2d5e7c1a-9b3f-4e8d-a6c2-5f1b0e9d8c7a"),
            "org": term!(UUID, ORG),
            "tokens": like!(1_000_000)
        }),
    )
}

/// A ledger event's `data` as notifications read it: the org of the entry, and the balance after it
/// that the threshold rule reads (`tokens`, the credited parts, and the stream `version`).
fn ledger(kind: &str, tokens: i64, version: i64) -> JsonPattern {
    event(
        kind,
        json_pattern!({
            "entry": { "org": term!(UUID, ORG) },
            "balance": {
                "tokens": like!(tokens),
                "purchased": like!(0),
                "granted": like!(1000),
                "refunded": like!(0),
                "expired": like!(0),
                "version": like!(version)
            }
        }),
    )
}

/// `out`: where Pact writes its own copy of the pact (a temporary directory: the committed file is
/// written by [`pacts::check_or_update`] only).
fn pact(out: &std::path::Path) -> PactBuilder {
    let mut pact = PactBuilder::new_v4(CONSUMER, PROVIDER);
    pact.with_output_dir(out);
    pact.message_interaction("a purchase.completed event", |mut i| {
        i.given("a purchase was completed");
        i.json_body(purchase("purchase.completed"));
        i
    });
    pact.message_interaction("a purchase.compensated event", |mut i| {
        i.given("a purchase was declined and compensated");
        i.json_body(purchase("purchase.compensated"));
        i
    });
    pact.message_interaction(
        "a ledger.credited event with the balance after it",
        |mut i| {
            i.given("an org was granted credit");
            i.json_body(ledger("ledger.credited", 1000, 1));
            i
        },
    );
    pact.message_interaction(
        "a ledger.debited event with the balance after it",
        |mut i| {
            i.given("an org consumed most of its granted credit");
            i.json_body(ledger("ledger.debited", 150, 2));
            i
        },
    );
    pact
}

/// A fresh org with a webhook endpoint for every event and a notification email address.
async fn org(pool: &PgPool, n: usize) -> anyhow::Result<Uuid> {
    let org = tenancy::orgs::create(pool, "pact", &format!("notify-{n}"))
        .await?
        .id;
    let hook = NewEndpoint {
        url: "http://127.0.0.1:9/hook".into(),
        events: vec!["*".into()],
    };
    endpoints::create(pool, Utc::now(), "pact", org, &hook).await?;
    let mail = SettingsBody {
        notify_email: Some("billing@example.com".into()),
    };
    settings::put(pool, Utc::now(), "pact", org, &mail).await?;
    Ok(org)
}

/// `org`'s queued deliveries: `(channel, type, email subject)`, in a stable order.
async fn deliveries(pool: &PgPool, org: Uuid) -> anyhow::Result<Vec<(String, String, String)>> {
    let rows: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT channel, type, body FROM notify.deliveries WHERE org_id = $1 ORDER BY type, channel",
    )
    .bind(org)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(channel, kind, body)| (channel, kind, email::render(&body).0))
        .collect())
}

#[tokio::test]
async fn every_domain_event_of_the_pact_is_notified() -> anyhow::Result<()> {
    pacts::no_metrics();
    let url = common::fresh_db().await?;
    let pool = db::pool(&url, 4)?;
    db::migrate(&pool).await?;
    let handler = NotifyHandler::new(pool.clone());
    let out = tempfile::tempdir()?;
    let pact = pact(out.path());
    let mut notified = Vec::new();
    for (n, message) in pact.messages().enumerate() {
        let org = org(&pool, n).await?;
        let bytes = message.contents.contents.value().expect("a message body");
        let text = String::from_utf8(bytes.to_vec())?
            .replace(ORG, &org.to_string())
            .replace(EVENT_ID, &Uuid::new_v4().to_string());
        let event: Envelope<<NotifyHandler as Handler>::Data> = serde_json::from_str(&text)?;
        let mut tx = pool.begin().await?;
        assert!(consume::once(&mut tx, GROUP, &event.id).await?);
        handler
            .apply(&mut tx, &event)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", message.description))?;
        tx.commit().await?;
        notified.push(deliveries(&pool, org).await?);
    }
    let row = |channel: &str, kind: &str, subject: &str| {
        (channel.to_owned(), kind.to_owned(), subject.to_owned())
    };
    let done = "Purchase of 1000000 tokens completed";
    let failed = "Purchase of 1000000 tokens failed";
    let crossed = "80% of your prepaid tokens are used";
    assert_eq!(
        notified,
        [
            // A purchase goes to the webhook and, by email, to the org's address.
            vec![
                row("email", "purchase.completed", done),
                row("webhook", "purchase.completed", done)
            ],
            vec![
                row("email", "purchase.compensated", failed),
                row("webhook", "purchase.compensated", failed)
            ],
            // A credit: the webhook only, no threshold crossed.
            vec![row(
                "webhook",
                "ledger.credited",
                "Leaky Tokens: ledger.credited"
            )],
            // 85 % of the credit consumed: the 80 % level fires once, by webhook and email.
            vec![
                row("email", "balance.threshold_crossed", crossed),
                row("webhook", "balance.threshold_crossed", crossed),
                row("webhook", "ledger.debited", "Leaky Tokens: ledger.debited")
            ],
        ]
    );
    let json = pact.build().to_json(PactSpecification::V4)?;
    pacts::check_or_update(CONSUMER, PROVIDER, json);
    Ok(())
}
