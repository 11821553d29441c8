//! Upstream resilience algorithms, pure logic on injected clocks (`now_ms`, any monotonic scale in
//! milliseconds): circuit breaker, `429` cool-down, tenant attribution of failures, retry budget,
//! backoff and `retry-after`, bulkhead, health state, a deployment's own RPM/TPM headroom and weighted
//! deployment choice. The proxy wires them together; nothing here knows about Pingora, config or
//! metrics.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod bulkhead;
pub mod cooldown;
pub mod health;
pub mod quota;
pub mod select;
pub mod tenants;
mod window;

pub use backoff::{backoff_ms, jitter_seed, retry_after_ms, SplitMix};
pub use breaker::{Admission, Breaker, BreakerSettings, BreakerState, Transition};
pub use budget::RetryBudget;
pub use bulkhead::{Bulkhead, BulkheadFull, BulkheadPermit};
pub use cooldown::{provider_exhausted, CoolDown};
pub use health::{Health, HealthSettings};
pub use quota::DeploymentQuota;
pub use select::{pick, Candidate};
pub use tenants::{Cause, RecentTenants};
