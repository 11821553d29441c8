//! Idle upstream connections, one lock-free queue per upstream peer.
//!
//! Pingora's own pool spawns a watcher task per released connection (to notice the peer closing it)
//! and takes locks on put and get; on a gateway doing one upstream call per request that is a task
//! spawn, a wake-up and two lock round trips per request. This pool does neither: a connection goes
//! back into an `ArrayQueue` with the time it went idle, and comes out again if it has not been idle
//! longer than the provider's `idle_timeout_ms`. A connection the peer closed meanwhile is caught by
//! the stale-connection retry in `upstream.rs` (the request is re-sent on a fresh connection), so no
//! watcher is needed.
//!
//! Pools are keyed by the peer (address, TLS, SNI) and shared across config versions through
//! `Pools`, so a reload keeps warm connections.

use crossbeam_queue::ArrayQueue;
use pingora::protocols::Stream;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
// tokio's clock, as everywhere in the exchange (paused in tests).
use tokio::time::Instant;

/// Idle connections kept per upstream peer; more are closed when released.
pub const IDLE_PER_PEER: usize = 512;

pub struct IdlePool {
    idle: ArrayQueue<(Stream, Instant)>,
    idle_timeout: Duration,
}

impl IdlePool {
    pub fn new(capacity: usize, idle_timeout: Duration) -> Self {
        IdlePool {
            idle: ArrayQueue::new(capacity.max(1)),
            idle_timeout,
        }
    }

    /// A connection idle for less than the timeout, if any; older ones are closed on the way.
    pub fn take(&self, now: Instant) -> Option<Stream> {
        while let Some((stream, since)) = self.idle.pop() {
            if now.saturating_duration_since(since) < self.idle_timeout {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps `stream` for reuse, or closes it when the pool is full.
    pub fn put(&self, stream: Stream, now: Instant) {
        let _ = self.idle.push((stream, now));
    }

    pub fn len(&self) -> usize {
        self.idle.len()
    }

    pub fn is_empty(&self) -> bool {
        self.idle.is_empty()
    }
}

/// The pools of every peer, kept across config versions. Consulted only while building a snapshot.
#[derive(Default)]
pub struct Pools {
    by_peer: Mutex<HashMap<(u64, Duration), Arc<IdlePool>>>,
}

impl Pools {
    /// The pool for `peer_key` (its reuse hash) with this idle timeout; the same `Arc` every time.
    pub fn get(&self, peer_key: u64, idle_timeout: Duration) -> Arc<IdlePool> {
        let mut map = self.by_peer.lock().unwrap_or_else(|p| p.into_inner());
        // Drop pools no snapshot uses any more (their connections close with them).
        map.retain(|_, p| Arc::strong_count(p) > 1);
        map.entry((peer_key, idle_timeout))
            .or_insert_with(|| Arc::new(IdlePool::new(IDLE_PER_PEER, idle_timeout)))
            .clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn stream() -> Stream {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        Box::new(pingora::protocols::l4::stream::Stream::from(c))
    }

    #[tokio::test]
    async fn returns_fresh_connections_and_drops_expired_ones() {
        let pool = IdlePool::new(4, Duration::from_secs(10));
        let t0 = Instant::now();
        pool.put(stream().await, t0);
        pool.put(stream().await, t0 + Duration::from_secs(5));
        // At t0+12s the first is 12 s idle (expired), the second 7 s (fresh).
        assert!(pool.take(t0 + Duration::from_secs(12)).is_some());
        assert!(pool.is_empty());
        assert!(pool.take(t0 + Duration::from_secs(12)).is_none());
    }

    #[tokio::test]
    async fn closes_connections_beyond_capacity() {
        let pool = IdlePool::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..3 {
            pool.put(stream().await, t0);
        }
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn pools_are_shared_per_peer_and_released_when_unused() {
        let pools = Pools::default();
        let a = pools.get(1, Duration::from_secs(30));
        let b = pools.get(1, Duration::from_secs(30));
        assert!(Arc::ptr_eq(&a, &b));
        let c = pools.get(2, Duration::from_secs(30));
        assert!(!Arc::ptr_eq(&a, &c));
        drop((a, b));
        let _ = pools.get(3, Duration::from_secs(30));
        assert_eq!(
            pools.by_peer.lock().unwrap().len(),
            2,
            "peer 1's pool was dropped"
        );
    }
}
