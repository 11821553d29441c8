//! One immutable view of a config version: the route table, compiled filter chains, upstream peers and
//! pre-resolved metric handles. Built off the hot path by `Snapshot::build`; requests load it once from
//! the `ArcSwap` in `reload.rs` and never lock.

use crate::background::Background;
use crate::balancer::{self, Deployment, ProviderPool, TenantBulkheads};
use crate::endpoints::EndpointMatcher;
use crate::headers::{HeaderPolicy, Returned};
use crate::limiter::LimiterBackend;
use crate::metrics::RequestMetrics;
use crate::pool::Pools;
use crate::response_cache::{RouteCache, Stores};
use crate::usage_log::UsageSink;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use leaky_config::resilience::{Bulkhead as BulkheadConfig, Retry};
use leaky_config::{
    Config, Dialect, Flag, ModelPattern, ModelSource, Provider, Route, RouteUpstream, Target,
    UpstreamAuth, STREAM_USAGE_INJECTION,
};
use leaky_filters::{build_chain, BuildContext, Chain, JwksCache, KeyIndex, SharedKeyIndex};
use leaky_limit::settle::system_now;
use leaky_limit::{Decision, DecisionSink, Limiter};
use leaky_resilience::RetryBudget;
use pingora::upstreams::peer::HttpPeer;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Where a request goes once its route (and model) is known: a provider's pool of deployments.
pub struct Upstream {
    pub provider: Arc<str>,
    /// Replaces the route prefix upstream.
    pub path_prefix: String,
    pub pool: Arc<ProviderPool>,
    pub metrics: RequestMetrics,
    /// Connect timeout when the route overrides the provider's.
    pub connect: Option<Duration>,
    /// From request sent to response header.
    pub first_byte: Duration,
    /// Longest gap between two response body chunks.
    pub idle: Duration,
    /// Which request and response headers cross the gateway on this route towards this provider.
    pub headers: HeaderPolicy,
}

impl Upstream {
    /// The response headers `route` gives back from this provider.
    pub fn returned(&self, route: &CompiledRoute) -> Returned<'_> {
        Returned {
            policy: &self.headers,
            own_limits: route.own_limit_headers,
        }
    }
}

/// Everything kept across config versions: idle connections, deployment and tenant state, the live
/// key index the `api-key` filters read, the JWKS caches the `jwt` filters share, and the background
/// service their tasks run on.
pub struct Shared {
    pub pools: Pools,
    pub deployments: crate::registry::Registry,
    pub tenants: balancer::TenantRegistry,
    /// Where `ConfigState` publishes each version's `Snapshot::keys` as the version goes live.
    pub keys: Arc<SharedKeyIndex>,
    pub jwks: Arc<JwksCache>,
    pub background: Background,
    pub resolve: Resolve,
    /// The response cache's stores and single-flight map.
    pub caches: Arc<Stores>,
}

impl Shared {
    pub fn new(background: Background, resolve: Resolve) -> Self {
        Shared {
            pools: Pools::default(),
            deployments: crate::registry::Registry::new(background.clone()),
            tenants: balancer::TenantRegistry::default(),
            keys: Arc::default(),
            jwks: Arc::default(),
            background,
            resolve,
            caches: Arc::default(),
        }
    }
}

/// How deployment hosts become addresses while a snapshot is built (never on the request path:
/// `HttpPeer` must not resolve there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// The system resolver: start-up, reloads and `check-config`.
    System,
    /// No lookup, every host stands for the unspecified address: `check-config --offline`, for
    /// machines without DNS (CI); such a snapshot is never served.
    Skip,
}

impl Resolve {
    /// The first address of `host:port`; `Err(None)` when the name has no address.
    fn address(self, host: &str, port: u16) -> Result<SocketAddr, Option<std::io::Error>> {
        match self {
            Resolve::System => (host, port).to_socket_addrs()?.next().ok_or(None),
            Resolve::Skip => Ok(SocketAddr::from(([0, 0, 0, 0], port))),
        }
    }
}

pub enum RouteTarget {
    Fixed(Arc<Upstream>),
    ByModel(Vec<(Vec<ModelPattern>, Arc<Upstream>)>),
}

