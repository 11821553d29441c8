//! Unit tests of the algorithms (exact arithmetic, windows, reserve, shaping).
#![allow(clippy::unwrap_used, clippy::panic)]
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
fn take(a: &Algorithm, st: &mut State, now: Nanos, cost: u64, reserve: u32) -> Result<Admit, Deny> {
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

#[test]
fn can_ever_fit_agrees_with_a_fresh_buckets_never_fits() {
    let window = |soft| Algorithm::Window {
        limit: 1000,
        window: CalendarWindow::Day,
        tz: chrono_tz::UTC,
        soft,
    };
    let algos = [
        leaky(10, SEC, 1000),
        token(1000, 10, SEC),
        window(false),
        window(true),
        Algorithm::Concurrency { limit: 1000 },
        leaky(0, SEC, 1000),
    ];
    for a in &algos {
        for reserve in [0, 300, 1000] {
            for cost in [0, 1, 699, 700, 701, 999, 1000, 1001, u64::MAX] {
                let fresh = a.fresh(T0);
                let never = match a.take(&fresh, T0, cost, reserve) {
                    Ok(_) => false,
                    Err(d) => d.never_fits,
                };
                assert_eq!(
                    a.can_ever_fit(cost, reserve),
                    !never,
                    "{a:?} cost {cost} reserve {reserve}"
                );
            }
        }
    }
}

#[test]
fn window_step_denies_with_status_before_the_cost_and_retry_at_the_roll() {
    let w = Window::new(10, CalendarWindow::Day, chrono_tz::America::New_York, false);
    let now = utc("2024-06-01T12:00:00Z");
    let start = calendar::start(CalendarWindow::Day, chrono_tz::America::New_York, now);
    let end = utc("2024-06-02T04:00:00Z");
    let deny = w.take(start, 8, now, 3, PERMILLE).unwrap_err();
    assert!(!deny.never_fits);
    assert_eq!(deny.retry_after_ns, end - now);
    assert_eq!(
        deny.status,
        Status {
            limit: 10,
            remaining: 2,
            reset_ns: end - now
        }
    );
    // A stale window rolls first: the same cost fits in the new day.
    let yesterday = start - 24 * 3600 * SEC;
    let (st, admit) = w.take(yesterday, 8, now, 3, PERMILLE).unwrap();
    assert_eq!(st, State::Window { start, used: 3 });
    assert_eq!(admit.status.remaining, 7);
}

#[test]
fn concurrency_step_never_waits() {
    let c = Concurrency { limit: 4 };
    let (st, admit) = c.take(3, 1, PERMILLE).unwrap();
    assert_eq!(st, State::Concurrency { inflight: 4 });
    assert_eq!(admit.status.remaining, 0);
    let deny = c.take(4, 1, PERMILLE).unwrap_err();
    assert_eq!((deny.retry_after_ns, deny.never_fits), (0, false));
    assert_eq!(deny.status.remaining, 0);
}

#[test]
fn settle_charges_and_refunds_without_wrapping() {
    assert_eq!(settle(5, true, 3), 8);
    assert_eq!(settle(5, false, 3), 2);
    assert_eq!(settle(5, false, 9), 0);
    assert_eq!(settle(u64::MAX, true, 1), u64::MAX);
}

#[test]
fn token_step_adjust_refills_before_settling() {
    // 10 tokens, 1 per second; empty at T0, 2 refilled by T0 + 2s.
    let t = Token::new(10, 1, SEC);
    let st = t.adjust(0, T0, T0 + 2 * SEC, true, 1);
    assert_eq!(
        st,
        State::Token {
            level: u128::from(SEC),
            at: T0 + 2 * SEC
        }
    );
    let st = t.adjust(0, T0, T0 + 2 * SEC, false, 100);
    assert_eq!(
        st,
        State::Token {
            level: t.full(),
            at: T0 + 2 * SEC
        }
    );
}

#[test]
fn balance_admits_within_credited_and_never_refills() {
    let a = Algorithm::Balance { credited: 100 };
    let mut st = a.fresh(T0);
    assert!(a.is_idle(&st, T0));
    let admit = take(&a, &mut st, T0, 60, 0).unwrap();
    assert_eq!(admit.status.remaining, 40);
    // The reserve does not apply to a balance; time does not refill it.
    assert!(take(&a, &mut st, T0, 40, 500).is_ok());
    let deny = take(&a, &mut st, T0 + 3_600 * SEC, 1, 0).unwrap_err();
    assert_eq!((deny.retry_after_ns, deny.never_fits), (0, false));
    assert_eq!(st, State::Balance { debited: 100 });
    // Settle down gives back (floored at 0), up overdraws.
    st = a.adjust(&st, T0, -30);
    assert_eq!(st, State::Balance { debited: 70 });
    st = a.adjust(&st, T0, 50);
    assert_eq!(a.status(&st, T0).remaining, 0);
    st = a.adjust(&st, T0, -500);
    assert_eq!(st, State::Balance { debited: 0 });
    // A credit raised mid-flight (a new algorithm) applies to the same state.
    let raised = Algorithm::Balance { credited: 1000 };
    st = State::Balance { debited: 100 };
    assert!(take(&raised, &mut st, T0, 900, 0).is_ok());
    assert!(raised.can_ever_fit(u64::MAX, 0));
}
