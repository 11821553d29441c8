//! Bootstrap settings: what the process binds and sizes at start and cannot change without a restart
//! (listeners, worker threads, connection limits and timeouts of the connection layer, the shutdown
//! grace period, whether a listener speaks TLS — not its certificate, which each version re-reads). A config document may still carry them; a reload compares them with the running
//! bootstrap, reports the differences as pending a restart and keeps serving with the running values.
//!
//! The split is done here, on the proxy side, from the model's `server` section, so the config crate's
//! schema stays one file users write; a pushed document (control plane) would simply omit them.

use leaky_config::Server;
use std::net::SocketAddr;
use std::time::Duration;

/// The settings fixed when the server starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Worker threads of the proxy listener.
    pub threads: usize,
    pub max_connections: usize,
    pub admin_max_connections: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_header_bytes: usize,
    pub grace_period_seconds: u64,
    /// Whether the proxy and admin listeners speak TLS (their certificates follow each config
    /// version; turning TLS on or off takes a restart).
    pub tls: bool,
    pub admin_tls: bool,
}

impl Bootstrap {
    /// The bootstrap part of a document's `server` section.
    pub fn of(server: &Server) -> Self {
        Bootstrap {
            listen: server.listen,
            admin_listen: server.admin_listen,
            threads: server.threads,
            max_connections: server.max_connections,
            admin_max_connections: server.admin_max_connections,
            header_timeout: server.header_timeout,
            keepalive_timeout: server.keepalive_timeout,
            max_header_bytes: server.max_header_bytes,
            grace_period_seconds: server.grace_period_seconds,
            tls: server.tls.is_some(),
            admin_tls: server.admin_tls.is_some(),
        }
    }

    /// Writes the running values into a document's `server` section, so everything that reads the
    /// section per request (the admin listener's access rules) sees what is actually bound.
    pub fn pin(&self, server: &mut Server) {
        server.listen = self.listen;
        server.admin_listen = self.admin_listen;
        server.threads = self.threads;
        server.max_connections = self.max_connections;
        server.admin_max_connections = self.admin_max_connections;
        server.header_timeout = self.header_timeout;
        server.keepalive_timeout = self.keepalive_timeout;
        server.max_header_bytes = self.max_header_bytes;
        server.grace_period_seconds = self.grace_period_seconds;
    }

    /// What `wanted` changes from `self`, one line per setting, as `/admin/config` reports them.
    pub fn changes_to(&self, wanted: &Bootstrap) -> Vec<String> {
        let ms = |d: Duration| d.as_millis().to_string();
        let on = |tls: bool| if tls { "on" } else { "off" }.to_string();
        let fields = [
            ("listen", self.listen.to_string(), wanted.listen.to_string()),
            (
                "admin_listen",
                self.admin_listen.to_string(),
                wanted.admin_listen.to_string(),
            ),
            (
                "threads",
                self.threads.to_string(),
                wanted.threads.to_string(),
            ),
            (
                "max_connections",
                self.max_connections.to_string(),
                wanted.max_connections.to_string(),
            ),
            (
                "admin_max_connections",
                self.admin_max_connections.to_string(),
                wanted.admin_max_connections.to_string(),
            ),
            (
                "header_timeout_ms",
                ms(self.header_timeout),
                ms(wanted.header_timeout),
            ),
            (
                "keepalive_timeout_ms",
                ms(self.keepalive_timeout),
                ms(wanted.keepalive_timeout),
            ),
            (
                "max_header_bytes",
                self.max_header_bytes.to_string(),
                wanted.max_header_bytes.to_string(),
            ),
            (
                "grace_period_seconds",
                self.grace_period_seconds.to_string(),
                wanted.grace_period_seconds.to_string(),
            ),
            ("tls", on(self.tls), on(wanted.tls)),
            ("admin_tls", on(self.admin_tls), on(wanted.admin_tls)),
        ];
        fields
            .into_iter()
            .filter(|(_, old, new)| old != new)
            .map(|(name, old, new)| format!("server.{name}: {old} → {new} (restart to apply)"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot() -> Bootstrap {
        Bootstrap {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            threads: 2,
            max_connections: 1000,
            admin_max_connections: 16,
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            max_header_bytes: 65536,
            grace_period_seconds: 30,
            tls: false,
            admin_tls: false,
        }
    }

    #[test]
    fn only_changed_settings_are_reported_in_the_shipped_wording() {
        let running = boot();
        assert!(running.changes_to(&boot()).is_empty());
        let wanted = Bootstrap {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            threads: 4,
            header_timeout: Duration::from_secs(5),
            tls: true,
            ..boot()
        };
        assert_eq!(
            running.changes_to(&wanted),
            [
                "server.listen: 127.0.0.1:8080 → 127.0.0.1:8081 (restart to apply)",
                "server.threads: 2 → 4 (restart to apply)",
                "server.header_timeout_ms: 10000 → 5000 (restart to apply)",
                "server.tls: off → on (restart to apply)",
            ]
        );
    }
}
