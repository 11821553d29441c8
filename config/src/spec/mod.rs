//! What platform teams write: the YAML schema, exactly as it appears on disk.
//!
//! Every struct denies unknown fields so a typo is an error with a location, not a silently ignored
//! setting. These types are *not* what the data plane runs on: `validate` turns them into the checked
//! `model` (references resolved, secrets interpolated, hashes decoded). This layer imports nothing
//! from `model` or `validate`; the enums both layers use live in `common`.
//!
//! - `mod.rs`: the file, `server`, providers, routes and their upstream, tiers, keys;
//! - `filters`: a route's filter chain (one `FilterSpec` variant per `kind`);
//! - `limits`: `limits:` and a tier's `limits`;
//! - `resilience`: pools, breakers, health checks, bulkheads, timeouts, retries, fallbacks;
//! - `endpoints`: a route's endpoint allow-list;
//! - `flags`: feature flags;
//! - `events`: where usage events are published (Kafka);
//! - `cache`: the response cache's stores and a route's `cache:`.

mod cache;
mod endpoints;
mod events;
mod filters;
mod flags;
mod limits;
mod resilience;

pub use crate::common::{
    CacheScope, CacheStoreKind, CacheTemperature, Dialect, ModelSource, Priority, UpstreamAuth,
};
pub use cache::*;
pub use endpoints::*;
pub use events::*;
pub use filters::*;
pub use flags::*;
pub use limits::*;
pub use resilience::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A Leaky Tokens configuration file. An environment overlay names its base with `extends`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Path of a base file (relative to this one) that this file overlays. Mappings merge key by key;
    /// lists and scalars in the overlay replace the base's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    #[serde(default)]
    pub server: ServerSpec,
    /// Upstream providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSpec>,
    /// Routes, matched by longest path prefix.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Tiers by name; keys and JWT principals refer to them.
    #[serde(default)]
    pub tiers: BTreeMap<String, TierSpec>,
    /// API keys, stored as SHA-256 hashes.
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// Rate limits and quotas shared across tiers, and where limiter state lives.
    #[serde(default)]
    pub limits: limits::LimitsSpec,
    /// Prepaid tokens credited to each org (org → tokens) for `unit: balance` policies on the
    /// in-process store. With `limits.store: redis` the control plane writes the credited amount
    /// into Redis instead and this section is ignored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub balances: BTreeMap<String, u64>,
    /// Feature flags by name (1–64 of `a-z 0-9 _ -`). A flag the gateway knows but the config does
    /// not name keeps its built-in default (see the README's "Feature flags").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("propertyNames" = {"pattern": "^[a-z0-9_-]{1,64}$"}))]
    pub flags: BTreeMap<String, flags::FlagSpec>,
    /// Where usage events are published (absent: the log only). Read at start.
    #[serde(default, skip_serializing_if = "is_default")]
    pub events: events::EventsSpec,
    /// Where the response cache keeps answers (routes opt in with their own `cache:`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub cache: cache::CacheSpec,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Listeners and process settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Address of the proxy listener.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address of the admin listener (/healthz, /readyz, /metrics, /admin/config, POST /admin/reload).
    /// Anything but a loopback address needs `admin_token`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// Bearer token for the admin listener, e.g. `${LEAKY_ADMIN_TOKEN}`: required by `POST
    /// /admin/reload` (refused while unset), and by every endpoint but /healthz and /readyz when the
    /// listener is bound beyond loopback. Empty means unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Largest request body accepted, in bytes; larger ones get 413 in the route's dialect.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Seconds a graceful shutdown waits for in-flight requests.
    #[serde(default = "default_grace_period")]
    pub grace_period_seconds: u64,
    /// Peers (IP addresses or CIDR blocks, e.g. a load balancer's subnet) whose `X-Forwarded-For` and
    /// `Forwarded` headers are kept, with the peer's address appended. From any other peer those
    /// headers are replaced by the peer's own address. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Milliseconds a client has to send a whole request head (request line and headers), counted
    /// from the connection's accept or, on a kept-alive connection, from the head's first byte: a
    /// total, not a per-read timeout. On expiry the gateway answers 408 and closes.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Milliseconds a kept-alive connection may sit idle between requests before it is closed.
    #[serde(default = "default_keepalive_timeout_ms")]
    pub keepalive_timeout_ms: u64,
    /// Largest request head (request line and headers) in bytes; a larger one gets 431 and the
    /// connection is closed. At most 1048575 (Pingora's own ceiling).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Client connections the proxy listener holds at once; one more is answered 503 with
    /// `Connection: close`, unread. Lowered at start-up to fit under the process's open-file limit.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Client connections the admin listener holds at once (its own budget, so a proxy flood cannot
    /// starve `/healthz`).
    #[serde(default = "default_admin_max_connections")]
    pub admin_max_connections: usize,
    /// TLS on the proxy listener (absent: plain HTTP). TLS 1.2 and 1.3 with ALPN `h2` and
    /// `http/1.1`. Turned on or off only by a restart; the certificate and key files are read again
    /// on every reload (`POST /admin/reload`, `SIGHUP`, a config file change), so a rotated
    /// certificate is served without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTlsSpec>,
    /// TLS on the admin listener, the same way (absent: plain HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_tls: Option<ListenerTlsSpec>,
}

