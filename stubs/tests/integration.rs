//! This crate's integration tests, one test binary: each file of `tests/` is a module of it (run one
//! with `cargo test -p leaky-stubs --test integration -- <file>::`).

mod control;
mod golden;
mod payment;
mod responses;
mod stubs;
