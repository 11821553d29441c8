//! `RedisStore`: bucket state in Redis, shared by every replica of the proxy.
//!
//! One `take` is one atomic Lua call (`EVALSHA`; on `NOSCRIPT`, `SCRIPT LOAD` and again) over all the
//! request's buckets: it checks every charge and commits all of them only if all admit, else
//! reports the first refusal. One `adjust` is one Lua call for the whole batch, marked with a key
//! of its own so that it can be retried after a lost connection without settling twice
//! ([`RedisStore::adjust_marked`]). The scripts
//! (`redis_common.lua` + `redis_take.lua` / `redis_adjust.lua`) mirror `algo.rs` in floating point
//! microseconds (Lua numbers are doubles; µs since the epoch fit in 2^53), with a small tolerance
//! so float rounding never refuses what the exact integer rules admit.
//!
//! Keys are `{key_prefix}:{{{hash_tag}}}:{charge.key}`; window counters get `:w{start_secs}`
//! appended (the window's start, computed in Rust by `calendar::bounds` from the caller's clock),
//! so a new window is a new key and the Lua only keeps `used`. **Every limiter key shares one hash
//! tag**, so a single script may touch any buckets of a request on Redis Cluster too. The trade-off:
//! all limiter keys live in one slot, hence on one shard (one primary's CPU and memory bound the
//! limiter; shard the limiter across several tags or deployments if that ever becomes the limit).
//!
//! Clocks: with [`RedisClock::Server`] the script reads `TIME`, so every replica shares the server's
//! clock (Redis ≥ 7 replicates script effects, so `TIME` in a script is safe); with
//! [`RedisClock::Caller`] the caller's `now` is used (tests with a controlled clock).
//!
//! TTLs: a leaky bucket expires when it is idle again (its `tat` passed) plus a margin; a token
//! bucket when it would be full again; a window counter at the window's end plus 60 s; a
//! concurrency counter 10 minutes after its last take or adjust (so a crashed proxy's slots expire).
//! An idle bucket is deleted rather than written.
//!
//! Prepaid balances (kind 5) are the exception to the key and TTL rules: each is a hash
//! `leaky:bal:{org}` that never expires; the scripts read `credited` and `debited` and write only
//! `debited` (see `balance`).

use super::algo::{Admit, Algorithm, Deny, Nanos, Status};
use super::calendar;
use super::guard::limit_of;
use super::redis_local::PerThread;
use super::store::{Adjust, Charge, Store, StoreError, Taken};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Tries of one settlement while Redis is unreachable (see [`RedisStore::adjust_marked`]).
pub const ADJUST_TRIES: u32 = 4;
/// The pause before a later try, times the tries so far (the second try only waits for the reconnect).
const ADJUST_BACKOFF: Duration = Duration::from_millis(200);

const COMMON_LUA: &str = include_str!("redis_common.lua");
const TAKE_LUA: &str = include_str!("redis_take.lua");
const ADJUST_LUA: &str = include_str!("redis_adjust.lua");

/// Whose clock the scripts use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisClock {
    /// Redis `TIME`: one clock for every replica.
    #[default]
    Server,
    /// The `now` passed to `take`/`adjust` (tests).
    Caller,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    pub key_prefix: String,
    /// Hash tag shared by every limiter key (Cluster: one slot, so one script sees all buckets).
    pub hash_tag: String,
    pub clock: RedisClock,
    /// Bound on each (re)connection attempt.
    pub connect_timeout: Duration,
    /// Bound on each command (`None`: none of its own). The proxy passes `None`: its `Guarded`
    /// bounds every call on Pingora's timer wheel, and a tokio timer per command would wake the
    /// worker's time driver on every call.
    pub response_timeout: Option<Duration>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            key_prefix: "lt".to_string(),
            hash_tag: "lt".to_string(),
            clock: RedisClock::Server,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Some(Duration::from_secs(1)),
        }
    }
}

