//! The watch stream (`GET /v1/config/watch`): NDJSON, one event per line, never ending on its own.
//! It opens with the version in force as a `snapshot`, then sends every later version as the hub
//! broadcasts it; a `keys` delta that does not apply to what the stream last sent (this stream lagged
//! behind the broadcast, or the delta was published before the stream's snapshot) is replaced by the
//! snapshot in force, so a proxy never applies a delta to the wrong base. A heartbeat every
//! [`HEARTBEAT`] lets both ends notice a dead connection. With identity on Redis, the revoked access
//! tokens follow the first snapshot as a `revoked` event (the complete set) and again on every change.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError};

use super::hub::{Event, Hub};
use crate::identity::revoked::RevokedFeed;

/// How often an idle stream sends `{"type":"heartbeat"}`.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

struct Watch {
    hub: Arc<Hub>,
    rx: broadcast::Receiver<Arc<Event>>,
    /// The version this stream last sent (0: nothing yet).
    sent: i64,
    heartbeat: tokio::time::Interval,
    /// The revoked tokens (none without identity on Redis).
    revoked: Option<RevokedFeed>,
    /// Whether this stream sent the revoked set once (it goes right after the first snapshot).
    revoked_sent: bool,
}

type StopSignal = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The stream for one watcher. Subscribes before reading the version in force, so no version
/// published in between is missed.
/// The stream ends when `stop` resolves (the process drains for a graceful shutdown; proxies
/// reconnect to another replica or to this one once it is back).
pub fn stream(
    hub: Arc<Hub>,
    revoked: Option<RevokedFeed>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let rx = hub.subscribe();
    let start = tokio::time::Instant::now() + HEARTBEAT;
    let mut heartbeat = tokio::time::interval_at(start, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watch = Watch {
        hub,
        rx,
        sent: 0,
        heartbeat,
        revoked,
        revoked_sent: false,
    };
    let stop: StopSignal = Box::pin(stop);
    futures::stream::unfold((watch, stop), |(mut w, mut stop)| async move {
        let line = tokio::select! {
            line = w.next_line() => line,
            _ = &mut stop => return None,
        };
        Some((Ok(line), (w, stop)))
    })
}

impl Watch {
    async fn next_line(&mut self) -> Bytes {
        if self.sent == 0 {
            if let Some(line) = self.resync().await {
                return line;
            }
        }
        // Never before a snapshot: the protocol opens with one.
        if self.sent != 0 && !self.revoked_sent {
            self.revoked_sent = true;
            if let Some(line) = self.revoked_line() {
                return line;
            }
        }
        loop {
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Ok(ev) if ev.version <= self.sent => continue,
                    Ok(ev) if ev.base.is_none_or(|b| b == self.sent) && ev.line.is_some() => {
                        self.sent = ev.version;
                        return ev.line.clone().unwrap_or_default();
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        if let Some(line) = self.resync().await {
                            return line;
                        }
                    }
                    // The hub never drops its sender while the process runs.
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                },
                () = revoked_changed(&mut self.revoked), if self.revoked_sent => {
                    if let Some(line) = self.revoked_line() {
                        return line;
                    }
                }
                _ = self.heartbeat.tick() => {
                    return line(&json!({ "type": "heartbeat", "version": self.sent }));
                }
            }
        }
    }

    /// The revoked set now (marked seen), if it was read yet.
    fn revoked_line(&mut self) -> Option<Bytes> {
        let feed = self.revoked.as_mut()?;
        let set = feed.borrow_and_update();
        set.as_ref().map(|s| s.line())
    }

    /// The snapshot in force, if it is newer than what this stream sent.
    async fn resync(&mut self) -> Option<Bytes> {
        let cur = self.hub.current()?;
        if cur.version <= self.sent {
            return None;
        }
        self.sent = cur.version;
        Some(cur.snapshot_line().await)
    }
}

/// Resolves when the revoked set changes; never without a feed (or once its task is gone).
async fn revoked_changed(feed: &mut Option<RevokedFeed>) {
    let live = match feed {
        Some(f) => f.changed().await.is_ok(),
        None => false,
    };
    if !live {
        std::future::pending::<()>().await;
    }
}

fn line(v: &serde_json::Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}
