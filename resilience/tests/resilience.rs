//! Behaviour of the resilience primitives on injected clocks (explicit `now_ms`) and paused tokio time:
//! the breaker's state machine, the retry budget's invariant against an exact reference model, the
//! bulkhead's queue, backoff bounds and `retry-after` parsing. No sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use leaky_resilience::{
    backoff_ms, pick, retry_after_ms, Admission, Breaker, BreakerSettings, BreakerState, Bulkhead,
    BulkheadFull, Candidate, Cause, RetryBudget, SplitMix, Transition,
};
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;

use BreakerState::{Closed, HalfOpen, Open};

/// The breaker's failures here are provider-wide (a connect failure): tenant isolation is tested
/// beside the breaker (`resilience/src/breaker.rs`) and end to end in `tests/isolation.rs`.
const PROVIDER: Cause = Cause::Provider;

fn t(from: BreakerState, to: BreakerState, open_ms: u64) -> Option<Transition> {
    Some(Transition { from, to, open_ms })
}

fn consecutive(n: u32) -> BreakerSettings {
    BreakerSettings {
        consecutive_failures: n,
        failure_ratio: 0.0,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------------
// Breaker
// ---------------------------------------------------------------------------------------------------

#[test]
fn breaker_opens_after_n_consecutive_failures() {
    let b = Breaker::new(consecutive(3));
    assert_eq!(b.on_failure(0, false, PROVIDER), None);
    assert_eq!(b.on_failure(1, false, PROVIDER), None);
    assert_eq!(b.on_success(2, false), None); // breaks the run
    assert_eq!(b.on_failure(3, false, PROVIDER), None);
    assert_eq!(b.on_failure(4, false, PROVIDER), None);
    assert_eq!(b.state(4), Closed);
    assert_eq!(b.on_failure(5, false, PROVIDER), t(Closed, Open, 5_000));
    assert_eq!(b.state(5), Open);
    assert_eq!(b.trips(), 1);
    assert!(!b.available(5));
    assert_eq!(
        b.try_acquire(1_005),
        (Admission::Rejected { retry_in_ms: 4_000 }, None)
    );
}

#[test]
fn breaker_ratio_rule_waits_for_min_requests() {
    let s = BreakerSettings {
        consecutive_failures: 0,
        failure_ratio: 0.5,
        min_requests: 10,
        ..Default::default()
    };
    // 4 successes + 5 failures: ratio 0.55 but only 9 outcomes.
    let b = Breaker::new(s.clone());
    for i in 0..4 {
        b.on_success(i, false);
    }
    for i in 0..5 {
        assert_eq!(b.on_failure(10 + i, false, PROVIDER), None);
    }
    assert_eq!(b.state(20), Closed);
    // The 10th outcome, a failure: 6/10 ≥ 0.5.
    assert_eq!(b.on_failure(20, false, PROVIDER), t(Closed, Open, 5_000));

    // Below the ratio with plenty of outcomes: stays closed.
    let b = Breaker::new(s);
    for i in 0..10 {
        b.on_success(i, false);
    }
    for i in 0..9 {
        assert_eq!(b.on_failure(10 + i, false, PROVIDER), None); // 9/19 < 0.5
    }
    assert_eq!(b.on_failure(30, false, PROVIDER), t(Closed, Open, 5_000)); // 10/20
}

#[test]
fn half_open_admits_exactly_the_probe_slots() {
    let b = Breaker::new(BreakerSettings {
        half_open_probes: 2,
        ..consecutive(1)
    });
    assert_eq!(b.on_failure(0, false, PROVIDER), t(Closed, Open, 5_000));
    assert_eq!(
        b.try_acquire(4_999),
        (Admission::Rejected { retry_in_ms: 1 }, None)
    );
    assert_eq!(b.state(5_000), HalfOpen); // reported, not yet transitioned
    assert!(b.available(5_000));
    assert_eq!(
        b.try_acquire(5_000),
        (Admission::Probe, t(Open, HalfOpen, 0))
    );
    assert_eq!(b.try_acquire(5_001), (Admission::Probe, None));
    assert!(!b.available(5_002));
    assert_eq!(
        b.try_acquire(5_002),
        (Admission::Rejected { retry_in_ms: 0 }, None)
    );

    // One success frees a slot but does not close (2 needed in a row).
    assert_eq!(b.on_success(5_100, true), None);
    assert_eq!(b.state(5_100), HalfOpen);
    assert_eq!(b.try_acquire(5_101), (Admission::Probe, None));
    assert_eq!(
        b.try_acquire(5_102),
        (Admission::Rejected { retry_in_ms: 0 }, None)
    );
    assert_eq!(b.on_success(5_200, true), t(HalfOpen, Closed, 0));
    assert_eq!(b.state(5_200), Closed);
    assert_eq!(b.try_acquire(5_201), (Admission::Allowed, None));
    // The third probe's late result arrives in Closed: ignored.
    assert_eq!(b.on_failure(5_300, true, PROVIDER), None);
    assert_eq!(b.state(5_300), Closed);
    assert_eq!(b.trips(), 1);
}

#[test]
fn probe_failure_reopens_with_doubled_capped_period_and_closing_resets_it() {
    let b = Breaker::new(BreakerSettings {
        open_ms: 1_000,
        max_open_ms: 3_000,
        ..consecutive(1)
    });
    let mut now = 0;
    assert_eq!(b.on_failure(now, false, PROVIDER), t(Closed, Open, 1_000));
    for expected in [2_000, 3_000, 3_000] {
        now = b_half_open_at(&b, now);
        assert_eq!(
            b.on_failure(now, true, PROVIDER),
            t(HalfOpen, Open, expected)
        );
        assert_eq!(
            b.try_acquire(now + expected - 1),
            (Admission::Rejected { retry_in_ms: 1 }, None)
        );
        now += expected;
    }
    assert_eq!(b.try_acquire(now), (Admission::Probe, t(Open, HalfOpen, 0)));
    assert_eq!(b.on_success(now, true), t(HalfOpen, Closed, 0));
    assert_eq!(
        b.on_failure(now + 1, false, PROVIDER),
        t(Closed, Open, 1_000)
    ); // reset to open_ms
    assert_eq!(b.trips(), 5);
    // And the next re-open doubles from there again.
    let now = b_half_open_at(&b, now + 1);
    assert_eq!(b.on_failure(now, true, PROVIDER), t(HalfOpen, Open, 2_000));
}

/// Takes the probe slot at the end of the current open period; returns that instant.
fn b_half_open_at(b: &Breaker, from: u64) -> u64 {
    let mut now = from;
    while !b.available(now) {
        now += 1;
    }
    assert_eq!(b.try_acquire(now).0, Admission::Probe);
    now
}

#[test]
fn window_roll_over_forgets_old_outcomes() {
    let s = BreakerSettings {
        consecutive_failures: 0,
        failure_ratio: 0.5,
        min_requests: 4,
        ..Default::default()
    };
    // 10 buckets of 1 s: at t = 9.999 s the failures of t = 0 still count...
    let b = Breaker::new(s.clone());
    for _ in 0..3 {
        b.on_failure(0, false, PROVIDER);
    }
    assert_eq!(b.on_failure(9_999, false, PROVIDER), t(Closed, Open, 5_000));
    // ...at t = 10 s they have left the window.
    let b = Breaker::new(s);
    for _ in 0..3 {
        b.on_failure(0, false, PROVIDER);
    }
    assert_eq!(b.on_failure(10_000, false, PROVIDER), None);
    assert_eq!(b.on_failure(10_001, false, PROVIDER), None);
    assert_eq!(b.on_failure(10_002, false, PROVIDER), None);
    assert_eq!(
        b.on_failure(10_003, false, PROVIDER),
        t(Closed, Open, 5_000)
    );
}

#[test]
fn stale_outcomes_do_not_corrupt_state() {
    let b = Breaker::new(consecutive(2));
    b.on_failure(0, false, PROVIDER);
    assert_eq!(b.on_failure(1, false, PROVIDER), t(Closed, Open, 5_000));
    // Requests admitted while Closed report while Open: ignored.
    assert_eq!(b.on_success(2, false), None);
    assert_eq!(b.on_failure(3, false, PROVIDER), None);
    assert_eq!(b.on_success(4, true), None); // no probe was ever admitted
    assert_eq!(b.state(4), Open);
    assert_eq!(
        b.try_acquire(4),
        (Admission::Rejected { retry_in_ms: 4_997 }, None)
    );

    assert_eq!(
        b.try_acquire(5_001),
        (Admission::Probe, t(Open, HalfOpen, 0))
    );
    // Non-probe outcomes while HalfOpen are not probe results.
    assert_eq!(b.on_failure(5_002, false, PROVIDER), None);
    assert_eq!(b.on_success(5_003, false), None);
    assert_eq!(b.state(5_003), HalfOpen);
    assert!(!b.available(5_003)); // the probe slot is still taken
                                  // A cancelled probe frees its slot; a late result for it is then ignored.
    b.on_cancel(true);
    assert_eq!(b.on_failure(5_004, true, PROVIDER), None);
    assert_eq!(b.state(5_004), HalfOpen);
    assert_eq!(b.try_acquire(5_005), (Admission::Probe, None));
    assert_eq!(b.on_success(5_006, true), t(HalfOpen, Closed, 0));
    // Closing started a fresh window and run: one failure does not trip a 2-in-a-row rule.
    assert_eq!(b.on_failure(5_007, false, PROVIDER), None);
    assert_eq!(b.trips(), 1);
}

#[test]
fn concurrent_failures_trip_once() {
    let b = Arc::new(Breaker::new(consecutive(5)));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || {
                (0..200)
                    .filter(|i| b.on_failure(*i, false, PROVIDER).is_some())
                    .count()
            })
        })
        .collect();
    let transitions: usize = threads.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(transitions, 1);
    assert_eq!(b.trips(), 1);
    assert_eq!(b.state(199), Open);
}

