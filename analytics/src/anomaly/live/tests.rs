//! The live path on hand-made events and on the synthetic set, with redeliveries and an injected
//! wall clock.

use super::*;
use crate::anomaly::synthetic::{self, generate, SynthConfig};
use crate::anomaly::Kind;
use crate::buckets::Totals;

const T0: i64 = 29_000_000;

fn row(id: &str, org: &str, key: &str, minute: i64, tokens: i64) -> UsageRow {
    UsageRow {
        event_id: id.into(),
        ts: minute * MINUTE_MS + 30_000,
        org: org.into(),
        request_id: format!("req-{id}"),
        key_id: key.into(),
        model: "gpt-4o-mini".into(),
        provider: "openai".into(),
        status: 200,
        totals: Totals {
            requests: 1,
            total_tokens: tokens,
            ..Totals::default()
        },
    }
}

/// 40 minutes of 3 events a minute (≈ 3,000 tokens), then a minute of 30,000, then calm again.
fn steady_then_spike(org: &str) -> Vec<UsageRow> {
    let mut out = Vec::new();
    for m in 0..45 {
        for i in 0..3 {
            let tokens = if m == 40 {
                10_000
            } else {
                1_000 + (m % 5) * 10
            };
            out.push(row(&format!("{org}-{m}-{i}"), org, "k1", T0 + m, tokens));
        }
    }
    out
}

fn feed(live: &mut Live, partition: i32, rows: &[UsageRow]) -> Vec<AnomalyRecord> {
    rows.iter()
        .flat_map(|r| live.observe(partition, r, 0))
        .collect()
}

#[test]
fn a_spike_alerts_with_a_stable_id_and_redeliveries_change_nothing() {
    let rows = steady_then_spike("acme");
    let once = feed(&mut Live::new(Config::default()), 0, &rows);
    let spikes: Vec<_> = once.iter().filter(|a| a.kind == "token_spike").collect();
    assert_eq!(spikes.len(), 2, "the org and the key: {once:?}");
    assert!(spikes.iter().all(|a| a.minute_ms == (T0 + 40) * MINUTE_MS));
    // Every event delivered twice in a row, and each minute's events again a minute later (still
    // open): the same anomalies, the duplicates recognised.
    let mut live = Live::new(Config::default());
    let mut twice = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        twice.extend(live.observe(0, r, 0));
        twice.extend(live.observe(0, r, 0));
        if i >= 3 {
            twice.extend(live.observe(0, &rows[i - 3], 0));
        }
    }
    assert_eq!(twice, once);
    assert_eq!(live.stats().fed, rows.len() as u64);
    assert!(live.stats().duplicates >= rows.len() as u64);
    // A fresh process replaying the same events finds the same anomalies under the same ids.
    assert_eq!(feed(&mut Live::new(Config::default()), 0, &rows), once);
}

#[test]
fn anomaly_ids_are_uuid_shaped_and_derived_from_the_identity() {
    let a = anomaly_id("acme", Some("k1"), "token_spike", T0);
    assert_eq!(a, anomaly_id("acme", Some("k1"), "token_spike", T0));
    assert_eq!(a.len(), 36);
    assert_eq!(&a[14..15], "8", "version 8: {a}");
    for other in [
        anomaly_id("acme", None, "token_spike", T0),
        anomaly_id("acme", Some("k1"), "request_spike", T0),
        anomaly_id("acme", Some("k1"), "token_spike", T0 + 1),
        anomaly_id("acme", Some("k"), "1token_spike", T0),
    ] {
        assert_ne!(a, other);
    }
}

#[test]
fn each_partition_has_its_own_watermark() {
    let mut live = Live::new(Config::default());
    // Partition 1 is an hour ahead; partition 0 still gets its spike.
    feed(&mut live, 1, &[row("far", "other", "k9", T0 + 100, 1_000)]);
    let found = feed(&mut live, 0, &steady_then_spike("acme"));
    assert!(found.iter().any(|a| a.kind == "token_spike"), "{found:?}");
}

#[test]
fn a_quiet_partition_closes_its_last_minutes_as_wall_time_passes() {
    let rows: Vec<UsageRow> = steady_then_spike("acme")
        .into_iter()
        .filter(|r| r.ts < (T0 + 41) * MINUTE_MS)
        .collect();
    let mut live = Live::new(Config::default());
    let arrived = 1_000_000;
    for r in &rows {
        assert!(live.observe(0, r, arrived).is_empty());
    }
    assert!(live.tick(arrived + 59_000).is_empty());
    assert!(live.tick(arrived + 60_000).is_empty(), "one quiet minute");
    let found = live.tick(arrived + 120_000);
    assert!(
        found
            .iter()
            .any(|a| a.kind == Kind::TokenSpike.as_str() && a.minute_ms == (T0 + 40) * MINUTE_MS),
        "{found:?}"
    );
    assert!(live.tick(arrived + 180_000).is_empty(), "alerted once");
}

/// The synthetic set as usage events, one per observation, partitioned by org as the proxies key
/// them, with every tenth event redelivered a few events later.
fn as_deliveries(set: &synthetic::Dataset) -> Vec<(i32, UsageRow)> {
    let mut out = Vec::new();
    for (i, o) in set.observations.iter().enumerate() {
        let partition = o.org.bytes().map(i32::from).sum::<i32>() % 3;
        let r = UsageRow {
            event_id: format!("e{i}"),
            ts: o.ts_ms,
            org: o.org.clone(),
            request_id: format!("r{i}"),
            key_id: o.key.clone(),
            model: o.model.clone(),
            provider: "p".into(),
            status: 200,
            totals: Totals {
                requests: o.requests as i64,
                errors: o.errors as i64,
                total_tokens: o.tokens as i64,
                ..Totals::default()
            },
        };
        out.push((partition, r));
        if i % 10 == 0 && i >= 5 {
            out.push(out[out.len() - 5].clone());
        }
    }
    out
}

#[test]
#[allow(clippy::print_stdout)]
fn precision_and_recall_on_the_live_path_with_redeliveries() {
    for seed in [16, 17] {
        let set = generate(&SynthConfig {
            seed,
            ..SynthConfig::default()
        });
        let mut live = Live::new(Config::default());
        let mut found = Vec::new();
        for (p, r) in as_deliveries(&set) {
            found.extend(live.observe(p, &r, 0));
        }
        found.extend(live.tick(10 * MINUTE_MS));
        let alerts: Vec<Alert> = found.iter().map(to_alert).collect();
        let (p, r) = synthetic::precision_recall(&set.labels, &alerts);
        println!(
            "anomaly live seed {seed}: {} anomalies, {} alerts, {} redeliveries, precision {p:.3}, recall {r:.3}",
            set.labels.len(),
            alerts.len(),
            live.stats().duplicates
        );
        assert!(live.stats().duplicates > 0);
        assert!(p >= 0.95 && r >= 0.9, "seed {seed}: {p:.3} {r:.3}");
    }
}

/// Back from a record to the detector's alert, to score it against the labels.
fn to_alert(r: &AnomalyRecord) -> Alert {
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == r.kind)
        .unwrap_or(Kind::TokenSpike);
    Alert {
        subject: crate::anomaly::Subject {
            org: r.org.clone(),
            key: r.key.clone(),
        },
        kind,
        minute: r.minute_ms / MINUTE_MS,
        score: r.score,
        baseline: r.baseline,
        spread: r.spread,
        observed: r.observed,
        explanation: r.explanation.clone(),
    }
}
