//! Anomaly detection on usage (issue 16): spikes, model switches and error-rate jumps per org and
//! per org+key, as pure, clock-free logic.
//!
//! The [`Detector`] is fed usage observations (one request, or a pre-summed group of requests of one
//! key and model) and sums them into per-minute buckets per subject: the org, and the org+key. Event
//! time drives everything; there is no wall clock and no randomness inside, so the same input gives
//! the same alerts in the same order (subjects are kept in ordered maps for that reason).
//!
//! **Watermark.** Minute `m` closes when an event of minute `m + lateness` (default 2) has been seen
//! anywhere, or when the caller advances the watermark explicitly ([`Detector::advance`], e.g. from
//! a partition head when traffic is quiet). Events out of order inside that window land in their own
//! minute. An event for a minute already closed is *late*: the detector counts it
//! ([`Stats::late_events`]) and drops it — the rollups still count it (the store places late events
//! in the right bucket), but an alert about a minute that closed long ago is no longer an alert, and
//! re-opening a closed minute would make the baselines depend on arrival order.
//!
//! **Baselines** are per signal: an EWMA of the level and an EWMA of the absolute deviation (see
//! [`baseline`]), a warm-up before any alert, and a floor on the spread. Closing a minute with no
//! traffic for a known subject counts it as zero. Memory is bounded: a subject holds a few numbers,
//! at most [`Config::max_models`] model shares and the buckets of the open minutes; subjects idle
//! for [`Config::idle_evict_minutes`] are evicted, and at [`Config::max_subjects`] the least
//! recently active subject makes room for a new one.

use std::collections::BTreeMap;

use crate::event::UsageRow;

pub mod baseline;
mod explain;
pub mod live;
pub mod sink;
mod subject;
pub mod synthetic;
#[cfg(test)]
mod tests;

use subject::SubjectState;

const MINUTE_MS: i64 = 60_000;

/// Who an alert is about: an org (`key: None`, all its keys summed) or one key of an org.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subject {
    pub org: String,
    pub key: Option<String>,
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(k) => write!(f, "org {} key {}", self.org, k),
            None => write!(f, "org {}", self.org),
        }
    }
}

/// What kind of anomaly an alert reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Tokens per minute far above the baseline.
    TokenSpike,
    /// Requests per minute far above the baseline.
    RequestSpike,
    /// A model that carried ~none of the tokens now carries most of them.
    ModelSwitch,
    /// The share of failed requests far above the baseline.
    ErrorRateJump,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::TokenSpike,
        Kind::RequestSpike,
        Kind::ModelSwitch,
        Kind::ErrorRateJump,
    ];

    /// The stable name used in events, metrics labels and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::TokenSpike => "token_spike",
            Kind::RequestSpike => "request_spike",
            Kind::ModelSwitch => "model_switch",
            Kind::ErrorRateJump => "error_rate_jump",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One alert: the first minute of an anomalous episode of one kind for one subject (an episode
/// alerts once, when it starts; it ends when its condition stops holding).
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub subject: Subject,
    pub kind: Kind,
    /// The minute (event time, minutes since the Unix epoch) that was anomalous.
    pub minute: i64,
    /// How far above the baseline, in spreads (spikes, error rate) or in share points (model switch).
    pub score: f64,
    /// The baseline level (per minute; a ratio 0..1 for error rate and model share).
    pub baseline: f64,
    /// The baseline's spread, same unit as `baseline`.
    pub spread: f64,
    /// What the minute showed, same unit as `baseline`.
    pub observed: f64,
    /// For people: e.g. `tokens/min 48,200 vs baseline 3,100 ± 400 (score 112)`.
    pub explanation: String,
}

/// Tuning. The defaults are the values measured on the synthetic set (see `docs/analytics.md`).
#[derive(Debug, Clone)]
pub struct Config {
    /// A minute closes once an event this many minutes later has been seen.
    pub lateness_minutes: i64,
    /// Minutes of history a subject needs before it may alert.
    pub warmup_minutes: u32,
    /// EWMA weight of the newest minute (after warm-up; during warm-up the mean is cumulative).
    pub alpha: f64,
    /// Spike threshold on (observed − baseline) / spread.
    pub spike_score: f64,
    /// A spike must also be at least this multiple of the baseline (guards very regular subjects).
    pub spike_min_ratio: f64,
    /// The spread of a count is at least this fraction of its level, and at least 1.
    pub spread_floor_frac: f64,
    /// Error-rate threshold on (observed − baseline) / spread.
    pub error_score: f64,
    /// The error rate must also rise by at least this much (absolute, 0..1).
    pub error_min_delta: f64,
    /// Minimum requests in a minute for its error rate to be judged.
    pub error_min_requests: u64,
    /// A model switch: the new model carries at least this share of the minute's tokens...
    pub switch_dominant_share: f64,
    /// ...and at most this share of the baseline's.
    pub switch_rare_share: f64,
    /// Minimum requests in a minute for its model mix to be judged.
    pub switch_min_requests: u64,
    /// Model shares tracked per subject (the smallest is forgotten to make room).
    pub max_models: usize,
    /// A subject with no traffic for this many minutes is forgotten.
    pub idle_evict_minutes: i64,
    /// Subjects tracked at most.
    pub max_subjects: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lateness_minutes: 2,
            warmup_minutes: 30,
            alpha: 0.05,
            spike_score: 6.0,
            spike_min_ratio: 2.0,
            spread_floor_frac: 0.02,
            error_score: 6.0,
            error_min_delta: 0.15,
            error_min_requests: 20,
            switch_dominant_share: 0.5,
            switch_rare_share: 0.1,
            switch_min_requests: 5,
            max_models: 8,
            idle_evict_minutes: 60,
            max_subjects: 100_000,
        }
    }
}

