use super::*;
use crate::algo::Deny;
use std::sync::atomic::AtomicU8;

const T0: Nanos = 1_700_000_000_000_000_000;

// ---- the breaker, on an injected clock ----

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Paused-clock durations, within the timer's 1 ms resolution.
fn assert_about(elapsed: Duration, expected: Duration, call: usize) {
    assert!(
        elapsed >= expected && elapsed <= expected + ms(1),
        "call {call}: {elapsed:?}, expected {expected:?}"
    );
}

#[test]
fn breaker_opens_after_consecutive_failures_only() {
    let t = Instant::now();
    let mut b = Breaker::new(3, ms(500));
    for _ in 0..2 {
        assert_eq!(b.acquire(t), Permit::Call);
        assert_eq!(b.on_failure(Permit::Call, t), None);
    }
    // A success resets the count.
    assert_eq!(b.on_success(Permit::Call), None);
    for _ in 0..2 {
        b.on_failure(Permit::Call, t);
    }
    assert_eq!(b.state(t), BreakerState::Closed);
    assert_eq!(b.on_failure(Permit::Call, t), Some(Transition::Tripped));
    assert_eq!(b.state(t), BreakerState::Open);
    assert_eq!(b.acquire(t + ms(499)), Permit::Reject);
}

#[test]
fn breaker_half_open_lets_one_probe_through() {
    let t = Instant::now();
    let mut b = Breaker::new(1, ms(500));
    b.on_failure(Permit::Call, t);
    let later = t + ms(500);
    assert_eq!(b.state(later), BreakerState::HalfOpen);
    assert_eq!(b.acquire(later), Permit::Probe);
    assert_eq!(b.acquire(later), Permit::Reject, "only one probe at a time");
    assert_eq!(b.on_success(Permit::Probe), Some(Transition::Recovered));
    assert_eq!(b.state(later), BreakerState::Closed);
    assert_eq!(b.acquire(later), Permit::Call);
}

#[test]
fn breaker_failed_probe_doubles_the_open_period_up_to_the_cap() {
    let mut t = Instant::now();
    let mut b = Breaker::new(1, ms(500));
    b.on_failure(Permit::Call, t);
    let mut expected = ms(500);
    for _ in 0..8 {
        t += b.open_for();
        assert_eq!(b.acquire(t), Permit::Probe);
        expected = (expected * 2).min(MAX_OPEN_FOR);
        assert_eq!(
            b.on_failure(Permit::Probe, t),
            Some(Transition::Reopened { open_for: expected })
        );
        assert_eq!(b.acquire(t + expected - ms(1)), Permit::Reject);
    }
    assert_eq!(b.open_for(), MAX_OPEN_FOR);
    // Recovery resets the period.
    t += b.open_for();
    assert_eq!(b.acquire(t), Permit::Probe);
    b.on_success(Permit::Probe);
    assert_eq!(b.open_for(), ms(500));
}

#[test]
fn breaker_abandoned_probe_lets_another_probe() {
    let t = Instant::now();
    let mut b = Breaker::new(1, ms(10));
    b.on_failure(Permit::Call, t);
    let later = t + ms(10);
    assert_eq!(b.acquire(later), Permit::Probe);
    b.on_abandoned(Permit::Probe);
    assert_eq!(b.acquire(later), Permit::Probe);
}

#[test]
fn breaker_ignores_late_answers_from_before_a_trip() {
    let t = Instant::now();
    let mut b = Breaker::new(1, ms(100));
    b.on_failure(Permit::Call, t);
    // Calls admitted while closed finish after the trip: they do not close or re-trip it.
    assert_eq!(b.on_success(Permit::Call), None);
    assert_eq!(b.on_failure(Permit::Call, t), None);
    assert_eq!(b.state(t), BreakerState::Open);
}

// ---- Guarded over a fake store ----

const OK: u8 = 0;
const FAIL: u8 = 1;
const HANG: u8 = 2;

/// Admits everything with a recognisable status, fails, or never answers.
#[derive(Default)]
struct Fake {
    mode: AtomicU8,
    calls: AtomicU64,
}

impl Fake {
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
    async fn answer<T>(&self, ok: T) -> Result<T, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.mode.load(Ordering::SeqCst) {
            OK => Ok(ok),
            FAIL => Err(StoreError::Unavailable("connection refused".into())),
            _ => std::future::pending().await,
        }
    }
}

const PRIMARY_STATUS: Status = Status {
    limit: 999,
    remaining: 999,
    reset_ns: 7,
};

