//! Token-aware rate limiting: algorithms (pure), stores (memory, Redis), policies and accounting.

pub mod algo;
pub mod calendar;
pub mod guard;
pub mod memory;
pub mod redis;
pub mod redis_server;
pub mod settle;
pub mod store;

pub use algo::{Admit, Algorithm, CalendarWindow, Deny, Nanos, State, Status};
pub use guard::{BreakerState, GuardOptions, GuardStats, Guarded};
pub use memory::MemoryStore;
pub use self::redis::{RedisClock, RedisOptions, RedisStore};
pub use settle::{Settler, SettlerHandle};
pub use store::{Adjust, Charge, OnStoreError, Store, StoreError, Taken};
