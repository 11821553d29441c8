//! The analytics statement-zone consumer's contract with the control plane's tenancy events (a
//! Pact message pact, consumer side; docs/contracts.md). Each `org.created` / `org.updated` message
//! the pact describes goes through the consumer's real decoder, [`leaky_analytics::zones::decode`]
//! — what every `leaky.tenancy.v1` message goes through before its zone is stored — and the zone
//! change it yields is checked. The pact it generates must equal the committed
//! `contracts/pacts/leaky-analytics-leaky-control-plane.json`, which the control plane's outbox is
//! verified against (`control-plane/tests/pact_domain_events.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::pacts;

use leaky_analytics::zones::{decode, ZoneChange};
use pact_consumer::prelude::*;
use pact_models::PactSpecification;

const CONSUMER: &str = "leaky-analytics";
const PROVIDER: &str = "leaky-control-plane";
const ORG: &str = "0b7d8f3e-5a41-4c57-9d0e-2f6a1c3b4d5e";
const UUID: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

/// A tenancy event of `kind` about the example org, as the zone consumer needs it: the envelope
/// its decoder parses (the `type` it switches on) and the `data` it reads — the org's id, its IANA
/// zone and the org's version the zone belongs to.
fn org_event(kind: &str, zone: &str, version: i64) -> JsonPattern {
    json_pattern!({
        "specversion": "1.0",
        "id": term!(UUID, "6c1b9a52-3f1e-4f0a-9a43-8d0f3a1e2b7c"),
        "source": like!("/leaky-tokens/control-plane"),
        "type": kind,
        "time": term!(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$", "2030-01-01T12:00:00.250Z"),
        "datacontenttype": "application/json",
        "schemaversion": 1,
        "data": {
            "id": term!(UUID, ORG),
            "time_zone": like!(zone),
            "version": like!(version)
        }
    })
}

/// `out`: where Pact writes its own copy of the pact (a temporary directory: the committed file is
/// written by [`pacts::check_or_update`] only).
fn pact(out: &std::path::Path) -> PactBuilder {
    let mut pact = PactBuilder::new_v4(CONSUMER, PROVIDER);
    pact.with_output_dir(out);
    pact.message_interaction("an org.created event with the org's time zone", |mut i| {
        i.given("an org was created in a time zone");
        i.json_body(org_event("org.created", "Asia/Kolkata", 1));
        i
    });
    pact.message_interaction(
        "an org.updated event with the new time zone and the org's version",
        |mut i| {
            i.given("an org's time zone was changed");
            i.json_body(org_event("org.updated", "America/New_York", 2));
            i
        },
    );
    pact
}

#[test]
fn every_tenancy_event_of_the_pact_decodes_into_the_zone_analytics_stores() {
    pacts::no_metrics();
    let out = tempfile::tempdir().unwrap();
    let pact = pact(out.path());
    let mut zones = Vec::new();
    for message in pact.messages() {
        let bytes = message.contents.contents.value().expect("a message body");
        let zone = decode(Some(&bytes[..]))
            .unwrap_or_else(|e| panic!("{}: {e}", message.description))
            .unwrap_or_else(|| panic!("{}: no zone read", message.description));
        zones.push(zone);
    }
    let change = |tz, version| ZoneChange {
        org: ORG.into(),
        tz,
        version,
    };
    assert_eq!(
        zones,
        [
            change(chrono_tz::Asia::Kolkata, 1),
            change(chrono_tz::America::New_York, 2)
        ]
    );
    let json = pact.build().to_json(PactSpecification::V4).unwrap();
    pacts::check_or_update(CONSUMER, PROVIDER, json);
}
