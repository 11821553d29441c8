//! Token-aware rate limiting: algorithms (pure), stores (memory, Redis), policies and accounting.

pub mod algo;
pub mod store;

pub use algo::{Admit, Algorithm, CalendarWindow, Deny, Nanos, State, Status};
pub use store::{Adjust, Charge, OnStoreError, Store, StoreError, Taken};