/// Usage of one key and model at one instant: one request, or a group summed upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Event time, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    pub org: String,
    pub key: String,
    pub model: String,
    pub requests: u64,
    pub errors: u64,
    pub tokens: u64,
}

impl From<&UsageRow> for Observation {
    fn from(row: &UsageRow) -> Self {
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        Observation {
            ts_ms: row.ts,
            org: row.org.clone(),
            key: row.key_id.clone(),
            model: row.model.clone(),
            requests: count(row.totals.requests),
            errors: count(row.totals.errors),
            tokens: count(row.totals.total_tokens),
        }
    }
}

/// Counters about the detector itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Subjects tracked now.
    pub subjects: usize,
    /// Observations dropped because their minute had closed.
    pub late_events: u64,
    /// Subjects forgotten (idle, or to make room).
    pub evicted: u64,
}

/// The streaming detector. See the module docs.
#[derive(Debug)]
pub struct Detector {
    cfg: Config,
    subjects: BTreeMap<Subject, SubjectState>,
    /// Every minute up to and including this one is closed.
    closed_through: Option<i64>,
    late_events: u64,
    evicted: u64,
}

impl Detector {
    pub fn new(cfg: Config) -> Self {
        Detector {
            cfg,
            subjects: BTreeMap::new(),
            closed_through: None,
            late_events: 0,
            evicted: 0,
        }
    }

    /// Every minute up to and including this one is closed (`None` before the first observation).
    pub fn closed_through(&self) -> Option<i64> {
        self.closed_through
    }

    pub fn stats(&self) -> Stats {
        Stats {
            subjects: self.subjects.len(),
            late_events: self.late_events,
            evicted: self.evicted,
        }
    }

    /// Adds one observation to its org's and its key's open minute, then closes every minute the
    /// watermark passed; returns the alerts of the minutes closed (in minute, subject, kind order).
    pub fn observe(&mut self, obs: &Observation) -> Vec<Alert> {
        let minute = obs.ts_ms.div_euclid(MINUTE_MS);
        if self.closed_through.is_some_and(|c| minute <= c) {
            self.late_events += 1;
            return Vec::new();
        }
        let org = Subject {
            org: obs.org.clone(),
            key: None,
        };
        let key = Subject {
            org: obs.org.clone(),
            key: Some(obs.key.clone()),
        };
        let max_models = self.cfg.max_models;
        for subject in [org, key] {
            self.state_for(subject, minute).add(minute, obs, max_models);
        }
        self.advance(minute - self.cfg.lateness_minutes)
    }

    /// Closes every minute up to and including `watermark` (a no-op for minutes already closed).
    /// A jump of the watermark costs at most `idle_evict_minutes` closes per subject: a subject
    /// idle for longer is evicted instead.
    pub fn advance(&mut self, watermark: i64) -> Vec<Alert> {
        if self.closed_through.is_some_and(|c| watermark <= c) {
            return Vec::new();
        }
        self.closed_through = Some(watermark);
        self.evict_idle(watermark);
        let mut alerts = Vec::new();
        for (subject, state) in self.subjects.iter_mut() {
            state.close_through(subject, watermark, &self.cfg, &mut alerts);
        }
        alerts.sort_by(|a, b| (a.minute, &a.subject, a.kind).cmp(&(b.minute, &b.subject, b.kind)));
        alerts
    }

    fn evict_idle(&mut self, watermark: i64) {
        let idle = self.cfg.idle_evict_minutes;
        let before = self.subjects.len();
        self.subjects
            .retain(|_, s| watermark - s.last_active() <= idle);
        self.evicted += (before - self.subjects.len()) as u64;
    }

    fn state_for(&mut self, subject: Subject, minute: i64) -> &mut SubjectState {
        if !self.subjects.contains_key(&subject) && self.subjects.len() >= self.cfg.max_subjects {
            self.evict_least_recent();
        }
        self.subjects
            .entry(subject)
            .or_insert_with(|| SubjectState::new(minute))
    }

    /// O(subjects), but only when a new subject arrives at the cap.
    fn evict_least_recent(&mut self) {
        let oldest = self
            .subjects
            .iter()
            .min_by_key(|(_, s)| s.last_active())
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.subjects.remove(&k);
            self.evicted += 1;
        }
    }
}
