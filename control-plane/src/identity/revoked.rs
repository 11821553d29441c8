//! Revoked access-token ids in Redis (`leaky:identity:revoked:<jti>`), each with a TTL until the
//! token's own expiry: after that the token is refused for being expired, so the entry can go. Every
//! control-plane replica (and later the proxies) reads the same keys. Each call is bounded by
//! [`TIMEOUT`]; one `ConnectionManager` is made on first use and reconnects by itself.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::IdentityError;

/// The longest one Redis call may take.
pub const TIMEOUT: Duration = Duration::from_millis(500);
const PREFIX: &str = "leaky:identity:revoked:";

/// The revocation list.
pub struct Revocations {
    client: redis::Client,
    conn: tokio::sync::OnceCell<ConnectionManager>,
}

impl Revocations {
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
            _ => Err(IdentityError::Unavailable(
                "the revocation store is unreachable".into(),
            )),
        }
    }

    /// Records `jti` as revoked for `ttl_secs` (≥ 1).
    pub async fn revoke(&self, jti: &str, ttl_secs: u64) -> Result<(), IdentityError> {
        let mut conn = self.conn().await?;
        let key = format!("{PREFIX}{jti}");
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(1).arg("EX").arg(ttl_secs.max(1));
        let set = cmd.query_async::<()>(&mut conn);
        match tokio::time::timeout(TIMEOUT, set).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(IdentityError::Unavailable(
                "the revocation store is unreachable".into(),
            )),
        }
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
