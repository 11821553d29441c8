//! Rate-limit algorithms: pure functions of (spec, state, now, cost) on an injected clock.
//!
//! Every algorithm works in exact integer arithmetic so no admission is lost to rounding:
//! - `Leaky` (GCRA, virtual scheduling): the theoretical arrival time `tat` is kept scaled by `rate`
//!   (unit: ns × rate), so one unit advances it by exactly `period_ns`. A cost `c` fits when
//!   `max(tat, now·rate) + c·period_ns − now·rate ≤ burst·period_ns` (minus the priority reserve).
//!   With `shape_max_wait_ns`, a cost that does not fit now but would within the wait is admitted
//!   with `delay_ns` (the caller sleeps that long before forwarding).
//! - `Token`: `level` tokens scaled by `period_ns` (unit: tokens × period_ns); refills `rate` tokens
//!   per `period_ns` continuously, up to `capacity`.
//! - `Window`: a calendar quota (hour/day/month in a time zone); `used` resets when the window rolls.
//!   `soft` windows admit over the limit and flag it.
//! - `Concurrency`: `inflight` requests; a completed request gives its unit back with `adjust(-1)`.
//!
//! The Redis backend (`redis.rs`) runs the same rules in Lua, in floating point.

/// Nanoseconds since the Unix epoch: the injected clock.
pub type Nanos = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CalendarWindow {
    Hour,
    Day,
    Month,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Algorithm {
    Leaky {
        rate: u64,
        period_ns: u64,
        burst: u64,
        shape_max_wait_ns: Option<u64>,
    },
    Token {
        capacity: u64,
        rate: u64,
        period_ns: u64,
    },
    Window {
        limit: u64,
        window: CalendarWindow,
        tz: chrono_tz::Tz,
        soft: bool,
    },
    Concurrency {
        limit: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Leaky { tat: u128 },
    Token { level: u128, at: Nanos },
    Window { start: Nanos, used: u64 },
    Concurrency { inflight: u64 },
}

/// A bucket's standing, for response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again (buckets) or the window rolls (windows).
    pub reset_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admit {
    /// Shaping delay before forwarding; 0 unless a shaped leaky bucket queued the request.
    pub delay_ns: u64,
    /// A soft window went over its limit.
    pub soft_exceeded: bool,
    /// Standing after the admission.
    pub status: Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deny {
    /// Earliest time the same cost could fit (0 when it never can: see `never_fits`).
    pub retry_after_ns: u64,
    /// The cost exceeds the bucket's whole capacity (or the window's limit): waiting cannot help.
    pub never_fits: bool,
    pub status: Status,
}

/// Share of a bucket's capacity kept back from a caller, in per mille (0 = none, 300 = 30%): a
/// low-priority caller is shed while the bucket still has headroom for higher tiers.
pub type ReservePermille = u32;

impl Algorithm {
    /// The state of a bucket nobody has used.
    pub fn fresh(&self, now: Nanos) -> State {
        todo!("{now}")
    }

    /// Tries to take `cost` units. On admission returns the new state (the caller stores it);
    /// on denial the state is unchanged.
    pub fn take(
        &self,
        st: &State,
        now: Nanos,
        cost: u64,
        reserve: ReservePermille,
    ) -> Result<(State, Admit), Deny> {
        todo!("{st:?} {now} {cost} {reserve}")
    }

    /// Settlement: `delta > 0` charges more (may overdraw; never refused), `delta < 0` gives units
    /// back (never above capacity; for `Concurrency`, −1 releases the request's slot).
    pub fn adjust(&self, st: &State, now: Nanos, delta: i64) -> State {
        todo!("{st:?} {now} {delta}")
    }

    pub fn status(&self, st: &State, now: Nanos) -> Status {
        todo!("{st:?} {now}")
    }

    /// The state is indistinguishable from `fresh(now)`: the bucket may be evicted without loss.
    pub fn is_idle(&self, st: &State, now: Nanos) -> bool {
        todo!("{st:?} {now}")
    }
}