pub struct CompiledRoute {
    pub name: Arc<str>,
    pub prefix: String,
    /// Segments in `prefix`: a `..` may not climb below this depth.
    pub prefix_depth: usize,
    /// What callers may reach upstream (method + path after the prefix).
    pub endpoints: EndpointMatcher,
    pub dialect: Dialect,
    pub model_source: ModelSource,
    pub target: RouteTarget,
    pub chain: Chain,
    /// Estimate the token cost before the call and track usage after it: some filter wants the cost
    /// ([`leaky_filters::Filter::wants_cost`]) or a reachable deployment has a `tpm` budget.
    pub meters: bool,
    /// The chain's admission tells the caller where it stands (`x-ratelimit-*`, `ratelimit*`): the
    /// provider's own limit headers, which describe the gateway's upstream account, are dropped.
    pub own_limit_headers: bool,
    /// The gateway's own `GET {prefix}/models` answer on model-routed routes (the union of providers).
    pub models_list: Option<Bytes>,
    /// Metrics of requests refused before an upstream was chosen.
    pub metrics: RequestMetrics,
    pub retry: Retry,
    /// Retries of this route so far, against `retry.budget_ratio` of its requests.
    pub budget: RetryBudget,
    /// The whole upstream exchange, retries and fallbacks included.
    pub total_timeout: Duration,
    /// Per-model fallbacks, most specific pattern first.
    pub fallbacks: Vec<(ModelPattern, Vec<String>)>,
    /// Per-tenant concurrency limits.
    pub tenants: Option<Arc<TenantBulkheads>>,
    /// Flag `stream_usage_injection`, resolved for this version: whether metering may add
    /// `include_usage` to an org's stream (`metering::prepare`).
    pub usage_injection: Arc<Flag>,
    /// The route's response cache (`None`: off), compiled for this version.
    pub cache: Option<RouteCache>,
}

impl CompiledRoute {
    /// Matches `path` on a segment boundary.
    fn matches(&self, path: &str) -> bool {
        self.prefix == "/"
            || (path.starts_with(self.prefix.as_str())
                && matches!(path.as_bytes().get(self.prefix.len()), None | Some(b'/')))
    }

    /// The upstream for `model`, or `None` when this route does not serve that model.
    pub fn pick(&self, model: Option<&str>) -> Option<&Arc<Upstream>> {
        match &self.target {
            RouteTarget::Fixed(u) => Some(u),
            RouteTarget::ByModel(list) => {
                let model = model?;
                list.iter()
                    .find(|(pats, _)| pats.iter().any(|p| p.matches(model)))
                    .map(|(_, u)| u)
            }
        }
    }

    pub fn is_model_routed(&self) -> bool {
        matches!(self.target, RouteTarget::ByModel(_))
    }

    /// The models tried after `model`'s pool is exhausted, in order.
    pub fn fallbacks_for(&self, model: &str) -> &[String] {
        self.fallbacks
            .iter()
            .find(|(p, _)| p.matches(model))
            .map_or(&[], |(_, alts)| alts.as_slice())
    }
}

pub struct Snapshot {
    pub version: u64,
    pub limiter: Arc<Limiter>,
    /// The limiter's store, shared with the versions before and after this one.
    pub backend: Arc<LimiterBackend>,
    pub config: Arc<Config>,
    /// This version's API keys; the filters read them from `Shared::keys` once published.
    pub keys: Arc<KeyIndex>,
    /// Longest prefix first.
    routes: Vec<CompiledRoute>,
    pub max_body_bytes: u64,
    /// The `not_found` metric bucket for requests that match no route.
    pub unmatched: RequestMetrics,
    /// Where this version's requests queue their usage records (the background service's queue,
    /// the same for every version).
    pub usage: UsageSink,
    /// The response cache's stores (the same for every version), for their metrics.
    pub caches: Arc<Stores>,
    /// The listeners' certificates as this version's files hold them (read once per version).
    pub tls: crate::tls::ListenerCerts,
}

/// What validation cannot see and the snapshot build finds: the reload fails (the previous version
/// keeps serving) or the start-up stops, with this message.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Limits(#[from] leaky_limit::PolicyError),
    #[error("route `{route}`: {source}")]
    Chain {
        route: String,
        source: leaky_filters::BuildError,
    },
    #[error("route `{route}`: unknown provider `{provider}`")]
    UnknownProvider { route: String, provider: String },
    #[error("deployment `{deployment}`: cannot resolve `{host}`: {source}")]
    Resolve {
        deployment: String,
        host: String,
        source: std::io::Error,
    },
    #[error("route `{route}`: cache: {source}")]
    Cache {
        route: String,
        source: crate::response_cache::StoreError,
    },
    #[error("deployment `{deployment}`: `{host}` resolved to no address")]
    NoAddress { deployment: String, host: String },
    /// A certificate, key or CA file named by `server.tls`, `server.admin_tls` or a provider's `tls`.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// `what`: `host`, `credential` or the account header.
    #[error("deployment `{deployment}`: {what}: {source}")]
    Header {
        deployment: String,
        what: &'static str,
        source: http::header::InvalidHeaderValue,
    },
}

