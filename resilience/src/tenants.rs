//! Who an upstream failure is attributed to ([`Cause`]), and a small lock-free set of the tenants
//! recently seen failing ([`RecentTenants`]). Together they keep one tenant from taking a deployment out
//! for everyone: the breaker trips and a `429` cools a deployment only on provider-wide evidence — a
//! provider-wide cause, or failures from at least `min_tenants` distinct tenants within the window.
//!
//! The set is [`SLOTS`] atomic words, each packing a 24-bit tenant tag (from the caller's 64-bit hash)
//! and the `now_ms` it was last seen, in 40 bits (35 years of a process-relative clock; 0 = empty). Recording is a scan and one CAS; counting
//! de-duplicates tags, so a race that writes one tenant into two slots never counts it twice. A tag
//! collision (two tenants with the same 24 bits, ~1 in 16 million per pair) or a record lost to a
//! contended CAS undercounts, the safe side for isolation. With more than [`SLOTS`] tenants failing at
//! once the least recently seen is replaced, so counts up to [`SLOTS`] stay exact.

use std::sync::atomic::{AtomicU64, Ordering};

/// Slots of a [`RecentTenants`]: the largest `min_tenants` it can tell apart.
pub const SLOTS: usize = 16;

const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// Who an outcome is attributed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The provider as a whole: a connection that could not be made, or the provider's own headers
    /// saying the account is out of quota. Counts regardless of tenants.
    Provider,
    /// A request of one tenant (the caller's hash of its org, user or address): one tenant could have
    /// provoked it (a huge prompt, a request that makes the provider fail or stall).
    Tenant(u64),
}

/// The tenants seen failing within the last `window_ms`, up to [`SLOTS`] of them.
pub struct RecentTenants {
    slots: [AtomicU64; SLOTS],
    window_ms: u64,
}

#[inline]
fn tag_of(hash: u64) -> u64 {
    // The top 24 bits of the hash, low bit forced so that a tag is never 0 (0 marks an empty slot).
    ((hash >> TIME_BITS) | 1) << TIME_BITS
}

impl RecentTenants {
    pub fn new(window_ms: u64) -> Self {
        Self {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            window_ms: window_ms.max(1),
        }
    }

    /// How long ago the slot's tenant was seen; `u64::MAX` for an empty slot or one outside the window.
    fn age(&self, word: u64, now: u64) -> u64 {
        if word == 0 {
            return u64::MAX;
        }
        let age = now.saturating_sub(word & TIME_MASK);
        if age < self.window_ms {
            age
        } else {
            u64::MAX
        }
    }

    /// Notes that `tenant` failed at `now_ms`.
    pub fn record(&self, now_ms: u64, tenant: u64) {
        let tag = tag_of(tenant);
        let now = now_ms & TIME_MASK;
        // A few rounds: each finds the tenant's slot or claims the emptiest / least recently seen one,
        // or loses a CAS to a concurrent writer and looks again. Giving up undercounts: safe.
        for _ in 0..4 {
            let mut victim: Option<(usize, u64, u64)> = None;
            for (i, s) in self.slots.iter().enumerate() {
                let cur = s.load(Ordering::Acquire);
                if cur & !TIME_MASK == tag {
                    if cur & TIME_MASK >= now {
                        return; // already seen at least this recently
                    }
                    victim = Some((i, cur, 0));
                    break;
                }
                let age = self.age(cur, now);
                if victim.is_none_or(|(_, _, a)| age > a) {
                    victim = Some((i, cur, age));
                }
            }
            let Some((i, cur, _)) = victim else { return };
            if self.slots[i]
                .compare_exchange(cur, tag | now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Distinct tenants seen within the window at `now_ms` (at most [`SLOTS`]).
    pub fn distinct(&self, now_ms: u64) -> usize {
        let mut tags = [0u64; SLOTS];
        let mut n = 0;
        for s in &self.slots {
            let w = s.load(Ordering::Acquire);
            if self.age(w, now_ms & TIME_MASK) != u64::MAX {
                let tag = w & !TIME_MASK;
                if !tags[..n].contains(&tag) {
                    tags[n] = tag;
                    n += 1;
                }
            }
        }
        n
    }

    /// Records `tenant` at `now_ms`; true when at least `min` distinct tenants are now in the window.
    pub fn record_and_reach(&self, now_ms: u64, tenant: u64, min: u32) -> bool {
        if min <= 1 {
            return true;
        }
        self.record(now_ms, tenant);
        self.distinct(now_ms) >= min as usize
    }

    /// Forgets everything.
    pub fn clear(&self) {
        for s in &self.slots {
            s.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u64 = 0xAAAA_AAAA_AAAA_AAAA;
    const B: u64 = 0x5555_5555_5555_5555;

    #[test]
    fn one_tenant_is_one_however_often_it_fails() {
        let t = RecentTenants::new(1_000);
        for now in 0..500 {
            t.record(now, A);
        }
        assert_eq!(t.distinct(499), 1);
        t.record(500, B);
        assert_eq!(t.distinct(500), 2);
    }

    #[test]
    fn tenants_leave_the_window() {
        let t = RecentTenants::new(1_000);
        t.record(0, A);
        t.record(600, B);
        assert_eq!(t.distinct(999), 2);
        assert_eq!(t.distinct(1_000), 1); // A was seen 1000 ms ago: out
        assert_eq!(t.distinct(1_600), 0);
        // Seen again, A is back in.
        t.record(1_700, A);
        assert_eq!(t.distinct(1_700), 1);
    }

    #[test]
    fn a_later_sighting_keeps_a_tenant_in() {
        let t = RecentTenants::new(1_000);
        t.record(0, A);
        t.record(900, A);
        t.record(950, B);
        assert_eq!(t.distinct(1_500), 2);
    }

    #[test]
    fn more_tenants_than_slots_replace_the_oldest() {
        let t = RecentTenants::new(10_000);
        for i in 0..(SLOTS as u64 + 8) {
            t.record(i, i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        assert_eq!(t.distinct(100), SLOTS);
    }

    #[test]
    fn record_and_reach_with_min_one_needs_no_second_tenant() {
        let t = RecentTenants::new(1_000);
        assert!(t.record_and_reach(0, A, 1));
        assert!(!t.record_and_reach(0, A, 2));
        assert!(!t.record_and_reach(1, A, 2));
        assert!(t.record_and_reach(2, B, 2));
        t.clear();
        assert_eq!(t.distinct(2), 0);
    }

    #[test]
    fn concurrent_records_of_one_tenant_count_once() {
        let t = std::sync::Arc::new(RecentTenants::new(1_000_000));
        let threads: Vec<_> = (0..8)
            .map(|k| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for now in 0..2_000 {
                        t.record(now, A);
                        if k == 0 && now == 1_000 {
                            t.record(now, B);
                        }
                    }
                })
            })
            .collect();
        for h in threads {
            h.join().ok();
        }
        assert_eq!(t.distinct(2_000), 2);
    }
}
