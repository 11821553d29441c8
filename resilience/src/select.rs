//! Deployment choice: weighted least-in-flight with rotation among equals.

/// What `pick` knows of one deployment.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    /// Share of traffic; 0 means "drained" and the candidate is never picked.
    pub weight: u32,
    /// Requests in flight to it now.
    pub in_flight: u32,
    /// Breaker available, healthy, quota headroom, bulkhead room — whatever the caller requires.
    pub eligible: bool,
    /// Already tried for this request.
    pub tried: bool,
}

impl Candidate {
    fn usable(&self) -> bool {
        self.eligible && self.weight > 0
    }

    /// Whether `self` is strictly less loaded than `other`: (in_flight+1)/weight compared by
    /// cross-multiplication (exact in u64).
    fn lighter_than(&self, other: &Candidate) -> bool {
        (u64::from(self.in_flight) + 1) * u64::from(other.weight)
            < (u64::from(other.in_flight) + 1) * u64::from(self.weight)
    }
}

/// Weighted least-in-flight: among eligible candidates (weight > 0), prefer untried ones, then the
/// lowest `(in_flight + 1) / weight`; ties go to the first in rotation order starting at
/// `rotate % len`, so equal candidates share the load when `rotate` varies per request. Returns `None`
/// if no candidate is eligible; if only tried candidates are eligible, returns the best tried one.
pub fn pick(cands: &[Candidate], rotate: u64) -> Option<usize> {
    let n = cands.len();
    if n == 0 {
        return None;
    }
    let start = (rotate % n as u64) as usize;
    let mut best: Option<(usize, &Candidate)> = None;
    for i in (start..n).chain(0..start) {
        let Some(c) = cands.get(i).filter(|c| c.usable()) else {
            continue;
        };
        let better = match best {
            None => true,
            Some((_, b)) => (b.tried && !c.tried) || (b.tried == c.tried && c.lighter_than(b)),
        };
        if better {
            best = Some((i, c));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(weight: u32, in_flight: u32) -> Candidate {
        Candidate {
            weight,
            in_flight,
            eligible: true,
            tried: false,
        }
    }

    #[test]
    fn empty_and_drained() {
        assert_eq!(pick(&[], 0), None);
        assert_eq!(pick(&[c(0, 0)], 0), None);
    }

    #[test]
    fn lighter_by_weight() {
        // (3+1)/2 = 2 vs (1+1)/1 = 2: tie → rotation; (4+1)/2 > 2 → the second.
        assert_eq!(pick(&[c(2, 3), c(1, 1)], 0), Some(0));
        assert_eq!(pick(&[c(2, 3), c(1, 1)], 1), Some(1));
        assert_eq!(pick(&[c(2, 4), c(1, 1)], 0), Some(1));
    }
}