impl Snapshot {
    /// Compiles `config` as version `version`. Fails on what validation cannot see: unresolvable
    /// upstream hosts, unreadable JWKS files.
    pub fn build(
        config: Arc<Config>,
        version: u64,
        shared: &Shared,
        backend: &Arc<LimiterBackend>,
    ) -> Result<Snapshot, BuildError> {
        let keys = Arc::new(KeyIndex::new(&config.keys));
        let mut limiter = Limiter::new(
            &config.limits,
            &config.tiers,
            backend.store.clone(),
            Some(backend.settler.clone()),
            Arc::new(system_now),
        )?;
        if let Some(m) = &backend.memory {
            limiter = limiter.with_inline_memory(m.clone());
        }
        let limiter = Arc::new(limiter);
        let decisions: Arc<[[Option<IntCounter>; 5]]> = limiter
            .policies()
            .map(|p| Decision::ALL.map(|d| crate::metrics::decision_counter(&p.name, d.as_str())))
            .collect();
        let cx = BuildContext {
            keys: shared.keys.clone(),
            jwks: shared.jwks.clone(),
            base_dir: config.base_dir.clone(),
            tiers: Arc::new(config.tiers.keys().cloned().collect()),
            limiter: Some(limiter.clone()),
            decisions: Some(decision_sink(decisions)),
            flags: config.flags.clone(),
        };
        let tls = crate::tls::ListenerCerts::load(&config.server)?;
        let mut pools = HashMap::new();
        for (name, p) in &config.providers {
            pools.insert(name.as_str(), Arc::new(provider_pool(p, shared)?));
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            routes.push(compile_route(&config, r, &pools, &cx, shared)?);
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Snapshot {
            limiter,
            backend: backend.clone(),
            version,
            max_body_bytes: config.server.max_body_bytes,
            keys,
            config,
            routes,
            unmatched: RequestMetrics::new("none", "none"),
            usage: shared.background.usage().clone(),
            caches: shared.caches.clone(),
            tls,
        })
    }

    /// The route for `path`: the longest prefix matching on a segment boundary. Routes are few (one per
    /// provider surface), so this is a short scan over a list sorted once per config version.
    pub fn route(&self, path: &str) -> Option<(usize, &CompiledRoute)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(path))
    }

    pub fn routes(&self) -> &[CompiledRoute] {
        &self.routes
    }
}

/// One route: its target upstreams, chain and resilience settings, and whether it meters tokens.
fn compile_route(
    config: &Config,
    r: &Route,
    pools: &HashMap<&str, Arc<ProviderPool>>,
    cx: &BuildContext,
    shared: &Shared,
) -> Result<CompiledRoute, BuildError> {
    let up = |t: &Target| upstream(config, r, t, pools).map(Arc::new);
    let (target, models_list) = match &r.upstream {
        RouteUpstream::Fixed(t) => (RouteTarget::Fixed(up(t)?), None),
        RouteUpstream::ByModel(list) => {
            let mut out = Vec::with_capacity(list.len());
            for mt in list {
                out.push((mt.models.clone(), up(&mt.target)?));
            }
            let providers: Vec<&Provider> = list
                .iter()
                .filter_map(|mt| config.providers.get(&mt.target.provider))
                .collect();
            (RouteTarget::ByModel(out), Some(models_list(&providers)))
        }
    };
    let chain = build_chain(&r.filters, cx).map_err(|source| BuildError::Chain {
        route: r.name.clone(),
        source,
    })?;
    let cache = route_cache(config, r, shared)?;
    Ok(CompiledRoute {
        meters: chain.wants_cost() || reaches_a_tpm_budget(config, r),
        own_limit_headers: chain.wants_cost(),
        name: r.name.as_str().into(),
        prefix: r.prefix.clone(),
        prefix_depth: crate::path::depth(&r.prefix),
        endpoints: EndpointMatcher::new(&r.endpoints),
        dialect: r.dialect,
        model_source: r.model_source,
        target,
        chain,
        models_list,
        metrics: RequestMetrics::new(&r.name, "none"),
        budget: RetryBudget::new(
            r.retry.budget_ratio,
            r.retry.budget_min_per_second,
            r.retry.budget_window_ms,
        ),
        retry: r.retry.clone(),
        total_timeout: r.timeouts.total,
        fallbacks: r.fallbacks.clone(),
        tenants: r
            .tenant_bulkhead
            .as_ref()
            .map(|b: &BulkheadConfig| shared.tenants.get(&r.name, b)),
        usage_injection: config.flags.resolve(&STREAM_USAGE_INJECTION),
        cache,
    })
}

