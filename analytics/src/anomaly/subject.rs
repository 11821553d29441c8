//! One subject's state: its open minutes, its baselines, and the signals judged when a minute closes.

use std::collections::BTreeMap;

use super::baseline::Baseline;
use super::explain::{count, percent};
use super::{Alert, Config, Kind, Observation, Subject};

/// The error-rate spread never goes below two points, nor the binomial noise of the minute.
const ERROR_SPREAD_FLOOR: f64 = 0.02;

/// One open minute of one subject: exact integer sums.
#[derive(Debug, Clone, Default)]
struct MinuteAgg {
    requests: u64,
    errors: u64,
    tokens: u64,
    /// Tokens per model (at most `2 × max_models` names; the rest still count in `tokens`).
    models: Vec<(String, u64)>,
}

#[derive(Debug)]
pub(super) struct SubjectState {
    /// Every minute up to and including this one is closed for this subject.
    closed: i64,
    last_active: i64,
    open: BTreeMap<i64, MinuteAgg>,
    tokens: Baseline,
    requests: Baseline,
    error_rate: Baseline,
    /// The EWMA of each model's share of the tokens, and the minutes folded into them.
    shares: Vec<(String, f64)>,
    share_minutes: u32,
    /// Whether an episode of each kind is under way (it alerts once, at its start).
    active: [bool; 4],
}

/// What one signal judged: the numbers of a potential alert.
struct Judged {
    kind: Kind,
    score: f64,
    baseline: f64,
    spread: f64,
    observed: f64,
    explanation: String,
}

impl SubjectState {
    pub(super) fn new(first_minute: i64) -> Self {
        SubjectState {
            closed: first_minute - 1,
            last_active: first_minute,
            open: BTreeMap::new(),
            tokens: Baseline::default(),
            requests: Baseline::default(),
            error_rate: Baseline::default(),
            shares: Vec::new(),
            share_minutes: 0,
            active: [false; 4],
        }
    }

    pub(super) fn last_active(&self) -> i64 {
        self.last_active
    }

    pub(super) fn add(&mut self, minute: i64, obs: &Observation, max_models: usize) {
        self.last_active = self.last_active.max(minute);
        let agg = self.open.entry(minute).or_default();
        agg.requests = agg.requests.saturating_add(obs.requests);
        agg.errors = agg.errors.saturating_add(obs.errors);
        agg.tokens = agg.tokens.saturating_add(obs.tokens);
        if let Some(m) = agg.models.iter_mut().find(|(m, _)| *m == obs.model) {
            m.1 = m.1.saturating_add(obs.tokens);
        } else if agg.models.len() < 2 * max_models {
            agg.models.push((obs.model.clone(), obs.tokens));
        }
    }

    /// Closes this subject's minutes up to `watermark` (a minute without traffic counts as zero).
    pub(super) fn close_through(
        &mut self,
        subject: &Subject,
        watermark: i64,
        cfg: &Config,
        alerts: &mut Vec<Alert>,
    ) {
        let start = (self.closed + 1).max(watermark - cfg.idle_evict_minutes);
        for minute in start..=watermark {
            let agg = self.open.remove(&minute).unwrap_or_default();
            for j in self.judge(&agg, cfg) {
                alerts.push(Alert {
                    subject: subject.clone(),
                    kind: j.kind,
                    minute,
                    score: j.score,
                    baseline: j.baseline,
                    spread: j.spread,
                    observed: j.observed,
                    explanation: j.explanation,
                });
            }
        }
        // Buckets skipped by a watermark jump are dropped, not kept forever.
        self.open.retain(|m, _| *m > watermark);
        self.closed = self.closed.max(watermark);
    }

    fn judge(&mut self, agg: &MinuteAgg, cfg: &Config) -> Vec<Judged> {
        let mut out = Vec::new();
        out.extend(self.spike(Kind::TokenSpike, agg.tokens, cfg));
        out.extend(self.spike(Kind::RequestSpike, agg.requests, cfg));
        out.extend(self.error_jump(agg, cfg));
        out.extend(self.model_switch(agg, cfg));
        out
    }

    /// True when `cond` starts an episode of `kind`.
    fn episode(&mut self, kind: Kind, cond: bool) -> bool {
        let starts = cond && !self.active[kind.index()];
        self.active[kind.index()] = cond;
        starts
    }

