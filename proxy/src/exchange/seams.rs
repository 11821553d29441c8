//! What the exchange is given instead of the request context and the wall clock (besides the
//! `Transport` that carries one attempt, in `transport.rs`): the [`BuildHead`] closure that writes its request head, the [`Clock`] of
//! the resilience algorithms, and the request's [`Tenant`] for failure attribution.

use crate::balancer::Deployment;
use crate::snapshot::Upstream;
use crate::wire::UpstreamHead;
use leaky_filters::{Principal, Rejection};
use leaky_resilience::jitter_seed;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::OnceLock;

/// The clocks the exchange reads besides tokio's (which drives its deadline, sleeps and timeouts):
/// the resilience algorithms' monotonic milliseconds, wall-clock milliseconds (only to read a
/// `retry-after` HTTP-date) and the random draw of the backoff jitter. Injected so that tests are
/// deterministic.
pub trait Clock: Sync {
    /// Monotonic milliseconds, the `now_ms` of breakers, cool-downs, budgets and quotas.
    fn now_ms(&self) -> u64;
    /// Unix epoch milliseconds.
    fn unix_ms(&self) -> u64;
    /// A uniformly random `u64` for the backoff's full jitter.
    fn jitter(&self) -> u64;
}

/// The process's clocks: `balancer::now_ms`, the system time, and the shared jitter source.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::balancer::now_ms()
    }

    fn unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn jitter(&self) -> u64 {
        jitter_seed()
    }
}

/// Builds the upstream request head for a deployment of an upstream, the path after the route prefix
/// (a fallback may have rewritten it) and the body's length. The caller's closure, so the exchange
/// needs neither the Pingora session nor the request context.
pub trait BuildHead:
    Fn(&Upstream, &Deployment, &str, usize) -> Result<UpstreamHead, Rejection> + Sync
{
}

impl<F> BuildHead for F where
    F: Fn(&Upstream, &Deployment, &str, usize) -> Result<UpstreamHead, Rejection> + Sync
{
}

/// Whose request this is, as breakers and `429` cool-downs count tenants: the principal's org, else
/// its user (as the tenant bulkhead), else, unauthenticated, the client's IP. Hashed only when a
/// failure needs attributing.
#[derive(Clone, Copy, Debug)]
pub enum Tenant<'a> {
    Named(&'a str),
    Address(Option<IpAddr>),
}

impl<'a> Tenant<'a> {
    pub fn of(principal: Option<&'a Principal>, client: Option<IpAddr>) -> Self {
        match principal {
            Some(p) => Tenant::Named(p.org.as_deref().unwrap_or(&p.user)),
            None => Tenant::Address(client),
        }
    }

    /// A per-process hash (random keys, so tenants cannot aim at each other's slots).
    pub fn hash(self) -> u64 {
        static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
        let keys = KEYS.get_or_init(Default::default);
        match self {
            Tenant::Named(name) => keys.hash_one(name),
            Tenant::Address(ip) => keys.hash_one(ip),
        }
    }
}
