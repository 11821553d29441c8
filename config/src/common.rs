//! The vocabulary both layers share: small enums that users write in YAML (`spec`) and the data plane
//! matches on (`model`) unchanged. A leaf: it imports nothing from the crate, so `spec` and `model`
//! can both use it without importing each other.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How the gateway authenticates itself to a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamAuth {
    /// `Authorization: Bearer <credential>` (OpenAI, DashScope, OpenAI-compatible endpoints).
    Bearer,
    /// `x-goog-api-key: <credential>` (Gemini native).
    GoogApiKey,
    /// No credential is sent.
    None,
}

/// The error format of a route: rejections are rendered the way the caller's SDK expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Dialect {
    /// `{"error":{"message","type","param","code"}}`
    Openai,
    /// `{"error":{"code","message","status"}}`
    Google,
    /// `{"request_id","code","message"}`
    Dashscope,
}

/// Where a route finds the model of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ModelSource {
    /// The JSON body's `model` field.
    Body,
    /// The path segment `models/{model}[:method]` (Gemini native).
    Path,
    /// The route does not look at the model.
    None,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    #[default]
    Requests,
    /// Prompt + completion tokens.
    Tokens,
    PromptTokens,
    CompletionTokens,
    ConcurrentRequests,
    /// Prompt + completion tokens against the org's prepaid balance (`balances:`, or the control
    /// plane's mirror in Redis): a non-refilling account, one per org, whatever the policy version.
    Balance,
}

impl Unit {
    pub fn is_tokens(self) -> bool {
        matches!(
            self,
            Unit::Tokens | Unit::PromptTokens | Unit::CompletionTokens | Unit::Balance
        )
    }

    /// Whether a request's completion cap (or `default_max_tokens`) is part of its cost.
    pub fn reserves_completion(self) -> bool {
        matches!(self, Unit::Tokens | Unit::CompletionTokens | Unit::Balance)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmKind {
    #[default]
    Leaky,
    Token,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaWindow {
    Hourly,
    Daily,
    Monthly,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Key,
    User,
    Org,
    Tier,
    Model,
    Provider,
    Route,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreErrorSpec {
    FailOpen,
    FailClosed,
    /// Limit in-process with this proxy's share (`1/redis.replicas`) until the store recovers (the
    /// default, except for `unit: balance`, which fails closed).
    #[default]
    Local,
}

/// The method of an allowed endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
pub enum EndpointMethod {
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "HEAD")]
    Head,
    #[serde(rename = "POST")]
    Post,
    #[serde(rename = "PUT")]
    Put,
    #[serde(rename = "PATCH")]
    Patch,
    #[serde(rename = "DELETE")]
    Delete,
    #[serde(rename = "OPTIONS")]
    Options,
    /// Any method.
    #[serde(rename = "*")]
    Any,
}

/// Whose requests share a `concurrency` filter's cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyScope {
    /// The authenticated principal (API key or token subject).
    #[default]
    Key,
    /// The principal's user.
    User,
    /// The principal's org, else its user.
    Org,
}

/// Where a route's cached answers live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CacheStoreKind {
    /// This process's byte-bounded LRU (`cache.memory`).
    #[default]
    Memory,
    /// The shared Redis of `cache.redis`: every proxy replica sees the same answers.
    Redis,
}

/// Whose answers a cached answer may be served to. Two tenants never share an entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CacheScope {
    /// Everyone in the caller's organization (a principal without an org: its own API key).
    #[default]
    Org,
    /// Only the same API key.
    Key,
    /// Only the same user within the same organization (a principal without a user: its key).
    User,
}

/// Which requests with sampling randomness may be cached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CacheTemperature {
    /// Only greedy requests (`temperature: 0` or `top_p: 0`; an absent temperature is 1).
    #[default]
    Never,
    /// Greedy requests and requests that name a `seed`.
    Seeded,
    /// Any request: a hit replays one sample of a random answer.
    Always,
}
