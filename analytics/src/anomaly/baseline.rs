//! A streaming baseline: an EWMA of the level and an EWMA of the absolute deviation from it.
//!
//! The absolute deviation is robust enough for per-minute counts (one outlier moves it by `alpha`
//! times its size, not its square) and costs two numbers. During warm-up the weight is `1/n`, so
//! the first minutes give a cumulative mean rather than one biased towards the first minute.
//! Statistics are `f64`: they are estimates; the counts they summarise stay integers.

/// Normal data: E|x − μ| = σ·√(2/π), so σ ≈ 1.25 × mean absolute deviation.
const MAD_TO_SIGMA: f64 = 1.25;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Baseline {
    mean: f64,
    dev: f64,
    n: u32,
}

impl Baseline {
    /// The level.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Minutes folded in so far.
    pub fn minutes(&self) -> u32 {
        self.n
    }

    /// A σ-like spread, at least `floor`.
    pub fn spread(&self, floor: f64) -> f64 {
        (self.dev * MAD_TO_SIGMA).max(floor)
    }

    /// Folds in one minute's value with weight `alpha` (or `1/n` while that is larger).
    pub fn update(&mut self, x: f64, alpha: f64) {
        self.n = self.n.saturating_add(1);
        if self.n == 1 {
            self.mean = x;
            self.dev = 0.0;
            return;
        }
        let a = alpha.max(1.0 / f64::from(self.n));
        self.dev = (1.0 - a) * self.dev + a * (x - self.mean).abs();
        self.mean = (1.0 - a) * self.mean + a * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_is_the_cumulative_mean_then_ewma() {
        let mut b = Baseline::default();
        for x in [10.0, 20.0, 30.0] {
            b.update(x, 0.1);
        }
        assert!((b.mean() - 20.0).abs() < 1e-9);
        assert_eq!(b.minutes(), 3);
        // A flat baseline has no spread of its own: the floor applies.
        let mut flat = Baseline::default();
        for _ in 0..100 {
            flat.update(1000.0, 0.1);
        }
        assert_eq!(flat.spread(20.0), 20.0);
    }
}
