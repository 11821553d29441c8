//! Revoked access-token ids in Redis (`leaky:identity:revoked:<jti>`), each with a TTL until the
//! token's own expiry: after that the token is refused for being expired, so the entry can go. Every
//! control-plane replica reads the same keys. Each call is bounded by [`TIMEOUT`]; one
//! `ConnectionManager` is made on first use and reconnects by itself.
//!
//! The proxies learn revocations without asking anything per request: each revocation also lands in a
//! sorted set (`leaky:identity:revocations`, score = the token's `exp`) and bumps a revision counter, in
//! one `MULTI`. Every replica's [`Revocations::subscribe`] feed polls the counter every [`POLL`] (and
//! at once after a revocation made in this process), reads the whole set when it moved, and the watch
//! streams push it to the proxies as a `revoked` event (`docs/config-protocol.md`). Members are trimmed
//! on each read once [`RETAIN_AFTER_EXP_SECS`] past their `exp` (proxies accept a token a little past
//! `exp`: their `leeway`).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::aio::ConnectionManager;
use serde_json::json;
use tokio::sync::{watch, Notify};

use super::IdentityError;

/// The longest one Redis call may take.
pub const TIMEOUT: Duration = Duration::from_millis(500);
/// How often each replica checks whether another one revoked something.
pub const POLL: Duration = Duration::from_millis(200);
/// The set is re-read this often even without a new revocation, so expired members are trimmed.
const REREAD: Duration = Duration::from_secs(30);
/// How long past its `exp` a revoked token stays in the pushed set: a proxy's `jwt` filter accepts a
/// token up to its `leeway_seconds` (default 30) after `exp`, so dropping the entry at `exp` would let a
/// revoked token back in for that long. The proxies keep entries as long (`filters/src/jwt/revoked.rs`).
pub const RETAIN_AFTER_EXP_SECS: i64 = 300;
const PREFIX: &str = "leaky:identity:revoked:";
const SET: &str = "leaky:identity:revocations";
const REVISION: &str = "leaky:identity:revocations:revision";

/// The current revoked tokens as the watch streams send them.
#[derive(Debug, PartialEq)]
pub struct RevokedSet {
    /// The revision counter the set was read at (grows with every revocation).
    pub revision: i64,
    /// `(jti, exp)`, `exp` in unix seconds.
    pub tokens: Vec<(String, i64)>,
}

impl RevokedSet {
    /// The `revoked` event of the watch protocol (one NDJSON line).
    pub fn line(&self) -> Bytes {
        let tokens: Vec<_> = self
            .tokens
            .iter()
            .map(|(jti, exp)| json!({ "jti": jti, "exp": exp }))
            .collect();
        let mut s =
            json!({ "type": "revoked", "revision": self.revision, "tokens": tokens }).to_string();
        s.push('\n');
        Bytes::from(s)
    }
}

/// What a watch stream subscribes to: `None` until the first read of the set.
pub type RevokedFeed = watch::Receiver<Option<Arc<RevokedSet>>>;

/// The revocation list.
pub struct Revocations {
    inner: Arc<Store>,
    feed: OnceLock<RevokedFeed>,
}

/// The Redis side, shared with the feed's task.
struct Store {
    client: redis::Client,
    conn: tokio::sync::OnceCell<ConnectionManager>,
    /// Wakes this process's feed after a revocation made here.
    changed: Notify,
}

