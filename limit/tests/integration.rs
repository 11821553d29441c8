//! This crate's integration tests, one test binary: each file of `tests/` is a module of it (run one
//! with `cargo test -p leaky-limit --test integration -- <file>::`).

mod balance;
mod limit_props;
mod limit_store;
mod policy;
