//! The store's error type, shared by [`crate::store`] and [`crate::schema`] (a leaf, so neither
//! imports the other for it).

/// Why a Cassandra call failed. The message is the driver's (no secrets: the store takes no
/// credentials).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cassandra: {0}")]
    Db(String),
    #[error("analytics config: {0}")]
    Config(String),
}

/// Maps any driver error into a [`StoreError::Db`].
pub fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}
