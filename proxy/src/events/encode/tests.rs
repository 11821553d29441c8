#![allow(clippy::unwrap_used)]

use super::*;
use leaky_wire::event::Envelope;
use leaky_wire::UsageSource;
use time::macros::datetime;

const SOURCE: &str = "/leaky-tokens/proxy/127.0.0.1:8080";

/// The record of the example in docs/events.md (its elided ids written out).
fn record() -> UsageRecord {
    UsageRecord {
        schema_version: UsageRecord::SCHEMA_VERSION,
        request_id: "req_84ed365ae2ea420eaee9b5c27bcba0e6".into(),
        principal: "47cef4fe-0d7c-4a8e-9d6f-1b2c3d4e5f60".into(),
        user: "47cef4fe-0d7c-4a8e-9d6f-1b2c3d4e5f60".into(),
        org: Some("79923f0e-806f-4fb8-890b-0d624220af74".into()),
        tier: "prepaid".into(),
        route: Some("v1".into()),
        model: "gpt-4o-mini".into(),
        provider: "openai".into(),
        prompt_tokens: 8,
        completion_tokens: 54,
        source: UsageSource::Reported,
        status: 200,
        latency_ms: 812.4,
        cached: false,
        charged_tokens: None,
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    }
}

fn id() -> uuid::Uuid {
    uuid::Uuid::parse_str("96550895-5ab0-46b3-a947-cc3d6388fe4d").unwrap()
}

/// Byte-exact: the envelope of docs/events.md ("The envelope", `leaky.usage.v1`), key and header.
#[test]
fn writes_the_documented_envelope() {
    let mut enc = Encoder::new(SOURCE.into());
    let e = enc
        .encode(&record(), id(), datetime!(2026-11-30 00:33:53.601 UTC))
        .unwrap();
    assert_eq!(
        e.payload,
        concat!(
            r#"{"specversion":"1.0","id":"96550895-5ab0-46b3-a947-cc3d6388fe4d","#,
            r#""source":"/leaky-tokens/proxy/127.0.0.1:8080","type":"leaky.usage.v1","#,
            r#""time":"2026-11-30T00:33:53.601Z","subject":"req_84ed365ae2ea420eaee9b5c27bcba0e6","#,
            r#""datacontenttype":"application/json","schemaversion":1,"#,
            r#""data":{"request_id":"req_84ed365ae2ea420eaee9b5c27bcba0e6","#,
            r#""org":"79923f0e-806f-4fb8-890b-0d624220af74","#,
            r#""user":"47cef4fe-0d7c-4a8e-9d6f-1b2c3d4e5f60","#,
            r#""key_id":"47cef4fe-0d7c-4a8e-9d6f-1b2c3d4e5f60","tier":"prepaid","route":"v1","#,
            r#""model":"gpt-4o-mini","provider":"openai","prompt_tokens":8,"completion_tokens":54,"#,
            r#""total_tokens":62,"usage_source":"reported","status":200,"latency_ms":812.4,"cached":false}}"#
        )
    );
    assert_eq!(e.key, "79923f0e-806f-4fb8-890b-0d624220af74");
    assert_eq!(e.traceparent, record().traceparent);
}

/// What the encoder replaced: an owned envelope, `time`'s RFC 3339 and `serde_json::to_string`.
fn reference(r: &UsageRecord, at: OffsetDateTime) -> String {
    let time = at.format(&Rfc3339).unwrap();
    let env = Envelope::usage(r, id().to_string(), SOURCE.into(), time);
    serde_json::to_string(&env).unwrap()
}

/// The cached seconds and the hand-written fraction give `time`'s own RFC 3339 text, across
/// second boundaries (cache refreshed), back in time, and for every fraction length.
#[test]
fn times_match_rfc3339_across_seconds_and_fractions() {
    let mut enc = Encoder::new(SOURCE.into());
    let times = [
        datetime!(2026-11-30 00:33:53 UTC),
        datetime!(2026-11-30 00:33:53.000000001 UTC),
        datetime!(2026-11-30 00:33:53.1 UTC),
        datetime!(2026-11-30 00:33:53.120 UTC),
        datetime!(2026-11-30 00:33:53.123456789 UTC),
        datetime!(2026-11-30 00:33:54.000100 UTC),
        datetime!(2026-12-31 23:59:59.999999999 UTC),
        datetime!(2027-01-01 00:00:00.5 UTC),
        datetime!(2026-11-30 00:33:53.05 UTC),
    ];
    for at in times {
        let got = enc.encode(&record(), id(), at).unwrap();
        assert_eq!(got.payload, reference(&record(), at), "at {at}");
    }
}

/// Records without org or route, refunded, with strings that need escaping: same bytes as the
/// owned path; the key is `-` without an org.
#[test]
fn matches_the_owned_encoding_for_every_shape() {
    let mut enc = Encoder::new(SOURCE.into());
    let at = datetime!(2026-11-30 00:33:53.601 UTC);
    let mut r = record();
    (r.org, r.route, r.traceparent) = (None, None, None);
    (r.source, r.status, r.prompt_tokens, r.latency_ms) = (UsageSource::Refunded, 429, 0, 0.25);
    r.model = "a \"quoted\" \\ model\n\u{7}é".into();
    let e = enc.encode(&r, id(), at).unwrap();
    assert_eq!(e.payload, reference(&r, at));
    assert_eq!(e.key, "-");
    assert_eq!(e.traceparent, None);
    // A cache hit: `cached` and what it was charged.
    (r.cached, r.charged_tokens) = (true, Some(31));
    assert_eq!(enc.encode(&r, id(), at).unwrap().payload, reference(&r, at));
    // A longer event after a short one: the capacity hint only sizes, never truncates.
    r.model = "m".repeat(2000);
    assert_eq!(enc.encode(&r, id(), at).unwrap().payload, reference(&r, at));
}

/// `usage` stamps a fresh id per event and the current time.
#[test]
fn usage_gives_each_event_its_own_id() {
    let mut enc = Encoder::new(SOURCE.into());
    let parse = |e: Event| serde_json::from_str::<serde_json::Value>(&e.payload).unwrap();
    let (a, b) = (
        parse(enc.usage(&record()).unwrap()),
        parse(enc.usage(&record()).unwrap()),
    );
    assert_ne!(a["id"], b["id"]);
    let t = OffsetDateTime::parse(a["time"].as_str().unwrap(), &Rfc3339).unwrap();
    assert!((OffsetDateTime::now_utc() - t).whole_seconds().abs() < 60);
}
