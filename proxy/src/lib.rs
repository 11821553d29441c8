//! Leaky Tokens data plane on Pingora.
//!
//! - `service`: the request path (`ProxyHttp` impl; phase chart in its module docs).
//! - `snapshot`: one immutable, compiled config version; `reload` swaps it atomically; `watch` triggers
//!   reloads on file change and `SIGHUP`.
//! - `headers`: which request and response headers cross the gateway (compiled per route and provider).
//! - `upstream`: pooled HTTP/1.1 upstream calls with the whole body (beyond Pingora's 64 KiB retry buffer).
//! - `path`: request path normalization; `endpoints`: a route's compiled endpoint allow-list.
//! - `admin`: `/healthz`, `/readyz`, `/metrics`, `/admin/config`, `POST /admin/reload`; `admin_auth`:
//!   who may call them; `metrics`: Prometheus families.
//! - `listener`: the connection layer under both listeners (limits, head timeout and size, keep-alive,
//!   strict framing, pipelining).

mod access_log;
pub mod admin;
pub mod admin_auth;
pub mod balancer;
mod call;
mod ctx;
pub mod endpoints;
mod headers;
mod ledger;
pub mod limiter;
pub mod listener;
mod metering;
pub mod metrics;
mod offload;
pub mod path;
mod pool;
mod relay;
pub mod reload;
mod request;
pub mod server;
pub mod service;
pub mod snapshot;
mod upstream;
mod usage_log;
pub mod watch;

pub use reload::ConfigState;
pub use server::{build, RunOptions};
