//! The analytics service's integration tests, one test binary: each file of `tests/` is a module of it
//! (run one with `cargo test -p leaky-analytics --test integration -- <file>::`, e.g. `race::`). One
//! binary instead of one per file: each would link the whole dependency graph again. The shared
//! harnesses are declared here once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../contracts/support/pacts.rs"]
mod pacts;

mod anomaly_live;
mod faults;
mod pact_tenancy;
mod pact_usage;
mod pipeline;
mod race;
mod schema;
mod statements;
mod zones;
