//! Assembles the Pingora server: the proxy listener, the admin listener, the config watcher and the
//! background service (usage flush), all sharing one `ConfigState`. Both listeners sit behind
//! `listener::Listener` (connection limit, head timeout and size, keep-alive idle timeout), each
//! with its own connection budget.

use crate::admin::Admin;
use crate::background::Background;
use crate::listener::{ConnLimits, Listener};
use crate::reload::ConfigState;
use crate::service::Gateway;
use crate::watch::ConfigWatcher;
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
    pub config: PathBuf,
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub threads: Option<usize>,
    /// The process's open-file limit (`RLIMIT_NOFILE`, already raised); the proxy's connection limit
    /// is lowered to fit under it.
    pub open_files: Option<u64>,
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

/// What `build` assembled. After `server` has run, call `background.shutdown()`: it writes the
/// usage records queued while the server stopped.
pub struct Built {
    pub server: Server,
    pub state: Arc<ConfigState>,
    pub background: Background,
}

/// Loads the config and builds the server; `extra` adds services (e.g. the stubs of `leaky-tokens up`).
pub fn build(opts: &RunOptions, extra: impl FnOnce(&mut Server)) -> Result<Built, String> {
    let background = Background::start().map_err(|e| e.to_string())?;
    let state = ConfigState::load(&opts.config, &background, |c| {
        if let Some(a) = opts.listen {
            c.server.listen = a;
        }
        if let Some(a) = opts.admin_listen {
            c.server.admin_listen = a;
        }
        if let Some(t) = opts.threads {
            c.server.threads = t.max(1);
        }
    })?;
    let snap = state.snapshot();
    let server_cfg = &snap.config.server;

    let conf = ServerConf {
        threads: server_cfg.threads,
        grace_period_seconds: Some(server_cfg.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(server_cfg.grace_period_seconds),
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let max_connections = proxy_connection_limit(
        server_cfg.max_connections,
        server_cfg.admin_max_connections,
        opts.open_files,
    );
    if max_connections < server_cfg.max_connections {
        tracing::warn!(
            configured = server_cfg.max_connections,
            max_connections,
            open_files = opts.open_files,
            "server.max_connections lowered to fit under the open-file limit"
        );
    }
    let limits = ConnLimits {
        header_timeout: server_cfg.header_timeout,
        keepalive_timeout: server_cfg.keepalive_timeout,
        max_header_bytes: server_cfg.max_header_bytes,
        max_connections,
    };
    let gateway = pingora::proxy::http_proxy(&server.configuration, Gateway::new(state.clone()));
    let mut proxy = Service::new("proxy".to_string(), Listener::new("proxy", gateway, limits));
    proxy.add_tcp(&server_cfg.listen.to_string());
    proxy.threads = Some(server_cfg.threads);

    let admin_limits = ConnLimits {
        max_connections: server_cfg.admin_max_connections,
        ..limits
    };
    let admin_app = Admin {
        state: state.clone(),
    };
    let mut admin = Service::new(
        "admin".to_string(),
        Listener::new("admin", admin_app, admin_limits),
    );
    admin.add_tcp(&server_cfg.admin_listen.to_string());
    admin.threads = Some(1);

    let watcher = background_service(
        "config-watcher",
        ConfigWatcher {
            state: state.clone(),
            debounce: RELOAD_DEBOUNCE,
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