pub struct RedisStore {
    /// Made on the connecting runtime; serves a thread until its own connection is up.
    shared: ConnectionManager,
    /// Each calling thread's own connection (see `redis_local`).
    local: PerThread,
    take: redis::Script,
    adjust: redis::Script,
    /// `{key_prefix}:{{{hash_tag}}}:`
    prefix: String,
    /// With `settlements`, names each settlement's mark uniquely across replicas and restarts.
    nonce: u64,
    settlements: AtomicU64,
    clock: RedisClock,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects (multiplexed, reconnecting in the background after failures) and loads nothing
    /// yet: scripts are sent on first use (`NOSCRIPT` → `SCRIPT LOAD`). Each thread that calls the store
    /// later gets a connection of its own, made on its runtime (`redis_local`).
    pub async fn connect(url: &str, opts: RedisOptions) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(map_err)?;
        let mut config = ConnectionManagerConfig::new()
            .set_connection_timeout(opts.connect_timeout)
            // Reconnect quickly after an outage: a few attempts, at most a second apart; the next
            // command after they all failed starts another round.
            .set_number_of_retries(3)
            .set_factor(50)
            .set_max_delay(1000);
        if let Some(t) = opts.response_timeout {
            config = config.set_response_timeout(t);
        }
        let shared = ConnectionManager::new_with_config(client.clone(), config.clone())
            .await
            .map_err(map_err)?;
        Ok(Self {
            shared,
            local: PerThread::new(client, config),
            take: redis::Script::new(&format!("{COMMON_LUA}\n{TAKE_LUA}")),
            adjust: redis::Script::new(&format!("{COMMON_LUA}\n{ADJUST_LUA}")),
            prefix: format!("{}:{{{}}}:", opts.key_prefix, opts.hash_tag),
            nonce: std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                0u8,
            ),
            settlements: AtomicU64::new(0),
            clock: opts.clock,
        })
    }

    /// The Redis key of a bucket at `now` (windows are keyed by their start).
    fn key_arg<'a>(&'a self, key: &'a str, algo: &Algorithm, now: Nanos) -> KeyArg<'a> {
        KeyArg {
            // Already `leaky:bal:{org}`: the account outlives prefixes and policy versions.
            prefix: match algo {
                Algorithm::Balance { .. } => "",
                _ => &self.prefix,
            },
            key,
            window_start_s: match algo {
                Algorithm::Window { window, tz, .. } => {
                    Some(calendar::bounds(*window, *tz, now).0 / 1_000_000_000)
                }
                _ => None,
            },
        }
    }

    /// One settlement under its `mark`, a key no other settlement uses: `Ok(false)` when the mark
    /// was already set (an earlier try applied it). A try that failed for want of a connection is
    /// tried again, up to [`ADJUST_TRIES`] times: a connection left idle through a Redis restart
    /// fails its next command (its manager reconnects only then), and settlements finishing
    /// after a restart would otherwise be lost. The mark makes a retry safe when a try ran but its
    /// answer was lost. Public for the crate's integration tests.
    #[doc(hidden)]
    pub async fn adjust_marked(
        &self,
        now: Nanos,
        adjusts: &[Adjust],
        mark: &str,
    ) -> Result<bool, StoreError> {
        let adjusts: Vec<&Adjust> = adjusts.iter().filter(|a| a.delta != 0).collect();
        if adjusts.is_empty() {
            return Ok(true);
        }
        let buckets = adjusts.iter().map(|a| Bucket {
            key: &a.key,
            algo: &a.algo,
            amount: a.delta,
            reserve: 0,
        });
        let cmd = self.script_cmd(&self.adjust, now, buckets, Some(mark));
        let mut tries = 0;
        loop {
            match self.eval::<i64>(&self.adjust, &cmd).await.map_err(map_err) {
                Ok(n) => return Ok(n >= 0),
                Err(StoreError::Unavailable(_)) if tries + 1 < ADJUST_TRIES => {
                    // The first retry waits for the reconnect only; then Redis gets time.
                    if tries > 0 {
                        tokio::time::sleep(ADJUST_BACKOFF * tries).await;
                    }
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The calling thread's connection, or the shared one until that is up.
    fn conn(&self) -> ConnectionManager {
        self.local.get().unwrap_or_else(|| self.shared.clone())
    }

    fn now_arg(&self, now: Nanos) -> i64 {
        match self.clock {
            RedisClock::Server => -1,
            RedisClock::Caller => i64::try_from(now / 1000).unwrap_or(i64::MAX),
        }
    }

    /// The `EVALSHA` of `script` over `buckets`: their keys (then `mark`, if any), then `now` and
    /// every bucket's fields ([`Specs`]), written straight into one command buffer. A `ScriptInvocation`
    /// would keep every key and field in a `Vec` of its own, then copy them all into a `Cmd`.
    fn script_cmd<'a, I>(
        &self,
        script: &redis::Script,
        now: Nanos,
        buckets: I,
        mark: Option<&str>,
    ) -> redis::Cmd
    where
        I: ExactSizeIterator<Item = Bucket<'a>> + Clone,
    {
        let keys = buckets.len() + usize::from(mark.is_some());
        let mut cmd = redis::Cmd::with_capacity(
            5 + keys,
            96 + buckets.len() * (self.prefix.len() + 48 + 8 * FIELDS),
        );
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
        for b in buckets.clone() {
            cmd.arg(self.key_arg(b.key, b.algo, now));
        }
        if let Some(mark) = mark {
            cmd.arg(mark);
        }
        cmd.arg(self.now_arg(now)).arg(Specs { buckets, now });
        cmd
    }

    /// Runs a script's command on the calling thread's connection, loading the script first
    /// when Redis does not know it (`NOSCRIPT`: first use, or after a restart or `SCRIPT FLUSH`).
    async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let mut conn = self.conn();
        match cmd.query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
                script.load_async(&mut conn).await?;
                cmd.query_async(&mut conn).await
            }
            reply => reply,
        }
    }
}

