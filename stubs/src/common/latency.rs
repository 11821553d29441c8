//! Seeded latency pacing (time to first token, inter-token gaps, capped
//! unary delays).

use std::time::Duration;

use crate::gen::Rng;
use crate::Latency;

/// Cap on the artificial delay of a non-streaming response.
pub const MAX_UNARY_DELAY: Duration = Duration::from_millis(2000);

/// Seeded latency generator.
pub struct Pacer {
    rng: Rng,
    on: bool,
}

impl Pacer {
    pub fn new(latency: Latency, seed: u64) -> Self {
        Pacer {
            rng: Rng::new(seed ^ 0x1A7E_1C7E),
            on: latency == Latency::Realistic,
        }
    }

    /// Time to first token: 150–400 ms.
    pub fn ttft(&mut self) -> Duration {
        if self.on {
            Duration::from_millis(self.rng.range(150, 400))
        } else {
            Duration::ZERO
        }
    }

    /// Inter-token delay: 10–30 ms.
    pub fn inter(&mut self) -> Duration {
        if self.on {
            Duration::from_millis(self.rng.range(10, 30))
        } else {
            Duration::ZERO
        }
    }

    /// Total delay for a non-streaming response of `tokens` tokens (≤ 2 s).
    pub fn unary(&mut self, tokens: u64) -> Duration {
        if !self.on {
            return Duration::ZERO;
        }
        let mut d = self.ttft();
        for _ in 0..tokens {
            d += self.inter();
            if d >= MAX_UNARY_DELAY {
                return MAX_UNARY_DELAY;
            }
        }
        d
    }
}

pub async fn delay(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn unary_delay_is_capped() {
        let mut p = Pacer::new(Latency::Realistic, 1);
        assert!(p.unary(1000) <= MAX_UNARY_DELAY);
        let mut off = Pacer::new(Latency::Off, 1);
        assert_eq!(off.unary(1000), Duration::ZERO);
    }
}
