//! The detector fed live from the consumer: one [`Detector`] per Kafka partition, redeliveries
//! recognised by event id, and a quiet partition's minutes closed by an injected wall clock.
//!
//! **Why one detector per partition.** Usage events are keyed by org (`leaky_wire::event::usage_key`),
//! so an org's events — and with them every subject of that org, the org and its keys — are on one
//! partition, in order, and on one consumer member. A member reading several partitions must not
//! share one watermark between them: a partition that lags (a member catching up, a spool replayed)
//! would see all its minutes as already closed and its events dropped as late. Per partition, the
//! watermark follows that partition's own event time. Several replicas of the role each hold the
//! detectors of their own partitions; nothing is shared between them.
//!
//! **Redelivery does not count twice.** Kafka delivers at least once. A redelivered event of a
//! minute still open is recognised by its envelope id (the ids of each open minute are kept until it
//! closes, then dropped); a redelivered event of a closed minute is late and the detector drops it
//! anyway. So an event feeds the baselines once, whatever the number of deliveries. (Feeding from
//! the recomputed minute rollups instead would also be idempotent, but costs a Cassandra read per
//! touched minute on the consumer's path; the id sets cost memory only for the ≤ 3 open minutes.)
//!
//! **Restart.** The detector lives in memory. A restarted member resumes from the committed offsets
//! with cold baselines: each subject warms up again (30 minutes of event time) before it may alert.
//! A batch redelivered to a new member after a crash is fed to that member's cold detector.
//!
//! **Quiet partitions.** A minute closes when an event two minutes later arrives; when a partition
//! goes quiet, [`Live::tick`] closes its minutes as wall time passes (one minute of event time per
//! minute of silence after its newest event), so a spike in the last minute of traffic still alerts
//! within two minutes. Replays are not quiet, so this never fast-forwards a replay.
//!
//! Pure: the wall clock is an argument, so tests drive it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use super::{Alert, Config, Detector, Observation, MINUTE_MS};
use crate::event::UsageRow;

/// How long a counted anomaly id is remembered (minutes of event time), so a re-emitted anomaly is
/// counted once per process.
const COUNTED_MINUTES: i64 = 24 * 60;

/// One anomaly as stored, published and served: an [`Alert`] with its stable id.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AnomalyRecord {
    /// Derived from (org, key, kind, minute): a replay produces the same id, so duplicates are
    /// recognisable downstream.
    pub id: String,
    pub org: String,
    /// The key, or `None` for the org as a whole.
    pub key: Option<String>,
    /// `token_spike`, `request_spike`, `model_switch` or `error_rate_jump`.
    pub kind: String,
    /// The anomalous minute's start (event time), milliseconds since the epoch.
    pub minute_ms: i64,
    pub score: f64,
    pub baseline: f64,
    pub spread: f64,
    pub observed: f64,
    pub explanation: String,
}

impl AnomalyRecord {
    pub fn from_alert(a: &Alert) -> AnomalyRecord {
        let kind = a.kind.as_str();
        AnomalyRecord {
            id: anomaly_id(&a.subject.org, a.subject.key.as_deref(), kind, a.minute),
            org: a.subject.org.clone(),
            key: a.subject.key.clone(),
            kind: kind.to_owned(),
            minute_ms: a.minute * MINUTE_MS,
            score: a.score,
            baseline: a.baseline,
            spread: a.spread,
            observed: a.observed,
            explanation: a.explanation.clone(),
        }
    }
}

/// A UUID-shaped id (version 8, "custom") from SHA-256 of the anomaly's identity: deterministic, so
/// the same anomaly detected twice (a replay, another member) has the same id.
pub fn anomaly_id(org: &str, key: Option<&str>, kind: &str, minute: i64) -> String {
    let mut h = Sha256::new();
    for part in [org, key.unwrap_or(""), kind, &minute.to_string()] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.finalize()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// One partition's detector and what it needs for dedupe and quiet-time closing.
#[derive(Debug)]
struct PartitionState {
    detector: Detector,
    /// Event ids seen per open minute.
    seen: BTreeMap<i64, HashSet<String>>,
    /// The newest event minute seen on the partition.
    head: i64,
    /// Wall time (ms) of the newest event's arrival.
    arrived_ms: i64,
}

/// Counters about the live path, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveStats {
    /// Deliveries recognised as redeliveries of an open minute's event.
    pub duplicates: u64,
    /// Events fed to a detector.
    pub fed: u64,
}

/// Per-partition detectors; see the module docs.
#[derive(Debug)]
pub struct Live {
    cfg: Config,
    partitions: BTreeMap<i32, PartitionState>,
    /// Ids of anomalies already emitted by this process, by minute (pruned after a day).
    counted: BTreeSet<(i64, String)>,
    stats: LiveStats,
}

impl Live {
    pub fn new(cfg: Config) -> Live {
        Live {
            cfg,
            partitions: BTreeMap::new(),
            counted: BTreeSet::new(),
            stats: LiveStats::default(),
        }
    }

    pub fn stats(&self) -> LiveStats {
        self.stats
    }

    /// Feeds one stored event of `partition`, arrived at wall time `now_ms`; returns the anomalies
    /// of the minutes this closed that were not emitted before by this process.
    pub fn observe(&mut self, partition: i32, row: &UsageRow, now_ms: i64) -> Vec<AnomalyRecord> {
        let minute = row.ts.div_euclid(MINUTE_MS);
        let cfg = &self.cfg;
        let p = self
            .partitions
            .entry(partition)
            .or_insert_with(|| PartitionState {
                detector: Detector::new(cfg.clone()),
                seen: BTreeMap::new(),
                head: minute,
                arrived_ms: now_ms,
            });
        p.arrived_ms = now_ms;
        p.head = p.head.max(minute);
        let open = p.detector.closed_through().is_none_or(|c| minute > c);
        if open
            && !p
                .seen
                .entry(minute)
                .or_default()
                .insert(row.event_id.clone())
        {
            self.stats.duplicates += 1;
            return Vec::new();
        }
        self.stats.fed += 1;
        let alerts = p.detector.observe(&Observation::from(row));
        prune_seen(p);
        self.fresh(alerts)
    }

    /// Closes the minutes of partitions quiet since their newest event: after `s` seconds of
    /// silence, minutes up to `head + s/60 − lateness`.
    pub fn tick(&mut self, now_ms: i64) -> Vec<AnomalyRecord> {
        let mut alerts = Vec::new();
        for p in self.partitions.values_mut() {
            let quiet_minutes = (now_ms - p.arrived_ms).max(0) / MINUTE_MS;
            if quiet_minutes == 0 {
                continue;
            }
            let watermark = p.head + quiet_minutes - self.cfg.lateness_minutes;
            alerts.extend(p.detector.advance(watermark));
            prune_seen(p);
        }
        self.fresh(alerts)
    }

    /// The records of `alerts` not emitted before by this process.
    fn fresh(&mut self, alerts: Vec<Alert>) -> Vec<AnomalyRecord> {
        if alerts.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for a in &alerts {
            let r = AnomalyRecord::from_alert(a);
            if self.counted.insert((a.minute, r.id.clone())) {
                out.push(r);
            }
        }
        if let Some(newest) = self.counted.last().map(|c| c.0) {
            let keep = (newest - COUNTED_MINUTES, String::new());
            self.counted = self.counted.split_off(&keep);
        }
        out
    }
}

/// Drops the id sets of minutes the detector closed.
fn prune_seen(p: &mut PartitionState) {
    if let Some(c) = p.detector.closed_through() {
        p.seen = p.seen.split_off(&(c + 1));
    }
}

#[cfg(test)]
mod tests;
