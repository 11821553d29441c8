//! The control-plane process: roles, the router, start-up (pool, migrations) and serving.
//!
//! **Versioning.** Every admin route lives under `/v1`, assembled in [`v1`]. A breaking change will get
//! a `v2()` router nested at `/v2` beside it, sharing the domain functions; `/v1` keeps working. When a
//! `/v1` route is deprecated, it is listed in [`crate::http::versioning::DEPRECATED`] and the layer on
//! the router adds `Deprecation` (RFC 9745) and `Sunset` (RFC 8594) headers to its responses — one
//! table, no handler changes.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::json;

use crate::http::{versioning, AdminToken, ApiState, Problem, ProblemKind, MAX_BODY_BYTES};
use crate::{
    audit, billing, config, db, docs, eureka, flags, identity, ledger, metrics, notify, openapi,
    outbox, registry, tenancy,
};

/// One job a control-plane process can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The admin REST API under `/v1`.
    AdminApi,
    /// The service registry: `/v1/registry/*`, the Eureka API under `/eureka`, and the expiry sweep.
    Registry,
    /// The config server: publishes versions and serves `/v1/config/*` (the watch stream proxies hold).
    ConfigServer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::AdminApi, Role::Registry, Role::ConfigServer];

    pub fn name(self) -> &'static str {
        match self {
            Role::AdminApi => "admin-api",
            Role::Registry => "registry",
            Role::ConfigServer => "config-server",
        }
    }
}

/// The roles one process runs (`--roles all` or a comma list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(Vec<Role>);

impl Roles {
    pub fn all() -> Self {
        Self(Role::ALL.to_vec())
    }

    pub fn contains(&self, role: Role) -> bool {
        self.0.contains(&role)
    }
}

impl FromStr for Roles {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut roles = Vec::new();
        for part in s.split(',').map(str::trim) {
            if part == "all" {
                return Ok(Self::all());
            }
            let role = Role::ALL
                .into_iter()
                .find(|r| r.name() == part)
                .ok_or_else(|| {
                    let known: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
                    format!("unknown role `{part}` (known: all, {})", known.join(", "))
                })?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        Ok(Self(roles))
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|r| r.name()).collect();
        f.write_str(&names.join(","))
    }
}

/// Everything `leaky-tokens control-plane` passes in.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub roles: Roles,
    pub admin_token: String,
    /// The YAML base the config server publishes as version 1 when the database has no version yet
    /// (its `extends` chain merged); later bases come through `PUT /v1/config/base`.
    pub config_base: Option<std::path::PathBuf>,
    /// The outbox relay's settings; `None` (no `--kafka-brokers`): events accumulate in the outbox and
    /// nothing connects to Kafka.
    pub outbox: Option<outbox::RelayConfig>,
    /// The data plane's Redis (`--redis-url`): the purchase saga's balance mirror and the balance
    /// reconciler write it. `None`: the mirror steps are recorded as skipped and no reconciler runs.
    pub redis_url: Option<String>,
    /// Billing: prices, the webhook secret, the payment provider, the saga policy.
    pub billing: billing::BillingConfig,
    /// Email settings of notifications (`--smtp-url`, `--smtp-from`).
    pub notify: notify::Settings,
}