/// The route's response cache, its store from the process-wide registry; the models its
/// providers list bound the metrics' model label.
fn route_cache(
    config: &Config,
    r: &Route,
    shared: &Shared,
) -> Result<Option<RouteCache>, BuildError> {
    let Some(c) = &r.cache else {
        return Ok(None);
    };
    let targets: Vec<&Target> = match &r.upstream {
        RouteUpstream::Fixed(t) => vec![t],
        RouteUpstream::ByModel(list) => list.iter().map(|mt| &mt.target).collect(),
    };
    let models: Vec<&str> = targets
        .iter()
        .filter_map(|t| config.providers.get(&t.provider))
        .flat_map(|p| p.models.iter().map(String::as_str))
        .collect();
    // A new Redis store starts connecting now, on the background runtime (it outlives this
    // version and is not a request's), so the first answers can already be stored.
    let _runtime = shared.caches.connects().then(|| shared.background.enter());
    RouteCache::build(&r.name, c, &config.cache, &shared.caches, &models)
        .map(Some)
        .map_err(|source| BuildError::Cache {
            route: r.name.clone(),
            source,
        })
}

/// Some deployment the route can reach (any target's provider; fallbacks pick among the same
/// targets) has its own tokens-per-minute budget, which must be charged the request's real cost.
fn reaches_a_tpm_budget(config: &Config, r: &Route) -> bool {
    let has_tpm = |t: &Target| {
        config
            .providers
            .get(&t.provider)
            .is_some_and(|p| p.deployments.iter().any(|d| d.tpm.is_some()))
    };
    match &r.upstream {
        RouteUpstream::Fixed(t) => has_tpm(t),
        RouteUpstream::ByModel(list) => list.iter().any(|mt| has_tpm(&mt.target)),
    }
}

/// Counts `rate-limit` decisions in `leaky_ratelimit_decisions_total`, per policy (by index) and
/// decision, with handles resolved once per config version.
fn decision_sink(counters: Arc<[[Option<IntCounter>; 5]]>) -> DecisionSink {
    Arc::new(move |policy, decision| {
        let slot = Decision::ALL.iter().position(|d| *d == decision);
        if let Some(c) = slot.and_then(|i| counters.get(policy)?[i].as_ref()) {
            c.inc();
        }
    })
}

fn upstream(
    config: &Config,
    route: &Route,
    t: &Target,
    pools: &HashMap<&str, Arc<ProviderPool>>,
) -> Result<Upstream, BuildError> {
    let unknown = || BuildError::UnknownProvider {
        route: route.name.clone(),
        provider: t.provider.clone(),
    };
    let p = config.providers.get(&t.provider).ok_or_else(unknown)?;
    let pool = pools.get(t.provider.as_str()).ok_or_else(unknown)?;
    Ok(Upstream {
        provider: p.name.as_str().into(),
        path_prefix: t.path_prefix.clone(),
        pool: pool.clone(),
        metrics: RequestMetrics::new(&route.name, &p.name),
        connect: route.timeouts.connect,
        first_byte: route.timeouts.first_byte.unwrap_or(p.read_timeout),
        idle: route.timeouts.idle.unwrap_or(p.read_timeout),
        headers: HeaderPolicy::new(route.dialect, &route.forward_headers, &p.forward_headers),
    })
}

