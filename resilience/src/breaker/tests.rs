//! The breaker's state machine on an injected clock: trip rules, tenant isolation, probe leases.

use super::*;

#[test]
fn labels() {
    assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
    assert_eq!(BreakerState::Open.gauge(), 1);
    for s in [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ] {
        assert_eq!(BreakerState::from_u8(s as u8), s);
    }
}

#[test]
fn rules_off_never_trip() {
    let b = Breaker::new(BreakerSettings {
        consecutive_failures: 0,
        failure_ratio: 0.0,
        ..Default::default()
    });
    for t in 0..1000 {
        assert_eq!(b.on_failure(t, false, Cause::Provider), None);
    }
    assert_eq!(b.state(1000), BreakerState::Closed);
}

#[test]
fn cancelled_probe_frees_its_slot() {
    let b = Breaker::new(BreakerSettings {
        consecutive_failures: 1,
        ..Default::default()
    });
    b.on_failure(0, false, Cause::Provider);
    assert_eq!(b.try_acquire(5_000).0, Admission::Probe);
    assert!(!b.available(5_000));
    b.on_cancel(true);
    assert!(b.available(5_000));
    assert_eq!(b.state(5_000), BreakerState::HalfOpen);
}

const ACME: Cause = Cause::Tenant(0x0123_4567_89ab_cdef);
const GLOBEX: Cause = Cause::Tenant(0xfedc_ba98_7654_3210);

fn three_in_a_row() -> BreakerSettings {
    BreakerSettings {
        consecutive_failures: 3,
        failure_ratio: 0.0,
        ..Default::default()
    }
}

#[test]
fn one_tenant_alone_never_trips() {
    let b = Breaker::new(three_in_a_row());
    for t in 0..1_000 {
        assert_eq!(b.on_failure(t, false, ACME), None);
    }
    assert_eq!(b.state(1_000), BreakerState::Closed);
    // A second tenant's failure in the window: the run of failures now trips.
    assert_eq!(
        b.on_failure(1_001, false, GLOBEX).map(|t| t.to),
        Some(BreakerState::Open)
    );
}

#[test]
fn the_second_tenant_must_fail_within_the_window() {
    let b = Breaker::new(three_in_a_row()); // window 10 s
    assert_eq!(b.on_failure(0, false, GLOBEX), None);
    for t in 10_000..10_005 {
        assert_eq!(b.on_failure(t, false, ACME), None, "globex left the window");
    }
    assert!(b.on_failure(10_006, false, GLOBEX).is_some());
}

#[test]
fn ratio_rule_needs_two_tenants_too() {
    let b = Breaker::new(BreakerSettings {
        consecutive_failures: 0,
        failure_ratio: 0.5,
        min_requests: 4,
        ..Default::default()
    });
    for t in 0..10 {
        assert_eq!(b.on_failure(t, false, ACME), None);
    }
    assert!(b.on_failure(10, false, GLOBEX).is_some());
}

#[test]
fn a_provider_wide_failure_in_the_window_lets_tenant_failures_trip() {
    let b = Breaker::new(three_in_a_row());
    assert_eq!(b.on_failure(0, false, Cause::Provider), None);
    assert_eq!(b.on_failure(1, false, ACME), None);
    assert!(b.on_failure(2, false, ACME).is_some());
    // Connect failures alone trip (provider-wide by nature).
    let b = Breaker::new(three_in_a_row());
    b.on_failure(0, false, Cause::Provider);
    b.on_failure(1, false, Cause::Provider);
    assert!(b.on_failure(2, false, Cause::Provider).is_some());
}

#[test]
fn min_tenants_one_trips_on_any_failures() {
    let b = Breaker::new(BreakerSettings {
        min_tenants: 1,
        ..three_in_a_row()
    });
    b.on_failure(0, false, ACME);
    b.on_failure(1, false, ACME);
    assert!(b.on_failure(2, false, ACME).is_some());
}

#[test]
fn closing_forgets_the_tenants() {
    let b = Breaker::new(BreakerSettings {
        consecutive_failures: 1,
        ..three_in_a_row()
    });
    assert_eq!(b.on_failure(0, false, ACME), None);
    assert!(b.on_failure(1, false, GLOBEX).is_some());
    assert_eq!(b.try_acquire(5_001).0, Admission::Probe);
    assert!(b.on_success(5_002, true).is_some());
    assert_eq!(b.state(5_002), BreakerState::Closed);
    assert_eq!(b.on_failure(5_003, false, ACME), None, "acme alone again");
}

#[test]
fn a_hung_probe_releases_its_slot_after_the_probe_timeout() {
    let b = Breaker::new(BreakerSettings {
        consecutive_failures: 1,
        probe_timeout_ms: 500,
        ..Default::default()
    });
    b.on_failure(0, false, Cause::Provider);
    assert_eq!(b.try_acquire(5_000).0, Admission::Probe); // hangs
    assert!(!b.available(5_499));
    assert_eq!(
        b.try_acquire(5_499).0,
        Admission::Rejected { retry_in_ms: 0 }
    );
    // Held 500 ms: released, the next request probes.
    assert!(b.available(5_500));
    assert_eq!(b.try_acquire(5_500).0, Admission::Probe);
    assert!(!b.available(5_501));
    // The second probe succeeds: closed, though the first still hangs.
    assert!(b.on_success(5_600, true).is_some());
    assert_eq!(b.try_acquire(5_601).0, Admission::Allowed);
    // The hung one's late failure arrives in Closed: ignored.
    assert_eq!(b.on_failure(60_000, true, ACME), None);
    assert_eq!(b.state(60_000), BreakerState::Closed);
}

#[test]
fn a_released_probe_still_counts_while_half_open() {
    let b = Breaker::new(BreakerSettings {
        consecutive_failures: 1,
        probe_timeout_ms: 500,
        ..Default::default()
    });
    b.on_failure(0, false, Cause::Provider);
    assert_eq!(b.try_acquire(5_000).0, Admission::Probe);
    assert_eq!(b.try_acquire(5_500).0, Admission::Probe); // the first is released
    assert!(b.on_success(5_700, true).is_some(), "a late success closes");

    let b = Breaker::new(BreakerSettings {
        consecutive_failures: 1,
        probe_timeout_ms: 500,
        ..Default::default()
    });
    b.on_failure(0, false, Cause::Provider);
    assert_eq!(b.try_acquire(5_000).0, Admission::Probe);
    assert_eq!(b.try_acquire(5_600).0, Admission::Probe);
    assert_eq!(
        b.on_failure(5_700, true, ACME).map(|t| t.to),
        Some(BreakerState::Open),
        "any probe failure re-opens"
    );
    // The other probe's outcome is stale now.
    assert_eq!(b.on_success(5_800, true), None);
    assert_eq!(b.state(5_800), BreakerState::Open);
}
