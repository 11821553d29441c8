//! This crate's integration tests, one test binary: each file of `tests/` is a module of it (run one
//! with `cargo test -p leaky-config --test integration -- <file>::`).

mod cache;
mod events;
mod flags;
mod invalid;
mod schema;
mod shipped;
