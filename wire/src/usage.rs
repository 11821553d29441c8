//! The usage record: one per metered request, written by the proxy when the request ends.
//!
//! The proxy's log sink writes it (target `usage`, the fields below as one JSON line with
//! `--log-format json`), and with `events.kafka` it is the `data` of the `leaky.usage.v1` event
//! ([`crate::event::UsageData`]). The full-stack contract names two fields differently there:
//! `key_id` is [`UsageRecord::principal`] and `usage_source` is [`UsageRecord::source`];
//! `total_tokens` is derived, so it is written but never read back.

use serde::{Deserialize, Serialize, Serializer};
use std::sync::Arc;

/// Where a record's token counts come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageSource {
    /// The provider's own numbers, from a complete answer.
    Reported,
    /// Counted by the gateway from the streamed text (the stream was cut or had no usage chunk).
    #[default]
    Counted,
    /// A non-streamed answer without usage (malformed, unfinished): the prompt estimate plus the
    /// reserved completion, or the counted tokens if more.
    Reservation,
    /// Nothing was used (the request never reached a provider's answer): the reservation was
    /// handed back whole.
    Refunded,
}

impl UsageSource {
    /// The label in records, logs and metrics (what serde writes).
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Counted => "counted",
            UsageSource::Reservation => "reservation",
            UsageSource::Refunded => "refunded",
        }
    }
}

/// One metered request. Values shared with the request (principal, provider, route) are `Arc<str>`
/// so building a record copies no strings on the request path.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "Read")]
pub struct UsageRecord {
    /// [`UsageRecord::SCHEMA_VERSION`] when written by this crate.
    pub schema_version: u16,
    pub request_id: String,
    /// The API key id, or the JWT's `jti`/subject (`-` when nobody authenticated).
    pub principal: Arc<str>,
    pub user: Arc<str>,
    pub org: Option<Arc<str>>,
    pub tier: Arc<str>,
    pub route: Option<Arc<str>>,
    pub model: String,
    pub provider: Arc<str>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub source: UsageSource,
    /// The HTTP status the caller got.
    pub status: u16,
    pub latency_ms: f64,
    /// The answer came from the response cache (issue 18): the counts above are the original
    /// answer's usage, not tokens generated for this request.
    pub cached: bool,
    /// What the org's limits and prepaid balance were charged (prompt + completion) when that
    /// differs from the total: a cache hit on a route whose `charge` is below 1 (`None`: the total).
    pub charged_tokens: Option<u64>,
    /// The caller's W3C `traceparent` header, if it sent one. Not part of the record's document:
    /// the event publisher sends it as a Kafka header (see [`crate::event`]).
    pub traceparent: Option<String>,
}

impl UsageRecord {
    /// The version this crate writes; see the crate docs for when it changes.
    pub const SCHEMA_VERSION: u16 = 1;

    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// What the org was charged: [`Self::charged_tokens`] when set, else the total.
    pub fn billed_tokens(&self) -> u64 {
        self.charged_tokens.unwrap_or_else(|| self.total_tokens())
    }
}

/// What is written: the record in its field order, with `total_tokens` after the two counts (a
/// derived value, so it is not stored and cannot disagree with them).
#[derive(Serialize)]
struct Written<'a> {
    schema_version: u16,
    request_id: &'a str,
    principal: &'a str,
    user: &'a str,
    org: Option<&'a str>,
    tier: &'a str,
    route: Option<&'a str>,
    model: &'a str,
    provider: &'a str,
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    source: UsageSource,
    status: u16,
    latency_ms: f64,
    cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    charged_tokens: Option<u64>,
}

/// What is read: owned strings, shared afterwards (serde's `rc` feature would do the same but
/// changes serde's features for every crate of the workspace, and so rebuilds all of them).
#[derive(Deserialize)]
struct Read {
    schema_version: u16,
    request_id: String,
    principal: String,
    user: String,
    org: Option<String>,
    tier: String,
    route: Option<String>,
    model: String,
    provider: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    source: UsageSource,
    status: u16,
    latency_ms: f64,
    /// Records written before the response cache have neither field.
    #[serde(default)]
    cached: bool,
    #[serde(default)]
    charged_tokens: Option<u64>,
}

impl From<Read> for UsageRecord {
    fn from(r: Read) -> Self {
        UsageRecord {
            schema_version: r.schema_version,
            request_id: r.request_id,
            principal: r.principal.into(),
            user: r.user.into(),
            org: r.org.map(Into::into),
            tier: r.tier.into(),
            route: r.route.map(Into::into),
            model: r.model,
            provider: r.provider.into(),
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            source: r.source,
            status: r.status,
            latency_ms: r.latency_ms,
            cached: r.cached,
            charged_tokens: r.charged_tokens,
            traceparent: None,
        }
    }
}

impl Serialize for UsageRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Written {
            schema_version: self.schema_version,
            request_id: &self.request_id,
            principal: &self.principal,
            user: &self.user,
            org: self.org.as_deref(),
            tier: &self.tier,
            route: self.route.as_deref(),
            model: &self.model,
            provider: &self.provider,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.total_tokens(),
            source: self.source,
            status: self.status,
            latency_ms: self.latency_ms,
            cached: self.cached,
            charged_tokens: self.charged_tokens,
        }
        .serialize(s)
    }
}

#[cfg(test)]
mod tests;
