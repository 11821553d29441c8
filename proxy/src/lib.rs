//! Leaky Tokens data plane on Pingora.
//!
//! # One request, phase by phase
//!
//! The listener owns the connection and hands each HTTP/1 request to `service/app.rs`, which runs
//! Pingora's request phases the gateway uses (`request_filter`, then `logging`) without Pingora's
//! proxy loop; HTTP/2 sessions go through Pingora's `HttpProxy`. `request_filter` answers every
//! request itself (Pingora's upstream phases are never reached) and `logging` always runs after it.
//! `Ctx` (`ctx.rs`) carries the request through; each step passes values to the next, and every
//! hold goes into the request's ledger.
//!
//! ```text
//! listener (listener.rs)     connection limit, TLS handshake (server.tls; h2 by ALPN → listener/h2.rs),
//!                            head timeout and size, strict framing, keep-alive
//! request_filter (service.rs: Gateway::handle)
//!  ├─ snapshot               one ArcSwap load: the config version this request runs on
//!  ├─ locate                 path normalize (path.rs; 400 if unsafe) ─ route match (longest prefix)
//!  │                         ─ `..` above the prefix ─ framing check (request.rs)
//!  ├─ authenticate           chain.on_request: request-id, api-key | jwt (401/403 in the route's
//!  │                         dialect) ─ endpoint allow-list (endpoints.rs; 404)
//!  │                         (GET {prefix}/models on a model-routed route: answered here)
//!  ├─ read_body              ≤ server.max_body_bytes (413), 100-continue
//!  ├─ resolve                model (JSON body or path; checked) ─ upstream pick by model (404)
//!  │                         ─ chain.on_request_body (model allow-list)
//!  ├─ admit                  metering.rs (routes that meter, see snapshot.rs): tokenize the cost
//!  │                         (large bodies: on_cost_floor, then the exact count off the workers),
//!  │                         include_usage rewrite; the meter goes to the ledger
//!  │                         ─ chain.on_admit (rate-limit reserves, concurrency takes a slot):
//!  │                         holds → ledger, completion cap → body
//!  │                         ─ tenant bulkhead slot (exchange::tenant_slot) → ledger
//!  ├─ cache (service/cached.rs, routes with `cache:` only; docs/cache.md): decide (key, policy)
//!  │                         ─ bypass | lookup (bounded; unavailable = miss) ─ hit: replay
//!  │                         (replay.rs: the stored bytes through the meter, settled with the
//!  │                         route's charge) | miss: single-flight leader, or a follower that
//!  │                         replays the leader's entry; the leader's relay tees the upstream
//!  │                         bytes (capture.rs) and stores a complete 200 off the request
//!  ├─ exchange (exchange.rs) for the model, then each fallback (model rewritten):
//!  │                         pick a deployment (healthy, circuit admits, budget headroom, untried
//!  │                         first) ─ deployment bulkhead (queue until the deadline) ─ breaker
//!  │                         admission ─ quota charge ─ send (upstream.rs; pooled, whole body)
//!  │                         ─ first byte within timeout; retry on connect/timeout/status within the
//!  │                         route's budget, with backoff and 429 cool-downs
//!  │                         → answer + UpstreamHolds (deployment permit, quota charge) → ledger
//!  └─ relay (relay.rs)       response head (filtered, x-request-id, limit headers, served model)
//!                            ─ body chunks through the ledger's meter (usage tracking, SSE/JSON)
//!                            ─ settle (Ledger::settle) before the last bytes: holds settled with the
//!                            provider's usage ─ idle/total cut (settle, SSE error event)
//!                            ─ client gone: a JSON answer is drained for its usage, then settled
//!                            ─ upstream connection back to the pool
//!    on Fail::Reject          the rejection in the route's dialect (service::reject), body drained
//!                            or the connection closed
//! logging (always)
//!  ├─ finish (Ledger::finish) bulkhead slots freed; what settle did not settle, settled with the
//!  │                         usage so far (counted, or the reservation); quota charge corrected
//!  └─ access_log.rs          request metrics, token counts, usage record, one log line
//! ```
//!
//! # Modules
//!
//! - Request path: `service` (the `ProxyHttp` impl and the steps of `handle`; `service/app.rs`: the
//!   proxy listener's app), `ctx` (per-request
//!   context, `Fail`), `ledger` (holds, settled once), `request` (framing, body, model, upstream
//!   request head), `path` (normalization), `endpoints` (allow-lists), `headers` (which headers cross),
//!   `metering` (cost estimate and usage meter), `offload` (the estimate pool), `exchange` (a free
//!   function over a `Transport`: attempts, retries, fallbacks, on tokio's clock), `transport` (the exchange's seam to the network: `Attempt`, `Transport`, `Failed`), `upstream` (one
//!   pooled upstream call, the Pingora `Transport`; `upstream/h1.rs` reads its answer), `balancer` (deployments,
//!   breakers, cool-downs, quotas, bulkheads), `registry` (deployment states across versions, health
//!   checks), `pool` (idle connections), `relay` (the
//!   response to the client), `access_log` (the completion phase), `usage_log` (usage records),
//!   the response cache: `response_cache` (each route's compiled cache, the process-wide stores,
//!   metrics), `capture` (a live answer teed into an entry), `replay` (a hit answered).
//!   `trace` (OpenTelemetry spans of each request: recorded while it runs, kept at the end when
//!   head-sampled or an error, exported off the request path; docs/observability.md).
//!   `log_ids` (the `request_id` / `trace_id` / `span_id` fields of the lines about a request).
//! - Config: `snapshot` (one immutable, compiled config version), `reload` (`ConfigState`: applies
//!   config documents, `document`, and swaps snapshots atomically), `source` (the `ConfigSource` seam,
//!   and a pushed source), `watch` (the file source: files, inotify, `SIGHUP`), `bootstrap` (the
//!   settings fixed at start: listeners, threads, connection limits), `control_plane` (the source
//!   fed by a control plane's watch stream: snapshots, key deltas, ACK/NACK, last-good cache,
//!   registry), `limiter` (the rate limiter's
//!   store, kept across versions), `check` (`check-config`'s snapshot build).
//! - Serving: `server` (assembles the Pingora server), `listener` (the connection layer under both
//!   listeners, TLS and h2 included), `tls` (certificates, keys and CAs read once per config version:
//!   listener acceptors, upstream CA pins and client certificates), `admin` (`/healthz`, `/readyz`, `/metrics`, `/admin/config`, `POST /admin/reload`),
//!   `admin_auth` (who may call them), `metrics` (Prometheus families), `background` (the runtime
//!   long-lived tasks run on and the usage queue; a Pingora service that flushes usage at shutdown).
//!
//! `scripts/shape` checks that these modules import each other without a cycle.

mod access_log;
pub mod admin;
pub mod admin_auth;
pub mod background;
pub mod balancer;
pub mod bootstrap;
mod capture;
pub mod check;
pub mod control_plane;
mod ctx;
pub mod document;
pub mod endpoints;
pub mod events;
mod exchange;
mod headers;
mod ledger;
pub mod limiter;
pub mod listener;
mod log_ids;
mod metering;
pub mod metrics;
mod offload;
pub mod path;
mod pool;
pub mod registry;
mod relay;
pub mod reload;
mod replay;
mod request;
mod response_cache;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod source;
pub mod tls;
pub mod trace;
mod transport;
mod upstream;
pub mod usage_log;
pub mod watch;
mod wire;

pub use document::{ConfigDocument, Origin, SourceError};
pub use reload::{ApplyError, ConfigState};
pub use server::{build, default_upgrade_sock, Built, RunOptions, StartError};
pub use source::{ConfigSource, PushHandle, PushedSource};
