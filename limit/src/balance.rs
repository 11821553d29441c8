//! Prepaid balances: one account per org, shared by every proxy through Redis, and the mirror API
//! the control plane writes it with.
//!
//! An account is one Redis hash, [`key`]`(org)` = `leaky:bal:{<org>}`, with integer fields:
//! - `credited`: tokens the org has paid for (absolute), written only by the control plane through
//!   [`set_credited`] from its ledger;
//! - `credited_version`: the ledger version `credited` was computed at, so an older write (a retried
//!   or reordered saga step) never overwrites a newer one;
//! - `debited`: tokens the proxies reserved and settled. The limiter's take script adds a request's
//!   estimate atomically with the request's other buckets and refuses when `debited + cost >
//!   credited`; settlement adds `actual − reserved` (negative gives back). Only the reconciler
//!   changes it otherwise, through [`correct_debited`] (compare-and-set).
//!
//! Spendable = `credited − debited`. The key does not depend on the policy or the config version
//! (bucket keys do), so no reload ever resets a balance. Unlike the bucket keys, each account has its
//! own hash tag (the org): a take script that touches a balance and buckets spans two slots, which a
//! standalone Redis (what the limiter connects to) does not mind; a Redis Cluster deployment would
//! need the limiter's `hash_tag` to match (left for when the limiter speaks Cluster).
//!
//! The in-process store keeps the same state in memory: `debited` under the same key, `credited`
//! from the config's `balances:` section (applied per config version without touching `debited`).

use redis::aio::ConnectionLike;
use redis::RedisResult;

/// The Redis key of `org`'s account: `leaky:bal:{<org>}` (the org is the Cluster hash tag, so each
/// account's three fields live together). Also the in-process store's key for it.
pub fn key(org: &str) -> String {
    format!("leaky:bal:{{{org}}}")
}

/// An account as stored: every field 0 when it was never written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalanceState {
    pub credited: i64,
    pub credited_version: i64,
    pub debited: i64,
}

impl BalanceState {
    /// Tokens the org may still spend (negative after an overdraw settled).
    pub fn spendable(&self) -> i64 {
        self.credited.saturating_sub(self.debited)
    }
}

/// Applies only when `version` is newer than the stored one (or none is stored): absolute, so a
/// retry is harmless, and ordered, so a late older write is ignored.
const SET_CREDITED_LUA: &str = r"
local v = redis.call('HGET', KEYS[1], 'credited_version')
if v and tonumber(v) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'credited', ARGV[1], 'credited_version', ARGV[2])
return 1
";

/// Compare-and-set of `debited` (absent counts as 0).
const CORRECT_DEBITED_LUA: &str = r"
local d = tonumber(redis.call('HGET', KEYS[1], 'debited') or '0')
if d ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'debited', ARGV[2])
return 1
";

/// Sets `org`'s credited tokens to `credited` as of ledger `version`. Applies only when `version`
/// is greater than the stored `credited_version` (or none is stored); returns whether it applied.
/// `debited` is never touched, so in-flight reservations stay counted.
pub async fn set_credited<C: ConnectionLike + Send>(
    conn: &mut C,
    org: &str,
    credited: i64,
    version: i64,
) -> RedisResult<bool> {
    let applied: i64 = redis::Script::new(SET_CREDITED_LUA)
        .key(key(org))
        .arg(credited)
        .arg(version)
        .invoke_async(conn)
        .await?;
    Ok(applied == 1)
}

/// `org`'s account, or `None` when it was never written (no credit, nothing debited).
pub async fn read<C: ConnectionLike + Send>(
    conn: &mut C,
    org: &str,
) -> RedisResult<Option<BalanceState>> {
    let (credited, credited_version, debited): (Option<i64>, Option<i64>, Option<i64>) =
        redis::cmd("HMGET")
            .arg(key(org))
            .arg("credited")
            .arg("credited_version")
            .arg("debited")
            .query_async(conn)
            .await?;
    if credited.is_none() && credited_version.is_none() && debited.is_none() {
        return Ok(None);
    }
    Ok(Some(BalanceState {
        credited: credited.unwrap_or(0),
        credited_version: credited_version.unwrap_or(0),
        debited: debited.unwrap_or(0),
    }))
}

/// For the reconciler: sets `debited` to `new_debited` only if it still is `expected_debited`
/// (nobody reserved or settled meanwhile); returns whether it applied. On `false`, read again and
/// recompute.
pub async fn correct_debited<C: ConnectionLike + Send>(
    conn: &mut C,
    org: &str,
    expected_debited: i64,
    new_debited: i64,
) -> RedisResult<bool> {
    let applied: i64 = redis::Script::new(CORRECT_DEBITED_LUA)
        .key(key(org))
        .arg(expected_debited)
        .arg(new_debited)
        .invoke_async(conn)
        .await?;
    Ok(applied == 1)
}
