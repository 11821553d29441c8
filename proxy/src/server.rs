//! Assembles the Pingora server: the proxy listener, the admin listener and the config source (the
//! files, watched; or a control plane's watch stream with `RunOptions::control_plane`) and the
//! background service (usage flush), all sharing one `ConfigState`. The listeners are sized from the bootstrap settings
//! (`bootstrap.rs`), fixed here for the life of the process. Both sit behind `listener::Listener`
//! (connection limit, head timeout and size, keep-alive idle timeout), each with its own budget, and
//! speak TLS when the first config version has `server.tls` / `server.admin_tls` (each connection then
//! takes the serving version's certificate, so a reload rotates it).

use crate::admin::Admin;
use crate::background::{Background, BackgroundError};
use crate::bootstrap::Bootstrap;
use crate::control_plane::{BootError, ControlPlaneOptions};
use crate::document::{ConfigDocument, SourceError};
use crate::listener::{ConnLimits, Listener, TlsSource};
use crate::reload::{ApplyError, ConfigState};
use crate::service::{Gateway, GatewayApp};
use crate::source::{ConfigSource, SourceService};
use crate::tls::{ListenerCert, ListenerCerts};
use crate::watch::FileSource;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How to start the data plane; `None` fields come from the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The config file; not read when `control_plane` is set.
    pub config: PathBuf,
    /// Fed by a control plane instead of the file: its snapshots, deltas and last-good cache.
    pub control_plane: Option<ControlPlaneOptions>,
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub threads: Option<usize>,
    /// The process's open-file limit (`RLIMIT_NOFILE`, already raised); the proxy's connection limit
    /// is lowered to fit under it.
    pub open_files: Option<u64>,
    /// Take the listening sockets over from the running process on `upgrade_sock` (which is sent
    /// SIGQUIT) instead of binding them.
    pub upgrade: bool,
    /// Where listening sockets are handed over at an upgrade, by the old process to the new one
    /// (`None`: [`default_upgrade_sock`] of the proxy's listen address).
    pub upgrade_sock: Option<PathBuf>,
}

/// One handover socket per proxy port, so two proxies on one host never swap sockets.
pub fn default_upgrade_sock(listen: SocketAddr) -> PathBuf {
    std::env::temp_dir().join(format!("leaky-tokens-{}.upgrade.sock", listen.port()))
}

/// File descriptors kept outside the connection budgets: config files, logs, the watcher, listeners.
const RESERVED_FDS: u64 = 256;

/// The proxy listener's connection limit: the configured one, lowered so that every connection can
/// also hold an upstream connection and the admin listener its own budget, under `open_files`.
pub fn proxy_connection_limit(configured: usize, admin: usize, open_files: Option<u64>) -> usize {
    let Some(open) = open_files else {
        return configured;
    };
    let budget = open.saturating_sub(RESERVED_FDS + admin as u64) / 2;
    configured
        .min(usize::try_from(budget).unwrap_or(usize::MAX))
        .max(1)
}

