//! What an admission filter takes for one request and gives back when it ends: the [`Hold`] trait,
//! the [`Settlement`] a hold is settled with, and [`Admission`], the value `on_admit` returns.
//!
//! Filters never keep a hold in `RequestCtx`: they return it, and the proxy's request ledger owns it
//! until the request ends. The ledger settles each hold exactly once — [`Hold::settle`] when the
//! provider's usage is known before the response's last bytes go out, else [`Hold::finish`] when the
//! request ends — and a hold dropped without either releases what it took (RAII, like pingora's
//! `Inflight` guard), so a cancelled request leaks nothing.

use async_trait::async_trait;
use leaky_limit::TokenUsage;

/// How the request ended, as far as a hold is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settlement {
    /// The upstream's response status; `None` when no upstream answered.
    pub status: Option<u16>,
    /// Tokens the request used, when the route meters them.
    pub usage: Option<TokenUsage>,
}

impl Settlement {
    /// No upstream answer, or a server error: nothing was used.
    pub fn failed(&self) -> bool {
        self.status.is_none_or(|s| s >= 500)
    }
}

/// Something one request holds until it ends (a rate-limit reservation, a concurrency slot).
/// Dropped without `settle` or `finish`, it releases what it took as if nothing was used.
#[async_trait]
pub trait Hold: Send + Sync {
    /// The usage is known before the response's last bytes go out: settle now, so the caller's next
    /// request already sees it. May await a shared store.
    async fn settle(self: Box<Self>, outcome: &Settlement);

    /// The request ended without `settle` (client gone, upstream failed, no metering): settle from
    /// the completion phase, without awaiting.
    fn finish(self: Box<Self>, outcome: &Settlement);
}

/// What admission took for a request: the holds it owns from now on and what they ask of the
/// upstream request.
#[derive(Default)]
pub struct Admission {
    pub holds: Vec<Box<dyn Hold>>,
    /// The per-choice completion cap the proxy must send upstream: the request set none and a policy
    /// enforces its reservation (`enforce_max_tokens`).
    pub completion_cap: Option<u64>,
    /// The most completion tokens any hold reserved: what a request settled from its reservation is
    /// charged for its completion.
    pub reserved_completion: u64,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("holds", &self.holds.len())
            .field("completion_cap", &self.completion_cap)
            .field("reserved_completion", &self.reserved_completion)
            .finish()
    }
}

impl Admission {
    /// Adds one filter's admission to the chain's.
    pub fn merge(&mut self, other: Admission) {
        if self.holds.is_empty() {
            self.holds = other.holds; // a move: most chains hold at most one thing
        } else {
            self.holds.extend(other.holds);
        }
        self.completion_cap = match (self.completion_cap, other.completion_cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.reserved_completion = self.reserved_completion.max(other.reserved_completion);
    }

    /// One hold, nothing asked of the upstream request.
    pub fn hold(hold: Box<dyn Hold>) -> Self {
        Admission {
            holds: vec![hold],
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_admissions_keep_every_hold_the_tightest_cap_and_the_largest_reservation() {
        struct Nothing;
        #[async_trait]
        impl Hold for Nothing {
            async fn settle(self: Box<Self>, _: &Settlement) {}
            fn finish(self: Box<Self>, _: &Settlement) {}
        }
        let mut a = Admission {
            completion_cap: Some(50),
            reserved_completion: 300,
            ..Admission::hold(Box::new(Nothing))
        };
        a.merge(Admission {
            completion_cap: Some(20),
            reserved_completion: 100,
            ..Admission::hold(Box::new(Nothing))
        });
        a.merge(Admission::default());
        assert_eq!(a.holds.len(), 2);
        assert_eq!(a.completion_cap, Some(20));
        assert_eq!(a.reserved_completion, 300);
    }

    #[test]
    fn no_answer_or_a_server_error_is_a_failure() {
        let at = |status| Settlement {
            status,
            usage: None,
        };
        assert!(at(None).failed());
        assert!(at(Some(502)).failed());
        assert!(!at(Some(200)).failed());
        assert!(!at(Some(429)).failed());
    }
}
