//! The JSON format's lines, written through a real subscriber into a buffer.

use super::*;
use serde_json::Value;
use std::io;
use std::sync::{Arc, Mutex};
use tracing_subscriber::layer::SubscriberExt;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";
const CHILD: &str = "b7ad6b7169203331";

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The lines `emit` writes, raw.
fn raw_lines(emit: impl FnOnce()) -> Vec<String> {
    let buf = Buf::default();
    let out = buf.clone();
    let subscriber = tracing_subscriber::registry().with(IdsLayer).with(
        tracing_subscriber::fmt::layer()
            .event_format(JsonLines)
            .with_writer(move || out.clone()),
    );
    tracing::subscriber::with_default(subscriber, emit);
    let bytes = buf.0.lock().unwrap().clone();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The lines `emit` writes, each parsed (every line must be one JSON object).
fn lines(emit: impl FnOnce()) -> Vec<Value> {
    raw_lines(emit)
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

#[test]
fn a_line_in_a_span_with_ids_carries_all_three() {
    let out = lines(|| {
        let span = tracing::info_span!("http", trace_id = TRACE, span_id = %SPAN, request_id = "req-1", method = "GET");
        let _g = span.enter();
        tracing::warn!(target: "leaky_control_plane::http", status = 503, "upstream failed");
    });
    assert_eq!(out.len(), 1);
    let l = &out[0];
    assert_eq!(l["trace_id"], TRACE);
    assert_eq!(l["span_id"], SPAN);
    assert_eq!(l["request_id"], "req-1");
    assert_eq!(l["level"], "WARN");
    assert_eq!(l["target"], "leaky_control_plane::http");
    assert_eq!(l["message"], "upstream failed");
    assert_eq!(l["status"], 503);
    assert!(l["timestamp"].as_str().unwrap().ends_with('Z'), "{l}");
    // Span fields other than the ids stay out of the line.
    assert!(l.get("method").is_none(), "{l}");
}

#[test]
fn the_innermost_span_wins_for_each_id_separately() {
    let out = lines(|| {
        let outer = tracing::info_span!(
            "request",
            trace_id = TRACE,
            span_id = SPAN,
            request_id = "req-2"
        );
        let _o = outer.enter();
        tracing::info!("outer line");
        let inner = tracing::info_span!("settle", span_id = CHILD);
        let _i = inner.enter();
        tracing::info!("inner line");
    });
    assert_eq!(out[0]["span_id"], SPAN);
    assert_eq!(out[1]["span_id"], CHILD);
    for l in &out {
        assert_eq!(l["trace_id"], TRACE, "{l}");
        assert_eq!(l["request_id"], "req-2", "{l}");
    }
}

#[test]
fn an_event_s_own_ids_override_the_span_s_and_are_written_once() {
    let raw = raw_lines(|| {
        let span = tracing::info_span!(
            "request",
            trace_id = TRACE,
            span_id = SPAN,
            request_id = "from-span"
        );
        let _g = span.enter();
        tracing::info!(target: "access", request_id = "from-event", span_id = CHILD, "request");
    });
    assert_eq!(raw.len(), 1);
    for id in ID_FIELDS {
        assert_eq!(
            raw[0].matches(&format!("\"{id}\"")).count(),
            1,
            "{}",
            raw[0]
        );
    }
    let l: Value = serde_json::from_str(&raw[0]).unwrap();
    assert_eq!(l["request_id"], "from-event");
    assert_eq!(l["span_id"], CHILD);
    assert_eq!(l["trace_id"], TRACE);
}

#[test]
fn ids_recorded_after_the_span_started_are_found() {
    let out = lines(|| {
        let span = tracing::info_span!(
            "message",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            request_id = tracing::field::Empty
        );
        let _g = span.enter();
        tracing::info!("before");
        span.record("trace_id", TRACE);
        span.record("span_id", tracing::field::display(SPAN));
        span.record("request_id", "req-3");
        tracing::info!("after");
    });
    for id in ID_FIELDS {
        assert!(out[0].get(id).is_none(), "{}", out[0]);
    }
    assert_eq!(out[1]["trace_id"], TRACE);
    assert_eq!(out[1]["span_id"], SPAN);
    assert_eq!(out[1]["request_id"], "req-3");
}

#[test]
fn a_span_recorded_into_later_without_declared_ids_is_ignored_cheaply() {
    let out = lines(|| {
        let span = tracing::info_span!("reload", version = tracing::field::Empty);
        let _g = span.enter();
        span.record("version", 7);
        tracing::info!("config reloaded");
    });
    assert_eq!(out.len(), 1);
    for id in ID_FIELDS {
        assert!(out[0].get(id).is_none(), "{}", out[0]);
    }
}

#[test]
fn an_explicit_parent_span_gives_its_ids() {
    let out = lines(|| {
        let span = tracing::info_span!(
            "consume",
            trace_id = TRACE,
            span_id = SPAN,
            request_id = "req-4"
        );
        // Not entered: the event names its parent.
        tracing::info!(parent: &span, offset = 12u64, "message applied");
    });
    assert_eq!(out[0]["trace_id"], TRACE);
    assert_eq!(out[0]["request_id"], "req-4");
    assert_eq!(out[0]["offset"], 12);
}

#[test]
fn a_line_outside_any_span_has_no_ids_and_stays_one_valid_line() {
    let raw = raw_lines(|| {
        tracing::info!(
            model = "gpt-4o\r\n{\"forged\":true}\u{1b}[2J",
            ratio = 0.5,
            ok = true,
            big = u128::MAX,
            "config\nloaded"
        );
    });
    assert_eq!(raw.len(), 1, "{raw:?}");
    let l: Value = serde_json::from_str(&raw[0]).unwrap();
    assert_eq!(l["model"], "gpt-4o\r\n{\"forged\":true}\u{1b}[2J");
    assert_eq!(l["message"], "config\nloaded");
    assert_eq!(l["ratio"], 0.5);
    assert_eq!(l["ok"], true);
    assert!(
        raw[0].contains(&format!("\"big\":{}", u128::MAX)),
        "{}",
        raw[0]
    );
    for id in ID_FIELDS {
        assert!(l.get(id).is_none(), "{l}");
    }
}

#[test]
fn a_log_crate_record_has_its_own_target_and_no_log_fields() {
    let out = lines(|| {
        let span = tracing::info_span!("request", request_id = "req-5");
        let _g = span.enter();
        let record = log::Record::builder()
            .args(format_args!("upstream peer gone"))
            .level(log::Level::Warn)
            .target("pingora_core::connectors")
            .file(Some("connectors.rs"))
            .line(Some(42))
            .build();
        tracing_log::format_trace(&record).unwrap();
    });
    assert_eq!(out.len(), 1);
    let l = &out[0];
    assert_eq!(l["target"], "pingora_core::connectors");
    assert_eq!(l["level"], "WARN");
    assert_eq!(l["message"], "upstream peer gone");
    assert_eq!(l["request_id"], "req-5");
    let keys: Vec<&String> = l.as_object().unwrap().keys().collect();
    assert!(keys.iter().all(|k| !k.starts_with("log.")), "{l}");
}

#[test]
fn ids_given_as_debug_strings_lose_their_quotes() {
    let out = lines(|| {
        let rid = String::from("req-6");
        let span = tracing::info_span!("request", request_id = ?rid, span_id = 7u64);
        let _g = span.enter();
        tracing::info!("x");
    });
    assert_eq!(out[0]["request_id"], "req-6");
    assert_eq!(out[0]["span_id"], "7");
}
