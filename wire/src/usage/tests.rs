#![allow(clippy::unwrap_used)]

use super::*;

fn record() -> UsageRecord {
    UsageRecord {
        schema_version: UsageRecord::SCHEMA_VERSION,
        request_id: "req-1".into(),
        principal: "test-pro".into(),
        user: "alice".into(),
        org: Some("acme".into()),
        tier: "pro".into(),
        route: Some("v1".into()),
        model: "gpt-4o-mini".into(),
        provider: "openai".into(),
        prompt_tokens: 12,
        completion_tokens: 30,
        source: UsageSource::Reported,
        status: 200,
        latency_ms: 4.5,
        cached: false,
        charged_tokens: None,
        traceparent: None,
    }
}

/// The exact bytes consumers parse: field names, order, the version, the derived total.
#[test]
fn golden_json() {
    let json = serde_json::to_string(&record()).unwrap();
    assert_eq!(
        json,
        r#"{"schema_version":1,"request_id":"req-1","principal":"test-pro","user":"alice","org":"acme","tier":"pro","route":"v1","model":"gpt-4o-mini","provider":"openai","prompt_tokens":12,"completion_tokens":30,"total_tokens":42,"source":"reported","status":200,"latency_ms":4.5,"cached":false}"#
    );
}

#[test]
fn absent_org_and_route_are_null() {
    let r = UsageRecord {
        org: None,
        route: None,
        ..record()
    };
    let v: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert!(v["org"].is_null() && v["route"].is_null(), "{v}");
}

#[test]
fn round_trips() {
    for source in [
        UsageSource::Reported,
        UsageSource::Counted,
        UsageSource::Reservation,
        UsageSource::Refunded,
    ] {
        let r = UsageRecord {
            source,
            org: None,
            ..record()
        };
        let back: UsageRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}

#[test]
fn source_labels_are_what_serde_writes() {
    for s in [
        UsageSource::Reported,
        UsageSource::Counted,
        UsageSource::Reservation,
        UsageSource::Refunded,
    ] {
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!("\"{}\"", s.as_str())
        );
    }
}

/// A newer writer may add fields; this reader ignores them (see the crate's versioning rule).
#[test]
fn unknown_fields_are_ignored() {
    let mut v = serde_json::to_value(record()).unwrap();
    v["added_later"] = serde_json::json!("x");
    let back: UsageRecord = serde_json::from_value(v).unwrap();
    assert_eq!(back, record());
}

#[test]
fn unknown_source_is_an_error() {
    let mut v = serde_json::to_value(record()).unwrap();
    v["source"] = serde_json::json!("guessed");
    assert!(serde_json::from_value::<UsageRecord>(v).is_err());
}

/// A cache hit round-trips with `cached` and its charge; a record written before the cache (no
/// `cached`) still parses, as a live answer billed its total.
#[test]
fn cached_records_round_trip_and_old_records_parse() {
    let r = UsageRecord {
        cached: true,
        charged_tokens: Some(0),
        ..record()
    };
    let json = serde_json::to_string(&r).unwrap();
    assert!(
        json.ends_with(r#""cached":true,"charged_tokens":0}"#),
        "{json}"
    );
    let back: UsageRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    assert_eq!(back.billed_tokens(), 0);
    let mut old = serde_json::to_value(record()).unwrap();
    old.as_object_mut().unwrap().remove("cached");
    let old: UsageRecord = serde_json::from_value(old).unwrap();
    assert_eq!(old, record());
    assert_eq!(old.billed_tokens(), 42);
}
