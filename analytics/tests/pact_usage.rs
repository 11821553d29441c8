//! The analytics consumer's contract with the proxies' usage events (a Pact message pact, consumer
//! side; docs/contracts.md). Each message the pact describes goes through the consumer's real
//! decoder, [`leaky_analytics::event::decode`] — what every Kafka message goes through before it is
//! stored — and the row it yields is checked; the pact it generates must equal the committed
//! `contracts/pacts/leaky-analytics-leaky-proxy.json`, which the proxy's encoder is verified against
//! (`proxy/tests/pact_usage_provider.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::pacts;

use leaky_analytics::event::decode;
use pact_consumer::prelude::*;
use pact_models::PactSpecification;

const CONSUMER: &str = "leaky-analytics";
const PROVIDER: &str = "leaky-proxy";

/// A usage event as this consumer needs it: the envelope attributes it checks (`type`,
/// `schemaversion`), the event id it stores under, the event time it buckets by, and the `data` it
/// sums. Values are examples: the matchers say what may vary.
fn usage_event(status: u16, org: &str) -> JsonPattern {
    json_pattern!({
        "specversion": "1.0",
        "id": term!("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", "6c1b9a52-3f1e-4f0a-9a43-8d0f3a1e2b7c"),
        "source": like!("/leaky-tokens/proxy/proxy-8080"),
        "type": "leaky.usage.v1",
        "time": term!(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$", "2030-01-01T12:00:00.25Z"),
        "datacontenttype": "application/json",
        "schemaversion": 1,
        "data": {
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
            "status": like!(status),
            "latency_ms": like!(125.5)
        }
    })
}

const ORG: &str = "0b7d8f3e-5a41-4c57-9d0e-2f6a1c3b4d5e";

/// `out`: where Pact writes its own copy of the pact (a temporary directory: the committed file is
/// written by [`pacts::check_or_update`] only).
fn pact(out: &std::path::Path) -> PactBuilder {
    let mut pact = PactBuilder::new_v4(CONSUMER, PROVIDER);
    pact.with_output_dir(out);
    pact.message_interaction("a usage event of a metered request", |mut i| {
        i.given("an org's key made a metered request with reported usage");
        i.json_body(usage_event(200, ORG));
        i
    });
    pact.message_interaction("a usage event of a request the upstream failed", |mut i| {
        i.given("an org's key made a request that failed upstream");
        i.json_body(usage_event(502, ORG));
        i
    });
    pact
}

#[test]
fn every_usage_event_of_the_pact_decodes_into_the_row_analytics_stores() {
    pacts::no_metrics();
    let out = tempfile::tempdir().unwrap();
    let pact = pact(out.path());
    let mut seen = 0;
    for message in pact.messages() {
        let bytes = message.contents.contents.value().expect("a message body");
        let row = decode(Some(&bytes)).unwrap_or_else(|p| panic!("{}: {p}", message.description));
        assert_eq!(row.event_id, "6c1b9a52-3f1e-4f0a-9a43-8d0f3a1e2b7c");
        assert_eq!(row.ts, 1_893_499_200_250, "bucketed by the event time");
        assert_eq!((row.org.as_str(), row.key_id.as_str()), (ORG, "key-1"));
        assert_eq!(
            (row.model.as_str(), row.provider.as_str()),
            ("gpt-4o-mini", "openai")
        );
        let t = &row.totals;
        assert_eq!(
            (
                t.requests,
                t.prompt_tokens,
                t.completion_tokens,
                t.total_tokens
            ),
            (1, 12, 30, 42)
        );
        assert_eq!(t.latency_us, 125_500, "latency kept exact in microseconds");
        assert_eq!(t.errors, i64::from(row.status >= 400));
        seen += 1;
    }
    assert_eq!(seen, 2);
    let json = pact.build().to_json(PactSpecification::V4).unwrap();
    pacts::check_or_update(CONSUMER, PROVIDER, json);
}
