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
//! - `Balance`: an org's prepaid account, `debited` of `credited`; nothing refills it (the control
//!   plane raises `credited`). The in-process store takes `credited` from the algorithm (built per
//!   org from `balances:` each config version); Redis keeps it in the account's hash (`balance`).
//!
//! The Redis backend (`redis.rs`) runs the same rules in Lua, in floating point.

use super::calendar;

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
    /// A prepaid balance; `credited` is the org's (the in-process store's source of it).
    Balance {
        credited: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Leaky { tat: u128 },
    Token { level: u128, at: Nanos },
    Window { start: Nanos, used: u64 },
    Concurrency { inflight: u64 },
    Balance { debited: u64 },
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

/// Per mille: the denominator of `ReservePermille`.
const PERMILLE: u128 = 1000;

impl Algorithm {
    /// The state of a bucket nobody has used.
    pub fn fresh(&self, now: Nanos) -> State {
        match self {
            Algorithm::Leaky { rate, .. } => State::Leaky {
                tat: u128::from(now) * u128::from(*rate),
            },
            Algorithm::Token {
                capacity,
                period_ns,
                ..
            } => State::Token {
                level: u128::from(*capacity) * u128::from(*period_ns),
                at: now,
            },
            Algorithm::Window { window, tz, .. } => State::Window {
                start: calendar::start(*window, *tz, now),
                used: 0,
            },
            Algorithm::Concurrency { .. } => State::Concurrency { inflight: 0 },
            Algorithm::Balance { .. } => State::Balance { debited: 0 },
        }
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
        let keep = keep(reserve);
        match (self, self.coerce(st, now)) {
            (
                Algorithm::Leaky {
                    rate,
                    period_ns,
                    burst,
                    shape_max_wait_ns,
                },
                State::Leaky { tat },
            ) => {
                let l = Leaky::new(*rate, *period_ns, *burst);
                l.take(tat, now, cost, keep, *shape_max_wait_ns)
            }
            (
                Algorithm::Token {
                    capacity,
                    rate,
                    period_ns,
                },
                State::Token { level, at },
            ) => Token::new(*capacity, *rate, *period_ns).take(level, at, now, cost, keep),
            (
                Algorithm::Window {
                    limit,
                    window,
                    tz,
                    soft,
                },
                State::Window { start, used },
            ) => Window::new(*limit, *window, *tz, *soft).take(start, used, now, cost, keep),
            (Algorithm::Concurrency { limit }, State::Concurrency { inflight }) => {
                Concurrency { limit: *limit }.take(inflight, cost, keep)
            }
            (Algorithm::Balance { credited }, State::Balance { debited }) => {
                balance_take(*credited, debited, cost)
            }
            // `coerce` returns the algorithm's own state variant.
            (_, st) => Err(Deny {
                retry_after_ns: 0,
                never_fits: true,
                status: self.status(&st, now),
            }),
        }
    }

    /// Whether `take` can ever admit `cost` for a caller with `reserve`: the same test as its
    /// `never_fits`, without a bucket's state (a soft window admits anything).
    pub fn can_ever_fit(&self, cost: u64, reserve: ReservePermille) -> bool {
        let keep = keep(reserve);
        let within = |cap: u64| u128::from(cost) * PERMILLE <= u128::from(cap) * keep;
        match self {
            Algorithm::Leaky { rate, burst, .. } => *rate > 0 && within(*burst),
            Algorithm::Token { capacity, .. } => within(*capacity),
            Algorithm::Window {
                limit, soft: false, ..
            } => within(*limit),
            Algorithm::Window { soft: true, .. } => true,
            Algorithm::Concurrency { limit } => within(*limit),
            // The control plane may credit more at any time.
            Algorithm::Balance { .. } => true,
        }
    }

    /// Settlement: `delta > 0` charges more (may overdraw; never refused), `delta < 0` gives units
    /// back (never above capacity; for `Concurrency`, −1 releases the request's slot).
    ///
    /// Overdraw: a leaky bucket remembers debt (`tat` moves past the burst, so later requests wait
    /// it out); a token bucket's level clamps at 0 (the debt beyond an empty bucket is forgotten);
    /// a window's `used` may exceed its limit.
    pub fn adjust(&self, st: &State, now: Nanos, delta: i64) -> State {
        let st = self.coerce(st, now);
        let amount = delta.unsigned_abs();
        let charge = delta > 0;
        match (self, st) {
            (
                Algorithm::Leaky {
                    rate,
                    period_ns,
                    burst,
                    ..
                },
                State::Leaky { tat },
            ) => State::Leaky {
                tat: Leaky::new(*rate, *period_ns, *burst).adjust(tat, now, charge, amount),
            },
            (
                Algorithm::Token {
                    capacity,
                    rate,
                    period_ns,
                },
                State::Token { level, at },
            ) => Token::new(*capacity, *rate, *period_ns).adjust(level, at, now, charge, amount),
            (Algorithm::Window { window, tz, .. }, State::Window { start, used }) => {
                let w = roll(*window, *tz, start, used, now);
                State::Window {
                    start: w.start,
                    used: settle(w.used, charge, amount),
                }
            }
            (Algorithm::Concurrency { .. }, State::Concurrency { inflight }) => {
                State::Concurrency {
                    inflight: settle(inflight, charge, amount),
                }
            }
            (Algorithm::Balance { .. }, State::Balance { debited }) => State::Balance {
                debited: settle(debited, charge, amount),
            },
            (_, st) => st,
        }
    }

    pub fn status(&self, st: &State, now: Nanos) -> Status {
        match (self, self.coerce(st, now)) {
            (
                Algorithm::Leaky {
                    rate,
                    period_ns,
                    burst,
                    ..
                },
                State::Leaky { tat },
            ) => Leaky::new(*rate, *period_ns, *burst).status(tat, now),
            (
                Algorithm::Token {
                    capacity,
                    rate,
                    period_ns,
                },
                State::Token { level, at },
            ) => Token::new(*capacity, *rate, *period_ns).status(level, at, now),
            (
                Algorithm::Window {
                    limit, window, tz, ..
                },
                State::Window { start, used },
            ) => {
                let w = roll(*window, *tz, start, used, now);
                Status {
                    limit: *limit,
                    remaining: limit.saturating_sub(w.used),
                    reset_ns: w.end.saturating_sub(now),
                }
            }
            (Algorithm::Concurrency { limit }, State::Concurrency { inflight }) => Status {
                limit: *limit,
                remaining: limit.saturating_sub(inflight),
                reset_ns: 0,
            },
            (Algorithm::Balance { credited }, State::Balance { debited }) => {
                balance_status(*credited, debited)
            }
            (_, _) => Status {
                limit: 0,
                remaining: 0,
                reset_ns: 0,
            },
        }
    }

    /// The state is indistinguishable from `fresh(now)`: the bucket may be evicted without loss.
    pub fn is_idle(&self, st: &State, now: Nanos) -> bool {
        match (self, st) {
            (Algorithm::Leaky { rate, .. }, State::Leaky { tat }) => {
                *tat <= u128::from(now) * u128::from(*rate)
            }
            (
                Algorithm::Token {
                    capacity,
                    rate,
                    period_ns,
                },
                State::Token { level, at },
            ) => {
                let t = Token::new(*capacity, *rate, *period_ns);
                t.refill(*level, *at, now).0 >= t.full()
            }
            (Algorithm::Window { window, tz, .. }, State::Window { start, used }) => {
                *used == 0 || calendar::start(*window, *tz, now) > *start
            }
            (Algorithm::Concurrency { .. }, State::Concurrency { inflight }) => *inflight == 0,
            (Algorithm::Balance { .. }, State::Balance { debited }) => *debited == 0,
            // A state of another algorithm is replaced by a fresh one on its next use anyway.
            _ => true,
        }
    }

    /// `st` if it belongs to this algorithm, else a fresh state (a key reused by another algorithm).
    fn coerce(&self, st: &State, now: Nanos) -> State {
        let same = matches!(
            (self, st),
            (Algorithm::Leaky { .. }, State::Leaky { .. })
                | (Algorithm::Token { .. }, State::Token { .. })
                | (Algorithm::Window { .. }, State::Window { .. })
                | (Algorithm::Concurrency { .. }, State::Concurrency { .. })
                | (Algorithm::Balance { .. }, State::Balance { .. })
        );
        if same {
            *st
        } else {
            self.fresh(now)
        }
    }
}

/// `1000 − reserve`: the per-mille share of the capacity a caller may use.
fn keep(reserve: ReservePermille) -> u128 {
    PERMILLE - u128::from(reserve.min(1000))
}

/// `⌈a / b⌉`, 0 when `b` is 0. Uses 64-bit division when both fit (u128 division is a slow libcall).
fn ceil_div(a: u128, b: u128) -> u128 {
    match (u64::try_from(a), u64::try_from(b)) {
        (_, Ok(0)) => 0,
        (Ok(a), Ok(b)) => u128::from(a.div_ceil(b)),
        _ if b == 0 => 0,
        _ => a.div_ceil(b),
    }
}

/// `⌊a / b⌋`, 0 when `b` is 0; 64-bit division when both fit.
fn floor_div(a: u128, b: u128) -> u128 {
    match (u64::try_from(a), u64::try_from(b)) {
        (_, Ok(0)) => 0,
        (Ok(a), Ok(b)) => u128::from(a / b),
        _ if b == 0 => 0,
        _ => a / b,
    }
}

fn clamp_u64(x: u128) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

/// The exact product of two `u64`s (always fits a `u128`).
fn wide(a: u64, b: u64) -> u128 {
    u128::from(a) * u128::from(b)
}

/// A counter after a settlement: `amount` more when `charge`, else `amount` fewer (floored at 0).
#[inline]
fn settle(count: u64, charge: bool, amount: u64) -> u64 {
    if charge {
        count.saturating_add(amount)
    } else {
        count.saturating_sub(amount)
    }
}

/// GCRA in units of ns × rate: one unit of cost is `period` of those.
struct Leaky {
    rate: u64,
    period: u64,
    burst: u64,
}

impl Leaky {
    fn new(rate: u64, period: u64, burst: u64) -> Self {
        Self {
            rate,
            period,
            burst,
        }
    }

    fn take(
        &self,
        tat: u128,
        now: Nanos,
        cost: u64,
        keep: u128,
        shape_max_wait_ns: Option<u64>,
    ) -> Result<(State, Admit), Deny> {
        if self.rate == 0 {
            // Nothing ever drains: a misconfigured bucket admits nothing.
            return Err(Deny {
                retry_after_ns: 0,
                never_fits: true,
                status: self.status(tat, now),
            });
        }
        let now_r = wide(now, self.rate);
        let new_tat = tat.max(now_r).saturating_add(wide(cost, self.period));
        // Scaled by 1000 so the reserve's share is exact.
        let need = (new_tat - now_r).saturating_mul(PERMILLE);
        let allowed = wide(self.burst, self.period).saturating_mul(keep);
        let admit = |delay_ns: u64| {
            Ok((
                State::Leaky { tat: new_tat },
                Admit {
                    delay_ns,
                    soft_exceeded: false,
                    status: self.status(new_tat, now),
                },
            ))
        };
        if need <= allowed {
            return admit(0);
        }
        let never_fits = u128::from(cost) * PERMILLE > u128::from(self.burst) * keep;
        if never_fits {
            return Err(Deny {
                retry_after_ns: 0,
                never_fits,
                status: self.status(tat, now),
            });
        }
        // It fits once now·rate has grown by (need − allowed)/1000.
        let wait = clamp_u64(ceil_div(need - allowed, u128::from(self.rate) * PERMILLE));
        match shape_max_wait_ns {
            Some(max_wait) if wait <= max_wait => admit(wait),
            _ => Err(Deny {
                retry_after_ns: wait,
                never_fits,
                status: self.status(tat, now),
            }),
        }
    }

    fn adjust(&self, tat: u128, now: Nanos, charge: bool, amount: u64) -> u128 {
        let now_r = wide(now, self.rate);
        let units = wide(amount, self.period);
        if charge {
            tat.max(now_r).saturating_add(units)
        } else {
            tat.saturating_sub(units).max(now_r)
        }
    }

    fn status(&self, tat: u128, now: Nanos) -> Status {
        let limit = self.burst;
        if self.rate == 0 {
            return Status {
                limit,
                remaining: 0,
                reset_ns: 0,
            };
        }
        let excess = tat.saturating_sub(wide(now, self.rate));
        let remaining = if self.period == 0 {
            limit
        } else {
            clamp_u64(floor_div(
                wide(self.burst, self.period).saturating_sub(excess),
                u128::from(self.period),
            ))
        };
        Status {
            limit,
            remaining,
            reset_ns: clamp_u64(ceil_div(excess, u128::from(self.rate))),
        }
    }
}

/// Token bucket in units of tokens × period.
struct Token {
    capacity: u64,
    rate: u64,
    period: u64,
}

impl Token {
    fn new(capacity: u64, rate: u64, period: u64) -> Self {
        Self {
            capacity,
            rate,
            period,
        }
    }

    fn full(&self) -> u128 {
        wide(self.capacity, self.period)
    }

    /// The level at `now`; the clock never goes back (`at` is monotonic).
    fn refill(&self, level: u128, at: Nanos, now: Nanos) -> (u128, Nanos) {
        let level = level
            .saturating_add(wide(now.saturating_sub(at), self.rate))
            .min(self.full());
        (level, at.max(now))
    }

    fn take(
        &self,
        level: u128,
        at: Nanos,
        now: Nanos,
        cost: u64,
        keep: u128,
    ) -> Result<(State, Admit), Deny> {
        let (level, at) = self.refill(level, at, now);
        let units = wide(cost, self.period);
        let full = self.full();
        // level − units ≥ full·reserve/1000, scaled by 1000.
        let need = units
            .saturating_mul(PERMILLE)
            .saturating_add(full.saturating_mul(PERMILLE - keep));
        let have = level.saturating_mul(PERMILLE);
        if have >= need {
            let level = level - units;
            return Ok((
                State::Token { level, at },
                Admit {
                    delay_ns: 0,
                    soft_exceeded: false,
                    status: self.status(level, at, now),
                },
            ));
        }
        let never_fits =
            self.rate == 0 || u128::from(cost) * PERMILLE > u128::from(self.capacity) * keep;
        Err(Deny {
            retry_after_ns: if never_fits {
                0
            } else {
                clamp_u64(ceil_div(need - have, u128::from(self.rate) * PERMILLE))
            },
            never_fits,
            status: self.status(level, at, now),
        })
    }

    /// Settlement: a charge may empty the bucket (the debt beyond empty is forgotten); a refund
    /// never fills it above capacity.
    fn adjust(&self, level: u128, at: Nanos, now: Nanos, charge: bool, amount: u64) -> State {
        let (level, at) = self.refill(level, at, now);
        let units = wide(amount, self.period);
        let level = if charge {
            level.saturating_sub(units)
        } else {
            level.saturating_add(units).min(self.full())
        };
        State::Token { level, at }
    }

    fn status(&self, level: u128, at: Nanos, now: Nanos) -> Status {
        let (level, _) = self.refill(level, at, now);
        Status {
            limit: self.capacity,
            remaining: if self.period == 0 {
                self.capacity
            } else {
                clamp_u64(floor_div(level, u128::from(self.period)))
            },
            reset_ns: clamp_u64(ceil_div(self.full() - level, u128::from(self.rate))),
        }
    }
}

/// A calendar quota: `used` of `limit` units in the current window; `soft` admits over the limit.
struct Window {
    limit: u64,
    window: CalendarWindow,
    tz: chrono_tz::Tz,
    soft: bool,
}

impl Window {
    fn new(limit: u64, window: CalendarWindow, tz: chrono_tz::Tz, soft: bool) -> Self {
        Self {
            limit,
            window,
            tz,
            soft,
        }
    }

    fn take(
        &self,
        start: Nanos,
        used: u64,
        now: Nanos,
        cost: u64,
        keep: u128,
    ) -> Result<(State, Admit), Deny> {
        let w = roll(self.window, self.tz, start, used, now);
        let reset_ns = w.end.saturating_sub(now);
        let after = w.used.saturating_add(cost);
        let admit = |soft_exceeded: bool| {
            Ok((
                State::Window {
                    start: w.start,
                    used: after,
                },
                Admit {
                    delay_ns: 0,
                    soft_exceeded,
                    status: self.status(after, reset_ns),
                },
            ))
        };
        if self.soft {
            return admit(after > self.limit);
        }
        let allowed = u128::from(self.limit) * keep;
        if (u128::from(w.used) + u128::from(cost)) * PERMILLE <= allowed {
            return admit(false);
        }
        let never_fits = u128::from(cost) * PERMILLE > allowed;
        Err(Deny {
            // Waiting for the window to roll cannot help a cost over the whole limit.
            retry_after_ns: if never_fits { 0 } else { reset_ns },
            never_fits,
            status: self.status(w.used, reset_ns),
        })
    }

    #[inline]
    fn status(&self, used: u64, reset_ns: u64) -> Status {
        Status {
            limit: self.limit,
            remaining: self.limit.saturating_sub(used),
            reset_ns,
        }
    }
}

/// In-flight requests against `limit`; nothing refills, a finished request gives its unit back.
struct Concurrency {
    limit: u64,
}

impl Concurrency {
    fn take(&self, inflight: u64, cost: u64, keep: u128) -> Result<(State, Admit), Deny> {
        let allowed = u128::from(self.limit) * keep;
        if (u128::from(inflight) + u128::from(cost)) * PERMILLE <= allowed {
            let after = inflight.saturating_add(cost);
            return Ok((
                State::Concurrency { inflight: after },
                Admit {
                    delay_ns: 0,
                    soft_exceeded: false,
                    status: self.status(after),
                },
            ));
        }
        Err(Deny {
            // Slots come back only when requests finish: no time to wait for.
            retry_after_ns: 0,
            never_fits: u128::from(cost) * PERMILLE > allowed,
            status: self.status(inflight),
        })
    }

    #[inline]
    fn status(&self, inflight: u64) -> Status {
        Status {
            limit: self.limit,
            remaining: self.limit.saturating_sub(inflight),
            reset_ns: 0,
        }
    }
}

/// A prepaid balance: the cost fits when `debited + cost ≤ credited`. No reserve applies (a balance
/// is the org's own money, not a shared pool), and a refusal names no time to wait: only a credit
/// helps.
fn balance_take(credited: u64, debited: u64, cost: u64) -> Result<(State, Admit), Deny> {
    let after = debited.saturating_add(cost);
    if after <= credited {
        return Ok((
            State::Balance { debited: after },
            Admit {
                delay_ns: 0,
                soft_exceeded: false,
                status: balance_status(credited, after),
            },
        ));
    }
    Err(Deny {
        retry_after_ns: 0,
        never_fits: false,
        status: balance_status(credited, debited),
    })
}

fn balance_status(credited: u64, debited: u64) -> Status {
    Status {
        limit: credited,
        remaining: credited.saturating_sub(debited),
        reset_ns: 0,
    }
}

/// A window state brought up to `now`: `used` resets when the calendar window rolled.
struct Rolled {
    start: Nanos,
    used: u64,
    end: Nanos,
}

fn roll(window: CalendarWindow, tz: chrono_tz::Tz, start: Nanos, used: u64, now: Nanos) -> Rolled {
    let (current, end) = calendar::bounds(window, tz, now);
    if current > start {
        Rolled {
            start: current,
            used: 0,
            end,
        }
    } else {
        // Same window (or a clock behind the stored one: keep the usage).
        Rolled { start, used, end }
    }
}

#[cfg(test)]
#[path = "algo_tests.rs"]
mod tests;
