//! `MemoryStore`: bucket state in process memory, the embedded default backend.
//!
//! A sharded map (`DashMap`) from key to `Arc<Mutex<Entry>>`. A `take` first looks up (or creates)
//! every bucket of the request, cloning the `Arc`s so no map shard lock is held while it waits on a
//! bucket, then locks the buckets in key order (so two requests sharing buckets cannot deadlock),
//! runs every charge on the locked states and stores the results only if all were admitted.
//!
//! A request may name one key twice: the bucket is locked once and its charges apply one after the
//! other, in the caller's order.
//!
//! The `rate-limit` filter resolves a request's buckets as it spells their keys (`bucket`: the map's
//! own key, nothing allocated for an existing bucket), takes on them (`take_in`) and settles through
//! them (`Held`), with no further lookups.
//!
//! `evict_idle` drops buckets whose state equals a fresh one (a background sweep calls it). A bucket
//! some `take` is using (its `Arc` is cloned) is never evicted, so no admission is lost to a sweep.

use super::algo::{Admit, Algorithm, Nanos, State};
use super::store::{Adjust, Charge, Store, StoreError, Taken};
use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;

/// One bucket.
#[derive(Debug)]
struct Entry {
    state: State,
    /// The algorithm that last used the bucket: what `evict_idle` judges idleness by.
    algo: Arc<Algorithm>,
    last_used: Nanos,
}

type Slot = Arc<Mutex<Entry>>;