/// One bucket of a script call.
#[derive(Clone, Copy)]
struct Bucket<'a> {
    key: &'a str,
    algo: &'a Algorithm,
    amount: i64,
    reserve: u32,
}

/// One bucket's [`FIELDS`] script fields, as the script's `spec` reads them.
fn fields(b: Bucket<'_>, now: Nanos) -> [f64; FIELDS] {
    let us = |ns: u64| ns as f64 / 1000.0;
    let (kind, p1, p2, p3, p4) = match b.algo {
        Algorithm::Leaky {
            rate,
            period_ns,
            burst,
            shape_max_wait_ns,
        } => (
            1.0,
            *rate as f64,
            us(*period_ns),
            *burst as f64,
            shape_max_wait_ns.map_or(-1.0, us),
        ),
        Algorithm::Token {
            capacity,
            rate,
            period_ns,
        } => (2.0, *capacity as f64, *rate as f64, us(*period_ns), 0.0),
        Algorithm::Window {
            limit,
            window,
            tz,
            soft,
        } => {
            let (_, end) = calendar::bounds(*window, *tz, now);
            (
                3.0,
                *limit as f64,
                if *soft { 1.0 } else { 0.0 },
                (end / 1000) as f64,
                0.0,
            )
        }
        Algorithm::Concurrency { limit } => (4.0, *limit as f64, 0.0, 0.0, 0.0),
        // `credited` lives in the account's hash, written by the control plane.
        Algorithm::Balance { .. } => (5.0, 0.0, 0.0, 0.0, 0.0),
    };
    let reserve = f64::from(b.reserve.min(1000));
    [kind, p1, p2, p3, p4, b.amount as f64, reserve]
}

/// Script fields per bucket (`FIELDS` in `redis_common.lua`).
const FIELDS: usize = 7;

