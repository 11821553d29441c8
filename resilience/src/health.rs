//! Active health-check state of one deployment: flips to unhealthy after `unhealthy_after` failed
//! probes in a row and back to healthy after `healthy_after` successful probes in a row. The prober
//! (a task per deployment, every `interval_ms`, each probe bounded by `timeout_ms`) lives in the
//! proxy; this is only the verdict, read lock-free on the request path.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    /// Time between probes.
    pub interval_ms: u64,
    /// A probe not answered within this counts as failed.
    pub timeout_ms: u64,
    /// Failed probes in a row that make a healthy deployment unhealthy (0 counts as 1).
    pub unhealthy_after: u32,
    /// Successful probes in a row that make an unhealthy deployment healthy (0 counts as 1).
    pub healthy_after: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            interval_ms: 5000,
            timeout_ms: 1000,
            unhealthy_after: 2,
            healthy_after: 1,
        }
    }
}

/// Health of one deployment; starts healthy.
pub struct Health {
    healthy: AtomicBool,
    unhealthy_after: u32,
    healthy_after: u32,
    /// (failures in a row, successes in a row).
    streak: Mutex<(u32, u32)>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Healthy, with the default thresholds.
    pub fn new() -> Self {
        Self::new_with(&HealthSettings::default())
    }

    /// Healthy, with `settings`' thresholds.
    pub fn new_with(settings: &HealthSettings) -> Self {
        Self {
            healthy: AtomicBool::new(true),
            unhealthy_after: settings.unhealthy_after.max(1),
            healthy_after: settings.healthy_after.max(1),
            streak: Mutex::new((0, 0)),
        }
    }

    /// Records a probe result; `Some(healthy)` when the verdict flips.
    pub fn on_probe(&self, ok: bool) -> Option<bool> {
        let mut streak = self.streak.lock();
        let healthy = self.healthy.load(Ordering::Acquire);
        if ok {
            *streak = (0, streak.1.saturating_add(1));
            if !healthy && streak.1 >= self.healthy_after {
                self.healthy.store(true, Ordering::Release);
                return Some(true);
            }
        } else {
            *streak = (streak.0.saturating_add(1), 0);
            if healthy && streak.0 >= self.unhealthy_after {
                self.healthy.store(false, Ordering::Release);
                return Some(false);
            }
        }
        None
    }

    /// The current verdict. Lock-free.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_after_streaks() {
        let h = Health::new();
        assert!(h.is_healthy());
        assert_eq!(h.on_probe(false), None);
        assert_eq!(h.on_probe(true), None); // streak broken
        assert_eq!(h.on_probe(false), None);
        assert_eq!(h.on_probe(false), Some(false));
        assert_eq!(h.on_probe(false), None);
        assert!(!h.is_healthy());
        assert_eq!(h.on_probe(true), Some(true));
        assert!(h.is_healthy());
    }

    #[test]
    fn custom_thresholds() {
        let h = Health::new_with(&HealthSettings {
            unhealthy_after: 1,
            healthy_after: 3,
            ..Default::default()
        });
        assert_eq!(h.on_probe(false), Some(false));
        assert_eq!(h.on_probe(true), None);
        assert_eq!(h.on_probe(true), None);
        assert_eq!(h.on_probe(false), None);
        assert_eq!(h.on_probe(true), None);
        assert_eq!(h.on_probe(true), None);
        assert_eq!(h.on_probe(true), Some(true));
    }
}
