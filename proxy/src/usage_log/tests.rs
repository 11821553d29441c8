#![allow(clippy::unwrap_used)]

use super::*;
use leaky_wire::UsageSource;
use std::io::Write;
use std::sync::Mutex;

fn record(request_id: &str) -> UsageRecord {
    UsageRecord {
        schema_version: UsageRecord::SCHEMA_VERSION,
        request_id: request_id.into(),
        principal: "test-pro".into(),
        user: "alice".into(),
        org: None,
        tier: "pro".into(),
        route: Some("v1".into()),
        model: "gpt-4o-mini".into(),
        provider: "openai".into(),
        prompt_tokens: 12,
        completion_tokens: 30,
        source: UsageSource::Counted,
        status: 200,
        latency_ms: 4.5,
        cached: false,
        charged_tokens: None,
        traceparent: None,
    }
}

/// A `MakeWriter` into a shared buffer: the log lines a test produced.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

/// `f`'s log output in the binary's `--log-format json` shape, timestamps removed.
fn json_log(f: impl FnOnce()) -> String {
    let lines = Lines::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(lines.clone())
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .without_time()
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let out = lines.0.lock().unwrap().clone();
    String::from_utf8(out).unwrap()
}

/// The exact line log pipelines and the integration tests parse: today's fields in today's order,
/// plus `schema_version`; an absent org is `-`.
#[test]
fn golden_log_line() {
    let sink = UsageSink::new(4);
    sink.record(record("req-1"));
    let out = json_log(|| assert_eq!(sink.drain(), 1));
    assert_eq!(
        out.trim_end(),
        r#"{"level":"INFO","message":"usage","schema_version":1,"request_id":"req-1","principal":"test-pro","user":"alice","org":"-","tier":"pro","route":"v1","model":"gpt-4o-mini","provider":"openai","prompt_tokens":12,"completion_tokens":30,"total_tokens":42,"source":"counted","status":200,"latency_ms":4.5,"cached":false,"target":"usage"}"#
    );
}

/// A cache hit's line says `cached` and what it was charged.
#[test]
fn a_cached_record_logs_cached_and_its_charge() {
    let sink = UsageSink::new(4);
    sink.record(UsageRecord {
        cached: true,
        charged_tokens: Some(21),
        ..record("req-1")
    });
    let out = json_log(|| assert_eq!(sink.drain(), 1));
    let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
    assert_eq!(
        (v["cached"].as_bool(), v["charged_tokens"].as_u64()),
        (Some(true), Some(21))
    );
}

#[test]
fn drain_empties_the_queue_in_order() {
    let sink = UsageSink::new(8);
    for i in 0..3 {
        sink.record(record(&format!("req-{i}")));
    }
    assert_eq!(sink.len(), 3);
    let out = json_log(|| assert_eq!(sink.drain(), 3));
    let ids: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"].to_string())
        .collect();
    assert_eq!(ids, ["\"req-0\"", "\"req-1\"", "\"req-2\""]);
    assert!(sink.is_empty());
}

#[test]
fn a_full_queue_drops_the_record() {
    let sink = UsageSink::new(2);
    for i in 0..3 {
        sink.record(record(&format!("req-{i}")));
    }
    assert_eq!(sink.len(), 2);
    let out = json_log(|| assert_eq!(sink.drain(), 2));
    assert!(!out.contains("req-2"), "{out}");
}

#[test]
fn a_traceparent_splits_into_its_ids() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(
        super::split_traceparent(tp),
        (
            Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            Some("00f067aa0ba902b7")
        )
    );
    assert_eq!(super::split_traceparent("00-abc-def-01"), (None, None));
    assert_eq!(super::split_traceparent(""), (None, None));
}