    fn spike(&mut self, kind: Kind, value: u64, cfg: &Config) -> Option<Judged> {
        let base = match kind {
            Kind::TokenSpike => &mut self.tokens,
            _ => &mut self.requests,
        };
        let x = value as f64;
        let mean = base.mean();
        let spread = base.spread((cfg.spread_floor_frac * mean).max(1.0));
        let score = (x - mean) / spread;
        let warm = base.minutes() >= cfg.warmup_minutes;
        let cond = warm && score >= cfg.spike_score && x >= cfg.spike_min_ratio * mean;
        // The anomaly itself must not become the baseline: once warm, fold in at most the
        // threshold (a lasting new level is still learnt, a threshold step per minute).
        let folded = if warm {
            x.min(mean + cfg.spike_score * spread)
        } else {
            x
        };
        base.update(folded, cfg.alpha);
        let unit = if kind == Kind::TokenSpike {
            "tokens"
        } else {
            "requests"
        };
        self.episode(kind, cond).then(|| Judged {
            kind,
            score,
            baseline: mean,
            spread,
            observed: x,
            explanation: format!(
                "{unit}/min {} vs baseline {} ± {} (score {:.0})",
                count(x),
                count(mean),
                count(spread),
                score
            ),
        })
    }

    fn error_jump(&mut self, agg: &MinuteAgg, cfg: &Config) -> Option<Judged> {
        if agg.requests == 0 {
            return None;
        }
        let n = agg.requests as f64;
        let x = agg.errors.min(agg.requests) as f64 / n;
        let mean = self.error_rate.mean();
        let p = mean.max(0.01);
        let noise = (p * (1.0 - p) / n).sqrt();
        let spread = self.error_rate.spread(ERROR_SPREAD_FLOOR.max(noise));
        let score = (x - mean) / spread;
        let warm = self.error_rate.minutes() >= cfg.warmup_minutes;
        let cond = warm
            && agg.requests >= cfg.error_min_requests
            && score >= cfg.error_score
            && x - mean >= cfg.error_min_delta;
        let folded = if warm {
            x.min(mean + cfg.error_score * spread)
        } else {
            x
        };
        self.error_rate.update(folded, cfg.alpha);
        self.episode(Kind::ErrorRateJump, cond).then(|| Judged {
            kind: Kind::ErrorRateJump,
            score,
            baseline: mean,
            spread,
            observed: x,
            explanation: format!(
                "error rate {} of {} requests vs baseline {} ± {} (score {:.0})",
                percent(x),
                count(n),
                percent(mean),
                percent(spread),
                score
            ),
        })
    }

    fn model_switch(&mut self, agg: &MinuteAgg, cfg: &Config) -> Option<Judged> {
        if agg.requests < cfg.switch_min_requests || agg.tokens == 0 {
            return None;
        }
        let total = agg.tokens as f64;
        let (model, now) = agg
            .models
            .iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
            .map(|(m, t)| (m.clone(), *t as f64 / total))?;
        let before = self.share_of(&model);
        let usual = self.usual_model();
        let cond = self.share_minutes >= cfg.warmup_minutes
            && now >= cfg.switch_dominant_share
            && before <= cfg.switch_rare_share;
        self.update_shares(agg, total, cfg);
        self.episode(Kind::ModelSwitch, cond).then(|| Judged {
            kind: Kind::ModelSwitch,
            score: now - before,
            baseline: before,
            spread: 0.0,
            observed: now,
            explanation: format!(
                "model {model} carried {} of tokens vs baseline {} (usually {} at {})",
                percent(now),
                percent(before),
                usual.0,
                percent(usual.1)
            ),
        })
    }

    fn share_of(&self, model: &str) -> f64 {
        self.shares
            .iter()
            .find(|(m, _)| m == model)
            .map_or(0.0, |s| s.1)
    }

    fn usual_model(&self) -> (String, f64) {
        self.shares
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .cloned()
            .unwrap_or_default()
    }

    /// EWMA of each model's share; a model absent this minute decays, a new one enters (the
    /// smallest share is forgotten when `max_models` are tracked).
    fn update_shares(&mut self, agg: &MinuteAgg, total: f64, cfg: &Config) {
        self.share_minutes = self.share_minutes.saturating_add(1);
        let a = cfg.alpha.max(1.0 / f64::from(self.share_minutes));
        for s in self.shares.iter_mut() {
            s.1 *= 1.0 - a;
        }
        for (model, tokens) in &agg.models {
            let add = a * (*tokens as f64 / total);
            if let Some(s) = self.shares.iter_mut().find(|(m, _)| m == model) {
                s.1 += add;
                continue;
            }
            if self.shares.len() >= cfg.max_models {
                self.forget_smallest_share();
            }
            self.shares.push((model.clone(), add));
        }
    }

    fn forget_smallest_share(&mut self) {
        let smallest = self
            .shares
            .iter()
            .enumerate()
            .min_by(|a, b| (a.1).1.total_cmp(&(b.1).1))
            .map(|(i, _)| i);
        if let Some(i) = smallest {
            self.shares.swap_remove(i);
        }
    }
}
