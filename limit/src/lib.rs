//! The limit engine behind token-aware rate limits and quotas: exact integer algorithms on an
//! injected clock (`algo`, `calendar`), the stores that hold bucket state (`memory`, `redis`, the
//! fail-over `guard`), policies compiled once per config version into a request's charges (`policy`),
//! batched settlement off the request path (`settle`), and the prepaid balances' Redis layout with
//! the control plane's mirror API (`balance`).
//!
//! Nothing here knows about Pingora, HTTP or the filter chain: callers describe a request as a
//! borrowed [`Subject`]; the `rate-limit` filter in `leaky-filters` is the one that drives it.

pub mod algo;
pub mod balance;
pub mod calendar;
pub mod decision;
pub mod guard;
pub mod memory;
pub mod policy;
pub mod redis;
mod redis_local;
pub mod redis_server;
pub mod settle;
pub mod store;

pub use self::redis::{RedisClock, RedisOptions, RedisStore};
pub use algo::{Admit, Algorithm, CalendarWindow, Deny, Nanos, State, Status};
pub use decision::{Decision, DecisionSink};
pub use guard::{BreakerState, GuardOptions, GuardStats, GuardTimer, Guarded};
pub use memory::{Held, MemoryStore};
pub use policy::{
    Charges, Clock, Limiter, PolicyError, Subject, TokenCost, TokenUsage, UsageSource,
};
pub use settle::{Settler, SettlerHandle};
pub use store::{Adjust, Charge, OnStoreError, Store, StoreError, Taken};