// ---------------------------------------------------------------------------------------------------
// Retry budget
// ---------------------------------------------------------------------------------------------------

/// Exact reference: every event with its second; the window at `now` is seconds `(now_s − W, now_s]`.
struct Reference {
    ratio: f64,
    floor: u64,
    w: u64,
    events: Vec<(u64, bool)>,
}

impl Reference {
    fn counts(&self, now_ms: u64) -> (u64, u64) {
        let s = now_ms / 1000;
        let inside = self
            .events
            .iter()
            .filter(|(es, _)| es + self.w > s && *es <= s);
        inside.fold(
            (0, 0),
            |(q, r), (_, retry)| if *retry { (q, r + 1) } else { (q + 1, r) },
        )
    }

    fn allowance(&self, requests: u64) -> u64 {
        (self.ratio * requests as f64).floor() as u64 + self.floor
    }
}

fn budget_run(seed: u64, ratio: f64, min_per_sec: u32, window_ms: u64, steps: usize) {
    let budget = RetryBudget::new(ratio, min_per_sec, window_ms);
    let w = window_ms.div_ceil(1000).max(1);
    let mut model = Reference {
        ratio,
        floor: u64::from(min_per_sec) * w,
        w,
        events: Vec::new(),
    };
    let mut rng = SplitMix::new(seed);
    let mut now = rng.below(1 << 40);
    for _ in 0..steps {
        // Mostly small steps, sometimes a gap longer than the window.
        now += if rng.below(50) == 0 {
            rng.below(3 * w * 1000)
        } else {
            rng.below(400)
        };
        if rng.below(10) < 6 {
            budget.on_request(now);
            model.events.push((now / 1000, false));
        } else {
            let (q, r) = model.counts(now);
            let expected = r < model.allowance(q);
            assert_eq!(
                budget.try_retry(now),
                expected,
                "seed {seed} at {now}: {q} requests, {r} retries"
            );
            if expected {
                model.events.push((now / 1000, true));
                // The guarantee, stated exactly: right after a grant, retries in the window ≤ allowance.
                let (q, r) = model.counts(now);
                assert!(r <= model.allowance(q));
            }
        }
        assert_eq!(budget.window_counts(now), model.counts(now));
    }
}

