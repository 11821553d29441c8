//! Property tests of the rate-limit algorithms against simple exact reference models.
//!
//! - Leaky and token buckets decide exactly like a "water level" reference in exact integer
//!   arithmetic (so no admission is lost to rounding, and none is gained), their `retry_after` is
//!   the first instant the reference admits, and over any interval `[t0, t1]` they admit at most
//!   `rate × (t1 − t0) / period + burst`.
//! - Refunds never raise `remaining` above the capacity.
//! - A hard calendar window admits exactly what a per-(local)-window counter admits, so never more
//!   than its limit per window.
#![allow(clippy::unwrap_used, clippy::panic)]

use chrono::{Datelike, Offset, TimeZone, Timelike};
use leaky_limit::{Algorithm, CalendarWindow, Nanos, State};
use proptest::prelude::*;

const SEC: u64 = 1_000_000_000;
const T0: Nanos = 1_700_000_000 * SEC;

#[derive(Debug, Clone, Copy)]
struct Event {
    dt: u64,
    cost: u64,
    reserve: u32,
}

fn events(max_dt: u64, max_cost: u64) -> impl Strategy<Value = Vec<Event>> {
    let ev = (
        prop_oneof![Just(0u64), 0..max_dt, 0..1_000u64],
        0..=max_cost,
        prop_oneof![Just(0u32), Just(300u32), 0..=1000u32],
    )
        .prop_map(|(dt, cost, reserve)| Event { dt, cost, reserve });
    prop::collection::vec(ev, 1..150)
}

/// Period in ns: round numbers and awkward ones.
fn period() -> impl Strategy<Value = u64> {
    prop_oneof![Just(SEC), Just(60 * SEC), Just(SEC / 1000), 1..3 * SEC]
}

/// Reference leaky bucket: `water` = occupied units × period, drains `rate` per ns.
struct RefLeaky {
    rate: u128,
    period: u128,
    burst: u128,
    water: u128,
    at: Nanos,
}

impl RefLeaky {
    fn level_at(&self, now: Nanos) -> u128 {
        self.water
            .saturating_sub(u128::from(now - self.at) * self.rate)
    }
    fn fits(&self, now: Nanos, cost: u64, reserve: u32) -> bool {
        let w = self.level_at(now) + u128::from(cost) * self.period;
        w * 1000 <= self.burst * self.period * (1000 - u128::from(reserve))
    }
    fn take(&mut self, now: Nanos, cost: u64, reserve: u32) -> bool {
        let ok = self.fits(now, cost, reserve);
        if ok {
            self.water = self.level_at(now) + u128::from(cost) * self.period;
            self.at = now;
        }
        ok
    }
}

/// Reference token bucket: `level` = tokens × period, refills `rate` per ns, capped.
struct RefToken {
    rate: u128,
    period: u128,
    capacity: u128,
    level: u128,
    at: Nanos,
}

impl RefToken {
    fn level_at(&self, now: Nanos) -> u128 {
        (self.level + u128::from(now - self.at) * self.rate).min(self.capacity * self.period)
    }
    fn fits(&self, now: Nanos, cost: u64, reserve: u32) -> bool {
        let l = self.level_at(now);
        let c = u128::from(cost) * self.period;
        l >= c && (l - c) * 1000 >= self.capacity * self.period * u128::from(reserve)
    }
    fn take(&mut self, now: Nanos, cost: u64, reserve: u32) -> bool {
        let ok = self.fits(now, cost, reserve);
        if ok {
            self.level = self.level_at(now) - u128::from(cost) * self.period;
            self.at = now;
        }
        ok
    }
}