#[async_trait]
impl Store for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn take(&self, _now: Nanos, charges: &[Charge]) -> Result<Taken, StoreError> {
        let admit = Admit {
            delay_ns: 0,
            soft_exceeded: false,
            status: PRIMARY_STATUS,
        };
        self.answer(Taken::Admitted(vec![admit; charges.len()]))
            .await
    }
    async fn adjust(&self, _now: Nanos, _adjusts: &[Adjust]) -> Result<(), StoreError> {
        self.answer(()).await
    }
}

fn charge(key: &str, algo: Algorithm, on_error: OnStoreError) -> Charge {
    Charge {
        key: key.into(),
        algo: Arc::new(algo),
        cost: 1,
        reserve: 0,
        on_error,
    }
}

fn conc(limit: u64) -> Algorithm {
    Algorithm::Concurrency { limit }
}

fn guarded(fake: &Arc<Fake>, opts: GuardOptions) -> Guarded {
    Guarded::new(fake.clone(), opts)
}

fn is_primary(t: &Taken) -> bool {
    matches!(t, Taken::Admitted(a) if a.iter().all(|a| a.status == PRIMARY_STATUS))
}

#[tokio::test(start_paused = true)]
async fn hanging_store_costs_the_timeout_then_the_breaker_answers_at_once() {
    let fake = Arc::new(Fake::default());
    fake.set(HANG);
    let g = guarded(&fake, GuardOptions::default());
    let c = [charge("k", conc(10), OnStoreError::FailOpen)];
    for i in 0..3 {
        let start = Instant::now();
        let t = g.take(T0, &c).await.unwrap();
        assert!(!is_primary(&t));
        assert_about(start.elapsed(), ms(20), i);
    }
    let s = g.stats();
    assert_eq!(s.breaker, BreakerState::Open);
    assert!(s.degraded);
    assert_eq!(
        (s.errors_total, s.trips_total, s.fallbacks_total),
        (3, 1, 3)
    );
    assert_eq!(fake.calls(), 3);
    for _ in 0..100 {
        let start = Instant::now();
        g.take(T0, &c).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
    assert_eq!(fake.calls(), 3, "no call reaches the store while open");
    assert_eq!(g.stats().fallbacks_total, 103);
}

#[tokio::test(start_paused = true)]
async fn recovers_after_the_open_period() {
    let fake = Arc::new(Fake::default());
    fake.set(FAIL);
    let g = guarded(&fake, GuardOptions::default());
    let c = [charge("k", conc(10), OnStoreError::FailOpen)];
    for _ in 0..3 {
        g.take(T0, &c).await.unwrap();
    }
    assert_eq!(g.stats().breaker, BreakerState::Open);
    // Still down at the first probe: open again, for twice as long.
    tokio::time::advance(ms(500)).await;
    assert_eq!(g.stats().breaker, BreakerState::HalfOpen);
    assert!(!is_primary(&g.take(T0, &c).await.unwrap()));
    assert_eq!(fake.calls(), 4);
    tokio::time::advance(ms(999)).await;
    g.take(T0, &c).await.unwrap();
    assert_eq!(fake.calls(), 4, "second open period is 1 s");
    // Back up: the next probe closes the breaker.
    fake.set(OK);
    tokio::time::advance(ms(1)).await;
    assert!(is_primary(&g.take(T0, &c).await.unwrap()));
    let s = g.stats();
    assert_eq!(s.breaker, BreakerState::Closed);
    assert!(!s.degraded);
    assert!(is_primary(&g.take(T0, &c).await.unwrap()));
    assert_eq!(fake.calls(), 6);
}

#[tokio::test(start_paused = true)]
async fn healthy_store_answers_including_denials() {
    struct Denier;
    #[async_trait]
    impl Store for Denier {
        fn name(&self) -> &'static str {
            "denier"
        }
        async fn take(&self, _now: Nanos, _c: &[Charge]) -> Result<Taken, StoreError> {
            Ok(Taken::Denied {
                index: 0,
                deny: Deny {
                    retry_after_ns: 5,
                    never_fits: false,
                    status: PRIMARY_STATUS,
                },
            })
        }
        async fn adjust(&self, _now: Nanos, _a: &[Adjust]) -> Result<(), StoreError> {
            Ok(())
        }
    }
    let g = Guarded::new(Arc::new(Denier), GuardOptions::default());
    assert_eq!(g.name(), "denier");
    let c = [charge("k", conc(10), OnStoreError::FailOpen)];
    for _ in 0..5 {
        assert!(matches!(g.take(T0, &c).await, Ok(Taken::Denied { .. })));
    }
    let s = g.stats();
    assert_eq!((s.errors_total, s.fallbacks_total), (0, 0));
    assert_eq!(s.breaker, BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn fail_open_admits_unchecked_with_the_full_limit() {
    let fake = Arc::new(Fake::default());
    fake.set(FAIL);
    let g = guarded(&fake, GuardOptions::default());
    let c = [charge("k", conc(3), OnStoreError::FailOpen)];
    for _ in 0..10 {
        let Taken::Admitted(a) = g.take(T0, &c).await.unwrap() else {
            panic!("fail-open denied")
        };
        assert_eq!(
            a[0],
            Admit {
                delay_ns: 0,
                soft_exceeded: false,
                status: Status {
                    limit: 3,
                    remaining: 3,
                    reset_ns: 0
                }
            }
        );
    }
}

#[tokio::test(start_paused = true)]
async fn fail_closed_refuses_the_whole_request() {
    let fake = Arc::new(Fake::default());
    fake.set(FAIL);
    let g = guarded(&fake, GuardOptions::default());
    let c = [
        charge("a", conc(3), OnStoreError::FailOpen),
        charge("b", conc(3), OnStoreError::FailClosed),
    ];
    assert!(matches!(
        g.take(T0, &c).await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn local_limits_with_this_proxys_share_all_or_nothing() {
    let fake = Arc::new(Fake::default());
    fake.set(FAIL);
    let g = guarded(
        &fake,
        GuardOptions {
            local_share_permille: 500,
            ..GuardOptions::default()
        },
    );
    // Local share of 4 is 2; of 10 is 5.
    let c = [
        charge("open", conc(1), OnStoreError::FailOpen),
        charge("wide", conc(10), OnStoreError::Local),
        charge("narrow", conc(4), OnStoreError::Local),
    ];
    for _ in 0..2 {
        let Taken::Admitted(a) = g.take(T0, &c).await.unwrap() else {
            panic!("denied within the local share")
        };
        assert_eq!(a.len(), 3);
        assert_eq!(a[1].status.limit, 5);
        assert_eq!(a[2].status.limit, 2);
    }
    let Taken::Denied { index, .. } = g.take(T0, &c).await.unwrap() else {
        panic!("admitted over the local share")
    };
    assert_eq!(index, 2, "index in the caller's charges");
    // All or nothing: `wide` was not charged by the refused request (5 − 2 = 3 left).
    let wide = [charge("wide", conc(10), OnStoreError::Local)];
    for _ in 0..3 {
        assert!(matches!(
            g.take(T0, &wide).await.unwrap(),
            Taken::Admitted(_)
        ));
    }
    assert!(matches!(
        g.take(T0, &wide).await.unwrap(),
        Taken::Denied { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn adjusts_during_an_outage_settle_the_local_store() {
    let fake = Arc::new(Fake::default());
    fake.set(HANG);
    let g = guarded(&fake, GuardOptions::default());
    let c = [charge("slot", conc(1), OnStoreError::Local)];
    assert!(matches!(g.take(T0, &c).await.unwrap(), Taken::Admitted(_)));
    assert!(matches!(
        g.take(T0, &c).await.unwrap(),
        Taken::Denied { .. }
    ));
    let release = [Adjust {
        key: "slot".into(),
        algo: c[0].algo.clone(),
        delta: -1,
    }];
    let start = Instant::now();
    g.adjust(T0, &release).await.unwrap();
    assert_about(start.elapsed(), ms(20), 0);
    assert_eq!(g.stats().breaker, BreakerState::Open);
    assert!(matches!(g.take(T0, &c).await.unwrap(), Taken::Admitted(_)));
}

#[tokio::test(start_paused = true)]
async fn cancelled_probe_does_not_wedge_the_breaker() {
    let fake = Arc::new(Fake::default());
    fake.set(HANG);
    let g = Arc::new(guarded(
        &fake,
        GuardOptions {
            timeout: Duration::from_secs(5),
            failures_to_open: 1,
            ..GuardOptions::default()
        },
    ));
    let c = [charge("k", conc(10), OnStoreError::FailOpen)];
    g.take(T0, &c).await.unwrap();
    tokio::time::advance(ms(500)).await;
    // The probe's caller gives up before the timeout.
    let probe = tokio::time::timeout(ms(10), g.take(T0, &c)).await;
    assert!(probe.is_err());
    assert_eq!(fake.calls(), 2);
    fake.set(OK);
    assert!(is_primary(&g.take(T0, &c).await.unwrap()));
    assert_eq!(g.stats().breaker, BreakerState::Closed);
}

#[test]
fn scale_keeps_at_least_one() {
    let a = Arc::new(Algorithm::Leaky {
        rate: 10,
        period_ns: 1_000_000_000,
        burst: 3,
        shape_max_wait_ns: None,
    });
    assert_eq!(
        *scale(&a, 100),
        Algorithm::Leaky {
            rate: 1,
            period_ns: 1_000_000_000,
            burst: 1,
            shape_max_wait_ns: None
        }
    );
    assert!(Arc::ptr_eq(&scale(&a, 1000), &a));
}
