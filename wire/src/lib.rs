//! Wire types shared by the proxy, the control plane and consumers: what crosses a process boundary
//! (the usage log, and the CloudEvents envelopes published to Kafka). Each type is serde-serializable and
//! carries a schema version, so a consumer can tell a record it understands from a newer one.
//!
//! This crate holds data only — no I/O, no runtime — so every side can depend on it cheaply.
//!
//! Versioning rule: adding a field (consumers ignore unknown fields) keeps the version; renaming or
//! removing one, or changing its meaning, bumps it.

pub mod event;
pub mod trace_context;
pub mod usage;

pub use event::{Envelope, UsageData};
pub use usage::{UsageRecord, UsageSource};