/// Admitted cost over every interval between admissions stays within rate × span / period + burst.
fn assert_rate_bound(admitted: &[(Nanos, u64)], rate: u64, period: u64, burst: u64) {
    for i in 0..admitted.len() {
        let mut sum: u128 = 0;
        for &(t, cost) in &admitted[i..] {
            sum += u128::from(cost);
            let span = u128::from(t - admitted[i].0);
            assert!(
                sum * u128::from(period)
                    <= u128::from(rate) * span + u128::from(burst) * u128::from(period),
                "admitted {sum} in {span} ns (rate {rate}/{period} ns, burst {burst})"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn leaky_matches_exact_reference(
        rate in 1..50u64,
        period in period(),
        burst in 1..20u64,
        evs in events(2 * SEC, 8),
    ) {
        let a = Algorithm::Leaky { rate, period_ns: period, burst, shape_max_wait_ns: None };
        let mut st = a.fresh(T0);
        let mut r = RefLeaky {
            rate: rate.into(), period: period.into(), burst: burst.into(), water: 0, at: T0,
        };
        let (mut now, mut admitted) = (T0, Vec::new());
        for e in evs {
            now += e.dt;
            let expect = r.fits(now, e.cost, e.reserve);
            match a.take(&st, now, e.cost, e.reserve) {
                Ok((s, admit)) => {
                    prop_assert!(expect, "admitted what the reference refuses: {e:?} at {now}");
                    prop_assert!(r.take(now, e.cost, e.reserve));
                    prop_assert!(admit.status.remaining <= burst);
                    st = s;
                    admitted.push((now, e.cost));
                }
                Err(deny) => {
                    prop_assert!(!expect, "refused what the reference admits: {e:?} at {now}");
                    if deny.never_fits {
                        prop_assert!(u128::from(e.cost) * 1000 > u128::from(burst) * u128::from(1000 - e.reserve));
                    } else {
                        // retry_after is the first instant the reference admits.
                        let at = now + deny.retry_after_ns;
                        prop_assert!(deny.retry_after_ns > 0);
                        prop_assert!(r.fits(at, e.cost, e.reserve));
                        prop_assert!(!r.fits(at - 1, e.cost, e.reserve));
                    }
                }
            }
        }
        assert_rate_bound(&admitted, rate, period, burst);
    }

    #[test]
    fn token_matches_exact_reference(
        rate in 1..50u64,
        period in period(),
        capacity in 1..20u64,
        evs in events(2 * SEC, 8),
    ) {
        let a = Algorithm::Token { capacity, rate, period_ns: period };
        let mut st = a.fresh(T0);
        let mut r = RefToken {
            rate: rate.into(), period: period.into(), capacity: capacity.into(),
            level: u128::from(capacity) * u128::from(period), at: T0,
        };
        let (mut now, mut admitted) = (T0, Vec::new());
        for e in evs {
            now += e.dt;
            let expect = r.fits(now, e.cost, e.reserve);
            match a.take(&st, now, e.cost, e.reserve) {
                Ok((s, admit)) => {
                    prop_assert!(expect, "admitted what the reference refuses: {e:?} at {now}");
                    prop_assert!(r.take(now, e.cost, e.reserve));
                    prop_assert!(admit.status.remaining <= capacity);
                    st = s;
                    admitted.push((now, e.cost));
                }
                Err(deny) => {
                    prop_assert!(!expect, "refused what the reference admits: {e:?} at {now}");
                    if !deny.never_fits {
                        let at = now + deny.retry_after_ns;
                        prop_assert!(deny.retry_after_ns > 0);
                        prop_assert!(r.fits(at, e.cost, e.reserve));
                        prop_assert!(!r.fits(at - 1, e.cost, e.reserve));
                    }
                }
            }
        }
        assert_rate_bound(&admitted, rate, period, capacity);
    }

    #[test]
    fn refunds_never_exceed_capacity(
        kind in 0..4u8,
        ops in prop::collection::vec((0..SEC, -20i64..20, any::<bool>()), 1..100),
    ) {
        let a = match kind {
            0 => Algorithm::Leaky { rate: 3, period_ns: SEC, burst: 10, shape_max_wait_ns: None },
            1 => Algorithm::Token { capacity: 10, rate: 3, period_ns: SEC },
            2 => Algorithm::Window {
                limit: 10, window: CalendarWindow::Hour, tz: chrono_tz::Tz::UTC, soft: false,
            },
            _ => Algorithm::Concurrency { limit: 10 },
        };
        let mut st = a.fresh(T0);
        let mut now = T0;
        for (dt, delta, is_take) in ops {
            now += dt;
            if is_take {
                if let Ok((s, _)) = a.take(&st, now, delta.unsigned_abs() % 11, 0) {
                    st = s;
                }
            } else {
                st = a.adjust(&st, now, delta);
            }
            let status = a.status(&st, now);
            prop_assert_eq!(status.limit, 10);
            prop_assert!(status.remaining <= 10, "{:?} -> {:?}", st, status);
            if let State::Token { level, .. } = st {
                prop_assert!(level <= 10 * u128::from(SEC));
            }
            if a.is_idle(&st, now) {
                prop_assert_eq!(status.remaining, 10);
            }
        }
    }

    #[test]
    fn hard_window_never_exceeds_limit_per_window(
        zone in 0..6usize,
        kind in 0..3u8,
        start in 1_580_000_000u64..1_900_000_000,
        limit in 1..30u64,
        steps in prop::collection::vec((0..1_000_000u64, 0..8u64), 1..200),
    ) {
        let tz = [
            chrono_tz::Tz::UTC,
            chrono_tz::America::New_York,
            chrono_tz::Europe::Berlin,
            chrono_tz::Asia::Kolkata,
            chrono_tz::Asia::Kathmandu,
            chrono_tz::Australia::Sydney,
        ][zone];
        // Steps scaled so a run crosses several windows (and, often, a DST change).
        let (window, unit) = match kind {
            0 => (CalendarWindow::Hour, 5 * SEC / 1_000),
            1 => (CalendarWindow::Day, 100 * SEC / 1_000),
            _ => (CalendarWindow::Month, 2_000 * SEC / 1_000),
        };
        let a = Algorithm::Window { limit, window, tz, soft: false };
        // Reference: a counter per local window, identified by its local calendar fields.
        let id = |now: Nanos| {
            let t = tz.timestamp_nanos(now as i64);
            match window {
                CalendarWindow::Hour => (
                    t.year(), t.ordinal(), t.hour() as i32, t.offset().fix().local_minus_utc(),
                ),
                CalendarWindow::Day => (t.year(), t.ordinal(), 0, 0),
                CalendarWindow::Month => (t.year(), t.month0(), 0, 0),
            }
        };
        let mut used = std::collections::HashMap::new();
        let mut now = start * SEC;
        let mut st = a.fresh(now);
        for (step, cost) in steps {
            now += step * unit;
            let u: &mut u64 = used.entry(id(now)).or_default();
            let expect = *u + cost <= limit;
            match a.take(&st, now, cost, 0) {
                Ok((s, _)) => {
                    prop_assert!(expect, "admitted over the limit at {now}");
                    *u += cost;
                    st = s;
                }
                Err(deny) => {
                    prop_assert!(!expect, "refused within the limit at {now}");
                    // Retry when the window rolls: a new window id.
                    if !deny.never_fits {
                        prop_assert!(id(now + deny.retry_after_ns) != id(now));
                        prop_assert!(id(now + deny.retry_after_ns - 1) == id(now));
                    }
                }
            }
            prop_assert!(*u <= limit);
        }
    }
}