/// Every bucket's fields in one argument: little-endian doubles, [`FIELDS`] a bucket, which the
/// script reads with `struct.unpack` as the very numbers it would have parsed from text (Lua
/// numbers are doubles: an amount was one too). As text they were 7 arguments a bucket, each
/// formatted here and framed on the wire, about 4,000 instructions a request.
struct Specs<I> {
    buckets: I,
    now: Nanos,
}

impl<'a, I: Iterator<Item = Bucket<'a>> + Clone> redis::ToRedisArgs for Specs<I> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        use std::io::Write;
        let mut w = out.writer_for_next_arg();
        for b in self.buckets.clone() {
            let mut bytes = [0u8; 8 * FIELDS];
            for (chunk, x) in bytes.chunks_exact_mut(8).zip(fields(b, self.now)) {
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            // Writes into the command's own buffer, which cannot fail.
            let _ = w.write_all(&bytes);
        }
    }
}

/// A bucket's Redis key, `{prefix}{key}` and for a window `:w{start_secs}`, written straight into
/// the command rather than formatted into a `String` of its own.
struct KeyArg<'a> {
    prefix: &'a str,
    key: &'a str,
    window_start_s: Option<u64>,
}

impl redis::ToRedisArgs for KeyArg<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        use std::io::Write;
        let mut w = out.writer_for_next_arg();
        // Writes into the command's own buffer, which cannot fail.
        let _ = w
            .write_all(self.prefix.as_bytes())
            .and_then(|()| w.write_all(self.key.as_bytes()))
            .and_then(|()| match self.window_start_s {
                Some(start) => write!(w, ":w{start}"),
                None => Ok(()),
            });
    }
}

fn map_err(e: redis::RedisError) -> StoreError {
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
    {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Protocol(e.to_string())
    }
}

