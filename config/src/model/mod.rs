//! The validated configuration the data plane is built from: every reference resolved, every secret
//! interpolated, every key hash decoded, every filter's settings parsed. Constructed only by `load`
//! (through `validate`), so holding a `Config` means it is valid. This layer imports nothing from `spec`
//! or `validate`; the enums both layers use live in `common`.
//!
//! - `mod.rs`: the config, server, providers, routes and their upstream, tiers, keys;
//! - `filters`: a route's filter chain, one `FilterConfig` per filter;
//! - `limits`: the limiter's store and policies;
//! - `resilience`: pools, breakers, health checks, bulkheads, timeouts, retries, fallbacks;
//! - `endpoints`: a route's endpoint allow-list and its pattern match;
//! - `forwarding`: header patterns, never-forwarded headers, trusted proxy networks;
//! - `flags`: feature flags and their evaluation (shared with the control plane);
//! - `events`: where usage events are published;
//! - `cache`: the response cache's stores and each route's cache policy.

pub mod cache;
pub mod endpoints;
pub mod events;
pub mod filters;
pub mod flags;
pub mod forwarding;
pub mod limits;
pub mod resilience;

pub use crate::common::{
    AlgorithmKind, ConcurrencyScope, Dialect, Dimension, EndpointMethod, ModelSource,
    OnStoreErrorSpec, Priority, QuotaWindow, Unit, UpstreamAuth,
};
pub use cache::{Cache, CacheRedis, CacheScope, CacheStoreKind, CacheTemperature, RouteCache};
pub use filters::*;
pub use flags::{Flag, Flags, KnownFlag, STREAM_USAGE_INJECTION};
pub use forwarding::{Cidr, HeaderPattern, NEVER_FORWARDED};
pub use limits::*;
pub use resilience::{
    Breaker, Bulkhead, Deployment, Fallbacks, HealthCheck, Retry, Timeouts, MAX_MIN_TENANTS,
};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub providers: BTreeMap<String, Provider>,
    pub routes: Vec<Route>,
    pub tiers: BTreeMap<String, Tier>,
    pub keys: Vec<ApiKey>,
    pub limits: limits::Limits,
    /// Feature flags, evaluable (`flags.resolve(&KNOWN)` once per version, `is_on` per request).
    pub flags: flags::Flags,
    /// Where usage events are published (read at start).
    pub events: events::Events,
    /// Where the response cache keeps answers.
    pub cache: cache::Cache,
    /// Files this config was read from, overlay first.
    pub files: Vec<PathBuf>,
    /// Directory of the top-level file; relative paths in filters resolve against it.
    pub base_dir: PathBuf,
    /// Hex SHA-256 of the merged configuration.
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The admin listener's bearer token (none: mutating admin endpoints are refused).
    pub admin_token: Option<AdminToken>,
    pub threads: usize,
    pub max_body_bytes: u64,
    pub grace_period_seconds: u64,
    /// Peers whose `X-Forwarded-For` / `Forwarded` chain is kept and appended to.
    pub trusted_proxies: Vec<forwarding::Cidr>,
    /// The whole request head must arrive within this (408 and close otherwise).
    pub header_timeout: Duration,
    /// A kept-alive connection idle this long is closed.
    pub keepalive_timeout: Duration,
    /// Largest request head in bytes (431 and close beyond).
    pub max_header_bytes: usize,
    /// Proxy listener connections held at once (503 and close beyond).
    pub max_connections: usize,
    /// Admin listener connections held at once.
    pub admin_max_connections: usize,
    /// TLS on the proxy listener.
    pub tls: Option<ListenerTls>,
    /// TLS on the admin listener.
    pub admin_tls: Option<ListenerTls>,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// A listener's TLS files (absolute, or relative to the working directory when the document came
/// without a directory) and its oldest accepted version. The files are read by the data plane when
/// it builds a config version, not here: a pushed document is validated where the files do not live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub min_version: TlsVersion,
}

/// How the gateway connects to an `https` provider (files read by the data plane, as above).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTls {
    /// Trusted instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key, always both.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl Server {
    /// Why this server must not run: an admin listener reachable beyond loopback with no token.
    /// Checked on load (with the file's address) and again once `--admin-listen` has been applied.
    pub fn admin_exposure_error(&self) -> Option<String> {
        admin_exposure_error(self.admin_listen, self.admin_token.is_some())
    }
}

pub(crate) fn admin_exposure_error(admin_listen: SocketAddr, has_token: bool) -> Option<String> {
    (!has_token && !admin_listen.ip().to_canonical().is_loopback()).then(|| {
        format!(
            "the admin listener `{admin_listen}` is reachable beyond loopback but has no token: \
             set `server.admin_token` (e.g. `${{LEAKY_ADMIN_TOKEN}}`) or listen on 127.0.0.1"
        )
    })
}

