//! Synthetic usage with injected anomalies and their labels: what the detector is tuned and measured
//! on (precision/recall in `docs/analytics.md`).
//!
//! Each key has a steady, noisy baseline: requests per minute (Poisson-like noise with Gaussian
//! tails, a slow daily swing of ±30 %, rare benign bursts of +10–40 %), tokens per request with
//! their own noise, an error rate of 0–5 % and a model mix (a main model, sometimes a second one
//! with up to 30 %). Anomalies are injected on some keys at known minutes and labelled. About 5 % of
//! observations are delivered one minute late (inside the watermark's window). Seeded and
//! deterministic: the same config gives the same data.

use super::{Alert, Kind, Observation, Subject};

const MINUTE_MS: i64 = 60_000;
const MODELS: [&str; 4] = ["gpt-4o-mini", "claude-3-haiku", "llama-3-70b", "gpt-4o"];
/// The model a switch moves to: used by no baseline.
pub const SWITCH_MODEL: &str = "o1-preview";

/// The kind of an injected anomaly (a spike may show as a token or a request spike, or both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    Spike,
    ModelSwitch,
    ErrorJump,
}

impl Injected {
    /// Whether an alert of kind `k` reports this anomaly.
    pub fn matches(self, k: Kind) -> bool {
        matches!(
            (self, k),
            (Injected::Spike, Kind::TokenSpike | Kind::RequestSpike)
                | (Injected::ModelSwitch, Kind::ModelSwitch)
                | (Injected::ErrorJump, Kind::ErrorRateJump)
        )
    }
}

/// One injected anomaly: on `subject` (a key), minutes `start..=end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub subject: Subject,
    pub kind: Injected,
    pub start: i64,
    pub end: i64,
}

#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub seed: u64,
    pub orgs: usize,
    pub keys_per_org: usize,
    /// First minute (minutes since the epoch) and length of the run.
    pub start_minute: i64,
    pub minutes: i64,
    /// Share of keys (0..1) that get one injected anomaly; 0 gives the clean set.
    pub anomalous_keys: f64,
    /// No anomaly starts before this many minutes (the detector's warm-up plus margin).
    pub quiet_minutes: i64,
    /// Each key's mean requests per minute is drawn log-uniformly from this range.
    pub requests_per_minute: (f64, f64),
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 16,
            orgs: 20,
            keys_per_org: 5,
            start_minute: 29_000_000,
            minutes: 6 * 60,
            anomalous_keys: 0.4,
            quiet_minutes: 60,
            requests_per_minute: (20.0, 200.0),
        }
    }
}

/// The observations in delivery order, and the labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub observations: Vec<Observation>,
    pub labels: Vec<Label>,
}

