//! This crate's integration tests, one test binary: each file of `tests/` is a module of it (run one
//! with `cargo test -p leaky-proxy --test integration -- <file>::`), except `no_alloc.rs`, whose
//! counting global allocator needs a process of its own (`Cargo.toml`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../contracts/support/pacts.rs"]
mod pacts;
#[path = "../../contracts/support/verify.rs"]
mod verify;

mod pact_control_plane;
mod pact_usage_provider;
