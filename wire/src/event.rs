//! Event envelopes: what proxies publish to Kafka (issue #15). One JSON object per message, with the
//! CloudEvents 1.0 attributes (structured content mode: the attributes and `data` in one document)
//! plus `schemaversion`, the version of `data`'s shape (see the crate docs for when it changes).
//!
//! The usage event ([`USAGE_TOPIC`], [`USAGE_TYPE`]) carries [`UsageData`], the full-stack contract's
//! names for a [`UsageRecord`]: `key_id` (the record's `principal`) and `usage_source` (its
//! `source`). Messages are keyed by org (`-` without one), so one org's events stay in order on one
//! partition; the caller's W3C `traceparent` travels as a Kafka header, not in the document.

use crate::usage::{UsageRecord, UsageSource};
use serde::{Deserialize, Serialize};

/// The topic usage events go to unless the config names another.
pub const USAGE_TOPIC: &str = "leaky.usage.v1";
/// The CloudEvents `type` of a usage event.
pub const USAGE_TYPE: &str = "leaky.usage.v1";
/// The version of [`UsageData`]'s shape.
pub const USAGE_SCHEMA_VERSION: u16 = 1;
/// The CloudEvents spec version written.
pub const SPEC_VERSION: &str = "1.0";
/// The message key of an event without an org.
pub const NO_ORG_KEY: &str = "-";

/// A CloudEvents 1.0 envelope around `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub specversion: String,
    /// Unique per event (a UUID), kept across retries and spool replays: consumers dedupe on it.
    pub id: String,
    /// The producer, e.g. `/leaky-tokens/proxy/<instance>`.
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339, UTC.
    pub time: String,
    /// What the event is about: the request id for usage events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub datacontenttype: String,
    /// The version of `data`'s shape.
    pub schemaversion: u16,
    pub data: T,
}

/// The `data` of a `leaky.usage.v1` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageData {
    pub request_id: String,
    pub org: Option<String>,
    pub user: String,
    /// The API key id, or the JWT's `jti`/subject (`-` when nobody authenticated).
    pub key_id: String,
    pub tier: String,
    pub route: Option<String>,
    pub model: String,
    pub provider: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub usage_source: UsageSource,
    /// The HTTP status the caller got.
    pub status: u16,
    pub latency_ms: f64,
    /// Served from the response cache: the counts are the original answer's (issue 18).
    #[serde(default)]
    pub cached: bool,
    /// What the org was charged when it differs from `total_tokens` (a cache hit whose route
    /// charges a fraction); absent: `total_tokens`. The ledger debits this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charged_tokens: Option<u64>,
}

impl UsageData {
    /// The tokens to debit: [`Self::charged_tokens`] when set, else the total.
    pub fn billed_tokens(&self) -> u64 {
        self.charged_tokens.unwrap_or(self.total_tokens)
    }
}

impl From<&UsageRecord> for UsageData {
    fn from(r: &UsageRecord) -> Self {
        UsageData {
            request_id: r.request_id.clone(),
            org: r.org.as_deref().map(str::to_owned),
            user: r.user.to_string(),
            key_id: r.principal.to_string(),
            tier: r.tier.to_string(),
            route: r.route.as_deref().map(str::to_owned),
            model: r.model.clone(),
            provider: r.provider.to_string(),
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            total_tokens: r.total_tokens(),
            usage_source: r.source,
            status: r.status,
            latency_ms: r.latency_ms,
            cached: r.cached,
            charged_tokens: r.charged_tokens,
        }
    }
}

impl Envelope<UsageData> {
    /// The usage event of `r`: `id` and `time` (RFC 3339) are the caller's, so this crate needs no
    /// clock or random source.
    pub fn usage(r: &UsageRecord, id: String, source: String, time: String) -> Self {
        Envelope {
            specversion: SPEC_VERSION.to_owned(),
            id,
            source,
            kind: USAGE_TYPE.to_owned(),
            time,
            subject: Some(r.request_id.clone()),
            datacontenttype: "application/json".to_owned(),
            schemaversion: USAGE_SCHEMA_VERSION,
            data: UsageData::from(r),
        }
    }
}

/// A usage event borrowed from its record: serializes to exactly the bytes of
/// [`Envelope::usage`] (same fields, same order) without copying a string, so a producer can write
/// one event per request straight into a reused buffer (issue #15: producer CPU per request).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UsageEventRef<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    time: &'a str,
    subject: &'a str,
    datacontenttype: &'static str,
    schemaversion: u16,
    data: UsageDataRef<'a>,
}

/// [`UsageData`] borrowed from a [`UsageRecord`] (same fields, same order).
#[derive(Debug, Clone, Copy, Serialize)]
struct UsageDataRef<'a> {
    request_id: &'a str,
    org: Option<&'a str>,
    user: &'a str,
    key_id: &'a str,
    tier: &'a str,
    route: Option<&'a str>,
    model: &'a str,
    provider: &'a str,
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    usage_source: UsageSource,
    status: u16,
    latency_ms: f64,
    cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    charged_tokens: Option<u64>,
}

impl<'a> UsageEventRef<'a> {
    /// The usage event of `r`, like [`Envelope::usage`] but borrowing every string.
    pub fn new(r: &'a UsageRecord, id: &'a str, source: &'a str, time: &'a str) -> Self {
        UsageEventRef {
            specversion: SPEC_VERSION,
            id,
            source,
            kind: USAGE_TYPE,
            time,
            subject: &r.request_id,
            datacontenttype: "application/json",
            schemaversion: USAGE_SCHEMA_VERSION,
            data: UsageDataRef {
                request_id: &r.request_id,
                org: r.org.as_deref(),
                user: &r.user,
                key_id: &r.principal,
                tier: &r.tier,
                route: r.route.as_deref(),
                model: &r.model,
                provider: &r.provider,
                prompt_tokens: r.prompt_tokens,
                completion_tokens: r.completion_tokens,
                total_tokens: r.total_tokens(),
                usage_source: r.source,
                status: r.status,
                latency_ms: r.latency_ms,
                cached: r.cached,
                charged_tokens: r.charged_tokens,
            },
        }
    }
}

/// The message key of `r`'s event: its org, or [`NO_ORG_KEY`].
pub fn usage_key(r: &UsageRecord) -> &str {
    r.org.as_deref().unwrap_or(NO_ORG_KEY)
}

#[cfg(test)]
mod tests;
