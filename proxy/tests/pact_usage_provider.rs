//! The proxy as the provider of usage events (Pact message pacts, provider side; docs/contracts.md):
//! the committed pacts of the usage events' consumers — analytics and the ledger — are verified
//! against the proxy's real event encoder ([`Encoder`], what the usage drain publishes to Kafka).
//! Each provider state names the request whose record the encoder turns into the message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::pacts;
use crate::verify;

use std::sync::Arc;

use crate::verify::{Provider, States};
use leaky_proxy::events::encode::Encoder;
use leaky_wire::UsageRecord;
use serde_json::{json, Value};

const PROVIDER: &str = "leaky-proxy";

/// The record of the request a provider state describes (built through the record's wire form,
/// as the usage log reads it back), or `None` for a state the proxy does not know.
fn record(state: &str) -> Option<UsageRecord> {
    let mut r = json!({
        "schema_version": 1, "request_id": "req-7f3a", "principal": "key-1", "user": "alice",
        "org": "0b7d8f3e-5a41-4c57-9d0e-2f6a1c3b4d5e", "tier": "pro", "route": "v1",
        "model": "gpt-4o-mini", "provider": "openai", "prompt_tokens": 12, "completion_tokens": 30,
        "source": "reported", "status": 200, "latency_ms": 125.5
    });
    match state {
        "an org's key made a metered request with reported usage" => {}
        "an org's key made a request that failed upstream" => {
            r["status"] = json!(502);
            r["source"] = json!("counted");
            r["completion_tokens"] = json!(0);
        }
        "an org's key got a cache hit on a route that charges a fraction" => {
            r["cached"] = json!(true);
            r["charged_tokens"] = json!(10);
        }
        _ => return None,
    }
    Some(serde_json::from_value(r).unwrap())
}

/// The message of the (single) provider state: the record encoded by the proxy's encoder.
fn message(_description: &str, states: &[String]) -> Result<Value, String> {
    let [state] = states else {
        return Err(format!("one provider state expected, got {states:?}"));
    };
    let r = record(state).ok_or_else(|| format!("unknown provider state `{state}`"))?;
    let mut encoder = Encoder::new("/leaky-tokens/proxy/pact".into());
    let event = encoder
        .encode(&r, uuid::Uuid::new_v4(), time::OffsetDateTime::now_utc())
        .ok_or("the encoder refused the record")?;
    serde_json::from_str(&event.payload).map_err(|e| e.to_string())
}

/// Every state the pacts name must be one the encoder can produce (checked when the message is
/// asked for; nothing to set up before).
fn states() -> States {
    States(Arc::new(|state: String| {
        Box::pin(async move {
            record(&state)
                .map(drop)
                .ok_or_else(|| format!("unknown provider state `{state}`"))
        })
    }))
}

async fn verify_consumer(consumer: &str) {
    let addr = verify::message_provider(Arc::new(message)).await;
    let provider = Provider {
        name: PROVIDER,
        http: None,
        messages: Some(addr),
    };
    let pact = pacts::file(consumer, PROVIDER);
    if let Err(report) = verify::verify(&pact, &provider, states()).await {
        panic!(
            "{} fails against the proxy's encoder:\n{report}",
            pact.display()
        );
    }
}

#[tokio::test]
async fn the_encoder_honours_the_analytics_pact() {
    verify_consumer("leaky-analytics").await;
}

#[tokio::test]
async fn the_encoder_honours_the_ledger_pact() {
    verify_consumer("leaky-ledger").await;
}
