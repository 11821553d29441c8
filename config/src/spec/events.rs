//! `events:` as written: where the proxy publishes events. Today one sink, `kafka`: every usage
//! record as a CloudEvents JSON envelope (see `leaky_wire::event`). Absent, usage records go to the
//! log only. Read at start: changing it needs a restart.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Event sinks of the proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsSpec {
    /// Publish usage events to Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSpec>,
}

/// The Kafka producer (idempotent, `acks=all`) and its on-disk spool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSpec {
    /// Bootstrap brokers, `host:port` each.
    pub brokers: Vec<String>,
    /// The usage events' topic.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// How long the producer tries to deliver an event before it goes to the spool (1000–300000).
    #[serde(default = "default_delivery_timeout_ms")]
    #[schemars(range(min = 1000, max = 300000))]
    pub delivery_timeout_ms: u64,
    /// Directory of the spool: events Kafka did not take, in append-only segment files, replayed in
    /// order once it is back. Relative to this file's directory. Absent: undeliverable events are
    /// dropped (and counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_dir: Option<String>,
    /// The spool's size bound in bytes; a full spool drops new events and counts them.
    #[serde(default = "default_spool_max_bytes")]
    #[schemars(range(min = 1))]
    pub spool_max_bytes: u64,
}

fn default_topic() -> String {
    "leaky.usage.v1".to_owned()
}

fn default_delivery_timeout_ms() -> u64 {
    30_000
}

fn default_spool_max_bytes() -> u64 {
    256 * 1024 * 1024
}