#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Hashed with aHash: a request looks up each of its buckets, and SipHash made that about 320
    /// instructions a lookup (issue 19). Keyed per process, as keys hold caller-chosen parts.
    buckets: DashMap<Arc<str>, Slot, ahash::RandomState>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of buckets held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The bucket's standing at `now`, if it exists (for tests and admin views).
    pub fn status(&self, key: &str, now: Nanos) -> Option<super::algo::Status> {
        let slot = self.buckets.get(key).map(|r| Arc::clone(r.value()))?;
        let e = slot.lock();
        Some(e.algo.status(&e.state, now))
    }

    /// The bucket's raw state, if it exists.
    pub fn state(&self, key: &str) -> Option<State> {
        let slot = self.buckets.get(key).map(|r| Arc::clone(r.value()))?;
        let state = slot.lock().state;
        Some(state)
    }

    /// Drops every bucket whose state is equivalent to a fresh one at `now`; returns how many.
    pub fn evict_idle(&self, now: Nanos) -> usize {
        let mut evicted = 0;
        self.buckets.retain(|_, slot| {
            // Holding the shard's write lock: nobody can clone this `Arc` meanwhile, and a count
            // above 1 means a `take` or `adjust` holds it.
            if Arc::strong_count(slot) != 1 {
                return true;
            }
            let idle = match slot.try_lock() {
                Some(e) => e.algo.is_idle(&e.state, now),
                None => false,
            };
            if idle {
                evicted += 1;
            }
            !idle
        });
        evicted
    }

    /// The synchronous `take`: never blocks on I/O, only on bucket mutexes.
    pub fn take_sync(&self, now: Nanos, charges: &[Charge]) -> Taken {
        match charges {
            [] => Taken::Admitted(Vec::new()),
            [one] => self.take_one(now, one),
            _ => self.take_many(now, charges, false).0,
        }
    }

    /// `take_sync`, also handing back the buckets when admitted (one per charge, in order), so the
    /// request settles them without looking them up again. A held bucket is never evicted; that
    /// changes nothing, since only a bucket equivalent to a fresh one is evicted.
    pub fn take_held(&self, now: Nanos, charges: &[Charge]) -> (Taken, Vec<Held>) {
        match charges {
            [] => (Taken::Admitted(Vec::new()), Vec::new()),
            [one] => {
                let slot = self.slot(&one.key, &one.algo, now);
                let taken = Self::take_locked(&mut slot.lock(), now, one);
                let held = match taken {
                    Taken::Admitted(_) => vec![Held(slot)],
                    Taken::Denied { .. } => Vec::new(),
                };
                (taken, held)
            }
            _ => self.take_many(now, charges, true),
        }
    }

    /// The bucket for `key`, created fresh at `now` if missing, held: the map's own key (an `Arc`
    /// clone: no allocation when the bucket exists) and the bucket, for [`take_in`](Self::take_in).
    pub fn bucket(&self, key: &str, algo: &Arc<Algorithm>, now: Nanos) -> (Arc<str>, Held) {
        if let Some(r) = self.buckets.get(key) {
            return (Arc::clone(r.key()), Held(Arc::clone(r.value())));
        }
        let r = self
            .buckets
            .entry(Arc::from(key))
            .or_insert_with(|| fresh(algo, now));
        (Arc::clone(r.key()), Held(Arc::clone(r.value())))
    }

    /// [`take_held`](Self::take_held) on buckets the caller holds already (from
    /// [`bucket`](Self::bucket), one per charge, in order): no map lookups. Given another number of
    /// buckets than charges, it looks them up instead.
    pub fn take_in(
        &self,
        now: Nanos,
        charges: &[Charge],
        buckets: Vec<Held>,
    ) -> (Taken, Vec<Held>) {
        if buckets.len() != charges.len() {
            return self.take_held(now, charges);
        }
        let taken = match charges {
            [] => Taken::Admitted(Vec::new()),
            [one] => match buckets.first() {
                Some(b) => Self::take_locked(&mut b.0.lock(), now, one),
                None => Taken::Admitted(Vec::new()),
            },
            _ => take_in_order(&buckets, charges, now),
        };
        match taken {
            Taken::Admitted(_) => (taken, buckets),
            Taken::Denied { .. } => (taken, Vec::new()),
        }
    }

    /// The synchronous `adjust`.
    pub fn adjust_sync(&self, now: Nanos, adjusts: &[Adjust]) {
        for a in adjusts {
            self.adjust_one(now, &a.key, &a.algo, a.delta);
        }
    }

    /// One bucket's `adjust`, without an [`Adjust`] (the caller keeps its key and algorithm).
    pub fn adjust_one(&self, now: Nanos, key: &Arc<str>, algo: &Arc<Algorithm>, delta: i64) {
        if delta == 0 {
            return;
        }
        // A refund to a missing (evicted, hence fresh) bucket changes nothing: don't create it.
        let slot = if delta < 0 {
            match self.buckets.get(&**key) {
                Some(r) => Arc::clone(r.value()),
                None => return,
            }
        } else {
            self.slot(key, algo, now)
        };
        let mut e = slot.lock();
        e.state = algo.adjust(&e.state, now, delta);
        touch(&mut e, algo, now);
    }

    /// Gets or creates the bucket; the map's shard lock is released on return.
    fn slot(&self, key: &Arc<str>, algo: &Arc<Algorithm>, now: Nanos) -> Slot {
        if let Some(r) = self.buckets.get(&**key) {
            return Arc::clone(r.value());
        }
        let r = self
            .buckets
            .entry(Arc::clone(key))
            .or_insert_with(|| fresh(algo, now));
        Arc::clone(r.value())
    }

    fn take_one(&self, now: Nanos, c: &Charge) -> Taken {
        // Fast path: lock the bucket under the shard's read lock (no `Arc` traffic). Safe: nothing
        // waits for a shard lock while holding a bucket, and `evict_idle` only `try_lock`s.
        if let Some(r) = self.buckets.get(&*c.key) {
            return Self::take_locked(&mut r.value().lock(), now, c);
        }
        let slot = self.slot(&c.key, &c.algo, now);
        let mut e = slot.lock();
        Self::take_locked(&mut e, now, c)
    }

    fn take_locked(e: &mut Entry, now: Nanos, c: &Charge) -> Taken {
        match c.algo.take(&e.state, now, c.cost, c.reserve) {
            Ok((state, admit)) => {
                e.state = state;
                touch(e, &c.algo, now);
                Taken::Admitted(vec![admit])
            }
            Err(deny) => Taken::Denied { index: 0, deny },
        }
    }

    /// `held`: hand the buckets back (in charge order) when admitted.
    fn take_many(&self, now: Nanos, charges: &[Charge], held: bool) -> (Taken, Vec<Held>) {
        let buckets: Vec<Held> = charges
            .iter()
            .map(|c| Held(self.slot(&c.key, &c.algo, now)))
            .collect();
        let taken = take_in_order(&buckets, charges, now);
        let held = if held && matches!(taken, Taken::Admitted(_)) {
            buckets
        } else {
            Vec::new()
        };
        (taken, held)
    }
}