/// Why the process could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("listen on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("serve: {0}")]
    Serve(#[source] std::io::Error),
    #[error("identity: {0}")]
    Identity(String),
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The admin API under `/v1`: the routes of every context whose role `roles` runs (the config
/// server's routes need its hub: see [`router_with`]).
pub fn v1(roles: &Roles) -> Router<ApiState> {
    v1_with(roles, std::sync::Arc::new(billing::Settings::from_env()))
}

/// [`v1`] with billing's settings given (the process's flags) instead of read from the environment.
pub fn v1_with(roles: &Roles, settings: std::sync::Arc<billing::Settings>) -> Router<ApiState> {
    let mut v1 = Router::new();
    if roles.contains(Role::AdminApi) {
        v1 = v1
            .merge(tenancy::routes())
            .merge(audit::routes())
            .merge(flags::routes())
            .merge(ledger::routes())
            .merge(notify::routes())
            .merge(billing::routes(settings))
            .merge(crate::usage::routes(
                crate::usage::AnalyticsClient::from_env(),
            ))
            .merge(crate::statements::routes(
                crate::usage::AnalyticsClient::from_env(),
            ));
    }
    if roles.contains(Role::Registry) {
        v1 = v1.merge(registry::routes());
    }
    v1.layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// The whole HTTP surface for `roles`, with no YAML base to import (see [`router_with`]).
pub fn router(state: ApiState, roles: &Roles) -> Router {
    router_with(state, roles, None)
}

/// The whole HTTP surface for `roles`: `/healthz`, `/readyz`, `/metrics`, `/v1` with each role's routes, the
/// admin API's OpenAPI document at `/openapi.json` and Swagger UI at `/docs`, the registry's Eureka
/// API under `/eureka`, and the config server's `/v1/config/*` with its hub — started here once
/// migrations are done, importing `initial_base` if the database has no config version yet.
pub fn router_with(state: ApiState, roles: &Roles, initial_base: Option<String>) -> Router {
    let settings = std::sync::Arc::new(billing::Settings::from_env());
    router_for(state, roles, initial_base, settings)
}

/// [`router_with`] with billing's settings given.
pub fn router_for(
    state: ApiState,
    roles: &Roles,
    initial_base: Option<String>,
    settings: std::sync::Arc<billing::Settings>,
) -> Router {
    let gate = || middleware::from_fn_with_state(state.clone(), require_migrated);
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(serve_metrics));
    let mut api = v1_with(roles, settings);
    if roles.contains(Role::ConfigServer) {
        let hub = config::Hub::new(state.pool.clone(), initial_base);
        tokio::spawn(follow_when_migrated(state.clone(), hub.clone()));
        api = api.merge(config::routes(hub));
    }
    if [Role::AdminApi, Role::Registry, Role::ConfigServer]
        .iter()
        .any(|r| roles.contains(*r))
    {
        let rbac = middleware::from_fn_with_state(state.clone(), identity::rbac::enforce);
        app = app.nest("/v1", api.route_layer(rbac).layer(gate()));
    }
    if roles.contains(Role::AdminApi) {
        app = app
            .route("/openapi.json", get(openapi::serve_spec))
            .merge(docs::routes());
    }
    if roles.contains(Role::Registry) {
        let eureka = eureka::routes().layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
        app = app.nest("/eureka", eureka.layer(gate()));
    }
    app.fallback(not_found)
        .layer(middleware::from_fn(versioning::deprecation_headers))
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "up" }))
}

