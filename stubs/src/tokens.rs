//! Token counting: the shared `leaky-tokenize` crate (the gateway estimates
//! with the same rules). See its documentation for the counting rules.

pub use leaky_tokenize::*;
