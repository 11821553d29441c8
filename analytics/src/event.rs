//! From a Kafka message to the row the writer stores, or the reason it is poison.
//!
//! A message is poison when it can never be stored: no payload, not a CloudEvents envelope of a
//! usage event, a `schemaversion` this consumer does not know, or a `time` that is not RFC 3339.
//! Poison goes to the dead-letter topic (see [`crate::consumer`]); it never blocks its partition.

use chrono::DateTime;
use leaky_wire::event::{Envelope, UsageData, NO_ORG_KEY, USAGE_SCHEMA_VERSION, USAGE_TYPE};
use rust_decimal::Decimal;

use crate::buckets::Totals;

/// One usage event as stored: its identity, time, dimensions and the sums it adds to a bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    /// The envelope's `id`: unique per event and kept across retries and replays, so storing a
    /// redelivered event overwrites the same row.
    pub event_id: String,
    /// Event time (the envelope's `time`), milliseconds since the epoch: the bucket the event
    /// counts in, however late it arrives.
    pub ts: i64,
    pub org: String,
    pub request_id: String,
    pub key_id: String,
    pub model: String,
    pub provider: String,
    pub status: i32,
    /// One request's contribution (requests = 1, errors = 1 when the caller got a 4xx/5xx).
    pub totals: Totals,
}

/// Why a message is poison (the reason travels with it to the dead-letter topic).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    #[error("message has no payload")]
    Empty,
    #[error("undecodable envelope: {0}")]
    Undecodable(String),
    #[error("unexpected event type {0:?}")]
    WrongType(String),
    #[error("unknown schema version {0}")]
    UnknownVersion(u16),
    #[error("bad event time {0:?}")]
    BadTime(String),
}

/// The version and type are checked before `data` is decoded: an unknown version may have a `data`
/// of another shape, and its reason should say so rather than name a missing field.
#[derive(serde::Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: String,
    schemaversion: u16,
}

/// Decodes one message payload.
pub fn decode(payload: Option<&[u8]>) -> Result<UsageRow, Poison> {
    let payload = payload.ok_or(Poison::Empty)?;
    let head: Head =
        serde_json::from_slice(payload).map_err(|e| Poison::Undecodable(e.to_string()))?;
    if head.kind != USAGE_TYPE {
        return Err(Poison::WrongType(head.kind));
    }
    if head.schemaversion != USAGE_SCHEMA_VERSION {
        return Err(Poison::UnknownVersion(head.schemaversion));
    }
    let env: Envelope<UsageData> =
        serde_json::from_slice(payload).map_err(|e| Poison::Undecodable(e.to_string()))?;
    let ts = DateTime::parse_from_rfc3339(&env.time)
        .map_err(|_| Poison::BadTime(env.time.clone()))?
        .timestamp_millis();
    Ok(row(env.id, ts, env.data))
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn row(event_id: String, ts: i64, d: UsageData) -> UsageRow {
    // Latency arrives as float milliseconds; it is stored as whole microseconds so sums are exact.
    let latency_us = if d.latency_ms.is_finite() && d.latency_ms > 0.0 {
        (d.latency_ms * 1000.0).round().min(i64::MAX as f64) as i64
    } else {
        0
    };
    UsageRow {
        event_id,
        ts,
        org: d.org.unwrap_or_else(|| NO_ORG_KEY.to_owned()),
        request_id: d.request_id,
        key_id: d.key_id,
        model: d.model,
        provider: d.provider,
        status: i32::from(d.status),
        totals: Totals {
            requests: 1,
            errors: i64::from(d.status >= 400),
            prompt_tokens: count(d.prompt_tokens),
            completion_tokens: count(d.completion_tokens),
            total_tokens: count(d.total_tokens),
            latency_us,
            cost: Decimal::ZERO,
        },
    }
}

#[cfg(test)]
mod tests;