#[test]
fn budget_matches_reference_model_randomized() {
    let mut rng = SplitMix::new(0x5eed);
    for _ in 0..200 {
        let ratio = [0.0, 0.1, 0.2, 0.5, 1.0, 1.5][rng.below(6) as usize];
        let min = rng.below(4) as u32;
        let window_ms = [1, 999, 1_000, 2_500, 10_000][rng.below(5) as usize];
        budget_run(rng.next_u64(), ratio, min, window_ms, 500);
    }
}

proptest! {
    #[test]
    fn budget_matches_reference_model_prop(
        seed in any::<u64>(),
        ratio in 0.0f64..2.0,
        min in 0u32..5,
        window_ms in 1u64..20_000,
    ) {
        budget_run(seed, ratio, min, window_ms, 300);
    }
}

#[test]
fn budget_recovers_after_the_window() {
    let b = RetryBudget::new(0.1, 1, 10_000);
    for i in 0..100 {
        b.on_request(i * 10);
    }
    // 0.1 × 100 + 1 × 10 = 20.
    let granted = (0..50).filter(|_| b.try_retry(1_000)).count();
    assert_eq!(granted, 20);
    assert!(!b.try_retry(9_999));
    assert_eq!(b.window_counts(9_999), (100, 20));
    // Ten seconds later the window is empty: the floor alone.
    assert_eq!(b.window_counts(11_000), (0, 0));
    let granted = (0..50).filter(|_| b.try_retry(11_000)).count();
    assert_eq!(granted, 10);
}

