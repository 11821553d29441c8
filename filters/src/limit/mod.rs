//! Token-aware rate limiting: algorithms (pure), stores (memory, Redis), policies and accounting.

pub mod algo;
pub mod calendar;
mod filter;
pub mod guard;
mod headers;
pub mod memory;
pub mod policy;
pub mod redis;
pub mod redis_server;
pub mod settle;
pub mod store;

pub use self::redis::{RedisClock, RedisOptions, RedisStore};
pub use algo::{Admit, Algorithm, CalendarWindow, Deny, Nanos, State, Status};
pub use filter::{Decision, DecisionSink, RateLimitFilter};
pub use guard::{BreakerState, GuardOptions, GuardStats, Guarded};
pub use memory::MemoryStore;
pub use policy::{Clock, Limiter, TokenCost, TokenUsage, UsageSource};
pub use settle::{Settler, SettlerHandle};
pub use store::{Adjust, Charge, OnStoreError, Store, StoreError, Taken};
