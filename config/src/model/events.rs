//! The validated `events:` section: where the proxy publishes usage events.

use std::path::PathBuf;
use std::time::Duration;

/// Event sinks of the proxy; `kafka: None` keeps usage records in the log only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    pub kafka: Option<Kafka>,
}

/// A checked Kafka sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kafka {
    /// `host:port` each, at least one.
    pub brokers: Vec<String>,
    pub topic: String,
    pub delivery_timeout: Duration,
    /// Absolute (resolved against the config file's directory).
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: u64,
}