/// `GET /metrics`: Prometheus text format (see [`metrics`]; served here so `metrics` stays free of
/// the HTTP layer, which holds its `Stats`).
async fn serve_metrics(State(state): State<ApiState>) -> Response {
    let pool = state.is_migrated().then_some(&state.pool);
    match metrics::exposition(&state.stats, pool).await {
        Ok(text) => (
            [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: exposition failed");
            Problem::new(ProblemKind::Internal, "the metrics could not be rendered").into_response()
        }
    }
}

/// Ready once migrations are done and Postgres answers now.
async fn readyz(State(state): State<ApiState>) -> Response {
    if !state.is_migrated() {
        return Problem::new(ProblemKind::Unavailable, "migrations have not run yet")
            .into_response();
    }
    if !db::ping(&state.pool).await {
        return Problem::new(ProblemKind::Unavailable, "the database is unreachable")
            .into_response();
    }
    Json(json!({ "status": "ready" })).into_response()
}

async fn require_migrated(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    if state.is_migrated() {
        next.run(req).await
    } else {
        Problem::new(
            ProblemKind::Unavailable,
            "the database schema is not ready yet",
        )
        .into_response()
    }
}

async fn not_found() -> Problem {
    Problem::new(ProblemKind::NotFound, "no such route")
}

/// Runs the config hub once the schema is there.
async fn follow_when_migrated(state: ApiState, hub: std::sync::Arc<config::Hub>) {
    state.migrated().await;
    hub.run().await;
}

/// Runs the outbox relay once the schema is there.
async fn relay_when_migrated(state: ApiState, config: outbox::RelayConfig) {
    state.migrated().await;
    tracing::info!(brokers = %config.brokers, "outbox relay starting");
    match outbox::Relay::new(state.pool.clone(), config) {
        Ok(relay) => relay.with_stats(state.stats.outbox.clone()).run().await,
        Err(e) => tracing::error!(error = %e, "outbox relay: no Kafka producer, events accumulate"),
    }
}

/// Runs the ledger's usage consumer (debits usage events) once the schema is there.
async fn usage_consumer_when_migrated(state: ApiState, brokers: String) {
    state.migrated().await;
    tracing::info!(%brokers, "ledger usage consumer starting");
    let usage = leaky_wire::event::USAGE_TOPIC;
    match ledger::usage::consumer(state.pool.clone(), &brokers, usage, ledger::usage::GROUP) {
        Ok(c) => {
            state.stats.add_consumer(ledger::usage::GROUP, c.stats());
            c.run().await;
        }
        Err(e) => {
            tracing::error!(error = %e, "ledger usage consumer: no Kafka consumer, usage not debited")
        }
    }
}

/// Runs the ledger's credit expiry on the state's clock once the schema is there (every admin-api
/// process does: the job is safe on several replicas).
async fn expiry_when_migrated(state: ApiState) {
    state.migrated().await;
    ledger::expire_every(
        state.pool.clone(),
        state.clock.clone(),
        ledger::EXPIRE_EVERY,
    )
    .await;
}

/// Runs migrations until they succeed (Postgres may come up after us), then marks the state ready.
pub async fn migrate_until_done(state: ApiState) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match db::migrate(&state.pool).await {
            Ok(()) => {
                tracing::info!("migrations done");
                state.set_migrated();
                return;
            }
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "migrations failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// How long shutdown waits for the saga worker's round to end.
const DRAIN_WAIT: Duration = Duration::from_secs(15);

/// Spawns the background work of `config`'s roles into `tasks` (aborted at shutdown); returns what
/// shutdown waits for instead (the saga worker's drain; at once when the process runs none).
fn spawn_roles(
    state: &ApiState,
    config: &Config,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> tokio::task::JoinHandle<()> {
    if let Some(relay) = config.outbox.clone() {
        let brokers = relay.brokers.clone();
        tasks.push(tokio::spawn(relay_when_migrated(state.clone(), relay)));
        let consumer = usage_consumer_when_migrated(state.clone(), brokers.clone());
        tasks.push(tokio::spawn(consumer));
        tasks.push(tokio::spawn(notify::run_consumers(state.clone(), brokers)));
    }
    if config.roles.contains(Role::Registry) {
        let sweep = registry::sweep_every(state.clone(), registry::tasks::SWEEP_EVERY);
        tasks.push(tokio::spawn(sweep));
    }
    if !config.roles.contains(Role::AdminApi) {
        return tokio::spawn(async {});
    }
    tasks.push(tokio::spawn(expiry_when_migrated(state.clone())));
    tasks.extend(notify::spawn_jobs(state.clone(), config.notify.clone()));
    let (saga, reconcile) = billing::spawn(state, &config.billing, config.redis_url.as_deref());
    tasks.extend(reconcile);
    saga
}

/// Starts the control plane and serves plain HTTP until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    run_with_tls(config, None, shutdown).await
}

/// Starts the control plane and serves until `shutdown` resolves: over TLS with `tls` (and mutual TLS
/// when it names a client CA), else plain HTTP. The TLS files are read before anything starts.
pub async fn run_with_tls(
    config: Config,
    tls: Option<crate::tls::TlsFiles>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let tls = tls.as_ref().map(crate::tls::server_config).transpose()?;
    let pool = db::pool(&config.database_url, 16)?;
    let state = ApiState::new(pool, AdminToken::new(config.admin_token.clone()));
    tokio::spawn(migrate_until_done(state.clone()));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| AppError::Bind(config.listen, e))?;
    let listen = listener.local_addr().unwrap_or(config.listen);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%listen, scheme, roles = %config.roles, "control plane listening");
    // Every control-plane process registers itself; only `registry` processes sweep.
    let me = registry::SelfRegistration::new(listen, state.clock.now());
    let id = me.id.clone();
    let every = registry::tasks::SELF_HEARTBEAT_EVERY;
    let mut tasks = vec![tokio::spawn(registry::register_self(
        state.clone(),
        me,
        every,
    ))];
    let drained = spawn_roles(&state, &config, &mut tasks);
    let base = initial_base(config.config_base.as_deref());
    let settings = std::sync::Arc::new(config.billing.settings.clone());
    let mut router = router_for(state.clone(), &config.roles, base, settings);
    if let Some(id) = start_identity(&state, &config, &format!("{scheme}://{listen}"))? {
        tasks.push(tokio::spawn(identity::run_jobs(state.clone(), id.clone())));
        router = identity::attach(router, state.clone(), id);
    }
    let router = leaky_telemetry::http::traced(router);
    // Watch streams never end by themselves: end them when the drain starts.
    let drain = {
        let state = state.clone();
        async move {
            shutdown.await;
            state.drain();
        }
    };
    let served = serve_tls_or_plain(listener, tls, router, drain).await;
    // The saga worker stops after its current round once the drain started; a step in flight
    // finishes (or its lease expires and another worker resumes it).
    if tokio::time::timeout(DRAIN_WAIT, drained).await.is_err() {
        tracing::warn!("saga worker still busy at shutdown; its leases expire for the next worker");
    }
    for task in tasks {
        // Wait for each to stop, so no heartbeat re-registers after the cancel below.
        task.abort();
        let _ = task.await;
    }
    registry::tasks::deregister_self(&state.pool, &id).await;
    served.map_err(AppError::Serve)
}

