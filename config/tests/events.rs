//! `events:` through the loader: absent keeps the log-only behaviour, a Kafka sink loads with its
//! defaults and a spool resolved against the file's directory, and each bad value is an error at
//! its own position with nothing loaded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

const BASE: &str = "providers:
  openai:
    base_url: http://127.0.0.1:18001
routes:
  - name: v1
    prefix: /v1
    upstream: { provider: openai }
";

fn load(text: &str) -> Result<leaky_config::Config, String> {
    leaky_config::load_text(Path::new("pushed"), text, Path::new("/etc/leaky"), &|_| {
        None
    })
    .map_err(|e| e.to_string())
}

#[test]
fn absent_means_no_sink() {
    let config = load(BASE).unwrap();
    assert_eq!(config.events.kafka, None);
}

#[test]
fn a_kafka_sink_loads_with_defaults() {
    let config = load(&format!(
        "{BASE}events:\n  kafka: {{ brokers: [\"127.0.0.1:9092\"], spool_dir: spool }}\n"
    ))
    .unwrap();
    let k = config.events.kafka.unwrap();
    assert_eq!(k.brokers, ["127.0.0.1:9092"]);
    assert_eq!(k.topic, "leaky.usage.v1");
    assert_eq!(k.delivery_timeout, Duration::from_secs(30));
    assert_eq!(k.spool_dir.as_deref(), Some(Path::new("/etc/leaky/spool")));
    assert_eq!(k.spool_max_bytes, 256 * 1024 * 1024);
}

#[test]
fn bad_values_are_errors_at_their_paths() {
    let err = load(&format!(
        "{BASE}events:
  kafka:
    brokers: [\"127.0.0.1:9092\", \"nohost\"]
    topic: \"bad topic\"
    delivery_timeout_ms: 10
    spool_max_bytes: 0
"
    ))
    .unwrap_err();
    for needle in [
        "pushed:10:14: `nohost` is not a `host:port` broker address",
        "pushed:11:12: `bad topic` is not a Kafka topic name",
        "pushed:12:26: `delivery_timeout_ms` must be between 1000 and 300000, not 10",
        "pushed:13:22: `spool_max_bytes` must be at least 1",
    ] {
        assert!(err.contains(needle), "{needle} missing in: {err}");
    }
    let err = load(&format!("{BASE}events:\n  kafka: {{ brokers: [] }}\n")).unwrap_err();
    assert!(err.contains("`brokers` needs at least one"), "{err}");
    let err = load(&format!(
        "{BASE}events:\n  kafka: {{ brokers: [\"a:1\"], topik: x }}\n"
    ))
    .unwrap_err();
    assert!(err.contains("topik"), "{err}");
}
