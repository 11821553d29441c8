//! The people flows' short-lived state in Redis (issue 14: "sessions live in Redis with TTLs, shared
//! by control-plane replicas and surviving a restart of any of them"): login sessions, pending
//! authorization requests, authorization codes (with their PKCE challenge, `state` and `nonce`),
//! refresh tokens, single-use markers and failed-login counters, under `leaky:identity:<kind>:<id>`.
//!
//! Ids are random 256-bit values ([`random_id`]); codes and refresh tokens are stored under the
//! SHA-256 of the value handed out, so a Redis dump holds nothing a client could present. The TTLs
//! only collect garbage: every record that expires carries its own `exp` on the injected clock and
//! callers compare against that, which keeps expiry testable without sleeping. Every call is bounded
//! by [`super::revoked::TIMEOUT`]; an unreachable Redis is `Unavailable` (503), never "not found".

use base64::Engine;
use redis::aio::ConnectionManager;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::revoked::TIMEOUT;
use super::secrets::random_bytes;
use super::IdentityError;

const PREFIX: &str = "leaky:identity:";

/// A new random id: 256 bits, base64url without padding (43 characters).
pub fn random_id() -> Result<String, IdentityError> {
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

/// The storage key of a bearer value (a code or refresh token): its SHA-256, hex.
pub fn digest(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn unavailable() -> IdentityError {
    IdentityError::Unavailable("the session store is unreachable".into())
}

/// The Redis behind the people flows (one `ConnectionManager`, made on first use).
pub struct Store {
    client: redis::Client,
    conn: tokio::sync::OnceCell<ConnectionManager>,
}

impl Store {
    /// For the Redis at `url` (nothing connects until the first call).
    pub fn new(url: &str) -> Result<Self, IdentityError> {
        let client = redis::Client::open(url)
            .map_err(|_| IdentityError::Internal("identity: bad Redis URL".into()))?;
        Ok(Self {
            client,
            conn: tokio::sync::OnceCell::new(),
        })
    }

    async fn conn(&self) -> Result<ConnectionManager, IdentityError> {
        let made = self
            .conn
            .get_or_try_init(|| ConnectionManager::new(self.client.clone()));
        match tokio::time::timeout(TIMEOUT, made).await {
            Ok(Ok(c)) => Ok(c.clone()),
            _ => Err(unavailable()),
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, IdentityError> {
        let mut conn = self.conn().await?;
        match tokio::time::timeout(TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            _ => Err(unavailable()),
        }
    }

    fn key(kind: &str, id: &str) -> String {
        format!("{PREFIX}{kind}:{id}")
    }

    /// Stores `value` as JSON under `kind`/`id` for `ttl_secs` (≥ 1), replacing what was there.
    pub async fn put<T: Serialize>(
        &self,
        kind: &str,
        id: &str,
        value: &T,
        ttl_secs: u64,
    ) -> Result<(), IdentityError> {
        let json = serde_json::to_string(value)
            .map_err(|e| IdentityError::Internal(format!("session record: {e}")))?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(Self::key(kind, id))
            .arg(json)
            .arg("EX")
            .arg(ttl_secs.max(1));
        self.run::<()>(&cmd).await
    }

    /// The record under `kind`/`id`, if any (a record that no longer parses counts as absent).
    pub async fn get<T: DeserializeOwned>(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<T>, IdentityError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(Self::key(kind, id));
        let raw: Option<String> = self.run(&cmd).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Removes the record under `kind`/`id`.
    pub async fn delete(&self, kind: &str, id: &str) -> Result<(), IdentityError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(Self::key(kind, id));
        self.run::<()>(&cmd).await
    }

    /// Claims `kind`/`id` once (`SET NX`), storing `value`: true for the first caller only, across
    /// replicas. What makes codes, refresh tokens and assertion `jti`s single use.
    pub async fn claim(
        &self,
        kind: &str,
        id: &str,
        value: &str,
        ttl_secs: u64,
    ) -> Result<bool, IdentityError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(Self::key(kind, id))
            .arg(value)
            .arg("NX")
            .arg("EX")
            .arg(ttl_secs.max(1));
        let set: Option<String> = self.run(&cmd).await?;
        Ok(set.is_some())
    }

    /// The raw value under `kind`/`id` (what [`Store::claim`] stored).
    pub async fn raw(&self, kind: &str, id: &str) -> Result<Option<String>, IdentityError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(Self::key(kind, id));
        self.run(&cmd).await
    }

    /// Adds one to the counter `kind`/`id` (created with `ttl_secs`); returns the new count.
    pub async fn count(&self, kind: &str, id: &str, ttl_secs: u64) -> Result<i64, IdentityError> {
        let key = Self::key(kind, id);
        let mut pipe = redis::pipe();
        // Create with the TTL if absent, then count: a window never loses its expiry, and neither
        // step needs Redis 7 (`EXPIRE … NX`).
        pipe.atomic()
            .cmd("SET")
            .arg(&key)
            .arg(0)
            .arg("EX")
            .arg(ttl_secs.max(1))
            .arg("NX")
            .ignore()
            .cmd("INCR")
            .arg(&key);
        let mut conn = self.conn().await?;
        match tokio::time::timeout(TIMEOUT, pipe.query_async::<(i64,)>(&mut conn)).await {
            Ok(Ok((n,))) => Ok(n),
            _ => Err(unavailable()),
        }
    }

    /// The counter `kind`/`id` (0 when absent).
    pub async fn counted(&self, kind: &str, id: &str) -> Result<i64, IdentityError> {
        let raw = self.raw(kind, id).await?;
        Ok(raw.and_then(|r| r.parse().ok()).unwrap_or(0))
    }

    /// Adds `member` to the set `kind`/`id`, (re)setting its TTL.
    pub async fn add(
        &self,
        kind: &str,
        id: &str,
        member: &str,
        ttl_secs: u64,
    ) -> Result<(), IdentityError> {
        let key = Self::key(kind, id);
        let mut cmd = redis::cmd("SADD");
        cmd.arg(&key).arg(member);
        self.run::<()>(&cmd).await?;
        let mut cmd = redis::cmd("EXPIRE");
        cmd.arg(&key).arg(ttl_secs.max(1));
        self.run::<()>(&cmd).await
    }

    /// The members of the set `kind`/`id`.
    pub async fn members(&self, kind: &str, id: &str) -> Result<Vec<String>, IdentityError> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(Self::key(kind, id));
        self.run(&cmd).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_256_bits_and_differ() {
        let a = random_id().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_id().unwrap());
        assert_eq!(digest("x").len(), 64);
        assert_ne!(digest("x"), "x");
    }
}
