//! The gateway's integration tests, one test binary: each file of `tests/` is a module of it (run one
//! with `cargo test --test integration -- <file>::`, e.g. `ratelimit_redis::`). One binary instead of one
//! per file: each would link the whole dependency graph and monomorphise the same client, runtime
//! and serde code again, which made most of a clean build's test-compile time. Its shared harnesses
//! are declared here once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod identity_stack;
mod tls_pki;
mod tracing_support;

/// The analytics tests' Cassandra (the one `scripts/test` runs, or one of this process's own).
#[allow(dead_code)]
#[path = "../analytics/tests/common/cassandra.rs"]
mod cassandra;
/// The control plane's harness (a real PostgreSQL, its Kafka helpers).
#[path = "../control-plane/tests/common/mod.rs"]
mod pg;

mod admin;
mod analytics_cli;
mod balance;
mod balance_redis;
mod cache;
mod check_config;
mod concurrency;
mod config_push;
mod connections;
mod control_plane;
mod control_plane_watch;
mod cost;
mod flags;
mod headers;
mod identity_jwt;
mod identity_revocation;
mod identity_rotation;
mod isolation;
mod jwt;
mod jwt_attacks;
mod ledger_cli;
mod logs;
mod metering;
mod provider_credentials_e2e;
mod proxy;
mod ratelimit;
mod ratelimit_redis;
mod reload;
mod resilience;
mod scope;
mod secrets_in_logs;
mod shutdown;
mod streaming;
mod tls;
mod tls_control_plane;
mod tls_upstream;
mod tracing_jaeger;
mod tracing_services;
mod usage_events;
