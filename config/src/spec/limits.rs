//! Rate limits and quotas as written (`limits:` and `tiers.<name>.limits`). `validate::limits` turns
//! them into `model::limits`.
//!
//! ```yaml
//! limits:
//!   store: memory                 # or redis (shared by every proxy replica)
//!   redis: { url: "redis://127.0.0.1:6379", timeout_ms: 20 }
//!   default_max_tokens: 1024      # completion cap reserved (per choice) when a request names none
//!   enforce_max_tokens: false     # true: send that cap upstream, so no answer outgrows its reservation
//!   policies:                     # shared pools: organizations, providers, models …
//!     - { name: openai-pool, unit: tokens, rate: 2000000, per: minute, scope: [provider],
//!         match: { providers: [openai] } }
//! tiers:
//!   free:
//!     priority: low
//!     limits:                     # per API key (scope [key]) unless `scope` says otherwise
//!       - { name: free-rpm, unit: requests, rate: 20, per: minute }
//!       - { name: free-tpd, unit: tokens, quota: daily, limit: 100000 }
//! balances:                       # prepaid tokens per org (`unit: balance`, in-process store)
//!   acme: 1000000
//! ```

use crate::common::{AlgorithmKind, Dimension, OnStoreErrorSpec, Priority, QuotaWindow, Unit};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Global limiter settings and shared policies.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Where bucket state lives: `memory` (this process) or `redis` (shared by replicas).
    #[serde(default)]
    pub store: StoreKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// Completion tokens reserved per choice when a request sets no `max_tokens` (per-policy
    /// override).
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
    /// Hard cap: a request that sets no completion cap is sent upstream with the reserved
    /// `default_max_tokens` as its cap (`max_tokens`, `max_completion_tokens`, `max_output_tokens`,
    /// `generationConfig.maxOutputTokens` or `parameters.max_tokens`, per choice), so the provider
    /// never generates more than was admitted; answers longer than that end with
    /// `finish_reason: length`. Default off (per-policy override).
    #[serde(default)]
    pub enforce_max_tokens: bool,
    /// Policies that apply across tiers (selected by `match`).
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
}

fn default_max_tokens() -> u64 {
    1024
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    /// `redis://host:port[/db]`; `${VAR}` interpolation applies.
    pub url: String,
    /// Budget of one limiter call; past it the policy's `on_store_error` applies.
    #[serde(default = "default_redis_timeout")]
    pub timeout_ms: u64,
    /// Consecutive failures that open the breaker (no Redis calls while open).
    #[serde(default = "default_failures")]
    pub failures_to_open: u32,
    /// First open period; doubles on repeated trips, capped at 10 s.
    #[serde(default = "default_open_ms")]
    pub open_ms: u64,
    /// Key prefix.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Cluster hash tag shared by all limiter keys, so one Lua call can cover any of a request's buckets.
    #[serde(default = "default_prefix")]
    pub hash_tag: String,
    /// Proxies sharing this Redis: during an outage, `local` policies enforce 1/replicas of each limit.
    #[serde(default = "one")]
    pub replicas: u32,
}

fn default_redis_timeout() -> u64 {
    20
}
fn default_failures() -> u32 {
    3
}
fn default_open_ms() -> u64 {
    500
}
fn default_prefix() -> String {
    "lt".into()
}
fn one() -> u32 {
    1
}

/// One limit. Exactly one of: `rate` + `per` (a bucket), `quota` + `limit` (a calendar window),
/// `unit: concurrent_requests` + `limit`, or `unit: balance` alone (the org's prepaid balance).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Unique name: shown in headers (`RateLimit-Policy`), metrics and logs.
    pub name: String,
    #[serde(default)]
    pub unit: Unit,
    /// `leaky` (GCRA, the default) or `token` (token bucket).
    #[serde(default)]
    pub algorithm: AlgorithmKind,
    /// Units per `per`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<Per>,
    /// Largest burst (bucket capacity); default `rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Leaky only: delay a request up to this long instead of refusing it (batch tiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape_max_wait_ms: Option<u64>,
    /// A calendar quota instead of a bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaWindow>,
    /// Quota or concurrency limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// IANA time zone the quota's windows align to (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// `hard` refuses past the quota; `soft` admits, flags and counts.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Dimensions that make a bucket: one bucket per distinct combination. Default: `[key]` for a
    /// tier's limits, `[]` (one shared bucket) for `limits.policies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Vec<Dimension>>,
    /// Which requests the policy applies to (all listed conditions must hold; empty = any).
    #[serde(default, rename = "match")]
    pub matcher: MatchSpec,
    /// Share of the bucket kept back from lower priorities (0.0–1.0), e.g. `{low: 0.3, normal: 0.1}`:
    /// a low-priority caller is refused once less than 30% would remain.
    #[serde(default)]
    pub reserve: BTreeMap<Priority, f64>,
    /// What happens when the store (Redis) cannot answer in time. Default `local`; for
    /// `unit: balance` `fail_closed` (`local` is refused there: a proxy's share of a prepaid balance
    /// would spend money nobody tracks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_store_error: Option<OnStoreErrorSpec>,
    /// Completion tokens reserved per choice when a request sets no cap (default
    /// `limits.default_max_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_max_tokens: Option<u64>,
    /// Send this policy's `default_max_tokens` upstream as the cap of a request that sets none
    /// (default `limits.enforce_max_tokens`; `unit: tokens` or `completion_tokens` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforce_max_tokens: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    Second,
    Minute,
    Hour,
    Day,
}

impl Per {
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3600,
            Per::Day => 86_400,
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    #[default]
    Hard,
    Soft,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    #[serde(default)]
    pub tiers: Vec<String>,
    /// Exact names or prefixes ending in `*`.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub providers: Vec<String>,
    #[serde(default)]
    pub routes: Vec<String>,
}
