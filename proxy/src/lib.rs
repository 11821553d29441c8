//! Leaky Tokens data plane on Pingora.
//!
//! - `service`: the request path (`ProxyHttp` impl; phase chart in its module docs).
//! - `snapshot`: one immutable, compiled config version; `reload` swaps it atomically; `watch` triggers
//!   reloads on file change and `SIGHUP`.
//! - `upstream`: pooled HTTP/1.1 upstream calls with the whole body (beyond Pingora's 64 KiB retry buffer).
//! - `admin`: `/healthz`, `/readyz`, `/metrics`, `/admin/config`; `metrics`: Prometheus families.

mod access_log;
pub mod admin;
pub mod balancer;
mod call;
pub mod limiter;
mod metering;
pub mod metrics;
mod offload;
mod pool;
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
