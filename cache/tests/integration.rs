//! This crate's integration tests, one test binary: each file of `tests/` is a module of it (run one
//! with `cargo test -p leaky-cache --test integration -- <file>::`).

mod contract;
mod memory;
mod redis;
