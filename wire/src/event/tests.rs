#![allow(clippy::unwrap_used)]

use super::*;

fn record() -> UsageRecord {
    UsageRecord {
        schema_version: UsageRecord::SCHEMA_VERSION,
        request_id: "req-1".into(),
        principal: "key-7".into(),
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

fn event(r: &UsageRecord) -> Envelope<UsageData> {
    Envelope::usage(
        r,
        "0b3f3c1e-6f7a-4c1d-9a57-2f1f4f3e9b10".into(),
        "/leaky-tokens/proxy/p1".into(),
        "2026-11-29T22:00:00.123Z".into(),
    )
}

/// The exact bytes consumers parse: the CloudEvents attributes, the schema version, the contract's
/// field names (`key_id`, `usage_source`) and the derived total.
#[test]
fn golden_usage_event() {
    let json = serde_json::to_string(&event(&record())).unwrap();
    assert_eq!(
        json,
        r#"{"specversion":"1.0","id":"0b3f3c1e-6f7a-4c1d-9a57-2f1f4f3e9b10","source":"/leaky-tokens/proxy/p1","type":"leaky.usage.v1","time":"2026-11-29T22:00:00.123Z","subject":"req-1","datacontenttype":"application/json","schemaversion":1,"data":{"request_id":"req-1","org":"acme","user":"alice","key_id":"key-7","tier":"pro","route":"v1","model":"gpt-4o-mini","provider":"openai","prompt_tokens":12,"completion_tokens":30,"total_tokens":42,"usage_source":"reported","status":200,"latency_ms":4.5,"cached":false}}"#
    );
}

/// The borrowed view writes the very bytes of the owned envelope (and so of the golden above), for
/// every shape of record: with and without org and route, each usage source, strings that need
/// escaping, and latencies that are whole, fractional or tiny.
#[test]
fn the_borrowed_event_writes_the_owned_bytes() {
    let (id, source, time) = (
        "0b3f3c1e-6f7a-4c1d-9a57-2f1f4f3e9b10",
        "/leaky-tokens/proxy/p1",
        "2026-11-29T22:00:00.123Z",
    );
    let mut variants = vec![record()];
    let mut r = record();
    (r.org, r.route, r.source, r.latency_ms) = (None, None, UsageSource::Refunded, 0.0);
    variants.push(r);
    let mut r = record();
    r.model = "quote\" \\ back \n new \u{1} ctl é".into();
    (r.source, r.latency_ms, r.status) = (UsageSource::Counted, 1e-7, 429);
    variants.push(r);
    let mut r = record();
    (r.source, r.latency_ms, r.prompt_tokens) = (UsageSource::Reservation, 812.4, u64::MAX);
    variants.push(r);
    let mut r = record();
    (r.cached, r.charged_tokens) = (true, Some(21));
    variants.push(r);
    for r in &variants {
        let owned = Envelope::usage(r, id.into(), source.into(), time.into());
        let borrowed = UsageEventRef::new(r, id, source, time);
        assert_eq!(
            serde_json::to_string(&borrowed).unwrap(),
            serde_json::to_string(&owned).unwrap()
        );
    }
    let golden = serde_json::to_string(&event(&record())).unwrap();
    let borrowed = serde_json::to_string(&UsageEventRef::new(&record(), id, source, time)).unwrap();
    assert_eq!(borrowed, golden);
}

#[test]
fn round_trips() {
    let e = event(&record());
    let back: Envelope<UsageData> =
        serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
    assert_eq!(back, e);
}

#[test]
fn the_key_is_the_org_or_a_dash() {
    assert_eq!(usage_key(&record()), "acme");
    let r = UsageRecord {
        org: None,
        ..record()
    };
    assert_eq!(usage_key(&r), NO_ORG_KEY);
    let v = serde_json::to_value(event(&r)).unwrap();
    assert!(v["data"]["org"].is_null(), "{v}");
}

/// A consumer reads an event without `subject` (optional in CloudEvents) and ignores unknown fields.
#[test]
fn reads_events_without_subject_and_with_unknown_fields() {
    let mut v = serde_json::to_value(event(&record())).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("subject");
    obj.insert("extension".into(), "x".into());
    let e: Envelope<UsageData> = serde_json::from_value(v).unwrap();
    assert_eq!(e.subject, None);
    assert_eq!(e.data.total_tokens, 42);
}

/// A cache hit's event says `cached` and what the org was charged; the ledger debits that. An
/// event written before the cache existed (neither field) reads as a live answer charged in full.
#[test]
fn a_cached_event_carries_what_was_charged() {
    let r = UsageRecord {
        cached: true,
        charged_tokens: Some(21),
        ..record()
    };
    let v = serde_json::to_value(event(&r)).unwrap();
    assert_eq!(v["data"]["cached"], true);
    assert_eq!(v["data"]["charged_tokens"], 21);
    let back: Envelope<UsageData> = serde_json::from_value(v).unwrap();
    assert_eq!(
        (back.data.total_tokens, back.data.billed_tokens()),
        (42, 21)
    );
    let mut old = serde_json::to_value(event(&record())).unwrap();
    old["data"].as_object_mut().unwrap().remove("cached");
    let old: Envelope<UsageData> = serde_json::from_value(old).unwrap();
    assert!(!old.data.cached);
    assert_eq!(old.data.billed_tokens(), 42);
}
