//! Assembles the Pingora server: the proxy listener, the admin listener and the config watcher, all
//! sharing one `ConfigState`.

use crate::admin::Admin;
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
}

/// Quiet period after the last file event before a reload.
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(150);

/// Loads the config and builds the server; `extra` adds services (e.g. the stubs of `leaky-tokens up`).
pub fn build(
    opts: &RunOptions,
    extra: impl FnOnce(&mut Server),
) -> Result<(Server, Arc<ConfigState>), String> {
    let state = ConfigState::load(&opts.config, |c| {
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

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway::new(state.clone()),
        "proxy",
    );
    proxy.add_tcp(&server_cfg.listen.to_string());
    proxy.threads = Some(server_cfg.threads);

    let mut admin = Service::new(
        "admin".to_string(),
        Admin {
            state: state.clone(),
        },
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
    extra(&mut server);
    Ok((server, state))
}