/// A listener's certificate and key (PEM files; relative paths are from the config file's directory).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSpec {
    /// The certificate chain, leaf first (PEM).
    pub cert: String,
    /// The private key of the leaf certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Oldest TLS version accepted: `"1.2"` (default) or `"1.3"`. Older versions are never offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<TlsVersionSpec>,
}

/// A TLS protocol version the gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum TlsVersionSpec {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// How the gateway connects to an `https` provider.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// A CA certificate file (PEM) to trust instead of the system roots: pins the provider's CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// A client certificate chain (PEM) presented to the provider (mTLS); needs `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// The client certificate's private key (PEM); needs `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

impl Default for ServerSpec {
    fn default() -> Self {
        ServerSpec {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            admin_token: None,
            threads: default_threads(),
            max_body_bytes: default_max_body_bytes(),
            grace_period_seconds: default_grace_period(),
            trusted_proxies: Vec::new(),
            header_timeout_ms: default_header_timeout_ms(),
            keepalive_timeout_ms: default_keepalive_timeout_ms(),
            max_header_bytes: default_max_header_bytes(),
            max_connections: default_max_connections(),
            admin_max_connections: default_admin_max_connections(),
            tls: None,
            admin_tls: None,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}
fn default_threads() -> usize {
    2
}
fn default_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_grace_period() -> u64 {
    5
}
fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_keepalive_timeout_ms() -> u64 {
    60_000
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_connections() -> usize {
    4096
}
fn default_admin_max_connections() -> usize {
    64
}

/// One upstream provider.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// `http://host:port` or `https://host:port`, with no path. `${ENV}` / `${ENV:-default}` allowed.
    /// Required unless `deployments` lists the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// How the credential is presented upstream.
    #[serde(default = "default_auth")]
    pub auth: UpstreamAuth,
    /// The upstream credential; use `${ENV_VAR}` or `${ENV_VAR:-default}` rather than a literal secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Models this provider serves (listed by the gateway's `GET /v1/models`).
    #[serde(default)]
    pub models: Vec<String>,
    /// TCP connect timeout, milliseconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Longest wait for any single read from the upstream (first byte, next chunk), milliseconds.
    #[serde(default = "default_read_timeout")]
    pub read_timeout_ms: u64,
    /// How long an idle pooled connection is kept; keep it below the upstream's own keep-alive timeout.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// The provider's pool: several endpoints (regions, keys, accounts) chosen per request by weight
    /// and load, skipping open circuits and exhausted budgets. Default: one deployment at `base_url`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<resilience::DeploymentSpec>,
    /// Circuit breaker of each deployment.
    #[serde(default)]
    pub breaker: resilience::BreakerSpec,
    /// Active health check of each deployment (off when absent; the breaker still acts on failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<resilience::HealthCheckSpec>,
    /// Concurrency limit of each deployment (default 1024 in flight, no queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulkhead: Option<resilience::BulkheadSpec>,
    /// OpenAI organization of the gateway's account, sent as `OpenAI-Organization`. A caller's own
    /// `OpenAI-Organization` is never forwarded. `${ENV}` allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// OpenAI project of the gateway's account, sent as `OpenAI-Project` (a caller's is never forwarded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// DashScope workspace of the gateway's account, sent as `X-DashScope-WorkSpace` (a caller's is never
    /// forwarded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Headers passed through as they are, beyond the route dialect's defaults, on every route that
    /// sends to this provider: the caller's to the provider and the provider's back. Names or prefixes
    /// ending in `*`; credentials, account, hop-by-hop and gateway-owned headers are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_headers: Vec<String>,
    /// TLS towards an `https` provider: a pinned CA (default: the system's roots) and a client
    /// certificate. The server name sent (SNI) and verified is the host of `base_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsSpec>,
}

fn default_auth() -> UpstreamAuth {
    UpstreamAuth::Bearer
}
fn default_connect_timeout() -> u64 {
    2_000
}
fn default_read_timeout() -> u64 {
    300_000
}
fn default_idle_timeout() -> u64 {
    30_000
}

/// One route: a path prefix, where it goes, and the filters that run on it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique name, used in metrics and logs.
    pub name: String,
    /// Path prefix, matched on segment boundaries; the longest matching prefix wins.
    pub prefix: String,
    /// Error format of this route.
    #[serde(default = "default_dialect")]
    pub dialect: Dialect,
    /// Where the model comes from (default: `path` for the google dialect, else `body`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_source: Option<ModelSource>,
    /// The upstream: one provider, or a choice by model.
    pub upstream: UpstreamSpec,
    /// The filter chain, run in this order.
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    /// Upstream timeouts (connect, first byte, idle between chunks, total).
    #[serde(default)]
    pub timeouts: resilience::TimeoutsSpec,
    /// Retries over the provider's pool, within a retry budget.
    #[serde(default)]
    pub retry: resilience::RetrySpec,
    /// Models tried, in order, when a model's pool is exhausted: `{gpt-4o: [qwen-plus]}`. Each must be
    /// served by this route. The response's `x-leaky-served-model` header names the model that answered.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fallbacks: resilience::FallbacksSpec,
    /// Concurrency limits on this route.
    #[serde(default)]
    pub bulkhead: resilience::RouteBulkheadSpec,
    /// Headers passed through as they are, beyond the dialect's defaults: the caller's to the provider
    /// and the provider's back (e.g. `[x-stub-fault, "x-stub-*"]` for the stubs' fault injection in
    /// tests). Names or prefixes ending in `*`; credentials, account, hop-by-hop and gateway-owned
    /// headers are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_headers: Vec<String>,
    /// What callers may reach upstream (method + path under the prefix): the dialect's inference and
    /// model-listing endpoints unless configured otherwise; anything else is a 404 in the route's dialect.
    #[serde(default)]
    pub endpoints: endpoints::EndpointsSpec,
    /// The response cache of this route (absent: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<cache::RouteCacheSpec>,
}

fn default_dialect() -> Dialect {
    Dialect::Openai
}

/// Where a route sends requests. Exactly one of `provider` or `by_model`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Send everything to this provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Upstream path that replaces the route prefix (with `provider`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Choose the provider by model, first match wins; unknown models get 404 in the route's dialect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_model: Option<Vec<ModelTargetSpec>>,
}

/// Models matching any pattern go to `provider`, with the route prefix replaced by `path_prefix`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelTargetSpec {
    /// Exact names or prefixes ending in `*` (e.g. `gpt-*`).
    pub models: Vec<String>,
    pub provider: String,
    pub path_prefix: String,
}

/// A tier: the limits its keys and JWT principals get, and its shedding priority.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Shedding priority when shared pools saturate.
    #[serde(default)]
    pub priority: Priority,
    /// Limits of every principal of this tier (per API key unless a policy's `scope` says otherwise).
    #[serde(default)]
    pub limits: Vec<limits::PolicySpec>,
}

/// An API key. The plaintext is never stored: `sha256` is the hex SHA-256 of the key.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Stable id of the key (shown in logs and usage records, never the key itself).
    pub id: String,
    /// Lower-case hex SHA-256 of the key (`printf %s KEY | sha256sum`).
    pub sha256: String,
    /// Owning user.
    pub user: String,
    /// Owning organization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    pub tier: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Allowed models (exact names or prefixes ending in `*`); empty allows all.
    #[serde(default)]
    pub models: Vec<String>,
    /// RFC 3339 expiry; the key is refused from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}
