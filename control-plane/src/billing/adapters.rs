//! The real adapters of the saga's ports: [`LedgerCredits`] over `crate::ledger`, [`RedisMirror`]
//! over `leaky_limit::balance` (one `redis` ConnectionManager, every call under a timeout), and
//! [`NoMirror`] for a control plane started without `--redis-url`.
//!
//! **No credit after compensation.** A credit attempt can outlive its saga's decision: a worker whose
//! lease expired mid-call, or a step that timed out while its transaction was still in flight, may
//! append the credit after another worker already ran `reverse_credit` — and a reversal that found
//! nothing reverses nothing, so that credit would stay. [`LedgerCredits::credit_purchase`] therefore
//! credits in one transaction with a `FOR SHARE` lock on the purchase's saga row, and only while the
//! saga is `running`. The engine's move to `compensating` updates that row, so it is ordered against
//! the credit: either the credit commits first (and the reversal, which runs later, sees it) or the
//! credit sees `compensating` and refuses (permanent: nothing to retry).
//!
//! **The org key.** The proxies know an API key's org by the org's id as a string (the key delta of
//! `crate::tenancy::feed` sends `org: <uuid>`); the balance mirror uses exactly that string
//! ([`org_key`]), so a purchase credits the account the org's keys spend from.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use leaky_limit::balance::{self, BalanceState};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use uuid::Uuid;

use super::ports::{BalanceMirror, Credits, PortError};
use crate::ledger::{self, LedgerError};

/// How long one Redis call of the mirror may take before it counts as a transient failure.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The balance account name of `org`: its id, as the proxies' API keys carry it.
pub fn org_key(org: Uuid) -> String {
    org.to_string()
}

fn ledger_error(e: LedgerError) -> PortError {
    match e {
        LedgerError::Conflict(_) | LedgerError::Db(_) => PortError::Transient(e.to_string()),
        other => PortError::Permanent(other.to_string()),
    }
}

fn db_error(e: sqlx::Error) -> PortError {
    PortError::Transient(e.to_string())
}

/// [`Credits`] over the ledger (refs are purchase ids = saga ids).
#[derive(Debug, Clone)]
pub struct LedgerCredits {
    pool: PgPool,
}

impl LedgerCredits {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl Credits for LedgerCredits {
    async fn credit_purchase(
        &self,
        org: Uuid,
        tokens: i64,
        purchase_ref: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), PortError> {
        let saga = Uuid::parse_str(purchase_ref)
            .map_err(|_| PortError::Permanent(format!("`{purchase_ref}` is no purchase id")))?;
        let mut tx = crate::db::begin(&self.pool).await.map_err(db_error)?;
        // See the module docs: the share lock orders this credit against the move to compensating.
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM billing.sagas WHERE id = $1 FOR SHARE")
                .bind(saga)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        match state.as_deref() {
            Some("running") => {}
            Some(other) => {
                return Err(PortError::Permanent(format!(
                    "purchase {saga} is {other}: no credit once compensation started"
                )))
            }
            None => return Err(PortError::Permanent(format!("no saga {saga}"))),
        }
        // Postgres keeps microseconds: a retry must present the expiry exactly as the ledger stored
        // it, or the ledger sees another credit under the same ref.
        let expires_at = expires_at.map(|t| t.trunc_subsecs(6));
        ledger::credit_purchase_on(&mut tx, org, tokens, purchase_ref, expires_at)
            .await
            .map_err(ledger_error)?;
        tx.commit().await.map_err(db_error)
    }

    async fn reverse_purchase(&self, org: Uuid, purchase_ref: &str) -> Result<(), PortError> {
        ledger::reverse_purchase(&self.pool, org, purchase_ref)
            .await
            .map(|_| ())
            .map_err(ledger_error)
    }

    async fn credited_total(&self, org: Uuid) -> Result<(i64, i64), PortError> {
        ledger::credited_total(&self.pool, org)
            .await
            .map_err(ledger_error)
    }
}

/// The data plane's balance accounts in Redis, through one shared ConnectionManager (it reconnects
/// by itself). The manager is made on first use, so a control plane starts while Redis is down.
pub struct RedisMirror {
    client: redis::Client,
    conn: tokio::sync::OnceCell<ConnectionManager>,
    timeout: Duration,
}

impl std::fmt::Debug for RedisMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMirror")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn redis_error(e: redis::RedisError) -> PortError {
    PortError::Transient(format!("redis: {e}"))
}

impl RedisMirror {
    /// A mirror on `url` (`redis://host:port/`); fails only on a malformed URL.
    pub fn new(url: &str) -> Result<Self, PortError> {
        let client = redis::Client::open(url)
            .map_err(|e| PortError::Permanent(format!("redis url: {e}")))?;
        Ok(Self {
            client,
            conn: tokio::sync::OnceCell::new(),
            timeout: REDIS_TIMEOUT,
        })
    }

    /// Runs `op` on the shared connection under the timeout; a Redis error or the timeout is
    /// transient.
    async fn with<T, F, Fut>(&self, op: F) -> Result<T, PortError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let call = async {
            let conn = self
                .conn
                .get_or_try_init(|| ConnectionManager::new(self.client.clone()))
                .await
                .map_err(redis_error)?
                .clone();
            op(conn).await.map_err(redis_error)
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(done) => done,
            Err(_) => Err(PortError::Transient(format!(
                "redis: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// `org`'s account, `None` when Redis has none.
    pub async fn read(&self, org: Uuid) -> Result<Option<BalanceState>, PortError> {
        let key = org_key(org);
        self.with(|mut c| async move { balance::read(&mut c, &key).await })
            .await
    }

    /// `balance::correct_debited`: sets `debited` from `expected` to `new` if unchanged.
    pub async fn correct_debited(
        &self,
        org: Uuid,
        expected: i64,
        new: i64,
    ) -> Result<bool, PortError> {
        let key = org_key(org);
        self.with(
            |mut c| async move { balance::correct_debited(&mut c, &key, expected, new).await },
        )
        .await
    }
}

#[async_trait]
impl BalanceMirror for RedisMirror {
    async fn set_credited(
        &self,
        org: Uuid,
        credited: i64,
        version: i64,
    ) -> Result<bool, PortError> {
        let key = org_key(org);
        self.with(
            |mut c| async move { balance::set_credited(&mut c, &key, credited, version).await },
        )
        .await
    }
}

/// The mirror of a control plane without `--redis-url`: the proxies' balances are not written by
/// this process. It never claims success: [`BalanceMirror::configured`] is false, so the saga records
/// `raise_balance` / `release_balance` as skipped.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMirror;

#[async_trait]
impl BalanceMirror for NoMirror {
    async fn set_credited(&self, _: Uuid, _: i64, _: i64) -> Result<bool, PortError> {
        Ok(false)
    }

    fn configured(&self) -> bool {
        false
    }
}

/// The real ports: payments over HTTP, the ledger, and the Redis mirror (or [`NoMirror`]).
pub fn ports(
    payments: super::payments_http::HttpPayments,
    pool: PgPool,
    mirror: Option<Arc<RedisMirror>>,
) -> super::Ports {
    let mirror: Arc<dyn BalanceMirror> = match mirror {
        Some(m) => m,
        None => Arc::new(NoMirror),
    };
    super::Ports {
        payments: Arc::new(payments),
        credits: Arc::new(LedgerCredits::new(pool)),
        mirror,
    }
}
