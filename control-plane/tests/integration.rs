//! The control plane's integration tests, one test binary: each file of `tests/` is a module of it
//! (run one with `cargo test -p leaky-control-plane --test integration -- <file>::`, e.g. `saga::`),
//! except the four that set process environment the in-process server reads (`LEAKY_MASTER_KEY`,
//! `LEAKY_ANALYTICS_URL`): they stay binaries of their own (`Cargo.toml`). One binary instead of one
//! per file: each would link the whole dependency graph and monomorphise the same code again. The
//! shared harnesses are declared here once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../contracts/support/pacts.rs"]
mod pacts;
mod saga_fakes;
#[path = "../../contracts/support/verify.rs"]
mod verify;
mod watch;

mod bad_input;
mod config_server;
mod domain_events;
mod eureka;
mod eureka_client;
mod faults;
mod flags;
mod identity;
mod identity_flows;
mod keys;
mod ledger;
mod ledger_consumer;
mod migrations;
mod notify;
mod openapi;
mod orgs;
mod outbox;
mod pact_domain_events;
mod pact_ledger_usage;
mod pact_notify_events;
mod pact_provider;
mod purchases;
mod purchases_e2e;
mod rbac;
mod rbac_keys;
mod reconcile;
mod registry;
mod revoked_feed;
mod saga;
mod subscriptions;
