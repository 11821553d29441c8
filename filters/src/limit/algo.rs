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
            ) => {
                let w = roll(*window, *tz, start, used, now);
                let status = |used: u64| Status {
                    limit: *limit,
                    remaining: limit.saturating_sub(used),
                    reset_ns: w.end.saturating_sub(now),
                };
                let after = w.used.saturating_add(cost);
                let over = after > *limit;
                if *soft {
                    return Ok((
                        State::Window {
                            start: w.start,
                            used: after,
                        },
                        Admit {
                            delay_ns: 0,
                            soft_exceeded: over,
                            status: status(after),
                        },
                    ));
                }
                let allowed = u128::from(*limit) * keep;
                if (u128::from(w.used) + u128::from(cost)) * PERMILLE <= allowed {
                    Ok((
                        State::Window {
                            start: w.start,
                            used: after,
                        },
                        Admit {
                            delay_ns: 0,
                            soft_exceeded: false,
                            status: status(after),
                        },
                    ))
                } else {
                    let never_fits = u128::from(cost) * PERMILLE > allowed;
                    Err(Deny {
                        retry_after_ns: if never_fits {
                            0
                        } else {
                            w.end.saturating_sub(now)
                        },
                        never_fits,
                        status: status(w.used),
                    })
                }
            }
            (Algorithm::Concurrency { limit }, State::Concurrency { inflight }) => {
                let status = |inflight: u64| Status {
                    limit: *limit,
                    remaining: limit.saturating_sub(inflight),
                    reset_ns: 0,
                };
                let allowed = u128::from(*limit) * keep;
                if (u128::from(inflight) + u128::from(cost)) * PERMILLE <= allowed {
                    let after = inflight.saturating_add(cost);
                    Ok((
                        State::Concurrency { inflight: after },
                        Admit {
                            delay_ns: 0,
                            soft_exceeded: false,
                            status: status(after),
                        },
                    ))
                } else {
                    Err(Deny {
                        retry_after_ns: 0,
                        never_fits: u128::from(cost) * PERMILLE > allowed,
                        status: status(inflight),
                    })
                }
            }
            // `coerce` returns the algorithm's own state variant.
            (_, st) => Err(Deny {
                retry_after_ns: 0,
                never_fits: true,
                status: self.status(&st, now),
            }),
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
            ) => {
                let t = Token::new(*capacity, *rate, *period_ns);
                let (level, at) = t.refill(level, at, now);
                let units = wide(amount, t.period);
                let level = if charge {
                    level.saturating_sub(units)
                } else {
                    level.saturating_add(units).min(t.full())
                };
                State::Token { level, at }
            }
            (Algorithm::Window { window, tz, .. }, State::Window { start, used }) => {
                let w = roll(*window, *tz, start, used, now);
                State::Window {
                    start: w.start,
                    used: if charge {
                        w.used.saturating_add(amount)
                    } else {
                        w.used.saturating_sub(amount)
                    },
                }
            }
            (Algorithm::Concurrency { .. }, State::Concurrency { inflight }) => {
                State::Concurrency {
                    inflight: if charge {
                        inflight.saturating_add(amount)
                    } else {
                        inflight.saturating_sub(amount)
                    },
                }
            }
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
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const T0: Nanos = 1_700_000_000 * SEC;

    fn leaky(rate: u64, period_ns: u64, burst: u64) -> Algorithm {
        Algorithm::Leaky {
            rate,
            period_ns,
            burst,
            shape_max_wait_ns: None,
        }
    }

    fn token(capacity: u64, rate: u64, period_ns: u64) -> Algorithm {
        Algorithm::Token {
            capacity,
            rate,
            period_ns,
        }
    }

    /// Takes and stores on success; returns the outcome.
    fn take(
        a: &Algorithm,
        st: &mut State,
        now: Nanos,
        cost: u64,
        reserve: u32,
    ) -> Result<Admit, Deny> {
        a.take(st, now, cost, reserve).map(|(s, admit)| {
            *st = s;
            admit
        })
    }

    fn utc(s: &str) -> Nanos {
        let t = chrono::DateTime::parse_from_rfc3339(s).unwrap();
        u64::try_from(t.timestamp_nanos_opt().unwrap()).unwrap()
    }

    #[test]
    fn leaky_burst_then_steady_rate() {
        let a = leaky(1, SEC, 3);
        let mut st = a.fresh(T0);
        for left in [2, 1, 0] {
            let admit = take(&a, &mut st, T0, 1, 0).unwrap();
            assert_eq!(admit.status.remaining, left);
            assert_eq!(admit.delay_ns, 0);
        }
        let deny = take(&a, &mut st, T0, 1, 0).unwrap_err();
        assert_eq!(deny.retry_after_ns, SEC);
        assert!(!deny.never_fits);
        assert_eq!(
            deny.status,
            Status {
                limit: 3,
                remaining: 0,
                reset_ns: 3 * SEC
            }
        );
        assert!(take(&a, &mut st, T0 + SEC - 1, 1, 0).is_err());
        assert!(take(&a, &mut st, T0 + SEC, 1, 0).is_ok());
        // A cost of 2 needs two more seconds of drain.
        let deny = take(&a, &mut st, T0 + SEC, 2, 0).unwrap_err();
        assert_eq!(deny.retry_after_ns, 2 * SEC);
    }

    #[test]
    fn leaky_exact_third_of_a_second() {
        let a = leaky(3, SEC, 3);
        let mut st = a.fresh(0);
        for _ in 0..3 {
            take(&a, &mut st, 0, 1, 0).unwrap();
        }
        let deny = take(&a, &mut st, 0, 1, 0).unwrap_err();
        // 1/3 s rounded up to the nanosecond: the first instant it fits.
        assert_eq!(deny.retry_after_ns, 333_333_334);
        assert!(take(&a, &mut st, 333_333_333, 1, 0).is_err());
        assert!(take(&a, &mut st, 333_333_334, 1, 0).is_ok());
        // Over a whole second exactly 3 more fit: at 2/3 s and 1 s (one already taken at 1/3 s).
        assert!(take(&a, &mut st, 666_666_667, 1, 0).is_ok());
        assert!(take(&a, &mut st, SEC, 1, 0).is_ok());
        assert!(take(&a, &mut st, SEC, 1, 0).is_err());
    }

    #[test]
    fn leaky_exact_when_rate_divides_nothing() {
        // 7 per 3 s: one unit every 3/7 s; after 3 s exactly 7 units have drained.
        let a = leaky(7, 3 * SEC, 7);
        let mut st = a.fresh(0);
        take(&a, &mut st, 0, 7, 0).unwrap();
        assert!(take(&a, &mut st, 3 * SEC - 1, 7, 0).is_err());
        assert!(take(&a, &mut st, 3 * SEC, 7, 0).is_ok());
    }

    #[test]
    fn leaky_never_fits_and_reserve() {
        let a = leaky(10, SEC, 10);
        let st = a.fresh(T0);
        let deny = a.take(&st, T0, 11, 0).unwrap_err();
        assert!(deny.never_fits);
        assert_eq!(deny.retry_after_ns, 0);
        // With 30% kept back a caller can use at most 7 of the 10.
        assert!(a.take(&st, T0, 8, 300).unwrap_err().never_fits);
        assert!(a.take(&st, T0, 7, 300).is_ok());
    }

    #[test]
    fn reserve_sheds_low_priority_first() {
        for a in [leaky(10, SEC, 10), token(10, 10, SEC)] {
            let mut st = a.fresh(T0);
            // Seven units taken: 3 (30%) remain.
            take(&a, &mut st, T0, 7, 0).unwrap();
            // A caller with reserve 300 may not go below 30%: refused.
            let deny = take(&a, &mut st, T0, 1, 300).unwrap_err();
            assert!(!deny.never_fits, "{a:?}");
            assert_eq!(deny.retry_after_ns, SEC / 10, "{a:?}");
            // Reserve 0 still gets in, down to empty.
            for _ in 0..3 {
                take(&a, &mut st, T0, 1, 0).unwrap();
            }
            assert!(take(&a, &mut st, T0, 1, 0).is_err());
            // After 0.4 s the level is 4 units: one more for the low tier (leaving exactly 3).
            assert!(
                take(&a, &mut st, T0 + 4 * SEC / 10, 1, 300).is_ok(),
                "{a:?}"
            );
            assert!(
                take(&a, &mut st, T0 + 4 * SEC / 10, 1, 300).is_err(),
                "{a:?}"
            );
        }
    }

    #[test]
    fn leaky_shaping_queues_within_max_wait() {
        let a = Algorithm::Leaky {
            rate: 1,
            period_ns: SEC,
            burst: 1,
            shape_max_wait_ns: Some(2 * SEC),
        };
        let mut st = a.fresh(T0);
        assert_eq!(take(&a, &mut st, T0, 1, 0).unwrap().delay_ns, 0);
        // Queued one and two seconds out.
        assert_eq!(take(&a, &mut st, T0, 1, 0).unwrap().delay_ns, SEC);
        let admit = take(&a, &mut st, T0, 1, 0).unwrap();
        assert_eq!(admit.delay_ns, 2 * SEC);
        assert_eq!(admit.status.remaining, 0);
        // A third would wait 3 s: refused, and the state is untouched.
        let before = st;
        let deny = take(&a, &mut st, T0, 1, 0).unwrap_err();
        // retry_after is when it fits outright (not when it could be queued).
        assert_eq!(deny.retry_after_ns, 3 * SEC);
        assert_eq!(st, before);
        // A second on, one more can be queued 2 s out.
        let admit = take(&a, &mut st, T0 + SEC, 1, 0).unwrap();
        assert_eq!(admit.delay_ns, 2 * SEC);
        // Too big ever: refused even with shaping.
        assert!(
            take(&a, &mut st, T0 + 100 * SEC, 2, 0)
                .unwrap_err()
                .never_fits
        );
    }

    #[test]
    fn leaky_adjust_remembers_debt_and_caps_refunds() {
        let a = leaky(1, SEC, 10);
        let mut st = a.fresh(T0);
        take(&a, &mut st, T0, 4, 0).unwrap();
        // Overdraw by 16: 10 units of debt beyond the burst.
        st = a.adjust(&st, T0, 16);
        assert_eq!(
            a.status(&st, T0),
            Status {
                limit: 10,
                remaining: 0,
                reset_ns: 20 * SEC
            }
        );
        let deny = a.take(&st, T0, 1, 0).unwrap_err();
        assert_eq!(deny.retry_after_ns, 11 * SEC);
        // Refund 5: the debt shrinks.
        st = a.adjust(&st, T0, -5);
        assert_eq!(a.status(&st, T0).reset_ns, 15 * SEC);
        // A huge refund never raises the bucket above full.
        st = a.adjust(&st, T0, -1_000);
        assert_eq!(
            a.status(&st, T0),
            Status {
                limit: 10,
                remaining: 10,
                reset_ns: 0
            }
        );
        assert!(a.is_idle(&st, T0));
        assert!(a.take(&st, T0, 11, 0).is_err());
    }

    #[test]
    fn leaky_is_idle_once_drained() {
        let a = leaky(2, SEC, 4);
        let mut st = a.fresh(T0);
        assert!(a.is_idle(&st, T0));
        take(&a, &mut st, T0, 3, 0).unwrap();
        assert!(!a.is_idle(&st, T0 + SEC));
        assert_eq!(a.status(&st, T0 + SEC).remaining, 3);
        assert!(a.is_idle(&st, T0 + 3 * SEC / 2));
    }

    #[test]
    fn token_burst_refill_and_retry() {
        let a = token(5, 1, SEC);
        let mut st = a.fresh(T0);
        assert!(a.is_idle(&st, T0));
        let admit = take(&a, &mut st, T0, 5, 0).unwrap();
        assert_eq!(
            admit.status,
            Status {
                limit: 5,
                remaining: 0,
                reset_ns: 5 * SEC
            }
        );
        let deny = take(&a, &mut st, T0, 2, 0).unwrap_err();
        assert_eq!(deny.retry_after_ns, 2 * SEC);
        assert!(take(&a, &mut st, T0 + 2 * SEC - 1, 2, 0).is_err());
        assert!(take(&a, &mut st, T0 + 2 * SEC, 2, 0).is_ok());
        // Refill caps at capacity.
        assert_eq!(a.status(&st, T0 + 100 * SEC).remaining, 5);
        assert!(a.is_idle(&st, T0 + 100 * SEC));
        assert!(
            take(&a, &mut st, T0 + 100 * SEC, 6, 0)
                .unwrap_err()
                .never_fits
        );
    }

    #[test]
    fn token_exact_third_of_a_second() {
        let a = token(3, 3, SEC);
        let mut st = a.fresh(0);
        take(&a, &mut st, 0, 3, 0).unwrap();
        let deny = take(&a, &mut st, 0, 1, 0).unwrap_err();
        assert_eq!(deny.retry_after_ns, 333_333_334);
        assert!(take(&a, &mut st, 333_333_333, 1, 0).is_err());
        assert!(take(&a, &mut st, 333_333_334, 1, 0).is_ok());
    }

    #[test]
    fn token_adjust_clamps_at_zero_and_capacity() {
        let a = token(10, 1, SEC);
        let mut st = a.fresh(T0);
        take(&a, &mut st, T0, 4, 0).unwrap();
        // Overdraw clamps at empty.
        st = a.adjust(&st, T0, 100);
        assert_eq!(a.status(&st, T0).remaining, 0);
        assert_eq!(a.status(&st, T0 + SEC).remaining, 1);
        // Refunds never exceed capacity.
        st = a.adjust(&st, T0 + SEC, -3);
        assert_eq!(a.status(&st, T0 + SEC).remaining, 4);
        st = a.adjust(&st, T0 + SEC, -100);
        assert_eq!(
            a.status(&st, T0 + SEC),
            Status {
                limit: 10,
                remaining: 10,
                reset_ns: 0
            }
        );
        assert!(a.is_idle(&st, T0 + SEC));
    }

    fn day_window(limit: u64, soft: bool) -> Algorithm {
        Algorithm::Window {
            limit,
            window: CalendarWindow::Day,
            tz: chrono_tz::America::New_York,
            soft,
        }
    }

    #[test]
    fn window_resets_at_local_midnight_across_dst() {
        let a = day_window(10, false);
        // Saturday 2024-03-09 20:00 EST; the next local day (the 10th) is only 23 h long.
        let sat = utc("2024-03-10T01:00:00Z");
        let mut st = a.fresh(sat);
        take(&a, &mut st, sat, 10, 0).unwrap();
        let deny = take(&a, &mut st, sat, 1, 0).unwrap_err();
        // Until midnight EST (05:00Z).
        assert_eq!(deny.retry_after_ns, 4 * 3_600 * SEC);
        assert!(!deny.never_fits);
        assert!(take(&a, &mut st, utc("2024-03-10T04:59:59Z"), 1, 0).is_err());
        let sun = utc("2024-03-10T05:00:00Z");
        let admit = take(&a, &mut st, sun, 10, 0).unwrap();
        // The DST day ends at midnight EDT: 23 h later.
        assert_eq!(
            admit.status,
            Status {
                limit: 10,
                remaining: 0,
                reset_ns: 23 * 3_600 * SEC
            }
        );
        assert!(take(&a, &mut st, utc("2024-03-11T03:59:59Z"), 1, 0).is_err());
        assert!(take(&a, &mut st, utc("2024-03-11T04:00:00Z"), 1, 0).is_ok());
    }

    #[test]
    fn window_resets_at_month_start() {
        let a = Algorithm::Window {
            limit: 100,
            window: CalendarWindow::Month,
            tz: chrono_tz::America::New_York,
            soft: false,
        };
        let jan31 = utc("2024-02-01T04:00:00Z"); // 23:00 EST on Jan 31
        let mut st = a.fresh(jan31);
        take(&a, &mut st, jan31, 100, 0).unwrap();
        let deny = take(&a, &mut st, jan31, 1, 0).unwrap_err();
        assert_eq!(deny.retry_after_ns, 3_600 * SEC);
        assert!(!a.is_idle(&st, jan31));
        let feb1 = utc("2024-02-01T05:00:00Z");
        assert!(a.is_idle(&st, feb1));
        assert_eq!(a.status(&st, feb1).remaining, 100);
        assert!(take(&a, &mut st, feb1, 100, 0).is_ok());
        assert_eq!(
            st,
            State::Window {
                start: feb1,
                used: 100
            }
        );
    }

    #[test]
    fn window_hard_reserve_and_never_fits() {
        let a = day_window(10, false);
        let now = utc("2024-06-01T12:00:00Z");
        let mut st = a.fresh(now);
        assert!(take(&a, &mut st, now, 11, 0).unwrap_err().never_fits);
        take(&a, &mut st, now, 7, 0).unwrap();
        assert!(take(&a, &mut st, now, 1, 300).is_err());
        assert!(take(&a, &mut st, now, 3, 0).is_ok());
    }

    #[test]
    fn soft_window_admits_and_flags() {
        let a = day_window(3, true);
        let now = utc("2024-06-01T12:00:00Z");
        let mut st = a.fresh(now);
        assert!(!take(&a, &mut st, now, 3, 0).unwrap().soft_exceeded);
        let admit = take(&a, &mut st, now, 2, 0).unwrap();
        assert!(admit.soft_exceeded);
        assert_eq!(admit.status.remaining, 0);
        assert_eq!(
            st,
            State::Window {
                start: utc("2024-06-01T04:00:00Z"),
                used: 5
            }
        );
    }

    #[test]
    fn window_refund_saturates() {
        let a = day_window(10, false);
        let now = utc("2024-06-01T12:00:00Z");
        let mut st = a.fresh(now);
        take(&a, &mut st, now, 4, 0).unwrap();
        st = a.adjust(&st, now, 3);
        assert_eq!(a.status(&st, now).remaining, 3);
        st = a.adjust(&st, now, -100);
        assert_eq!(a.status(&st, now).remaining, 10);
        assert!(a.is_idle(&st, now));
    }

    #[test]
    fn concurrency_limit_and_release() {
        let a = Algorithm::Concurrency { limit: 2 };
        let mut st = a.fresh(T0);
        take(&a, &mut st, T0, 1, 0).unwrap();
        take(&a, &mut st, T0, 1, 0).unwrap();
        let deny = take(&a, &mut st, T0, 1, 0).unwrap_err();
        assert_eq!((deny.retry_after_ns, deny.never_fits), (0, false));
        assert!(take(&a, &mut st, T0, 3, 0).unwrap_err().never_fits);
        st = a.adjust(&st, T0, -1);
        assert_eq!(
            a.status(&st, T0),
            Status {
                limit: 2,
                remaining: 1,
                reset_ns: 0
            }
        );
        take(&a, &mut st, T0, 1, 0).unwrap();
        st = a.adjust(&st, T0, -5);
        assert_eq!(st, State::Concurrency { inflight: 0 });
        assert!(a.is_idle(&st, T0));
        // Reserve: of 10 slots, a 30%-reserve caller gets 7.
        let a = Algorithm::Concurrency { limit: 10 };
        let mut st = a.fresh(T0);
        for _ in 0..7 {
            take(&a, &mut st, T0, 1, 300).unwrap();
        }
        assert!(take(&a, &mut st, T0, 1, 300).is_err());
        assert!(take(&a, &mut st, T0, 1, 0).is_ok());
    }

    #[test]
    fn foreign_state_is_treated_as_fresh() {
        let a = leaky(1, SEC, 2);
        let st = State::Concurrency { inflight: 9 };
        assert!(a.take(&st, T0, 2, 0).is_ok());
        assert!(a.is_idle(&st, T0));
    }

    #[test]
    fn degenerate_rates() {
        // Rate 0 leaky: refuses (nothing ever drains).
        let a = leaky(0, SEC, 5);
        assert!(a.take(&a.fresh(T0), T0, 1, 0).unwrap_err().never_fits);
        // Rate 0 token: a fixed budget.
        let a = token(2, 0, SEC);
        let mut st = a.fresh(T0);
        take(&a, &mut st, T0, 2, 0).unwrap();
        assert!(take(&a, &mut st, T0 + SEC, 1, 0).unwrap_err().never_fits);
        // Period 0: unlimited.
        let a = leaky(1, 0, 1);
        let mut st = a.fresh(T0);
        for _ in 0..10 {
            take(&a, &mut st, T0, 5, 0).unwrap();
        }
    }
}
