//! The detector on hand-made minutes and on the synthetic set (event time only, no clock).

use super::synthetic::{generate, Dataset, SynthConfig};
use super::*;

const T0: i64 = 29_000_000;

fn obs(
    minute: i64,
    key: &str,
    model: &str,
    requests: u64,
    errors: u64,
    tokens: u64,
) -> Observation {
    Observation {
        ts_ms: minute * MINUTE_MS + 30_000,
        org: "acme".into(),
        key: key.into(),
        model: model.into(),
        requests,
        errors,
        tokens,
    }
}

/// A key with a slightly noisy but steady minute (deterministic wobble, no RNG needed).
fn steady(det: &mut Detector, minutes: std::ops::Range<i64>) -> Vec<Alert> {
    let mut alerts = Vec::new();
    for m in minutes {
        let wobble = (m % 7) as u64;
        alerts.extend(det.observe(&obs(
            m,
            "k1",
            "gpt-4o-mini",
            40 + wobble,
            1,
            3_000 + 50 * wobble,
        )));
    }
    alerts
}

fn key_subject() -> Subject {
    Subject {
        org: "acme".into(),
        key: Some("k1".into()),
    }
}

#[test]
fn spike_is_detected_within_two_minutes_of_its_event_time() {
    let mut det = Detector::new(Config::default());
    assert!(steady(&mut det, T0..T0 + 120).is_empty());
    let spike = T0 + 120;
    assert!(det
        .observe(&obs(spike, "k1", "gpt-4o-mini", 43, 1, 48_200))
        .is_empty());
    assert!(det
        .observe(&obs(spike + 1, "k1", "gpt-4o-mini", 43, 1, 3_100))
        .is_empty());
    // The first event two minutes after the spike closes its minute: the alert is out.
    let alerts = det.observe(&obs(spike + 2, "k1", "gpt-4o-mini", 43, 1, 3_100));
    let found: Vec<_> = alerts
        .iter()
        .filter(|a| a.subject == key_subject() && a.kind == Kind::TokenSpike)
        .collect();
    assert_eq!(found.len(), 1, "one token spike for the key: {alerts:?}");
    let a = found[0];
    assert_eq!(a.minute, spike);
    assert_eq!(a.observed, 48_200.0);
    assert!(a.score > 50.0, "{a:?}");
    assert!(
        a.explanation
            .starts_with("tokens/min 48,200 vs baseline 3,"),
        "{}",
        a.explanation
    );
    // The org sees it too; requests did not move, so no request spike.
    assert!(alerts
        .iter()
        .any(|a| a.subject.key.is_none() && a.kind == Kind::TokenSpike));
    assert!(
        alerts.iter().all(|a| a.kind == Kind::TokenSpike),
        "{alerts:?}"
    );
}

#[test]
fn no_alert_during_warm_up_nor_on_a_flat_baseline_plus_one_token() {
    let mut det = Detector::new(Config::default());
    let mut alerts = Vec::new();
    // Wild values in warm-up are learnt, not alerted.
    for m in T0..T0 + 29 {
        let tokens = if m % 5 == 0 { 20_000 } else { 1_000 };
        alerts.extend(det.observe(&obs(m, "k1", "m", 10, 0, tokens)));
    }
    assert!(alerts.is_empty(), "{alerts:?}");
    let mut flat = Detector::new(Config::default());
    for m in T0..T0 + 200 {
        alerts.extend(flat.observe(&obs(m, "k1", "m", 10, 0, 1_000)));
    }
    alerts.extend(flat.observe(&obs(T0 + 200, "k1", "m", 10, 0, 1_001)));
    alerts.extend(flat.advance(T0 + 210));
    assert!(alerts.is_empty(), "{alerts:?}");
}

#[test]
fn model_switch_is_detected_once() {
    let mut det = Detector::new(Config::default());
    let mut alerts = steady(&mut det, T0..T0 + 60);
    for m in T0 + 60..T0 + 70 {
        alerts.extend(det.observe(&obs(m, "k1", "o1-preview", 41, 1, 3_100)));
    }
    alerts.extend(det.advance(T0 + 70));
    let switches: Vec<_> = alerts
        .iter()
        .filter(|a| a.subject == key_subject())
        .collect();
    assert_eq!(switches.len(), 1, "{alerts:?}");
    let a = switches[0];
    assert_eq!((a.kind, a.minute), (Kind::ModelSwitch, T0 + 60));
    assert!(
        a.explanation.contains("o1-preview carried 100.0%"),
        "{}",
        a.explanation
    );
    assert!(
        a.explanation.contains("usually gpt-4o-mini"),
        "{}",
        a.explanation
    );
}

#[test]
fn error_rate_jump_is_detected_and_needs_enough_requests() {
    let mut det = Detector::new(Config::default());
    let mut alerts = steady(&mut det, T0..T0 + 60);
    // 3 of 4 failing is too few requests to judge.
    alerts.extend(det.observe(&obs(T0 + 60, "k1", "gpt-4o-mini", 4, 3, 300)));
    alerts.extend(det.observe(&obs(T0 + 61, "k1", "gpt-4o-mini", 40, 18, 3_000)));
    alerts.extend(det.advance(T0 + 61));
    let errs: Vec<_> = alerts
        .iter()
        .filter(|a| a.kind == Kind::ErrorRateJump)
        .collect();
    assert_eq!(errs.len(), 2, "key and org: {alerts:?}");
    assert!(errs.iter().all(|a| a.minute == T0 + 61));
    assert!(
        errs[0]
            .explanation
            .starts_with("error rate 45.0% of 40 requests"),
        "{}",
        errs[0].explanation
    );
}