// ---------------------------------------------------------------------------------------------------
// Bulkhead (paused time)
// ---------------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn bulkhead_full_then_queue_then_timeout() {
    let b = Arc::new(Bulkhead::new(1, 1, Duration::from_millis(100)));
    assert!(b.has_room());
    let held = b.acquire().await.unwrap();
    assert_eq!(
        (b.in_flight(), b.max_concurrent(), b.has_room()),
        (1, 1, false)
    );
    assert!(b.try_acquire().is_none());

    let start = tokio::time::Instant::now();
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.acquire().await.map(|_| ()) }
    });
    tokio::task::yield_now().await;
    assert_eq!(b.queued(), 1);
    assert_eq!(waiter.await.unwrap(), Err(BulkheadFull::QueueTimeout));
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(b.queued(), 0);
    drop(held);
    assert_eq!(b.in_flight(), 0);
    assert!(b.try_acquire().is_some());
}

#[tokio::test(start_paused = true)]
async fn bulkhead_queue_full_fails_at_once() {
    let b = Arc::new(Bulkhead::new(1, 1, Duration::from_secs(10)));
    let _held = b.try_acquire().unwrap();
    let _waiter = tokio::spawn({
        let b = b.clone();
        async move { b.acquire().await.map(|_| ()) }
    });
    tokio::task::yield_now().await;
    assert_eq!(b.queued(), 1);
    let start = tokio::time::Instant::now();
    assert_eq!(b.acquire().await.err(), Some(BulkheadFull::QueueFull));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(b.queued(), 1);
}

#[tokio::test(start_paused = true)]
async fn bulkhead_release_wakes_waiters_in_order() {
    let b = Arc::new(Bulkhead::new(1, 3, Duration::from_secs(10)));
    let held = b.try_acquire().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for id in 0..3 {
        let (b, tx) = (b.clone(), tx.clone());
        tokio::spawn(async move {
            let permit = b.acquire().await.unwrap();
            tx.send(id).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await; // hold it a little (virtual time)
            drop(permit);
        });
        tokio::task::yield_now().await; // queue in spawn order
    }
    drop(tx);
    assert_eq!(b.queued(), 3);
    drop(held);
    let mut order = Vec::new();
    while let Some(id) = rx.recv().await {
        assert_eq!(b.in_flight(), 1);
        order.push(id);
    }
    assert_eq!(order, [0, 1, 2]);
    assert_eq!(b.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn bulkhead_cancelled_waiter_leaves_the_queue() {
    let b = Arc::new(Bulkhead::new(1, 2, Duration::from_secs(10)));
    let held = b.try_acquire().unwrap();
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.acquire().await.map(|_| ()) }
    });
    tokio::task::yield_now().await;
    assert_eq!(b.queued(), 1);
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    assert_eq!(b.queued(), 0);
    // The slot it would have taken is still there for the next caller.
    drop(held);
    assert!(b.acquire().await.is_ok());
}

// ---------------------------------------------------------------------------------------------------
// Backoff and retry-after
// ---------------------------------------------------------------------------------------------------

#[test]
fn backoff_stays_in_bounds_without_overflow() {
    let mut rng = SplitMix::new(7);
    for attempt in [0, 1, 2, 3, 5, 10, 30, 63, 64, 65, 1_000, u32::MAX] {
        let cap = 100u64
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(63))
            .min(30_000);
        assert_eq!(backoff_ms(attempt, 100, 30_000, 0), 0);
        assert_eq!(
            backoff_ms(attempt, 100, 30_000, u64::MAX),
            cap,
            "attempt {attempt}"
        );
        for _ in 0..1_000 {
            assert!(backoff_ms(attempt, 100, 30_000, rng.next_u64()) <= cap);
        }
    }
    assert_eq!(backoff_ms(1, 100, 30_000, u64::MAX), 100);
    assert_eq!(backoff_ms(3, 100, 30_000, u64::MAX), 400);
    assert_eq!(backoff_ms(u32::MAX, u64::MAX, u64::MAX, u64::MAX), u64::MAX);
    // Full jitter is uniform: the mean of many draws is near cap / 2.
    let mean = (0..20_000)
        .map(|_| backoff_ms(4, 100, 30_000, rng.next_u64()))
        .sum::<u64>()
        / 20_000;
    assert!((380..=420).contains(&mean), "mean {mean}");
}

fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                http::HeaderName::from_static(k),
                http::HeaderValue::from_static(v),
            )
        })
        .collect()
}

#[test]
fn retry_after_parsing() {
    const DATE_UNIX_MS: u64 = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
    let now = DATE_UNIX_MS - 30_000;
    let ra = |pairs: &[(&'static str, &'static str)]| retry_after_ms(&headers(pairs), now);
    assert_eq!(ra(&[("retry-after", "120")]), Some(120_000));
    assert_eq!(ra(&[("retry-after", " 2 ")]), Some(2_000));
    assert_eq!(ra(&[("retry-after", "1.5")]), Some(1_500));
    assert_eq!(ra(&[("retry-after", "0")]), Some(0));
    assert_eq!(
        ra(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
        Some(30_000)
    );
    assert_eq!(
        retry_after_ms(
            &headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            DATE_UNIX_MS + 5
        ),
        Some(0)
    );
    assert_eq!(ra(&[("retry-after-ms", "250")]), Some(250));
    assert_eq!(ra(&[("retry-after-ms", "250.2")]), Some(251));
    // retry-after-ms wins; an unparsable one falls back to retry-after.
    assert_eq!(
        ra(&[("retry-after-ms", "250"), ("retry-after", "9")]),
        Some(250)
    );
    assert_eq!(
        ra(&[("retry-after-ms", "soon"), ("retry-after", "9")]),
        Some(9_000)
    );
    // Capped at one hour.
    assert_eq!(ra(&[("retry-after", "86400")]), Some(3_600_000));
    assert_eq!(ra(&[("retry-after-ms", "1e300")]), None);
    assert_eq!(
        ra(&[("retry-after-ms", "99999999999999999999999")]),
        Some(3_600_000)
    );
    assert_eq!(
        ra(&[("retry-after", "Fri, 31 Dec 2100 23:59:59 GMT")]),
        Some(3_600_000)
    );
    // Garbage and absence.
    for bad in [
        "",
        "soon",
        "-1",
        "1e3",
        "NaN",
        "inf",
        "1.2.3",
        "Wed, 32 Oct 2015 07:28:00 GMT",
    ] {
        assert_eq!(ra(&[("retry-after", bad)]), None, "{bad:?}");
    }
    assert_eq!(ra(&[]), None);
}

// ---------------------------------------------------------------------------------------------------
// Selection
// ---------------------------------------------------------------------------------------------------

fn cand(weight: u32, in_flight: u32) -> Candidate {
    Candidate {
        weight,
        in_flight,
        eligible: true,
        tried: false,
    }
}

#[test]
fn pick_follows_weights_as_load_rises() {
    let mut cands = [cand(2, 0), cand(1, 0)];
    let mut picks = [0u32; 2];
    for r in 0..300 {
        let i = pick(&cands, r).unwrap();
        picks[i] += 1;
        cands[i].in_flight += 1; // never released: load rises
    }
    assert_eq!(picks, [200, 100]);
}

#[test]
fn pick_skips_ineligible_and_prefers_untried() {
    let cands = [
        Candidate {
            eligible: false,
            ..cand(100, 0)
        },
        Candidate {
            tried: true,
            ..cand(100, 0)
        },
        cand(1, 50),
    ];
    assert_eq!(pick(&cands, 0), Some(2)); // untried beats a lighter tried one
    let only_tried = [
        Candidate {
            tried: true,
            ..cand(1, 5)
        },
        Candidate {
            tried: true,
            ..cand(1, 2)
        },
        cand(0, 0),
    ];
    assert_eq!(pick(&only_tried, 0), Some(1)); // best tried one; weight 0 is drained
    let none = [Candidate {
        eligible: false,
        ..cand(1, 0)
    }];
    assert_eq!(pick(&none, 0), None);
}

#[test]
fn pick_rotates_among_equals() {
    let cands = [cand(1, 3), cand(1, 3), cand(1, 3), cand(1, 9)];
    let picked: Vec<_> = (0..8).map(|r| pick(&cands, r).unwrap()).collect();
    assert_eq!(picked, [0, 1, 2, 0, 0, 1, 2, 0]);
}
