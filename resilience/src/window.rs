//! A lock-free ring of time buckets, each one `AtomicU64` packing a bucket tag and two counters, shared
//! by the breaker's outcome window and the retry budget.
//!
//! Packing (high to low): 24-bit tag (the bucket's unit index mod 2^24) · 20-bit counter `a` · 20-bit
//! counter `b`. One word per bucket means a bucket is rolled over and counted into with a single CAS,
//! so no increment is lost at a bucket boundary. Counters saturate at 2^20 − 1 per bucket (about a
//! million per bucket unit — far above what one deployment or route sees). The tag is compared modulo
//! 2^24: a bucket left untouched for exactly a multiple of 2^24 units would be read as current again,
//! an accepted imprecision (16 million units is 194 days of 1-second buckets).
//!
//! Callers pass the current time: a write for a unit a whole ring older than a bucket's unit (a clock
//! lagging by a full window) restarts that bucket, dropping its counts.

use std::sync::atomic::{AtomicU64, Ordering};

const BITS: u32 = 20;
const MAX: u64 = (1 << BITS) - 1;
const TAG_MASK: u64 = (1 << 24) - 1;

#[inline]
fn pack(tag: u64, a: u64, b: u64) -> u64 {
    (tag << (2 * BITS)) | (a << BITS) | b
}

#[inline]
fn unpack(w: u64) -> (u64, u64, u64) {
    (w >> (2 * BITS), (w >> BITS) & MAX, w & MAX)
}

/// Ring of `len` buckets; `unit` is the bucket index on the caller's time scale (e.g. `now_ms / 1000`).
pub(crate) struct Ring {
    slots: Box<[AtomicU64]>,
}

impl Ring {
    pub(crate) fn new(len: usize) -> Self {
        let len = len.max(1);
        Self {
            slots: (0..len).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.slots.len() as u64
    }

    fn slot(&self, unit: u64) -> &AtomicU64 {
        // `len ≥ 1` (see `new`), so the index is in bounds.
        let i = (unit % self.len()) as usize;
        &self.slots[i]
    }

    /// Adds `(a, b)` to `unit`'s bucket, starting it afresh if it holds another unit. Returns false
    /// when a counter saturated and the add was not fully applied.
    pub(crate) fn add(&self, unit: u64, a: u64, b: u64) -> bool {
        let tag = unit & TAG_MASK;
        let slot = self.slot(unit);
        let mut cur = slot.load(Ordering::Acquire);
        loop {
            let (t, ca, cb) = unpack(cur);
            let (base_a, base_b) = if t == tag { (ca, cb) } else { (0, 0) };
            let na = (base_a + a).min(MAX);
            let nb = (base_b + b).min(MAX);
            let full = na == base_a + a && nb == base_b + b;
            match slot.compare_exchange_weak(
                cur,
                pack(tag, na, nb),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return full,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Sums the buckets of units `(unit − len, unit]`: the current bucket and the `len − 1` before it.
    pub(crate) fn sum(&self, unit: u64) -> (u64, u64) {
        let tag = unit & TAG_MASK;
        let len = self.len();
        self.slots.iter().fold((0, 0), |(sa, sb), s| {
            let (t, a, b) = unpack(s.load(Ordering::Acquire));
            if (tag.wrapping_sub(t) & TAG_MASK) < len {
                (sa + a, sb + b)
            } else {
                (sa, sb)
            }
        })
    }

    /// Forgets everything (a breaker closing starts a fresh window).
    pub(crate) fn clear(&self) {
        for s in self.slots.iter() {
            s.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_only() {
        let r = Ring::new(3);
        assert!(r.add(10, 1, 0));
        assert!(r.add(11, 1, 1));
        assert!(r.add(12, 2, 0));
        assert_eq!(r.sum(12), (4, 1));
        assert_eq!(r.sum(13), (3, 1)); // unit 10 left the window
        assert!(r.add(13, 5, 5)); // reuses unit 10's slot
        assert_eq!(r.sum(13), (8, 6));
        assert_eq!(r.sum(16), (0, 0));
    }

    #[test]
    fn saturates_and_reports_it() {
        let r = Ring::new(1);
        assert!(r.add(0, MAX, MAX - 1));
        assert!(r.add(0, 0, 1));
        assert!(!r.add(0, 1, 0));
        assert!(!r.add(0, 0, 1));
        assert_eq!(r.sum(0), (MAX, MAX));
    }

    #[test]
    fn fresh_slots_count_at_any_unit() {
        // Units whose tag is "ahead" of an empty slot's tag 0 modulo 2^24 must still be counted.
        for unit in [0, (1 << 23) + 5, (1 << 24) - 1, 1 << 40] {
            let r = Ring::new(3);
            r.add(unit, 1, 1);
            assert_eq!(r.sum(unit), (1, 1), "unit {unit}");
        }
    }
}