/// The admin listener's bearer token, kept only as its SHA-256: the admin listener compares digests
/// in constant time (which also hides the token's length), and nothing can print the token.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    sha256: [u8; 32],
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        use sha2::{Digest, Sha256};
        AdminToken {
            sha256: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether `presented` is the token, in time independent of both (fixed-size digests).
    pub fn matches(&self, presented: &str) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.sha256).into()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// A string that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub auth: UpstreamAuth,
    pub credential: Option<Secret>,
    pub models: Vec<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    /// The pool, never empty (one deployment at `base_url` when none is listed).
    pub deployments: Vec<resilience::Deployment>,
    pub breaker: resilience::Breaker,
    pub health_check: Option<resilience::HealthCheck>,
    /// Queue settings of each deployment's bulkhead (its size is the deployment's `max_concurrent`).
    pub bulkhead: Option<resilience::Bulkhead>,
    /// `OpenAI-Organization` sent upstream.
    pub organization: Option<String>,
    /// `OpenAI-Project` sent upstream.
    pub project: Option<String>,
    /// `X-DashScope-WorkSpace` sent upstream.
    pub workspace: Option<String>,
    /// Headers passed through both ways beyond the dialect's defaults.
    pub forward_headers: Vec<forwarding::HeaderPattern>,
    /// TLS settings towards the provider's `https` deployments (default: system roots, no client cert).
    pub upstream_tls: UpstreamTls,
}

impl Provider {
    /// `host:port` as sent in the upstream `Host` header (port omitted when it is the scheme's default).
    pub fn authority(&self) -> String {
        authority(self.tls, &self.host, self.port)
    }
}

/// `host:port` as sent in the upstream `Host` header, the port omitted when it is the scheme's default.
pub fn authority(tls: bool, host: &str, port: u16) -> String {
    let default = if tls { 443 } else { 80 };
    if port == default {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Normalised prefix: starts with `/`, no trailing `/` (except the root route `/`).
    pub prefix: String,
    pub dialect: Dialect,
    pub model_source: ModelSource,
    pub upstream: RouteUpstream,
    /// The filter chain, in order, each filter's settings already validated.
    pub filters: Vec<FilterConfig>,
    pub timeouts: resilience::Timeouts,
    pub retry: resilience::Retry,
    pub fallbacks: resilience::Fallbacks,
    /// Per-tenant concurrency on this route.
    pub tenant_bulkhead: Option<resilience::Bulkhead>,
    /// Headers passed through both ways beyond the dialect's defaults.
    pub forward_headers: Vec<forwarding::HeaderPattern>,
    /// The endpoint allow-list: the dialect's defaults (unless turned off), then the route's own.
    pub endpoints: Vec<endpoints::Endpoint>,
    /// The response cache of this route (`None`: off).
    pub cache: Option<cache::RouteCache>,
}

impl Route {
    /// The provider serving `model` on this route, if any.
    pub fn target_for(&self, model: &str) -> Option<&Target> {
        match &self.upstream {
            RouteUpstream::Fixed(t) => Some(t),
            RouteUpstream::ByModel(list) => list
                .iter()
                .find(|mt| mt.models.iter().any(|p| p.matches(model)))
                .map(|mt| &mt.target),
        }
    }
}

#[derive(Debug, Clone)]
pub enum RouteUpstream {
    Fixed(Target),
    ByModel(Vec<ModelTarget>),
}

#[derive(Debug, Clone)]
pub struct Target {
    pub provider: String,
    /// Replaces the route prefix upstream; no trailing `/`.
    pub path_prefix: String,
}

#[derive(Debug, Clone)]
pub struct ModelTarget {
    pub models: Vec<ModelPattern>,
    pub target: Target,
}

/// An exact model name, a `prefix*`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPattern {
    Exact(String),
    Prefix(String),
}

impl ModelPattern {
    pub fn parse(s: &str) -> Self {
        match s.strip_suffix('*') {
            Some(p) => ModelPattern::Prefix(p.to_string()),
            None => ModelPattern::Exact(s.to_string()),
        }
    }

    pub fn matches(&self, model: &str) -> bool {
        match self {
            ModelPattern::Exact(m) => m == model,
            ModelPattern::Prefix(p) => model.starts_with(p.as_str()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tier {
    pub name: String,
    pub priority: Priority,
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub sha256: [u8; 32],
    pub user: String,
    pub org: Option<String>,
    pub tier: String,
    pub roles: Vec<String>,
    /// Empty allows every model.
    pub models: Vec<ModelPattern>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
}