#[test]
fn out_of_order_inside_the_window_is_merged_and_late_events_are_dropped() {
    let mut det = Detector::new(Config::default());
    let mut alerts = steady(&mut det, T0..T0 + 60);
    let spike = T0 + 60;
    // The spike's minute arrives in two halves around an event of the next minute.
    alerts.extend(det.observe(&obs(spike, "k1", "gpt-4o-mini", 20, 0, 1_500)));
    alerts.extend(det.observe(&obs(spike + 1, "k1", "gpt-4o-mini", 40, 1, 3_000)));
    alerts.extend(det.observe(&obs(spike, "k1", "gpt-4o-mini", 20, 0, 40_000)));
    assert!(alerts.is_empty());
    alerts.extend(det.observe(&obs(spike + 2, "k1", "gpt-4o-mini", 40, 1, 3_000)));
    let found: Vec<_> = alerts
        .iter()
        .filter(|a| a.subject == key_subject() && a.kind == Kind::TokenSpike)
        .collect();
    assert_eq!(found.len(), 1, "one token spike for the key: {alerts:?}");
    let a = found[0];
    assert_eq!((a.minute, a.observed), (spike, 41_500.0));
    // Now the spike's minute is closed: more of it is late, counted and dropped.
    assert!(det
        .observe(&obs(spike, "k1", "gpt-4o-mini", 500, 500, 1_000_000))
        .is_empty());
    assert_eq!(det.stats().late_events, 1);
    assert!(det.advance(spike + 5).is_empty());
}

#[test]
fn idle_subjects_are_evicted_and_the_subject_count_is_capped() {
    let cfg = Config {
        max_subjects: 10,
        ..Config::default()
    };
    let mut det = Detector::new(cfg);
    for i in 0..100 {
        det.observe(&obs(T0, &format!("k{i}"), "m", 1, 0, 10));
        assert!(det.stats().subjects <= 10);
    }
    assert_eq!(det.stats().subjects, 10);
    // 100 keys + their org into 10 places (the org, least recent at times, churns too).
    assert!(det.stats().evicted >= 91, "{:?}", det.stats());
    // Only k-new stays active; everything else idles past the limit and goes.
    for m in T0 + 1..T0 + 100 {
        det.observe(&obs(m, "k-new", "m", 1, 0, 10));
    }
    assert_eq!(det.stats().subjects, 2, "k-new and its org");
}

#[test]
fn a_far_future_event_evicts_instead_of_closing_every_minute_between() {
    let mut det = Detector::new(Config::default());
    assert!(steady(&mut det, T0..T0 + 60).is_empty());
    // A skewed clock: one event a week ahead. The old subjects are idle from that watermark's view.
    let ahead = T0 + 7 * 24 * 60;
    assert!(det.observe(&obs(ahead, "k2", "m", 1, 0, 10)).is_empty());
    // k1 is evicted; the org, active again through k2, closes at most `idle_evict_minutes` zeros.
    assert_eq!(det.stats().subjects, 2, "k2 and its org");
    assert_eq!(det.stats().evicted, 1);
    // Events of the old minutes are now late.
    assert!(det.observe(&obs(T0 + 60, "k1", "m", 1, 0, 10)).is_empty());
    assert_eq!(det.stats().late_events, 1);
}

#[test]
fn the_same_input_gives_the_same_alerts() {
    let set = generate(&SynthConfig::default());
    assert_eq!(run(&set), run(&set));
}

fn run(set: &Dataset) -> Vec<Alert> {
    let mut det = Detector::new(Config::default());
    let mut alerts = Vec::new();
    for o in &set.observations {
        alerts.extend(det.observe(o));
    }
    if let Some(last) = set.observations.last() {
        alerts.extend(det.advance(last.ts_ms.div_euclid(MINUTE_MS) + 3));
    }
    alerts
}

#[test]
fn no_alert_on_a_clean_steady_baseline_over_six_hours() {
    for seed in [1, 2, 3] {
        let set = generate(&SynthConfig {
            seed,
            anomalous_keys: 0.0,
            ..SynthConfig::default()
        });
        assert!(set.labels.is_empty());
        let alerts = run(&set);
        assert!(
            alerts.is_empty(),
            "seed {seed}: {:#?}",
            &alerts[..alerts.len().min(5)]
        );
    }
}

#[test]
#[allow(clippy::print_stdout)]
fn precision_and_recall_on_the_synthetic_set() {
    let (mut alerts_n, mut labels_n) = (0, 0);
    for seed in [16, 17, 18, 19] {
        let set = generate(&SynthConfig {
            seed,
            ..SynthConfig::default()
        });
        let alerts = run(&set);
        let (p, r) = synthetic::precision_recall(&set.labels, &alerts);
        println!(
            "anomaly synthetic seed {seed}: {} anomalies, {} alerts, precision {p:.3}, recall {r:.3}",
            set.labels.len(),
            alerts.len()
        );
        assert!(
            p >= 0.95 && r >= 0.9,
            "seed {seed}: precision {p:.3} recall {r:.3}"
        );
        alerts_n += alerts.len();
        labels_n += set.labels.len();
    }
    assert!(
        labels_n >= 100,
        "the set is big enough to measure: {labels_n}"
    );
    assert!(alerts_n >= labels_n);
}