/// Quiet period after the last file event before a reload.
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(150);

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config files cannot be read into a valid document.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The background runtime cannot start.
    #[error(transparent)]
    Background(#[from] BackgroundError),
    /// The first document cannot be applied (exposed admin listener, unresolvable upstream, ...).
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Neither the control plane nor the last-good cache gave a document.
    #[error(transparent)]
    ControlPlane(#[from] BootError),
    /// `events.kafka` is set but its producer or spool cannot be set up.
    #[error(transparent)]
    Events(#[from] crate::events::EventsError),
}

/// The document's bootstrap with the command line's overrides.
fn bootstrap_for(doc: &ConfigDocument, opts: &RunOptions) -> Bootstrap {
    let mut b = Bootstrap::of(&doc.config.server);
    if let Some(a) = opts.listen {
        b.listen = a;
    }
    if let Some(a) = opts.admin_listen {
        b.admin_listen = a;
    }
    if let Some(t) = opts.threads {
        b.threads = t.max(1);
    }
    b
}

/// Reads the config through the source (the control plane's, else the file's) and applies it as the
/// first version.
fn load(
    opts: &RunOptions,
    background: &Background,
) -> Result<(Arc<dyn ConfigSource>, Arc<ConfigState>), StartError> {
    if let Some(cp) = &opts.control_plane {
        let (doc, source) = crate::control_plane::boot(cp.clone(), background)?;
        let bootstrap = bootstrap_for(&doc, opts);
        let state = ConfigState::new(doc, bootstrap, background)?;
        return Ok((source, state));
    }
    let source = Arc::new(FileSource::new(opts.config.clone(), RELOAD_DEBOUNCE));
    let doc = source.fetch()?;
    let files = doc.config.files.clone();
    let bootstrap = bootstrap_for(&doc, opts);
    let state = ConfigState::new(doc, bootstrap, background)?;
    source.watch_files(files);
    Ok((source, state))
}

/// The proxy listener's connection limits, fitted under the open-file limit.
fn proxy_limits(b: &Bootstrap, open_files: Option<u64>) -> ConnLimits {
    let max_connections =
        proxy_connection_limit(b.max_connections, b.admin_max_connections, open_files);
    if max_connections < b.max_connections {
        tracing::warn!(
            configured = b.max_connections,
            max_connections,
            open_files,
            "server.max_connections lowered to fit under the open-file limit"
        );
    }
    ConnLimits {
        header_timeout: b.header_timeout,
        keepalive_timeout: b.keepalive_timeout,
        max_header_bytes: b.max_header_bytes,
        max_connections,
    }
}

/// The admin listener: its own connection budget, one thread.
fn admin_service(
    state: &Arc<ConfigState>,
    source: &Arc<dyn ConfigSource>,
    limits: ConnLimits,
) -> Service<Listener<Admin>> {
    let boot = state.bootstrap();
    let admin_limits = ConnLimits {
        max_connections: boot.admin_max_connections,
        ..limits
    };
    let admin_app = Admin {
        state: state.clone(),
        source: source.clone(),
    };
    let listener = Listener::new("admin", admin_app, admin_limits);
    let mut admin = Service::new("admin".to_string(), with_tls(listener, state, |t| &t.admin));
    admin.add_tcp(&boot.admin_listen.to_string());
    admin.threads = Some(1);
    admin
}

/// `listener` speaking TLS when the first config version has a certificate for it (`which` picks
/// the proxy's or the admin's); each connection then takes the serving version's certificate.
fn with_tls<A>(
    listener: Listener<A>,
    state: &Arc<ConfigState>,
    which: fn(&ListenerCerts) -> &Option<Arc<ListenerCert>>,
) -> Listener<A> {
    let Some(initial) = which(&state.snapshot().tls).clone() else {
        return listener;
    };
    let state = state.clone();
    listener.with_tls(TlsSource::new(initial, move || {
        which(&state.snapshot().tls).clone()
    }))
}

/// The proxy listener's socket buffers. Plain HTTP reads straight into the buffers of the code that
/// parses (the listener's head buffer, Pingora's body reads): Pingora's default puts a 64 KiB read
/// buffer in front of each connection, zeroed when the connection is accepted and copied out of on
/// every read, and with 1,000 streams open those buffers were about 64 MiB of the gateway's RSS.
/// A TLS listener keeps it: TLS reads a record (up to 16 KiB) at a time, and the buffer saves
/// syscalls there (Pingora's reason for the default).
fn l4_buffer(tls: bool) -> L4BufferSettings {
    if tls {
        L4BufferSettings::default()
    } else {
        L4BufferSettings::default().read(0)
    }
}

/// What `build` assembled. After `server` has run, call `background.shutdown()`: it writes the
/// usage records queued while the server stopped.
pub struct Built {
    pub server: Server,
    pub state: Arc<ConfigState>,
    pub background: Background,
}

/// Pingora's server settings for this bootstrap: threads, graceful shutdown, upstream pool, upgrade socket.
fn server_conf(opts: &RunOptions, boot: &Bootstrap) -> ServerConf {
    ServerConf {
        threads: boot.threads,
        grace_period_seconds: Some(boot.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(boot.grace_period_seconds),
        upstream_keepalive_pool_size: 1024,
        // One proxy thread has no one to steal from: each service then runs on a current-thread
        // runtime instead of tokio's multi-thread scheduler, whose per-task bookkeeping (run-queue
        // atomics, park/unpark, the poll-time EWMA's `powf`) was ~800 instructions a request
        // (issue 19). With more threads, work stealing stays on: a busy connection's neighbours
        // move to an idle thread rather than wait behind it.
        work_stealing: boot.threads > 1,
        upgrade_sock: opts
            .upgrade_sock
            .clone()
            .unwrap_or_else(|| default_upgrade_sock(boot.listen))
            .to_string_lossy()
            .into_owned(),
        ..ServerConf::default()
    }
}

/// Loads the config and builds the server; `extra` adds services (e.g. the stubs of `leaky-tokens up`).
pub fn build(opts: &RunOptions, extra: impl FnOnce(&mut Server)) -> Result<Built, StartError> {
    let background = Background::start()?;
    let (source, state) = load(opts, &background)?;
    let boot = state.bootstrap().clone();
    let events = &state.snapshot().config.events;
    background.start_events(
        events.kafka.as_ref(),
        format!("/leaky-tokens/proxy/{}", boot.listen),
    )?;
    let conf = server_conf(opts, &boot);
    let opt = opts.upgrade.then(|| pingora::server::configuration::Opt {
        upgrade: true,
        ..Default::default()
    });
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let limits = proxy_limits(&boot, opts.open_files);
    let gateway = GatewayApp::new(&server.configuration, || Gateway::new(state.clone()));
    let listener = with_tls(Listener::new("proxy", gateway, limits), &state, |t| {
        &t.proxy
    });
    let buffers = l4_buffer(listener.speaks_tls());
    let mut proxy = Service::new("proxy".to_string(), listener);
    proxy.add_listener(ListenerConfig::tcp(boot.listen.to_string()).l4_buffer(buffers));
    proxy.threads = Some(boot.threads);

    let admin = admin_service(&state, &source, limits);

    let watcher = background_service(
        "config-watcher",
        SourceService {
            source,
            state: state.clone(),
        },
    );

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(watcher);
    server.add_service(background.service());
    extra(&mut server);
    Ok(Built {
        server,
        state,
        background,
    })
}
