//! Single-flight: concurrent identical misses in one proxy make one upstream call.
//!
//! The first caller of a key becomes its [`Leader`] and goes upstream; callers that join while the
//! flight is open become [`Follower`]s and wait, bounded, for the leader's result. The leader's
//! [`finish`](Leader::finish) (or its drop, when the request is cancelled or fails) wakes them all and
//! closes the flight, so the next miss starts a new one. The map's lock is held only to look up,
//! insert or remove one key; waiting happens on a per-flight `watch` channel, outside it.

use crate::{Entry, Key};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// `None` while the flight is open; `Some(result)` once the leader finished.
type Outcome = Option<Option<Arc<Entry>>>;

#[derive(Debug, Default)]
struct Inner {
    open: Mutex<HashMap<Key, (u64, watch::Receiver<Outcome>)>>,
    next_id: AtomicU64,
}

/// The open flights of one proxy (cheap to clone; clones share the flights).
#[derive(Clone, Default)]
pub struct Flights(Arc<Inner>);

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("open", &self.open())
            .finish()
    }
}

/// Who a caller is for a key.
#[derive(Debug)]
pub enum Join {
    /// The first caller: goes upstream, then [`Leader::finish`]es.
    Leader(Leader),
    /// A concurrent caller: [`Follower::wait`]s for the leader.
    Follower(Follower),
}

/// The caller that makes the upstream call for a key.
#[derive(Debug)]
pub struct Leader {
    flights: Arc<Inner>,
    key: Key,
    id: u64,
    tx: watch::Sender<Outcome>,
}

/// A caller waiting for a leader's result.
#[derive(Debug)]
pub struct Follower {
    rx: watch::Receiver<Outcome>,
}

impl Flights {
    /// Joins the flight for `key`, opening it when there is none.
    pub fn join(&self, key: &Key) -> Join {
        let mut open = self.0.open.lock();
        if let Some((_, rx)) = open.get(key) {
            return Join::Follower(Follower { rx: rx.clone() });
        }
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        open.insert(*key, (id, rx));
        Join::Leader(Leader {
            flights: self.0.clone(),
            key: *key,
            id,
            tx,
        })
    }

    /// Flights open now.
    pub fn open(&self) -> usize {
        self.0.open.lock().len()
    }
}

impl Leader {
    /// Wakes every follower with `entry` (`None`: nothing cacheable came back) and closes the flight.
    pub fn finish(self, entry: Option<Arc<Entry>>) {
        // `send_replace` stores the value even with no receiver left; the flight closes on drop.
        self.tx.send_replace(Some(entry));
    }
}

impl Drop for Leader {
    /// Closes the flight. Unfinished (cancelled, failed), dropping the sender wakes the followers
    /// with `None`.
    fn drop(&mut self) {
        let mut open = self.flights.open.lock();
        if open.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            open.remove(&self.key);
        }
    }
}

impl Follower {
    /// The leader's result, or `None` when it failed or did not finish within `timeout` (the caller
    /// then goes upstream itself).
    pub async fn wait(mut self, timeout: Duration) -> Option<Arc<Entry>> {
        let done = self.rx.wait_for(Option::is_some);
        match tokio::time::timeout(timeout, done).await {
            Ok(Ok(outcome)) => outcome.clone().flatten(),
            Ok(Err(_leader_gone)) => None,
            Err(_elapsed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use bytes::Bytes;

    fn key(n: u8) -> Key {
        Key([n; 32])
    }

    fn entry() -> Arc<Entry> {
        Arc::new(Entry {
            status: 200,
            content_type: "application/json".into(),
            body: Bytes::from_static(b"{\"ok\":true}"),
            stored_at_ms: 1,
            provider: "openai".into(),
            served_model: None,
            usage: None,
        })
    }

    fn leader(join: Join) -> Leader {
        match join {
            Join::Leader(l) => l,
            Join::Follower(_) => panic!("expected a leader"),
        }
    }

    fn follower(join: Join) -> Follower {
        match join {
            Join::Follower(f) => f,
            Join::Leader(_) => panic!("expected a follower"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_joins_make_one_leader_and_followers_get_its_entry() {
        let flights = Flights::default();
        let joins: Vec<Join> = (0..16).map(|_| flights.join(&key(1))).collect();
        let mut leaders = Vec::new();
        let mut waiting = Vec::new();
        for join in joins {
            match join {
                Join::Leader(l) => leaders.push(l),
                Join::Follower(f) => waiting.push(tokio::spawn(f.wait(Duration::from_secs(5)))),
            }
        }
        assert_eq!(leaders.len(), 1);
        assert_eq!(waiting.len(), 15);
        // Another key is its own flight.
        let _other = leader(flights.join(&key(2)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let stored = entry();
        leaders.pop().unwrap().finish(Some(stored.clone()));
        for w in waiting {
            let got = w.await.unwrap().expect("the leader's entry");
            assert!(Arc::ptr_eq(&got, &stored));
        }
        assert_eq!(flights.open(), 1, "only key 2's flight is still open");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_joins_across_tasks_make_exactly_one_leader() {
        let flights = Flights::default();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let flights = flights.clone();
                tokio::spawn(async move {
                    match flights.join(&key(7)) {
                        Join::Leader(l) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            l.finish(Some(entry()));
                            true
                        }
                        Join::Follower(f) => {
                            assert!(f.wait(Duration::from_secs(1)).await.is_some());
                            false
                        }
                    }
                })
            })
            .collect();
        let mut leaders = 0;
        for t in tasks {
            leaders += usize::from(t.await.unwrap());
        }
        assert_eq!(leaders, 1);
        assert_eq!(flights.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_leader_wakes_followers_with_none_promptly() {
        let flights = Flights::default();
        let l = leader(flights.join(&key(1)));
        let f = follower(flights.join(&key(1)));
        let start = tokio::time::Instant::now();
        let waiting = tokio::spawn(f.wait(Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(l);
        assert!(waiting.await.unwrap().is_none());
        assert_eq!(start.elapsed(), Duration::from_millis(5));
        assert_eq!(flights.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_finish_with_none_wakes_followers_with_none() {
        let flights = Flights::default();
        let l = leader(flights.join(&key(1)));
        let f = follower(flights.join(&key(1)));
        l.finish(None);
        assert!(f.wait(Duration::from_secs(1)).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_is_bounded_by_its_timeout() {
        let flights = Flights::default();
        let _slow = leader(flights.join(&key(1)));
        let f = follower(flights.join(&key(1)));
        let start = tokio::time::Instant::now();
        assert!(f.wait(Duration::from_millis(250)).await.is_none());
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_key_starts_a_new_flight() {
        let flights = Flights::default();
        let first = leader(flights.join(&key(1)));
        first.finish(Some(entry()));
        let second = leader(flights.join(&key(1)));
        let f = follower(flights.join(&key(1)));
        assert_eq!(flights.open(), 1);
        second.finish(Some(entry()));
        assert!(f.wait(Duration::from_secs(1)).await.is_some());
        assert_eq!(flights.open(), 0);
    }
}
