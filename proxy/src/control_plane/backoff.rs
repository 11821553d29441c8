//! Reconnect backoff: 250 ms doubling to 10 s, each delay jittered down to between half and all of
//! its value, so proxies cut off together do not reconnect in lockstep. Reset once a stream delivered
//! its snapshot. Waits on tokio time, so tests drive it with a paused clock.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// First delay after a failure.
pub const BASE: Duration = Duration::from_millis(250);
/// Longest delay.
pub const MAX: Duration = Duration::from_secs(10);

/// A source of jitter in `[0, 1)`.
pub type Jitter = Box<dyn FnMut() -> f64 + Send>;

/// The delays between reconnect attempts.
pub struct Backoff {
    next: Duration,
    jitter: Jitter,
}

/// Randomness without a dependency: `RandomState` is seeded per process and per instance.
fn random_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::with_jitter(Box::new(random_unit))
    }
}

impl Backoff {
    /// A backoff whose jitter comes from `jitter` (tests pass a fixed one).
    pub fn with_jitter(jitter: Jitter) -> Self {
        Backoff { next: BASE, jitter }
    }

    /// The next delay: the current step, jittered to `[step/2, step]`; the step doubles up to `MAX`.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(MAX);
        let j = (self.jitter)().clamp(0.0, 1.0);
        step.mul_f64(0.5 + 0.5 * j)
    }

    /// Back to the first step (a connection succeeded).
    pub fn reset(&mut self) {
        self.next = BASE;
    }

    /// Sleeps the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_step_doubles_to_ten_seconds_and_jitter_stays_within_half_to_full() {
        let mut top = Backoff::with_jitter(Box::new(|| 1.0));
        let steps: Vec<Duration> = (0..8).map(|_| top.next_delay()).collect();
        assert_eq!(
            steps,
            [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000].map(ms)
        );
        let mut low = Backoff::with_jitter(Box::new(|| 0.0));
        assert_eq!(low.next_delay(), ms(125));
        assert_eq!(low.next_delay(), ms(250));
        let mut random = Backoff::default();
        for _ in 0..50 {
            let step = random.next;
            let d = random.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_follow_the_schedule_and_reset_starts_over() {
        let mut b = Backoff::with_jitter(Box::new(|| 1.0));
        let start = Instant::now();
        for _ in 0..3 {
            b.wait().await;
        }
        assert_eq!(start.elapsed(), ms(250 + 500 + 1000));
        b.reset();
        let again = Instant::now();
        b.wait().await;
        assert_eq!(again.elapsed(), ms(250));
    }
}
