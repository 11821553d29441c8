//! Leaky Tokens data plane on Pingora.
//!
//! - `service`: the request path (`ProxyHttp` impl; phase chart in its module docs).
//! - `snapshot`: one immutable, compiled config version; `reload` (`ConfigState`) applies config
//!   documents (`document`) and swaps snapshots atomically; `source`: the `ConfigSource` seam (and a
//!   pushed source); `watch`: the file source (files, inotify, `SIGHUP`); `bootstrap`: the settings
//!   fixed at start (listeners, threads, connection limits).
//! - `headers`: which request and response headers cross the gateway (compiled per route and provider).
//! - `upstream`: pooled HTTP/1.1 upstream calls with the whole body (beyond Pingora's 64 KiB retry buffer).
//! - `path`: request path normalization; `endpoints`: a route's compiled endpoint allow-list.
//! - `admin`: `/healthz`, `/readyz`, `/metrics`, `/admin/config`, `POST /admin/reload`; `admin_auth`:
//!   who may call them; `metrics`: Prometheus families.
//! - `listener`: the connection layer under both listeners (limits, head timeout and size, keep-alive,
//!   strict framing, pipelining).
//! - `background`: the runtime long-lived tasks run on and the usage queue (`usage_log`), a Pingora
//!   service that flushes usage at shutdown; `check`: `check-config`'s snapshot build.

mod access_log;
pub mod admin;
pub mod admin_auth;
pub mod background;
// TODO(h2): std::time::Instant → tokio::time::Instant (clippy.toml), then drop this allow.
#[allow(clippy::disallowed_types)]
pub mod balancer;
pub mod bootstrap;
pub mod check;
pub mod document;
pub mod endpoints;
mod exchange;
mod headers;
pub mod limiter;
pub mod listener;
mod metering;
pub mod metrics;
mod offload;
pub mod path;
// TODO(h2): std::time::Instant → tokio::time::Instant (clippy.toml), then drop this allow.
#[allow(clippy::disallowed_types)]
mod pool;
pub mod reload;
mod request;
pub mod server;
// TODO(h1): std::time::Instant → tokio::time::Instant (clippy.toml), then drop this allow.
#[allow(clippy::disallowed_types)]
pub mod service;
pub mod snapshot;
pub mod source;
mod upstream;
pub mod usage_log;
pub mod watch;

pub use document::{ConfigDocument, Origin, SourceError};
pub use reload::{ApplyError, ConfigState};
pub use server::{build, Built, RunOptions, StartError};
pub use source::{ConfigSource, PushHandle, PushedSource};