/// Serves `router` on `listener`, over TLS with `tls`, until `drain` resolves.
async fn serve_tls_or_plain(
    listener: tokio::net::TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    router: Router,
    drain: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        None => serve_on(listener, router, drain).await,
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, tls)?;
            // `tap_io` only to get axum's `ConnectInfo<SocketAddr>` for any listener type.
            serve_on(listener.tap_io(|_| {}), router, drain).await
        }
    }
}

/// Serves `router` on `listener` until `drain` resolves.
async fn serve_on<L>(
    listener: L,
    router: Router,
    drain: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Addr: Clone + Sync + 'static,
    for<'a> SocketAddr: axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    // The peer address feeds identity's per-IP limit on failed client authentications.
    let router = router.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, router)
        .with_graceful_shutdown(drain)
        .await
}

/// The identity context of an admin-api process: `None` (with a warning) when no master key is
/// configured; a malformed key or setting refuses the start. `base`: this listener's URL, the
/// default issuer.
fn start_identity(
    state: &ApiState,
    config: &Config,
    base: &str,
) -> Result<Option<std::sync::Arc<identity::Identity>>, AppError> {
    if !config.roles.contains(Role::AdminApi) {
        return Ok(None);
    }
    let settings = match identity::Settings::from_env(base) {
        Ok(s) => s,
        Err(identity::SecretError::NoMasterKey) => {
            tracing::warn!("identity disabled: no LEAKY_MASTER_KEY / LEAKY_MASTER_KEY_FILE (LEAKY_IDENTITY_DEV=1 for the dev key)");
            return Ok(None);
        }
        Err(e) => return Err(AppError::Identity(e.to_string())),
    };
    let redis = config.redis_url.as_deref();
    identity::Identity::new(settings, state.pool.clone(), state.clock.clone(), redis)
        .map(Some)
        .map_err(|e| AppError::Identity(e.to_string()))
}

/// The base file's merged tree as text (JSON, which is YAML), or none if it cannot be read: the config
/// server then waits for `PUT /v1/config/base`.
fn initial_base(path: Option<&std::path::Path>) -> Option<String> {
    let path = path?;
    match leaky_config::load_merged(path) {
        Ok(tree) => serde_json::to_string_pretty(&tree).ok(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "config base not imported");
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_all_lists_and_refuse_unknown_names() {
        assert_eq!("all".parse::<Roles>().unwrap(), Roles::all());
        assert_eq!(
            "admin-api, admin-api".parse::<Roles>().unwrap(),
            Roles(vec![Role::AdminApi])
        );
        assert_eq!(
            "registry".parse::<Roles>().unwrap(),
            Roles(vec![Role::Registry])
        );
        assert!(Roles::all().contains(Role::Registry));
        let err = "admin-api,eureka".parse::<Roles>().unwrap_err();
        assert!(err.contains("unknown role `eureka`"), "{err}");
        assert!("".parse::<Roles>().is_err());
    }
}