fn us_to_ns(us: i64) -> u64 {
    u64::try_from(us).unwrap_or(0).saturating_mul(1000)
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn amount(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The take script's packed reply: little-endian 8-byte integers.
fn unpack(reply: &[u8]) -> Result<Vec<i64>, StoreError> {
    let words = reply.chunks_exact(8);
    if !words.remainder().is_empty() {
        return Err(StoreError::Protocol(format!(
            "take script replied {} bytes, not whole 8-byte integers",
            reply.len()
        )));
    }
    Ok(words
        .map(|w| {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            i64::from_le_bytes(b)
        })
        .collect())
}

/// Reads the take script's reply.
fn parse_take(reply: &[i64], charges: &[Charge]) -> Result<Taken, StoreError> {
    let garbage = || StoreError::Protocol(format!("take script replied {reply:?}"));
    match reply.first() {
        Some(1) if reply.len() == 1 + 4 * charges.len() => {
            let admits = reply[1..]
                .chunks_exact(4)
                .zip(charges)
                .map(|(f, c)| Admit {
                    delay_ns: us_to_ns(f[0]),
                    soft_exceeded: f[1] != 0,
                    status: Status {
                        limit: limit_of(&c.algo),
                        remaining: count(f[2]),
                        reset_ns: us_to_ns(f[3]),
                    },
                })
                .collect();
            Ok(Taken::Admitted(admits))
        }
        Some(0) if reply.len() == 6 => {
            let index = usize::try_from(reply[1]).map_err(|_| garbage())?;
            let c = charges.get(index).ok_or_else(garbage)?;
            Ok(Taken::Denied {
                index,
                deny: Deny {
                    retry_after_ns: us_to_ns(reply[2]),
                    never_fits: reply[3] != 0,
                    status: Status {
                        limit: limit_of(&c.algo),
                        remaining: count(reply[4]),
                        reset_ns: us_to_ns(reply[5]),
                    },
                },
            })
        }
        _ => Err(garbage()),
    }
}

#[async_trait]
impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn take(&self, now: Nanos, charges: &[Charge]) -> Result<Taken, StoreError> {
        if charges.is_empty() {
            return Ok(Taken::Admitted(Vec::new()));
        }
        let buckets = charges.iter().map(|c| Bucket {
            key: &c.key,
            algo: &c.algo,
            amount: amount(c.cost),
            reserve: c.reserve,
        });
        let cmd = self.script_cmd(&self.take, now, buckets, None);
        let reply: Vec<u8> = self.eval(&self.take, &cmd).await.map_err(map_err)?;
        parse_take(&unpack(&reply)?, charges)
    }

    /// Applies the batch once, retried while Redis is unreachable (see [`RedisStore::adjust_marked`]).
    async fn adjust(&self, now: Nanos, adjusts: &[Adjust]) -> Result<(), StoreError> {
        let seq = self.settlements.fetch_add(1, Ordering::Relaxed);
        let mark = format!("{}settled:{:016x}{seq:x}", self.prefix, self.nonce);
        self.adjust_marked(now, adjusts, &mark).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::{Bucket, KeyArg, Specs, FIELDS};
    use crate::algo::Algorithm;
    use redis::ToRedisArgs;

    /// The take script's packed reply: 8 bytes a value, little-endian, signed; anything that is
    /// not whole values is refused.
    #[test]
    fn packed_replies_unpack_to_their_integers() {
        let values = [1i64, 0, -1, 42, 1_700_000_000_000_001, i64::MIN, i64::MAX];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(super::unpack(&bytes).ok(), Some(values.to_vec()));
        assert_eq!(super::unpack(&[]).ok(), Some(Vec::new()));
        assert!(super::unpack(&bytes[..bytes.len() - 1]).is_err());
    }

    /// A key is one argument: prefix, key and a window's start.
    #[test]
    fn keys_are_one_argument() {
        let key = |prefix, window_start_s| {
            KeyArg {
                prefix,
                key: "t:acme",
                window_start_s,
            }
            .to_redis_args()
        };
        assert_eq!(key("lt:{lt}:", None), vec![b"lt:{lt}:t:acme".to_vec()]);
        assert_eq!(
            key("lt:{lt}:", Some(1_715_940_000)),
            vec![b"lt:{lt}:t:acme:w1715940000".to_vec()]
        );
        assert_eq!(key("", None), vec![b"t:acme".to_vec()]);
        assert_eq!(key("", Some(0)), vec![b"t:acme:w0".to_vec()]);
        assert_eq!(
            key("", Some(u64::MAX)),
            vec![format!("t:acme:w{}", u64::MAX).into_bytes()]
        );
    }

    /// Every bucket's fields go as one argument of little-endian doubles, bucket after bucket,
    /// in the order `spec` in `redis_common.lua` reads them.
    #[test]
    fn specs_are_one_argument_of_doubles() {
        let leaky = Algorithm::Leaky {
            rate: 3,
            period_ns: 1_000_000_000,
            burst: 10,
            shape_max_wait_ns: Some(1_500),
        };
        let token = Algorithm::Token {
            capacity: 100,
            rate: 7,
            period_ns: 60_000_000_000,
        };
        let buckets = [
            Bucket {
                key: "a",
                algo: &leaky,
                amount: 5,
                reserve: 250,
            },
            Bucket {
                key: "b",
                algo: &token,
                amount: -9_007_199_254_740_993,
                reserve: 5_000,
            },
        ];
        let args = Specs {
            buckets: buckets.iter().copied(),
            now: 0,
        }
        .to_redis_args();
        assert_eq!(args.len(), 1);
        let values: Vec<f64> = args[0]
            .chunks_exact(8)
            .map(|w| f64::from_le_bytes(w.try_into().unwrap_or_default()))
            .collect();
        assert_eq!(values.len(), 2 * FIELDS);
        assert_eq!(
            values,
            vec![
                1.0,
                3.0,
                1_000_000.0,
                10.0,
                1.5,
                5.0,
                250.0,
                2.0,
                100.0,
                7.0,
                60_000_000.0,
                0.0,
                -9_007_199_254_740_992.0,
                1000.0,
            ]
        );
    }
}
