//! `events:` → the model's [`Events`]: broker addresses, the topic name, the timeout and the spool,
//! each error at its own path.

use super::Check;
use crate::model::events::{Events, Kafka};
use crate::spec::{EventsSpec, KafkaSpec};
use std::path::Path;
use std::time::Duration;

/// The checked section; problems are recorded (and the sink left out).
pub(crate) fn events(c: &mut Check<'_>, spec: &EventsSpec, base_dir: &Path) -> Events {
    Events {
        kafka: spec.kafka.as_ref().and_then(|k| kafka(c, k, base_dir)),
    }
}

fn kafka(c: &mut Check<'_>, k: &KafkaSpec, base_dir: &Path) -> Option<Kafka> {
    let before = c.error_count();
    if k.brokers.is_empty() {
        c.err(
            "events.kafka.brokers",
            "`brokers` needs at least one `host:port`",
        );
    }
    for (i, b) in k.brokers.iter().enumerate() {
        if !is_host_port(b) {
            c.err(
                &format!("events.kafka.brokers.{i}"),
                format!("`{b}` is not a `host:port` broker address"),
            );
        }
    }
    if !is_topic_name(&k.topic) {
        c.err(
            "events.kafka.topic",
            format!(
                "`{}` is not a Kafka topic name (1–249 of `a-zA-Z0-9._-`)",
                k.topic
            ),
        );
    }
    if !(1_000..=300_000).contains(&k.delivery_timeout_ms) {
        c.err(
            "events.kafka.delivery_timeout_ms",
            format!(
                "`delivery_timeout_ms` must be between 1000 and 300000, not {}",
                k.delivery_timeout_ms
            ),
        );
    }
    if k.spool_dir.as_deref() == Some("") {
        c.err("events.kafka.spool_dir", "`spool_dir` must not be empty");
    }
    if k.spool_max_bytes == 0 {
        c.err(
            "events.kafka.spool_max_bytes",
            "`spool_max_bytes` must be at least 1",
        );
    }
    (c.error_count() == before).then(|| Kafka {
        brokers: k.brokers.clone(),
        topic: k.topic.clone(),
        delivery_timeout: Duration::from_millis(k.delivery_timeout_ms),
        spool_dir: k.spool_dir.as_deref().map(|d| base_dir.join(d)),
        spool_max_bytes: k.spool_max_bytes,
    })
}

/// `host:port` with a non-empty host and a port in 1–65535.
fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(',') && port.parse::<u16>().is_ok_and(|p| p > 0)
    })
}

/// Kafka's own rule: 1–249 characters of ASCII letters, digits, `.`, `_`, `-`, and not `.` or `..`.
fn is_topic_name(s: &str) -> bool {
    (1..=249).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}