fn unavailable() -> IdentityError {
    IdentityError::Unavailable("the revocation store is unreachable".into())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Store {
    async fn conn(&self) -> Result<ConnectionManager, IdentityError> {
        let made = self
            .conn
            .get_or_try_init(|| ConnectionManager::new(self.client.clone()));
        match tokio::time::timeout(TIMEOUT, made).await {
            Ok(Ok(c)) => Ok(c.clone()),
            _ => Err(unavailable()),
        }
    }

    async fn revision(&self) -> Result<i64, IdentityError> {
        let mut conn = self.conn().await?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(REVISION);
        let get = cmd.query_async::<Option<i64>>(&mut conn);
        match tokio::time::timeout(TIMEOUT, get).await {
            Ok(Ok(n)) => Ok(n.unwrap_or(0)),
            _ => Err(unavailable()),
        }
    }

    /// Trims the members expired for longer than [`RETAIN_AFTER_EXP_SECS`], then reads the revision and every member, atomically.
    async fn read(&self) -> Result<RevokedSet, IdentityError> {
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZREMRANGEBYSCORE")
            .arg(SET)
            .arg("-inf")
            .arg(unix_now().saturating_sub(RETAIN_AFTER_EXP_SECS))
            .ignore()
            .cmd("GET")
            .arg(REVISION)
            .cmd("ZRANGE")
            .arg(SET)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
        let read = pipe.query_async::<(Option<i64>, Vec<(String, i64)>)>(&mut conn);
        match tokio::time::timeout(TIMEOUT, read).await {
            Ok(Ok((revision, tokens))) => Ok(RevokedSet {
                revision: revision.unwrap_or(0),
                tokens,
            }),
            _ => Err(unavailable()),
        }
    }
}

impl Revocations {
    /// For the Redis at `url` (nothing connects until the first call).
    pub fn new(url: &str) -> Result<Self, IdentityError> {
        let client = redis::Client::open(url)
            .map_err(|_| IdentityError::Internal("identity: bad Redis URL".into()))?;
        Ok(Self {
            inner: Arc::new(Store {
                client,
                conn: tokio::sync::OnceCell::new(),
                changed: Notify::new(),
            }),
            feed: OnceLock::new(),
        })
    }

    async fn conn(&self) -> Result<ConnectionManager, IdentityError> {
        self.inner.conn().await
    }

    /// Records `jti` as revoked for `ttl_secs` (≥ 1), and publishes it to the proxies' feed.
    pub async fn revoke(&self, jti: &str, ttl_secs: u64) -> Result<(), IdentityError> {
        self.revoke_many(&[(jti, ttl_secs)]).await
    }

    /// Records every `(jti, ttl_secs)` as revoked in one `MULTI` (a token family, the tokens of a
    /// reused code), and publishes them to the proxies' feed with one revision bump.
    pub async fn revoke_many(&self, tokens: &[(&str, u64)]) -> Result<(), IdentityError> {
        if tokens.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let now = unix_now();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (jti, ttl_secs) in tokens {
            let ttl = (*ttl_secs).max(1);
            let exp = now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX));
            pipe.cmd("SET")
                .arg(format!("{PREFIX}{jti}"))
                .arg(1)
                .arg("EX")
                .arg(ttl)
                .ignore()
                .cmd("ZADD")
                .arg(SET)
                .arg(exp)
                .arg(*jti)
                .ignore();
        }
        pipe.cmd("INCR").arg(REVISION).ignore();
        let set = pipe.query_async::<()>(&mut conn);
        match tokio::time::timeout(TIMEOUT, set).await {
            Ok(Ok(())) => {
                self.inner.changed.notify_one();
                Ok(())
            }
            _ => Err(unavailable()),
        }
    }

    /// The revoked set as it changes, for the watch streams. The first call starts this process's
    /// feed task (one per process, whatever the number of streams).
    pub fn subscribe(&self) -> RevokedFeed {
        self.feed
            .get_or_init(|| {
                let (tx, rx) = watch::channel(None);
                tokio::spawn(follow(self.inner.clone(), tx));
                rx
            })
            .clone()
    }

    /// Whether `jti` is revoked.
    pub async fn is_revoked(&self, jti: &str) -> Result<bool, IdentityError> {
        let mut conn = self.conn().await?;
        let key = format!("{PREFIX}{jti}");
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(key);
        let exists = cmd.query_async::<i64>(&mut conn);
        match tokio::time::timeout(TIMEOUT, exists).await {
            Ok(Ok(n)) => Ok(n > 0),
            _ => Err(IdentityError::Unavailable(
                "the revocation store is unreachable".into(),
            )),
        }
    }
}

/// The feed's task: re-reads the set whenever the revision moved (or every [`REREAD`]) and publishes it
/// when it differs from the last one. Redis being away keeps the last set (proxies keep refusing what
/// they know) and is logged once per outage.
async fn follow(store: Arc<Store>, tx: watch::Sender<Option<Arc<RevokedSet>>>) {
    let mut seen: Option<i64> = None;
    let mut read_at = tokio::time::Instant::now();
    let mut down = false;
    loop {
        let stale = read_at.elapsed() >= REREAD;
        let step = match store.revision().await {
            Ok(rev) if seen != Some(rev) || stale => store.read().await.map(Some),
            Ok(_) => Ok(None),
            Err(e) => Err(e),
        };
        match step {
            Ok(Some(set)) => {
                down = false;
                seen = Some(set.revision);
                read_at = tokio::time::Instant::now();
                tx.send_if_modified(|cur| {
                    let same = cur.as_deref() == Some(&set);
                    if !same {
                        tracing::info!(
                            revision = set.revision,
                            revoked = set.tokens.len(),
                            "identity: revoked tokens changed"
                        );
                        *cur = Some(Arc::new(set));
                    }
                    !same
                });
            }
            Ok(None) => down = false,
            Err(e) if !down => {
                down = true;
                tracing::warn!(error = %e, "identity: cannot read the revoked tokens; proxies keep the last set");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = store.changed.notified() => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_revoked_event_is_one_complete_ndjson_line() {
        let set = RevokedSet {
            revision: 7,
            tokens: vec![("a".into(), 1_900_000_000), ("b".into(), 1_900_000_060)],
        };
        let line = set.line();
        assert!(line.ends_with(b"\n") && !line[..line.len() - 1].contains(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({"type": "revoked", "revision": 7, "tokens": [
                {"jti": "a", "exp": 1_900_000_000i64}, {"jti": "b", "exp": 1_900_000_060i64}]})
        );
        let empty = RevokedSet {
            revision: 0,
            tokens: Vec::new(),
        };
        let v: serde_json::Value = serde_json::from_slice(&empty.line()).unwrap();
        assert_eq!(v["tokens"], json!([]));
    }
}
