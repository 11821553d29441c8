//! The ledger's contract with the proxies' usage events (a Pact message pact, consumer side;
//! docs/contracts.md). Each message the pact describes is decoded as the consumer kit decodes a Kafka
//! payload (an `Envelope` of the handler's `Data`) and applied by the ledger's real
//! [`usage::UsageHandler`] on a real PostgreSQL, with `consume::once` in the same transaction, as
//! `Consumer` does; the org's balance must show the debit. The pact it generates must equal the
//! committed `contracts/pacts/leaky-ledger-leaky-proxy.json`, which the proxy's encoder is verified
//! against (`proxy/tests/pact_usage_provider.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::pacts;

use leaky_control_plane::consume::{self, Handler};
use leaky_control_plane::ledger::{self, usage};
use leaky_control_plane::{db, tenancy};
use leaky_wire::event::Envelope;
use pact_consumer::prelude::*;
use pact_models::PactSpecification;

const CONSUMER: &str = "leaky-ledger";
const PROVIDER: &str = "leaky-proxy";

/// What the ledger reads of a usage event: the event id it dedupes on, the org it debits, the
/// request id the debit is unique per, and the tokens (`charged_tokens` when the route charged less
/// than the total). The rest of `data` is required by the shared decoder, so it is listed too.
fn usage_event(org: &str, extra: Option<(bool, u64)>) -> JsonPattern {
    let mut data = json_pattern!({
        "request_id": like!("req-1"),
        "org": like!(org),
        "user": like!("alice"),
        "key_id": like!("key-1"),
        "tier": like!("pro"),
        "model": like!("gpt-4o-mini"),
        "provider": like!("openai"),
        "prompt_tokens": like!(12),
        "completion_tokens": like!(30),
        "total_tokens": like!(42),
        "usage_source": term!("^(reported|counted|reservation|refunded)$", "reported"),
        "status": like!(200),
        "latency_ms": like!(125.5)
    });
    if let (Some((cached, charged)), JsonPattern::Object(map)) = (extra, &mut data) {
        map.insert("cached".into(), json_pattern!(cached));
        map.insert("charged_tokens".into(), like!(charged).into());
    }
    json_pattern!({
        "specversion": "1.0",
        "id": term!("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", EVENT_ID),
        "source": like!("/leaky-tokens/proxy/proxy-8080"),
        "type": "leaky.usage.v1",
        "time": term!(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$", "2030-01-01T12:00:00.25Z"),
        "datacontenttype": "application/json",
        "schemaversion": 1,
        "data": data
    })
}

/// The examples' event id.
const EVENT_ID: &str = "6c1b9a52-3f1e-4f0a-9a43-8d0f3a1e2b7c";

/// The pact's examples name this org; the test's org gets its id substituted.
const ORG: &str = "0b7d8f3e-5a41-4c57-9d0e-2f6a1c3b4d5e";

/// `out`: where Pact writes its own copy of the pact (a temporary directory: the committed file is
/// written by [`pacts::check_or_update`] only).
fn pact(out: &std::path::Path) -> PactBuilder {
    let mut pact = PactBuilder::new_v4(CONSUMER, PROVIDER);
    pact.with_output_dir(out);
    pact.message_interaction("a usage event of a metered request", |mut i| {
        i.given("an org's key made a metered request with reported usage");
        i.json_body(usage_event(ORG, None));
        i
    });
    pact.message_interaction(
        "a usage event of a cache hit charged below its total",
        |mut i| {
            i.given("an org's key got a cache hit on a route that charges a fraction");
            i.json_body(usage_event(ORG, Some((true, 21))));
            i
        },
    );
    pact
}

#[tokio::test]
async fn every_usage_event_of_the_pact_is_debited_by_the_ledger() -> anyhow::Result<()> {
    pacts::no_metrics();
    let url = common::fresh_db().await?;
    let pool = db::pool(&url, 4)?;
    db::migrate(&pool).await?;
    let out = tempfile::tempdir()?;
    let pact = pact(out.path());
    let mut debited = Vec::new();
    for message in pact.messages() {
        // A fresh org per message: the examples share one request id, debited once per org.
        let name = format!("pact-{}", debited.len());
        let org = tenancy::orgs::create(&pool, "pact", &name).await?.id;
        ledger::grant(&pool, org, 1_000, "g", None).await?;
        let bytes = message.contents.contents.value().expect("a message body");
        let text = String::from_utf8(bytes.to_vec())?
            .replace(ORG, &org.to_string())
            // The examples share one event id too; each delivery here is a distinct event.
            .replace(EVENT_ID, &uuid::Uuid::new_v4().to_string());
        let event: Envelope<<usage::UsageHandler as Handler>::Data> = serde_json::from_str(&text)?;
        let mut tx = pool.begin().await?;
        assert!(consume::once(&mut tx, usage::GROUP, &event.id).await?);
        usage::UsageHandler
            .apply(&mut tx, &event)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", message.description))?;
        tx.commit().await?;
        let b = ledger::balance(&pool, org).await?;
        ledger::verify(&pool, org).await?;
        debited.push((b.consumed, b.tokens));
    }
    // The metered request is debited its total, the cache hit what its route charged.
    assert_eq!(debited, [(42, 958), (21, 979)]);
    let json = pact.build().to_json(PactSpecification::V4)?;
    pacts::check_or_update(CONSUMER, PROVIDER, json);
    Ok(())
}
