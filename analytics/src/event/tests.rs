use super::*;
use serde_json::json;

fn event(version: u16, time: &str) -> serde_json::Value {
    json!({
        "specversion": "1.0", "id": "ev-1", "source": "/leaky-tokens/proxy/a",
        "type": "leaky.usage.v1", "time": time, "subject": "req-1",
        "datacontenttype": "application/json", "schemaversion": version,
        "data": {
            "request_id": "req-1", "org": "acme", "user": "u", "key_id": "k1", "tier": "free",
            "route": null, "model": "gpt-4o", "provider": "openai", "prompt_tokens": 11,
            "completion_tokens": 7, "total_tokens": 18, "usage_source": "reported",
            "status": 502, "latency_ms": 12.3456, "cached": false
        }
    })
}

fn bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[test]
fn a_usage_event_becomes_a_row() {
    let row = decode(Some(&bytes(&event(1, "2026-03-15T10:42:17.250Z")))).ok();
    let row = row.unwrap_or_else(|| unreachable!("decodes"));
    assert_eq!(row.event_id, "ev-1");
    assert_eq!(row.ts, 1_773_571_337_250);
    assert_eq!((row.org.as_str(), row.key_id.as_str()), ("acme", "k1"));
    assert_eq!(
        (
            row.totals.prompt_tokens,
            row.totals.completion_tokens,
            row.totals.total_tokens
        ),
        (11, 7, 18)
    );
    assert_eq!((row.totals.requests, row.totals.errors), (1, 1));
    assert_eq!(row.totals.latency_us, 12_346);
}

#[test]
fn an_event_without_org_is_stored_under_the_no_org_key() {
    let mut v = event(1, "2026-03-15T10:42:17Z");
    v["data"]["org"] = serde_json::Value::Null;
    assert_eq!(decode(Some(&bytes(&v))).map(|r| r.org), Ok("-".to_owned()));
}

#[test]
fn poison_messages_say_why() {
    assert_eq!(decode(None), Err(Poison::Empty));
    assert!(matches!(
        decode(Some(b"{not json")),
        Err(Poison::Undecodable(_))
    ));
    assert_eq!(
        decode(Some(&bytes(&event(2, "2026-03-15T10:42:17Z")))),
        Err(Poison::UnknownVersion(2))
    );
    let mut other = event(1, "2026-03-15T10:42:17Z");
    other["type"] = json!("leaky.domain.v1");
    assert_eq!(
        decode(Some(&bytes(&other))),
        Err(Poison::WrongType("leaky.domain.v1".into()))
    );
    assert_eq!(
        decode(Some(&bytes(&event(1, "yesterday")))),
        Err(Poison::BadTime("yesterday".into()))
    );
    let mut missing = event(1, "2026-03-15T10:42:17Z");
    missing["data"]
        .as_object_mut()
        .map(|d| d.remove("prompt_tokens"));
    assert!(matches!(
        decode(Some(&bytes(&missing))),
        Err(Poison::Undecodable(_))
    ));
}