fn fresh(algo: &Arc<Algorithm>, now: Nanos) -> Slot {
    Arc::new(Mutex::new(Entry {
        state: algo.fresh(now),
        algo: Arc::clone(algo),
        last_used: now,
    }))
}

/// A locked bucket, once its turn in key order came.
type Guard<'a> = Option<MutexGuard<'a, Entry>>;

/// Up to this many charges, `take_in_order`'s scratch (guards, states) lives on the stack.
const SMALL: usize = 8;

/// Locks each distinct bucket (`buckets[i]` is charge `i`'s) once, in key order (so two requests
/// sharing buckets cannot deadlock), runs every charge on copies of the states, in the caller's order,
/// and stores them only if all were admitted.
fn take_in_order(buckets: &[Held], charges: &[Charge], now: Nanos) -> Taken {
    let n = charges.len().min(buckets.len());
    let mut guards_small: [Guard<'_>; SMALL] = Default::default();
    let mut of_small = [0usize; SMALL];
    let mut work_small = [State::Concurrency { inflight: 0 }; SMALL];
    let mut perm_small = [0usize; SMALL];
    let (mut guards_big, mut of_big, mut work_big, mut perm_big);
    let (guards, of, work, perm): (&mut [Guard<'_>], &mut [usize], &mut [State], &mut [usize]) =
        if n <= SMALL {
            (
                &mut guards_small[..n],
                &mut of_small[..n],
                &mut work_small[..n],
                &mut perm_small[..n],
            )
        } else {
            guards_big = (0..n).map(|_| None).collect::<Vec<_>>();
            of_big = vec![0usize; n];
            work_big = vec![State::Concurrency { inflight: 0 }; n];
            perm_big = vec![0usize; n];
            (&mut guards_big, &mut of_big, &mut work_big, &mut perm_big)
        };
    for (i, p) in perm.iter_mut().enumerate() {
        *p = i;
    }
    perm.sort_by(|a, b| charges[*a].key.cmp(&charges[*b].key));

    // Lock each distinct bucket once, in that order; `of[charge]` is its guard's index.
    let mut locked = 0;
    let mut prev: Option<&Slot> = None;
    for &i in perm.iter() {
        let slot = &buckets[i].0;
        if !prev.is_some_and(|p| Arc::ptr_eq(p, slot)) {
            let g = slot.lock();
            work[locked] = g.state;
            guards[locked] = Some(g);
            locked += 1;
        }
        of[i] = locked - 1;
        prev = Some(slot);
    }

    run_locked(&charges[..n], guards, of, work, now)
}

/// Runs `charges` on copies of their locked buckets' states (`of[i]`: charge `i`'s guard and
/// working state), in order; stores the states only when every charge is admitted.
fn run_locked(
    charges: &[Charge],
    guards: &mut [Guard<'_>],
    of: &[usize],
    work: &mut [State],
    now: Nanos,
) -> Taken {
    let mut admits: Vec<Admit> = Vec::with_capacity(charges.len());
    for (i, c) in charges.iter().enumerate() {
        let g = of[i];
        match c.algo.take(&work[g], now, c.cost, c.reserve) {
            Ok((state, admit)) => {
                work[g] = state;
                admits.push(admit);
            }
            Err(deny) => return Taken::Denied { index: i, deny },
        }
    }
    for (i, c) in charges.iter().enumerate() {
        if let Some(g) = guards[of[i]].as_mut() {
            g.state = work[of[i]];
            touch(g, &c.algo, now);
        }
    }
    Taken::Admitted(admits)
}

/// A bucket an admitted request holds until it settles (see [`MemoryStore::take_held`]).
#[derive(Debug)]
pub struct Held(Slot);

impl Held {
    /// [`MemoryStore::adjust_one`] on this bucket, without the map lookup.
    pub fn adjust(&self, now: Nanos, algo: &Arc<Algorithm>, delta: i64) {
        if delta == 0 {
            return;
        }
        let mut e = self.0.lock();
        e.state = algo.adjust(&e.state, now, delta);
        touch(&mut e, algo, now);
    }
}

fn touch(e: &mut Entry, algo: &Arc<Algorithm>, now: Nanos) {
    if !Arc::ptr_eq(&e.algo, algo) {
        e.algo = Arc::clone(algo);
    }
    e.last_used = e.last_used.max(now);
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn take(&self, now: Nanos, charges: &[Charge]) -> Result<Taken, StoreError> {
        Ok(self.take_sync(now, charges))
    }

    async fn adjust(&self, now: Nanos, adjusts: &[Adjust]) -> Result<(), StoreError> {
        self.adjust_sync(now, adjusts);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::algo::CalendarWindow;
    use crate::store::OnStoreError;

    const SEC: u64 = 1_000_000_000;

    fn leaky(rate: u64, burst: u64) -> Arc<Algorithm> {
        Arc::new(Algorithm::Leaky {
            rate,
            period_ns: SEC,
            burst,
            shape_max_wait_ns: None,
        })
    }

    fn charge(key: &str, algo: &Arc<Algorithm>, cost: u64) -> Charge {
        Charge {
            key: Arc::from(key),
            algo: Arc::clone(algo),
            cost,
            reserve: 0,
            on_error: OnStoreError::Local,
        }
    }

    fn adjust(key: &str, algo: &Arc<Algorithm>, delta: i64) -> Adjust {
        Adjust {
            key: Arc::from(key),
            algo: Arc::clone(algo),
            delta,
        }
    }

    fn admitted(t: &Taken) -> bool {
        matches!(t, Taken::Admitted(_))
    }

    #[test]
    fn single_bucket_burst_then_refusal() {
        let s = MemoryStore::new();
        let a = leaky(1, 3);
        for _ in 0..3 {
            assert!(admitted(&s.take_sync(0, &[charge("k", &a, 1)])));
        }
        match s.take_sync(0, &[charge("k", &a, 1)]) {
            Taken::Denied { index, deny } => {
                assert_eq!(index, 0);
                assert_eq!(deny.retry_after_ns, SEC);
            }
            t => panic!("{t:?}"),
        }
        assert!(admitted(&s.take_sync(SEC, &[charge("k", &a, 1)])));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn all_or_nothing_when_a_later_bucket_refuses() {
        let s = MemoryStore::new();
        let wide = leaky(10, 100);
        let narrow = leaky(1, 2);
        assert!(admitted(&s.take_sync(0, &[charge("narrow", &narrow, 2)])));
        let before = s.state("narrow").unwrap();
        // "wide" sorts after "narrow" but comes first in the request: the index is the caller's.
        let t = s.take_sync(0, &[charge("wide", &wide, 5), charge("narrow", &narrow, 1)]);
        match t {
            Taken::Denied { index, deny } => {
                assert_eq!(index, 1);
                assert!(!deny.never_fits);
            }
            t => panic!("{t:?}"),
        }
        // The first bucket was created fresh and left untouched.
        assert_eq!(s.status("wide", 0).unwrap().remaining, 100);
        assert_eq!(s.state("narrow").unwrap(), before);
        // Both admitted: both stored, admits in the caller's order.
        let t = s.take_sync(
            SEC,
            &[charge("wide", &wide, 5), charge("narrow", &narrow, 1)],
        );
        match t {
            Taken::Admitted(v) => {
                assert_eq!(v.len(), 2);
                assert_eq!(v[0].status.limit, 100);
                assert_eq!(v[1].status.limit, 2);
            }
            t => panic!("{t:?}"),
        }
        assert_eq!(s.status("wide", SEC).unwrap().remaining, 95);
        assert_eq!(s.status("narrow", SEC).unwrap().remaining, 0);
    }

    #[test]
    fn repeated_key_applies_charges_in_turn() {
        let s = MemoryStore::new();
        let a = leaky(1, 3);
        let t = s.take_sync(0, &[charge("k", &a, 2), charge("k", &a, 1)]);
        assert!(admitted(&t));
        assert_eq!(s.status("k", 0).unwrap().remaining, 0);
        let t = s.take_sync(SEC, &[charge("k", &a, 1), charge("k", &a, 1)]);
        assert!(matches!(t, Taken::Denied { index: 1, .. }));
        assert_eq!(s.status("k", SEC).unwrap().remaining, 1);
    }

    #[test]
    fn adjust_charges_and_refunds() {
        let s = MemoryStore::new();
        let c = Arc::new(Algorithm::Concurrency { limit: 1 });
        assert!(admitted(&s.take_sync(0, &[charge("c", &c, 1)])));
        assert!(!admitted(&s.take_sync(0, &[charge("c", &c, 1)])));
        s.adjust_sync(0, &[adjust("c", &c, -1)]);
        assert!(admitted(&s.take_sync(0, &[charge("c", &c, 1)])));

        // A refund to a bucket that does not exist creates nothing.
        s.adjust_sync(0, &[adjust("missing", &c, -1)]);
        assert!(s.state("missing").is_none());
        // A charge does.
        let l = leaky(1, 10);
        s.adjust_sync(0, &[adjust("post", &l, 4)]);
        assert_eq!(s.status("post", 0).unwrap().remaining, 6);
    }

    #[test]
    fn evicts_only_idle_buckets() {
        let s = MemoryStore::new();
        let a = leaky(1, 10);
        let w = Arc::new(Algorithm::Window {
            limit: 10,
            window: CalendarWindow::Hour,
            tz: chrono_tz::Tz::UTC,
            soft: false,
        });
        assert!(admitted(&s.take_sync(0, &[charge("a", &a, 2)])));
        assert!(admitted(&s.take_sync(0, &[charge("b", &a, 5)])));
        assert!(admitted(&s.take_sync(0, &[charge("w", &w, 1)])));
        assert_eq!(s.len(), 3);
        assert_eq!(s.evict_idle(SEC), 0);
        assert_eq!(s.evict_idle(2 * SEC), 1); // "a" drained
        assert_eq!(s.len(), 2);
        assert_eq!(s.evict_idle(5 * SEC), 1); // "b" drained
        assert_eq!(s.evict_idle(3_600 * SEC - 1), 0); // the window holds usage until it rolls
        assert_eq!(s.evict_idle(3_600 * SEC), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn a_bucket_in_use_is_not_evicted() {
        let s = MemoryStore::new();
        let a = leaky(1, 10);
        let held = s.slot(&Arc::from("k"), &a, 0);
        assert_eq!(s.evict_idle(0), 0);
        drop(held);
        assert_eq!(s.evict_idle(0), 1);
    }

    /// Past `SMALL` charges the scratch is on the heap: the same all-or-nothing takes.
    #[test]
    fn many_charges_all_or_nothing() {
        let s = MemoryStore::new();
        let a = leaky(1, 10);
        for n in [SMALL - 1, SMALL, SMALL + 1, 3 * SMALL] {
            let keys: Vec<String> = (0..n).map(|i| format!("n{n}-k{}", i % (n - 1))).collect();
            // The last charge repeats the first key; the bucket holds 10.
            let mut cs: Vec<Charge> = keys.iter().map(|k| charge(k, &a, 4)).collect();
            cs[n - 1].cost = 7;
            assert!(matches!(s.take_sync(0, &cs), Taken::Denied { index, .. } if index == n - 1));
            assert!(keys.iter().all(|k| s.status(k, 0).unwrap().remaining == 10));
            cs[n - 1].cost = 6;
            match s.take_sync(0, &cs) {
                Taken::Admitted(v) => assert_eq!(v.len(), n),
                t => panic!("{t:?}"),
            }
            assert_eq!(s.status(&keys[0], 0).unwrap().remaining, 0);
            assert_eq!(s.status(&keys[1], 0).unwrap().remaining, 6);
        }
    }

    #[test]
    fn held_buckets_settle_like_a_lookup_and_are_not_evicted() {
        let s = MemoryStore::new();
        let (a, b) = (leaky(1, 10), leaky(1, 5));
        // "z" sorts first by key, and is charged twice: one held bucket per charge, in order.
        let cs = [charge("z", &a, 2), charge("b", &b, 1), charge("z", &a, 3)];
        let (t, held) = s.take_held(0, &cs);
        assert!(admitted(&t));
        assert_eq!(held.len(), 3);
        assert_eq!(s.status("z", 0).unwrap().remaining, 5);
        // Not evicted while held, even once equivalent to a fresh bucket.
        held[0].adjust(0, &a, -2);
        held[2].adjust(0, &a, -3);
        assert_eq!(s.evict_idle(0), 0);
        assert_eq!(s.status("z", 0).unwrap().remaining, 10);
        held[1].adjust(0, &b, 4);
        assert_eq!(s.status("b", 0).unwrap().remaining, 0);
        drop(held);
        assert_eq!(s.evict_idle(0), 1); // "z"
                                        // One charge, and a refusal: nothing held.
        let (t, held) = s.take_held(0, &[charge("b", &b, 1)]);
        assert!(!admitted(&t) && held.is_empty());
        let (t, held) = s.take_held(0, &[charge("z", &a, 1), charge("b", &b, 1)]);
        assert!(matches!(t, Taken::Denied { index: 1, .. }) && held.is_empty());
        let (t, held) = s.take_held(0, &[charge("z", &a, 1)]);
        assert!(admitted(&t));
        held[0].adjust(0, &a, -1);
        assert_eq!(s.status("z", 0).unwrap().remaining, 10);
    }

    #[test]
    fn buckets_resolved_up_front_take_like_a_lookup() {
        let s = MemoryStore::new();
        let (a, b) = (leaky(1, 10), leaky(1, 5));
        // `bucket` creates a fresh bucket once and then hands out the map's own key.
        let (k1, _) = s.bucket("z", &a, 0);
        let (k2, _) = s.bucket("z", &a, 0);
        assert!(Arc::ptr_eq(&k1, &k2));
        assert_eq!(s.status("z", 0).unwrap().remaining, 10);
        let resolve = |keys: &[(&str, &Arc<Algorithm>, u64)]| {
            let mut held = Vec::new();
            let cs: Vec<Charge> = keys
                .iter()
                .map(|(k, algo, cost)| {
                    let (key, h) = s.bucket(k, algo, 0);
                    held.push(h);
                    Charge {
                        key,
                        ..charge(k, algo, *cost)
                    }
                })
                .collect();
            (cs, held)
        };
        let (cs, held) = resolve(&[("z", &a, 2), ("b", &b, 1), ("z", &a, 3)]);
        let (t, held) = s.take_in(0, &cs, held);
        assert!(admitted(&t));
        assert_eq!(held.len(), 3);
        assert_eq!(s.status("z", 0).unwrap().remaining, 5);
        assert_eq!(s.status("b", 0).unwrap().remaining, 4);
        // All or nothing, nothing held on a refusal.
        let (cs, held) = resolve(&[("b", &b, 1), ("z", &a, 6)]);
        let (t, held) = s.take_in(0, &cs, held);
        assert!(matches!(t, Taken::Denied { index: 1, .. }) && held.is_empty());
        assert_eq!(s.status("b", 0).unwrap().remaining, 4);
        let (cs, held) = resolve(&[("b", &b, 4)]);
        let (t, held) = s.take_in(0, &cs, held);
        assert!(admitted(&t) && held.len() == 1);
        assert_eq!(s.status("b", 0).unwrap().remaining, 0);
        // Buckets that do not match the charges: looked up instead.
        let (t, held) = s.take_in(SEC, &[charge("z", &a, 1), charge("b", &b, 1)], Vec::new());
        assert!(admitted(&t) && held.len() == 2);
        assert_eq!(s.status("z", SEC).unwrap().remaining, 5);
    }

    #[test]
    fn store_trait_is_async_wrapper() {
        let s = MemoryStore::new();
        assert_eq!(s.name(), "memory");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let a = leaky(1, 1);
        let t = rt
            .block_on(Store::take(&s, 0, &[charge("k", &a, 1)]))
            .unwrap();
        assert!(admitted(&t));
        rt.block_on(Store::adjust(&s, 0, &[adjust("k", &a, -1)]))
            .unwrap();
        assert_eq!(s.status("k", 0).unwrap().remaining, 1);
    }

    #[test]
    fn concurrent_takes_never_over_admit() {
        let s = Arc::new(MemoryStore::new());
        let a = leaky(1, 1000);
        let b = Arc::new(Algorithm::Concurrency { limit: 700 });
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (s, a, b) = (Arc::clone(&s), Arc::clone(&a), Arc::clone(&b));
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    for i in 0..600 {
                        // Alternate the request order: key-ordered locking keeps it deadlock-free.
                        let cs = if (i + t) % 2 == 0 {
                            [charge("x", &a, 1), charge("y", &b, 1)]
                        } else {
                            [charge("y", &b, 1), charge("x", &a, 1)]
                        };
                        if admitted(&s.take_sync(0, &cs)) {
                            n += 1;
                        }
                        let _ = s.evict_idle(0);
                    }
                    n
                })
            })
            .collect();
        let total: u64 = threads.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 700);
        assert_eq!(s.status("x", 0).unwrap().remaining, 300);
    }
}