/// splitmix64: tiny, seeded, good enough for test traffic.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Standard normal (Box–Muller: real tails, not a bounded sum of uniforms).
    fn normal(&mut self) -> f64 {
        let u = self.unit().max(f64::MIN_POSITIVE);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// One key's steady behaviour, and its anomaly if any.
struct Profile {
    subject: Subject,
    requests: f64,
    tokens_per_request: f64,
    error_rate: f64,
    main: &'static str,
    second: Option<(&'static str, f64)>,
    phase: f64,
    anomaly: Option<(Label, f64)>,
}

/// Generates the set.
pub fn generate(cfg: &SynthConfig) -> Dataset {
    let mut rng = Rng(cfg.seed);
    let profiles: Vec<Profile> = (0..cfg.orgs * cfg.keys_per_org)
        .map(|i| profile(&mut rng, cfg, i))
        .collect();
    let mut tagged = Vec::new();
    for minute in cfg.start_minute..cfg.start_minute + cfg.minutes {
        for p in &profiles {
            for obs in minute_of(&mut rng, p, minute) {
                // ~5 % arrive a minute late: still inside the watermark's window.
                let delivered = if rng.unit() < 0.05 {
                    minute + 1
                } else {
                    minute
                };
                tagged.push((delivered, tagged.len(), obs));
            }
        }
    }
    tagged.sort_by_key(|t| (t.0, t.1));
    Dataset {
        observations: tagged.into_iter().map(|t| t.2).collect(),
        labels: profiles
            .into_iter()
            .filter_map(|p| p.anomaly.map(|a| a.0))
            .collect(),
    }
}

fn profile(rng: &mut Rng, cfg: &SynthConfig, i: usize) -> Profile {
    let subject = Subject {
        org: format!("org-{:02}", i / cfg.keys_per_org),
        key: Some(format!("key-{i:03}")),
    };
    let main = MODELS[(rng.next_u64() % 3) as usize];
    let second = (rng.unit() < 0.5).then(|| (MODELS[3], rng.range(0.05, 0.3)));
    let mut p = Profile {
        subject,
        requests: (rng.range(
            cfg.requests_per_minute.0.ln(),
            cfg.requests_per_minute.1.ln(),
        ))
        .exp(),
        tokens_per_request: rng.range(200.0, 3000.0),
        error_rate: rng.range(0.0, 0.05),
        main,
        second,
        phase: rng.range(0.0, std::f64::consts::TAU),
        anomaly: None,
    };
    if rng.unit() < cfg.anomalous_keys {
        let kind = [Injected::Spike, Injected::ModelSwitch, Injected::ErrorJump][i % 3];
        let latest = (cfg.minutes - 30).max(cfg.quiet_minutes + 1);
        let start = cfg.start_minute + rng.range(cfg.quiet_minutes as f64, latest as f64) as i64;
        let end = start + rng.range(5.0, 20.0) as i64;
        let size = match kind {
            Injected::Spike => rng.range(3.0, 12.0),
            Injected::ErrorJump => rng.range(0.3, 0.6),
            Injected::ModelSwitch => 1.0,
        };
        let subject = p.subject.clone();
        p.anomaly = Some((
            Label {
                subject,
                kind,
                start,
                end,
            },
            size,
        ));
    }
    p
}

/// The observations of one key in one minute (one per model used).
fn minute_of(rng: &mut Rng, p: &Profile, minute: i64) -> Vec<Observation> {
    let day = std::f64::consts::TAU * (minute % 1440) as f64 / 1440.0;
    let mut level = p.requests * (1.0 + 0.3 * (day + p.phase).sin());
    if rng.unit() < 0.005 {
        level *= rng.range(1.1, 1.4);
    }
    let (mut per_request, mut error_rate, mut main) = (p.tokens_per_request, p.error_rate, p.main);
    let mut second = p.second;
    if let Some((l, size)) = p
        .anomaly
        .as_ref()
        .filter(|a| (a.0.start..=a.0.end).contains(&minute))
    {
        match l.kind {
            // Half the spikes are more requests, half are longer prompts.
            Injected::Spike if l.start % 2 == 0 => level *= size,
            Injected::Spike => per_request *= size,
            Injected::ErrorJump => error_rate = *size,
            Injected::ModelSwitch => (main, second) = (SWITCH_MODEL, None),
        }
    }
    let requests = (level + level.sqrt() * rng.normal()).round().max(0.0);
    let tokens = (requests * per_request + requests.sqrt() * 0.5 * per_request * rng.normal())
        .round()
        .max(0.0);
    let sd = (requests * error_rate * (1.0 - error_rate)).sqrt();
    let errors = (requests * error_rate + sd * rng.normal())
        .round()
        .clamp(0.0, requests);
    let split = second.map_or(0.0, |s| (s.1 + 0.03 * rng.normal()).clamp(0.0, 1.0));
    let mut out = Vec::new();
    for (model, frac) in [(main, 1.0 - split), (second.map_or(main, |s| s.0), split)] {
        if frac <= 0.0 {
            continue;
        }
        out.push(Observation {
            ts_ms: minute * MINUTE_MS + (rng.unit() * 59_000.0) as i64,
            org: p.subject.org.clone(),
            key: p.subject.key.clone().unwrap_or_default(),
            model: model.to_string(),
            requests: (requests * frac).round() as u64,
            errors: (errors * frac).round() as u64,
            tokens: (tokens * frac).round() as u64,
        });
    }
    out
}

/// Precision and recall of `alerts` against `labels`. An alert is true when it names the labelled
/// key (or its org) with a matching kind inside the anomaly's minutes (+2); an anomaly is found
/// when its key alerts with a matching kind within 2 minutes of its start.
pub fn precision_recall(labels: &[Label], alerts: &[Alert]) -> (f64, f64) {
    let explains = |a: &Alert| {
        labels.iter().any(|l| {
            l.kind.matches(a.kind)
                && (a.subject == l.subject
                    || (a.subject.key.is_none() && a.subject.org == l.subject.org))
                && (l.start..=l.end + 2).contains(&a.minute)
        })
    };
    let found = |l: &&Label| {
        alerts.iter().any(|a| {
            a.subject == l.subject
                && l.kind.matches(a.kind)
                && (l.start..=l.start + 2).contains(&a.minute)
        })
    };
    let tp = alerts.iter().filter(|a| explains(a)).count();
    let precision = tp as f64 / alerts.len().max(1) as f64;
    let recall = labels.iter().filter(found).count() as f64 / labels.len().max(1) as f64;
    (precision, recall)
}