/// The provider's deployments, each resolved once here (HttpPeer must not resolve on the request path).
fn provider_pool(p: &Provider, shared: &Shared) -> Result<ProviderPool, BuildError> {
    let bulkhead = BulkheadConfig {
        max_concurrent: 0,
        max_queue: 0,
        queue_timeout: Duration::from_millis(1_000),
    };
    let bulkhead = p.bulkhead.clone().unwrap_or(bulkhead);
    let mut out = Vec::with_capacity(p.deployments.len());
    let tls = crate::tls::PeerTls::load(&p.upstream_tls, &format!("providers.{}.tls", p.name))?;
    for d in &p.deployments {
        let label = format!("{}/{}", p.name, d.name);
        let peer = peer(p, d, address(shared, &label, d)?, &tls);
        let header = |what: &'static str| {
            let deployment = label.clone();
            move |source| BuildError::Header {
                deployment,
                what,
                source,
            }
        };
        let host = HeaderValue::from_str(&d.authority()).map_err(header("host"))?;
        let auth = upstream_auth(p, d).map_err(header("credential"))?;
        let account = account_headers(p).map_err(header("account header"))?;
        let idle = shared.pools.get(
            pingora::upstreams::peer::Peer::reuse_hash(&peer),
            p.idle_timeout,
        );
        let probe = p.health_check.as_ref().map(|check| balancer::Probe {
            peer: peer.clone(),
            host: host.clone(),
            auth: auth.clone(),
            check: check.clone(),
        });
        let state = shared.deployments.state(p, d, &bulkhead, probe);
        out.push(Deployment {
            name: d.name.as_str().into(),
            label: label.into(),
            provider: p.name.as_str().into(),
            peer,
            host,
            auth,
            account,
            pool: idle,
            weight: d.weight,
            state,
        });
    }
    Ok(ProviderPool::new(p.name.as_str().into(), out))
}

/// The deployment's address, resolved once here (never on the request path).
fn address(
    shared: &Shared,
    label: &str,
    d: &leaky_config::resilience::Deployment,
) -> Result<SocketAddr, BuildError> {
    shared
        .resolve
        .address(&d.host, d.port)
        .map_err(|e| match e {
            Some(source) => BuildError::Resolve {
                deployment: label.to_string(),
                host: d.host.clone(),
                source,
            },
            None => BuildError::NoAddress {
                deployment: label.to_string(),
                host: d.host.clone(),
            },
        })
}

/// The Pingora peer of deployment `d` of `p` at `addr`. Over TLS the server name sent and verified is
/// the deployment's host, against `tls.ca` when pinned (else the system roots).
fn peer(
    p: &Provider,
    d: &leaky_config::resilience::Deployment,
    addr: SocketAddr,
    tls: &crate::tls::PeerTls,
) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, d.tls, d.host.clone());
    if d.tls {
        peer.options.ca = tls.ca.clone();
        peer.client_cert_key = tls.client_cert.clone();
    }
    peer.options.connection_timeout = Some(p.connect_timeout);
    // First-byte and idle timeouts are the route's, applied around each read by the caller.
    peer.options.read_timeout = None;
    peer.options.write_timeout = Some(p.read_timeout);
    peer.options.idle_timeout = Some(p.idle_timeout);
    peer
}

/// The credential header the gateway sends to deployment `d` of `p`.
fn upstream_auth(
    p: &Provider,
    d: &leaky_config::resilience::Deployment,
) -> Result<Option<(HeaderName, HeaderValue)>, http::header::InvalidHeaderValue> {
    Ok(match (&p.auth, &d.credential) {
        (UpstreamAuth::None, _) | (_, None) => None,
        (UpstreamAuth::Bearer, Some(c)) => Some((http::header::AUTHORIZATION, bearer(c.expose())?)),
        (UpstreamAuth::GoogApiKey, Some(c)) => Some((
            HeaderName::from_static("x-goog-api-key"),
            secret_value(c.expose())?,
        )),
    })
}

/// The provider account the gateway's requests are billed to (`organization`, `project`, `workspace`).
fn account_headers(
    p: &Provider,
) -> Result<Box<[(HeaderName, HeaderValue)]>, http::header::InvalidHeaderValue> {
    let fields = [
        ("openai-organization", &p.organization),
        ("openai-project", &p.project),
        ("x-dashscope-workspace", &p.workspace),
    ];
    let mut out = Vec::new();
    for (name, value) in fields {
        if let Some(v) = value {
            out.push((HeaderName::from_static(name), HeaderValue::from_str(v)?));
        }
    }
    Ok(out.into_boxed_slice())
}

fn bearer(secret: &str) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    secret_value(&format!("Bearer {secret}"))
}

fn secret_value(s: &str) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut v = HeaderValue::from_str(s)?;
    v.set_sensitive(true);
    Ok(v)
}

/// OpenAI's list shape: `{"object":"list","data":[{"id","object":"model","created","owned_by"}]}`.
fn models_list(providers: &[&Provider]) -> Bytes {
    let mut seen = std::collections::BTreeSet::new();
    let data: Vec<serde_json::Value> = providers
        .iter()
        .flat_map(|p| p.models.iter().map(move |m| (m, p)))
        .filter(|(m, _)| seen.insert(m.as_str()))
        .map(|(m, p)| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": p.name}))
        .collect();
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
            .unwrap_or_default(),
    )
}
